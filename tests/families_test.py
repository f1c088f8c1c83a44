"""Tests for the VAE families beside the VAE: WAE-MMD, InfoVAE, RAE, MIWAE/PIWAE/CIWAE.

The MMD estimator itself (`losses.mmd2`: the U-statistic against explicit
loops, the RBF closed form between Gaussians, zero on identical samples) is
tested in tests/adversarial_test.py; here, how the objectives use it. The
recipes' training contract (resume, preemption, NaN, 2 devices) is in
tests/contract_test.py; every config's smoke preset runs through the launcher
in tests/training_test.py.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import optax

import _baselines

from ae_jax import data
from ae_jax import layers
from ae_jax import likelihood
from ae_jax import losses
from ae_jax import models
from ae_jax import objectives
from ae_jax.models import vampprior
from ae_jax.recipes import dip_vae
from ae_jax.recipes import factor_vae
from ae_jax.recipes import iwae_bounds
from ae_jax.recipes import rae
from ae_jax.recipes import vampprior as vampprior_recipe
from ae_jax.recipes import wae
from experiments.configs import dip_vae as dip_vae_config
from experiments.configs import factor_vae as factor_vae_config
from experiments.configs import miwae as miwae_config
from experiments.configs import rae as rae_config
from experiments.configs import vampprior as vampprior_config
from experiments.configs import wae as wae_config

# Learning tests: steps of the default config on MNIST 5k, batch 128.
LEARNING_STEPS = 300


def _images(n=8, seed=0):
  return jax.random.uniform(jax.random.key(seed), (n, 28, 28, 1))


def _train(stage, steps, seed=0):
  state = jax.jit(stage.init)(jax.random.key(seed))
  step = jax.jit(stage.train_step, donate_argnums=(0,))
  batches = stage.train_data(0)
  for _ in range(steps):
    state, metrics = step(state, jax.tree.map(jnp.asarray, next(batches)), jax.random.key(2))
  assert all(np.isfinite(float(v)) for v in metrics.values()), metrics
  return state


def _test_batch():
  test_x, _ = data.load_arrays('mnist5k', 'test')
  return test_x, {'image': jnp.asarray(test_x)}


# ----------------------------------------------------------------------------
# WAE-MMD and InfoVAE.
# ----------------------------------------------------------------------------


def _prior_draws(key, shape):
  """The N(0, I) draws `make_mmd_objective` compares the codes with for `key`."""
  return jax.random.normal(jax.random.split(key)[1], shape)


@pytest.mark.integration  # Tens of seconds: compiles several steps.
@pytest.mark.parametrize('kernel', ['imq', 'rbf'])
def test_wae_loss_is_recon_plus_lambda_mmd_to_its_prior_draws(kernel):
  model = models.MLPAutoencoder(hidden=(32,), latent_dim=3)
  x = _images()
  params = model.init(jax.random.key(0), x)
  fn = objectives.make_mmd_objective(model, objective='wae', reg_weight=7.0, kernel=kernel,
                                     bandwidths=(0.5, 2.0), reconstruction='mse')
  key = jax.random.key(3)
  loss, m = fn(params, {'image': x}, key)
  z = model.apply(params, x).z
  mmd = losses.mmd2(z, _prior_draws(key, z.shape), kernel=kernel, bandwidths=(0.5, 2.0))
  recon = np.mean((np.asarray(jax.nn.sigmoid(model.apply(params, x).logits)) - np.asarray(x))**2)
  assert float(m['mmd']) == pytest.approx(float(mmd), rel=1e-5)
  assert float(m['recon']) == pytest.approx(recon, rel=1e-5)
  assert float(loss) == pytest.approx(recon + 7.0 * float(mmd), rel=1e-5)


def test_infovae_weights_kl_by_one_minus_alpha_and_mmd_by_alpha_plus_lambda_minus_one():
  model = models.MLPVAE(hidden=(32,), latent_dim=3)
  x = _images()
  key = jax.random.key(4)
  params = model.init(key, x, key)
  fn = objectives.make_mmd_objective(model, objective='infovae', alpha=0.25, reg_weight=5.0)
  loss, m = fn(params, {'image': x}, key)
  model_key = jax.random.split(key)[0]
  out = model.apply(params, x, model_key)
  kl = np.mean(np.asarray(losses.gaussian_kl(out.mean, out.log_var)))
  mmd = float(losses.mmd2(out.z, _prior_draws(key, out.z.shape)))
  recon = np.mean(np.asarray(losses.bernoulli_nll(out.logits, x)))
  assert float(m['kl']) == pytest.approx(kl, rel=1e-5)
  assert float(m['mmd']) == pytest.approx(mmd, rel=1e-5)
  assert float(loss) == pytest.approx(recon + 0.75 * kl + 4.25 * mmd, rel=1e-5)


@pytest.mark.integration  # Tens of seconds: compiles several steps.
def test_mmd_term_leaves_out_padding_rows():
  model = models.MLPAutoencoder(hidden=(16,), latent_dim=2)
  x = _images(6)
  params = model.init(jax.random.key(0), x)
  fn = objectives.make_mmd_objective(model, reg_weight=1.0)
  key = jax.random.key(5)
  mask = jnp.array([1, 1, 1, 1, 0, 0], jnp.float32)
  _, m = fn(params, {'image': x, 'mask': mask}, key)
  z = model.apply(params, x).z
  prior = _prior_draws(key, z.shape)
  assert float(m['mmd']) == pytest.approx(float(losses.mmd2(z[:4], prior[:4])), rel=1e-5)


def test_mmd_objective_rejects_bad_settings():
  ae, vae = models.MLPAutoencoder(), models.MLPVAE()
  with pytest.raises(ValueError, match="objective='infovae' needs a VAE model"):
    objectives.make_mmd_objective(ae, objective='infovae')
  with pytest.raises(ValueError, match='alpha <= 1 and alpha \\+ reg_weight >= 1.*alpha=1.5'):
    objectives.make_mmd_objective(vae, objective='infovae', alpha=1.5)
  with pytest.raises(ValueError, match="alpha=0.5 applies to objective='infovae' only"):
    objectives.make_mmd_objective(ae, alpha=0.5)
  with pytest.raises(ValueError, match="objective='mmd' is unknown"):
    objectives.make_mmd_objective(ae, objective='mmd')
  with pytest.raises(ValueError, match="Unknown kernel 'laplace'"):
    objectives.make_mmd_objective(ae, kernel='laplace')
  with pytest.raises(ValueError, match='reg_weight must be >= 0'):
    objectives.make_mmd_objective(ae, reg_weight=-1.0)


def _test_codes_mmd(stage, state, test_batch):
  encode = wae.code_fn(stage.model)
  z = encode({**state.params, **state.model_state}, test_batch['image'][:1000])
  return float(losses.mmd2(z, jax.random.normal(jax.random.key(9), z.shape)))


@pytest.mark.integration
@pytest.mark.learning
def test_wae_reconstructs_and_its_codes_match_the_prior_better_than_a_plain_autoencoder():
  """LEARNING_STEPS steps of wae.py on MNIST 5k: the test MSE is below 60% of the
  mean training image's, and the MMD² of the test codes to N(0, I) is below half
  that of the same autoencoder trained as long with λ = 0 (a plain autoencoder)."""
  test_x, test_batch = _test_batch()
  baseline = _baselines.mean_image_mse(data.load_arrays('mnist5k', 'train')[0], test_x)
  results = {}
  for reg_weight in (10.0, 0.0):
    config = wae_config.get_config()
    config.loss.reg_weight = reg_weight
    stage = wae.make_stage(config, 'model', {})
    state = _train(stage, LEARNING_STEPS)
    metrics = jax.jit(stage.eval_step)(state, test_batch, jax.random.key(1))
    results[reg_weight] = float(metrics['recon']), _test_codes_mmd(stage, state, test_batch)
  print(results, baseline)
  assert results[10.0][0] < 0.6 * baseline
  assert results[10.0][1] < 0.5 * results[0.0][1]


@pytest.mark.integration
@pytest.mark.learning
def test_infovae_beats_the_mean_image_and_its_codes_approach_the_prior():
  """LEARNING_STEPS steps of wae.py:infovae (MMD-VAE, λ = 1000) on MNIST 5k: the
  test reconstruction NLL beats the mean training image's by 30 nats, and the MMD²
  of the test posterior means to N(0, I) is below 0.05."""
  test_x, test_batch = _test_batch()
  baseline = _baselines.mean_image_bernoulli_nll(data.load_arrays('mnist5k', 'train')[0], test_x)
  stage = wae.make_stage(wae_config.get_config('infovae'), 'model', {})
  state = _train(stage, LEARNING_STEPS)
  metrics = jax.jit(stage.eval_step)(state, test_batch, jax.random.key(1))
  mmd = _test_codes_mmd(stage, state, test_batch)
  print(float(metrics['recon']), baseline, mmd)
  assert float(metrics['recon']) < baseline - 30.0
  assert mmd < 0.05


# ----------------------------------------------------------------------------
# RAE.
# ----------------------------------------------------------------------------


def test_gradient_penalty_of_a_linear_decoder_is_its_squared_frobenius_norm():
  # D(z) = W z + b (one Dense layer, identity output): ∂D/∂z = W for every z.
  model = models.MLPAutoencoder(input_dim=12, hidden=(), latent_dim=3)
  x = _images(5)[:, :12, 0, 0]
  params = model.init(jax.random.key(0), x)
  decode = lambda z: model.apply(params, z, method='decode')
  z = jax.random.normal(jax.random.key(1), (5, 3))
  got = objectives.decoder_gradient_penalty(decode, z, output_activation='identity')
  w = np.asarray(params['params']['decoder']['layers_0']['kernel'])
  np.testing.assert_allclose(np.asarray(got), np.full(5, np.sum(w**2)), rtol=1e-5)


@pytest.mark.integration  # Tens of seconds: compiles several steps.
def test_gradient_penalty_matches_the_full_jacobian_through_the_sigmoid():
  model = models.MLPAutoencoder(input_dim=20, hidden=(7,), latent_dim=4)
  params = model.init(jax.random.key(0), jnp.zeros((1, 20)))
  decode = lambda z: model.apply(params, z, method='decode')
  z = jax.random.normal(jax.random.key(1), (3, 4))
  got = objectives.decoder_gradient_penalty(decode, z)
  # Reverse mode, one example at a time: an independent way to the same Jacobian.
  jac = [jax.jacrev(lambda zz: jax.nn.sigmoid(decode(zz[None]))[0])(z[i]) for i in range(3)]
  np.testing.assert_allclose(np.asarray(got), [float(jnp.sum(j**2)) for j in jac], rtol=1e-5)


@pytest.mark.parametrize('regularizer', ['l2', 'gp', 'none'])
def test_rae_loss_adds_half_code_norm_and_the_decoder_regularizer(regularizer):
  model = models.MLPAutoencoder(hidden=(16,), latent_dim=3)
  x = _images()
  params = model.init(jax.random.key(0), x)
  fn = objectives.make_rae_objective(model, code_weight=0.1, regularizer=regularizer,
                                     decoder_weight=0.01)
  loss, m = fn(params, {'image': x}, jax.random.key(1))
  out = model.apply(params, x)
  recon = np.mean((np.asarray(jax.nn.sigmoid(out.logits)) - np.asarray(x))**2)
  code_l2 = np.mean(0.5 * np.sum(np.asarray(out.z)**2, -1))
  decoder = params['params']['decoder']
  expected_reg = {
      'l2': sum(np.sum(np.asarray(v)**2) for v in jax.tree.leaves(decoder)),
      'gp': np.mean(np.asarray(objectives.decoder_gradient_penalty(
          lambda z: model.apply(params, z, method='decode'), out.z))),
      'none': 0.0}[regularizer]
  assert float(m['code_l2']) == pytest.approx(code_l2, rel=1e-5)
  assert float(m['decoder_reg']) == pytest.approx(expected_reg, rel=1e-5, abs=1e-7)
  assert float(loss) == pytest.approx(recon + 0.1 * code_l2 + 0.01 * expected_reg, rel=1e-5)


def test_rae_weight_decay_reaches_only_the_decoder():
  model = models.MLPAutoencoder(hidden=(16,), latent_dim=3)
  x = _images()
  params = model.init(jax.random.key(0), x)
  with_reg = objectives.make_rae_objective(model, code_weight=0.0, decoder_weight=1.0)
  without = objectives.make_rae_objective(model, code_weight=0.0, regularizer='none')
  g1 = jax.grad(lambda p: with_reg(p, {'image': x}, None)[0])(params)['params']
  g0 = jax.grad(lambda p: without(p, {'image': x}, None)[0])(params)['params']
  # d‖θ‖²/dθ = 2θ on the decoder, nothing on the encoder.
  for a, b, p in zip(jax.tree.leaves(g1['decoder']), jax.tree.leaves(g0['decoder']),
                     jax.tree.leaves(params['params']['decoder'])):
    np.testing.assert_allclose(np.asarray(a - b), 2 * np.asarray(p), rtol=1e-4, atol=1e-6)
  for a, b in zip(jax.tree.leaves(g1['encoder']), jax.tree.leaves(g0['encoder'])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_rae_rejects_bad_settings():
  with pytest.raises(ValueError, match="regularizer='l1' is unknown"):
    objectives.make_rae_objective(models.MLPAutoencoder(), regularizer='l1')
  with pytest.raises(ValueError, match='needs a deterministic autoencoder.*MLPVAE'):
    objectives.make_rae_objective(models.MLPVAE())
  with pytest.raises(ValueError, match='code_weight must be >= 0'):
    objectives.make_rae_objective(models.MLPAutoencoder(), code_weight=-1.0)
  config = rae_config.get_config('smoke')
  config.density.num_components = 0
  with pytest.raises(ValueError, match='config.density.num_components=0'):
    rae.validate(config)


def test_code_density_recovers_a_two_component_mixture():
  rng = np.random.default_rng(0)
  means = np.array([[-3.0, 0.0], [3.0, 1.0]])
  codes = np.concatenate([means[0] + 0.5 * rng.standard_normal((300, 2)),
                          means[1] + 0.5 * rng.standard_normal((300, 2))])
  gmm = rae.fit_code_density(codes, num_components=2, seed=0)
  got = gmm.means_[np.argsort(gmm.means_[:, 0])]
  np.testing.assert_allclose(got, means, atol=0.1)
  np.testing.assert_allclose(np.sort(gmm.weights_), [0.5, 0.5], atol=1e-6)
  with pytest.raises(ValueError, match='N >= num_components=10'):
    rae.fit_code_density(codes[:5], num_components=10)


@pytest.mark.integration
@pytest.mark.learning
def test_rae_reconstructs_and_the_ex_post_mixture_fits_held_out_codes():
  """LEARNING_STEPS steps of rae.py on MNIST 5k: the test MSE is below 60% of the
  mean training image's, and the 10-component mixture fitted to the training codes
  gives the test codes at least 2 nats more log-density each than one Gaussian
  fitted the same way (what the ex-post density buys over a fixed prior shape)."""
  config = rae_config.get_config()
  test_x, test_batch = _test_batch()
  baseline = _baselines.mean_image_mse(data.load_arrays('mnist5k', 'train')[0], test_x)
  stage = rae.make_stage(config, 'model', {})
  state = _train(stage, LEARNING_STEPS)
  metrics = jax.jit(stage.eval_step)(state, test_batch, jax.random.key(1))
  variables = {**state.params, **state.model_state}
  train_codes = rae.codes_of(config, stage.model, variables, 'train')
  test_codes = rae.codes_of(config, stage.model, variables, 'test')
  ll = {c: float(np.mean(rae.fit_code_density(train_codes, num_components=c).score_samples(
      test_codes))) for c in (10, 1)}
  print(float(metrics['recon']), baseline, ll)
  assert len(train_codes) == 4000 and len(test_codes) == 1000
  assert float(metrics['recon']) < 0.6 * baseline
  assert ll[10] > ll[1] + 2.0


# ----------------------------------------------------------------------------
# MIWAE, PIWAE, CIWAE.
# ----------------------------------------------------------------------------

# One example, M = 2 groups of K = 2 weights: w = (1, 3) and (1, 1).
_LOG_W_1x4 = np.log(np.array([[1.0, 3.0, 1.0, 1.0]]))


def test_bounds_on_fixed_log_weights_by_hand():
  log_w = jnp.asarray(_LOG_W_1x4)
  # MIWAE(2, 2) = ½ (log ½(1 + 3) + log ½(1 + 1)) = ½ log 2.
  assert float(objectives.miwae_bound(log_w.reshape(1, 2, 2))[0]) == pytest.approx(
      0.5 * math.log(2.0), rel=1e-6)
  # MIWAE(1, 4) is IWAE_4 = log ¼(1 + 3 + 1 + 1) = log 1.5.
  assert float(objectives.miwae_bound(log_w.reshape(1, 1, 4))[0]) == pytest.approx(
      math.log(1.5), rel=1e-6)
  # CIWAE(β=1) is the ELBO estimate ¼ Σ log w = ¼ log 3; CIWAE(β=0) is IWAE_4.
  assert float(objectives.ciwae_bound(log_w, 1.0)[0]) == pytest.approx(math.log(3) / 4, rel=1e-6)
  assert float(objectives.ciwae_bound(log_w, 0.0)[0]) == pytest.approx(math.log(1.5), rel=1e-6)
  assert float(objectives.ciwae_bound(log_w, 0.25)[0]) == pytest.approx(
      0.25 * math.log(3) / 4 + 0.75 * math.log(1.5), rel=1e-6)
  # MIWAE(4, 1) is the ELBO estimate.
  assert float(objectives.miwae_bound(log_w.reshape(1, 4, 1))[0]) == pytest.approx(
      math.log(3) / 4, rel=1e-6)


def _vae_and_params():
  model = models.MLPVAE(hidden=(32,), latent_dim=4)
  x = (_images(6) > 0.5).astype(jnp.float32)
  key = jax.random.key(0)
  return model, model.init(key, x, key), {'image': x}


@pytest.mark.parametrize('bound, m, k, beta', [('miwae', 1, 6, 0.5), ('ciwae', 1, 6, 0.0)])
def test_miwae_with_one_group_and_ciwae_at_beta_zero_are_the_iwae_objective(bound, m, k, beta):
  model, params, batch = _vae_and_params()
  key = jax.random.key(7)
  got = objectives.make_tighter_bound_objective(model, bound=bound, num_groups=m,
                                                num_samples=k, beta=beta)
  iwae = objectives.make_iwae_objective(model, num_samples=k)
  v_got, g_got = jax.jit(jax.value_and_grad(lambda p: got(p, batch, key)[0]))(params)
  v_iwae, g_iwae = jax.jit(jax.value_and_grad(lambda p: iwae(p, batch, key)[0]))(params)
  assert float(v_got) == pytest.approx(float(v_iwae), rel=1e-6)
  for a, b in zip(jax.tree.leaves(g_got), jax.tree.leaves(g_iwae)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


@pytest.mark.integration  # Tens of seconds: compiles several steps.
def test_ciwae_at_beta_one_is_the_mean_log_weight():
  model, params, batch = _vae_and_params()
  key = jax.random.key(8)
  loss, m = objectives.make_tighter_bound_objective(
      model, bound='ciwae', num_groups=1, num_samples=5, beta=1.0)(params, batch, key)
  terms = likelihood.log_weight_terms(model, params, batch['image'], key, num_samples=5)
  assert float(loss) == pytest.approx(-float(jnp.mean(terms.log_weights())), rel=1e-6)
  assert float(m['elbo']) == pytest.approx(-float(loss), rel=1e-6)


@pytest.mark.integration  # Tens of seconds: compiles several steps.
def test_piwae_gives_the_decoder_the_iwae_gradient_and_the_encoder_the_miwae_gradient():
  model, params, batch = _vae_and_params()
  key = jax.random.key(9)
  m, k = 2, 3
  piwae = objectives.make_tighter_bound_objective(model, bound='piwae', num_groups=m,
                                                  num_samples=k)
  miwae = objectives.make_tighter_bound_objective(model, bound='miwae', num_groups=m,
                                                  num_samples=k)
  iwae = objectives.make_iwae_objective(model, num_samples=m * k)
  g_p, g_m, g_i = (jax.jit(jax.grad(lambda p, f=f: f(p, batch, key)[0]))(params)['params']
                   for f in (piwae, miwae, iwae))
  decoder = objectives.decoder_param_names(params)
  assert decoder == ('decoder',)
  for name in g_p:
    expected = g_i if name in decoder else g_m
    for a, b in zip(jax.tree.leaves(g_p[name]), jax.tree.leaves(expected[name])):
      np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)
  loss = piwae(params, batch, key)[0]
  expected = iwae(params, batch, key)[0] + miwae(params, batch, key)[0]
  assert float(loss) == pytest.approx(float(expected), rel=1e-6)


def test_tighter_bounds_reject_bad_settings():
  vae = models.MLPVAE()
  with pytest.raises(ValueError, match="bound='riwae' is unknown"):
    objectives.make_tighter_bound_objective(vae, bound='riwae')
  with pytest.raises(ValueError, match="bound='ciwae' mixes bounds over one group.*got 4"):
    objectives.make_tighter_bound_objective(vae, bound='ciwae', num_groups=4)
  with pytest.raises(ValueError, match='beta must be in \\[0, 1\\] for CIWAE, got 1.5'):
    objectives.make_tighter_bound_objective(vae, bound='ciwae', num_groups=1, beta=1.5)
  with pytest.raises(ValueError, match='num_samples and num_groups must be >= 1, got 0'):
    objectives.make_tighter_bound_objective(vae, num_samples=0)
  with pytest.raises(ValueError, match='MLPAutoencoder'):
    objectives.make_tighter_bound_objective(models.MLPAutoencoder())
  config = miwae_config.get_config('smoke')
  config.loss.beta = 0.3
  with pytest.raises(ValueError, match='loss.beta'):
    iwae_bounds.validate(config)


@pytest.mark.integration
@pytest.mark.learning
@pytest.mark.parametrize('arg', ['', 'piwae', 'ciwae'])
def test_tighter_bounds_beat_the_mean_image(arg):
  """LEARNING_STEPS steps of miwae.py[:piwae|:ciwae] on MNIST 5k with 16 samples
  (M = K = 4; CIWAE K = 16), a quarter of the configs' 64 for time: the test IWAE
  bound beats the mean training image's Bernoulli log-likelihood by 40 nats."""
  test_x, test_batch = _test_batch()
  baseline = _baselines.mean_image_bernoulli_nll(data.load_arrays('mnist5k', 'train')[0], test_x)
  config = miwae_config.get_config(arg or None)
  config.loss.num_samples, config.loss.num_groups = (16, 1) if arg == 'ciwae' else (4, 4)
  stage = iwae_bounds.make_stage(config, 'model', {})
  state = _train(stage, LEARNING_STEPS)
  metrics = jax.jit(stage.eval_step)(state, {'image': test_batch['image'][:500]},
                                     jax.random.key(1))
  print(arg, float(metrics['iwae']), baseline)
  assert -float(metrics['iwae']) < baseline - 40.0


