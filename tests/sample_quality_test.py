"""Tests for ae_jax.applications.sample_quality: the Fréchet distance against
closed forms, and a classifier trained on MNIST 5k whose features rank real
test digits far above noise and blurred digits."""

import numpy as np
import pytest
import jax
import scipy.linalg
import scipy.ndimage

from ae_jax import data as data_lib
from ae_jax.applications import sample_quality


def _random_rotation(dim, seed):
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(dim, dim)))
  return q * np.sign(np.diag(r))


def test_frechet_distance_of_commuting_gaussians_is_the_closed_form():
  # Σ_a = Q diag(a) Qᵀ, Σ_b = Q diag(b) Qᵀ commute, so
  # tr (Σ_a Σ_b)^{1/2} = Σ √(a_i b_i) and d² = ||μ_a − μ_b||² + Σ (√a_i − √b_i)².
  q = _random_rotation(5, 0)
  a = np.array([1.0, 2.0, 0.5, 3.0, 0.1])
  b = np.array([4.0, 0.5, 0.5, 1.0, 2.0])
  mu_a, mu_b = np.arange(5.0), np.arange(5.0)[::-1] * 0.5
  expected = np.sum((mu_a - mu_b) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  got = sample_quality.frechet_distance(mu_a, q @ np.diag(a) @ q.T, mu_b, q @ np.diag(b) @ q.T)
  assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_matches_scipy_sqrtm_for_non_commuting_covariances():
  # The usual FID formula with scipy.linalg.sqrtm of Σ_a Σ_b as the reference.
  rng = np.random.default_rng(1)
  m_a, m_b = rng.normal(size=(6, 6)), rng.normal(size=(6, 6))
  cov_a, cov_b = m_a @ m_a.T + 0.1 * np.eye(6), m_b @ m_b.T + 0.1 * np.eye(6)
  mu_a, mu_b = rng.normal(size=6), rng.normal(size=6)
  reference = (np.sum((mu_a - mu_b) ** 2) + np.trace(cov_a) + np.trace(cov_b)
               - 2.0 * np.trace(scipy.linalg.sqrtm(cov_a @ cov_b)).real)
  got = sample_quality.frechet_distance(mu_a, cov_a, mu_b, cov_b)
  assert got == pytest.approx(reference, rel=1e-8)
  assert sample_quality.frechet_distance(mu_a, cov_a, mu_a, cov_a) == pytest.approx(0.0, abs=1e-9)


def test_one_dimensional_frechet_distance_by_hand():
  # N(1, 4) vs N(3, 1): (1 − 3)² + (2 − 1)² = 5.
  got = sample_quality.frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([3.0]),
                                        np.array([[1.0]]))
  assert got == pytest.approx(5.0)


def test_bad_shapes_are_named():
  with pytest.raises(ValueError, match='covariances'):
    sample_quality.frechet_distance(np.zeros(2), np.eye(3), np.zeros(2), np.eye(3))
  with pytest.raises(ValueError, match='features_b'):
    sample_quality.feature_frechet_distance(np.zeros((4, 2)), np.zeros((1, 2)))


def test_nearest_distances_by_hand():
  reference = np.array([[0.0, 0.0], [3.0, 4.0]]).reshape(2, 1, 2, 1)
  queries = np.array([[0.0, 1.0], [3.0, 4.0], [6.0, 8.0]]).reshape(3, 1, 2, 1)
  np.testing.assert_allclose(sample_quality.nearest_distances(queries, reference),
                             [1.0, 0.0, 5.0], atol=1e-7)


@pytest.fixture(scope='module')
def mnist():
  """A classifier trained on MNIST 5k's train split (300 Adam steps of 128), and the data."""
  train_x, train_y = data_lib.load_arrays('mnist5k', 'train')
  test_x, test_y = data_lib.load_arrays('mnist5k', 'test')
  variables = sample_quality.train_classifier(train_x, train_y, key=jax.random.key(0),
                                              num_steps=300)
  return variables, train_x, test_x, test_y


@pytest.mark.integration
@pytest.mark.learning
def test_classifier_learns_digits(mnist):
  variables, _, test_x, test_y = mnist
  # Chance is 10%; a small conv net reaches ~95% on MNIST 5k in 300 steps.
  assert sample_quality.accuracy(variables, test_x, test_y) > 0.85


@pytest.mark.integration
def test_real_digits_score_far_better_than_noise_or_blur(mnist):
  variables, train_x, test_x, _ = mnist
  real_train = sample_quality.features(variables, train_x[:1000])
  real_test = sample_quality.features(variables, test_x)
  noise = np.random.default_rng(0).uniform(size=test_x.shape).astype(np.float32)
  blurred = scipy.ndimage.gaussian_filter(test_x, sigma=(0, 1.5, 1.5, 0))
  fd_real = sample_quality.feature_frechet_distance(real_train, real_test)
  fd_noise = sample_quality.feature_frechet_distance(
      sample_quality.features(variables, noise), real_test)
  fd_blur = sample_quality.feature_frechet_distance(
      sample_quality.features(variables, blurred), real_test)
  # Measured (300 steps, seed 0): real 6.7, blurred (σ = 1.5 px) 355, uniform noise 1121.
  assert fd_noise > 100 * fd_real and fd_blur > 20 * fd_real, (fd_real, fd_blur, fd_noise)


@pytest.mark.integration
def test_copy_check_flags_copies_and_passes_held_out_digits(mnist):
  _, train_x, test_x, _ = mnist
  held_out = sample_quality.copy_check(test_x[:200], train_x, test_x)
  copies = sample_quality.copy_check(train_x[:200], train_x, test_x)
  assert held_out['nn_ratio'] == pytest.approx(1.0, abs=0.15)
  assert copies['nn_ratio'] < 1e-3 and copies['frac_samples_closer_than_test_p5'] == 1.0


def test_classifier_cache_round_trips(tmp_path):
  train_x = data_lib.load_arrays('mnist5k', 'train')[0]
  path = str(tmp_path / 'classifier.msgpack')
  first = sample_quality.load_or_train_classifier(path, train_x[:256], np.zeros(256, int),
                                                  key=jax.random.key(1), num_steps=2)
  again = sample_quality.load_or_train_classifier(path, train_x, np.zeros(len(train_x), int),
                                                  key=jax.random.key(2), num_steps=2)
  for a, b in zip(jax.tree.leaves(first), jax.tree.leaves(again)):
    np.testing.assert_array_equal(a, b)
