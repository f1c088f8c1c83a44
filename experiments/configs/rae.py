"""RAE-L2 (Ghosh et al. 2020): MLP autoencoder 784-400-400-16 and mirror, then a 10-component GMM.

Squared-error reconstruction, β = 1e-4 on ½‖z‖², weight decay λ = 1e-7 on the
decoder (the paper's MNIST settings for β; its λ is tuned per data set). The
preset 'gp' is RAE-GP (λ = 1e-2 on ‖∂D(z)/∂z‖²_F instead of the weight decay).
After training, `config.density.num_components` full-covariance Gaussians are
fitted to the training codes; the samples figure is drawn from them.

  python -m experiments.main --config=experiments/configs/rae.py --workdir=runs/rae
  python -m experiments.main --config=experiments/configs/rae.py:gp --workdir=runs/rae_gp
"""

from experiments.configs import common

# The arguments get_config takes, for the launcher's --help.
ARGS = common.PRESETS + ('gp',)


def get_config(arg=None):
  names = [a for a in (arg or '').split(',') if a]
  gp = 'gp' in names
  preset = ','.join(a for a in names if a != 'gp') or None
  config = common.base_config()
  config.recipe = 'rae'
  config.model = dict(name='mlp_ae', hidden=(400, 400), latent_dim=16)
  config.loss = dict(code_weight=1e-4, regularizer='gp' if gp else 'l2',
                     decoder_weight=1e-2 if gp else 1e-7, reconstruction='mse')
  config.density = dict(num_components=10)
  return common.with_preset(config, preset)
