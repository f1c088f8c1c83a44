"""Sample quality on digits: a Fréchet distance in a small classifier's features,
and a nearest-training-image check that samples are not copies.

FID (Heusel et al. 2017) compares Gaussians fitted to Inception features of
real and generated images. Inception does not ship here and does not suit
28×28 digits, so the features are the penultimate layer of a small
convolutional classifier (`FeatureClassifier`) trained on the run's own
training split; the number is comparable between models scored with the same
classifier on the same data, never with published FIDs.

- `train_classifier` fits it (a few hundred Adam steps, seconds on a CPU);
  `load_or_train_classifier` caches its parameters in a file so every model of
  a comparison is scored by the same network.
- `frechet_distance` is the closed form between two Gaussians,
  ||μ_a − μ_b||² + tr(Σ_a + Σ_b − 2 (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2}), with the
  matrix square root from symmetric eigen-decompositions (no complex parts).
- `nearest_distances` / `copy_check`: each sample's L2 pixel distance to its
  nearest training image, against the same for held-out test images. A model
  that copies training images sits far below the test images' distances.

Shape letters: N images, H W C image, F feature width.

References:
  Heusel et al., "GANs Trained by a Two Time-Scale Update Rule Converge to a
  Local Nash Equilibrium", NeurIPS 2017, https://arxiv.org/abs/1706.08500 (FID).
  Dowson & Landau, "The Fréchet distance between multivariate normal
  distributions", J. Multivariate Analysis 1982 (the closed form).
"""

from __future__ import annotations

import os

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import optax

Array = jax.Array


class FeatureClassifier(nn.Module):
  """Two conv + pool blocks and a Dense feature layer, then class logits.

  Attributes:
    num_classes: logits' width.
    feature_dim: F, the width of the features the Fréchet distance uses.
  """
  num_classes: int = 10
  feature_dim: int = 128

  @nn.compact
  def __call__(self, x: Array) -> tuple[Array, Array]:
    """(logits [N, classes], features [N, F]) of images [N, H, W, C] in [0, 1]."""
    h = x
    for channels in (32, 64):
      h = nn.relu(nn.Conv(channels, (3, 3))(h))
      h = nn.avg_pool(h, (2, 2), strides=(2, 2))
    features = nn.relu(nn.Dense(self.feature_dim)(h.reshape(h.shape[0], -1)))
    return nn.Dense(self.num_classes)(features), features


def train_classifier(images: np.ndarray, labels: np.ndarray, *, key: Array,
                     num_steps: int = 400, batch_size: int = 128,
                     learning_rate: float = 2e-3) -> dict:
  """Fits a `FeatureClassifier` by Adam on softmax cross-entropy.

  Args:
    images: [N, H, W, C] in [0, 1].
    labels: [N] integer classes in [0, 10).
    key: initialisation and batch order.
    num_steps: Adam steps.
    batch_size: images per step (drawn with replacement).
    learning_rate: Adam's step size.

  Returns:
    The classifier's variables.
  """
  images = np.asarray(images, np.float32)
  labels = np.asarray(labels)
  if images.ndim != 4 or len(images) != len(labels):
    raise ValueError(f'Expected images [N, H, W, C] and labels [N], got {images.shape} and '
                     f'{labels.shape}.')
  if labels.min() < 0 or labels.max() >= 10:
    raise ValueError(f'Labels must be in [0, 10), got [{labels.min()}, {labels.max()}].')
  model = FeatureClassifier()
  init_key, data_key = jax.random.split(key)
  variables = model.init(init_key, jnp.asarray(images[:1]))
  tx = optax.adam(learning_rate)
  opt_state = tx.init(variables)

  @jax.jit
  def step(variables, opt_state, x, y):
    def loss_fn(v):
      logits, _ = model.apply(v, x)
      return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    grads = jax.grad(loss_fn)(variables)
    updates, opt_state = tx.update(grads, opt_state, variables)
    return optax.apply_updates(variables, updates), opt_state

  rng = np.random.default_rng(np.asarray(jax.random.key_data(data_key)).ravel())
  for _ in range(num_steps):
    index = rng.integers(0, len(images), batch_size)
    variables, opt_state = step(variables, opt_state, images[index], labels[index])
  return variables


def load_or_train_classifier(path: str, images: np.ndarray, labels: np.ndarray, *,
                             key: Array, **kwargs) -> dict:
  """The classifier cached at `path` (flax msgpack), trained and written there first if absent."""
  template = FeatureClassifier().init(jax.random.key(0), jnp.zeros((1, *images.shape[1:])))
  if os.path.exists(path):
    with open(path, 'rb') as f:
      return flax.serialization.from_bytes(template, f.read())
  variables = train_classifier(images, labels, key=key, **kwargs)
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path + '.tmp', 'wb') as f:
    f.write(flax.serialization.to_bytes(variables))
  os.replace(path + '.tmp', path)
  return variables


def features(variables, images: np.ndarray | Array, *, batch_size: int = 500) -> np.ndarray:
  """Penultimate-layer features [N, F] of images [N, H, W, C] in [0, 1] (float64)."""
  apply = jax.jit(lambda v, x: FeatureClassifier().apply(v, x)[1])
  images = np.clip(np.asarray(images, np.float32), 0.0, 1.0)
  out = [np.asarray(apply(variables, images[i:i + batch_size]))
         for i in range(0, len(images), batch_size)]
  return np.concatenate(out).astype(np.float64)