# ----------------------------------------------------------------------------
# VampPrior.
# ----------------------------------------------------------------------------


def _vamp(num_pseudo_inputs=3):
  model = vampprior.VampPriorVAE(input_dim=784, hidden=(16,), latent_dim=2,
                                 num_pseudo_inputs=num_pseudo_inputs)
  x = (_images(5) > 0.5).astype(jnp.float32)
  key = jax.random.key(0)
  return model, model.init(key, x, key), x


def _numpy_vamp_log_prior(model, params, z):
  """(1/K) Σ_k Π_j N(z_j; μ_kj, σ²_kj) written out per component with numpy."""
  u = np.clip(np.asarray(params['params']['pseudo_inputs']), 0, 1)
  mean, log_var = (np.asarray(a, np.float64) for a in model.apply(params, jnp.asarray(u),
                                                                   method='encode'))
  z = np.asarray(z, np.float64)
  out = []
  for zb in z:
    dens = [np.prod(np.exp(-(zb - mean[k])**2 / (2 * np.exp(log_var[k])))
                    / np.sqrt(2 * np.pi * np.exp(log_var[k]))) for k in range(len(mean))]
    out.append(np.log(np.mean(dens)))
  return np.array(out)


def test_vamp_log_prior_is_the_mixture_of_posteriors_at_the_pseudo_inputs():
  model, params, _ = _vamp()
  z = 0.5 * jax.random.normal(jax.random.key(1), (4, 2))
  got = model.apply(params, z, method='log_prior')
  np.testing.assert_allclose(np.asarray(got), _numpy_vamp_log_prior(model, params, z), rtol=1e-5)


