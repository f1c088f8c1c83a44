"""Undercomplete MLP autoencoder, 784-256-128-32 and mirror, Bernoulli likelihood.

  python -m experiments.main --config=experiments/configs/undercomplete.py --workdir=runs/undercomplete
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'autoencoder'
  config.model = dict(name='mlp_ae', hidden=(256, 128), latent_dim=32, activation='relu',
                      latent_activation=None)
  config.loss = dict(reconstruction='bernoulli', output_activation='sigmoid')
  return common.with_preset(config, arg)
