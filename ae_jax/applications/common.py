"""What the applications share: batched inference, a run's config, JSON output.

Every application takes a model and its `variables`, the dict given to
`model.apply` (`{'params': ...}`, plus `{'vq_stats': ...}` for an EMA
VQ-VAE), and numpy images [N, H, W, C] in [0, 1]. Inference runs under
`jax.jit` in batches of a fixed size; the last batch is padded so that one
compilation serves the whole set, and the padding rows are dropped again.

What kind of code a model has is its `family` attribute ('ae', 'vae',
'vqvae', ...; see `ae_jax.models`). A trained run's `(model, variables)` come
from `ae_jax.training.restore_variables` or `train_or_restore`: the
applications never import the training side.

Shape letters: N examples, B batch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import data as data_lib

Variables = Mapping[str, Any]


def map_batches(
    fn: Callable[..., Any],
    images: np.ndarray,
    *,
    batch_size: int,
    key: jax.Array | None = None,
    desc: str | None = None,
) -> Any:
  """Applies `fn` to `images` in batches and concatenates the results.

  Args:
    fn: jitted `fn(x_B)` or, with `key`, `fn(x_B, keys_B)`, returning an array
      or a pytree of arrays whose leading axis is B.
    images: [N, ...] numpy or jax array.
    batch_size: B; the last batch is padded with copies of its first row.
    key: with a key, example n gets `fold_in(key, n)`: its randomness then does
      not depend on the batch size or on its neighbours in the batch.
    desc: label of a progress bar; None shows none.

  Returns:
    The pytree of `fn`'s outputs as numpy arrays with leading axis N.
  """
  import tqdm  # pylint: disable=g-import-not-at-top
  if batch_size <= 0:
    raise ValueError(f'batch_size must be > 0, got {batch_size}.')
  num = len(images)
  if num == 0:
    raise ValueError('No images given.')
  outputs = []
  starts = range(0, num, batch_size)
  for start in tqdm.tqdm(starts, desc=desc, disable=desc is None, leave=False,
                         dynamic_ncols=True):
    x = np.asarray(images[start:start + batch_size])
    real = len(x)
    if real < batch_size:
      x = np.concatenate([x, np.repeat(x[:1], batch_size - real, axis=0)])
    if key is None:
      out = fn(jnp.asarray(x))
    else:
      # Padding rows reuse index `start`; they are dropped below.
      index = np.minimum(np.arange(start, start + batch_size), start + real - 1)
      keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(index))
      out = fn(jnp.asarray(x), keys)
    outputs.append(jax.tree.map(lambda a, r=real: np.asarray(a)[:r], out))
  return jax.tree.map(lambda *parts: np.concatenate(parts), *outputs)


def image_shape(config: ml_collections.ConfigDict) -> tuple[int, int, int]:
  """[H, W, C] of the training images a run's config names."""
  source = data_lib.open_source(config.data.name, config.data.train_split,
                                data_dir=config.data.get('data_dir'))
  return tuple(source.element_shape)


def output_activation(config: ml_collections.ConfigDict) -> str:
  """How a run's decoder logits map to pixels: 'sigmoid' unless the loss says 'identity'."""
  return config.loss.get('output_activation', 'sigmoid') if 'loss' in config else 'sigmoid'


def reconstruction_kind(config: ml_collections.ConfigDict) -> str:
  """The run's likelihood: 'bernoulli' or 'mse' (VQ-VAE defaults to 'mse')."""
  default = 'mse' if config.model.name == 'vqvae' else 'bernoulli'
  return config.loss.get('reconstruction', default)


def to_jsonable(value: Any) -> Any:
  """Nested dicts, lists, numpy and jax scalars and arrays as plain JSON types."""
  if isinstance(value, Mapping):
    return {str(k): to_jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [to_jsonable(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return to_jsonable(np.asarray(value).tolist())
  if isinstance(value, np.generic):
    return value.item()
  return value


def write_json(path: str, value: Any) -> str:
  """Writes `to_jsonable(value)` to `path`, indented; returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, 'w') as f:
    json.dump(to_jsonable(value), f, indent=2, sort_keys=True)
    f.write('\n')
  return path
