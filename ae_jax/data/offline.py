"""MNIST, Fashion-MNIST and CIFAR-10 in TFDS's format, prepared without TensorFlow.

TFDS's own builders for these need TensorFlow to prepare them (they read
through `tf.io.gfile`, and the download manager's extraction needs it too);
runtimes without TensorFlow (Colab TPU since 2025) cannot build them. This
module prepares them from their original files:

  mnist          train/t10k-{images-idx3,labels-idx1}-ubyte.gz (idx format)
  fashion_mnist  the same four names, Fashion-MNIST's files
  cifar10        cifar-10-binary.tar.gz (cifar-10-batches-bin/*.bin: one label
                 byte, then 1024 red, 1024 green and 1024 blue bytes per image)

either given as local files (`manual_dir`) or downloaded (`download=True`)
from the official addresses that TFDS lists in its `url_checksums/<name>.txt`,
each checked against the size and sha256 listed there and retried on failure.
The builders subclass TFDS's with the same name, version and features and only
replace how examples are produced (numpy parsing, PNG bytes made with PIL),
with the official keys and record order; prepared as array_record files, the
official `tfds.data_source(name, data_dir=...)` reads them.

Usage (shell): `python -m ae_jax.data.prepare mnist --download --data_dir DIR`.

References:
  LeCun et al., MNIST and its idx format: http://yann.lecun.com/exdb/mnist/
  Krizhevsky, "Learning Multiple Layers of Features from Tiny Images", 2009
  (CIFAR-10 and its binary version: https://www.cs.toronto.edu/~kriz/cifar.html).
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import io
import os
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from ae_jax.data import fashion_mnist as fashion_mnist_lib

DATASETS = ('mnist', 'fashion_mnist', 'cifar10')
"""What `prepare` builds."""

_CIFAR10_ARCHIVE = 'cifar-10-binary.tar.gz'
_CIFAR10_DIR = 'cifar-10-batches-bin'
_CIFAR10_SPLITS = {
    'train': ('train_', [f'data_batch_{i}.bin' for i in range(1, 6)], 50_000),
    'test': ('test_', ['test_batch.bin'], 10_000),
}
_CIFAR10_RECORD_BYTES = 1 + 32 * 32 * 3


class DownloadError(OSError):
  """A file could not be downloaded intact; says which, why, and what to do."""


@dataclasses.dataclass(frozen=True)
class RemoteFile:
  """One original file: its name, where it is, its size in bytes and sha256."""
  name: str
  url: str
  size: int
  sha256: str


def official_files(name: str) -> list[RemoteFile]:
  """The original files of `name`, as TFDS registers them (its
  `url_checksums/<name>.txt`: url, size, sha256, file name per line)."""
  if name not in DATASETS:
    raise ValueError(f'No original files known for {name!r}; known: {", ".join(DATASETS)}.')
  spec = importlib.util.find_spec('tensorflow_datasets')
  path = os.path.join(list(spec.submodule_search_locations)[0], 'url_checksums', f'{name}.txt')
  files = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if line.strip():
        url, size, sha256, filename = line.split('\t')
        files.append(RemoteFile(filename.strip(), url, int(size), sha256))
  return files


def _sha256(path: str) -> str:
  digest = hashlib.sha256()
  with open(path, 'rb') as f:
    for chunk in iter(lambda: f.read(1 << 20), b''):
      digest.update(chunk)
  return digest.hexdigest()


def _fetch(url: str, path: str, file: RemoteFile, timeout: float) -> None:
  """Downloads `url` to `path` (through `path.part`), checking size and sha256."""
  partial = f'{path}.part'
  digest, size = hashlib.sha256(), 0
  with urllib.request.urlopen(url, timeout=timeout) as response, open(partial, 'wb') as out:
    for chunk in iter(lambda: response.read(1 << 20), b''):
      digest.update(chunk)
      size += len(chunk)
      out.write(chunk)
  if size != file.size or digest.hexdigest() != file.sha256:
    os.remove(partial)
    raise DownloadError(f'{url} gave {size} bytes with sha256 {digest.hexdigest()}; expected '
                        f'{file.size} bytes with sha256 {file.sha256}')
  os.replace(partial, path)


def download_files(files: Sequence[RemoteFile], dest_dir: str, *, base_url: str | None = None,
             retries: int = 4, timeout: float = 60.0, backoff_seconds: float = 1.0,
             log: Callable[[str], None] = print) -> dict[str, str]:
  """Downloads `files` into `dest_dir`, each checked against its size and sha256.

  A file already there with the right sha256 is kept. A failed attempt (a
  network error, a timeout, an HTTP error, a wrong size or checksum) is
  retried up to `retries` times in all, waiting `backoff_seconds`, then twice
  as long, and so on.

  Args:
    files: what to fetch (`official_files(name)`).
    dest_dir: where the files go (created).
    base_url: fetch `base_url + file.name` instead of `file.url` (a mirror).
    retries: attempts per file.
    timeout: seconds without data before an attempt fails.
    backoff_seconds: the first wait between attempts.
    log: where progress lines go.

  Returns:
    {file name: local path}.

  Raises:
    DownloadError: a file not fetched intact in `retries` attempts, naming the
      address, the last error and where to put the file by hand.
  """
  os.makedirs(dest_dir, exist_ok=True)
  paths = {}
  for file in files:
    path = os.path.join(dest_dir, file.name)
    url = base_url.rstrip('/') + '/' + file.name if base_url else file.url
    if os.path.isfile(path) and _sha256(path) == file.sha256:
      paths[file.name] = path
      continue
    error: BaseException | None = None
    for attempt in range(1, retries + 1):
      try:
        log(f'Downloading {url} ({file.size:,} bytes), attempt {attempt} of {retries}')
        _fetch(url, path, file, timeout)
        error = None
        break
      except (OSError, urllib.error.URLError, TimeoutError) as e:
        error = e
        if attempt < retries:
          time.sleep(backoff_seconds * 2 ** (attempt - 1))
    if error is not None:
      raise DownloadError(f'Could not download {url} intact in {retries} attempts (last: '
                          f'{error}). Download it by another way into {dest_dir} (sha256 '
                          f'{file.sha256}) and prepare with --manual_dir={dest_dir}.') from error
    paths[file.name] = path
  return paths


# ----------------------------------------------------------------------------
# Builders: TFDS's, with examples made without TensorFlow.


class OfflineMNIST(tfds.image_classification.MNIST, skip_registration=True):
  """`mnist` (same name, version and features) built from the four idx files in
  the manual_dir, as `fashion_mnist.OfflineFashionMNIST` builds Fashion-MNIST."""

  name = 'mnist'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      'Place train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, '
      't10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz in the manual_dir, or '
      'run `python -m ae_jax.data.prepare mnist --download`.')
  _split_generators = fashion_mnist_lib.OfflineFashionMNIST._split_generators  # pylint: disable=protected-access
  _generate_examples = fashion_mnist_lib.OfflineFashionMNIST._generate_examples  # pylint: disable=protected-access


def _png_rgb(image_HxWx3: np.ndarray) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(image_HxWx3, mode='RGB').save(buffer, format='PNG')
  return buffer.getvalue()


def read_cifar_batch(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
  """uint8 images [N, 32, 32, 3] and labels [N] of a CIFAR-10 binary batch file."""
  raw = np.fromfile(path, dtype=np.uint8)
  if raw.size % _CIFAR10_RECORD_BYTES:
    raise ValueError(f'{path}: {raw.size} bytes is not a whole number of '
                     f'{_CIFAR10_RECORD_BYTES}-byte CIFAR-10 records.')
  records = raw.reshape(-1, _CIFAR10_RECORD_BYTES)
  if records.size and records[:, 0].max() > 9:
    raise ValueError(f'{path}: label {records[:, 0].max()} is not a CIFAR-10 class (0-9).')
  # Planes R, G, B of 32 rows of 32 bytes -> [N, 32, 32, 3].
  images = records[:, 1:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), records[:, 0].copy()


def _cifar10_dir(manual_dir: os.PathLike[str] | str) -> str:
  """The extracted `cifar-10-batches-bin/` (extracting the archive with tarfile)."""
  manual_dir = os.fspath(manual_dir)
  extracted = os.path.join(manual_dir, _CIFAR10_DIR)
  if not os.path.isdir(extracted):
    archive = os.path.join(manual_dir, _CIFAR10_ARCHIVE)
    with tarfile.open(archive, 'r:gz') as tar:
      members = [m for m in tar.getmembers()
                 if m.name.startswith(_CIFAR10_DIR + '/') and m.isfile()
                 and '..' not in m.name.split('/')]
      tar.extractall(manual_dir, members=members)  # nosec: names checked above.
  return extracted


class OfflineCifar10(tfds.image_classification.Cifar10, skip_registration=True):
  """`cifar10` (same name, version and features) from `cifar-10-binary.tar.gz`
  (or its extracted `cifar-10-batches-bin/`) in the manual_dir."""

  name = 'cifar10'
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      f'Place {_CIFAR10_ARCHIVE} (https://www.cs.toronto.edu/~kriz/cifar.html) in the '
      'manual_dir, or run `python -m ae_jax.data.prepare cifar10 --download`.')

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    root = _cifar10_dir(dl_manager.manual_dir)
    with open(os.path.join(root, 'batches.meta.txt'), encoding='utf-8') as f:
      self.info.features['label'].names = [n for n in f.read().split('\n') if n.strip()]
    return {
        split: self._generate_examples(prefix, [os.path.join(root, f) for f in files], num)
        for split, (prefix, files, num) in _CIFAR10_SPLITS.items()
    }

  def _generate_examples(  # pytype: disable=signature-mismatch
      self, split_prefix: str, filepaths: Sequence[str], num_examples: int,
  ) -> Iterator[tuple[int, dict[str, Any]]]:
    # Keys and ids as the official builder's: the running index over the files.
    index = 0
    for path in filepaths:
      images, labels = read_cifar_batch(path)
      for image, label in zip(images, labels):
        yield index, {'id': f'{split_prefix}{index:05d}', 'image': _png_rgb(image),
                      'label': int(label)}
        index += 1
    if index != num_examples:
      raise ValueError(f'{", ".join(filepaths)} hold {index} images; this CIFAR-10 split has '
                       f'{num_examples}.')


_BUILDERS = {'mnist': OfflineMNIST, 'fashion_mnist': fashion_mnist_lib.OfflineFashionMNIST,
             'cifar10': OfflineCifar10}


def prepare(name: str, data_dir: str | os.PathLike[str], *,
            manual_dir: str | os.PathLike[str] | None = None, download: bool = False,
            base_url: str | None = None, files: Sequence[RemoteFile] | None = None,
            retries: int = 4, backoff_seconds: float = 1.0,
            log: Callable[[str], None] = print) -> tfds.core.DatasetBuilder:
  """Prepares `name` as array_record files under `data_dir/name/<version>/`.

  A no-op when it is prepared there already. Never imports TensorFlow; touches
  the network only with `download=True`.

  Args:
    name: one of `DATASETS`.
    data_dir: the TFDS data directory.
    manual_dir: where the original files are (or go, when downloading). Local
      files are used as they are (not checksummed: Debian's recompressed
      Fashion-MNIST files differ from the registered ones, their contents do
      not). Default: `data_dir/downloads/manual/<name>`.
    download: fetch the files missing from `manual_dir` (`download_files`).
    base_url: fetch from this address instead of the official one (a mirror).
    files: the files and checksums (default `official_files(name)`).
    retries, backoff_seconds: per file, as in `download_files`.
    log: where progress lines go.

  Returns:
    The prepared builder (`builder.as_data_source(split)` reads it).

  Raises:
    FileNotFoundError: files missing from `manual_dir` without `download`.
    DownloadError: a file that could not be fetched intact.
  """
  if name not in _BUILDERS:
    raise ValueError(f'Cannot prepare {name!r} here; these can be: {", ".join(DATASETS)}.')
  data_dir = os.fspath(data_dir)
  builder = _BUILDERS[name](data_dir=data_dir, file_format='array_record')
  if builder.is_prepared():
    return builder
  files = list(files if files is not None else official_files(name))
  manual_dir = os.fspath(manual_dir or os.path.join(data_dir, 'downloads', 'manual', name))
  missing = [f for f in files if not os.path.isfile(os.path.join(manual_dir, f.name))]
  if name == 'cifar10' and os.path.isdir(os.path.join(manual_dir, _CIFAR10_DIR)):
    missing = []
  if missing and download:
    download_files(missing, manual_dir, base_url=base_url, retries=retries,
             backoff_seconds=backoff_seconds, log=log)
  elif missing:
    raise FileNotFoundError(
        f'{name}: {", ".join(f.name for f in missing)} missing from {manual_dir}. Put the '
        f'original files there, or download them: `python -m ae_jax.data.prepare {name} '
        f'--download` (from {os.path.dirname(missing[0].url)}/, checked against their sha256).')
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return builder
