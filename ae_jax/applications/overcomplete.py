"""Does an overcomplete autoencoder model the data, or copy its input?

An autoencoder whose code is at least as wide as its input can learn the
identity map: it then reconstructs anything it is given, and its code says no
more about the data than the pixels do. `copying_metrics` measures, on
held-out images:

- `perturbation_kept`: how much of a small random change δ ~ N(0, σ²I) to a
  test digit the reconstruction carries through, 1 - E‖r(x+δ) - r(x) - δ‖² /
  E‖δ‖²: 1 for a copier (the identity near the data), 0 for a map that
  ignores the change (one that contracts towards the data), below 0 for one
  that turns it into something else (an untrained net);
- reconstruction MSE per pixel on the test digits and on two kinds of noise
  images of the same shape: i.i.d. U[0, 1) pixels, and Gaussian draws with
  the train digits' mean and pixel covariance (`gaussian_noise`; an affine
  autoencoder reconstructs these as well as digits), with the ratio of each
  to the digits' MSE and the share of each set's variance that is kept;
- a linear probe: multinomial logistic regression (scikit-learn, fixed
  settings, `linear_probe_accuracy`) fit on the train codes and scored on the
  test codes, against the same probe on the raw pixels. A copier's code is
  an invertible map of the pixels, which a linear probe reads no better.

Shape letters: N examples, Z code size, D pixels per image.

>>> import numpy as np
>>> x = np.random.default_rng(0).uniform(size=(500, 2, 2, 1))
>>> gaussian_noise(x, 3).shape
(3, 2, 2, 1)

References:
  Goodfellow, Bengio & Courville, "Deep Learning", MIT Press 2016, §14.1
  (an overcomplete autoencoder can learn to copy its input to its output
  without learning anything useful about the data) and §14.2 (regularised
  autoencoders: sparse, denoising, contractive).
"""

from __future__ import annotations

import time
import warnings
from typing import Any

import flax.linen as nn
import numpy as np

from ae_jax.applications import common
from ae_jax.applications import embedding

Variables = common.Variables

NOISE_KINDS = ('uniform', 'gaussian')


def uniform_noise(like: np.ndarray, *, seed: int = 0) -> np.ndarray:
  """Images of i.i.d. U[0, 1) pixels with the shape and dtype of `like`, [N, H, W, C]."""
  like = np.asarray(like)
  rng = np.random.default_rng(seed)
  return rng.uniform(size=like.shape).astype(like.dtype)