def test_vamp_prior_samples_follow_the_mixture():
  # The mean of the mixture's samples is the mean of the component means.
  model, params, _ = _vamp(num_pseudo_inputs=4)
  z = model.apply(params, jax.random.key(2), 20000, method='sample_prior')
  mean, log_var = model.apply(params, method='pseudo_posteriors')
  std_error = float(jnp.sqrt(jnp.mean(jnp.exp(log_var)) + jnp.var(mean, 0).max()) / math.sqrt(20000))
  np.testing.assert_allclose(np.asarray(z.mean(0)), np.asarray(mean.mean(0)),
                             atol=5 * std_error)


def test_vamp_objective_is_the_elbo_with_a_sampled_kl_under_the_vamp_prior():
  model, params, x = _vamp()
  key = jax.random.key(3)
  loss, m = objectives.make_iwae_objective(model, num_samples=1)(params, {'image': x}, key)
  # The one sample the objective drew (ae_jax.likelihood: fold_in(fold_in(key, b), 0)).
  eps = jnp.stack([model.importance_noise(jax.random.fold_in(jax.random.fold_in(key, b), 0))
                   for b in range(len(x))])
  mean, log_var = model.apply(params, x, method='encode')
  z = mean + jnp.exp(0.5 * log_var) * eps
  log_px_z = -np.asarray(losses.bernoulli_nll(
      model.apply(params, z, method='decode').reshape(x.shape), x))
  log_qz = np.sum(-0.5 * (np.asarray(eps)**2 + np.log(2 * np.pi) + np.asarray(log_var)), -1)
  log_pz = _numpy_vamp_log_prior(model, params, z)
  np.testing.assert_allclose(float(loss), -np.mean(log_px_z + log_pz - log_qz), rtol=1e-5)
  np.testing.assert_allclose(float(m['kl']), np.mean(log_qz - log_pz), rtol=1e-4)


