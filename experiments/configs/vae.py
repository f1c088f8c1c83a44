"""MLP VAE, 784-400-(μ, log σ²) of 20 and 20-400-784, Bernoulli likelihood.

  python -m experiments.main --config=experiments/configs/vae.py --workdir=runs/vae
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'vae'
  config.model = dict(name='mlp_vae', hidden=(400,), latent_dim=20)
  config.loss = dict(beta=1.0, warmup_steps=0, reconstruction='bernoulli', objective='elbo',
                     num_samples=1)
  return common.with_preset(config, arg)
