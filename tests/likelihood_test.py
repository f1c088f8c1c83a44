"""Importance-weighted log-likelihoods: K = 1 is the single-sample ELBO by hand, chunking
changes nothing, the bound grows with K on trained models (independent samples per K), K =
5000 runs chunked, the IWAE training objective, and experiments/likelihood.py end to end.
The bound against an exact log p(x) is tests/ppca_test.py."""

import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ae_jax import likelihood
from ae_jax import models
from ae_jax import objectives
from ae_jax import train
from ae_jax import training
from experiments import likelihood as likelihood_script
from experiments.configs import iwae as iwae_config
from experiments.configs import ladder_vae as ladder_config

from _app_helpers import binary_mnist5k

KEY = jax.random.key(0)

MODELS = {
    'mlp_vae': lambda: models.MLPVAE(hidden=(64,), latent_dim=8),
    'conv_vae': lambda: models.ConvVAE(latent_dim=4, channels=(8, 8, 8)),
    'ladder_vae': lambda: models.LadderVAE(hidden=(64, 32, 16), latent_dims=(12, 6, 3)),
}


@pytest.fixture(scope='module')
def images():
  return binary_mnist5k(2000, seed=1)


def _init(name, x):
  model = MODELS[name]()
  return model, model.init(KEY, x[:1], KEY)


def _train(name, images, objective_kwargs=None, steps=300):
  """Trains `name` briefly on binarized digits; returns (model, variables, first/last loss)."""
  model, variables = _init(name, jnp.asarray(images[:1]))
  if name == 'ladder_vae':
    objective = objectives.make_ladder_vae_objective(model, **(objective_kwargs or {}))
  else:
    objective = objectives.make_vae_objective(model, **(objective_kwargs or {}))
  tx = optax.adam(2e-3)
  state = train.create_train_state(variables, tx)
  step = train.make_train_step(objective, tx)
  rng = np.random.default_rng(0)
  losses = []
  for _ in range(steps):
    rows = rng.choice(len(images), 64, replace=False)
    state, metrics = step(state, {'image': jnp.asarray(images[rows])}, KEY)
    losses.append(metrics['loss'])
  losses = [float(v) for v in jax.device_get(losses)]
  return model, state.params, losses


@pytest.fixture(scope='module')
def trained(images):
  """An MLP VAE and a ladder VAE after 300 steps on 1,744 binarized digits."""
  train_x = images[:1744]
  return {name: _train(name, train_x)[:2] for name in ('mlp_vae', 'ladder_vae')}


# The ladder VAE's cases (the slowest to compile) run in the integration tier.
_LADDER_LATER = lambda names: [pytest.param(n, marks=pytest.mark.integration)
                               if n == 'ladder_vae' else n for n in names]


@pytest.mark.parametrize('name', _LADDER_LATER(sorted(MODELS)))
def test_one_sample_is_the_single_sample_elbo(name, images):
  x = jnp.asarray(images[:4])
  model, variables = _init(name, x)
  estimate = jax.jit(lambda x: likelihood.iwae_log_likelihood(
      model, variables, x, KEY, num_samples=1))(x)
  # By hand: example b draws its noise from fold_in(fold_in(key, b), 0), then
  # log w = log p(x|z) + log p(z) - log q(z|x), each from the model's own pieces.

  @jax.jit
  def by_hand(x):
    keys = [jax.random.fold_in(jax.random.fold_in(KEY, b), 0) for b in range(4)]
    if name == 'ladder_vae':
      per_layer = [jax.random.split(k, 3) for k in keys]
      noise = tuple(jnp.stack([jax.random.normal(ks[i], (d,)) for ks in per_layer])
                    for i, d in enumerate((12, 6, 3)))
      stats = model.apply(variables, x, method=model.bottom_up)
      log_px, log_pz, log_qz = model.apply(variables, stats, x, noise,
                                           method=model.log_weight_terms)
    else:
      mean, log_var = model.apply(variables, x, method='encode')
      eps = jnp.stack([jax.random.normal(k, mean.shape[1:]) for k in keys])
      z = mean + jnp.exp(0.5 * log_var) * eps
      logits = model.apply(variables, z, method='decode').reshape(4, -1)
      t = x.reshape(4, -1)
      log_px = -jnp.sum(jax.nn.softplus(logits) - t * logits, axis=1)
      log_pz = -0.5 * jnp.sum(z**2 + math.log(2 * math.pi), axis=1)
      log_qz = -0.5 * jnp.sum(eps**2 + math.log(2 * math.pi) + log_var, axis=1)
    return log_px + log_pz - log_qz

  np.testing.assert_allclose(estimate, by_hand(x), rtol=1e-5)


