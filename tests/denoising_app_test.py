"""Tests of ae_jax.applications.denoising, the `denoiser` recipe and experiments/denoise.py."""

import json
import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ae_jax import data
from ae_jax import models
from ae_jax import training
from ae_jax.applications import denoising
from ae_jax.recipes import denoiser
from experiments import denoise as denoise_script
from experiments.configs.apps import denoise as denoise_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_psnr_of_a_constant_offset_is_20_log10_of_one_over_delta():
  # MSE of a constant offset delta is delta^2, so PSNR = 10 log10(1 / delta^2) = 20 log10(1 / delta).
  clean = np.full((2, 8, 8, 1), 0.25)
  for delta in (0.1, 0.01, 0.3):
    got = denoising.psnr(clean, clean + delta)
    np.testing.assert_allclose(got, 20 * math.log10(1 / delta), rtol=1e-9)
  np.testing.assert_allclose(denoising.psnr(clean, clean + 0.1), [20.0, 20.0], rtol=1e-9)


def _ssim_by_hand(x, y, win=7, k1=0.01, k2=0.03):
  """SSIM of two [H, W] images in [0, 1] from Wang et al. 2004, eq. 13, written
  out: every win x win window fully inside the image, sample (co)variances
  (N - 1 in the denominator), C1 = (k1 L)^2, C2 = (k2 L)^2 with L = 1, then the
  mean over windows. These are the settings `denoising.ssim` documents."""
  c1, c2 = k1 ** 2, k2 ** 2
  values = []
  for i in range(x.shape[0] - win + 1):
    for j in range(x.shape[1] - win + 1):
      a = x[i:i + win, j:j + win].ravel()
      b = y[i:i + win, j:j + win].ravel()
      mu_a, mu_b = a.mean(), b.mean()
      var_a, var_b = a.var(ddof=1), b.var(ddof=1)
      cov = np.sum((a - mu_a) * (b - mu_b)) / (a.size - 1)
      values.append((2 * mu_a * mu_b + c1) * (2 * cov + c2)
                    / ((mu_a ** 2 + mu_b ** 2 + c1) * (var_a + var_b + c2)))
  return float(np.mean(values))


def test_psnr_and_ssim_match_their_formulas_written_out():
  rng = np.random.default_rng(0)
  clean = rng.uniform(size=(3, 12, 12, 1))
  noisy = np.clip(clean + 0.1 * rng.normal(size=clean.shape), 0, 1)
  mse = np.mean((clean - noisy) ** 2, axis=(1, 2, 3))
  np.testing.assert_allclose(denoising.psnr(clean, noisy), 10 * np.log10(1 / mse), rtol=1e-12)
  want = [_ssim_by_hand(c[..., 0], n[..., 0]) for c, n in zip(clean, noisy)]
  np.testing.assert_allclose(denoising.ssim(clean, noisy), want, rtol=1e-10)
  # Colour: the mean of the channels' SSIMs.
  rgb_clean = rng.uniform(size=(1, 9, 9, 3))
  rgb_noisy = np.clip(rgb_clean + 0.2 * rng.normal(size=rgb_clean.shape), 0, 1)
  want_rgb = np.mean([_ssim_by_hand(rgb_clean[0, ..., c], rgb_noisy[0, ..., c]) for c in range(3)])
  np.testing.assert_allclose(denoising.ssim(rgb_clean, rgb_noisy), [want_rgb], rtol=1e-10)
  np.testing.assert_allclose(denoising.ssim(clean, clean), 1.0)
  # Constant images: only the luminance term is left, (2ab + C1) / (a^2 + b^2 + C1).
  a, b = 0.2, 0.6
  got = denoising.ssim(np.full((1, 8, 8, 1), a), np.full((1, 8, 8, 1), b))
  np.testing.assert_allclose(got, (2 * a * b + 1e-4) / (a * a + b * b + 1e-4), rtol=1e-10)


def test_sample_sigmas_is_uniform_on_the_range():
  sigmas = np.asarray(denoising.sample_sigmas(jax.random.key(0), 20_000, sigma_min=0.05,
                                              sigma_max=0.4))
  assert sigmas.min() >= 0.05 and sigmas.max() <= 0.4
  # Kolmogorov-Smirnov against U[0.05, 0.4]; 20k draws resolve a 1.5% CDF gap.
  assert stats.kstest(sigmas, stats.uniform(loc=0.05, scale=0.35).cdf).pvalue > 1e-3
  np.testing.assert_allclose(sigmas.mean(), 0.225, atol=0.003)


class GaussianNoiseRangeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_draws_one_sigma_per_example(self):
    key = jax.random.key(1)
    x = jnp.full((64, 32, 32, 1), 0.5)
    # sigma <= 0.1 keeps 0.5 +- 5 sigma inside [0, 1]: clipping is negligible.
    fn = lambda x, key: denoising.gaussian_noise_range(x, key, sigma_min=0.0, sigma_max=0.1)
    noisy = np.asarray(self.variant(fn)(x, key))
    assert noisy.shape == x.shape and noisy.min() >= 0.0 and noisy.max() <= 1.0
    want = np.asarray(denoising.sample_sigmas(jax.random.split(key)[0], 64, sigma_min=0.0,
                                              sigma_max=0.1))
    got = (noisy - 0.5).reshape(64, -1).std(axis=1)
    # 1024 pixels per image: the sample std is within ~2.2% (1/sqrt(2046)) of sigma.
    np.testing.assert_allclose(got, want, rtol=0.1, atol=2e-4)
    assert np.corrcoef(got, want)[0, 1] > 0.99


def test_gaussian_noise_range_rejects_a_bad_range():
  with pytest.raises(ValueError, match='sigma_min'):
    denoising.sample_sigmas(jax.random.key(0), 4, sigma_min=0.3, sigma_max=0.1)


