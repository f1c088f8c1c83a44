"""Image denoising with a denoising autoencoder, against classical denoisers.

The protocol:

- train a fully convolutional denoising autoencoder
  (`ae_jax.models.UNetDenoiser`, by the recipe `ae_jax.recipes.denoiser`) on
  clean images corrupted by Gaussian noise whose level is drawn per example,
  sigma ~ U[sigma_min, sigma_max] (`gaussian_noise_range`), so that one model
  serves every level in the range without being told the level;
- on held-out images, add Gaussian noise of a fixed sigma and clip to [0, 1]
  (`add_noise`, the same corruption as `ae_jax.corruption.gaussian_noise`);
  every method sees these same noisy images;
- denoise them with the DAE and with scikit-image's total-variation
  (Chambolle), wavelet (BayesShrink) and non-local-means denoisers. Each
  classical denoiser's strength is tuned fairly: for each sigma, the
  parameter of a small grid with the best mean PSNR on a validation set
  (images the test never sees) is kept (`tune_classical`); wavelet and NL
  means are also given the true sigma (an oracle the DAE does not get);
- report the PSNR and SSIM (`skimage.metrics`, data range 1) of the noisy
  input, of the DAE output and of each classical denoiser, each the mean
  over images of the per-image value (`benchmark`, `format_table`).

PSNR = 10 log10(1 / MSE) dB for images in [0, 1]; a constant offset delta
gives MSE = delta^2, so PSNR = 20 log10(1 / delta).

Real photographs enter as grayscale patches cropped from the pictures that
ship with scikit-image (`photo_patches`): train on patches of some pictures,
test on patches of others.

Shape letters: N images, B batch, H, W, C image.

References:
  Vincent et al., "Extracting and composing robust features with denoising
  autoencoders", ICML 2008 (the denoising autoencoder).
  Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical
  Image Segmentation", MICCAI 2015 (the encoder-decoder with skips).
  Wu & He, "Group Normalization", ECCV 2018.
  Zhang et al., "Beyond a Gaussian Denoiser: Residual Learning of Deep CNN for
  Image Denoising" (DnCNN), IEEE TIP 2017 (one blind model over a range of
  noise levels).
  Chambolle, "An algorithm for total variation minimization and
  applications", J. Math. Imaging Vis. 2004 (`denoise_tv_chambolle`).
  Chang, Yu & Vetterli, "Adaptive wavelet thresholding for image denoising
  and compression", IEEE TIP 2000 (BayesShrink, `denoise_wavelet`).
  Buades, Coll & Morel, "A non-local algorithm for image denoising", CVPR
  2005 (`denoise_nl_means`).
  Wang et al., "Image quality assessment: from error visibility to
  structural similarity", IEEE TIP 2004 (SSIM).
"""

from __future__ import annotations

import functools
import importlib
import itertools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import corruption
from ae_jax.applications import common

Variables = common.Variables

CLASSICAL = ('tv', 'wavelet', 'nl_means')
METHODS = ('noisy', 'dae') + CLASSICAL

# Grids the classical denoisers are tuned over. TV: the weight (larger means
# smoother). Wavelet: the noise sigma handed to BayesShrink, as a multiple of
# the true sigma. NL means: the filter strength h as a multiple of sigma, and
# the patch size (patch_distance 5: a search window of 11x11).
DEFAULT_GRIDS: dict[str, dict[str, tuple]] = {
    'tv': {'weight': (0.02, 0.04, 0.06, 0.08, 0.1, 0.13, 0.17, 0.22, 0.3, 0.4, 0.55, 0.75,
                      1.0)},
    'wavelet': {'sigma_factor': (0.35, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 3.0)},
    'nl_means': {'h_factor': (0.05, 0.1, 0.15, 0.25, 0.4, 0.6, 0.8, 1.0, 1.2, 1.5),
                 'patch_size': (3, 5)},
}


# --- Noise -------------------------------------------------------------------------------


def sample_sigmas(key: jax.Array, num: int, *, sigma_min: float, sigma_max: float
                  ) -> jax.Array:
  """[num] noise levels sigma ~ U[sigma_min, sigma_max], one per example."""
  if not 0.0 <= sigma_min <= sigma_max:
    raise ValueError(f'Need 0 <= sigma_min <= sigma_max, got {sigma_min}, {sigma_max}.')
  return jax.random.uniform(key, (num,), minval=sigma_min, maxval=sigma_max)