# ConvVAE shares the one-layer code path with MLPVAE (`models.vae.gaussian_log_weight_terms`).
@pytest.mark.parametrize('name', _LADDER_LATER(['mlp_vae', 'ladder_vae']))
def test_chunked_equals_unchunked(name, images):
  x = jnp.asarray(images[:5])
  model, variables = _init(name, x)
  estimate = jax.jit(lambda x, chunk: likelihood.iwae_log_likelihood(
      model, variables, x, KEY, num_samples=23, chunk_size=chunk), static_argnums=1)
  np.testing.assert_allclose(estimate(x, 4), estimate(x, None), rtol=1e-5)


def test_batch_size_does_not_change_an_estimate(images):
  model, variables = _init('mlp_vae', jnp.asarray(images[:1]))
  # Per-example keys: example n's estimate is the same in any batch.
  small = likelihood.evaluate_log_likelihood(model, variables, images[:5], KEY, num_samples=7,
                                             chunk_size=3, batch_size=2)
  large = likelihood.evaluate_log_likelihood(model, variables, images[:5], KEY, num_samples=7,
                                             batch_size=8)
  np.testing.assert_allclose(small['log_likelihood'], large['log_likelihood'], rtol=1e-5)
  assert small['log_likelihood'].shape == (5,)
  assert small['elbo_nats'] == pytest.approx(large['elbo_nats'], rel=1e-5)


