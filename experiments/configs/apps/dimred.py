"""Dimensionality reduction: a trained autoencoder's codes against PCA at the same dimension.

Trains the undercomplete MLP autoencoder (784-256-128-32) on the MNIST 5k
subset, then compares its 32-d codes with 32 principal components:
reconstruction MSE, k-NN accuracy and trustworthiness on the test split.

  python -m experiments.dimred --config=experiments/configs/apps/dimred.py --workdir=runs/dimred
  python -m experiments.dimred --config=experiments/configs/apps/dimred.py:model=vae --workdir=runs/dimred_vae
  python -m experiments.dimred --config=experiments/configs/apps/dimred.py:smoke --workdir=/tmp/dimred
"""

from experiments.configs.apps import base


def get_config(arg=None):
  preset, model = base.parse_arg(arg, default_model='undercomplete')
  config = base.training_config(model, preset)
  smoke = preset == 'smoke'
  return base.add_section(config, 'dimred', dict(
      n_neighbors=5,                         # k of the k-NN classifier
      trust_neighbors=5,                     # k of trustworthiness
      trust_examples=200 if smoke else 1000,  # test examples trustworthiness uses
      map_method='pca' if smoke else 'tsne',  # 2-D map of the codes: 'pca' or 'tsne'
      map_examples=200 if smoke else 1000,   # test examples drawn in the map
      num_reconstructions=8 if smoke else 12,
      batch_size=256,                        # examples per jitted inference call
      seed=0,
  ))
