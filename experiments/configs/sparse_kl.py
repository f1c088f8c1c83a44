"""Sparse autoencoder with the KL(ρ‖ρ̂) penalty on a sigmoid code (Ng 2011).

  python -m experiments.main --config=experiments/configs/sparse_kl.py --workdir=runs/sparse_kl
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'autoencoder'
  config.model = dict(name='mlp_ae', hidden=(256, 128), latent_dim=64, activation='relu',
                      latent_activation='sigmoid')
  config.loss = dict(reconstruction='bernoulli', kl_sparsity_weight=3.0, rho=0.05)
  return common.with_preset(config, arg)
