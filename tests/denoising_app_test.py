"""Tests of ae_jax.applications.denoising and experiments/denoise.py."""

import json
import math
import os
import subprocess
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats
from skimage import metrics as sk_metrics

from ae_jax import data
from ae_jax.applications import denoising

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_psnr_of_a_constant_offset_is_20_log10_of_one_over_delta():
  # MSE of a constant offset delta is delta^2, so PSNR = 10 log10(1 / delta^2) = 20 log10(1 / delta).
  clean = np.full((2, 8, 8, 1), 0.25)
  for delta in (0.1, 0.01, 0.3):
    got = denoising.psnr(clean, clean + delta)
    np.testing.assert_allclose(got, 20 * math.log10(1 / delta), rtol=1e-9)
  np.testing.assert_allclose(denoising.psnr(clean, clean + 0.1), [20.0, 20.0], rtol=1e-9)


def test_psnr_and_ssim_agree_with_skimage_per_image():
  rng = np.random.default_rng(0)
  clean = rng.uniform(size=(3, 16, 16, 1))
  noisy = np.clip(clean + 0.1 * rng.normal(size=clean.shape), 0, 1)
  want_psnr = [sk_metrics.peak_signal_noise_ratio(c[..., 0], n[..., 0], data_range=1.0)
               for c, n in zip(clean, noisy)]
  want_ssim = [sk_metrics.structural_similarity(c[..., 0], n[..., 0], data_range=1.0)
               for c, n in zip(clean, noisy)]
  np.testing.assert_allclose(denoising.psnr(clean, noisy), want_psnr, rtol=1e-12)
  np.testing.assert_allclose(denoising.ssim(clean, noisy), want_ssim, rtol=1e-12)
  np.testing.assert_allclose(denoising.ssim(clean, clean), 1.0)


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
  model = denoising.UNetDenoiser(features=4, levels=2)
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


def test_short_trained_dae_beats_the_noisy_input_on_mnist5k_at_sigma_02():
  train_x, _ = data.load_arrays('mnist5k', 'train')
  test_x, _ = data.load_arrays('mnist5k', 'test')
  model = denoising.UNetDenoiser(features=8, levels=2)
  variables, history = denoising.train_denoiser(model, train_x, jax.random.key(0),
                                                num_steps=200, batch_size=32,
                                                tx=optax.adam(3e-3))
  assert np.isfinite(history[-1]['loss'])
  clean = test_x[:200]
  noisy = denoising.add_noise(clean, 0.2, jax.random.key(1))
  noisy_psnr = denoising.psnr(clean, noisy).mean()
  dae_psnr = denoising.psnr(clean, denoising.denoise(model, variables, noisy)).mean()
  # Measured: 16.8 dB noisy, 22.5 dB after these 200 steps.
  assert dae_psnr > noisy_psnr + 3.0, (noisy_psnr, dae_psnr)


def test_script_smoke_preset_runs_end_to_end(tmp_path):
  cmd = [sys.executable, '-m', 'experiments.denoise',
         '--config=experiments/configs/apps/denoise.py:smoke', f'--workdir={tmp_path}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  metrics = json.loads((tmp_path / 'denoise.json').read_text())
  assert set(metrics['results']) == {'mnist5k', 'photos'}
  row = metrics['results']['mnist5k']['table']['0.2']
  assert set(row['psnr']) == set(denoising.METHODS)
  assert set(row['tuned']) == set(denoising.CLASSICAL)
  for name in ('mnist5k', 'photos'):
    assert (tmp_path / 'figures' / f'denoise_{name}.png').stat().st_size > 1000
  assert '| mnist5k | 0.2 |' in proc.stdout
