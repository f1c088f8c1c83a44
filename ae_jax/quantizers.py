"""Vector quantizers for VQ-VAE-style models, each a flax linen module.

The contract every quantizer here keeps (`ae_jax.models.VQVAE` relies on it):

  out = quantizer(z, train=False)   # z [..., D] -> QuantizerOutput
  codes = quantizer.embed(indices)  # out.indices -> out.z_q, [..., D]

`out.quantized` is what the decoder sees (equal to `out.z_q` in value; its
gradient reaches z through the straight-through estimator or the rotation
trick). `out.commitment` and `out.codebook` are per-vector losses [...] (mean
over D), `out.aux_loss` a scalar the quantizer adds to the objective (the LFQ
entropy penalty) and `out.metrics` extra scalar metrics. The objective adds
`codebook + commitment_cost * commitment + aux_loss`; `codebook` is zero
where the codebook does not learn by gradient (EMA, FSQ, LFQ).

Quantizers:
  VectorQuantizer          codebook trained by gradient (van den Oord et al. 2017).
  VectorQuantizerEMA       EMA codebook, dead-code restart by EMA usage, k-means
                           initialisation from the first training batch.
  FiniteScalarQuantizer    FSQ: bounded per-channel rounding (Mentzer et al. 2023).
  LookupFreeQuantizer      LFQ: per-channel sign, entropy penalty (Yu et al. 2023).
  ResidualVectorQuantizer  residual VQ with quantizer dropout (Zeghidour et al. 2021).
  GroupedVectorQuantizer   product VQ: channel groups, one codebook each.
Options of the codebook quantizers: `gradient='rotation'` (the rotation trick,
Fifty et al. 2024) instead of the straight-through estimator, and
`cosine=True`, l2-normalised codes and inputs (ViT-VQGAN, Yu et al. 2021).

Data parallelism: under `jax.jit` with a batch-sharded `NamedSharding` (what
`ae_jax.parallel` and the training loop use) every statistic is computed on the
global batch; leave `axis_name=None`. Under `jax.pmap` / `shard_map` set
`axis_name` to the mapped axis: EMA counts and sums are `psum`-ed, k-means runs
on the all-gathered batch, and LFQ's batch entropy uses the replicas' summed
code probabilities, so every replica computes what one device computes on the
concatenated batch. `perplexity` and `usage` are computed on the local batch.

Shape letters: D code dimension, K number of codes, N number of vectors
quantized (batch times spatial positions), R replicas, S residual stages,
G groups.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

Array = jax.Array
sg = jax.lax.stop_gradient

GRADIENTS = ('ste', 'rotation')


class QuantizerOutput(flax.struct.PyTreeNode):
  """Output of a quantizer.

  Attributes:
    z_q: codes, [..., D]; gradients reach a gradient-trained codebook through
      it, never the encoder.
    quantized: what the decoder sees, [..., D]: z_q in value, with the
      gradient estimator's backward pass to the input ('ste': identity;
      'rotation': the rotation trick), none to the codebook.
    indices: int32 code indices, [...], or [..., S] / [..., G] for residual
      and grouped VQ (one per stage or group).
    perplexity: exp(entropy of the code frequencies in the batch), scalar in
      [1, K]; K when all codes are used equally (mean over stages/groups).
    usage: fraction of the K codes used at least once in the batch, scalar.
    commitment: per-vector commitment loss mean_D (z - sg[z_q])^2, [...].
    codebook: per-vector codebook loss mean_D (sg[z] - z_q)^2, [...]; zeros
      where the codebook does not learn by gradient.
    aux_loss: scalar the quantizer adds to the objective (0 for most).
    metrics: extra scalar metrics by name.
  """
  z_q: Array
  quantized: Array
  indices: Array
  perplexity: Array
  usage: Array
  commitment: Array
  codebook: Array
  aux_loss: Array
  metrics: dict[str, Array]


def nearest_code_indices(z_NxD: Array, codebook_KxD: Array) -> Array:
  """Index of the nearest code (squared Euclidean distance) for each row.

  Uses ||z - e||^2 = ||z||^2 - 2 z.e + ||e||^2, so memory is O(N K) and the
  [N, K, D] tensor of differences is never formed. The matmul runs at highest
  precision so bfloat16 passes on accelerators do not flip near-ties.

  Args:
    z_NxD: vectors to quantize.
    codebook_KxD: codes.

  Returns:
    int32 [N] indices into the codebook.
  """
  z_NxD = sg(z_NxD)
  codebook_KxD = sg(codebook_KxD)
  dots_NxK = jnp.dot(z_NxD, codebook_KxD.T, precision=jax.lax.Precision.HIGHEST)
  dist_NxK = (jnp.sum(z_NxD**2, axis=1, keepdims=True) - 2.0 * dots_NxK +
              jnp.sum(codebook_KxD**2, axis=1)[None, :])
  return jnp.argmin(dist_NxK, axis=1).astype(jnp.int32)


def code_counts(indices: Array, num_codes: int, weights: Array | None = None) -> Array:
  """Uses of each code, float32 [K], from indices of any shape (optionally weighted)."""
  if weights is None:
    return jnp.bincount(indices.reshape(-1), length=num_codes).astype(jnp.float32)
  return jax.ops.segment_sum(weights.reshape(-1).astype(jnp.float32), indices.reshape(-1),
                             num_segments=num_codes)


def perplexity_and_usage(counts_K: Array) -> tuple[Array, Array]:
  """Perplexity exp(-sum_k p_k log p_k), p = counts / sum, and fraction used.

  Args:
    counts_K: per-code counts (any nonnegative numbers with positive sum).

  Returns:
    (perplexity, usage) scalars; 0 log 0 is taken as 0, and all-zero counts
    (a residual stage that quantizer dropout left unused) give (1, 0).
  """
  p_K = counts_K / jnp.maximum(jnp.sum(counts_K), jnp.finfo(jnp.float32).tiny)
  entropy = -jnp.sum(jax.scipy.special.xlogy(p_K, p_K))
  usage = jnp.mean((counts_K > 0).astype(jnp.float32))
  return jnp.exp(entropy), usage


def codebook_init(key: Array, shape: Sequence[int], dtype: Any = jnp.float32) -> Array:
  """Uniform init U(-sqrt(3/D), sqrt(3/D)) of a [K, D] codebook.

  Variance-scaling with fan-in D, i.e. unit variance for code.z when z has
  unit-variance entries: the "uniform unit scaling" of the original VQ-VAE
  code and Sonnet/Haiku's `VarianceScaling(distribution='uniform')` on their
  [D, K] embedding matrix.
  """
  limit = math.sqrt(3.0 / shape[-1])
  return jax.random.uniform(key, tuple(shape), dtype, -limit, limit)


def _l2_normalize(x: Array, eps: float = 1e-12) -> Array:
  return x * jax.lax.rsqrt(jnp.maximum(jnp.sum(x * x, axis=-1, keepdims=True), eps))


def straight_through(z: Array, z_q: Array) -> Array:
  """z + sg(z_q - z): the value z_q, the gradient passed to z unchanged.

  References:
    Bengio, Leonard & Courville, "Estimating or Propagating Gradients Through
    Stochastic Neurons", 2013, https://arxiv.org/abs/1308.3432.
  """
  return z + sg(z_q - z)


def rotation_trick(z: Array, z_q: Array, eps: float = 1e-6) -> Array:
  """The value z_q, with the gradient to z rotated and rescaled (the rotation trick).

  Forward: q~ = sg(lambda R) z = z_q, where lambda = ||z_q|| / ||z|| and R is
  the rotation taking z^ = z / ||z|| to q^ = z_q / ||z_q|| in the plane they
  span:  R = I - 2 w w^T + 2 q^ z^T,  w = (z^ + q^) / ||z^ + q^||.
  Backward: a decoder-side gradient g reaches z as lambda R^T g. Since R^T is
  orthogonal and R^T q^ = z^, <R^T g, z^> = <g, q^>: the angle between the
  encoder's gradient and z equals the angle between g and the code z_q, and
  its norm is lambda ||g||. (STE passes g unchanged.) No gradient reaches z_q.
  The forward value is made exactly z_q with a stop-gradient correction.

  Args:
    z: inputs, [..., D].
    z_q: their codes, [..., D].
    eps: guards the norms of zero vectors.

  Returns:
    [..., D], equal to z_q.

  References:
    Fifty et al., "Restructuring Vector Quantization with the Rotation Trick",
    ICLR 2025, https://arxiv.org/abs/2410.06424 (Sec. 4.2, Eq. 5).
  """
  z_norm = jnp.linalg.norm(z, axis=-1, keepdims=True)
  q_norm = jnp.linalg.norm(z_q, axis=-1, keepdims=True)
  u = sg(z / jnp.maximum(z_norm, eps))
  v = sg(z_q / jnp.maximum(q_norm, eps))
  w = u + v
  w = sg(w / jnp.maximum(jnp.linalg.norm(w, axis=-1, keepdims=True), eps))
  scale = sg(jnp.where(z_norm > eps, q_norm / jnp.maximum(z_norm, eps), 1.0))
  dot = lambda a, b: jnp.sum(a * b, axis=-1, keepdims=True)
  rotated = scale * (z - 2.0 * w * dot(w, z) + 2.0 * v * dot(u, z))
  return rotated + sg(z_q - rotated)


def _estimator(gradient: str):
  return rotation_trick if gradient == 'rotation' else straight_through


def _check_choice(owner: str, field: str, value: Any, choices: Sequence[Any]) -> None:
  if value not in choices:
    raise ValueError(f'{owner}.{field} must be one of {tuple(choices)}, got {value!r}.')


def _check_last_axis(z: Array, code_dim: int, owner: str) -> None:
  if z.shape[-1] != code_dim:
    raise ValueError(f'{owner}: the last axis of the input is {z.shape[-1]}, expected '
                     f'code_dim={code_dim} (input shape {z.shape}).')


def _global_sum(x: Array, axis_name: str | None) -> Array:
  """x summed over `axis_name`, with the gradient of the replicas' pmean-ed step.

  The value is psum(x). The gradient reaches only the local x, scaled by the
  replica count R: a pmap step `pmean`s gradients, so the R local gradients,
  each R times their share, average to the gradient of the global sum.
  """
  if axis_name is None:
    return x
  replicas = jax.lax.psum(1, axis_name)
  local = replicas * x
  return local + sg(jax.lax.psum(sg(x), axis_name) - local)


def _sample_rows(key: Array, z_NxD: Array, num: int, weights_N: Array | None = None) -> Array:
  """`num` rows of z_NxD drawn uniformly (among rows of positive weight), without
  replacement when there are at least `num` candidates."""
  n = z_NxD.shape[0]
  if weights_N is None:
    rows = jax.random.choice(key, n, (num,), replace=n < num)
  else:
    p = (weights_N > 0).astype(jnp.float32)
    # No row of positive weight (the rows are then unused): draw uniformly.
    p = jnp.where(p.sum() > 0, p / jnp.maximum(p.sum(), 1.0), 1.0 / n)
    rows = jax.random.choice(key, n, (num,), replace=True, p=p)
  return jnp.take(z_NxD, rows, axis=0)


def restart_dead_codes(
    codebook_KxD: Array,
    usage_counts_K: Array,
    z_e_NxD: Array,
    key: Array,
    *,
    threshold: float = 1.0,
) -> tuple[Array, Array]:
  """Moves codes used less than `threshold` times onto random encoder outputs.

  Pure function for the gradient-trained codebook (for the EMA codebook use
  `VectorQuantizerEMA(dead_code_threshold=...)`). A typical use accumulates
  `code_counts(indices, K)` over recent steps, then replaces
  `params['quantizer']['codebook']` with the returned codebook (optimizer
  moments of the restarted rows may be reset with the returned mask).

  Args:
    codebook_KxD: current codebook.
    usage_counts_K: how often each code was used (any nonnegative measure).
    z_e_NxD: encoder outputs (flattened) to draw the new codes from.
    key: PRNG key choosing the rows; the result is a deterministic function
      of (inputs, key).
    threshold: codes with `usage_counts_K < threshold` are restarted.

  Returns:
    (new codebook [K, D], dead mask bool [K]); live codes are unchanged.

  References:
    Dhariwal et al., "Jukebox: A Generative Model for Music", 2020,
    https://arxiv.org/abs/2005.00341 (Sec. 3.2, random restarts).
  """
  dead_K = usage_counts_K < threshold
  candidates_KxD = _sample_rows(key, z_e_NxD, codebook_KxD.shape[0])
  candidates_KxD = sg(candidates_KxD).astype(codebook_KxD.dtype)
  return jnp.where(dead_K[:, None], candidates_KxD, codebook_KxD), dead_K


def kmeans_codebook(z_NxD: Array, num_codes: int, *, num_iters: int = 10,
                    weights_N: Array | None = None, cosine: bool = False) -> Array:
  """K-means centroids [K, D] of the rows of z_NxD (deterministic, no PRNG).

  Initialisation by farthest points: the first centroid is the row farthest
  from the (weighted) mean, each next one the row farthest from the chosen
  ones; then `num_iters` Lloyd iterations (assign to the nearest centroid,
  move each centroid to the mean of its rows; a centroid without rows stays).
  On well-separated clusters the farthest points take one row of each cluster
  and Lloyd's step moves the centroids to the cluster means. With `cosine`
  the rows and centroids are l2-normalised (spherical k-means). Rows of zero
  weight are ignored.

  Args:
    z_NxD: data.
    num_codes: K.
    num_iters: Lloyd iterations.
    weights_N: optional 0/1 row weights.
    cosine: spherical k-means.

  Returns:
    float32 [K, D] centroids.

  References:
    Lloyd, "Least squares quantization in PCM", IEEE Trans. Inf. Theory 1982;
    Gonzalez, "Clustering to minimize the maximum intercluster distance",
    Theor. Comput. Sci. 1985 (farthest-point initialisation).
  """
  z = sg(jnp.asarray(z_NxD, jnp.float32))
  if cosine:
    z = _l2_normalize(z)
  w = jnp.ones(z.shape[:1], jnp.float32) if weights_N is None else (
      jnp.asarray(weights_N, jnp.float32).reshape(-1))
  active = w > 0
  sq = lambda c: jnp.sum((z - c) ** 2, axis=-1)
  mean = jnp.sum(w[:, None] * z, 0) / jnp.maximum(jnp.sum(w), 1.0)
  first = z[jnp.argmax(jnp.where(active, sq(mean), -1.0))]
  centroids = jnp.zeros((num_codes, z.shape[1]), jnp.float32).at[0].set(first)
  min_dist = jnp.where(active, sq(first), -1.0)

  def pick(k, carry):
    centroids, min_dist = carry
    c = z[jnp.argmax(min_dist)]
    return centroids.at[k].set(c), jnp.where(active, jnp.minimum(min_dist, sq(c)), -1.0)

  centroids, _ = jax.lax.fori_loop(1, num_codes, pick, (centroids, min_dist))

  def lloyd(_, centroids):
    idx = nearest_code_indices(z, centroids)
    counts = jax.ops.segment_sum(w, idx, num_segments=num_codes)
    sums = jax.ops.segment_sum(w[:, None] * z, idx, num_segments=num_codes)
    new = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1e-12)[:, None], centroids)
    return _l2_normalize(new) if cosine else new

  return jax.lax.fori_loop(0, num_iters, lloyd, centroids)


def _codebook_output(z: Array, z_q: Array, idx_N: Array, num_codes: int, *, gradient: str,
                     codebook_by_gradient: bool, weights: Array | None) -> QuantizerOutput:
  """The output of a codebook quantizer from inputs z and their codes z_q [..., D]."""
  perplexity, usage = perplexity_and_usage(code_counts(idx_N, num_codes, weights))
  commitment = jnp.mean((z - sg(z_q)) ** 2, axis=-1)
  codebook = (jnp.mean((sg(z) - z_q) ** 2, axis=-1) if codebook_by_gradient
              else jnp.zeros(z.shape[:-1], z.dtype))
  return QuantizerOutput(
      z_q=z_q, quantized=_estimator(gradient)(z, z_q), indices=idx_N.reshape(z.shape[:-1]),
      perplexity=perplexity, usage=usage, commitment=commitment, codebook=codebook,
      aux_loss=jnp.zeros((), jnp.float32), metrics={})


class VectorQuantizer(nn.Module):
  """VQ-VAE quantizer with a codebook trained by gradients.

  The codebook is the parameter `codebook` [K, D]; `codebook` in the output
  is the codebook loss ||sg[z] - z_q||^2 (per vector, mean over D) that
  trains it, `commitment` the commitment loss ||z - sg[z_q]||^2.

  Attributes:
    num_codes: K.
    code_dim: D.
    gradient: 'ste' (straight-through) or 'rotation' (`rotation_trick`).
    cosine: l2-normalise inputs and codes before the lookup; the nearest
      code is then the most cosine-similar one, and z, z_q and the losses
      live on the unit sphere (ViT-VQGAN's factorised, l2-normalised codes:
      pick a small `code_dim`; the model's projection to it is the factor).

  References:
    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation
    Learning", NeurIPS 2017, https://arxiv.org/abs/1711.00937 (Sec. 3.1-3.2).
    Yu et al., "Vector-quantized Image Modeling with Improved VQGAN", ICLR
    2022, https://arxiv.org/abs/2110.04627 (Sec. 3.2, cosine codebooks).
  """
  num_codes: int
  code_dim: int
  gradient: str = 'ste'
  cosine: bool = False

  def setup(self):
    _check_choice(type(self).__name__, 'gradient', self.gradient, GRADIENTS)
    self.codebook = self.param('codebook', codebook_init, (self.num_codes, self.code_dim))

  def codes(self) -> Array:
    """The lookup codebook [K, D] (l2-normalised when `cosine`)."""
    return _l2_normalize(self.codebook) if self.cosine else self.codebook

  def __call__(self, z_e: Array, *, train: bool = False,
               weights: Array | None = None) -> QuantizerOutput:
    """Quantizes [..., D] vectors; `weights` [...] (0/1) mask vectors out of the usage."""
    del train
    _check_last_axis(z_e, self.code_dim, type(self).__name__)
    z = _l2_normalize(z_e) if self.cosine else z_e
    codebook = self.codes()
    idx_N = nearest_code_indices(z.reshape(-1, self.code_dim), codebook)
    z_q = jnp.take(codebook, idx_N, axis=0).reshape(z.shape)
    return _codebook_output(z, z_q, idx_N, self.num_codes, gradient=self.gradient,
                            codebook_by_gradient=True, weights=weights)

  def embed(self, indices: Array) -> Array:
    """Codes for int indices of any shape, [..., D]."""
    return jnp.take(self.codes(), indices, axis=0)


class VectorQuantizerEMA(nn.Module):
  """VQ-VAE quantizer whose codebook follows EMAs of assigned encoder outputs.

  State (collection 'vq_stats', no parameters): `codebook` [K, D],
  `cluster_size` [K] (EMA of per-code counts N_k), `embed_sum` [K, D] (EMA of
  per-code sums m_k) and `count` (int32 number of updates t); with
  `kmeans_init`, also `initialized` (bool). When `train=True` and 'vq_stats'
  is mutable (and not while initializing), one call quantizes with the
  current codebook, then updates:

    n_k = #{i : idx_i = k},   s_k = sum_{i : idx_i = k} z_i
    N_k <- N_k + w_t (n_k - N_k),   m_k <- m_k + w_t (s_k - m_k),
    w_t = (1 - decay) / (1 - decay^t)
    n = sum_k N_k,   N~_k = (N_k + eps) / (n + K eps) * n     (Laplace)
    e_k <- m_k / N~_k

  With w_t = 1 - decay this is the paper's EMA (Appendix A.1). The stored N
  and m are the zero-debiased EMAs (w_1 = 1, so the first update gives
  N = n, m = s), which is equivalent to the bias-corrected moving averages of
  the original Sonnet code and Haiku; it keeps N a count, so a dead-code
  threshold in counts is meaningful from the first step. Laplace smoothing
  (Sonnet/Haiku) keeps N~_k > 0, so a code never assigned has m_k = 0 and
  moves to the origin, as in those implementations. Optional `weights` [...]
  (0/1) leave vectors out of n_k, s_k and the usage (residual VQ's dropout).

  Data parallelism: under `jax.pmap` / `shard_map`, set `axis_name` to the
  mapped axis; the per-batch n_k and s_k are `lax.psum`'ed over it before the
  update, so every replica computes the same new state (equal to one device
  updating on the concatenated batch). Under `jax.jit` with a batch-sharded
  `NamedSharding`, leave `axis_name=None`: the code sees the global batch. Set
  `axis_name` only when the axis is bound. `perplexity` and `usage` are
  always computed on the local batch.

  Dead-code expiry (`dead_code_threshold` not None): after the update, codes
  whose (debiased) EMA count N_k is below the threshold get e_k = m_k = a
  random encoder output from the current batch and N_k = 1 (as if assigned
  once; with a threshold above 1 such a code is restarted again at each step
  until it attracts enough vectors). The rows are chosen with the rng stream 'restart'
  (`apply(..., rngs={'restart': key})`), so the result is deterministic given
  that key; pass the same key to all replicas. Under `axis_name` each
  replica draws candidates from its local batch, they are all-gathered, and
  a replica is chosen per code with the same key, so replicas stay identical.

  K-means initialisation (`kmeans_init`): the first training call replaces the
  codebook by `kmeans_codebook` of its batch (all-gathered over `axis_name`,
  so replicas agree and equal one device on the concatenated batch), then
  quantizes and updates as above; later calls skip it (`initialized`).

  Attributes:
    num_codes: K.
    code_dim: D.
    decay: EMA decay (the paper's gamma).
    epsilon: Laplace smoothing constant.
    axis_name: pmap/shard_map axis to psum the batch statistics over, or None.
    dead_code_threshold: restart codes whose EMA count is below this, or None
      to disable restarts.
    gradient: 'ste' or 'rotation' (see `rotation_trick`).
    cosine: l2-normalised inputs and codes (see `VectorQuantizer`).
    kmeans_init: initialise the codebook by k-means on the first batch.
    kmeans_iters: Lloyd iterations of that initialisation.

  References:
    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation
    Learning", NeurIPS 2017, https://arxiv.org/abs/1711.00937 (Appendix A.1).
    Dhariwal et al., "Jukebox: A Generative Model for Music", 2020,
    https://arxiv.org/abs/2005.00341 (Sec. 3.2, random restarts).
    Zeghidour et al., "SoundStream: An End-to-End Neural Audio Codec", 2021,
    https://arxiv.org/abs/2107.03312 (Sec. 3.3, k-means initialisation).
  """
  num_codes: int
  code_dim: int
  decay: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dead_code_threshold: float | None = None
  gradient: str = 'ste'
  cosine: bool = False
  kmeans_init: bool = False
  kmeans_iters: int = 10

  def setup(self):
    _check_choice(type(self).__name__, 'gradient', self.gradient, GRADIENTS)
    k, d = self.num_codes, self.code_dim
    self.codebook = self.variable(
        'vq_stats', 'codebook',
        lambda: codebook_init(self.make_rng('params'), (k, d)))
    self.cluster_size = self.variable('vq_stats', 'cluster_size',
                                      lambda: jnp.zeros((k,), jnp.float32))
    self.embed_sum = self.variable('vq_stats', 'embed_sum',
                                   lambda: jnp.zeros((k, d), jnp.float32))
    self.count = self.variable('vq_stats', 'count',
                               lambda: jnp.zeros((), jnp.int32))
    if self.kmeans_init:
      self.initialized = self.variable('vq_stats', 'initialized',
                                       lambda: jnp.zeros((), jnp.bool_))

  def codes(self) -> Array:
    """The lookup codebook [K, D] (l2-normalised when `cosine`)."""
    codebook = self.codebook.value
    return _l2_normalize(codebook) if self.cosine else codebook

  def __call__(self, z_e: Array, *, train: bool = False,
               weights: Array | None = None) -> QuantizerOutput:
    """Quantizes [..., D] vectors, updating 'vq_stats' when training."""
    _check_last_axis(z_e, self.code_dim, type(self).__name__)
    updating = (train and self.is_mutable_collection('vq_stats')
                and not self.is_initializing())
    z = _l2_normalize(z_e) if self.cosine else z_e
    z_NxD = z.reshape(-1, self.code_dim)
    w_N = None if weights is None else weights.reshape(-1).astype(jnp.float32)

    if updating and self.kmeans_init:
      self._kmeans(sg(z_NxD).astype(jnp.float32), w_N)
    codebook = self.codes()
    idx_N = nearest_code_indices(z_NxD, codebook)
    z_q = jnp.take(codebook, idx_N, axis=0).reshape(z.shape)
    out = _codebook_output(z, z_q, idx_N, self.num_codes, gradient=self.gradient,
                           codebook_by_gradient=False, weights=weights)
    if updating:
      self._update(sg(z_NxD).astype(jnp.float32), idx_N, w_N)
    return out

  def _kmeans(self, z_NxD, w_N):
    """Sets the codebook to k-means of the (global) batch on the first call."""
    if self.axis_name is not None:
      z_NxD = jax.lax.all_gather(z_NxD, self.axis_name, tiled=True)
      if w_N is not None:
        w_N = jax.lax.all_gather(w_N, self.axis_name, tiled=True)
    current = self.codebook.value
    self.codebook.value = jax.lax.cond(
        self.initialized.value, lambda: current,
        lambda: kmeans_codebook(z_NxD, self.num_codes, num_iters=self.kmeans_iters,
                                weights_N=w_N, cosine=self.cosine).astype(current.dtype))
    self.initialized.value = jnp.ones((), jnp.bool_)

  def _update(self, z_NxD, idx_N, w_N):
    """The EMA update of the class docstring (and the dead-code restart)."""
    k = self.num_codes
    if w_N is None:
      counts_K = code_counts(idx_N, k)
      sums_KxD = jax.ops.segment_sum(z_NxD, idx_N, num_segments=k)
    else:
      counts_K = jax.ops.segment_sum(w_N, idx_N, num_segments=k)
      sums_KxD = jax.ops.segment_sum(w_N[:, None] * z_NxD, idx_N, num_segments=k)
    if self.axis_name is not None:
      counts_K = jax.lax.psum(counts_K, self.axis_name)
      sums_KxD = jax.lax.psum(sums_KxD, self.axis_name)
    codebook, cluster_size = self.codebook, self.cluster_size
    embed_sum, count = self.embed_sum, self.count
    t = count.value + 1
    # w_t = (1 - decay) / (1 - decay^t) written with expm1 so that
    # w_1 == 1 exactly in float32 and large t stays accurate.
    log_decay = jnp.log(jnp.asarray(self.decay, jnp.float32))
    weight = jnp.expm1(log_decay) / jnp.expm1(t.astype(jnp.float32) * log_decay)
    new_size_K = cluster_size.value + weight * (counts_K - cluster_size.value)
    new_sum_KxD = embed_sum.value + weight * (sums_KxD - embed_sum.value)
    n = jnp.sum(new_size_K)
    smoothed_K = (new_size_K + self.epsilon) / (n + k * self.epsilon) * n
    new_codebook = new_sum_KxD / smoothed_K[:, None]

    if self.dead_code_threshold is not None:
      new_codebook, new_size_K, new_sum_KxD = self._restart(
          z_NxD, w_N, new_codebook, new_size_K, new_sum_KxD)

    codebook.value = new_codebook.astype(codebook.value.dtype)
    cluster_size.value = new_size_K
    embed_sum.value = new_sum_KxD
    count.value = t

  def _restart(self, z_NxD, w_N, codebook_KxD, size_K, sum_KxD):
    """Replaces codes with EMA count below the threshold (see class doc)."""
    key = self.make_rng('restart')
    cand_key, replica_key = jax.random.split(key)
    candidates_KxD = _sample_rows(cand_key, z_NxD, self.num_codes, w_N)
    if self.axis_name is not None:
      gathered_RxKxD = jax.lax.all_gather(candidates_KxD, self.axis_name)
      num_replicas = gathered_RxKxD.shape[0]
      replica_K = jax.random.randint(replica_key, (self.num_codes,), 0, num_replicas)
      candidates_KxD = gathered_RxKxD[replica_K, jnp.arange(self.num_codes)]
    dead_K = (size_K < self.dead_code_threshold)[:, None]
    codebook_KxD = jnp.where(dead_K, candidates_KxD, codebook_KxD)
    sum_KxD = jnp.where(dead_K, candidates_KxD, sum_KxD)
    size_K = jnp.where(dead_K[:, 0], 1.0, size_K)
    return codebook_KxD, size_K, sum_KxD

  def embed(self, indices: Array) -> Array:
    """Codes for int indices of any shape, [..., D]."""
    return jnp.take(self.codes(), indices, axis=0)


def _codebook_quantizer(ema: bool, num_codes: int, code_dim: int, **kw) -> nn.Module:
  """A `VectorQuantizerEMA` or, without `ema`, a `VectorQuantizer` (which takes
  only `gradient` and `cosine` of `kw`; the others must keep their defaults)."""
  if ema:
    return VectorQuantizerEMA(num_codes, code_dim, **kw)
  ema_only = {k: v for k, v in kw.items() if k not in ('gradient', 'cosine')
              and v != VectorQuantizerEMA.__dataclass_fields__[k].default}
  if ema_only:
    raise ValueError(f'{sorted(ema_only)} need the EMA codebook (ema=True), got {ema_only}.')
  return VectorQuantizer(num_codes, code_dim, gradient=kw.get('gradient', 'ste'),
                         cosine=kw.get('cosine', False))


class FiniteScalarQuantizer(nn.Module):
  """Finite scalar quantization: each channel bounded, then rounded to L_d levels.

  With L = levels[d] and h = (L - 1)(1 - eps) / 2, channel d is bounded to
  b = h tanh(z + s) - o, o = 1/2 for even L (0 for odd) and s = atanh(o / h)
  (so z = 0 maps to level 0; for L = 2 no such shift exists, s = 0 and z = 0
  lies on the boundary between the two levels). round(b) takes exactly L
  integer values, {-(L-1)/2, ..., (L-1)/2} for odd L and {-L/2, ..., L/2 - 1}
  for even L; codes are round(b) / floor(L/2), in [-1, 1]. The gradient is
  straight-through to b. The implied codebook is the grid, K = prod(levels);
  index = sum_d digit_d prod_{d' < d} L_d', digit_d = round(b_d) + floor(L/2)
  (`codes_to_indices`, `embed` invert it). No codebook, no losses.

  Attributes:
    levels: L_d per channel, each >= 2; D = len(levels).
    eps: keeps h (L - 1)/2 below the half-integer edges of the rounding.

  References:
    Mentzer, Minnen, Agustsson & Tschannen, "Finite Scalar Quantization:
    VQ-VAE Made Simple", ICLR 2024, https://arxiv.org/abs/2309.15505 (Sec. 3).
  """
  levels: Sequence[int]
  eps: float = 1e-3

  def setup(self):
    levels = tuple(self.levels)
    if not levels or any(not isinstance(l, (int, np.integer)) or l < 2 for l in levels):
      raise ValueError(f'FiniteScalarQuantizer.levels must be integers >= 2, got {levels!r}.')

  @property
  def codebook_size(self) -> int:
    return int(np.prod(self.levels))

  def _constants(self):
    levels = np.asarray(self.levels, np.int64)
    half_width = levels // 2
    basis = np.concatenate([[1], np.cumprod(levels[:-1])])
    return levels, half_width, basis

  def bound(self, z: Array) -> Array:
    """b = h tanh(z + s) - o (class docstring), [..., D]."""
    levels, _, _ = self._constants()
    half_l = (levels - 1) * (1 - self.eps) / 2
    offset = np.where(levels % 2 == 0, 0.5, 0.0)
    ratio = offset / half_l
    # Even L >= 4: ratio <= 1/3; L = 2: ratio > 1 and no shift (the minimum avoids a NaN).
    shift = np.where(ratio < 1, np.arctanh(np.minimum(ratio, 0.5)), 0.0)
    return (jnp.tanh(z + shift.astype(np.float32)) * half_l.astype(np.float32)
            - offset.astype(np.float32))

  def codes_to_indices(self, codes: Array) -> Array:
    """int32 indices [...] of grid codes [..., D]."""
    _, half_width, basis = self._constants()
    digits = jnp.round(codes * half_width + half_width).astype(jnp.int32)
    return jnp.sum(digits * basis.astype(np.int32), axis=-1).astype(jnp.int32)

  def embed(self, indices: Array) -> Array:
    """Grid codes [..., D] of int indices [...]."""
    levels, half_width, basis = self._constants()
    digits = (indices[..., None] // basis.astype(np.int32)) % levels.astype(np.int32)
    return ((digits - half_width) / half_width).astype(jnp.float32)

  def __call__(self, z: Array, *, train: bool = False) -> QuantizerOutput:
    """Quantizes [..., D] vectors (`train` unused)."""
    del train
    _check_last_axis(z, len(self.levels), type(self).__name__)
    _, half_width, _ = self._constants()
    half_width = half_width.astype(np.float32)
    b = self.bound(z)
    rounded = jnp.round(b)
    z_q = sg(rounded) / half_width
    quantized = straight_through(b, rounded) / half_width
    idx = self.codes_to_indices(z_q)
    perplexity, usage = perplexity_and_usage(code_counts(idx, self.codebook_size))
    zeros = jnp.zeros(z.shape[:-1], z.dtype)
    return QuantizerOutput(z_q=z_q, quantized=quantized, indices=idx, perplexity=perplexity,
                           usage=usage, commitment=zeros, codebook=zeros,
                           aux_loss=jnp.zeros((), jnp.float32), metrics={})


def binary_entropy_from_logits(a: Array) -> Array:
  """H(sigmoid(a)) in nats, elementwise: p softplus(-a) + (1 - p) softplus(a)."""
  p = jax.nn.sigmoid(a)
  return p * jax.nn.softplus(-a) + (1 - p) * jax.nn.softplus(a)


class LookupFreeQuantizer(nn.Module):
  """Lookup-free quantization: each channel's sign, codes in {-1, 1}^D.

  q_d = 1 if z_d > 0 else -1; index = sum_d [z_d > 0] 2^d (bit d is channel
  d), so K = 2^D and no codebook is stored. The gradient is straight-through;
  `commitment` is ||z - sg[q]||^2 (mean over D).

  Entropy penalty (MAGVIT-v2 Eq. 5), added as `aux_loss`:

    entropy_weight * (E_n[H(p(. | z_n))] - diversity_weight * H(E_n[p(. | z_n)]))

  with the soft assignment p(c | z) proportional to exp(-||z - c||^2 / T)
  over the 2^D codes. It factorises over channels: p(c_d = 1 | z_d) =
  sigmoid(4 z_d / T), so the per-sample entropy is sum_d H_b(sigmoid(4 z_d /
  T)) (exact) and p(c | z) = prod_d p(c_d | z_d), averaged over the batch
  (all N vectors; under `axis_name` over all replicas' vectors) before the
  codebook entropy is taken over the 2^D codes (exact, hence D <= 12).
  Minimising it makes each assignment confident and the codes used evenly.
  `metrics` reports both entropies (nats).

  Attributes:
    code_dim: D, at most 12.
    entropy_weight: weight of the penalty (>= 0; 0 turns it off).
    diversity_weight: gamma, weight of the codebook entropy inside it.
    temperature: T (> 0).
    axis_name: pmap/shard_map axis for the batch mean, or None (see module doc).

  References:
    Yu et al., "Language Model Beats Diffusion -- Tokenizer is Key to Visual
    Generation", ICLR 2024, https://arxiv.org/abs/2310.05737 (Sec. 3.1).
  """
  code_dim: int
  entropy_weight: float = 0.1
  diversity_weight: float = 1.0
  temperature: float = 1.0
  axis_name: str | None = None

  MAX_CODE_DIM = 12

  def setup(self):
    if not 1 <= self.code_dim <= self.MAX_CODE_DIM:
      raise ValueError(f'LookupFreeQuantizer.code_dim must be in [1, {self.MAX_CODE_DIM}] '
                       f'(the codebook entropy is exact over 2^D codes), got {self.code_dim}.')
    if not self.temperature > 0:
      raise ValueError(f'LookupFreeQuantizer.temperature must be > 0, got {self.temperature}.')
    if self.entropy_weight < 0 or self.diversity_weight < 0:
      raise ValueError('LookupFreeQuantizer.entropy_weight and diversity_weight must be >= 0, '
                       f'got {self.entropy_weight}, {self.diversity_weight}.')

  @property
  def codebook_size(self) -> int:
    return 2 ** self.code_dim

  def _bits_KxD(self) -> np.ndarray:
    return ((np.arange(self.codebook_size)[:, None] >> np.arange(self.code_dim)) & 1
            ).astype(np.float32)

  def embed(self, indices: Array) -> Array:
    """Codes in {-1, 1}^D, [..., D], of int indices [...]."""
    bits = (indices[..., None] >> jnp.arange(self.code_dim)) & 1
    return (2 * bits - 1).astype(jnp.float32)

  def entropies(self, z_NxD: Array) -> tuple[Array, Array]:
    """(mean per-sample entropy, codebook entropy of the batch-mean assignment), nats."""
    a_NxD = 4.0 * z_NxD.astype(jnp.float32) / self.temperature
    per_sample = jnp.mean(jnp.sum(binary_entropy_from_logits(a_NxD), axis=-1))
    bits = self._bits_KxD()
    log_p_NxK = jax.nn.log_sigmoid(a_NxD) @ bits.T + jax.nn.log_sigmoid(-a_NxD) @ (1 - bits).T
    total_K = _global_sum(jnp.sum(jnp.exp(log_p_NxK), axis=0), self.axis_name)
    count = _global_sum(jnp.asarray(z_NxD.shape[0], jnp.float32), self.axis_name)
    mean_K = total_K / count
    codebook = -jnp.sum(jax.scipy.special.xlogy(mean_K, mean_K))
    return per_sample, codebook

  def __call__(self, z: Array, *, train: bool = False) -> QuantizerOutput:
    """Quantizes [..., D] vectors (`train` unused: the penalty is always computed)."""
    del train
    _check_last_axis(z, self.code_dim, type(self).__name__)
    positive = z > 0
    z_q = jnp.where(positive, 1.0, -1.0).astype(z.dtype)
    idx = jnp.sum(positive.astype(jnp.int32) << jnp.arange(self.code_dim), axis=-1)
    perplexity, usage = perplexity_and_usage(code_counts(idx, self.codebook_size))
    per_sample, codebook_entropy = self.entropies(z.reshape(-1, self.code_dim))
    aux = self.entropy_weight * (per_sample - self.diversity_weight * codebook_entropy)
    return QuantizerOutput(
        z_q=z_q, quantized=straight_through(z, z_q), indices=idx.astype(jnp.int32),
        perplexity=perplexity, usage=usage, commitment=jnp.mean((z - z_q) ** 2, axis=-1),
        codebook=jnp.zeros(z.shape[:-1], z.dtype), aux_loss=aux,
        metrics={'entropy_per_sample': per_sample, 'entropy_codebook': codebook_entropy})


class ResidualVectorQuantizer(nn.Module):
  """Residual VQ: stage s quantizes what stages < s left, r_{s+1} = r_s - q_s.

  r_0 = z; q_s = stage s's code of r_s; the output is sum_s q_s, with the
  gradient estimator applied to the sum (z -> sum_s q_s). `commitment` and
  `codebook` are summed over stages, each against its own residual
  (||r_s - sg[q_s]||^2, ||sg[r_s] - q_s||^2). Each stage has its own codebook
  of K codes (EMA or gradient-trained), so S stages address K^S vectors.

  Quantizer dropout (`dropout_rate` > 0, training only): each example (entry
  of the leading axis) is, with that probability, quantized by the first n
  stages only, n uniform in {1, ..., S} (rng stream 'dropout'); SoundStream
  does this for every example (rate 1), so that one model serves every
  bitrate. Dropped stages contribute nothing to the output, the losses or
  their EMA statistics and usage.

  Attributes:
    num_quantizers: S.
    num_codes: K per stage.
    code_dim: D.
    ema: EMA codebooks (`VectorQuantizerEMA`) instead of gradient-trained ones.
    dropout_rate: probability of quantizer dropout per example, in [0, 1].
    gradient: 'ste' or 'rotation', applied to the whole sum.
    stage_kwargs: more `VectorQuantizerEMA` fields for every stage (decay,
      epsilon, axis_name, dead_code_threshold, kmeans_init, kmeans_iters).

  References:
    Zeghidour et al., "SoundStream: An End-to-End Neural Audio Codec", IEEE/ACM
    TASLP 2021, https://arxiv.org/abs/2107.03312 (Sec. 3.3, Algorithm 1).
  """
  num_quantizers: int
  num_codes: int
  code_dim: int
  ema: bool = False
  dropout_rate: float = 0.0
  gradient: str = 'ste'
  stage_kwargs: Any = None

  def setup(self):
    _check_choice(type(self).__name__, 'gradient', self.gradient, GRADIENTS)
    if self.num_quantizers < 1:
      raise ValueError(f'ResidualVectorQuantizer.num_quantizers must be >= 1, got '
                       f'{self.num_quantizers}.')
    if not 0.0 <= self.dropout_rate <= 1.0:
      raise ValueError(f'ResidualVectorQuantizer.dropout_rate must be in [0, 1], got '
                       f'{self.dropout_rate}.')
    self.stages = [_codebook_quantizer(self.ema, self.num_codes, self.code_dim,
                                       **dict(self.stage_kwargs or {}))
                   for _ in range(self.num_quantizers)]

  def _active(self, z: Array, train: bool) -> Array | None:
    """[S, ...] 0/1 masks of the stages each vector uses, or None (all)."""
    if not (train and self.dropout_rate > 0):
      return None
    key_drop, key_n = jax.random.split(self.make_rng('dropout'))
    lead = z.shape[0]
    dropped = jax.random.bernoulli(key_drop, self.dropout_rate, (lead,))
    n = jnp.where(dropped, jax.random.randint(key_n, (lead,), 1, self.num_quantizers + 1),
                  self.num_quantizers)
    n = n.reshape((lead,) + (1,) * (z.ndim - 2))
    return jnp.stack([jnp.broadcast_to(s < n, z.shape[:-1]).astype(z.dtype)
                      for s in range(self.num_quantizers)])

  def __call__(self, z: Array, *, train: bool = False, num_stages: int | None = None
               ) -> QuantizerOutput:
    """Quantizes [..., D] with the first `num_stages` stages (default all)."""
    _check_last_axis(z, self.code_dim, type(self).__name__)
    used = self.num_quantizers if num_stages is None else num_stages
    active = self._active(z, train)
    residual, total = z, jnp.zeros_like(z)
    commitment = codebook = jnp.zeros(z.shape[:-1], z.dtype)
    indices, perplexities, usages = [], [], []
    for s, stage in enumerate(self.stages[:used]):
      m = None if active is None else active[s]
      out = stage(residual, train=train, weights=m)
      m = jnp.ones(z.shape[:-1], z.dtype) if m is None else m
      total = total + m[..., None] * out.z_q
      commitment = commitment + m * out.commitment
      codebook = codebook + m * out.codebook
      residual = residual - sg(out.z_q)
      indices.append(out.indices)
      perplexities.append(out.perplexity)
      usages.append(out.usage)
    return QuantizerOutput(
        z_q=total, quantized=_estimator(self.gradient)(z, total),
        indices=jnp.stack(indices, axis=-1), perplexity=jnp.mean(jnp.stack(perplexities)),
        usage=jnp.mean(jnp.stack(usages)), commitment=commitment, codebook=codebook,
        aux_loss=jnp.zeros((), jnp.float32), metrics={})

  def embed(self, indices: Array) -> Array:
    """sum_s of stage s's code of indices[..., s]; indices [..., S'] with S' <= S."""
    return sum(stage.embed(indices[..., s])
               for s, stage in enumerate(self.stages[:indices.shape[-1]]))


class GroupedVectorQuantizer(nn.Module):
  """Grouped (product) VQ: the D channels split into G groups of D / G, each
  quantized by its own codebook of K codes, so K^G vectors are addressable.

  The output concatenates the groups' codes (each with its own gradient
  estimator); `commitment` and `codebook` are the means over groups (so the
  mean over all D channels, as for one codebook); `perplexity` and `usage`
  the means over groups; `indices` [..., G].

  Attributes:
    num_groups: G, dividing code_dim.
    num_codes: K per group.
    code_dim: D (total).
    ema: EMA codebooks instead of gradient-trained ones.
    gradient: 'ste' or 'rotation'.
    cosine: l2-normalise each group's vectors and codes.
    group_kwargs: more `VectorQuantizerEMA` fields for every group.

  References:
    Jegou, Douze & Schmid, "Product Quantization for Nearest Neighbor
    Search", IEEE TPAMI 2011; Baevski, Schneider & Auli, "vq-wav2vec", ICLR
    2020, https://arxiv.org/abs/1910.05453 (Sec. 3.3, groups).
  """
  num_groups: int
  num_codes: int
  code_dim: int
  ema: bool = False
  gradient: str = 'ste'
  cosine: bool = False
  group_kwargs: Any = None

  def setup(self):
    if self.num_groups < 1 or self.code_dim % self.num_groups:
      raise ValueError(f'GroupedVectorQuantizer.num_groups={self.num_groups} must be >= 1 and '
                       f'divide code_dim={self.code_dim}.')
    self.groups = [_codebook_quantizer(self.ema, self.num_codes,
                                       self.code_dim // self.num_groups,
                                       gradient=self.gradient, cosine=self.cosine,
                                       **dict(self.group_kwargs or {}))
                   for _ in range(self.num_groups)]

  def __call__(self, z: Array, *, train: bool = False) -> QuantizerOutput:
    """Quantizes [..., D] vectors."""
    _check_last_axis(z, self.code_dim, type(self).__name__)
    outs = [g(part, train=train) for g, part in
            zip(self.groups, jnp.split(z, self.num_groups, axis=-1))]
    mean = lambda xs: jnp.mean(jnp.stack(xs), axis=0)
    return QuantizerOutput(
        z_q=jnp.concatenate([o.z_q for o in outs], -1),
        quantized=jnp.concatenate([o.quantized for o in outs], -1),
        indices=jnp.stack([o.indices for o in outs], -1),
        perplexity=mean([o.perplexity for o in outs]), usage=mean([o.usage for o in outs]),
        commitment=mean([o.commitment for o in outs]), codebook=mean([o.codebook for o in outs]),
        aux_loss=jnp.zeros((), jnp.float32), metrics={})

  def embed(self, indices: Array) -> Array:
    """Concatenated group codes [..., D] of indices [..., G]."""
    return jnp.concatenate([g.embed(indices[..., i]) for i, g in enumerate(self.groups)], -1)
