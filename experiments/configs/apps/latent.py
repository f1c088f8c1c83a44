"""Latent space: interpolation (linear and slerp), attribute arithmetic, traversals.

Trains the MLP VAE (784-400-20) on the MNIST 5k subset, then draws
interpolation strips between test digits, adds class attribute vectors
(mean code of the target class minus that of the source class) to test
codes, and traverses the most active latent dimensions.

  python -m experiments.latent --config=experiments/configs/apps/latent.py --workdir=runs/latent
  python -m experiments.latent --config=experiments/configs/apps/latent.py:model=undercomplete --workdir=runs/latent_ae
  python -m experiments.latent --config=experiments/configs/apps/latent.py:smoke --workdir=/tmp/latent
"""

from experiments.configs.apps import base

ARGS = base.ARGS  # for the launcher's --help


def get_config(arg=None):
  preset, model = base.parse_arg(arg, default_model='vae')
  config = base.training_config(model, preset)
  smoke = preset == 'smoke'
  return base.add_section(config, 'latent', dict(
      class_pairs=((1, 7), (3, 8), (4, 9), (0, 6)),  # interpolation endpoints and attributes
      num_steps=10,                # points on each interpolation path, endpoints included
      num_norm_pairs=50 if smoke else 500,  # random test pairs for the midpoint-norm statistic
      attribute_scales=(0.0, 0.25, 0.5, 0.75, 1.0, 1.25, 1.5),
      num_attribute_examples=4,    # rows of the attribute figure per class pair
      num_traversal_dims=8,        # most active dimensions traversed
      traversal_range=3.0,         # VAE: values in [-r, r] (prior std units)
      traversal_quantile=0.02,     # AE: values from this quantile of each code to 1 - it
      num_traversal_values=9,
      knn_neighbors=5,             # pixel-space k-NN judging decoded attribute arithmetic
      batch_size=256,
      seed=0,
  ))