def test_vamp_pseudo_inputs_receive_gradient_and_bad_k_is_named():
  model, params, x = _vamp()
  fn = objectives.make_iwae_objective(model, num_samples=1)
  grad = jax.jit(jax.grad(lambda p: fn(p, {'image': x}, jax.random.key(4))[0]))(params)
  assert float(jnp.abs(grad['params']['pseudo_inputs']).sum()) > 0
  with pytest.raises(ValueError, match='num_pseudo_inputs must be >= 1, got 0'):
    vampprior.VampPriorVAE(num_pseudo_inputs=0).init(jax.random.key(0), x, jax.random.key(0))


@pytest.mark.integration
@pytest.mark.learning
def test_vampprior_beats_the_mean_image():
  """LEARNING_STEPS steps of vampprior.py on MNIST 5k: the test ELBO (the KL by one
  sample under the VampPrior) beats the mean training image's Bernoulli
  log-likelihood by 40 nats, and the sampled KL is positive (the codes carry
  information)."""
  test_x, test_batch = _test_batch()
  baseline = _baselines.mean_image_bernoulli_nll(data.load_arrays('mnist5k', 'train')[0], test_x)
  stage = vampprior_recipe.make_stage(vampprior_config.get_config(), 'model', {})
  state = _train(stage, LEARNING_STEPS)
  metrics = jax.jit(stage.eval_step)(state, test_batch, jax.random.key(1))
  print(float(metrics['elbo']), float(metrics['kl']), baseline)
  assert -float(metrics['elbo']) < baseline - 40.0
  assert float(metrics['kl']) > 5.0


