"""VQ-VAE (van den Oord et al. 2017) with an EMA codebook of 64 codes of size 16.

--config.model.ema=False trains the codebook by gradient with the codebook loss.
One stage, 'model'; experiments/configs/apps/vq_prior.py adds the gated
PixelCNN prior over the code grids as a second stage of the `vqvae` recipe.

The argument picks a preset and, comma-separated, a quantizer (see
`ae_jax.quantizers`; each addresses 64 codes per grid position or stage):
  vq        the codebook trained by gradient;
  vq_ema    the EMA codebook (the default);
  fsq       finite scalar quantization, levels (8, 8), code_dim 2;
  lfq       lookup-free quantization, code_dim 6 (2^6 codes), entropy penalty;
  residual  residual VQ, 2 stages of 64 EMA codes, k-means init, quantizer dropout;
  grouped   grouped VQ, 2 groups of 8 channels, 64 EMA codes each;
  rotation  the EMA codebook with the rotation trick instead of straight-through;
  cosine    the EMA codebook, l2-normalised 8-d codes, k-means init, dead-code expiry.

  python -m experiments.main --config=experiments/configs/vqvae.py --workdir=runs/vqvae
  python -m experiments.main --config=experiments/configs/vqvae.py:fsq --workdir=runs/vqvae_fsq
  python -m experiments.main --config=experiments/configs/vqvae.py:smoke,lfq --workdir=/tmp/lfq
"""

from ml_collections import config_dict

from experiments.configs import common

QUANTIZERS = ('vq', 'vq_ema', 'fsq', 'lfq', 'residual', 'grouped', 'rotation', 'cosine')
# The arguments get_config takes, for the launcher's --help (comma-separated combinations too).
ARGS = common.PRESETS + QUANTIZERS + tuple(f'smoke,{q}' for q in QUANTIZERS)


def _parse(arg):
  preset, quantizer = None, 'vq_ema'
  for part in filter(None, (arg or '').split(',')):
    if part in QUANTIZERS:
      quantizer = part
    elif part in common.PRESETS:
      preset = part
    else:
      raise ValueError(f'Unknown config argument {part!r}: expected a preset from '
                       f'{common.PRESETS} and/or a quantizer from {QUANTIZERS}.')
  return preset, quantizer


def get_config(arg=None):
  preset, quantizer = _parse(arg)
  config = common.base_config()
  config.recipe = 'vqvae'
  config.model = dict(
      name='vqvae', num_codes=64, code_dim=16, ema=True, decay=0.99,
      dead_code_threshold=config_dict.placeholder(float),
      # None: 'vq_ema' with ema=True, else 'vq'. The fields below are read by
      # some quantizers only (ae_jax/models/vqvae.py); the others keep these values.
      quantizer_type=config_dict.placeholder(str), levels=(), num_quantizers=1,
      quantizer_dropout=0.0, num_groups=1, gradient='ste', cosine=False, kmeans_init=False,
      kmeans_iters=10, entropy_weight=0.1, diversity_weight=1.0, entropy_temperature=1.0)
  model = config.model
  if quantizer == 'vq':
    model.ema = False
  elif quantizer == 'fsq':
    model.update(quantizer_type='fsq', ema=False, levels=(8, 8), code_dim=2)
  elif quantizer == 'lfq':
    model.update(quantizer_type='lfq', ema=False, code_dim=6)
  elif quantizer == 'residual':
    model.update(quantizer_type='residual', num_quantizers=2, quantizer_dropout=0.5,
                 kmeans_init=True)
  elif quantizer == 'grouped':
    model.update(quantizer_type='grouped', num_groups=2)
  elif quantizer == 'rotation':
    model.gradient = 'rotation'
  elif quantizer == 'cosine':
    model.update(cosine=True, code_dim=8, kmeans_init=True, dead_code_threshold=1.0)
  # A linear output, as in the paper: through a sigmoid, MSE's gradient vanishes
  # on the black background and the codebook collapses onto one code.
  config.loss = dict(commitment_cost=0.25, reconstruction='mse', output_activation='identity')
  config.optim.learning_rate = 2e-3
  return common.with_preset(config, preset)
