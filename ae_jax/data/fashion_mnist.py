"""Offline Fashion-MNIST: a TFDS builder fed by Debian's `dataset-fashion-mnist`.

The official `tfds.image_classification.FashionMNIST` builder downloads four idx
`.gz` files and checks their sha256. Debian's package `dataset-fashion-mnist`
ships the same files in `/usr/share/datasets/fashion-mnist`, recompressed: the
decompressed bytes are identical, the checksums are not, so the official builder
rejects them as a `manual_dir`. Its `_generate_examples` also reads through
`tf.io.gfile`, which needs TensorFlow.

`OfflineFashionMNIST` subclasses the official builder with the same name,
version and features, and only replaces how examples are produced: it parses
the idx files with numpy and hands PNG bytes (encoded with PIL) to the `Image`
feature. Prepared with `file_format='array_record'`, nothing imports TensorFlow,
and afterwards the official `tfds.data_source('fashion_mnist', data_dir=...)`
reads the result.

Usage (shell): `python -m ae_jax.data.prepare fashion_mnist --data_dir DIR`.

References:
  Xiao, Rasul and Vollgraf, "Fashion-MNIST: a Novel Image Dataset for
  Benchmarking Machine Learning Algorithms", arXiv:1708.07747, 2017.
  LeCun et al., idx file format: http://yann.lecun.com/exdb/mnist/
"""

from __future__ import annotations

import gzip
import io
import os
from collections.abc import Iterator
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

DEBIAN_DIR = '/usr/share/datasets/fashion-mnist'
"""Where `apt-get install dataset-fashion-mnist` puts the idx files."""

# Split name -> (images file, labels file, number of examples).
_FILES = {
    'train': ('train-images-idx3-ubyte.gz', 'train-labels-idx1-ubyte.gz', 60_000),
    'test': ('t10k-images-idx3-ubyte.gz', 't10k-labels-idx1-ubyte.gz', 10_000),
}

# idx magic numbers: 0x0000 (two zero bytes), 0x08 (unsigned byte data), then
# the number of dimensions: 3 for images [N, rows, cols], 1 for labels [N].
_IDX_UBYTE_MAGIC = {3: 0x00000803, 1: 0x00000801}


def read_idx(path: str | os.PathLike[str], ndim: int) -> np.ndarray:
  """Reads a gzipped idx file of unsigned bytes into a uint8 array.

  The idx header is a big-endian int32 magic number (0x0803 for 3-D data,
  0x0801 for 1-D data) followed by one big-endian int32 per dimension.

  Args:
    path: an `*-idx{1,3}-ubyte.gz` file.
    ndim: expected number of dimensions: 3 for images, 1 for labels.

  Returns:
    uint8 array of shape [N, 28, 28] (ndim=3) or [N] (ndim=1).

  Raises:
    ValueError: if the header does not describe `ndim`-dimensional uint8 data
      or the payload size does not match the header.
  """
  with gzip.open(path, 'rb') as f:
    raw = f.read()
  header = np.frombuffer(raw, dtype='>i4', count=1 + ndim)
  if int(header[0]) != _IDX_UBYTE_MAGIC[ndim]:
    raise ValueError(
        f'{path}: idx magic number {int(header[0]):#010x}, expected'
        f' {_IDX_UBYTE_MAGIC[ndim]:#010x} ({ndim}-D unsigned bytes).'
    )
  shape = tuple(int(d) for d in header[1:])
  data = np.frombuffer(raw, dtype=np.uint8, offset=4 * (1 + ndim))
  if data.size != int(np.prod(shape)):
    raise ValueError(
        f'{path}: header says shape {shape} ({int(np.prod(shape))} bytes),'
        f' payload has {data.size} bytes.'
    )
  return data.reshape(shape)


def _png_bytes(image_HxW: np.ndarray) -> bytes:
  """Encodes one uint8 grayscale image as PNG (lossless) with PIL."""
  buffer = io.BytesIO()
  Image.fromarray(image_HxW, mode='L').save(buffer, format='PNG')
  return buffer.getvalue()


class OfflineFashionMNIST(
    tfds.image_classification.FashionMNIST, skip_registration=True
):
  """`fashion_mnist` (same name, version and features) built from local idx files.

  Not registered with TFDS (the official builder keeps the name); instantiate it
  directly, or use `prepare_fashion_mnist`.
  """

  name = 'fashion_mnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = f"""
  Install Debian's package, which puts the four idx files in {DEBIAN_DIR}:
    apt-get update && apt-get install -y dataset-fashion-mnist
  or place {', '.join(f for v in _FILES.values() for f in v[:2])}
  (from https://github.com/zalandoresearch/fashion-mnist) in the manual_dir.
  """

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = dl_manager.manual_dir
    return {
        split: self._generate_examples(
            images_path=manual_dir / images_file,
            labels_path=manual_dir / labels_file,
            num_examples=num_examples,
        )
        for split, (images_file, labels_file, num_examples) in _FILES.items()
    }

  def _generate_examples(  # pytype: disable=signature-mismatch
      self, images_path: os.PathLike[str], labels_path: os.PathLike[str],
      num_examples: int,
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    images = read_idx(images_path, ndim=3)
    labels = read_idx(labels_path, ndim=1)
    if not len(images) == len(labels) == num_examples:
      raise ValueError(
          f'{images_path} holds {len(images)} images and {labels_path}'
          f' {len(labels)} labels; {self.name} has {num_examples}.'
      )
    # Keys are the positions in the idx files, as in the official builder, so
    # the record order matches an official build.
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {'image': _png_bytes(image), 'label': int(label)}


def prepare_fashion_mnist(
    data_dir: str | os.PathLike[str], *, manual_dir: str | os.PathLike[str] = DEBIAN_DIR
) -> tfds.core.DatasetBuilder:
  """Prepares `fashion_mnist` as array_record files under `data_dir`, offline.

  A no-op when `data_dir` already holds a prepared `fashion_mnist` of this
  version. Never touches the network (`try_download_gcs=False`, no downloads)
  and never imports TensorFlow. Takes about 8 s on 2 CPU cores.

  Args:
    data_dir: TFDS data directory; the dataset lands in
      `data_dir/fashion_mnist/<version>/`.
    manual_dir: directory holding the four idx `.gz` files.

  Returns:
    The prepared builder (`builder.as_data_source(split)` reads it).

  Raises:
    FileNotFoundError: if an idx file is missing from `manual_dir`, with the
      command that installs them.
  """
  missing = [
      f for v in _FILES.values() for f in v[:2]
      if not os.path.isfile(os.path.join(manual_dir, f))
  ]
  if missing:
    raise FileNotFoundError(
        f'Fashion-MNIST idx files missing from {manual_dir}: {missing}. Install'
        ' them with `apt-get update && apt-get install -y'
        ' dataset-fashion-mnist` (puts them in'
        f' {DEBIAN_DIR}) or pass manual_dir= a directory that holds them.'
    )
  builder = OfflineFashionMNIST(
      data_dir=os.fspath(data_dir), file_format='array_record'
  )
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(
          manual_dir=os.fspath(manual_dir), try_download_gcs=False
      )
  )
  return builder