def gaussian_noise_range(x: jax.Array, key: jax.Array, *, sigma_min: float = 0.0,
                         sigma_max: float = 0.4) -> jax.Array:
  """x + sigma_b * eps, sigma_b ~ U[sigma_min, sigma_max] per example, clipped to [0, 1].

  A `ae_jax.corruption.Corruption`: pass it (with the range bound through
  functools.partial) as `corruption_fn` of `make_autoencoder_objective`. The
  sigmas are `sample_sigmas(split(key)[0], B, ...)`, the noise is drawn from
  `split(key)[1]`.

  Args:
    x: clean images [B, H, W, C] in [0, 1].
    key: PRNG key.
    sigma_min, sigma_max: the range of the noise standard deviation.

  Returns:
    Noisy images, x's shape and dtype, in [0, 1].
  """
  sigma_key, noise_key = jax.random.split(key)
  sigma_B = sample_sigmas(sigma_key, x.shape[0], sigma_min=sigma_min,
                          sigma_max=sigma_max).astype(x.dtype)
  sigma = sigma_B.reshape((-1,) + (1,) * (x.ndim - 1))
  return jnp.clip(x + sigma * jax.random.normal(noise_key, x.shape, x.dtype), 0.0, 1.0)


def add_noise(images: np.ndarray, sigma: float, key: jax.Array) -> np.ndarray:
  """The held-out noisy images: `corruption.gaussian_noise` (clipped), as float32 numpy."""
  x = jnp.asarray(images, jnp.float32)
  return np.asarray(corruption.gaussian_noise(x, key, sigma=float(sigma)))


def _skimage(submodule: str):
  """`skimage.<submodule>`; scikit-image (and PyWavelets, for the wavelet denoiser) come
  with the `apps` extra, not with ae-jax itself."""
  try:
    return importlib.import_module(f'skimage.{submodule}')
  except ModuleNotFoundError as e:
    if e.name is None or not e.name.startswith('skimage'):
      raise
    raise ModuleNotFoundError(
        'ae_jax.applications.denoising needs scikit-image and PyWavelets: '
        "pip install 'ae-jax[apps]' (or pip install scikit-image PyWavelets).",
        name=e.name) from e


# --- Metrics -----------------------------------------------------------------------------


def psnr(clean: np.ndarray, estimate: np.ndarray) -> np.ndarray:
  """Per-image PSNR in dB, 10 log10(1 / MSE), of images [N, H, W, C] in [0, 1].

  `skimage.metrics.peak_signal_noise_ratio(data_range=1)` per image; inf
  where an estimate is exact.
  """
  metrics = _skimage('metrics')
  clean, estimate = _as_batch(clean), _as_batch(estimate)
  return np.array([metrics.peak_signal_noise_ratio(c, e, data_range=1.0)
                   for c, e in zip(clean, estimate)])


def ssim(clean: np.ndarray, estimate: np.ndarray) -> np.ndarray:
  """Per-image SSIM of images [N, H, W, C] in [0, 1] (`skimage.metrics.structural_similarity`,
  data range 1, 7x7 uniform window, averaged over channels)."""
  metrics = _skimage('metrics')
  clean, estimate = _as_batch(clean), _as_batch(estimate)
  channel_axis = -1 if clean.shape[-1] > 1 else None
  squeeze = (lambda a: a) if channel_axis is not None else (lambda a: a[..., 0])
  return np.array([metrics.structural_similarity(squeeze(c), squeeze(e), data_range=1.0,
                                                 channel_axis=channel_axis)
                   for c, e in zip(clean, estimate)])


def _as_batch(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images, np.float64)
  if images.ndim != 4:
    raise ValueError(f'Expected images [N, H, W, C], got shape {images.shape}.')
  return images


# --- Classical denoisers -----------------------------------------------------------------


