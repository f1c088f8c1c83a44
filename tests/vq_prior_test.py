"""Tests for the VQ-VAE's autoregressive prior: causality of the gated PixelCNN, the
likelihood, ancestral sampling, learning on real MNIST codes, resume, and the script."""

import itertools
import json
import os
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
import pytest
from scipy import stats

from ae_jax import build
from ae_jax import data
from ae_jax import models
from ae_jax import objectives
from ae_jax import runner
from ae_jax import train
from ae_jax.applications import vq_prior
from ae_jax.models import pixelcnn
from experiments import vq_prior as vq_prior_script
from experiments.configs.apps import vq_prior as vq_prior_config

import _app_helpers


def test_shifts_move_rows_and_columns_and_fill_zeros():
  x = jnp.arange(12.0).reshape(1, 3, 4, 1)
  np.testing.assert_array_equal(pixelcnn.shift_down(x)[0, :, :, 0],
                                [[0, 0, 0, 0], [0, 1, 2, 3], [4, 5, 6, 7]])
  np.testing.assert_array_equal(pixelcnn.shift_right(x)[0, :, :, 0],
                                [[0, 0, 1, 2], [0, 4, 5, 6], [0, 8, 9, 10]])


def test_logits_depend_on_exactly_the_earlier_positions():
  """d logits(p) / d input(q) is exactly zero for q at or after p in raster order, and
  nonzero for every q before p (no blind spot), checked with the full Jacobian."""
  h, w = 5, 6  # not square, so a transposed shift would show
  # 16 channels: with few, all ReLUs of the output head can be off at a position
  # by chance, and its gradient vanishes for that reason alone.
  model = pixelcnn.GatedPixelCNN(num_codes=5, channels=16, num_layers=3, kernel_size=5)
  codes = jax.random.randint(jax.random.key(0), (1, h, w), 0, 5)
  params = model.init(jax.random.key(1), codes)
  e = jax.random.normal(jax.random.key(2), (1, h, w, 16))
  fn = lambda e: model.apply(params, e, method=model.logits_of_embeddings)[0]
  jac = jax.jit(jax.jacrev(fn))(e)  # [h, w, K, 1, h, w, C]
  dependence = np.abs(np.asarray(jac)).sum(axis=(2, 3, 6)).reshape(h * w, h * w)
  for p in range(h * w):
    assert np.all(dependence[p, p:] == 0.0), f'position {p} sees positions >= itself'
    missing = np.flatnonzero(dependence[p, :p] == 0)
    assert np.all(dependence[p, :p] > 0.0), f'position {p} misses {missing}'


def test_pixelcnn_rejects_bad_input():
  model = pixelcnn.GatedPixelCNN(num_codes=4, channels=4, num_layers=1)
  with pytest.raises(ValueError, match='int codes'):
    model.init(jax.random.key(0), jnp.zeros((1, 3, 3)))
  with pytest.raises(ValueError, match='kernel_size must be odd'):
    pixelcnn.GatedPixelCNN(kernel_size=4).init(jax.random.key(0), jnp.zeros((1, 3, 3), jnp.int32))


def test_code_nll_matches_numpy_log_softmax():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 3, 4, 6)).astype(np.float32)
  codes = rng.integers(0, 6, size=(2, 3, 4))
  log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = -np.take_along_axis(log_p, codes[..., None], -1)[..., 0].sum(axis=(1, 2))
  np.testing.assert_allclose(vq_prior.code_nll(jnp.asarray(logits), jnp.asarray(codes)),
                             expected, rtol=1e-5)


def _sharp_prior():
  """A 1 x 2 grid of K=3 codes with logits scaled up so p(c1 | c0) depends on c0."""
  model = pixelcnn.GatedPixelCNN(num_codes=3, channels=8, num_layers=2, kernel_size=3)
  params = model.init(jax.random.key(4), jnp.zeros((1, 1, 2), jnp.int32))
  params = jax.tree.map(lambda a: 3.0 * a, params)
  return model, params


