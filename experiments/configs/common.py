"""Shared config pieces: the sections every run has and the presets.

A config module defines `get_config(arg=None)` that sets `config.recipe` (the family, a module of `ae_jax.recipes`) on
`base_config()` and hands the preset name `arg` to `with_preset`:

  None / 'default'  the CPU-sized run whose numbers the README reports;
  'smoke'           a few steps on tiny batches: the tests run every config so;
  'colab_tpu'       larger batches and more steps for a Colab TPU runtime.
"""

import ml_collections
from ml_collections import config_dict

PRESETS = ('default', 'smoke', 'colab_tpu')


def base_config() -> ml_collections.ConfigDict:
  """The sections and defaults shared by every recipe."""
  config = ml_collections.ConfigDict()
  config.recipe = ''
  config.model = ml_collections.ConfigDict()
  config.loss = ml_collections.ConfigDict()

  config.optim = ml_collections.ConfigDict(dict(
      name='adam', learning_rate=1e-3, schedule='constant', warmup_steps=0, decay_steps=0,
      grad_clip_norm=0.0, weight_decay=1e-4, momentum=0.9))

  config.data = ml_collections.ConfigDict(dict(
      name='mnist5k', train_split='train', eval_split='test', batch_size=128,
      eval_batch_size=500, binarize=False, data_dir=config_dict.placeholder(str),
      shuffle_seed=0))
  # (H, W, C) that 'folder:PATH' images are cropped and resized to (None: 28x28x1);
  # for 'npz:PATH', checked against the stored shape. Other data: leave None.
  config.data.image_shape = config_dict.placeholder(tuple)

  config.train = ml_collections.ConfigDict(dict(
      seed=0, num_train_steps=2000, log_every_steps=50, eval_every_steps=500,
      checkpoint_every_steps=500, keep_checkpoints=3, num_eval_batches=2,
      num_figure_examples=16, progress_bar=True))
  return config


# 60,000 Fashion-MNIST training images / batch 100.
FASHION_EPOCH_STEPS = 600


def binarized_fashion_mnist(config: ml_collections.ConfigDict,
                            epochs: int = 30) -> ml_collections.ConfigDict:
  """The likelihood comparison's data and schedule: dynamically binarized
  Fashion-MNIST (prepared offline), batch 100, `epochs` epochs, evaluated and
  checkpointed every 5 epochs."""
  config.data.name = 'fashion_mnist'
  config.data.binarize = True
  config.data.batch_size = 100
  config.train.num_train_steps = epochs * FASHION_EPOCH_STEPS
  config.train.log_every_steps = 200
  config.train.eval_every_steps = 5 * FASHION_EPOCH_STEPS
  config.train.checkpoint_every_steps = 5 * FASHION_EPOCH_STEPS
  return config


def with_preset(config: ml_collections.ConfigDict, arg: str | None) -> ml_collections.ConfigDict:
  """Applies the preset named `arg`, then locks the config against new keys."""
  preset = arg or 'default'
  if preset not in PRESETS:
    raise ValueError(f'Unknown preset {preset!r}; expected one of {PRESETS}.')
  if preset == 'smoke':
    config.data.batch_size = 16
    config.data.eval_batch_size = 32
    config.train.num_train_steps = 6
    config.train.log_every_steps = 2
    config.train.eval_every_steps = 3
    config.train.checkpoint_every_steps = 3
    config.train.num_eval_batches = 1
    config.train.num_figure_examples = 8
    config.train.progress_bar = False
  elif preset == 'colab_tpu':
    config.data.name = 'fashion_mnist'
    config.data.batch_size = 1024
    config.data.eval_batch_size = 1000
    config.train.num_train_steps = 20_000
    config.train.log_every_steps = 100
    config.train.eval_every_steps = 2000
    config.train.checkpoint_every_steps = 2000
    config.train.num_eval_batches = 10
  config.lock()
  return config
