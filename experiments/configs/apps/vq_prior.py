"""VQ-VAE generation: the VQ-VAE, then a gated PixelCNN prior over its code grids.

The config of `experiments/configs/vqvae.py` (EMA codebook of 64 codes, a
7x7 grid for 28x28 MNIST) plus a `prior` section, which gives the `vqvae`
recipe its second stage: the VQ-VAE trains into <workdir>/model, the prior on
the frozen VQ-VAE's code grids into <workdir>/prior (a rerun resumes the
unfinished stage), and `finish` samples code grids, decodes them and writes
vq_prior.json and the figures (see `ae_jax/recipes/vqvae.py`).

  python -m experiments.main --config=experiments/configs/apps/vq_prior.py --workdir=runs/vq_prior
  python -m experiments.main --config=experiments/configs/apps/vq_prior.py:smoke --workdir=/tmp/vqp
  # The prior of a VQ-VAE trained before with experiments/configs/vqvae.py:
  python -m experiments.vq_prior --config=experiments/configs/apps/vq_prior.py \
      --model_workdir=runs/vqvae --workdir=runs/vq_prior_from_run
"""

from experiments.configs.apps import base

ARGS = base.ARGS  # for the launcher's --help


def get_config(arg=None):
  preset, model = base.parse_arg(arg, default_model='vqvae')
  config = base.training_config(model, preset)
  if config.recipe != 'vqvae':
    raise ValueError(f'model={model!r} has recipe {config.recipe!r}; the prior needs a '
                     "VQ-VAE config (recipe 'vqvae').")
  smoke, tpu = preset == 'smoke', preset == 'colab_tpu'
  if preset == 'default':
    # Stage 1 sized for 2 CPU cores; the slow test checks it learns at 600 steps.
    config.train.num_train_steps = 1500
  return base.add_section(config, 'prior', dict(
      channels=32 if smoke else 64,   # width of the gated stacks
      num_layers=2 if smoke else 5,   # gated layers (the first is mask 'A')
      kernel_size=5,                  # 5 x 5 footprint: 5 layers reach the whole 7 x 7 past
      learning_rate=1e-3,
      batch_size=16 if smoke else 64,
      # Divides the 1,000 MNIST-5k test grids (and 10,000 Fashion-MNIST ones on
      # a TPU, by 8 devices), so the loop's eval mean is the exact test NLL.
      eval_batch_size=250 if smoke else (1000 if tpu else 500),
      # The 4,000 MNIST-5k grids overfit after ~600 steps (test NLL 1.98 nats/code
      # at 500 and 1,000 steps, 2.23 at 1,500, train 1.53 at 1,000).
      num_train_steps=6 if smoke else (6000 if tpu else 600),
      log_every_steps=2 if smoke else 50,
      eval_every_steps=3 if smoke else 200,
      checkpoint_every_steps=3 if smoke else 200,
      keep_checkpoints=3,
      num_samples=8 if smoke else 10,  # decoded samples per temperature row
      temperatures=(1.0,) if smoke else (1.0, 0.7),
      seed=0,                          # the prior's init and batch order
  ))
