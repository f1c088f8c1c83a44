"""VQ-VAE generation: a gated PixelCNN prior over the frozen VQ-VAE's code grids.

Stage 1 trains the VQ-VAE of `experiments/configs/vqvae.py` (EMA codebook of
64 codes, 7x7 grid for 28x28 MNIST) into --workdir with the runner, or
restores it from --model_workdir; stage 2 trains the prior on its codes
into <workdir>/prior (own checkpoints; a rerun resumes), samples code grids
and decodes them.

  python -m experiments.vq_prior --config=experiments/configs/apps/vq_prior.py --workdir=runs/vq_prior
  python -m experiments.vq_prior --config=experiments/configs/apps/vq_prior.py \
      --model_workdir=runs/vqvae --workdir=runs/vq_prior_from_run
  python -m experiments.vq_prior --config=experiments/configs/apps/vq_prior.py:smoke --workdir=/tmp/vqp
"""

from experiments.configs.apps import base


def get_config(arg=None):
  preset, model = base.parse_arg(arg, default_model='vqvae')
  config = base.training_config(model, preset)
  smoke = preset == 'smoke'
  if preset == 'default':
    # Stage 1 sized for 2 CPU cores; the slow test checks it learns at 600 steps.
    config.train.num_train_steps = 1500
  return base.add_section(config, 'vq_prior', dict(
      channels=32 if smoke else 64,   # width of the gated stacks
      num_layers=2 if smoke else 5,   # gated layers (the first is mask 'A')
      kernel_size=5,                  # 5 x 5 footprint: 5 layers reach the whole 7 x 7 past
      learning_rate=1e-3,
      batch_size=16 if smoke else 64,
      # The 4,000 MNIST-5k grids overfit after ~600 steps (test NLL 1.98 nats/code
      # at 500 and 1,000 steps, 2.23 at 1,500, train 1.53 at 1,000).
      num_train_steps=6 if smoke else (6000 if preset == 'colab_tpu' else 600),
      eval_every_steps=3 if smoke else 200,
      checkpoint_every_steps=3 if smoke else 200,
      num_samples=8 if smoke else 10,  # decoded samples per temperature row
      temperatures=(1.0,) if smoke else (1.0, 0.7),
      seed=0,
  ))
