"""Importance-weighted estimates of log p(x) for the Gaussian-latent models.

For a latent-variable model p(x, z) with inference network q(z | x), draw K
samples z_k ~ q(z | x) and form the importance weights
w_k = p(x | z_k) p(z_k) / q(z_k | x). Then

  L_K(x) = log (1/K) Σ_k w_k

is the K-sample IWAE bound: E[L_K] ≤ log p(x), E[L_1] is the ELBO,
E[L_K] ≤ E[L_{K+1}], and L_K → log p(x) as K → ∞ (Burda et al. 2016,
Theorem 1). `iwae_log_likelihood` returns L_K per example; with K = 5000 it is
the usual test log-likelihood estimate, reported in nats and in bits per
dimension, -L_K / (D ln 2) (`bits_per_dim`).

Models. A model is scored through three methods of its own (`supports`):

  importance_context(x)    what the samples of x share, computed once per
                           example (a VAE's posterior (μ, log σ²), a ladder's
                           bottom-up pass), a pytree with leading axis B;
  importance_noise(key)    the standard normal noise of one sample of one
                           example (an `nn.nowrap` method: no variables);
  log_weight_terms(context, x, noise)
                           (log p(x | z), log p(z), log q(z | x)), each [B],
                           at the z the noise gives.

`models.MLPVAE` and `models.ConvVAE` (one layer, q(z|x) = N(μ(x), σ²(x)),
p(z) = N(0, I)) and `models.LadderVAE` (log p(z) and log q(z|x) summed over
its layers) have them; their decoders are Bernoulli. Only the sampling and
decoding are repeated per sample.

Memory. The K samples are evaluated `chunk_size` at a time under
`jax.lax.map`, so memory grows with B × chunk_size decoder passes, not with
K: K = 5000 fits where 5000 passes at once would not.

Randomness. Example b of a batch scored with `key` uses fold_in(key, b)
(or the b-th of a [B] array of keys), and its sample k uses
fold_in(fold_in(key, b), k): an estimate does not depend on the batch size
or the chunking.

Shape letters: B batch, K importance samples, C chunk, Z latent, D input size.

References:
  Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR
  2016, https://arxiv.org/abs/1509.00519 (Eq. 8, Theorem 1, Sec. 5: the
  k = 5000 test estimate).
  Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016 (the
  ladder's log-likelihoods by the same estimator).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

Variables = Mapping[str, Any]

# The methods a model scores itself with; see the module docstring.
_METHODS = ('importance_context', 'importance_noise', 'log_weight_terms')


class LogWeightTerms(NamedTuple):
  """Log densities of K posterior samples per example, each [B, K] nats.

  Attributes:
    log_px_z: log p(x | z_k).
    log_pz: log p(z_k) (summed over the layers of a hierarchy).
    log_qz: log q(z_k | x).
  """
  log_px_z: jax.Array
  log_pz: jax.Array
  log_qz: jax.Array

  def log_weights(self, beta: float | jax.Array = 1.0) -> jax.Array:
    """log w_k = log p(x|z_k) + β (log p(z_k) - log q(z_k|x)), [B, K]; β = 1 is IWAE."""
    return self.log_px_z + beta * (self.log_pz - self.log_qz)


def supports(model: nn.Module) -> bool:
  """Whether `model` has a Gaussian posterior q(z|x) it can be scored through
  (the methods of the module docstring)."""
  return all(callable(getattr(model, m, None)) for m in _METHODS)


def _check_supported(model: nn.Module) -> None:
  if not supports(model):
    raise ValueError(
        f'{type(model).__name__} has no Gaussian posterior q(z|x) to sample (no '
        f'{"/".join(_METHODS)} methods); the importance-weighted likelihood needs e.g. an '
        'MLPVAE, ConvVAE or LadderVAE.')


def log_mean_exp(a: jax.Array, axis: int = -1) -> jax.Array:
  """log((1/K) Σ_k exp(a_k)) along `axis`, computed stably through logsumexp."""
  return jax.nn.logsumexp(a, axis=axis) - jnp.log(a.shape[axis])


def example_keys(key: jax.Array, batch_size: int) -> jax.Array:
  """[B] keys: `key` itself if it already holds one per example, else fold_in(key, b)."""
  if key.ndim == 1:
    if key.shape[0] != batch_size:
      raise ValueError(f'Got {key.shape[0]} keys for a batch of {batch_size}.')
    return key
  return jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.arange(batch_size))


def log_weight_terms(
    model: nn.Module,
    variables: Variables,
    x: jax.Array,
    key: jax.Array,
    *,
    num_samples: int,
    chunk_size: int | None = None,
) -> LogWeightTerms:
  """Draws K samples z_k ~ q(z | x) per example and evaluates their log densities.

  Differentiable in `variables` (the reparameterization trick), so it also
  serves the IWAE training objective.

  Args:
    model: a model that `supports` accepts (`MLPVAE`, `ConvVAE`, `LadderVAE`).
    variables: its variables.
    x: a batch [B, ...] in [0, 1] (binary for a proper likelihood).
    key: one key (example b then uses fold_in(key, b)) or one key per
      example, [B].
    num_samples: K >= 1.
    chunk_size: samples evaluated at once (None: all K). The result does not
      depend on it beyond float rounding.

  Returns:
    `LogWeightTerms`, each [B, K].
  """
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}.')
  chunk_size = num_samples if chunk_size is None else min(chunk_size, num_samples)
  if chunk_size < 1:
    raise ValueError(f'chunk_size must be >= 1, got {chunk_size}.')
  _check_supported(model)
  batch = x.shape[0]
  keys_B = example_keys(key, batch)
  context = model.apply(variables, x, method='importance_context')

  def chunk(indices_C):
    num = indices_C.shape[0]
    # Sample i of example b comes from fold_in(key_b, i): the same whatever the chunking.
    noise = jax.vmap(lambda k_b: jax.vmap(
        lambda i: model.importance_noise(jax.random.fold_in(k_b, i)))(indices_C))(keys_B)
    flat = lambda a: a.reshape((batch * num,) + a.shape[2:])
    context_rep = jax.tree.map(lambda a: jnp.repeat(a, num, axis=0), context)
    x_rep = jnp.repeat(x, num, axis=0)
    parts = model.apply(variables, context_rep, x_rep, jax.tree.map(flat, noise),
                        method='log_weight_terms')
    return tuple(p.reshape(batch, num) for p in parts)

  num_chunks = -(-num_samples // chunk_size)
  if num_chunks == 1:
    parts = chunk(jnp.arange(num_samples))
  else:
    indices = jnp.arange(num_chunks * chunk_size).reshape(num_chunks, chunk_size)
    # lax.map runs the chunks one after another: memory holds one chunk's passes.
    stacked = jax.lax.map(chunk, indices)
    parts = tuple(jnp.moveaxis(p, 0, 1).reshape(batch, -1)[:, :num_samples] for p in stacked)
  return LogWeightTerms(*parts)


def iwae_log_likelihood(model: nn.Module, variables: Variables, x: jax.Array,
                        key: jax.Array, *, num_samples: int,
                        chunk_size: int | None = None) -> jax.Array:
  """The K-sample importance-weighted estimate L_K of log p(x), [B] nats.

  L_K = log (1/K) Σ_k w_k; at K = 1 it is the single-sample ELBO estimate
  log p(x|z) + log p(z) - log q(z|x) (Burda et al. 2016, Eq. 8).
  """
  terms = log_weight_terms(model, variables, x, key, num_samples=num_samples,
                           chunk_size=chunk_size)
  return log_mean_exp(terms.log_weights())


def bits_per_dim(nats: float | np.ndarray | jax.Array, num_dims: int):
  """-log p(x) in bits per dimension from log p(x) in nats: -nats / (D ln 2)."""
  if num_dims <= 0:
    raise ValueError(f'num_dims must be > 0, got {num_dims}.')
  return -nats / (num_dims * math.log(2.0))


def evaluate_log_likelihood(
    model: nn.Module,
    variables: Variables,
    images: np.ndarray,
    key: jax.Array,
    *,
    num_samples: int,
    chunk_size: int | None = 100,
    batch_size: int = 100,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
  """L_K over a set of images, in batches under one jitted function.

  Args:
    model, variables: a trained model (see `supports`).
    images: [N, ...] in [0, 1], binary for a likelihood of binary data.
    key: example n uses fold_in(key, n): its estimate does not depend on the
      batch size.
    num_samples: K.
    chunk_size: samples evaluated at once per example.
    batch_size: examples per call; the last batch is padded and the padding
      dropped.
    progress: called as progress(done, total) after each batch, or None.

  Returns:
    {'log_likelihood': per-example L_K [N] (float64 numpy), 'nats': mean
    L_K, 'nll_nats': -mean, 'stderr_nats': standard error of the mean over
    examples, 'bits_per_dim': -mean / (D ln 2), 'elbo_nats': the mean over
    examples of the K log weights' mean (a K-sample ELBO estimate from the
    same samples), 'num_samples': K, 'num_examples': N, 'num_dims': D}.
  """
  _check_supported(model)
  images = np.asarray(images)
  if images.ndim < 2 or len(images) == 0:
    raise ValueError(f'Expected images [N, ...] with N > 0, got shape {images.shape}.')
  if images.min() < 0.0 or images.max() > 1.0:
    raise ValueError(f'Images must lie in [0, 1]; got [{images.min()}, {images.max()}].')
  if batch_size <= 0:
    raise ValueError(f'batch_size must be > 0, got {batch_size}.')

  @jax.jit
  def fn(x, keys):
    log_w = log_weight_terms(model, variables, x, keys, num_samples=num_samples,
                             chunk_size=chunk_size).log_weights()
    return log_mean_exp(log_w), jnp.mean(log_w, axis=1)

  num = len(images)
  out, elbos = [], []
  for start in range(0, num, batch_size):
    x = images[start:start + batch_size].astype(np.float32)
    real = len(x)
    if real < batch_size:
      x = np.concatenate([x, np.repeat(x[:1], batch_size - real, axis=0)])
    index = np.minimum(np.arange(start, start + batch_size), num - 1)
    keys = jax.vmap(jax.random.fold_in, in_axes=(None, 0))(key, jnp.asarray(index))
    iwae, elbo = fn(jnp.asarray(x), keys)
    out.append(np.asarray(iwae, np.float64)[:real])
    elbos.append(np.asarray(elbo, np.float64)[:real])
    if progress is not None:
      progress(start + real, num)
  values = np.concatenate(out)
  num_dims = int(np.prod(images.shape[1:]))
  mean = float(values.mean())
  return {
      'log_likelihood': values,
      'nats': mean,
      'nll_nats': -mean,
      'stderr_nats': float(values.std(ddof=1) / np.sqrt(num)) if num > 1 else float('nan'),
      'bits_per_dim': float(bits_per_dim(mean, num_dims)),
      'elbo_nats': float(np.concatenate(elbos).mean()),
      'num_samples': num_samples,
      'num_examples': num,
      'num_dims': num_dims,
  }


def active_units(means_NxZ: np.ndarray, *, threshold: float = 0.01) -> int:
  """Burda et al.'s active units: #{j : Cov_x(E_q[z_j | x]) > threshold}.

  Args:
    means_NxZ: posterior means E_q[z | x_n] of N examples.
    threshold: the variance above which a unit counts as active (0.01 in the paper).

  References:
    Burda et al., "Importance Weighted Autoencoders", ICLR 2016, Sec. 5.2.
  """
  means_NxZ = np.asarray(means_NxZ, np.float64)
  if means_NxZ.ndim != 2 or len(means_NxZ) < 2:
    raise ValueError(f'Expected means [N, Z] with N >= 2, got shape {means_NxZ.shape}.')
  return int(np.sum(np.var(means_NxZ, axis=0) > threshold))