# That L_K is at least the mean of the same K log weights is Jensen's inequality: true of
# any array, it says nothing about the code, so it is not asserted here. The bound is checked
# against an exact log p(x) in tests/ppca_test.py (a linear-Gaussian VAE: L_K = log p(x) at
# the exact posterior, below it and closing like χ²/2K otherwise). What a trained nonlinear
# model adds: E[L_K] grows with K when each K has its own samples, and the Monte Carlo ELBO
# agrees with the objective's closed-form-KL ELBO.
@pytest.mark.integration
@pytest.mark.parametrize('name', ['mlp_vae', 'ladder_vae'])
def test_iwae_bound_grows_with_k_on_independent_samples(name, trained, images):
  model, variables = trained[name]
  x = jnp.asarray(images[1744:1872])
  num = 1000
  draw = jax.jit(lambda key: likelihood.log_weight_terms(
      model, variables, x, key, num_samples=num, chunk_size=250).log_weights())
  ks = (1, 10, 100, 1000)
  by_k = {}
  for k in ks:
    # K's own 1000 samples per example (key fold_in(KEY, K)), cut into 1000 / K groups of K:
    # the mean of the groups' L_K estimates E[L_K] per example, [128].
    log_w = draw(jax.random.fold_in(KEY, k)).reshape(len(x), num // k, k)
    by_k[k] = np.asarray(jnp.mean(likelihood.log_mean_exp(log_w), axis=1), np.float64)
  # Paired over the 128 examples, each step of K raises the bound by more than 3 standard
  # errors of the mean difference.
  for small, large in zip(ks, ks[1:]):
    diff = by_k[large] - by_k[small]
    se = diff.std(ddof=1) / np.sqrt(len(diff))
    assert diff.mean() > 3 * se, (small, large, diff.mean(), se)
  # K = 1 is the Monte Carlo ELBO (1000 samples per example). The objective's ELBO, with the
  # KL in closed form (per layer for the ladder), agrees with it.
  elbo = float(by_k[1].mean())
  make = (objectives.make_ladder_vae_objective if name == 'ladder_vae'
          else objectives.make_vae_objective)
  objective = jax.jit(lambda k: make(model)(variables, {'image': x}, k)[1]['elbo'])
  analytic = np.mean([float(objective(jax.random.key(s))) for s in range(20)])
  assert abs(analytic - elbo) < 1.0, (analytic, elbo)


@pytest.mark.integration
@pytest.mark.slow
def test_five_thousand_samples_run_chunked(trained, images):
  model, variables = trained['ladder_vae']
  x = jnp.asarray(images[1744:1746])
  estimate = jax.jit(lambda x: likelihood.iwae_log_likelihood(
      model, variables, x, KEY, num_samples=5000, chunk_size=500))(x)
  first = jax.jit(lambda x: likelihood.iwae_log_likelihood(
      model, variables, x, KEY, num_samples=500))(x)
  assert bool(jnp.all(jnp.isfinite(estimate)))
  # The first 500 of the 5000 samples are the 500-sample estimate's; 10x more samples
  # move the estimate by little on a trained model.
  assert bool(jnp.all(jnp.abs(estimate - first) < 2.0)), (estimate, first)


def test_bits_per_dim_and_active_units_closed_form():
  assert likelihood.bits_per_dim(-784 * math.log(2.0), 784) == pytest.approx(1.0)
  assert likelihood.bits_per_dim(-100.0, 784) == pytest.approx(100 / (784 * math.log(2)))
  means = np.stack([np.linspace(-1, 1, 50), np.full(50, 3.0), 0.05 * np.linspace(-1, 1, 50)], 1)
  # Variances: 0.347, 0, 0.00087: only the first unit is active at 0.01.
  assert likelihood.active_units(means) == 1
  assert likelihood.active_units(means, threshold=1e-4) == 2


def test_bad_inputs_name_the_problem(images):
  model, variables = _init('mlp_vae', jnp.asarray(images[:1]))
  with pytest.raises(ValueError, match='num_samples must be >= 1'):
    likelihood.iwae_log_likelihood(model, variables, jnp.asarray(images[:2]), KEY, num_samples=0)
  with pytest.raises(ValueError, match=r'must lie in \[0, 1\]'):
    likelihood.evaluate_log_likelihood(model, variables, images[:2] * 2.0, KEY, num_samples=2)
  autoencoder = models.MLPAutoencoder()
  # A model is scored through its own importance_* and log_weight_terms methods.
  assert all(likelihood.supports(make()) for make in MODELS.values())
  assert not likelihood.supports(autoencoder)
  with pytest.raises(ValueError, match='MLPAutoencoder has no Gaussian posterior'):
    likelihood.evaluate_log_likelihood(autoencoder, {}, images[:2], KEY, num_samples=2)
  with pytest.raises(ValueError, match='Got 3 keys for a batch of 2'):
    likelihood.iwae_log_likelihood(model, variables, jnp.asarray(images[:2]),
                                   jax.random.split(KEY, 3), num_samples=2)
  with pytest.raises(ValueError, match="num_samples=4 applies to objective='iwae' only"):
    objectives.make_vae_objective(model, num_samples=4)
  with pytest.raises(ValueError, match='no capacity schedule'):
    objectives.make_vae_objective(model, objective='iwae', num_samples=4, capacity_max=5.0)


def test_iwae_config_and_its_elbo_baseline_differ_only_in_the_objective():
  # The README's IWAE-against-VAE comparison: the same model, data, seeds and schedule.
  iwae, elbo = iwae_config.get_config().to_dict(), iwae_config.get_config('elbo').to_dict()
  assert (iwae['loss']['objective'], iwae['loss']['num_samples']) == ('iwae', 5)
  assert (elbo['loss']['objective'], elbo['loss']['num_samples']) == ('elbo', 1)
  for config in (iwae, elbo):
    config['loss'].pop('objective'), config['loss'].pop('num_samples')
  assert iwae == elbo
  assert iwae['data']['name'] == 'fashion_mnist' and iwae['data']['binarize']
  assert iwae['train']['num_train_steps'] == 18_000 and iwae['model']['hidden'] == (400,)
  training.validate(iwae_config.get_config('elbo'))


@pytest.mark.integration
@pytest.mark.learning
def test_iwae_objective_is_the_negated_bound_and_its_loss_falls(images):
  x = jnp.asarray(images[:16])
  model, variables = _init('mlp_vae', x)
  objective = objectives.make_vae_objective(model, objective='iwae', num_samples=5)
  loss, metrics = objective(variables, {'image': x}, KEY)
  bound = likelihood.iwae_log_likelihood(model, variables, x, KEY, num_samples=5)
  np.testing.assert_allclose(float(loss), -float(jnp.mean(bound)), rtol=1e-5)
  # 'elbo' is the mean of the same K log weights (that it is below 'iwae' is Jensen's
  # inequality, true of any array).
  log_w = likelihood.log_weight_terms(model, variables, x, KEY, num_samples=5).log_weights()
  np.testing.assert_allclose(float(metrics['elbo']), float(jnp.mean(log_w)), rtol=1e-5)
  # Warm-up: at step 0 the prior and posterior terms weigh 0, only log p(x|z) is left.
  warm = objectives.make_vae_objective(model, objective='iwae', num_samples=5, warmup_steps=10)
  terms = likelihood.log_weight_terms(model, variables, x, KEY, num_samples=5)
  np.testing.assert_allclose(
      float(warm(variables, {'image': x}, KEY, step=0)[0]),
      -float(jnp.mean(likelihood.log_mean_exp(terms.log_px_z))), rtol=1e-5)
  # Trained with IWAE (k = 5) on real digits, the loss falls.
  _, _, losses = _train('mlp_vae', images[:1744], dict(objective='iwae', num_samples=5),
                        steps=150)
  assert np.mean(losses[-20:]) < 0.6 * np.mean(losses[:5]), (losses[:5], losses[-20:])


@pytest.mark.integration
@pytest.mark.slow
def test_likelihood_script_scores_a_trained_run(tmp_path):
  config = ladder_config.get_config('smoke')
  config.train.num_train_steps = 20
  config.train.checkpoint_every_steps = 20
  config.train.eval_every_steps = 20
  training.train_and_evaluate(config, str(tmp_path))
  assert (tmp_path / 'figures' / 'kl_per_layer.png').stat().st_size > 1000
  assert (tmp_path / 'figures' / 'samples.png').stat().st_size > 1000
  summary = likelihood_script.run(config, str(tmp_path), num_samples=20, num_examples=12,
                                  chunk_size=8, batch_size=5)
  written = json.loads((tmp_path / 'likelihood_k20_n12.json').read_text())
  assert written['num_examples'] == 12 and written['num_samples'] == 20
  assert written['nll_nats'] == pytest.approx(-summary['log_likelihood_nats'])
  assert written['nll_bits_per_dim'] == pytest.approx(
      written['nll_nats'] / (784 * math.log(2)))
  per_example = np.load(tmp_path / 'likelihood_k20_n12_per_example.npy')
  assert per_example.shape == (12,)
  assert written['log_likelihood_nats'] == pytest.approx(per_example.mean())
  assert written['units_per_layer'] == [8, 4, 2]
  # The test set is binarized: the same seed gives the same images.
  a = likelihood_script.test_images(config, num_examples=12)
  np.testing.assert_array_equal(a, likelihood_script.test_images(config, num_examples=12))
  assert set(np.unique(a)) <= {0.0, 1.0}