def classical_denoise(noisy: np.ndarray, method: str, *, sigma: float, **params: Any
                      ) -> np.ndarray:
  """Denoises images [N, H, W, C] in [0, 1] one by one with a scikit-image denoiser.

  Args:
    noisy: the noisy images.
    method: 'tv' (`denoise_tv_chambolle`, params: weight), 'wavelet'
      (`denoise_wavelet`, BayesShrink soft thresholding; params:
      sigma_factor, the noise sigma given to it over the true one) or
      'nl_means' (`denoise_nl_means`, fast mode; params: h_factor, h over
      sigma, and patch_size).
    sigma: the true noise sigma (wavelet and NL means use it).
    **params: the method's parameters, as in `DEFAULT_GRIDS`.

  Returns:
    Denoised images, float32 [N, H, W, C], clipped to [0, 1].
  """
  restoration = _skimage('restoration')
  if method == 'tv':
    fn = lambda im: restoration.denoise_tv_chambolle(im, weight=params['weight'])
  elif method == 'wavelet':
    fn = lambda im: restoration.denoise_wavelet(
        im, sigma=params['sigma_factor'] * sigma, method='BayesShrink', mode='soft',
        rescale_sigma=True)
  elif method == 'nl_means':
    fn = lambda im: restoration.denoise_nl_means(
        im, h=params['h_factor'] * sigma, sigma=sigma, patch_size=params['patch_size'],
        patch_distance=5, fast_mode=True)
  else:
    raise ValueError(f'Unknown classical denoiser {method!r}; expected one of {CLASSICAL}.')
  noisy = _as_batch(noisy)
  out = np.stack([fn(im[..., 0])[..., None] if im.shape[-1] == 1 else
                  _per_channel(fn, im) for im in noisy])
  return np.clip(out, 0.0, 1.0).astype(np.float32)


def _per_channel(fn: Callable[[np.ndarray], np.ndarray], im_HxWxC: np.ndarray) -> np.ndarray:
  return np.stack([fn(im_HxWxC[..., c]) for c in range(im_HxWxC.shape[-1])], axis=-1)


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[dict[str, Any]]:
  """Every combination of a {parameter: values} grid, as a list of parameter dicts."""
  names = list(grid)
  return [dict(zip(names, values)) for values in itertools.product(*grid.values())]


def tune_classical(clean: np.ndarray, noisy: np.ndarray, *, sigma: float,
                   grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None
                   ) -> dict[str, dict[str, Any]]:
  """Each classical denoiser's parameters with the best mean PSNR on a validation set.

  Args:
    clean, noisy: validation images [N, H, W, C] and their noisy copies at `sigma`.
    sigma: the noise level.
    grids: {method: {parameter: values}}; `DEFAULT_GRIDS` if None.

  Returns:
    {method: {'params': best parameters, 'val_psnr': their mean PSNR,
    'on_edge': whether a best value lies at an end of its grid}}.
  """
  grids = DEFAULT_GRIDS if grids is None else grids
  result = {}
  for method, grid in grids.items():
    scored = [(float(np.mean(psnr(clean, classical_denoise(noisy, method, sigma=sigma, **p)))), p)
              for p in grid_points(grid)]
    best_psnr, best = max(scored, key=lambda t: t[0])
    on_edge = any(len(v) > 1 and best[k] in (v[0], v[-1]) for k, v in grid.items()
                  if k != 'patch_size')
    result[method] = {'params': best, 'val_psnr': best_psnr, 'on_edge': on_edge}
  return result


# --- The denoising autoencoder's estimates ----------------------------------------------


def denoise(model: nn.Module, variables: Variables, noisy: np.ndarray, *,
            batch_size: int = 256) -> np.ndarray:
  """The DAE's estimate sigmoid(logits) of images [N, H, W, C], as float32 numpy."""
  fn = jax.jit(lambda v, x: jax.nn.sigmoid(model.apply(v, x).logits))
  return common.map_batches(functools.partial(fn, variables),
                            np.asarray(noisy, np.float32), batch_size=batch_size)


# --- The benchmark -----------------------------------------------------------------------


