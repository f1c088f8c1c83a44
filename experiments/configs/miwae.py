"""MIWAE(M=8, K=8) (Rainforth et al. 2018) on the MLP VAE 784-400-20, Bernoulli likelihood.

The presets 'piwae' (PIWAE(8, 8): the decoder trains on IWAE over all 64
samples, the encoder on MIWAE(8, 8)) and 'ciwae' (CIWAE with β = 0.5 over
K = 64) are the paper's other two mixtures; each can follow 'smoke,'.

  python -m experiments.main --config=experiments/configs/miwae.py --workdir=runs/miwae
  python -m experiments.main --config=experiments/configs/miwae.py:piwae --workdir=runs/piwae
  python -m experiments.main --config=experiments/configs/miwae.py:ciwae --workdir=runs/ciwae
  python -m experiments.likelihood --config=experiments/configs/miwae.py \\
      --workdir=runs/miwae --num_samples=1000
"""

from experiments.configs import common

BOUNDS = ('piwae', 'ciwae')
# The arguments get_config takes, for the launcher's --help.
ARGS = common.PRESETS + BOUNDS


def get_config(arg=None):
  names = [a for a in (arg or '').split(',') if a]
  bound = next((a for a in names if a in BOUNDS), 'miwae')
  preset = ','.join(a for a in names if a not in BOUNDS) or None
  config = common.base_config()
  config.recipe = 'iwae_bounds'
  config.model = dict(name='mlp_vae', hidden=(400,), latent_dim=20)
  config.loss = dict(bound=bound, num_samples=8, num_groups=8, beta=0.5)
  if bound == 'ciwae':
    config.loss.num_samples = 64
    config.loss.num_groups = 1
  config = common.with_preset(config, preset)
  if preset == 'smoke':
    config.loss.num_samples = 2
    config.loss.num_groups = 1 if bound == 'ciwae' else 2
  return config