# ----------------------------------------------------------------------------
# DIP-VAE.
# ----------------------------------------------------------------------------


def _posterior(b=7, z=3, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.standard_normal((b, z)).astype(np.float32),
          (0.3 * rng.standard_normal((b, z)) - 0.5).astype(np.float32))


def test_dip_covariances_against_numpy():
  mean, log_var = _posterior()
  cov_mu = np.cov(mean.astype(np.float64), rowvar=False, bias=True)
  got_i = objectives.dip_covariance(jnp.asarray(mean), jnp.asarray(log_var), {}, kind='i')
  got_ii = objectives.dip_covariance(jnp.asarray(mean), jnp.asarray(log_var), {}, kind='ii')
  np.testing.assert_allclose(np.asarray(got_i), cov_mu, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(got_ii), cov_mu + np.diag(np.exp(log_var).mean(0)),
                             rtol=1e-5, atol=1e-6)


def test_dip_ii_covariance_is_that_of_samples_of_the_aggregate_posterior():
  # z = μ(x) + σ(x) ε with x uniform over the batch: Cov z = E[Σ] + Cov[μ].
  mean, log_var = _posterior(b=5, z=2, seed=1)
  rng = np.random.default_rng(2)
  rows = rng.integers(0, 5, 400_000)
  z = mean[rows] + np.exp(0.5 * log_var[rows]) * rng.standard_normal((400_000, 2))
  got = objectives.dip_covariance(jnp.asarray(mean), jnp.asarray(log_var), {}, kind='ii')
  np.testing.assert_allclose(np.asarray(got), np.cov(z, rowvar=False), atol=0.01)


