"""Inpainting with a trained autoencoder: masks, fills, and PSNR on the missing region.

A mask is a boolean array `missing` with the images' shape [N, H, W, C],
True where a pixel is missing (hidden from the fill) and False where it is
observed; both generators hide all channels of a pixel together. Every fill
returns images equal to the input on the observed pixels, bit for bit, and
differs only on the missing ones.

Masks:
- `random_pixel_mask`: exactly round(fraction * H * W) pixels per image,
  drawn uniformly without replacement;
- `box_mask`: one box of a given size per image, its top-left corner drawn
  uniformly among the positions where it fits inside the image.

Fills:
- `mean_fill`, the baseline: missing pixels take the per-pixel mean of the
  train images (`pixel_mean`), or, without it, the mean of the image's own
  observed pixels;
- `iterative_fill` (any model): start from a mean fill, then n times
      x <- observed pixels of x_obs, decoder output of reconstruct(x) on the missing ones,
  reconstruct being the model's deterministic reconstruction (a VAE decodes
  its posterior mean). A projection onto the model's outputs alternating
  with the constraint that the observed pixels are known;
- `latent_fill` (VAEs): maximise the log joint over z with the observed
  pixels fixed,
      z* = argmin_z  -log p(x_obs | z) - log p(z),
      -log p(x_obs | z) = sum over observed pixels of the decoder's
                          Bernoulli NLL (as in training),
      -log p(z) = ||z||^2 / 2 + const,
  by Adam from K starts: the encoder mean of the mean-filled image and K - 1
  samples of q(z | mean-filled image); the start with the lowest final
  objective is kept and decoded onto the missing pixels. With zero steps it
  is pure sampling, keeping the best sample.

Metric: `psnr_missing`, the peak signal-to-noise ratio of the fill on the
missing pixels only, per image, 10 log10(max^2 / MSE_missing), in dB.

Shape letters: N examples, B batch, K latent starts, Z latent, H, W, C image.

>>> import numpy as np
>>> missing = random_pixel_mask(np.zeros((2, 4, 4, 1)), fraction=0.25, seed=0)
>>> missing.sum(axis=(1, 2, 3)).tolist()
[4, 4]
>>> box = box_mask(np.zeros((1, 6, 6, 1)), size=3, seed=0)
>>> int(box.sum())
9

References:
  Bertalmio, Sapiro, Caselles & Ballester, "Image Inpainting", SIGGRAPH 2000.
  Rezende, Mohamed & Wierstra, "Stochastic Backpropagation and Approximate
  Inference in Deep Generative Models", ICML 2014 (Sec. 6: imputing missing
  pixels by iterating the VAE's reconstruction with the observed ones fixed).
  Mattei & Frellsen, "Leveraging the Exact Likelihood of Deep Latent Variable
  Models", NeurIPS 2018 (imputation with a trained VAE; the pseudo-Gibbs
  iteration as a baseline).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax.applications import common
from ae_jax.applications import embedding

Variables = common.Variables

METHODS = ('mean', 'iterative', 'latent')


# ----------------------------------------------------------------------------
# Masks.


def _check_images(images) -> tuple[int, int, int, int]:
  shape = np.shape(images)
  if len(shape) != 4:
    raise ValueError(f'Expected images [N, H, W, C], got shape {shape}.')
  return shape


def random_pixel_mask(images, *, fraction: float, seed: int = 0) -> np.ndarray:
  """Missing pixels drawn uniformly: round(fraction * H * W) per image.

  Args:
    images: [N, H, W, C] (only the shape is used).
    fraction: share of the pixels of each image that are missing, in [0, 1].
    seed: numpy seed; image n's pixels depend on the seed and on n only
      through one generator, so the same seed gives the same masks.

  Returns:
    bool [N, H, W, C], True where missing; all channels of a pixel together.
  """
  n, h, w, c = _check_images(images)
  if not 0.0 <= fraction <= 1.0:
    raise ValueError(f'fraction must be in [0, 1], got {fraction}.')
  num_missing = int(round(fraction * h * w))
  rng = np.random.default_rng(seed)
  # The num_missing smallest of H*W uniform draws: a uniform subset of that size.
  ranks = np.argsort(np.argsort(rng.uniform(size=(n, h * w)), axis=1), axis=1)
  missing = (ranks < num_missing).reshape(n, h, w, 1)
  return np.broadcast_to(missing, (n, h, w, c)).copy()


def box_mask(images, *, size: int | Sequence[int], seed: int = 0) -> np.ndarray:
  """One missing box per image at a uniformly drawn position where it fits.

  Args:
    images: [N, H, W, C] (only the shape is used).
    size: box height and width in pixels, an int (square) or (height, width),
      at most the image's.
    seed: numpy seed of the positions.

  Returns:
    bool [N, H, W, C], True inside the box.
  """
  n, h, w, c = _check_images(images)
  bh, bw = (size, size) if np.ndim(size) == 0 else tuple(size)
  if not (0 < bh <= h and 0 < bw <= w):
    raise ValueError(f'Box {bh}x{bw} does not fit in {h}x{w} images.')
  rng = np.random.default_rng(seed)
  top = rng.integers(0, h - bh + 1, size=n)
  left = rng.integers(0, w - bw + 1, size=n)
  rows = np.arange(h)[None, :, None]
  cols = np.arange(w)[None, None, :]
  inside = ((rows >= top[:, None, None]) & (rows < top[:, None, None] + bh)
            & (cols >= left[:, None, None]) & (cols < left[:, None, None] + bw))
  return np.broadcast_to(inside[..., None], (n, h, w, c)).copy()


def make_mask(images, spec: str, *, seed: int = 0) -> np.ndarray:
  """A mask from a short spec: 'pixels:<fraction>' or 'box:<size>' (e.g. 'box:12')."""
  kind, _, value = spec.partition(':')
  if kind == 'pixels' and value:
    return random_pixel_mask(images, fraction=float(value), seed=seed)
  if kind == 'box' and value:
    return box_mask(images, size=int(value), seed=seed)
  raise ValueError(f"Mask spec must be 'pixels:<fraction>' or 'box:<size>', got {spec!r}.")


# ----------------------------------------------------------------------------
# Metric.


def psnr_missing(filled, truth, missing, *, max_value: float = 1.0,
                 min_mse: float = 1e-10) -> np.ndarray:
  """Per-image PSNR on the missing pixels, 10 log10(max_value^2 / MSE_missing), in dB.

  Args:
    filled: [N, H, W, C] inpainted images.
    truth: [N, H, W, C] the complete images.
    missing: bool [N, H, W, C], True where missing; every image needs one.
    max_value: the pixels' peak value (1 for images in [0, 1]).
    min_mse: floor of the MSE, so that a perfect fill gives a finite PSNR.

  Returns:
    float64 [N].
  """
  missing = np.asarray(missing, bool)
  diff = np.where(missing, np.asarray(filled, np.float64) - np.asarray(truth, np.float64), 0.0)
  n = len(missing)
  count = missing.reshape(n, -1).sum(axis=1)
  if np.any(count == 0):
    raise ValueError('Every image needs at least one missing pixel.')
  mse = np.square(diff).reshape(n, -1).sum(axis=1) / count
  return 10.0 * np.log10(max_value ** 2 / np.maximum(mse, min_mse))


# ----------------------------------------------------------------------------
# Fills.


def pixel_mean(train_images) -> np.ndarray:
  """Per-pixel mean of the train images, [H, W, C] float32."""
  return np.asarray(train_images, np.float32).mean(axis=0)


def mean_fill(images, missing, *, pixel_mean: np.ndarray | None = None) -> np.ndarray:
  """The baseline: missing pixels from the train per-pixel mean, or the observed mean.

  Args:
    images: [N, H, W, C].
    missing: bool [N, H, W, C].
    pixel_mean: [H, W, C] per-pixel mean of the train images; None fills
      each image with the mean of its own observed pixels (per channel).

  Returns:
    float32 [N, H, W, C], equal to `images` where observed.
  """
  images = np.asarray(images, np.float32)
  missing = np.asarray(missing, bool)
  if pixel_mean is None:
    observed = ~missing
    total = np.where(observed, images, 0.0).sum(axis=(1, 2), keepdims=True)
    count = observed.sum(axis=(1, 2), keepdims=True)
    fill = total / np.maximum(count, 1)
  else:
    fill = np.broadcast_to(np.asarray(pixel_mean, np.float32), images.shape[1:])[None]
  return np.where(missing, fill, images).astype(np.float32)


def iterative_fill(
    model: nn.Module,
    variables: Variables,
    images,
    missing,
    *,
    num_iterations: int,
    pixel_mean: np.ndarray | None = None,
    output_activation: str = 'sigmoid',
    batch_size: int = 256,
    desc: str | None = None,
) -> np.ndarray:
  """Iterates the model's reconstruction on the missing pixels from a mean fill.

  Args:
    model: any ae_jax model.
    variables: its variables.
    images: [N, H, W, C] in [0, 1]; only the observed pixels are read.
    missing: bool [N, H, W, C].
    num_iterations: n >= 0 projections (0 returns the mean fill).
    pixel_mean: the start's fill, as in `mean_fill`.
    output_activation: 'sigmoid' or 'identity', as the model was trained.
    batch_size: examples per jitted call.
    desc: progress bar label, or None.

  Returns:
    float32 [N, H, W, C], equal to `images` where observed.
  """
  if num_iterations < 0:
    raise ValueError(f'num_iterations must be >= 0, got {num_iterations}.')
  embedding.to_pixels(np.zeros(()), output_activation)  # Rejects a bad name early.
  start = mean_fill(images, missing, pixel_mean=pixel_mean)
  reconstruct = embedding.reconstruction_fn(model, output_activation)

  @jax.jit
  def fill(variables, xm):
    x_obs, m = xm[..., 0], xm[..., 1] > 0.5

    def body(_, x):
      return jnp.where(m, reconstruct(variables, x), x_obs)

    return jax.lax.fori_loop(0, num_iterations, body, x_obs)

  # The start image and the mask travel as one array so map_batches pads both alike.
  packed = np.stack([start, np.asarray(missing, np.float32)], axis=-1)
  out = common.map_batches(functools.partial(fill, variables), packed,
                           batch_size=batch_size, desc=desc)
  # Observed pixels are copied, not recomputed: they stay exactly the input's.
  return np.where(missing, out, np.asarray(images, np.float32)).astype(np.float32)


def _masked_bernoulli_nll(logits_BxD, x_BxD, missing_BxD):
  """Sum over the observed pixels of the Bernoulli NLL, [B] (grey levels as soft targets)."""
  nll = optax.sigmoid_binary_cross_entropy(logits_BxD, x_BxD)
  return jnp.sum(jnp.where(missing_BxD, 0.0, nll), axis=-1)


def latent_fill(
    model: nn.Module,
    variables: Variables,
    images,
    missing,
    key: jax.Array,
    *,
    num_steps: int = 200,
    learning_rate: float = 0.05,
    num_starts: int = 1,
    pixel_mean: np.ndarray | None = None,
    batch_size: int = 256,
    desc: str | None = None,
) -> np.ndarray:
  """Fills by the MAP latent of the observed pixels under a VAE, decoded.

  Minimises -log p(x_obs | z) - log p(z) over z with Adam (see the module
  docstring) from `num_starts` starts, keeps the start with the lowest
  objective, and puts sigmoid(decode(z)) on the missing pixels.

  Args:
    model: a VAE (MLPVAE or ConvVAE) trained with the Bernoulli likelihood.
    variables: its variables.
    images: [N, H, W, C] in [0, 1].
    missing: bool [N, H, W, C].
    key: randomness of the starts; image n uses fold_in(key, n), so a fill
      does not depend on the batch size.
    num_steps: Adam steps (0: keep the best start as is).
    learning_rate: Adam's step size, in latent units.
    num_starts: K >= 1; the first start is the encoder mean of the mean-filled
      image, the others samples of q(z | mean-filled image).
    pixel_mean: the fill the encoder sees, as in `mean_fill`.
    batch_size: examples per jitted call.
    desc: progress bar label, or None.

  Returns:
    float32 [N, H, W, C], equal to `images` where observed.
  """
  if getattr(model, 'family', None) != 'vae':
    raise ValueError(f"latent_fill needs a VAE (model.family 'vae'), got "
                     f'{type(model).__name__}.')
  if num_starts < 1 or num_steps < 0:
    raise ValueError(f'Need num_starts >= 1 and num_steps >= 0, got {num_starts}, {num_steps}.')
  start = mean_fill(images, missing, pixel_mean=pixel_mean)
  tx = optax.adam(learning_rate)

  @jax.jit
  def fill(variables, xm, keys):
    x, m = xm[..., 0], xm[..., 1] > 0.5
    b = x.shape[0]
    x_BxD, m_BxD = x.reshape(b, -1), m.reshape(b, -1)
    mean, log_var = model.apply(variables, x, method='encode')
    eps_BxKxZ = jax.vmap(lambda k: jax.random.normal(k, (num_starts,) + mean.shape[1:]))(keys)
    # Start 0 is the posterior mean; starts 1..K-1 are draws of q(z | x).
    eps_BxKxZ = eps_BxKxZ.at[:, 0].set(0.0)
    z = mean[:, None] + jnp.exp(0.5 * log_var)[:, None] * eps_BxKxZ
    z_flat = z.reshape(b * num_starts, -1)
    x_rep = jnp.repeat(x_BxD, num_starts, axis=0)
    m_rep = jnp.repeat(m_BxD, num_starts, axis=0)

    def objective_BK(z):
      logits = model.apply(variables, z, method='decode').reshape(x_rep.shape)
      return (_masked_bernoulli_nll(logits, x_rep, m_rep)
              + 0.5 * jnp.sum(jnp.square(z), axis=-1))

    # The starts are independent, so the gradient of the sum is each start's own.
    grad_fn = jax.grad(lambda z: jnp.sum(objective_BK(z)))

    def step(carry, _):
      z, opt_state = carry
      updates, opt_state = tx.update(grad_fn(z), opt_state, z)
      return (optax.apply_updates(z, updates), opt_state), None

    (z_flat, _), _ = jax.lax.scan(step, (z_flat, tx.init(z_flat)), None, length=num_steps)
    values_BxK = objective_BK(z_flat).reshape(b, num_starts)
    best = jnp.argmin(values_BxK, axis=1)
    z_best = z_flat.reshape(b, num_starts, -1)[jnp.arange(b), best]
    logits = model.apply(variables, z_best, method='decode').reshape(x.shape)
    return jnp.where(m, jax.nn.sigmoid(logits), x)

  packed = np.stack([start, np.asarray(missing, np.float32)], axis=-1)
  out = common.map_batches(functools.partial(fill, variables), packed,
                           batch_size=batch_size, key=key, desc=desc)
  return np.where(missing, out, np.asarray(images, np.float32)).astype(np.float32)