def test_ancestral_samples_follow_the_model_joint():
  model, params = _sharp_prior()
  # Exact joint p(c0, c1) = p(c0) p(c1 | c0) from the network's conditionals.
  grids = jnp.array([[[a, b]] for a, b in itertools.product(range(3), range(3))], jnp.int32)
  log_p = jax.nn.log_softmax(model.apply(params, grids), -1)  # [9, 1, 2, K]
  joint = np.array([float(jnp.exp(log_p[i, 0, 0, a] + log_p[i, 0, 1, b]))
                    for i, (a, b) in enumerate(itertools.product(range(3), range(3)))])
  assert joint.sum() == pytest.approx(1.0, abs=1e-5)
  joint = joint / joint.sum()  # float32 rounding; chisquare wants equal totals
  conditional = joint.reshape(3, 3) / joint.reshape(3, 3).sum(1, keepdims=True)
  assert np.abs(conditional[0] - conditional[1]).max() > 0.05  # c1 really depends on c0
  n = 4000
  samples = np.asarray(vq_prior.sample_codes(model, params, jax.random.key(5), n, (1, 2)))
  assert samples.shape == (n, 1, 2) and samples.dtype == np.int32
  counts = np.bincount(samples[:, 0, 0] * 3 + samples[:, 0, 1], minlength=9)
  assert stats.chisquare(counts, joint * counts.sum()).pvalue > 1e-3
  # A tiny temperature is greedy decoding.
  greedy = np.asarray(vq_prior.sample_codes(model, params, jax.random.key(6), n, (1, 2),
                                            temperature=1e-4))
  first = int(jnp.argmax(log_p[0, 0, 0]))
  assert greedy[0, 0, 0] == first
  assert greedy[0, 0, 1] == int(jnp.argmax(log_p[first * 3, 0, 1]))
  with pytest.raises(ValueError, match='temperature must be > 0'):
    vq_prior.sample_codes(model, params, jax.random.key(0), 1, (1, 2), temperature=0.0)


# ----------------------------------------------------------------------------
# Real codes: a VQ-VAE trained briefly on the MNIST 5k subset.
# ----------------------------------------------------------------------------

_PRIOR_CFG = dict(channels=32, num_layers=3, kernel_size=5, learning_rate=2e-3,
                  batch_size=64, num_train_steps=80, eval_every_steps=40,
                  checkpoint_every_steps=40, seed=0)


@pytest.fixture(scope='module')
def mnist_codes():
  vqvae = models.VQVAE(num_codes=32, code_dim=8, hidden_channels=32, res_channels=16,
                       num_res_blocks=1)
  objective = objectives.make_vqvae_objective(vqvae, reconstruction='mse',
                                              output_activation='identity')
  train_x, _ = data.load_arrays('mnist5k', 'train')
  test_x, _ = data.load_arrays('mnist5k', 'test')
  variables = _app_helpers.train_briefly(vqvae, objective, train_x, num_steps=40)
  train_codes = vq_prior.encode_indices(vqvae, variables, train_x)
  test_codes = vq_prior.encode_indices(vqvae, variables, test_x)
  return vqvae, variables, train_codes, test_codes


def test_prior_nll_falls_on_real_codes_and_its_samples_decode(mnist_codes, tmp_path):
  vqvae, variables, train_codes, test_codes = mnist_codes
  assert train_codes.shape == (4000, 7, 7) and test_codes.shape == (1000, 7, 7)
  unigram = vq_prior.unigram_nats_per_code(train_codes, test_codes, 32)
  prior, params, history = vq_prior.train_prior(_PRIOR_CFG, str(tmp_path), train_codes,
                                                test_codes, num_codes=32)
  start, end = history[0]['nats_per_code'], history[-1]['nats_per_code']
  print(f'prior test NLL {start:.3f} -> {end:.3f} nats/code; code frequencies {unigram:.3f}')
  assert [r['step'] for r in history] == [0, 40, 80]
  assert start > 0.9 * np.log(32)  # An untrained prior is near uniform ...
  assert end < 0.85 * unigram      # ... a trained one uses the context.
  assert history[-1]['bits_per_image'] == pytest.approx(end * 49 / np.log(2), rel=1e-6)

  # Its samples decode to finite images of the data's shape.
  codes = vq_prior.sample_codes(prior, params, jax.random.key(0), 6, (7, 7), temperature=1.0)
  assert codes.shape == (6, 7, 7) and int(codes.min()) >= 0 and int(codes.max()) < 32
  images = vq_prior.decode_indices(vqvae, variables, np.asarray(codes))
  assert images.shape == (6, 28, 28, 1)
  assert np.all(np.isfinite(images)) and images.min() >= 0.0 and images.max() <= 1.0



