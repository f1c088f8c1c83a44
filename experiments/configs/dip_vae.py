"""DIP-VAE-II (Kumar et al. 2018): MLP VAE 784-400-10, λ_od = λ_d = 10, Bernoulli likelihood.

The preset 'i' is DIP-VAE-I (the covariance of the posterior means, λ_od = 10,
λ_d = 10 λ_od = 100, as in the paper); it can follow 'smoke,'.

  python -m experiments.main --config=experiments/configs/dip_vae.py --workdir=runs/dip_vae_ii
  python -m experiments.main --config=experiments/configs/dip_vae.py:i --workdir=runs/dip_vae_i
"""

from experiments.configs import common

# The arguments get_config takes, for the launcher's --help.
ARGS = common.PRESETS + ('i',)


def get_config(arg=None):
  names = [a for a in (arg or '').split(',') if a]
  dip_i = 'i' in names
  preset = ','.join(a for a in names if a != 'i') or None
  config = common.base_config()
  config.recipe = 'dip_vae'
  config.model = dict(name='mlp_vae', hidden=(400,), latent_dim=10)
  config.loss = dict(dip='i' if dip_i else 'ii', lambda_od=10.0,
                     lambda_d=100.0 if dip_i else 10.0, beta=1.0, reconstruction='bernoulli')
  return common.with_preset(config, preset)
