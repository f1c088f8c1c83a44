"""WAE-MMD (Tolstikhin et al. 2018): MLP autoencoder 784-400-400-8 and mirror, IMQ kernel, λ = 10.

Deterministic encoder and squared-error cost as in the paper's MNIST run
(there a conv net, Z = 8, λ = 10, the IMQ kernel). The preset 'infovae' is
the MMD-VAE of Zhao et al. 2019 (α = 1, λ = 1000, a Gaussian encoder, the
Bernoulli likelihood).

  python -m experiments.main --config=experiments/configs/wae.py --workdir=runs/wae
  python -m experiments.main --config=experiments/configs/wae.py:infovae --workdir=runs/infovae
"""

from experiments.configs import common

# The arguments get_config takes, for the launcher's --help.
ARGS = common.PRESETS + ('infovae',)  # Combine with a preset: 'smoke,infovae'.


def get_config(arg=None):
  names = [a for a in (arg or '').split(',') if a]
  infovae = 'infovae' in names
  preset = ','.join(a for a in names if a != 'infovae') or None
  config = common.base_config()
  config.recipe = 'wae'
  if infovae:
    config.model = dict(name='mlp_vae', hidden=(400,), latent_dim=8)
    config.loss = dict(objective='infovae', reg_weight=1000.0, alpha=1.0, kernel='imq',
                       bandwidths=(1.0,), reconstruction='bernoulli')
  else:
    config.model = dict(name='mlp_ae', hidden=(400, 400), latent_dim=8)
    config.loss = dict(objective='wae', reg_weight=10.0, alpha=1.0, kernel='imq',
                       bandwidths=(1.0,), reconstruction='mse')
  return common.with_preset(config, preset)
