"""Inpainting: fill random-pixel and box masks with a trained VAE, PSNR on the missing pixels.

Trains the MLP VAE (784-400-20, Bernoulli) on Fashion-MNIST's 60k train
images (6000 steps of 128, a few minutes on 2 CPU cores), then masks test
images and fills them by the train per-pixel mean (the baseline), by the
mean of each image's observed pixels, by iterating the VAE's reconstruction
on the missing pixels, and by optimising the latent with the observed pixels
fixed.

  python -m experiments.inpaint --config=experiments/configs/apps/inpaint.py --workdir=runs/inpaint
  python -m experiments.inpaint --config=experiments/configs/apps/inpaint.py:model=undercomplete \
      --workdir=runs/inpaint_ae      # an autoencoder: mean fills and the iteration only
  python -m experiments.inpaint --config=experiments/configs/apps/inpaint.py \
      --config.data.name=mnist5k --workdir=runs/inpaint_mnist5k
  python -m experiments.inpaint --config=experiments/configs/apps/inpaint.py:smoke --workdir=/tmp/inpaint
"""

from experiments.configs.apps import base

ARGS = base.ARGS  # for the launcher's --help


def get_config(arg=None):
  preset, model = base.parse_arg(arg, default_model='vae')
  config = base.training_config(model, preset)
  smoke = preset == 'smoke'
  if preset == 'default':
    base.train_on_fashion_mnist(config)
  config.train.progress_bar = False
  return base.add_section(config, 'inpaint', dict(
      # 'pixels:<fraction>' or 'box:<size>'
      masks=('pixels:0.5', 'box:12') if smoke else ('pixels:0.5', 'pixels:0.8', 'box:12'),
      num_examples=16 if smoke else 1000,  # test images masked and filled
      num_iterations=5 if smoke else 50,   # projections of the iterative fill
      latent_steps=5 if smoke else 300,    # Adam steps on z (VAEs)
      latent_learning_rate=0.05,
      latent_starts=2 if smoke else 8,     # posterior mean + samples of q(z|x); best kept
      batch_size=16 if smoke else 250,     # examples per jitted call
      num_figure_examples=8,
      seed=0,
  ))
