"""Sparse autoencoder with an L1 penalty λ·Σ|z| on a ReLU code.

  python -m experiments.main --config=experiments/configs/sparse_l1.py --workdir=runs/sparse_l1
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'autoencoder'
  config.model = dict(name='mlp_ae', hidden=(256, 128), latent_dim=64, activation='relu',
                      latent_activation='relu')
  config.loss = dict(reconstruction='bernoulli', l1_weight=0.05)
  return common.with_preset(config, arg)
