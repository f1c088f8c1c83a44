"""Slower proofs: default configs learn on real data (`make test-slow`).

Each trains a config's default preset, shortened where noted, on the MNIST 5k
subset with `ae_jax.training` and checks the held-out metrics against what a
model that learned nothing scores.
"""

import importlib
import os

import pytest

import _baselines

from ae_jax import data
from ae_jax import training

pytestmark = pytest.mark.slow


def _config(name, **overrides):
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  config.train.progress_bar = False
  for field, value in overrides.items():
    section, key = field.split('.')
    config[section][key] = value
  return config


def _blank_image_scores():
  """Per-pixel MSE and Bernoulli NLL (nats/image) of predicting the train mean image."""
  train_x, _ = data.load_arrays('mnist5k', 'train')
  test_x, _ = data.load_arrays('mnist5k', 'test')
  return (_baselines.mean_image_mse(train_x, test_x),
          _baselines.mean_image_bernoulli_nll(train_x, test_x))


@pytest.mark.learning
def test_conv_vae_demo_config_learns(tmp_path):
  """The README's demo: its test negative ELBO ends far below the mean-image NLL."""
  _, mean_image_nll = _blank_image_scores()
  metrics = training.train_and_evaluate(_config('conv_vae'), str(tmp_path))
  assert -metrics['elbo'] < 0.6 * mean_image_nll, (metrics, mean_image_nll)
  assert (tmp_path / 'figures' / 'samples.png').stat().st_size > 1000


@pytest.mark.learning
def test_vqvae_default_config_learns_and_uses_its_codebook(tmp_path):
  # The VQ-VAE stage alone: its prior (the recipe's second stage) is not what this checks.
  mean_image_mse, _ = _blank_image_scores()
  config = _config('vqvae', **{'train.num_train_steps': 600})
  recipe = training.validate(config)
  first = recipe.stages(config)[0]
  metrics = training.fit(recipe.make_stage(config, first, {}), os.path.join(tmp_path, first)).metrics
  assert metrics['recon'] < 0.4 * mean_image_mse, (metrics, mean_image_mse)
  assert metrics['usage'] > 0.25, metrics
