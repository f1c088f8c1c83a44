"""FactorVAE (Kim & Mnih 2018): MLP VAE 784-400-10 with a 10-500-500-1 discriminator, γ = 6.4.

Two optimizers: `optim` for the VAE, `disc_optim` for the discriminator
(Adam 1e-4, as the paper's).

  python -m experiments.main --config=experiments/configs/factor_vae.py --workdir=runs/factor_vae
"""

from ml_collections import config_dict

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'factor_vae'
  config.model = dict(name='mlp_factor_vae', hidden=(400,), latent_dim=10, disc_hidden=(500, 500))
  config.loss = dict(gamma=6.4, reconstruction='bernoulli')
  config.disc_optim = config_dict.ConfigDict(dict(config.optim))
  config.disc_optim.learning_rate = 1e-4
  config = common.with_preset(config, arg)
  if arg == 'smoke':
    config.model.disc_hidden = (32,)
  return config
