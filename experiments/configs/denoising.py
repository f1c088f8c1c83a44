"""Denoising MLP autoencoder: Gaussian noise σ=0.3 clipped to [0, 1], clean target.

Set --config.loss.noise=masking or salt_and_pepper for the other corruptions.

  python -m experiments.main --config=experiments/configs/denoising.py --workdir=runs/denoising
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'autoencoder'
  config.model = dict(name='mlp_ae', hidden=(256, 128), latent_dim=32, activation='relu',
                      latent_activation=None)
  config.loss = dict(objective='denoising', noise='gaussian', noise_level=0.3, reconstruction='bernoulli')
  return common.with_preset(config, arg)
