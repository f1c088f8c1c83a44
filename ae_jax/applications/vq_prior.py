"""A VQ-VAE's second stage: an autoregressive prior over its code grids.

A trained VQ-VAE maps every image to a grid of code indices (7x7 for 28x28
inputs). A `GatedPixelCNN` learns p(c) = Π_i p(c_i | c_<i) over these grids
by cross-entropy on the frozen encoder's codes; ancestral sampling draws a
grid position by position (raster order) at a temperature, and the VQ-VAE's
decoder turns it into a new image.

The prior is trained as the second stage of the `vqvae` recipe
(`ae_jax/recipes/vqvae.py`, by the one training loop) with
`make_prior_objective`; this module holds what that stage and its figures
use: encoding and decoding code grids, the likelihood, sampling and the
baselines.

Shape letters: N examples, B batch, h, w code grid, K number of codes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax.applications import common

Array = jax.Array


# Jitted once per module (static) and input shape: the variables are arguments, not
# constants baked into the program, so the train and test splits, and every call
# for one run, share one compilation.
@functools.partial(jax.jit, static_argnums=(0,))
def _indices(vqvae, variables, x):
  return vqvae.apply(variables, x, train=False).indices


@functools.partial(jax.jit, static_argnums=(0, 3))
def _decode(vqvae, variables, codes, output_activation):
  logits = vqvae.apply(variables, codes, method=vqvae.decode_indices)
  out = jax.nn.sigmoid(logits) if output_activation == 'sigmoid' else logits
  return jnp.clip(out, 0.0, 1.0)


def encode_indices(vqvae: nn.Module, variables: Mapping[str, Any], images: np.ndarray, *,
                   batch_size: int = 256) -> np.ndarray:
  """Code indices int32 [N, h, w] of images [N, H, W, C] under a frozen VQ-VAE."""
  return common.map_batches(lambda x: _indices(vqvae, variables, x), images,
                            batch_size=batch_size).astype(np.int32)


def decode_indices(vqvae: nn.Module, variables: Mapping[str, Any], codes: np.ndarray, *,
                   output_activation: str = 'identity', batch_size: int = 256) -> np.ndarray:
  """Images [N, H, W, C] in [0, 1] decoded from code indices [N, h, w]."""
  if output_activation not in ('identity', 'sigmoid'):
    raise ValueError(f"output_activation must be 'identity' or 'sigmoid', got "
                     f'{output_activation!r}.')
  return common.map_batches(lambda c: _decode(vqvae, variables, c, output_activation),
                            np.asarray(codes, np.int32), batch_size=batch_size)


def code_nll(logits_BxHxWxK: Array, codes_BxHxW: Array) -> Array:
  """Per-example negative log-likelihood of code grids, nats, [B].

  -Σ_i log softmax(logits_i)[c_i], summed over the grid positions i.

  References:
    van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural
    Networks", ICML 2016 (the discrete softmax likelihood).
  """
  if logits_BxHxWxK.shape[:-1] != codes_BxHxW.shape:
    raise ValueError(f'logits {logits_BxHxWxK.shape} do not fit codes {codes_BxHxW.shape}.')
  nll = optax.softmax_cross_entropy_with_integer_labels(logits_BxHxWxK, codes_BxHxW)
  return jnp.sum(nll, axis=(1, 2))


def make_prior_objective(prior: nn.Module):
  """`fn(params, batch, key, *, step=0) -> (loss, metrics)` on `batch['codes']`.

  loss: mean NLL per code, nats. Metrics: 'nats_per_code', 'bits_per_image'
  (NLL of the whole grid in bits), 'accuracy' (argmax equals the code).
  Padding rows (batch['mask'] == 0) are not counted.
  """

  def objective(params, batch, key, *, step=0):
    del key, step
    codes = batch['codes']
    logits = prior.apply(params, codes)
    per_image = code_nll(logits, codes)
    num_positions = codes.shape[1] * codes.shape[2]
    mask = batch.get('mask')
    weights = jnp.ones(codes.shape[0]) if mask is None else mask.astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(weights), 1.0)
    nats_per_code = jnp.sum(per_image * weights) / denom / num_positions
    accuracy = jnp.mean(jnp.argmax(logits, -1) == codes, axis=(1, 2))
    metrics = {
        'nats_per_code': nats_per_code,
        'bits_per_image': nats_per_code * num_positions / math.log(2.0),
        'accuracy': jnp.sum(accuracy * weights) / denom,
    }
    return nats_per_code, metrics

  return objective


def sample_codes(prior: nn.Module, params: Mapping[str, Any], key: Array, num: int,
                 grid_shape: tuple[int, int], *, temperature: float = 1.0) -> Array:
  """Ancestral samples int32 [num, h, w] of the prior, in raster order.

  Each of the h·w positions reruns the network on the partial grid and draws
  the position's code from softmax(logits / temperature) with the key
  `fold_in(key, position)`; the positions after it do not affect its logits
  (the network is causal), so their placeholder zeros do not matter. One
  compilation serves every temperature.
  """
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0, got {temperature}.')
  if num <= 0 or len(grid_shape) != 2 or min(grid_shape) <= 0:
    raise ValueError(f'Expected num > 0 and a grid (h, w), got {num} and {grid_shape}.')
  return _sample_codes(prior, params, key, jnp.float32(temperature), int(num),
                       tuple(int(s) for s in grid_shape))


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _sample_codes(prior, params, key, temperature, num, grid_shape):
  h, w = grid_shape

  def body(position, codes):
    logits = prior.apply(params, codes).reshape(num, h * w, -1)
    logit = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
    drawn = jax.random.categorical(jax.random.fold_in(key, position), logit / temperature)
    return codes.reshape(num, h * w).at[:, position].set(drawn.astype(jnp.int32)).reshape(
        num, h, w)

  return jax.lax.fori_loop(0, h * w, body, jnp.zeros((num, h, w), jnp.int32))


def unigram_nats_per_code(train_codes: np.ndarray, test_codes: np.ndarray,
                          num_codes: int) -> float:
  """Test NLL per code of the train code frequencies (add-one smoothed): what a
  prior that ignores context scores."""
  train_codes = _check_codes('train_codes', train_codes, num_codes)
  test_codes = _check_codes('test_codes', test_codes, num_codes)
  counts = np.bincount(train_codes.ravel(), minlength=num_codes) + 1.0
  log_p = np.log(counts / counts.sum())
  return float(-np.mean(log_p[test_codes.ravel()]))


def _check_codes(name: str, codes: np.ndarray, num_codes: int) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f'{name} must be int codes [N, h, w], got {codes.dtype} {codes.shape}.')
  if codes.size and (codes.min() < 0 or codes.max() >= num_codes):
    raise ValueError(f'{name} must lie in [0, {num_codes}), got [{codes.min()}, {codes.max()}].')
  return codes.astype(np.int32)


@functools.partial(jax.jit, static_argnums=(0,))
def _grid_nll(prior, params, codes):
  return code_nll(prior.apply(params, codes), codes)


def evaluate_prior(prior: nn.Module, params, codes: np.ndarray, *,
                   batch_size: int = 500) -> dict[str, float]:
  """Mean test metrics of `make_prior_objective` over all of `codes` int [N, h, w]."""
  codes = _check_codes('codes', codes, prior.num_codes)
  per_image = common.map_batches(lambda c: _grid_nll(prior, params, c), codes,
                                 batch_size=batch_size)
  nats_per_code = float(np.mean(per_image)) / (codes.shape[1] * codes.shape[2])
  return {'nats_per_code': nats_per_code,
          'bits_per_image': nats_per_code * codes.shape[1] * codes.shape[2] / math.log(2.0)}
