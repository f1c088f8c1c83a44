"""Tests for the VQ-VAE's autoregressive prior: causality of the gated PixelCNN, the
likelihood, ancestral sampling, the two-stage `vqvae` recipe learning on real MNIST
codes, its resume, and the script with --model_workdir.

The training contract of both stages (bitwise resume after SIGKILL and SIGTERM, NaN
stops, two devices) is checked in tests/contract_test.py."""

import itertools
import json
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ae_jax import training
from ae_jax.applications import vq_prior
from ae_jax.models import pixelcnn
from ae_jax.recipes import vqvae as vqvae_recipe
from experiments import vq_prior as vq_prior_script
from experiments.configs import vqvae as vqvae_config
from experiments.configs.apps import vq_prior as vq_prior_config


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


@pytest.mark.integration
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
# The recipe's stages, and its checks of the `prior` section.
# ----------------------------------------------------------------------------


def test_the_prior_is_a_stage_only_when_the_config_asks_for_it():
  assert vqvae_recipe.stages(vqvae_config.get_config('smoke')) == ('model',)
  config = vq_prior_config.get_config('smoke')
  assert vqvae_recipe.stages(config) == ('model', 'prior')
  config.prior.num_train_steps = 0
  assert vqvae_recipe.stages(config) == ('model',)
  for preset in ('smoke', 'default', 'colab_tpu'):
    training.validate(vq_prior_config.get_config(preset))
  with pytest.raises(ValueError, match="recipe 'vae'"):
    vq_prior_config.get_config('smoke,model=vae')


@pytest.mark.parametrize('field, value, match', [
    ('kernel_size', 4, 'config.prior.kernel_size must be odd'),
    ('batch_size', 5000, 'config.prior.batch_size=5000 exceeds the 4000 training grids'),
    ('eval_batch_size', 0, 'config.prior.eval_batch_size must be > 0'),
    ('checkpoint_every_steps', 0, 'config.prior.checkpoint_every_steps must be > 0'),
    ('learning_rate', 0.0, 'config.prior.learning_rate must be > 0'),
    ('temperatures', (1.0, 0.0), 'config.prior.temperatures must be > 0'),
    ('num_train_steps', -1, 'config.prior.num_train_steps must be >= 0'),
])
def test_validate_rejects_bad_prior_settings(field, value, match):
  config = vq_prior_config.get_config('smoke')
  config.prior[field] = value
  with pytest.raises(ValueError, match=match):
    training.validate(config)


def test_code_checks_reject_codes_outside_the_codebook():
  codes = np.zeros((10, 7, 7), np.int32)
  with pytest.raises(ValueError, match=r'must lie in \[0, 32\)'):
    vq_prior.unigram_nats_per_code(codes + 32, codes, 32)
  with pytest.raises(ValueError, match='int codes'):
    vq_prior.unigram_nats_per_code(codes.astype(float), codes, 32)


# ----------------------------------------------------------------------------
# Real codes: a small VQ-VAE trained briefly on the MNIST 5k subset, then its
# prior, both stages by the one loop (training.train_and_evaluate).
# ----------------------------------------------------------------------------


def _small_config():
  """apps/vq_prior.py:smoke with a small VQ-VAE (40 steps) and a prior of 80 steps."""
  config = vq_prior_config.get_config('smoke')
  with config.unlocked():
    config.model.update(num_codes=32, code_dim=8, hidden_channels=32, res_channels=16,
                        num_res_blocks=1)
  config.optim.learning_rate = 3e-3
  config.data.batch_size = 64
  config.train.update(num_train_steps=40, eval_every_steps=40, checkpoint_every_steps=40)
  config.prior.update(channels=32, num_layers=3, kernel_size=5, learning_rate=2e-3,
                      batch_size=64, eval_batch_size=500, num_train_steps=80,
                      log_every_steps=40, eval_every_steps=40, checkpoint_every_steps=40,
                      num_samples=6, temperatures=(1.0, 0.7))
  return config


@pytest.fixture(scope='module')
def small_run(tmp_path_factory):
  workdir = tmp_path_factory.mktemp('vq_prior') / 'run'
  config = _small_config()
  metrics = training.train_and_evaluate(config, str(workdir))
  return config, workdir, metrics


