"""Slower proof for the diffusion autoencoder (`make test-slow`): the default
config trained through `training.train_and_evaluate` on MNIST 5k learns (its
ε-prediction error and its z_sem-only reconstruction against the untrained
model's), DDIM encode → decode round-trips held-out digits at ≥ 30 dB (a
property of DDIM, true untrained as well), and its latent DDPM trains."""

import json

import pytest

from ae_jax import training
from experiments.configs import diffusion_ae as diffusion_ae_config

pytestmark = pytest.mark.slow


@pytest.mark.learning
def test_default_config_learns_and_its_ddim_round_trip_holds(tmp_path):
  config = diffusion_ae_config.get_config()
  config.train.progress_bar = False
  metrics = training.train_and_evaluate(config, str(tmp_path))
  with open(tmp_path / 'model' / 'metrics.jsonl') as f:
    train_losses = [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']
  # ε-prediction MSE: a model that predicts ε = 0 scores 1.
  assert train_losses[0] > 0.2 and metrics['loss'] < 0.06, (train_losses[:3], metrics)
  # Learning: z_sem alone (a fresh x_T) against the untrained model, same x_T.
  assert metrics['zsem_psnr'] > metrics['zsem_psnr_untrained'] + 4.0, metrics
  # DDIM's round trip, mean over 64 held-out digits with 100 steps each way: exact
  # for any noise predictor, so a check of the sampler, not of learning.
  assert metrics['ddim_psnr'] >= 30.0, metrics
  assert metrics['zsem_psnr'] < metrics['ddim_psnr'] - 5, metrics
  # The latent DDPM's ε-MSE on the test codes (1 for a denoiser that predicts 0).
  assert metrics['latent/loss'] < 0.8, metrics
  with open(tmp_path / 'diffusion_metrics.json') as f:
    assert json.load(f)['ddim_psnr'] == pytest.approx(metrics['ddim_psnr'])
  assert (tmp_path / 'figures' / 'samples.png').stat().st_size > 1000
  # Sample quality is recorded; the copy check (not a learning claim): samples sit no
  # nearer the training digits than test digits do (a 500-step run: ratio 1.45, and
  # no sample nearer a training digit than 95% of test digits).
  with open(tmp_path / 'diffusion_metrics.json') as f:
    record = json.load(f)
  assert 0 < record['samples/frechet_distance_real'] and 0 < record['samples/frechet_distance']
  assert record['samples/nn_ratio'] > 0.8, record
  assert record['samples/frac_samples_closer_than_test_p5'] < 0.2, record
