"""One batch iterator: seeded shuffling, padding, binarization, sharding.

Everything a batch contains is a function of `(seed, global step)` and the
dataset, never of the iterator's history, so a run resumed at `start_step`
sees exactly the batches an uninterrupted run would have seen, and each
process of a multi-host job can compute its own slice without talking to
the others.

With N examples, global batch size B and S steps per epoch
(S = N // B with drop_remainder, ceil(N / B) without):
  - global step t belongs to epoch e = t // S, position j = t % S;
  - epoch e visits the examples in the order pi_e, a permutation drawn from
    numpy's PCG64 seeded with SeedSequence([seed, 0, e]) (identity without
    shuffle); step t takes pi_e[j*B : (j+1)*B];
  - without drop_remainder the last batch of each epoch is padded to B with
    zero images and label -1, and every batch carries 'mask' (1 real, 0 pad);
  - dynamic binarization takes u, uniform on {0, ..., 65535}^[B,H,W,C]: the
    64-bit outputs of PCG64 seeded with SeedSequence([seed, 1, t]), each cut
    into four 16-bit words, least significant first; it returns
    x_b = 1[u < 65536 x], i.e. x_b ~ Bernoulli(ceil(65536 x) / 65536) per
    pixel (within 2^-16 of Bernoulli(x)), fresh every step;
  - with P processes, process p gets rows [p*B/P, (p+1)*B/P) of the global
    batch (and of its noise), so the shards are disjoint and their union,
    in process order, is the global batch.
Shuffled orders come from numpy's Generator: reproducible for a given numpy
version (numpy does not promise identical streams across versions).

References:
  Salakhutdinov and Murray, "On the quantitative analysis of deep belief
  networks", ICML 2008 (dynamically binarized MNIST, x ~ Bernoulli(pixels)).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np

from ae_jax.data import sources as sources_lib

# Independent random streams derived from the user's seed.
_SHUFFLE_STREAM = 0
_BINARIZE_STREAM = 1


def steps_per_epoch(
    num_examples: int, batch_size: int, *, drop_remainder: bool = True
) -> int:
  """Number of global batches in one pass over `num_examples` examples."""
  if drop_remainder:
    return num_examples // batch_size
  return math.ceil(num_examples / batch_size)


def _rng(seed: int, stream: int, counter: int) -> np.random.Generator:
  return np.random.Generator(
      np.random.PCG64(np.random.SeedSequence([seed, stream, counter]))
  )


def _binarization_noise(seed: int, step: int, shape: tuple[int, ...]) -> np.ndarray:
  """uint16 [shape], uniform on {0, ..., 65535}: step `step`'s binarization noise.

  The raw 64-bit outputs of PCG64(SeedSequence([seed, 1, step])), each split
  into four 16-bit words, least significant first. Four pixels per draw and no
  conversion to floats: a quarter of the work of uniform floats.
  """
  size = math.prod(shape)
  bits = np.random.PCG64(np.random.SeedSequence([seed, _BINARIZE_STREAM, step]))
  raw = bits.random_raw(-(-size // 4)).astype('<u8', copy=False)
  return raw.view('<u2')[:size].reshape(shape)


def epoch_order(
    num_examples: int, *, seed: int, epoch: int, shuffle: bool = True
) -> np.ndarray:
  """Order in which epoch `epoch` visits the examples: int64 [num_examples]."""
  if not shuffle:
    return np.arange(num_examples)
  return _rng(seed, _SHUFFLE_STREAM, epoch).permutation(num_examples)


def _aligned_empty(shape: tuple[int, ...], dtype: Any, alignment: int = 64) -> np.ndarray:
  """An uninitialised array whose data starts on an `alignment`-byte boundary.

  JAX's CPU client takes such a numpy array as a device buffer without a copy
  (`jax.device_put` aliases it); numpy's own allocations are only 16-byte
  aligned, and copying every batch costs the host more than building it.
  """
  dtype = np.dtype(dtype)
  nbytes = math.prod(shape) * dtype.itemsize
  raw = np.empty(nbytes + alignment, np.uint8)
  start = -raw.ctypes.data % alignment
  return raw[start:start + nbytes].view(dtype).reshape(shape)


def _check_int(name: str, value: Any, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f'{name} must be an integer; got {value!r}.')
  if value < minimum:
    raise ValueError(f'{name} must be >= {minimum}; got {value}.')
  return int(value)


def batches(
    data: Any,
    split: str = 'train',
    *,
    batch_size: int,
    seed: int = 0,
    shuffle: bool = True,
    drop_remainder: bool = True,
    binarize: bool = False,
    num_epochs: int | None = None,
    process_index: int | None = None,
    process_count: int | None = None,
    start_step: int = 0,
    data_dir: str | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Iterates over batches of a dataset as numpy dicts (see module docstring).

  Arguments are checked when `batches` is called, before the first batch.

  >>> it = batches('digits', 'train', batch_size=32, seed=0, num_epochs=1)
  >>> batch = next(it)
  >>> batch['image'].shape, batch['image'].dtype, batch['label'].shape
  ((32, 8, 8, 1), dtype('float32'), (32,))
  >>> sum(1 for _ in it) + 1  # 1438 // 32 steps per epoch
  44

  Args:
    data: a dataset name ('mnist5k', 'digits', 'fashion_mnist', ... see
      `known_datasets()`), arrays `(images, labels)`, a dict with 'image' (and
      'label'), or a source (`open_source`).
    split: split of a named dataset; ignored for arrays.
    batch_size: GLOBAL batch size B; each process yields B // process_count.
    seed: non-negative int; fixes every epoch's order and the binarization noise.
    shuffle: visit each epoch in a fresh seeded order (else in dataset order).
    drop_remainder: skip each epoch's last incomplete batch; if False, pad it
      and add 'mask' to every batch.
    binarize: replace images by Bernoulli samples of their pixels, fresh at
      every step (dynamic binarization, for Bernoulli likelihoods).
    num_epochs: stop after this many epochs; None iterates forever.
    process_index: this process's index (default `jax.process_index()`).
    process_count: number of processes (default `jax.process_count()`).
    start_step: global step of the first batch to yield (e.g. the step of a
      restored checkpoint): the iterator continues exactly as an uninterrupted
      one would from that step.
    data_dir: TFDS data directory for TFDS names.

  Yields:
    {'image': float32 [b, H, W, C] in [0, 1] (0/1 if binarize),
     'label': int32 [b] (-1 for padding or unlabeled datasets),
     'mask': float32 [b] (only if not drop_remainder)}, b = B // process_count.

  Raises:
    ValueError: batch_size <= 0 or not divisible by process_count, batch
      larger than the dataset with drop_remainder, unknown dataset (lists the
      known ones), NaN or values outside [0, 1] in given arrays, bad
      process_index / num_epochs / start_step / seed.
    DatasetNotFoundError: a TFDS dataset that is not prepared in `data_dir`.
  """
  batch_size = _check_int('batch_size', batch_size, minimum=1)
  seed = _check_int('seed', seed, minimum=0)
  start_step = _check_int('start_step', start_step, minimum=0)
  if num_epochs is not None:
    num_epochs = _check_int('num_epochs', num_epochs, minimum=1)
  if process_count is None or process_index is None:
    import jax  # pylint: disable=g-import-not-at-top

    process_count = jax.process_count() if process_count is None else process_count
    process_index = jax.process_index() if process_index is None else process_index
  process_count = _check_int('process_count', process_count, minimum=1)
  process_index = _check_int('process_index', process_index, minimum=0)
  if process_index >= process_count:
    raise ValueError(
        f'process_index must be < process_count={process_count}; got'
        f' {process_index}.'
    )
  if batch_size % process_count:
    raise ValueError(
        f'batch_size={batch_size} is the global batch and must be divisible by'
        f' process_count={process_count}.'
    )

  source = sources_lib.open_source(data, split, data_dir=data_dir)
  if binarize and getattr(source, 'dtype', np.float32) != np.float32:
    raise ValueError(f'binarize=True needs images; {source.name!r} serves '
                     f"{np.dtype(source.dtype).name} '{source.input_key}'.")
  num_examples = len(source)
  if num_examples == 0:
    raise ValueError(f'Dataset {source.name!r} split {split!r} is empty.')
  if drop_remainder and batch_size > num_examples:
    raise ValueError(
        f'batch_size={batch_size} is larger than the dataset ({num_examples}'
        ' examples) with drop_remainder=True: no batch would be produced. Use a'
        ' smaller batch or drop_remainder=False (pads and adds a mask).'
    )
  num_steps_per_epoch = steps_per_epoch(
      num_examples, batch_size, drop_remainder=drop_remainder
  )
  total_steps = None if num_epochs is None else num_epochs * num_steps_per_epoch
  if total_steps is not None and start_step > total_steps:
    raise ValueError(
        f'start_step={start_step} is past the end ({num_epochs} epochs ='
        f' {total_steps} steps).'
    )
  return _generate(
      source,
      batch_size=batch_size,
      seed=seed,
      shuffle=shuffle,
      drop_remainder=drop_remainder,
      binarize=binarize,
      num_steps_per_epoch=num_steps_per_epoch,
      total_steps=total_steps,
      process_index=process_index,
      process_count=process_count,
      start_step=start_step,
  )