@pytest.mark.slow
def test_prior_training_resumes_exactly(mnist_codes, tmp_path):
  """Steps 41..80 redone from the step-40 checkpoint land on the same parameters."""
  _, _, train_codes, test_codes = mnist_codes
  _, params, _ = vq_prior.train_prior(_PRIOR_CFG, str(tmp_path), train_codes, test_codes,
                                      num_codes=32)
  shutil.rmtree(tmp_path / 'checkpoints' / '80')
  lines = []
  _, resumed, history = vq_prior.train_prior(_PRIOR_CFG, str(tmp_path), train_codes,
                                             test_codes, num_codes=32, print_fn=lines.append)
  assert 'resumed' in lines[0] and 'step 40' in lines[0]
  jax.tree.map(np.testing.assert_array_equal, params, resumed)
  assert [r['step'] for r in history] == [0, 40, 80]
  assert json.loads((tmp_path / 'metrics.jsonl').read_text().splitlines()[-1])['step'] == 80


def test_prior_training_rejects_bad_codes(tmp_path):
  codes = np.zeros((70, 7, 7), np.int32)
  with pytest.raises(ValueError, match=r'must lie in \[0, 32\)'):
    vq_prior.train_prior(_PRIOR_CFG, str(tmp_path), codes + 32, codes, num_codes=32)
  with pytest.raises(ValueError, match='int codes'):
    vq_prior.train_prior(_PRIOR_CFG, str(tmp_path), codes.astype(float), codes, num_codes=32)
  with pytest.raises(ValueError, match='batch_size=64 exceeds the 10 training grids'):
    vq_prior.train_prior(_PRIOR_CFG, str(tmp_path), codes[:10], codes, num_codes=32)


def _checkpoint_untrained_vqvae(config, workdir):
  """A runner-style checkpoint of the config's VQ-VAE at initialisation: what
  --model_workdir restores, without compiling a training run."""
  model = build.build_model(config.model)
  variables = runner.init_variables(model, jnp.zeros((1, 28, 28, 1)), jax.random.key(0))
  state = train.create_train_state(
      {'params': variables['params']}, build.build_optimizer(config.optim),
      {k: v for k, v in variables.items() if k != 'params'})
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  manager.save(0, args=ocp.args.StandardSave(state))
  manager.wait_until_finished()
  manager.close()


def test_script_smoke_preset_end_to_end_from_a_model_workdir(tmp_path):
  """Stage 2 of the script on a restored VQ-VAE (stage 1 is the runner's vqvae.py:smoke,
  run in tests/runner_test.py)."""
  config = vq_prior_config.get_config('smoke')
  _checkpoint_untrained_vqvae(config, str(tmp_path / 'vqvae'))
  metrics = vq_prior_script.run(config, str(tmp_path / 'run'), str(tmp_path / 'vqvae'))
  saved = json.loads((tmp_path / 'run' / 'vq_prior.json').read_text())
  assert saved['grid'] == [7, 7] and saved['num_codes'] == 64
  assert saved['prior_nats_per_code'] == pytest.approx(metrics['prior_nats_per_code'])
  assert (tmp_path / 'run' / 'prior' / 'checkpoints' / '6').is_dir()
  assert not (tmp_path / 'run' / 'checkpoints').exists()  # Nothing trained in stage 1.
  for name in ('vq_code_usage.png', 'vq_prior_samples.png'):
    assert (tmp_path / 'run' / 'figures' / name).stat().st_size > 1000, name


@pytest.mark.slow
def test_script_default_preset_generates_from_a_trained_vqvae(tmp_path):
  """Both stages at the default size: the prior beats the code frequencies."""
  metrics = vq_prior_script.run(vq_prior_config.get_config(), str(tmp_path))
  assert metrics['prior_nats_per_code'] < 0.8 * metrics['unigram_nats_per_code'], metrics
