"""Inpainting: mask sizes, fills that keep the observed pixels, PSNR by hand, a trained AE
against the mean fill on MNIST, and the script's smoke preset."""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import data
from ae_jax import models
from ae_jax import objectives
from ae_jax.applications import inpainting
from experiments.configs.apps import inpaint as inpaint_config

from _app_helpers import init_variables
from _app_helpers import train_briefly as _train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------
# Masks.


@pytest.mark.parametrize('fraction', [0.0, 0.25, 0.5, 0.8, 1.0])
def test_random_pixel_mask_hides_the_requested_fraction(fraction):
  images = np.zeros((6, 28, 28, 3))
  missing = inpainting.random_pixel_mask(images, fraction=fraction, seed=1)
  assert missing.shape == images.shape and missing.dtype == bool
  # Exactly round(fraction * H * W) pixels per image, all channels of a pixel together.
  np.testing.assert_array_equal(missing[..., 0].sum(axis=(1, 2)), round(fraction * 784))
  np.testing.assert_array_equal(missing, np.broadcast_to(missing[..., :1], missing.shape))
  if 0.0 < fraction < 1.0:
    assert not np.array_equal(missing[0], missing[1])  # Drawn per image.
  again = inpainting.random_pixel_mask(images, fraction=fraction, seed=1)
  np.testing.assert_array_equal(missing, again)


@pytest.mark.parametrize('size, expected', [(12, (12, 12)), ((5, 9), (5, 9)), (28, (28, 28))])
def test_box_mask_is_one_box_of_the_requested_size(size, expected):
  missing = inpainting.box_mask(np.zeros((50, 28, 28, 1)), size=size, seed=0)
  tops = set()
  for m in missing[..., 0]:
    rows, cols = np.nonzero(m)
    # The True pixels fill their bounding box, and the box has the requested size.
    assert (rows.max() - rows.min() + 1, cols.max() - cols.min() + 1) == expected
    assert m.sum() == expected[0] * expected[1]
    tops.add((rows.min(), cols.min()))
  if expected != (28, 28):
    assert len(tops) > 10  # Positions vary across images.


def test_mask_specs_and_bad_arguments():
  images = np.zeros((2, 8, 8, 1))
  assert inpainting.make_mask(images, 'pixels:0.5').sum() == 64
  assert inpainting.make_mask(images, 'box:3').sum() == 18
  for spec in ('pixels', 'box:', 'ring:3'):
    with pytest.raises(ValueError):
      inpainting.make_mask(images, spec)
  with pytest.raises(ValueError):
    inpainting.box_mask(images, size=9)
  with pytest.raises(ValueError):
    inpainting.random_pixel_mask(images, fraction=1.5)


# ----------------------------------------------------------------------------
# PSNR.


def test_psnr_on_the_missing_region_by_hand():
  truth = np.zeros((2, 2, 2, 1))
  filled = np.zeros((2, 2, 2, 1))
  missing = np.zeros((2, 2, 2, 1), bool)
  # Image 0: two missing pixels off by 0.1 -> MSE 0.01 -> 10 log10(1 / 0.01) = 20 dB.
  missing[0, 0, :, 0] = True
  filled[0, 0, :, 0] = 0.1
  # Observed pixels do not count, however wrong.
  filled[0, 1, :, 0] = 0.9
  # Image 1: one missing pixel off by 0.5 -> MSE 0.25 -> 10 log10(4) = 6.0206 dB.
  missing[1, 1, 1, 0] = True
  filled[1, 1, 1, 0] = 0.5
  psnr = inpainting.psnr_missing(filled, truth, missing)
  np.testing.assert_allclose(psnr, [20.0, 10 * math.log10(4.0)], rtol=1e-12)
  # Peak 255: PSNR grows by 20 log10(255) for the same errors.
  np.testing.assert_allclose(inpainting.psnr_missing(filled, truth, missing, max_value=255.0),
                             psnr + 20 * math.log10(255.0), rtol=1e-12)
  # A perfect fill is finite (the MSE floor), and an image without missing pixels is an error.
  assert inpainting.psnr_missing(truth, truth, missing)[0] == pytest.approx(100.0)
  with pytest.raises(ValueError):
    inpainting.psnr_missing(filled, truth, np.zeros_like(missing))


# ----------------------------------------------------------------------------
# Fills keep the observed pixels.


def test_mean_fills_by_hand():
  images = np.array([[[[0.2], [0.4]], [[0.6], [1.0]]]], np.float32)  # [1, 2, 2, 1]
  missing = np.array([[[[True], [False]], [[False], [True]]]])
  pixel_mean = np.full((2, 2, 1), 0.3, np.float32)
  np.testing.assert_allclose(inpainting.mean_fill(images, missing, pixel_mean=pixel_mean)[0, :, :, 0],
                             [[0.3, 0.4], [0.6, 0.3]])
  # Without a train mean: the mean of the observed pixels, (0.4 + 0.6) / 2.
  np.testing.assert_allclose(inpainting.mean_fill(images, missing)[0, :, :, 0],
                             [[0.5, 0.4], [0.6, 0.5]])


@pytest.fixture(scope='module')
def digits():
  images, _ = data.load_arrays('digits', 'test')
  return images[:37]  # Not a multiple of the batch size: the last batch is padded.