def test_dip_covariance_leaves_out_padding_rows():
  mean, log_var = _posterior()
  mask = jnp.array([1, 1, 1, 1, 1, 0, 0], jnp.float32)
  got = objectives.dip_covariance(jnp.asarray(mean), jnp.asarray(log_var), {'mask': mask})
  want = objectives.dip_covariance(jnp.asarray(mean[:5]), jnp.asarray(log_var[:5]), {})
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-5)


def test_dip_penalty_by_hand():
  cov = jnp.array([[2.0, 0.5], [-0.5, 0.25]])
  # Off-diagonal: 0.5² + 0.5² = 0.5; diagonal: (2 - 1)² + (0.25 - 1)² = 1.5625.
  assert float(objectives.dip_penalty(cov, lambda_od=3.0, lambda_d=2.0)) == pytest.approx(
      3.0 * 0.5 + 2.0 * 1.5625)


def test_dip_vae_loss_adds_the_penalty_to_the_negative_elbo():
  model = models.MLPVAE(hidden=(16,), latent_dim=3)
  x = _images()
  key = jax.random.key(0)
  params = model.init(key, x, key)
  loss, m = objectives.make_dip_vae_objective(model, dip='i', lambda_od=2.0, lambda_d=5.0)(
      params, {'image': x}, key)
  out = model.apply(params, x, key)
  cov = np.cov(np.asarray(out.mean, np.float64), rowvar=False, bias=True)
  penalty = 2.0 * (np.sum(cov**2) - np.sum(np.diag(cov)**2)) + 5.0 * np.sum((np.diag(cov) - 1)**2)
  recon = np.mean(np.asarray(losses.bernoulli_nll(out.logits, x)))
  kl = np.mean(np.asarray(losses.gaussian_kl(out.mean, out.log_var)))
  assert float(m['dip']) == pytest.approx(penalty, rel=1e-4)
  assert float(loss) == pytest.approx(recon + kl + penalty, rel=1e-5)
  with pytest.raises(ValueError, match="dip='iii' is unknown"):
    objectives.make_dip_vae_objective(model, dip='iii')
  with pytest.raises(ValueError, match='DIP-VAE needs a VAE model.*MLPAutoencoder'):
    objectives.make_dip_vae_objective(models.MLPAutoencoder())


