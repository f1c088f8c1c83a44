"""Input corruptions for denoising autoencoders.

Every function maps a clean batch `x` in [0, 1] and a key to a corrupted batch of
the same shape and dtype, still in [0, 1]. The denoising objective trains the
model to reconstruct the clean `x` from the corrupted one.

References:
  Vincent et al. 2008, "Extracting and composing robust features with denoising
  autoencoders" (masking noise); Vincent et al. 2010, "Stacked denoising
  autoencoders" (additive Gaussian and salt-and-pepper noise).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

Corruption = Callable[[jax.Array, jax.Array], jax.Array]


def gaussian_noise(x: jax.Array, key: jax.Array, *, sigma: float) -> jax.Array:
  """x + sigma * eps, eps ~ N(0, I), clipped back to [0, 1]."""
  noisy = x + sigma * jax.random.normal(key, x.shape, x.dtype)
  return jnp.clip(noisy, 0.0, 1.0)


def masking_noise(x: jax.Array, key: jax.Array, *, fraction: float) -> jax.Array:
  """Sets each entry to 0 independently with probability `fraction`."""
  keep = jax.random.bernoulli(key, 1.0 - fraction, x.shape)
  return jnp.where(keep, x, jnp.zeros_like(x))


def salt_and_pepper(x: jax.Array, key: jax.Array, *, fraction: float) -> jax.Array:
  """Sets each entry, with probability `fraction`, to 0 or 1 with equal odds."""
  hit_key, value_key = jax.random.split(key)
  hit = jax.random.bernoulli(hit_key, fraction, x.shape)
  value = jax.random.bernoulli(value_key, 0.5, x.shape).astype(x.dtype)
  return jnp.where(hit, value, x)


def get_corruption(name: str, *, level: float) -> Corruption:
  """Returns `fn(x, key)` for a corruption named 'gaussian', 'masking' or 'salt_and_pepper'.

  Args:
    name: the corruption.
    level: sigma for 'gaussian', the corrupted fraction for the other two.
  """
  if name == 'gaussian':
    if level < 0:
      raise ValueError(f'Gaussian noise sigma must be >= 0, got {level}.')
    return lambda x, key: gaussian_noise(x, key, sigma=level)
  if not 0.0 <= level <= 1.0:
    raise ValueError(f'{name} noise fraction must be in [0, 1], got {level}.')
  if name == 'masking':
    return lambda x, key: masking_noise(x, key, fraction=level)
  if name == 'salt_and_pepper':
    return lambda x, key: salt_and_pepper(x, key, fraction=level)
  raise ValueError(
      f"Unknown noise {name!r}; expected 'gaussian', 'masking' or 'salt_and_pepper'.")