def test_unet_denoiser_keeps_the_image_shape():
  model = models.UNetDenoiser(features=4, levels=2)
  # Shapes only (eval_shape): running the convolutions eagerly is slow on CPU.
  for size in (28, 32):
    x = jax.ShapeDtypeStruct((2, size, size, 1), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    assert jax.eval_shape(model.apply, variables, x).logits.shape == x.shape
  with pytest.raises(ValueError, match='divisible'):
    jax.eval_shape(model.init, jax.random.key(0), jax.ShapeDtypeStruct((1, 30, 30, 1), jnp.float32))


def test_classical_tuning_picks_the_best_grid_point():
  clean = denoising.photo_patches(['camera'], patch_size=32, num=8, seed=0)
  noisy = denoising.add_noise(clean, 0.2, jax.random.key(0))
  grid = {'weight': (0.001, 0.1, 5.0)}
  tuned = denoising.tune_classical(clean, noisy, sigma=0.2, grids={'tv': grid})['tv']
  scores = {w: denoising.psnr(clean, denoising.classical_denoise(noisy, 'tv', sigma=0.2,
                                                                 weight=w)).mean()
            for w in grid['weight']}
  assert tuned['params'] == {'weight': max(scores, key=scores.get)}
  assert tuned['val_psnr'] == pytest.approx(max(scores.values()))


def _photo_config():
  config = denoise_config.get_config('smoke')
  config.data.name = denoiser.PHOTOS
  return config


def test_photo_patches_come_as_batches_that_are_a_function_of_the_step():
  config = _photo_config()
  denoiser.validate(config)
  # Every patch of the 32x32 grid of coffee (400x600), chelsea (300x451), gravel (512x512).
  test = denoiser.images(config, 'test')
  assert test.shape == (12 * 18 + 9 * 14 + 16 * 16, 32, 32, 1) == (598, 32, 32, 1)
  train = denoiser.images(config, 'train')
  assert train.shape == (config.data.photos.num_train, 32, 32, 1)
  assert 0.0 <= train.min() and train.max() <= 1.0
  stage = denoiser.make_stage(config, 'model', {})
  from_start = stage.train_data(0)
  batches = [next(from_start)['image'] for _ in range(20)]  # Past one epoch of 256 / 16.
  resumed = stage.train_data(17)
  for want in batches[17:]:
    np.testing.assert_array_equal(next(resumed)['image'], want)
  assert not np.array_equal(batches[0], batches[16])  # A fresh order each epoch.
  evals = list(stage.eval_data())
  assert sum(b['mask'].sum() for b in evals) == 598
  np.testing.assert_array_equal(evals[0]['image'], test[:config.data.eval_batch_size])


@pytest.mark.parametrize('field, value, match', [
    ('loss.sigma_min', 0.5, 'sigma_min <= sigma_max'),
    ('model.levels', 3, r'levels=3: the 28x28 images'),  # 28 % 2**3 != 0
    ('model.name', 'conv_ae', 'unet_denoiser'),
    ('loss.reconstruction', 'l1', 'reconstruction'),
])
def test_validate_names_the_field_at_fault(field, value, match):
  config = denoise_config.get_config('smoke')
  section, name = field.split('.')
  config[section][name] = value
  with pytest.raises(ValueError, match=match):
    training.validate(config)


@pytest.mark.integration
@pytest.mark.learning
def test_a_trained_dae_beats_the_noisy_input_and_tuned_tv_on_mnist5k(tmp_path):
  config = denoise_config.get_config('smoke')
  config.model.features, config.model.levels = 8, 2
  config.data.batch_size = 32
  config.optim.learning_rate = 3e-3
  config.optim.schedule = 'constant'
  config.train.num_train_steps = 200
  config.train.log_every_steps = 50
  config.train.eval_every_steps = 200
  config.train.checkpoint_every_steps = 200
  metrics = training.train_and_evaluate(config, str(tmp_path))
  # The recipe's own score: the first eval batch at sigma = (0 + 0.4) / 2.
  assert metrics['psnr_dae'] > metrics['psnr_noisy'] + 3.0, metrics
  model, variables = training.restore_variables(config, str(tmp_path))
  test_x, _ = data.load_arrays('mnist5k', 'test')
  train_x, _ = data.load_arrays('mnist5k', 'train')
  clean, val = test_x[:200], train_x[:16]
  noisy = denoising.add_noise(clean, 0.2, jax.random.key(1))
  tuned = denoising.tune_classical(val, denoising.add_noise(val, 0.2, jax.random.key(2)),
                                   sigma=0.2, grids={'tv': denoising.DEFAULT_GRIDS['tv']})
  noisy_psnr = denoising.psnr(clean, noisy).mean()
  tv_psnr = denoising.psnr(clean, denoising.classical_denoise(
      noisy, 'tv', sigma=0.2, **tuned['tv']['params'])).mean()
  dae_psnr = denoising.psnr(clean, denoising.denoise(model, variables, noisy)).mean()
  # Measured: 16.8 dB noisy, 19.1 dB TV (weight 0.08), 22.7 dB after these 200 steps
  # (the recipe's own score: 16.8 -> 23.0 dB).
  assert dae_psnr > noisy_psnr + 3.0, (noisy_psnr, dae_psnr)
  assert dae_psnr > tv_psnr + 2.0, (tv_psnr, dae_psnr)


def test_photo_config_trains_the_photo_steps_with_a_cosine_over_them():
  config = denoise_config.get_config(None)
  photos = denoise_script.photo_config(config)
  assert photos.data.name == denoiser.PHOTOS and config.data.name == 'fashion_mnist'
  assert photos.train.num_train_steps == config.denoise.photo_num_train_steps == 700
  assert photos.optim.decay_steps == 700 and config.optim.decay_steps == 1500
  smoke = denoise_script.photo_config(denoise_config.get_config('smoke'))
  assert (smoke.train.num_train_steps, smoke.train.checkpoint_every_steps) == (6, 3)


@pytest.mark.integration
def test_script_smoke_preset_runs_end_to_end(tmp_path):
  cmd = [sys.executable, '-m', 'experiments.denoise',
         '--config=experiments/configs/apps/denoise.py:smoke', f'--workdir={tmp_path}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  metrics = json.loads((tmp_path / 'denoise.json').read_text())
  assert set(metrics['results']) == {'mnist5k', 'photos'}
  row = metrics['results']['mnist5k']['table']['0.2']
  assert set(row['psnr']) == set(denoising.METHODS)
  assert set(row['tuned']) == set(denoising.CLASSICAL)
  for name in ('mnist5k', 'photos'):
    assert (tmp_path / 'figures' / f'denoise_{name}.png').stat().st_size > 1000
    # Each DAE trained through the loop into its own run directory.
    assert training.checkpoint.latest_step(str(tmp_path / name / 'model')) == 6
    assert (tmp_path / name / 'figures' / 'denoising.png').stat().st_size > 1000
    final = metrics['results'][name]['final_metrics']
    assert {'loss', 'recon', 'psnr_noisy', 'psnr_dae'} <= set(final)
  assert '| mnist5k | 0.2 |' in proc.stdout