@pytest.mark.parametrize('model', [
    models.MLPAutoencoder(input_dim=64, hidden=(32,), latent_dim=4),
    models.MLPVAE(input_dim=64, hidden=(32,), latent_dim=4),
], ids=['ae', 'vae'])
@pytest.mark.parametrize('spec', ['pixels:0.6', 'box:4'])
def test_fills_never_change_observed_pixels(model, spec, digits):
  variables = init_variables(model, digits[:1], jax.random.key(0))
  missing = inpainting.make_mask(digits, spec, seed=3)
  pixel_mean = inpainting.pixel_mean(digits)
  fills = [
      inpainting.mean_fill(digits, missing, pixel_mean=pixel_mean),
      inpainting.mean_fill(digits, missing),
      inpainting.iterative_fill(model, variables, digits, missing, num_iterations=3,
                                pixel_mean=pixel_mean, batch_size=16),
  ]
  if model.family == 'vae':
    fills.append(inpainting.latent_fill(model, variables, digits, missing, jax.random.key(2),
                                        num_steps=3, num_starts=3, batch_size=16))
  else:
    with pytest.raises(ValueError, match='needs a VAE'):
      inpainting.latent_fill(model, variables, digits, missing, jax.random.key(2))
  for filled in fills:
    assert filled.shape == digits.shape and filled.dtype == np.float32
    np.testing.assert_array_equal(filled[~missing], digits[~missing].astype(np.float32))
    assert np.all(np.isfinite(filled))
  # The model's fills really fill: the missing pixels move away from the start.
  assert not np.allclose(fills[2][missing], fills[0][missing])


def test_iterative_fill_with_zero_iterations_is_the_mean_fill(digits):
  model = models.MLPAutoencoder(input_dim=64, hidden=(32,), latent_dim=4)
  variables = model.init(jax.random.key(0), jnp.asarray(digits[:1]))
  missing = inpainting.make_mask(digits, 'box:3', seed=0)
  np.testing.assert_array_equal(
      inpainting.iterative_fill(model, variables, digits, missing, num_iterations=0),
      inpainting.mean_fill(digits, missing))


def test_latent_fill_does_not_depend_on_the_batch_size(digits):
  model = models.MLPVAE(input_dim=64, hidden=(32,), latent_dim=4)
  variables = model.init(jax.random.key(0), jnp.asarray(digits[:1]), jax.random.key(1))
  missing = inpainting.make_mask(digits, 'pixels:0.5', seed=0)
  kwargs = dict(num_steps=2, num_starts=3)
  a = inpainting.latent_fill(model, variables, digits, missing, jax.random.key(5),
                             batch_size=8, **kwargs)
  b = inpainting.latent_fill(model, variables, digits, missing, jax.random.key(5),
                             batch_size=37, **kwargs)
  np.testing.assert_allclose(a, b, atol=1e-5)


# ----------------------------------------------------------------------------
# Learning: a short-trained AE beats the mean fill on MNIST box masks.


@pytest.mark.integration
@pytest.mark.learning
def test_short_trained_autoencoder_beats_mean_fill_on_mnist_boxes():
  train_x, _ = data.load_arrays('mnist5k', 'train')
  test_x, _ = data.load_arrays('mnist5k', 'test')
  test_x = test_x[:300]
  model = models.MLPAutoencoder(hidden=(256, 128), latent_dim=32)
  variables = _train(model, objectives.make_autoencoder_objective(model), train_x,
                     num_steps=600, batch_size=128, learning_rate=1e-3)
  missing = inpainting.box_mask(test_x, size=10, seed=0)
  pixel_mean = inpainting.pixel_mean(train_x)
  baseline = inpainting.psnr_missing(
      inpainting.mean_fill(test_x, missing, pixel_mean=pixel_mean), test_x, missing)
  filled = inpainting.psnr_missing(
      inpainting.iterative_fill(model, variables, test_x, missing, num_iterations=30,
                                pixel_mean=pixel_mean), test_x, missing)
  assert filled.mean() > baseline.mean() + 0.5, (filled.mean(), baseline.mean())


# ----------------------------------------------------------------------------
# Config and script.


def test_config_parses_its_argument_and_is_locked():
  config = inpaint_config.get_config('smoke,model=undercomplete')
  assert config.model.name == 'mlp_ae' and config.train.num_train_steps == 6
  default = inpaint_config.get_config()
  assert default.model.name == 'mlp_vae' and default.data.name == 'fashion_mnist'
  for spec in default.inpaint.masks:
    inpainting.make_mask(np.zeros((1, 28, 28, 1)), spec)
  with pytest.raises(AttributeError):
    config.inpaint.unknown = 1


@pytest.mark.integration
def test_script_smoke_preset_runs_end_to_end(tmp_path):
  cmd = [sys.executable, '-m', 'experiments.inpaint',
         '--config=experiments/configs/apps/inpaint.py:smoke', f'--workdir={tmp_path}']
  proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=240,
                        env=dict(os.environ, PYTHONUNBUFFERED='1'))
  assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
  metrics = json.loads((tmp_path / 'inpaint.json').read_text())
  assert sorted(metrics['psnr']) == sorted(inpaint_config.get_config('smoke').inpaint.masks)
  for row in metrics['psnr'].values():
    assert set(row) == {'mean_train', 'mean_observed', 'iterative', 'latent'}
    assert all(math.isfinite(v['psnr_db']) for v in row.values())
  for name in ('inpaint_pixels_0p5.png', 'inpaint_box_12.png'):
    assert (tmp_path / 'figures' / name).stat().st_size > 1000, name
  assert '| mask |' in proc.stdout
