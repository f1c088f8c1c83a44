"""Convolutional autoencoder: Conv 32 s2, Conv 64 s2, Dense 16, and the mirror.

  python -m experiments.main --config=experiments/configs/conv_ae.py --workdir=runs/conv_ae
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'autoencoder'
  config.model = dict(name='conv_ae', latent_dim=16)
  config.loss = dict(reconstruction='bernoulli')
  return common.with_preset(config, arg)