@pytest.mark.integration
@pytest.mark.learning
def test_dip_vae_ii_beats_the_mean_image_with_a_decorrelated_aggregate_posterior():
  """LEARNING_STEPS steps of dip_vae.py on MNIST 5k: the test reconstruction NLL beats
  the mean training image's by 30 nats, and the off-diagonal mass Σ_{i≠j} C_ij² of
  the test aggregate posterior's covariance is below half that of the same VAE
  trained as long without the penalty (λ_od = λ_d = 0)."""
  test_x, test_batch = _test_batch()
  baseline = _baselines.mean_image_bernoulli_nll(data.load_arrays('mnist5k', 'train')[0], test_x)
  results = {}
  for lam in (10.0, 0.0):
    config = dip_vae_config.get_config()
    config.loss.lambda_od = config.loss.lambda_d = lam
    stage = dip_vae.make_stage(config, 'model', {})
    state = _train(stage, LEARNING_STEPS)
    metrics = jax.jit(stage.eval_step)(state, test_batch, jax.random.key(1))
    results[lam] = float(metrics['recon']), float(metrics['cov_offdiag'])
  print(results, baseline)
  assert results[10.0][0] < baseline - 30.0
  assert results[10.0][1] < 0.5 * results[0.0][1]


# ----------------------------------------------------------------------------
# FactorVAE.
# ----------------------------------------------------------------------------


def test_permute_dims_permutes_each_column_on_its_own():
  z = jnp.stack([jnp.arange(1000.0), jnp.arange(1000.0), -jnp.arange(1000.0)], axis=1)
  p = np.asarray(factor_vae.permute_dims(jax.random.key(0), z))
  for j in range(3):
    np.testing.assert_array_equal(np.sort(p[:, j]), np.sort(np.asarray(z[:, j])))
  # Perfectly dependent columns become (nearly) independent ones.
  assert abs(np.corrcoef(p[:, 0], p[:, 1])[0, 1]) < 0.1
  assert abs(np.corrcoef(p[:, 0], p[:, 2])[0, 1]) < 0.1


@pytest.mark.integration  # Tens of seconds: compiles several steps.
def test_discriminator_on_permuted_codes_estimates_a_gaussians_total_correlation():
  """The density-ratio trick of the recipe (its losses and `permute_dims`) on a
  correlated 2-D Gaussian: trained to tell samples from their column
  permutations, the mean logit on samples approaches the closed form
  TC = KL(q(z) ‖ q(z_1) q(z_2)) = -½ log(1 - ρ²) = 0.830 nats for ρ = 0.9,
  within 0.15 nats."""
  rho = 0.9
  chol = jnp.linalg.cholesky(jnp.array([[1.0, rho], [rho, 1.0]]))
  disc = layers.MLP((64, 64, 1), activation='leaky_relu')
  params = disc.init(jax.random.key(0), jnp.zeros((1, 2)))
  tx = optax.adam(3e-3)
  opt = tx.init(params)
  draw = lambda key: jax.random.normal(key, (512, 2)) @ chol.T

  def loss(p, key):
    k1, k2, k3 = jax.random.split(key, 3)
    joint = disc.apply(p, draw(k1))[:, 0]
    product = disc.apply(p, factor_vae.permute_dims(k3, draw(k2)))[:, 0]
    return jnp.mean(factor_vae._bce_joint(joint) + factor_vae._bce_product(product))

  @jax.jit
  def step(p, o, key):
    g = jax.grad(loss)(p, key)
    u, o = tx.update(g, o)
    return optax.apply_updates(p, u), o

  for i in range(1500):
    params, opt = step(params, opt, jax.random.key(i + 1))
  test = jax.random.normal(jax.random.key(123456), (20000, 2)) @ chol.T
  tc = float(jnp.mean(disc.apply(params, test)))
  print(tc)
  assert tc == pytest.approx(-0.5 * math.log(1 - rho**2), abs=0.15)


