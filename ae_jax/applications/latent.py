"""Walking the latent space: interpolation, attribute vectors, traversals.

Codes come from `embedding.embed` (the posterior mean for a VAE, z for an
autoencoder, the flattened z_e for a VQ-VAE) and go back to images through
`decode`. The operations themselves are plain array functions:

- `interpolate(z0, z1, num, method='linear'|'slerp')`: the linear path
  (1 - t) z0 + t z1, or the spherical one, which follows the great circle and
  keeps the norm when |z0| = |z1|. Under a Gaussian prior in Z dimensions
  codes concentrate near the sphere of radius sqrt(Z), and the linear
  midpoint of two of them falls inside it, where the prior has little mass
  (White 2016);
- `attribute_vector(codes, has_attribute)`: mean code of the examples with
  the attribute minus the mean of those without; adding it to a code adds
  the attribute (e.g. turns a 3 into an 8 when the attribute is "is an 8",
  taken over 3s and 8s);
- `traverse(z, values)`: one latent dimension at a time set to each value,
  the others held.

Shape letters: N examples, T steps along a path, Z code size, V values.

References:
  Shoemake, "Animating rotation with quaternion curves", SIGGRAPH 1985
  (slerp).
  White, "Sampling Generative Networks", 2016,
  https://arxiv.org/abs/1609.04468 (slerp for latent spaces, attribute
  vectors).
  Larsen et al., "Autoencoding beyond pixels using a learned similarity
  metric", ICML 2016 (attribute vectors as mean differences).
  Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR
  2016 (active units).
  Higgins et al., "beta-VAE: Learning Basic Visual Concepts with a
  Constrained Variational Framework", ICLR 2017 (latent traversals).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax.applications import common
from ae_jax.applications import embedding

Variables = common.Variables

METHODS = ('linear', 'slerp')


def interpolate(z0: jax.Array, z1: jax.Array, num: int, *, method: str = 'linear',
                eps: float = 1e-7) -> jax.Array:
  """`num` points from z0 to z1, both included, [num, *z0.shape].

  Args:
    z0, z1: codes of the same shape (any shape: they are treated as flat
      vectors).
    num: number of points T >= 2, at t = 0, 1/(T-1), ..., 1.
    method: 'linear', (1 - t) z0 + t z1; or 'slerp',
      sin((1 - t) w) / sin(w) z0 + sin(t w) / sin(w) z1, w the angle between
      z0 and z1 (linear when they are parallel, |sin w| < eps).
    eps: the parallel cut-off.

  Returns:
    [T, ...] codes.
  """
  if method not in METHODS:
    raise ValueError(f'method must be one of {METHODS}, got {method!r}.')
  if num < 2:
    raise ValueError(f'num must be >= 2 (the two endpoints), got {num}.')
  z0, z1 = jnp.asarray(z0), jnp.asarray(z1)
  if z0.shape != z1.shape:
    raise ValueError(f'z0 and z1 must have one shape, got {z0.shape} and {z1.shape}.')
  t = jnp.linspace(0.0, 1.0, num, dtype=jnp.result_type(z0.dtype, jnp.float32))
  t = t.reshape((num,) + (1,) * z0.ndim)
  linear = (1.0 - t) * z0 + t * z1
  if method == 'linear':
    return linear
  norms = jnp.linalg.norm(z0.ravel()) * jnp.linalg.norm(z1.ravel())
  cos = jnp.clip(jnp.vdot(z0.ravel(), z1.ravel()) / jnp.maximum(norms, eps), -1.0, 1.0)
  omega = jnp.arccos(cos)
  sin = jnp.sin(omega)
  safe_sin = jnp.where(jnp.abs(sin) < eps, 1.0, sin)
  spherical = (jnp.sin((1.0 - t) * omega) * z0 + jnp.sin(t * omega) * z1) / safe_sin
  return jnp.where(jnp.abs(sin) < eps, linear, spherical)


def attribute_vector(codes_NxZ: np.ndarray, has_attribute_N: np.ndarray) -> np.ndarray:
  """Mean code with the attribute minus mean code without it, [Z]."""
  codes = np.asarray(codes_NxZ)
  has = np.asarray(has_attribute_N, bool)
  if has.shape != codes.shape[:1]:
    raise ValueError(f'has_attribute must be [N] = [{len(codes)}], got {has.shape}.')
  if has.all() or not has.any():
    raise ValueError('Need examples both with and without the attribute.')
  return codes[has].mean(0) - codes[~has].mean(0)


def apply_attribute(z_Z: np.ndarray, vector_Z: np.ndarray, scales_V: Sequence[float]
                    ) -> np.ndarray:
  """z + s * vector for each scale s, [V, Z]: latent arithmetic along an attribute."""
  scales = np.asarray(scales_V, np.float32).reshape((-1,) + (1,) * np.ndim(z_Z))
  return np.asarray(z_Z)[None] + scales * np.asarray(vector_Z)[None]


def traverse(z_Z: np.ndarray, values: np.ndarray, *, dims: Sequence[int] | None = None
             ) -> np.ndarray:
  """Codes with one dimension at a time set to each value, the rest from z.

  Args:
    z_Z: the base code, [Z].
    values: [V] values shared by every dimension, or [len(dims), V], one row
      per dimension (e.g. quantiles of each dimension over the data).
    dims: dimensions to traverse (default all Z).

  Returns:
    [len(dims), V, Z]; entry [i, v] equals z except at dims[i], which is
    values[v] (or values[i, v]).
  """
  z = np.asarray(z_Z)
  if z.ndim != 1:
    raise ValueError(f'traverse takes one flat code [Z], got shape {z.shape}.')
  dims = list(range(z.shape[0])) if dims is None else list(dims)
  values = np.asarray(values, z.dtype)
  if values.ndim == 1:
    values = np.broadcast_to(values, (len(dims), values.shape[0]))
  if values.shape[0] != len(dims):
    raise ValueError(f'values has {values.shape[0]} rows for {len(dims)} dims.')
  out = np.broadcast_to(z, (len(dims), values.shape[1], z.shape[0])).copy()
  for i, d in enumerate(dims):
    out[i, :, d] = values[i]
  return out


def code_shape(model: nn.Module, variables: Variables, image_shape: Sequence[int]
               ) -> tuple[int, ...]:
  """Shape of one unflattened code: (Z,), or (h, w, D) for a VQ-VAE's z_e."""
  x = jax.ShapeDtypeStruct((1,) + tuple(image_shape), jnp.float32)
  if embedding.code_family(model) == 'vae':
    mean, _ = jax.eval_shape(lambda v, x: model.apply(v, x, method='encode'), variables, x)
    return tuple(mean.shape[1:])
  z = jax.eval_shape(lambda v, x: model.apply(v, x, method='encode'), variables, x)
  return tuple(z.shape[1:])