def benchmark(
    model: nn.Module,
    variables: Variables,
    test_images: np.ndarray,
    val_images: np.ndarray,
    key: jax.Array,
    *,
    sigmas: Sequence[float] = (0.1, 0.2, 0.3),
    grids: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
    num_examples: int = 8,
    batch_size: int = 256,
) -> tuple[dict[str, Any], dict[float, dict[str, np.ndarray]]]:
  """PSNR and SSIM of the noisy input, the DAE and the tuned classical denoisers.

  For each sigma: the test images get noise from `fold_in(key, 2 i + 1)` and
  the validation images (which only tune the classical denoisers) from
  `fold_in(key, 2 i)`, i the index of sigma; every method denoises the same
  noisy test images.

  Args:
    model, variables: the trained DAE.
    test_images: held-out clean images [N, H, W, C] in [0, 1].
    val_images: clean images to tune the classical denoisers on, disjoint
      from the test images.
    key: PRNG key of the noise.
    sigmas: the noise levels.
    grids: classical parameter grids; `DEFAULT_GRIDS` if None.
    num_examples: test images kept per sigma for figures.
    batch_size: DAE inference batch.

  Returns:
    `(table, examples)`: table[str(sigma)] = {'psnr': {method: mean dB},
    'ssim': {method: mean}, 'psnr_std': {method: std over images},
    'best_classical': the classical method with the highest PSNR,
    'dae_margin_db': DAE PSNR minus that method's, 'tuned': tune_classical's
    result, 'seconds': {method: wall time on the test images}}; and
    examples[sigma] = {'clean', 'noisy', method: images}, the first
    `num_examples` test images.
  """
  table, examples = {}, {}
  for i, sigma in enumerate(sigmas):
    noisy_val = add_noise(val_images, sigma, jax.random.fold_in(key, 2 * i))
    noisy = add_noise(test_images, sigma, jax.random.fold_in(key, 2 * i + 1))
    tuned = tune_classical(val_images, noisy_val, sigma=sigma, grids=grids)
    outputs, seconds = {'noisy': noisy}, {}
    start = time.time()
    outputs['dae'] = denoise(model, variables, noisy, batch_size=batch_size)
    seconds['dae'] = time.time() - start
    for method in tuned:
      start = time.time()
      outputs[method] = classical_denoise(noisy, method, sigma=sigma, **tuned[method]['params'])
      seconds[method] = time.time() - start
    psnrs = {m: psnr(test_images, out) for m, out in outputs.items()}
    ssims = {m: ssim(test_images, out) for m, out in outputs.items()}
    mean_psnr = {m: float(np.mean(v)) for m, v in psnrs.items()}
    best = max(tuned, key=lambda m: mean_psnr[m])
    table[str(sigma)] = {
        'psnr': mean_psnr,
        'ssim': {m: float(np.mean(v)) for m, v in ssims.items()},
        'psnr_std': {m: float(np.std(v)) for m, v in psnrs.items()},
        'best_classical': best,
        'dae_margin_db': mean_psnr['dae'] - mean_psnr[best],
        'dae_wins_fraction': float(np.mean(psnrs['dae'] > psnrs[best])),
        'tuned': tuned,
        'seconds': seconds,
    }
    examples[sigma] = {'clean': np.asarray(test_images[:num_examples]),
                       **{m: out[:num_examples] for m, out in outputs.items()}}
  return table, examples


def format_table(tables: Mapping[str, Mapping[str, Any]]) -> str:
  """A Markdown table, one row per (data, sigma), 'PSNR dB / SSIM' per method.

  Args:
    tables: {data name: `benchmark`'s table}.
  """
  methods = None
  lines = []
  for data_name, table in tables.items():
    for sigma, row in table.items():
      if methods is None:
        methods = list(row['psnr'])
        lines += ['| data | sigma | ' + ' | '.join(methods) + ' | best classical | DAE margin |',
                  '|---|---|' + '---|' * (len(methods) + 2)]
      cells = ' | '.join(f'{row["psnr"][m]:.2f} / {row["ssim"][m]:.3f}' for m in methods)
      lines.append(f'| {data_name} | {sigma} | {cells} | {row["best_classical"]} | '
                   f'{row["dae_margin_db"]:+.2f} dB |')
  return '\n'.join(lines)


# --- Photographs -------------------------------------------------------------------------


def load_photo(name: str) -> np.ndarray:
  """A `skimage.data` picture as grayscale float32 [H, W] in [0, 1]."""
  color, sk_data, util = _skimage('color'), _skimage('data'), _skimage('util')
  image = getattr(sk_data, name)()
  if image.ndim == 3:
    image = color.rgb2gray(image[..., :3])
  return util.img_as_float32(image)


def photo_patches(names: Sequence[str], *, patch_size: int = 32, num: int | None = None,
                  seed: int = 0) -> np.ndarray:
  """Grayscale patches [N, P, P, 1] of scikit-image pictures, float32 in [0, 1].

  With `num`, `num` patches at random positions (picture chosen uniformly);
  without, every patch of a non-overlapping grid of each picture.
  """
  photos = [load_photo(n) for n in names]
  p = patch_size
  if num is None:
    patches = [im[r:r + p, c:c + p] for im in photos
               for r in range(0, im.shape[0] - p + 1, p) for c in range(0, im.shape[1] - p + 1, p)]
  else:
    rng = np.random.default_rng(seed)
    patches = []
    for i in rng.integers(0, len(photos), num):
      im = photos[i]
      r, c = rng.integers(0, im.shape[0] - p + 1), rng.integers(0, im.shape[1] - p + 1)
      patches.append(im[r:r + p, c:c + p])
  return np.stack(patches)[..., None].astype(np.float32)