@pytest.mark.integration
@pytest.mark.learning
def test_prior_nll_falls_on_real_codes_and_its_samples_decode(small_run):
  config, workdir, metrics = small_run
  saved = json.loads((workdir / 'vq_prior.json').read_text())
  assert saved['grid'] == [7, 7] and saved['num_codes'] == 32
  start, end = saved['prior_initial_nats_per_code'], saved['prior_nats_per_code']
  unigram = saved['unigram_nats_per_code']
  print(f'prior test NLL {start:.3f} -> {end:.3f} nats/code; code frequencies {unigram:.3f}')
  assert saved['uniform_nats_per_code'] == pytest.approx(np.log(32))
  assert unigram < np.log(32)
  assert start > 0.9 * np.log(32)  # An untrained prior is near uniform ...
  assert end < 0.85 * unigram      # ... a trained one uses the context.
  assert saved['prior_bits_per_image'] == pytest.approx(end * 49 / np.log(2), rel=1e-6)
  # The loop's evaluations: 500 divides the 1,000 test grids, so its mean is exact.
  assert [r['step'] for r in saved['prior_history']] == [40, 80]
  assert saved['prior_history'][-1]['nats_per_code'] == pytest.approx(end, rel=1e-5)
  assert metrics['prior/nats_per_code'] == pytest.approx(end)
  for name in ('reconstructions.png', 'latent_map.png', 'training_curves.png',
               'vq_code_usage.png', 'vq_prior_samples.png', 'prior_training_curves.png'):
    assert (workdir / 'figures' / name).stat().st_size > 1000, name

  # Its samples decode to finite images of the data's shape.
  trained = training.restore(config, str(workdir))
  vqvae, variables = trained['model'].stage.model, trained['model'].variables
  prior, params = trained['prior'].stage.model, trained['prior'].state.params
  codes = vq_prior.sample_codes(prior, params, jax.random.key(0), 6, (7, 7), temperature=1.0)
  assert codes.shape == (6, 7, 7) and int(codes.min()) >= 0 and int(codes.max()) < 32
  images = vq_prior.decode_indices(vqvae, variables, np.asarray(codes))
  assert images.shape == (6, 28, 28, 1)
  assert np.all(np.isfinite(images)) and images.min() >= 0.0 and images.max() <= 1.0


@pytest.mark.integration
@pytest.mark.slow
def test_prior_training_resumes_exactly(small_run, tmp_path, capsys):
  """Steps 41..80 of the prior redone from its step-40 checkpoint land on the same
  parameters; the finished VQ-VAE is restored, not retrained."""
  config, workdir, _ = small_run
  copy = tmp_path / 'copy'
  shutil.copytree(workdir, copy)
  shutil.rmtree(copy / 'prior' / 'checkpoints' / '80')
  capsys.readouterr()
  training.train_and_evaluate(config, str(copy))
  out = capsys.readouterr().out
  assert f'prior: resumed from {copy / "prior"}/checkpoints at step 40' in out
  assert 'model: resumed' not in out
  expected = training.restore(config, str(workdir))['prior'].state
  resumed = training.restore(config, str(copy))['prior'].state
  jax.tree.map(np.testing.assert_array_equal, expected, resumed)
  records = (copy / 'prior' / 'metrics.jsonl').read_text().splitlines()
  assert json.loads(records[-1])['step'] == 80
  assert [json.loads(r)['step'] for r in records] == [40, 40, 80, 80]  # train, eval; no repeats


def _checkpoint_untrained_vqvae(config, workdir):
  """A checkpoint of the config's VQ-VAE stage at initialisation, in workdir/model: what
  --model_workdir restores, without compiling a training run."""
  stage = vqvae_recipe.make_stage(config, 'model', {})
  state = jax.jit(stage.init)(jax.random.key(0))
  mngr = training.checkpoint.manager(str(workdir / 'model'))
  training.checkpoint.save(mngr, 0, state)
  mngr.wait_until_finished()
  mngr.close()


@pytest.mark.integration
def test_script_smoke_preset_end_to_end_from_a_model_workdir(tmp_path):
  """The prior stage alone on a restored VQ-VAE (both stages of the smoke preset are
  fitted in tests/contract_test.py)."""
  config = vq_prior_config.get_config('smoke')
  _checkpoint_untrained_vqvae(config, tmp_path / 'vqvae')
  metrics = vq_prior_script.run(config, str(tmp_path / 'run'), str(tmp_path / 'vqvae'))
  saved = json.loads((tmp_path / 'run' / 'vq_prior.json').read_text())
  assert saved['grid'] == [7, 7] and saved['num_codes'] == 64
  assert saved['prior_nats_per_code'] == pytest.approx(metrics['prior/nats_per_code'])
  assert training.checkpoint.latest_step(str(tmp_path / 'run' / 'prior')) == 6
  assert not (tmp_path / 'run' / 'model').exists()  # Nothing trained in stage 1.
  for name in ('vq_code_usage.png', 'vq_prior_samples.png', 'reconstructions.png'):
    assert (tmp_path / 'run' / 'figures' / name).stat().st_size > 1000, name


@pytest.mark.slow
@pytest.mark.learning
def test_default_preset_generates_from_a_trained_vqvae(tmp_path):
  """Both stages at the default size: the prior beats the code frequencies."""
  metrics = training.train_and_evaluate(vq_prior_config.get_config(), str(tmp_path))
  assert metrics['prior/nats_per_code'] < 0.8 * metrics['prior/unigram_nats_per_code'], metrics