def decode(model: nn.Module, variables: Variables, codes: np.ndarray,
           image_shape: Sequence[int], *, batch_size: int = 256,
           output_activation: str = 'sigmoid', quantize: bool = True) -> np.ndarray:
  """Images [..., H, W, C] of codes [..., Z] (any leading axes) in pixel space.

  A VQ-VAE's codes are flat z_e: they are reshaped to the latent grid and,
  with `quantize`, snapped to the nearest codebook entries before decoding
  (as the model does), so a path between two z_e moves in jumps.
  """
  embedding.to_pixels(np.zeros(()), output_activation)  # Rejects a bad name before any work.
  family = embedding.code_family(model)
  shape = code_shape(model, variables, image_shape)
  codes = np.asarray(codes, np.float32)
  lead = codes.shape[:-1]
  flat = codes.reshape((-1,) + shape)

  @jax.jit
  def fn(variables, z):
    if family == 'vqvae' and quantize:
      z = model.apply(variables, z, method='quantize').quantized
    logits = model.apply(variables, z, method='decode')
    logits = logits.reshape((z.shape[0],) + tuple(image_shape))
    return embedding.to_pixels(logits, output_activation)

  images = common.map_batches(functools.partial(fn, variables), flat, batch_size=batch_size)
  return images.reshape(lead + tuple(image_shape))


def latent_activity(codes_NxZ: np.ndarray) -> np.ndarray:
  """Variance over the data of each code dimension, [Z].

  For a VAE whose codes are posterior means this is the activity
  A_z = Cov_x(E_q(z|x)[z]) of Burda et al. 2016; units with A_z < 0.01 are
  "inactive": the decoder ignores them and the posterior equals the prior.
  """
  return np.asarray(codes_NxZ, np.float64).reshape(len(codes_NxZ), -1).var(0)


def active_dims(codes_NxZ: np.ndarray) -> np.ndarray:
  """Dimensions ordered by `latent_activity`, most active first, int [Z]."""
  return np.argsort(-latent_activity(codes_NxZ), kind='stable')