def _factor_vae_setup(vae_lr, disc_lr):
  model = factor_vae.FactorVAEModel(hidden=(16,), latent_dim=3, disc_hidden=(8,))
  x = (_images(6) > 0.5).astype(jnp.float32)
  key = jax.random.key(0)
  params = {'params': model.init(key, x, key, method='init_all')['params']}
  txs = {'vae': optax.sgd(vae_lr), 'disc': optax.sgd(disc_lr)}
  state = factor_vae.create_state(params, txs)
  step = jax.jit(factor_vae.train_step_fn(model, txs, gamma=2.0))
  return model, params, state, step, {'image': x}


@pytest.mark.integration  # Tens of seconds: compiles several steps.
def test_factor_vae_step_updates_the_vae_on_elbo_plus_gamma_tc_and_not_the_discriminator():
  model, params, state, step, batch = _factor_vae_setup(0.1, 0.0)
  key = jax.random.key(5)
  new, metrics = step(state, batch, key)
  vae_key, _ = jax.random.split(jax.random.fold_in(key, 0))

  def by_hand(p):
    out = model.apply(p, batch['image'], vae_key)
    recon = jnp.mean(losses.bernoulli_nll(out.logits, batch['image']))
    kl = jnp.mean(losses.gaussian_kl(out.mean, out.log_var))
    return recon + kl + 2.0 * jnp.mean(model.apply(p, out.z, method='discriminate'))

  grads = jax.jit(jax.grad(by_hand))(params)['params']
  assert float(metrics['loss']) == pytest.approx(float(by_hand(params)), rel=1e-5)
  for name, tree in params['params'].items():
    for a, b, g in zip(jax.tree.leaves(new.params['params'][name]), jax.tree.leaves(tree),
                       jax.tree.leaves(grads[name])):
      want = b if name == 'discriminator' else b - 0.1 * g
      np.testing.assert_allclose(np.asarray(a), np.asarray(want), rtol=1e-4, atol=1e-6)
  assert int(new.step) == 1


@pytest.mark.integration  # Tens of seconds: compiles several steps.
def test_factor_vae_step_trains_the_discriminator_on_codes_against_permuted_codes():
  model, params, state, step, batch = _factor_vae_setup(0.0, 0.5)
  key = jax.random.key(6)
  new, metrics = step(state, batch, key)
  _, disc_key = jax.random.split(jax.random.fold_in(key, 0))
  joint_key, second_key, perm_key = jax.random.split(disc_key, 3)
  x = batch['image']
  z = model.apply(params, x, joint_key).z
  z_perm = factor_vae.permute_dims(perm_key, model.apply(params, x, second_key).z)

  def by_hand(p):
    d = lambda c: model.apply(p, c, method='discriminate')
    # -log D(z) - log(1 - D(z_perm)) with D = sigmoid.
    return jnp.mean(-jnp.log(jax.nn.sigmoid(d(z))) - jnp.log(1 - jax.nn.sigmoid(d(z_perm))))

  grads = jax.jit(jax.grad(by_hand))(params)['params']
  assert float(metrics['disc_loss']) == pytest.approx(float(by_hand(params)), rel=1e-5)
  for name, tree in params['params'].items():
    for a, b, g in zip(jax.tree.leaves(new.params['params'][name]), jax.tree.leaves(tree),
                       jax.tree.leaves(grads[name])):
      want = b - 0.5 * g if name == 'discriminator' else b
      np.testing.assert_allclose(np.asarray(a), np.asarray(want), rtol=1e-4, atol=1e-6)


def test_factor_vae_rejects_bad_settings():
  config = factor_vae_config.get_config('smoke')
  config.loss.gamma = -1.0
  with pytest.raises(ValueError, match='config.loss.gamma must be >= 0, got -1.0'):
    factor_vae.validate(config)
  config = factor_vae_config.get_config('smoke')
  config.unlock()
  del config['disc_optim']
  with pytest.raises(ValueError, match='needs a config.disc_optim section'):
    factor_vae.validate(config)


@pytest.mark.integration
@pytest.mark.learning
def test_factor_vae_beats_the_mean_image():
  """LEARNING_STEPS steps of factor_vae.py on MNIST 5k: the test reconstruction NLL
  beats the mean training image's by 30 nats with γ · TC_D in the objective."""
  test_x, test_batch = _test_batch()
  baseline = _baselines.mean_image_bernoulli_nll(data.load_arrays('mnist5k', 'train')[0], test_x)
  stage = factor_vae.make_stage(factor_vae_config.get_config(), 'model', {})
  state = _train(stage, LEARNING_STEPS)
  metrics = jax.jit(stage.eval_step)(state, test_batch, jax.random.key(1))
  print({k: float(v) for k, v in metrics.items()}, baseline)
  assert float(metrics['recon']) < baseline - 30.0
