"""Convolutional VAE: Conv 32/64/128 kernel 4 stride 2 to (μ, log σ²), mirrored decoder.

This is the README's demo: it trains on the MNIST 5k subset, which needs no network.

  python -m experiments.main --config=experiments/configs/conv_vae.py --workdir=runs/conv_vae
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'vae'
  config.model = dict(name='conv_vae', latent_dim=16, channels=(32, 64, 128))
  config.loss = dict(beta=1.0, warmup_steps=200, reconstruction='bernoulli', objective='elbo',
                     num_samples=1)
  # Sized so the demo finishes in a few minutes on 2 CPU cores.
  config.train.num_train_steps = 1000
  config.train.eval_every_steps = 250
  config.train.checkpoint_every_steps = 250
  config.train.log_every_steps = 25
  return common.with_preset(config, arg)
