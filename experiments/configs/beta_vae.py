"""β-VAE (Higgins et al. 2017) with a linear KL warm-up.

For the controlled-capacity objective of Burgess et al. 2018 instead, set
--config.loss.capacity_max=25 --config.loss.capacity_steps=2000 --config.loss.gamma=100
--config.loss.beta=1 --config.loss.warmup_steps=0 (the capacity term replaces β and its
warm-up, and a field the objective does not read must keep its default).

  python -m experiments.main --config=experiments/configs/beta_vae.py --config.loss.beta=4 --workdir=runs/beta_vae
"""

from ml_collections import config_dict

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'vae'
  config.model = dict(name='mlp_vae', hidden=(400,), latent_dim=10)
  config.loss = dict(beta=4.0, warmup_steps=500, reconstruction='bernoulli',
                     capacity_max=config_dict.placeholder(float), capacity_steps=0,
                     gamma=1000.0, objective='elbo', num_samples=1)
  return common.with_preset(config, arg)
