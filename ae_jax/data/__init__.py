"""Datasets for ae-jax: in-memory arrays, offline TFDS sources, batches.

>>> from ae_jax import data
>>> images, labels = data.load_arrays('mnist5k', 'train')
>>> images.shape, labels.shape
((4000, 28, 28, 1), (4000,))
>>> batch = next(data.batches('mnist5k', 'train', batch_size=64, seed=0))
>>> sorted(batch), batch['image'].shape
(['image', 'label'], (64, 28, 28, 1))

`OfflineFashionMNIST` and `prepare_fashion_mnist` (a TFDS builder) load
tensorflow_datasets, so they are imported on first use; so does a
`TfdsSource`, when it is constructed.
"""

import importlib

from ae_jax.data import shapes
from ae_jax.data.pipeline import batches
from ae_jax.data.pipeline import epoch_order
from ae_jax.data.pipeline import steps_per_epoch
from ae_jax.data.shapes import make_shapes
from ae_jax.data.shapes import Shapes
from ae_jax.data.sources import ArraySource
from ae_jax.data.sources import DatasetNotFoundError
from ae_jax.data.sources import default_data_dir
from ae_jax.data.sources import IN_MEMORY_DATASETS
from ae_jax.data.sources import known_datasets
from ae_jax.data.sources import load_arrays
from ae_jax.data.sources import open_source
from ae_jax.data.sources import Source
from ae_jax.data.sources import stratified_split
from ae_jax.data.sources import TFDS_DATASETS
from ae_jax.data.sources import TfdsSource

__all__ = [
    'ArraySource',
    'Shapes',
    'DatasetNotFoundError',
    'IN_MEMORY_DATASETS',
    'OfflineFashionMNIST',
    'Source',
    'TFDS_DATASETS',
    'TfdsSource',
    'batches',
    'default_data_dir',
    'epoch_order',
    'known_datasets',
    'load_arrays',
    'make_shapes',
    'open_source',
    'prepare_fashion_mnist',
    'shapes',
    'steps_per_epoch',
    'stratified_split',
]

# Name -> module of the attributes imported on first access (PEP 562): the
# Fashion-MNIST builder subclasses a TFDS class, and TFDS is slow to import.
_LAZY = {
    'OfflineFashionMNIST': 'ae_jax.data.fashion_mnist',
    'prepare_fashion_mnist': 'ae_jax.data.fashion_mnist',
}


def __getattr__(name: str):
  if name in _LAZY:
    value = getattr(importlib.import_module(_LAZY[name]), name)
    globals()[name] = value
    return value
  raise AttributeError(f'module {__name__!r} has no attribute {name!r}')


def __dir__():
  return sorted(set(globals()) | set(_LAZY))