def accuracy(variables, images: np.ndarray, labels: np.ndarray) -> float:
  """The classifier's accuracy on labelled images (a check that its features mean digits)."""
  logits = FeatureClassifier().apply(variables, jnp.asarray(images, jnp.float32))[0]
  return float(np.mean(np.argmax(np.asarray(logits), -1) == np.asarray(labels)))


def _sqrtm_psd(matrix: np.ndarray) -> np.ndarray:
  """The symmetric PSD square root by eigen-decomposition (negative round-off → 0)."""
  values, vectors = np.linalg.eigh((matrix + matrix.T) / 2.0)
  return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def frechet_distance(mean_a: np.ndarray, cov_a: np.ndarray, mean_b: np.ndarray,
                     cov_b: np.ndarray) -> float:
  """Squared Fréchet (2-Wasserstein) distance between N(mean_a, cov_a) and N(mean_b, cov_b).

  d² = ||μ_a − μ_b||² + tr Σ_a + tr Σ_b − 2 tr (Σ_a^{1/2} Σ_b Σ_a^{1/2})^{1/2};
  the last trace equals tr (Σ_a Σ_b)^{1/2} of the usual FID formula, computed
  here on a symmetric matrix so that it stays real.

  Args:
    mean_a: [F]. cov_a: [F, F] symmetric PSD. mean_b, cov_b: likewise.

  Returns:
    d² ≥ 0 (in squared feature units).
  """
  mean_a, mean_b = np.asarray(mean_a, np.float64), np.asarray(mean_b, np.float64)
  cov_a, cov_b = np.asarray(cov_a, np.float64), np.asarray(cov_b, np.float64)
  if mean_a.shape != mean_b.shape or cov_a.shape != cov_b.shape or cov_a.shape != 2 * mean_a.shape:
    raise ValueError(f'Expected means [F] and covariances [F, F], got {mean_a.shape}, '
                     f'{cov_a.shape}, {mean_b.shape}, {cov_b.shape}.')
  root_a = _sqrtm_psd(cov_a)
  middle = np.linalg.eigvalsh(root_a @ cov_b @ root_a)
  cross = np.sum(np.sqrt(np.clip(middle, 0.0, None)))
  d2 = np.sum((mean_a - mean_b) ** 2) + np.trace(cov_a) + np.trace(cov_b) - 2.0 * cross
  return float(max(d2, 0.0))


def feature_frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
  """`frechet_distance` of Gaussians fitted to two feature sets [N_a, F] and [N_b, F]."""
  for name, f in (('features_a', features_a), ('features_b', features_b)):
    if f.ndim != 2 or len(f) < 2:
      raise ValueError(f'{name} must be [N >= 2, F], got shape {f.shape}.')
  return frechet_distance(features_a.mean(0), np.cov(features_a, rowvar=False),
                          features_b.mean(0), np.cov(features_b, rowvar=False))


def nearest_distances(queries: np.ndarray, reference: np.ndarray, *,
                      chunk: int = 256) -> np.ndarray:
  """[N] L2 pixel distance of each query image to its nearest reference image."""
  q = np.asarray(queries, np.float64).reshape(len(queries), -1)
  r = np.asarray(reference, np.float64).reshape(len(reference), -1)
  r2 = np.sum(r * r, axis=1)
  out = []
  for i in range(0, len(q), chunk):
    block = q[i:i + chunk]
    d2 = np.sum(block * block, axis=1)[:, None] + r2[None] - 2.0 * block @ r.T
    out.append(np.sqrt(np.clip(d2.min(axis=1), 0.0, None)))
  return np.concatenate(out)


def copy_check(samples: np.ndarray, train_images: np.ndarray,
               test_images: np.ndarray) -> dict[str, float]:
  """Nearest-training-image distances of samples against those of test images.

  Returns:
    {'nn_train_dist_samples': median over samples, 'nn_train_dist_test': median
     over test images, 'nn_ratio': their ratio (≈ 1 or above: no copies; near
     0: the samples are training images), 'frac_samples_closer_than_test_p5':
     the fraction of samples nearer a training image than 95% of test images}.
  """
  samples = np.clip(np.asarray(samples), 0.0, 1.0)
  d_samples = nearest_distances(samples, train_images)
  d_test = nearest_distances(test_images, train_images)
  p5 = np.percentile(d_test, 5)
  return {'nn_train_dist_samples': float(np.median(d_samples)),
          'nn_train_dist_test': float(np.median(d_test)),
          'nn_ratio': float(np.median(d_samples) / np.median(d_test)),
          'frac_samples_closer_than_test_p5': float(np.mean(d_samples < p5))}


CLASSIFIER_FILE = 'sample_quality_classifier.msgpack'


def score(variables, samples: np.ndarray, test_images: np.ndarray,
          train_images: np.ndarray) -> dict[str, float]:
  """Sample quality against held-out images, with its real-data floor.

  Args:
    variables: a trained `FeatureClassifier`'s variables.
    samples: [N, H, W, C] generated images in [0, 1] (clipped here).
    test_images: [M, H, W, C] held-out images.
    train_images: [K ≥ N, H, W, C] the model's training images.

  Returns:
    {'frechet_distance': samples vs test images, 'frechet_distance_real': the
     first N training images vs the test images (what a perfect model's N
     samples would score, the estimate's small-sample floor), 'num_samples',
     and `copy_check`'s distances}.
  """
  test_features = features(variables, test_images)
  n = len(samples)
  return {'frechet_distance': feature_frechet_distance(features(variables, samples),
                                                       test_features),
          'frechet_distance_real': feature_frechet_distance(
              features(variables, train_images[:n]), test_features),
          'num_samples': n,
          **copy_check(samples, train_images, test_images)}
