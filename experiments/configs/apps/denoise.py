"""Image denoising: a U-Net DAE trained over sigma ~ U[0, 0.4] against scikit-image's
TV, wavelet and non-local-means denoisers, on Fashion-MNIST and on photo patches.

  python -m experiments.denoise --config=experiments/configs/apps/denoise.py --workdir=runs/denoise
  python -m experiments.denoise --config=experiments/configs/apps/denoise.py:smoke --workdir=/tmp/denoise
  python -m experiments.denoise --config=experiments/configs/apps/denoise.py \
      --config.denoise.photos=False --workdir=runs/denoise_fashion_only

The model alone (the `denoiser` recipe) also trains with the launcher:

  python -m experiments.main --config=experiments/configs/apps/denoise.py --workdir=runs/dae

The default is sized for about 10 minutes on 2 CPU cores. The argument is a
preset from `experiments.configs.common.PRESETS`; `data.name = 'photos'`
trains on the photo patches of `data.photos` instead (the script trains that
second model with `denoise.photo_num_train_steps` steps).
"""

import ml_collections

from experiments.configs import common


def get_config(arg=None):
  preset = arg or 'default'
  if preset not in common.PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; expected one of {common.PRESETS}.')
  smoke, tpu = preset == 'smoke', preset == 'colab_tpu'
  config = common.base_config()
  config.recipe = 'denoiser'
  config.model = ml_collections.ConfigDict(dict(
      name='unet_denoiser',  # ae_jax.models.UNetDenoiser
      # Smoke: one level, a quarter less to compile. At least 8 features: with 4, GroupNorm's
      # groups hold one channel each, which cancels the conv biases' gradients to round-off
      # that Adam then amplifies (2 devices and 1 disagree there).
      features=8 if smoke else (32 if tpu else 16),
      levels=1 if smoke else 2))
  config.loss = ml_collections.ConfigDict(dict(
      reconstruction='mse',  # of sigmoid(logits) against the clean image
      sigma_min=0.0, sigma_max=0.4))  # training noise: sigma ~ U[sigma_min, sigma_max] per image
  config.optim.learning_rate = 2e-3
  config.optim.schedule = 'cosine'
  config.optim.warmup_steps = 2 if smoke else 50
  # The cosine decays over the whole run, whatever the preset or the data make it.
  config.optim.decay_steps = config.train.get_ref('num_train_steps')
  config.data.name = 'mnist5k' if smoke else 'fashion_mnist'
  config.data.batch_size = 32
  # With data.name = 'photos' (ae_jax.recipes.denoiser): grayscale patches of skimage.data.
  config.data.photos = ml_collections.ConfigDict(dict(
      train=('camera', 'astronaut', 'rocket', 'brick', 'grass', 'coins', 'moon'),
      test=('coffee', 'chelsea', 'gravel'),  # pictures never seen in training
      patch_size=32,
      num_train=256 if smoke else 20_000))  # random training patches
  config.train.num_train_steps = 1500
  config.train.log_every_steps = 100
  config.denoise = ml_collections.ConfigDict(dict(
      sigmas=(0.1, 0.2, 0.3),        # test noise levels
      num_test=64 if smoke else 2000,  # held-out test images (from data.eval_split)
      num_val=16 if smoke else 200,    # train-split images the classical denoisers are tuned on
      num_examples=6,                # images per sigma in the figures
      photos=True,                   # also the photo-patch benchmark
      num_photo_val=16 if smoke else 200,  # random patches of the training pictures
      num_photo_test=32 if smoke else 0,   # grid patches of the test pictures (0: all)
      photo_num_train_steps=6 if smoke else (10_000 if tpu else 700),
      seed=0,
  ))
  config = common.with_preset(config, preset)
  if tpu:  # with_preset's TPU sizes, at the batch the U-Net was run with.
    config.data.batch_size = 256
  return config
