"""VQ-VAE (van den Oord et al. 2017) with an EMA codebook of 64 codes of size 16.

--config.model.ema=False trains the codebook by gradient with the codebook loss.
One stage, 'model'; experiments/configs/apps/vq_prior.py adds the gated
PixelCNN prior over the code grids as a second stage of the `vqvae` recipe.

  python -m experiments.main --config=experiments/configs/vqvae.py --workdir=runs/vqvae
"""

from experiments.configs import common


def get_config(arg=None):
  config = common.base_config()
  config.recipe = 'vqvae'
  config.model = dict(name='vqvae', num_codes=64, code_dim=16, ema=True, decay=0.99)
  # A linear output, as in the paper: through a sigmoid, MSE's gradient vanishes
  # on the black background and the codebook collapses onto one code.
  config.loss = dict(commitment_cost=0.25, reconstruction='mse', output_activation='identity')
  config.optim.learning_rate = 2e-3
  return common.with_preset(config, arg)