def gaussian_noise(train_images: np.ndarray, num: int, *, seed: int = 0) -> np.ndarray:
  """`num` draws of N(μ, Σ), the train images' mean and pixel covariance, clipped to [0, 1].

  These have the digits' first two moments and none of their other
  structure. For any affine map A x + b, E‖x - (A x + b)‖² depends on the
  inputs' mean and covariance only, so an affine (copying or PCA-like)
  autoencoder reconstructs them as well as it does digits (the clipping
  aside); reconstructing them much worse than digits takes a model of more
  than second-order statistics. Returns float32 [num, H, W, C].
  """
  x = np.asarray(train_images, np.float64).reshape(len(train_images), -1)
  mean = x.mean(0)
  # Σ = U diag(λ) Uᵀ; a draw is μ + U (√λ ⊙ ε), ε ~ N(0, I). λ < 0 from round-off -> 0.
  eigvals, eigvecs = np.linalg.eigh(np.cov(x, rowvar=False))
  eps = np.random.default_rng(seed).standard_normal((num, len(mean)))
  draws = mean + (eps * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T
  return np.clip(draws, 0.0, 1.0).astype(np.float32).reshape(
      (num,) + tuple(np.shape(train_images)[1:]))


def noise_images(kind: str, train_images: np.ndarray, num: int, *, seed: int = 0
                 ) -> np.ndarray:
  """`num` noise images of `kind` ('uniform' or 'gaussian'), shaped like the train images."""
  if kind == 'uniform':
    return uniform_noise(np.zeros((num,) + tuple(np.shape(train_images)[1:]), np.float32),
                         seed=seed)
  if kind == 'gaussian':
    return gaussian_noise(train_images, num, seed=seed)
  raise ValueError(f'Unknown noise kind {kind!r}; expected one of {NOISE_KINDS}.')


def perturbation_kept(model: nn.Module, variables: Variables, images: np.ndarray, *,
                      sigma: float = 0.05, output_activation: str = 'sigmoid', seed: int = 0,
                      batch_size: int = 256) -> float:
  """How much of a small random change to the input the reconstruction copies.

  With r the reconstruction map and δ ~ N(0, σ² I) per image, this is
  1 - E‖r(x + δ) - r(x) - δ‖² / E‖δ‖²: 1 when r copies the change (the
  identity near x), 0 when r ignores it (r(x + δ) = r(x), a map that
  contracts towards the data), below 0 when r turns it into something else.
  """
  if not sigma > 0:
    raise ValueError(f'sigma must be > 0, got {sigma}.')
  x = np.asarray(images, np.float32)
  delta = (sigma * np.random.default_rng(seed).standard_normal(x.shape)).astype(np.float32)
  kwargs = dict(batch_size=batch_size, output_activation=output_activation)
  change = (embedding.reconstruct(model, variables, x + delta, **kwargs)
            - embedding.reconstruct(model, variables, x, **kwargs))
  return float(1.0 - np.mean(np.square(change - delta)) / np.mean(np.square(delta)))


def linear_probe_accuracy(train_features: np.ndarray, train_labels: np.ndarray,
                          test_features: np.ndarray, test_labels: np.ndarray, *,
                          inverse_regularization: float = 1.0, max_iter: int = 1000) -> float:
  """Test accuracy of a linear classifier fit on the train features.

  The features are flattened and standardized with the train mean and
  standard deviation (so that codes and pixels of any scale get the same
  L2 penalty), then scikit-learn's multinomial `LogisticRegression` (lbfgs,
  `C=inverse_regularization`, `max_iter`) is fit. Deterministic.
  """
  from sklearn import linear_model  # pylint: disable=g-import-not-at-top
  from sklearn import pipeline  # pylint: disable=g-import-not-at-top
  from sklearn import preprocessing  # pylint: disable=g-import-not-at-top
  from sklearn import exceptions  # pylint: disable=g-import-not-at-top
  import threadpoolctl  # pylint: disable=g-import-not-at-top
  if inverse_regularization <= 0:
    raise ValueError(f'inverse_regularization must be > 0, got {inverse_regularization}.')
  train = np.asarray(train_features, np.float64).reshape(len(train_features), -1)
  test = np.asarray(test_features, np.float64).reshape(len(test_features), -1)
  probe = pipeline.make_pipeline(
      preprocessing.StandardScaler(),
      linear_model.LogisticRegression(C=inverse_regularization, max_iter=max_iter))
  # One BLAS thread: beside JAX's threads more only contend (10x slower on 2 cores).
  with warnings.catch_warnings(), threadpoolctl.threadpool_limits(limits=1):
    # A probe stopped at max_iter is still a fixed, reproducible protocol.
    warnings.simplefilter('ignore', exceptions.ConvergenceWarning)
    probe.fit(train, train_labels)
  return float(probe.score(test, test_labels))


def reconstruction_mse(model: nn.Module, variables: Variables, images: np.ndarray, *,
                       output_activation: str = 'sigmoid', batch_size: int = 256) -> float:
  """Mean squared error per pixel of the model's reconstructions of `images`."""
  return float(np.mean(embedding.reconstruction_error(
      model, variables, images, batch_size=batch_size, output_activation=output_activation)))


def copying_metrics(
    model: nn.Module,
    variables: Variables,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    pixel_probe_accuracy: float | None = None,
    output_activation: str = 'sigmoid',
    probe_inverse_regularization: float = 1.0,
    probe_max_iter: int = 1000,
    noise_seed: int = 0,
    perturbation_sigma: float = 0.05,
    batch_size: int = 256,
) -> dict[str, Any]:
  """Reconstruction of digits against noise, and a linear probe on codes against pixels.

  Args:
    model, variables: a trained model of a family in
      `ae_jax.applications.embedding.CODE_FAMILIES`.
    train_images, train_labels: the probe's training set, [N, H, W, C] in
      [0, 1]; the Gaussian noise takes their mean and covariance.
    test_images, test_labels: held-out images (never seen in training); as
      many noise images of each of `NOISE_KINDS` are drawn with `noise_seed`.
    pixel_probe_accuracy: the probe's accuracy on the raw pixels, if already
      computed (it does not depend on the model); else it is computed.
    output_activation: decoder logits to pixels ('sigmoid' or 'identity').
    probe_inverse_regularization, probe_max_iter: `linear_probe_accuracy`'s.

  Returns:
    digit_mse: the MSE per pixel on the test digits; digit_variance_kept:
      1 - digit_mse / (the test digits' variance per pixel about their mean);
    for each noise kind K ('uniform', 'gaussian'):
      K_noise_mse, the MSE per pixel on the noise images;
      K_to_digit_mse, their ratio to digit_mse (near 1 for a copier);
      K_variance_kept, 1 - K_noise_mse / (the noise images' variance per pixel
        about their mean): 1 for the identity, 0 for a model that outputs the
        noise's mean, below 0 for one that outputs something else;
    probe_accuracy_codes, probe_accuracy_pixels: test accuracies of the linear
      probe; probe_gain: their difference;
    code_dim, probe_seconds.
  """
  def mse_and_kept(images):
    mse = reconstruction_mse(model, variables, images, output_activation=output_activation,
                             batch_size=batch_size)
    flat = np.asarray(images, np.float64).reshape(len(images), -1)
    return mse, 1.0 - mse / max(float(np.mean(np.square(flat - flat.mean(0)))), 1e-12)

  digit_mse, digit_kept = mse_and_kept(test_images)
  metrics = {'digit_mse': digit_mse, 'digit_variance_kept': digit_kept,
             'perturbation_kept': perturbation_kept(
                 model, variables, test_images, sigma=perturbation_sigma,
                 output_activation=output_activation, seed=noise_seed, batch_size=batch_size)}
  for i, kind in enumerate(NOISE_KINDS):
    noise = noise_images(kind, train_images, len(test_images), seed=noise_seed + i)
    mse, kept = mse_and_kept(noise)
    metrics.update({f'{kind}_noise_mse': mse, f'{kind}_to_digit_mse': mse / max(digit_mse, 1e-12),
                    f'{kind}_variance_kept': kept})
  train_codes = embedding.embed(model, variables, train_images, batch_size=batch_size)
  test_codes = embedding.embed(model, variables, test_images, batch_size=batch_size)
  probe = dict(inverse_regularization=probe_inverse_regularization, max_iter=probe_max_iter)
  start = time.time()
  codes_accuracy = linear_probe_accuracy(train_codes, train_labels, test_codes, test_labels,
                                         **probe)
  if pixel_probe_accuracy is None:
    pixel_probe_accuracy = linear_probe_accuracy(train_images, train_labels, test_images,
                                                 test_labels, **probe)
  metrics.update({
      'probe_accuracy_codes': codes_accuracy,
      'probe_accuracy_pixels': float(pixel_probe_accuracy),
      'probe_gain': codes_accuracy - float(pixel_probe_accuracy),
      'code_dim': int(train_codes.shape[1]),
      'probe_seconds': time.time() - start,
  })
  return metrics