def _generate(
    source: sources_lib.Source,
    *,
    batch_size: int,
    seed: int,
    shuffle: bool,
    drop_remainder: bool,
    binarize: bool,
    num_steps_per_epoch: int,
    total_steps: int | None,
    process_index: int,
    process_count: int,
    start_step: int,
) -> Iterator[dict[str, np.ndarray]]:
  """The iterator behind `batches`; arguments are already validated."""
  local_size = batch_size // process_count
  first_row = process_index * local_size
  element_shape = tuple(source.element_shape)
  order, order_epoch = None, None
  step = start_step
  while total_steps is None or step < total_steps:
    epoch, position = divmod(step, num_steps_per_epoch)
    if epoch != order_epoch:
      order = epoch_order(len(source), seed=seed, epoch=epoch, shuffle=shuffle)
      order_epoch = epoch
    global_indices = order[position * batch_size:(position + 1) * batch_size]
    indices = global_indices[first_row:first_row + local_size]
    num_real = len(indices)

    # A source may serve other arrays than images: token rows (int32) under
    # its `input_key` (ae_jax.molecules.data.TokenSource); padding rows are 0.
    dtype = getattr(source, 'dtype', np.float32)
    # Every array of a batch is new (a batch never shares memory with the
    # source) and 64-byte aligned, so placing it on a CPU device copies nothing.
    labels = _aligned_empty((local_size,), np.int32)
    if num_real == local_size:
      # No padding. The source's images are only read when binarizing.
      real_images, real_labels = source.get(indices)
      labels[:] = real_labels
      if not binarize:
        images = _aligned_empty((local_size, *element_shape), dtype)
        images[:] = real_images
    else:
      real_images = np.zeros((local_size, *element_shape), dtype)
      labels[:] = -1
      if num_real:
        real_images[:num_real], labels[:num_real] = source.get(indices)
      images = real_images
    if binarize:
      u = _binarization_noise(seed, step, (batch_size, *element_shape))
      u = u[first_row:first_row + local_size]
      # 1[u < 65536 x] as float32, written over the thresholds (scaling by a
      # power of 2 is exact in float32).
      images = _aligned_empty((local_size, *element_shape), np.float32)
      np.multiply(real_images, np.float32(65536.0), out=images)
      images = np.less(u, images, out=images)

    batch = {getattr(source, 'input_key', 'image'): images, 'label': labels}
    if not drop_remainder:
      mask = np.zeros((local_size,), np.float32)
      mask[:num_real] = 1.0
      batch['mask'] = mask
    yield batch
    step += 1
