"""What a model that learned nothing scores: the baselines learning tests beat.

The mean training image is the best constant prediction: it minimises the
per-pixel squared error, and (clipped away from 0 and 1) it is the
maximum-likelihood factorised Bernoulli, so the best a decoder that ignores its
input can do.
"""

import numpy as np

EPS = 1e-4


def mean_image(train_x: np.ndarray) -> np.ndarray:
  return np.clip(np.asarray(train_x, np.float64).mean(0), EPS, 1 - EPS)


def mean_image_mse(train_x: np.ndarray, test_x: np.ndarray) -> float:
  """Mean per-pixel squared error of predicting the train mean image for `test_x`."""
  return float(np.mean((np.asarray(test_x, np.float64) - np.asarray(train_x, np.float64).mean(0)) ** 2))


def mean_image_bernoulli_nll(train_x: np.ndarray, test_x: np.ndarray) -> float:
  """Bernoulli NLL (nats per image, mean over `test_x`) under the train mean image.

  For grey targets in [0, 1] this is the cross-entropy the 'bernoulli'
  reconstruction loss reports, so the two compare directly.
  """
  p = mean_image(train_x)
  x = np.asarray(test_x, np.float64)
  per_image = -(x * np.log(p) + (1 - x) * np.log(1 - p)).reshape(len(x), -1).sum(1)
  return float(per_image.mean())


def reconstruction_baseline(kind: str, train_x: np.ndarray, test_x: np.ndarray) -> float:
  """The mean-image score in the units of `objectives.reconstruction_loss(kind)`."""
  if kind == 'bernoulli':
    return mean_image_bernoulli_nll(train_x, test_x)
  if kind == 'mse':
    return mean_image_mse(train_x, test_x)  # Per-pixel mean, as losses.mse.
  raise ValueError(f'no baseline for reconstruction {kind!r}')
