"""Anomaly detection, the one-class protocol (Ruff et al. 2018) on the MNIST 5k subset.

For each class c: train an MLP VAE on the train images of c only (10% held
out to set the threshold), score the whole test split (c normal, the rest
anomalous) with reconstruction error, negative ELBO, the IWAE estimate of
-log p(x) and the reconstruction probability, and report ROC-AUC and PR-AUC.

  python -m experiments.anomaly --config=experiments/configs/apps/anomaly.py --workdir=runs/anomaly
  python -m experiments.anomaly --config=experiments/configs/apps/anomaly.py \
      --config.data.name=fashion_mnist --workdir=runs/anomaly_fashion
  python -m experiments.anomaly --config=experiments/configs/apps/anomaly.py:model=undercomplete \
      --workdir=runs/anomaly_ae   # an autoencoder: reconstruction error only
  python -m experiments.anomaly --config=experiments/configs/apps/anomaly.py:smoke --workdir=/tmp/anomaly
"""

from experiments.configs.apps import base

ARGS = base.ARGS  # for the launcher's --help


def get_config(arg=None):
  preset, model = base.parse_arg(arg, default_model='vae')
  config = base.training_config(model, preset)
  smoke = preset == 'smoke'
  if not smoke:
    # One model per class on ~360 images: short runs, sized for 2 CPU cores.
    config.data.batch_size = 64
    config.train.num_train_steps = 1000
    config.train.eval_every_steps = 500
    config.train.checkpoint_every_steps = 500
    config.train.log_every_steps = 50
    config.train.num_eval_batches = 1
  config.train.progress_bar = False
  return base.add_section(config, 'anomaly', dict(
      classes=(0, 1) if smoke else tuple(range(10)),  # each in turn the normal class
      validation_fraction=0.1,  # of the normal class's train images, for the threshold
      quantile=0.95,            # threshold: this quantile of the validation scores
      iwae_samples=4 if smoke else 100,
      elbo_samples=1,
      recon_samples=2 if smoke else 10,
      chunk_size=50,            # importance samples decoded at once
      batch_size=256,           # examples per jitted scoring call
      figure_score='',          # score of the figures ('' = reconstruction_error)
      num_ranked=8,             # least / most anomalous images per class in the figure
      seed=0,
  ))
