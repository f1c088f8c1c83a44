"""Dimensionality reduction: a trained autoencoder's codes against PCA at the same dimension.

Trains the undercomplete MLP autoencoder (784-256-128-32) on the MNIST 5k
subset, then compares its 32-d codes with 32 principal components:
reconstruction MSE, k-NN accuracy and trustworthiness on the test split.

The 'fashion' preset trains the same model on Fashion-MNIST's 60k train
images for 6000 steps of 128 (about 13 epochs, a few minutes on 2 CPU cores)
and scores the 10k test images; k-NN with k = 5 on the raw codes, as for
PCA. Its settings were chosen on a validation split (train[:50000] against
train[50000:]), never on the test split; the same command with
`--config.data.train_split='train[:50000]' --config.data.eval_split='train[50000:]'`
repeats that check.

  python -m experiments.dimred --config=experiments/configs/apps/dimred.py --workdir=runs/dimred
  python -m experiments.dimred --config=experiments/configs/apps/dimred.py:model=vae --workdir=runs/dimred_vae
  python -m experiments.dimred --config=experiments/configs/apps/dimred.py:fashion --workdir=runs/dimred_fashion
  python -m experiments.dimred --config=experiments/configs/apps/dimred.py:smoke --workdir=/tmp/dimred
"""

from experiments.configs.apps import base

# Presets of this config only, on top of `base.parse_arg`'s.
FASHION = 'fashion'
# The arguments get_config takes, for the launcher's --help (comma-separated combinations too).
ARGS = base.ARGS + (FASHION,)


def get_config(arg=None):
  parts = [part for part in (arg or '').split(',') if part]
  fashion = FASHION in parts
  preset, model = base.parse_arg(','.join(p for p in parts if p != FASHION),
                                 default_model='undercomplete')
  if fashion and preset != 'default':
    raise ValueError(f"'{FASHION}' is a preset of its own: it does not combine with {preset!r}.")
  config = base.training_config(model, preset)
  smoke = preset == 'smoke'
  if fashion:
    base.train_on_fashion_mnist(config)
    config.train.progress_bar = False
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
