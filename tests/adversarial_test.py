"""Tests for the adversarial autoencoder: MMD, priors, the three-phase step (one device
and pmap), learning on MNIST, and the recipe (figures, resumption, bad configs).

The recipe's training contract (resume, preemption, NaN, 2 devices) is in
tests/contract_test.py. Run as a script (on fake devices),
`python tests/adversarial_test.py` prints the pmap-against-one-device report.
"""

import functools
import json
import math
import os
import shutil
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from scipy import stats

import _baselines

from ae_jax import data
from ae_jax import losses
from ae_jax import models
from ae_jax import objectives
from ae_jax import train as train_lib
from ae_jax import training
from ae_jax.models.aae import Prior
from ae_jax.models.aae import SemiSupervisedAAE
from ae_jax.recipes import aae
from ae_jax.recipes import ssaae
import _launch_helpers as helpers
from experiments.configs import aae as aae_config

# Nats per image by which a trained reconstruction must beat the mean training image.
MEAN_IMAGE_MARGIN = 20.0


# ----------------------------------------------------------------------------
# MMD.
# ----------------------------------------------------------------------------


def _kernel_np(a, b, kernel, bandwidths):
  d2 = float(np.sum((a - b) ** 2))
  if kernel == 'rbf':
    return sum(math.exp(-d2 / (2 * s**2)) for s in bandwidths)
  return sum(2 * len(a) * s**2 / (2 * len(a) * s**2 + d2) for s in bandwidths)


def _mmd2_loops(x, y, kernel, bandwidths, unbiased):
  """Gretton et al. 2012 (JMLR 13), written out with explicit loops: eq. 5 (biased),
  Lemma 6 (unbiased, m = n) and eq. 3 (unbiased, m != n)."""
  k = lambda a, b: _kernel_np(a, b, kernel, bandwidths)
  m, n = len(x), len(y)
  if not unbiased:
    return (sum(k(a, b) for a in x for b in x) / m**2 + sum(k(a, b) for a in y for b in y) / n**2
            - 2 * sum(k(a, b) for a in x for b in y) / (m * n))
  if m == n:
    total = sum(k(x[i], x[j]) + k(y[i], y[j]) - k(x[i], y[j]) - k(x[j], y[i])
                for i in range(m) for j in range(m) if i != j)
    return total / (m * (m - 1))
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  return xx + yy - 2 * sum(k(a, b) for a in x for b in y) / (m * n)


@pytest.mark.parametrize('kernel, bandwidths, unbiased, m', [
    ('rbf', (1.0,), True, 7), ('imq', (1.0,), True, 7), ('imq', (0.5, 2.0), False, 7),
    ('rbf', (0.7, 3.0), True, 5), ('imq', (1.0,), False, 5),
])
def test_mmd_matches_a_loop_reference(kernel, bandwidths, unbiased, m):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(7, 3))
  y = rng.normal(0.5, 1.5, size=(m, 3))
  got = losses.mmd2(jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32),
                         kernel=kernel, bandwidths=bandwidths, unbiased=unbiased)
  assert float(got) == pytest.approx(_mmd2_loops(x, y, kernel, bandwidths, unbiased),
                                     rel=1e-4, abs=1e-6)


def test_mmd_weights_leave_out_pairs():
  rng = np.random.default_rng(1)
  x, y = rng.normal(size=(2, 9, 2)).astype(np.float32)
  w = np.array([1, 1, 0, 1, 1, 1, 0, 1, 1], np.float32)
  keep = w == 1
  for unbiased in (True, False):
    weighted = losses.mmd2(jnp.asarray(x), jnp.asarray(y), unbiased=unbiased,
                                weights_N=jnp.asarray(w))
    subset = losses.mmd2(jnp.asarray(x[keep]), jnp.asarray(y[keep]), unbiased=unbiased)
    assert float(weighted) == pytest.approx(float(subset), rel=1e-5)


def test_mmd_of_identical_samples_is_zero_and_same_law_unbiased_averages_zero():
  x = jax.random.normal(jax.random.key(0), (64, 2))
  assert float(losses.mmd2(x, x, unbiased=True)) == 0.0
  assert abs(float(losses.mmd2(x, x, unbiased=False))) < 1e-6
  # Two independent samples of one law: the U-statistic is centred on 0, the
  # V-statistic is biased upwards.
  keys = jax.random.split(jax.random.key(1), 400)
  draw = jax.vmap(lambda k: jax.random.normal(k, (2, 20, 2)))(keys)
  u = jax.vmap(lambda s: losses.mmd2(s[0], s[1], kernel='rbf'))(draw)
  v = jax.vmap(lambda s: losses.mmd2(s[0], s[1], kernel='rbf', unbiased=False))(draw)
  se = float(jnp.std(u)) / math.sqrt(len(u))
  assert abs(float(jnp.mean(u))) < 4 * se
  assert float(jnp.mean(v)) > 10 * se


def test_rbf_mmd_matches_the_gaussian_closed_form():
  # x ~ N(a, s1² I), y ~ N(b, s2² I) in d dims, k = exp(-|x-y|²/(2σ²)):
  # E k(x, y) = (σ²/(σ²+s1²+s2²))^{d/2} exp(-|a-b|²/(2(σ²+s1²+s2²))), so
  # MMD² = E k(x,x') + E k(y,y') - 2 E k(x,y) in closed form.
  d, sigma, s1, s2 = 2, 1.0, 1.0, 0.5
  a, b = np.zeros(d), np.array([1.0, -0.5])
  cross = lambda v, dist2: (sigma**2 / (sigma**2 + v)) ** (d / 2) * math.exp(
      -dist2 / (2 * (sigma**2 + v)))
  expected = cross(2 * s1**2, 0.0) + cross(2 * s2**2, 0.0) - 2 * cross(
      s1**2 + s2**2, float(np.sum((a - b) ** 2)))
  keys = jax.random.split(jax.random.key(2), 300)

  def estimate(key):
    kx, ky = jax.random.split(key)
    x = a + s1 * jax.random.normal(kx, (100, d))
    y = b + s2 * jax.random.normal(ky, (100, d))
    return losses.mmd2(x, y, kernel='rbf', bandwidths=(sigma,))

  values = jax.vmap(estimate)(keys)
  se = float(jnp.std(values)) / math.sqrt(len(values))
  assert abs(float(jnp.mean(values)) - expected) < 4 * se, (float(jnp.mean(values)), expected)
  assert expected > 20 * se  # The comparison can tell this law pair from equal laws.


def test_mmd_rejects_bad_input():
  x = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match='Unknown kernel'):
    losses.mmd2(x, x, kernel='laplace')
  with pytest.raises(ValueError, match='bandwidths'):
    losses.mmd2(x, x, bandwidths=(0.0,))
  with pytest.raises(ValueError, match=r'\[N, Z\] and \[M, Z\]'):
    losses.mmd2(x, jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match='at least 2'):
    losses.mmd2(x[:1], x)


# ----------------------------------------------------------------------------
# Priors.
# ----------------------------------------------------------------------------


def test_mixture_samples_have_each_components_mean_and_spread():
  prior = Prior('mixture', 3, num_components=10, radius=4.0, radial_std=1.0,
                            tangential_std=0.25)
  n = 4000
  means = prior.means()
  for k in (0, 3, 7):
    z = np.asarray(prior.sample(jax.random.key(k), n, jnp.full((n,), k)))
    angle = 2 * np.pi * k / 10
    radial = np.array([np.cos(angle), np.sin(angle), 0.0])
    tangential = np.array([-np.sin(angle), np.cos(angle), 0.0])
    np.testing.assert_allclose(z.mean(0), means[k], atol=4 * 1.0 / math.sqrt(n))
    np.testing.assert_allclose(np.linalg.norm(means[k]), 4.0, rtol=1e-6)
    u = z - means[k]
    assert np.std(u @ radial) == pytest.approx(1.0, rel=0.05)
    assert np.std(u @ tangential) == pytest.approx(0.25, rel=0.05)
    assert np.std(u[:, 2]) == pytest.approx(0.25, rel=0.05)
  # Unlabelled draws (-1) pick components uniformly: nearest-mean counts pass a χ² test.
  z = np.asarray(prior.sample(jax.random.key(11), n, -jnp.ones((n,), jnp.int32)))
  nearest = np.argmin(((z[:, None, :2] - means[None, :, :2]) ** 2).sum(-1), 1)
  assert stats.chisquare(np.bincount(nearest, minlength=10)).pvalue > 1e-3


def test_prior_log_prob_matches_scipy():
  z = np.random.default_rng(0).normal(0, 3, size=(50, 2)).astype(np.float32)
  gaussian = Prior('gaussian', 2)
  np.testing.assert_allclose(gaussian.log_prob(z),
                             stats.multivariate_normal(np.zeros(2)).logpdf(z), rtol=1e-5)
  prior = Prior('mixture', 2, num_components=6, radius=3.0, radial_std=0.8,
                            tangential_std=0.3)
  density = np.zeros(len(z))
  for k in range(6):
    angle = 2 * np.pi * k / 6
    rot = np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    cov = rot @ np.diag([0.8**2, 0.3**2]) @ rot.T
    density += stats.multivariate_normal(prior.means()[k], cov).pdf(z) / 6
  np.testing.assert_allclose(prior.log_prob(z), np.log(density), rtol=1e-4)


def test_prior_rejects_bad_settings():
  with pytest.raises(ValueError, match='Unknown prior'):
    Prior('uniform')
  with pytest.raises(ValueError, match='latent_dim >= 2'):
    Prior('mixture', 1)
  with pytest.raises(ValueError, match='radial_std must be > 0'):
    Prior('mixture', 2, radial_std=0.0)
  with pytest.raises(ValueError, match='only defined for the mixture'):
    Prior('gaussian', 2).sample(jax.random.key(0), 3, jnp.zeros(3, jnp.int32))


# ----------------------------------------------------------------------------
# The three-phase step.
# ----------------------------------------------------------------------------


def _tiny(num_classes=0):
  model = models.AAE(input_dim=16, hidden=(8,), latent_dim=2, disc_hidden=(8,),
                     num_classes=num_classes)
  x = jax.random.uniform(jax.random.key(0), (6, 4, 4, 1))
  batch = {'image': x, 'label': jnp.array([0, 1, 2, -1, 1, 0], jnp.int32)}
  params = {'params': model.init(jax.random.key(1), x)['params']}
  return model, batch, params


def _changed(before, after):
  return {name: not all(np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(before['params'][name]), jax.tree.leaves(after['params'][name])))
          for name in before['params']}


@pytest.mark.parametrize('phase, expected', [
    ('recon', {'encoder': True, 'decoder': True, 'discriminator': False}),
    ('disc', {'encoder': False, 'decoder': False, 'discriminator': True}),
    ('gen', {'encoder': True, 'decoder': False, 'discriminator': False}),
])
def test_each_phase_updates_only_its_parameters(phase, expected):
  model, batch, params = _tiny()
  txs = {p: optax.sgd(0.1) if p == phase else optax.set_to_zero() for p in aae.PHASES}
  state = aae.create_state(params, txs)
  new_state, metrics = jax.jit(aae.train_step_fn(model, txs))(state, batch, jax.random.key(2))
  assert _changed(params, new_state.params) == expected
  assert int(new_state.step) == 1
  assert set(new_state.opt_state) == set(aae.PHASES)
  assert {'loss', 'recon', 'disc_loss', 'gen_loss'} <= set(metrics)


@pytest.mark.parametrize('num_classes', [0, 3])
def test_step_equals_three_sequential_gradient_steps(num_classes):
  """The jitted step against the phases written out with jax.grad and plain SGD."""
  model, batch, params = _tiny(num_classes)
  prior = 'mixture' if num_classes else 'gaussian'
  hp = dict(prior=prior, num_components=3)
  lrs = {'recon': 0.1, 'disc': 0.05, 'gen': 0.02}
  txs = {p: optax.sgd(lr) for p, lr in lrs.items()}
  step = jax.jit(aae.train_step_fn(model, txs, **hp))
  key = jax.random.key(3)
  new_state, metrics = step(aae.create_state(params, txs), batch, key)

  x = batch['image']
  labels = batch['label'] if num_classes else None
  prior_obj = Prior(prior, 2, num_components=3)
  step_key = jax.random.fold_in(key, 0)
  z_prior = prior_obj.sample(step_key, 6, labels) if num_classes else prior_obj.sample(
      step_key, 6)
  p = params['params']
  apply = lambda q, *a, method: model.apply({'params': q}, *a, method=method)

  def recon(q):
    logits = apply(q, apply(q, x, method=model.encode), method=model.decode)
    return jnp.mean(jnp.sum(jax.nn.softplus(logits) - x.reshape(6, -1) * logits, -1))

  g = jax.grad(recon)(p)
  p = {**p, 'encoder': jax.tree.map(lambda a, b: a - 0.1 * b, p['encoder'], g['encoder']),
       'decoder': jax.tree.map(lambda a, b: a - 0.1 * b, p['decoder'], g['decoder'])}
  z_data = apply(p, x, method=model.encode)

  def disc(q):
    return jnp.mean(-jax.nn.log_sigmoid(apply(q, z_prior, labels, method=model.discriminate))
                    - jax.nn.log_sigmoid(-apply(q, z_data, labels, method=model.discriminate)))

  g = jax.grad(disc)(p)
  p = {**p, 'discriminator': jax.tree.map(lambda a, b: a - 0.05 * b, p['discriminator'],
                                          g['discriminator'])}

  def gen(q):
    z = apply(q, x, method=model.encode)
    return jnp.mean(-jax.nn.log_sigmoid(apply(q, z, labels, method=model.discriminate)))

  gen_before = gen(p)
  g = jax.grad(gen)(p)
  p = {**p, 'encoder': jax.tree.map(lambda a, b: a - 0.02 * b, p['encoder'], g['encoder'])}
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_state.params['params'], p)
  assert float(metrics['gen_loss']) == pytest.approx(float(gen_before), rel=1e-5)


def test_conditional_discriminator_needs_the_mixture_and_labels():
  model, batch, _ = _tiny(num_classes=3)
  with pytest.raises(ValueError, match='needs prior="mixture"'):
    aae.make_objective(model, prior='gaussian')
  with pytest.raises(ValueError, match='must equal model.num_classes'):
    aae.make_objective(model, prior='mixture', num_components=10)
  objective = aae.make_objective(model, prior='mixture', num_components=3)
  params = {'params': model.init(jax.random.key(1), batch['image'])['params']}
  with pytest.raises(ValueError, match=r"batch\['label'\]"):
    objective(params, {'image': batch['image']}, jax.random.key(0))


def test_stage_step_is_pure_and_folds_the_step_into_the_key():
  """The contract of `ae_jax.recipes.base` (the loop passes one key every step)."""
  stage = aae.make_stage(aae_config.get_config('smoke'), 'model', {})
  state = jax.jit(stage.init)(jax.random.key(0))
  again = jax.jit(stage.init)(jax.random.key(0))
  jax.tree.map(np.testing.assert_array_equal, state, again)
  assert set(state.opt_state) == {'recon', 'disc', 'gen'}
  batch = jax.tree.map(jnp.asarray, next(stage.train_data(0)))
  step = jax.jit(stage.train_step)
  key = jax.random.key(1)
  first, metrics = step(state, batch, key)
  second, _ = step(state, batch, key)
  jax.tree.map(np.testing.assert_array_equal, first, second)
  assert int(first.step) == 1
  # Same parameters and batch at another step: other prior samples, another disc loss.
  _, later = step(state.replace(step=jnp.asarray(5, jnp.int32)), batch, key)
  assert float(later['recon']) == float(metrics['recon'])
  assert float(later['disc_loss']) != float(metrics['disc_loss'])


# ----------------------------------------------------------------------------
# pmap on two fake devices.
# ----------------------------------------------------------------------------


def _pmap_report(num_steps: int = 3) -> dict[str, float]:
  """`num_steps` steps of the pmap step and of the one-device step from one state and
  the same batches: the largest differences in params, optimizer states and metrics."""
  from ae_jax import parallel  # pylint: disable=g-import-not-at-top
  out = {'device_count': jax.local_device_count()}
  rng = np.random.default_rng(0)
  batches = [{'image': rng.uniform(size=(6, 4, 4, 1)).astype(np.float32),
              'label': np.array([0, 1, 2, -1, 1, 0], np.int32)} for _ in range(num_steps)]
  key = jax.random.key(7)
  for num_classes in (0, 3):
    model, _, params = _tiny(num_classes)
    hp = dict(prior='mixture' if num_classes else 'gaussian', num_components=3)
    # SGD with momentum: a state per phase, and summation-order noise stays small
    # (Adam would blow it up on near-zero gradients).
    txs = {p: optax.sgd(lr, momentum=0.9) for p, lr in
           (('recon', 0.1), ('disc', 0.05), ('gen', 0.02))}
    single = jax.jit(aae.train_step_fn(model, txs, **hp))
    mapped = parallel.pmap_train_step(aae.train_step_fn(model, txs, axis_name='batch', **hp),
                                      'batch', donate=False)
    state = aae.create_state(params, txs)
    replicas = parallel.replicate(state)
    for batch in batches:
      state, metrics = jax.block_until_ready(single(state, batch, key))
      replicas, replica_metrics = jax.block_until_ready(
          mapped(replicas, parallel.split_batch(batch), key))
    pmapped = parallel.unreplicate(replicas)
    name = f'classes{num_classes}'
    out[f'{name}_step'] = int(pmapped.step)
    out[f'{name}_moved'] = helpers.max_abs_diff(state.params, params)
    out[f'{name}_params'] = helpers.max_abs_diff(pmapped.params, state.params)
    out[f'{name}_opt_state'] = helpers.max_abs_diff(pmapped.opt_state, state.opt_state)
    out[f'{name}_metrics'] = helpers.max_abs_diff(parallel.unreplicate(replica_metrics),
                                                  metrics)
  # The semi-supervised AAE's four phases, with its labelled batch split like the rest.
  model, _, params = _tiny_ss()
  txs = {p: optax.sgd(lr, momentum=0.9) for p, lr in
         (('recon', 0.1), ('disc', 0.05), ('gen', 0.02), ('semi', 0.03))}
  single = jax.jit(ssaae.train_step_fn(model, txs))
  mapped = parallel.pmap_train_step(ssaae.train_step_fn(model, txs, axis_name='batch'),
                                    'batch', donate=False)
  state = ssaae.create_state(params, txs)
  replicas = parallel.replicate(state)
  for batch in batches:
    batch = {'image': batch['image'], 'labelled_image': batch['image'][::-1],
             'labelled_label': np.array([0, 1, 2, 2, 1, 0], np.int32)}
    state, metrics = jax.block_until_ready(single(state, batch, key))
    replicas, replica_metrics = jax.block_until_ready(
        mapped(replicas, parallel.split_batch(batch), key))
  pmapped = parallel.unreplicate(replicas)
  out['ssaae_step'] = int(pmapped.step)
  out['ssaae_moved'] = helpers.max_abs_diff(state.params, params)
  out['ssaae_params'] = helpers.max_abs_diff(pmapped.params, state.params)
  out['ssaae_opt_state'] = helpers.max_abs_diff(pmapped.opt_state, state.opt_state)
  out['ssaae_metrics'] = helpers.max_abs_diff(parallel.unreplicate(replica_metrics), metrics)
  return out


@pytest.mark.integration
def test_pmap_step_on_two_devices_equals_the_one_device_step(tmp_path):
  """On 2 fake devices (a subprocess: the flag must precede JAX) the pmap step, whose
  replicas keep their rows of the global batch's prior samples, follows the jitted
  one-device step up to float summation order: the AAE with and without labels, and
  the semi-supervised AAE."""
  env = dict(helpers.env_with_devices(2), PYTHONPATH=os.pathsep.join(
      [helpers.REPO, os.path.dirname(os.path.abspath(__file__))]))

  def run(root):
    del root
    try:
      result = subprocess.run([sys.executable, os.path.abspath(__file__)], cwd=helpers.REPO,
                              env=env, capture_output=True, text=True, timeout=240, check=False)
    except subprocess.TimeoutExpired as e:
      raise helpers.Hang(str(e)) from e
    if result.returncode == -signal.SIGABRT:
      raise helpers.Hang(result.stderr[-3000:])
    return result

  result = helpers.with_one_retry(run, tmp_path)
  assert result.returncode == 0, result.stderr[-4000:]
  report = json.loads(result.stdout.strip().splitlines()[-1])
  print(report)
  assert report['device_count'] == 2
  for name in ('classes0', 'classes3', 'ssaae'):
    assert report[f'{name}_step'] == 3
    assert report[f'{name}_moved'] > 1e-2  # The steps did move the parameters.
    assert report[f'{name}_params'] < 1e-5, report
    assert report[f'{name}_opt_state'] < 1e-5, report
    assert report[f'{name}_metrics'] < 1e-5, report


# ----------------------------------------------------------------------------
# Learning on MNIST and the recipe.
# ----------------------------------------------------------------------------


@pytest.mark.integration
@pytest.mark.learning
def test_recon_falls_and_codes_approach_the_prior_on_mnist():
  """300 steps of the default config (Gaussian prior) on the MNIST 5k subset: the
  test reconstruction loss beats the mean training image's on the same test images by
  MEAN_IMAGE_MARGIN nats, and the MMD² of test codes to the prior falls to a quarter of
  the untrained model's."""
  stage = aae.make_stage(aae_config.get_config(), 'model', {})
  evaluate = jax.jit(stage.eval_step)
  step = jax.jit(stage.train_step, donate_argnums=(0,))
  test_x, _ = data.load_arrays('mnist5k', 'test')
  test_batch = {'image': jnp.asarray(test_x)}
  mean_image = _baselines.mean_image_bernoulli_nll(data.load_arrays('mnist5k', 'train')[0], test_x)
  state = jax.jit(stage.init)(jax.random.key(0))
  eval_key = jax.random.key(1)
  before = evaluate(state, test_batch, eval_key)
  batches = stage.train_data(0)
  for _ in range(300):
    state, metrics = step(state, jax.tree.map(jnp.asarray, next(batches)), jax.random.key(2))
  after = evaluate(state, test_batch, eval_key)
  print({k: (float(before[k]), float(after[k])) for k in ('recon', 'mmd')}, mean_image)
  assert float(after['recon']) < mean_image - MEAN_IMAGE_MARGIN
  assert float(after['mmd']) < 0.25 * float(before['mmd'])
  assert all(np.isfinite(float(v)) for v in metrics.values())


@pytest.mark.integration
def test_conditional_smoke_run_writes_the_figures(tmp_path):
  """The label-conditioned variant through `training.train_and_evaluate` (aae.py:smoke,
  the Gaussian prior, is the contract test's case)."""
  config = aae_config.get_config('smoke,conditional')
  metrics = training.train_and_evaluate(config, str(tmp_path))
  assert {'recon', 'mmd', 'disc_loss', 'gen_loss', 'disc_accuracy'} <= set(metrics)
  for name in ('reconstructions.png', 'samples.png', 'aae_latent.png', 'latent_map.png',
               'training_curves.png'):
    assert (tmp_path / 'figures' / name).stat().st_size > 1000, name
  state = training.restore(config, str(tmp_path))['model'].state
  assert set(state.opt_state) == {'recon', 'disc', 'gen'}
  assert int(state.step) == config.train.num_train_steps


@pytest.mark.slow
def test_resumed_run_ends_bitwise_equal(tmp_path):
  """Steps 4..6 redone from the step-3 checkpoint land exactly on the step-6 state:
  the three optimizer states, the step and the data order survive the checkpoint."""
  config = aae_config.get_config('smoke,conditional')
  training.train_and_evaluate(config, str(tmp_path))
  straight = training.restore(config, str(tmp_path))['model'].state
  shutil.rmtree(tmp_path / 'model' / 'checkpoints' / '6')
  training.train_and_evaluate(config, str(tmp_path))
  jax.tree.map(np.testing.assert_array_equal, straight,
               training.restore(config, str(tmp_path))['model'].state)


def test_config_arguments_and_bad_settings():
  assert aae_config.get_config('mixture').loss.prior == 'mixture'
  assert aae_config.get_config('smoke,conditional').model.num_classes == 10
  with pytest.raises(ValueError, match="Unknown config argument 'swiss'"):
    aae_config.get_config('swiss')
  config = aae_config.get_config('smoke')
  config.disc_optim.learning_rate = -1.0
  with pytest.raises(ValueError, match=r'config\.disc_optim\.learning_rate must be > 0'):
    training.validate(config)
  config = aae_config.get_config('smoke')
  config.loss.prior = 'laplace'
  with pytest.raises(ValueError, match="Unknown prior 'laplace'"):
    training.validate(config)
  config = aae_config.get_config('smoke,conditional')
  config.loss.prior = 'gaussian'
  with pytest.raises(ValueError, match='needs prior="mixture"'):
    training.validate(config)
  config = aae_config.get_config('smoke')
  config.model.name = 'mlp_ae'
  with pytest.raises(ValueError, match="'mlp_ae' is not a model of this recipe"):
    training.validate(config)


@pytest.mark.slow
def test_labelled_codes_land_in_their_own_component(tmp_path):
  """The conditional default config (3,000 steps): most test codes lie nearest the
  mean of their own class's mixture component (chance: 10%), and the codes match the
  prior in MMD. Seen once at 0.83 of test codes and MMD² 0.007."""
  config = aae_config.get_config('conditional')
  config.train.progress_bar = False
  metrics = training.train_and_evaluate(config, str(tmp_path))
  model, variables = training.restore_variables(config, str(tmp_path))
  x, y = data.load_arrays('mnist5k', 'test')
  z = np.asarray(model.apply(variables, x, method=model.encode))
  means = Prior('mixture', 2).means()
  nearest = np.argmin(((z[:, None] - means[None]) ** 2).sum(-1), 1)
  assert np.mean(nearest == y) > 0.6, np.mean(nearest == y)
  assert metrics['mmd'] < 0.03, metrics


# ----------------------------------------------------------------------------
# The semi-supervised AAE (Makhzani et al. section 5).
# ----------------------------------------------------------------------------


def _tiny_ss():
  model = SemiSupervisedAAE(input_dim=16, hidden=(8,), latent_dim=2, num_classes=3,
                            disc_hidden=(8,))
  rng = np.random.default_rng(0)
  batch = {'image': jnp.asarray(rng.uniform(size=(6, 4, 4, 1)), jnp.float32),
           'labelled_image': jnp.asarray(rng.uniform(size=(6, 4, 4, 1)), jnp.float32),
           'labelled_label': jnp.array([0, 1, 2, 2, 1, 0], jnp.int32)}
  params = {'params': model.init(jax.random.key(1), batch['image'])['params']}
  return model, batch, params


def test_labelled_subset_is_balanced_fixed_by_seed_and_nested():
  labels = np.random.default_rng(0).integers(0, 10, size=3000)
  index = ssaae.labelled_indices(labels, 100, num_classes=10, seed=0)
  assert len(index) == len(set(index.tolist())) == 100
  np.testing.assert_array_equal(np.bincount(labels[index], minlength=10), np.full(10, 10))
  np.testing.assert_array_equal(index, ssaae.labelled_indices(labels, 100, num_classes=10,
                                                              seed=0))
  other = ssaae.labelled_indices(labels, 100, num_classes=10, seed=1)
  assert len(set(index.tolist()) & set(other.tolist())) < 20  # ~100 * 10/300 expected.
  # Each class takes a prefix of one seeded permutation: 1,000 labels hold the 100.
  assert set(index.tolist()) <= set(ssaae.labelled_indices(labels, 1000, num_classes=10,
                                                           seed=0).tolist())
  with pytest.raises(ValueError, match='positive multiple of the 10 classes'):
    ssaae.labelled_indices(labels, 105, num_classes=10, seed=0)
  with pytest.raises(ValueError, match='needs 300 examples of class 0'):
    ssaae.labelled_indices(labels[labels != 0][:2900].tolist() + [0] * 5, 3000,
                           num_classes=10, seed=0)


def test_train_batches_hold_only_the_labelled_set_and_resume_by_step():
  config = aae_config.get_config('smoke,semisupervised')
  images, labels = ssaae.labelled_set(config, 10)
  x, y = data.load_arrays('mnist5k', 'train')
  index = ssaae.labelled_indices(y, config.data.num_labels, num_classes=10, seed=0)
  np.testing.assert_array_equal(images, x[index])
  np.testing.assert_array_equal(labels, y[index])
  train_data = ssaae.train_data(config, 10)
  first = [next(it) for it in [train_data(0)] for _ in range(6)]
  flat = images.reshape(len(images), -1)
  for batch in first:
    assert set(batch) == {'image', 'labelled_image', 'labelled_label'}  # No other label.
    rows = [np.flatnonzero((flat == v).all(1)) for v in batch['labelled_image'].reshape(16, -1)]
    assert all(len(r) == 1 for r in rows)
    np.testing.assert_array_equal(batch['labelled_label'], labels[[r[0] for r in rows]])
  resumed = next(train_data(5))
  jax.tree.map(np.testing.assert_array_equal, resumed, first[5])


def test_prior_samples_are_one_hot_uniform_classes_and_standard_normal_styles():
  model, _, _ = _tiny_ss()
  hp = ssaae.hyperparameters(model)
  y, z = ssaae.prior_samples(hp, jax.random.key(0), 6000)
  y, z = np.asarray(y), np.asarray(z)
  assert set(np.unique(y).tolist()) == {0.0, 1.0}
  np.testing.assert_array_equal(y.sum(1), np.ones(6000))
  assert stats.chisquare(y.sum(0)).pvalue > 1e-3
  np.testing.assert_allclose(z.mean(0), 0.0, atol=4 / math.sqrt(6000))
  np.testing.assert_allclose(z.std(0), 1.0, rtol=0.05)


@functools.cache
def _ss_sgd_step():
  """One jitted semi-supervised step for the tests, SGD in every phase with the rates in
  the state (`optax.inject_hyperparams`), so one compilation serves every rate."""
  model, _, _ = _tiny_ss()
  txs = {p: optax.inject_hyperparams(optax.sgd)(learning_rate=0.0)
         for p in ssaae.PHASES}
  return txs, jax.jit(ssaae.train_step_fn(model, txs))


def _ss_sgd_state(params, lrs):
  txs, _ = _ss_sgd_step()
  state = ssaae.create_state(params, txs)
  opt_state = {p: s._replace(hyperparams={**s.hyperparams, 'learning_rate': jnp.asarray(
      lrs.get(p, 0.0), jnp.float32)}) for p, s in state.opt_state.items()}
  return state.replace(opt_state=opt_state)


def test_each_semisupervised_phase_updates_only_its_parameters():
  model, batch, params = _tiny_ss()
  del model
  _, step = _ss_sgd_step()
  for phase, expected in [('recon', {'trunk', 'y_head', 'z_head', 'decoder'}),
                          ('disc', {'disc_y', 'disc_z'}), ('gen', {'trunk', 'y_head', 'z_head'}),
                          ('semi', {'trunk', 'y_head'})]:
    new_state, metrics = step(_ss_sgd_state(params, {phase: 0.1}), batch, jax.random.key(2))
    assert {k for k, v in _changed(params, new_state.params).items() if v} == expected, phase
  assert {'loss', 'recon', 'disc_y_loss', 'disc_z_loss', 'gen_loss', 'xent'} <= set(metrics)


def test_supervised_gradient_reaches_only_the_class_head_and_trunk():
  """The cross-entropy's gradient is exactly zero on the style head, decoder and both
  discriminators (they are not on its path), and nonzero on trunk and class head; the
  supervised-only step changes exactly those two groups and reads no unlabelled image."""
  model, batch, params = _tiny_ss()

  def xent(p):
    logits = model.apply(p, batch['labelled_image'], method=model.classify)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits, batch['labelled_label']))

  grads = jax.grad(xent)(params)['params']
  norms = {name: float(train_lib.global_norm(g)) for name, g in grads.items()}
  assert {name for name, n in norms.items() if n > 0} == {'trunk', 'y_head'}, norms
  txs = {'semi': optax.sgd(0.1)}
  step = jax.jit(ssaae.train_step_fn(model, txs, supervised_only=True))
  nan_batch = {**batch, 'image': jnp.full_like(batch['image'], jnp.nan)}
  new_state, metrics = step(ssaae.create_state(params, txs), nan_batch, jax.random.key(0))
  assert {k for k, v in _changed(params, new_state.params).items() if v} == {'trunk', 'y_head'}
  assert float(metrics['loss']) == pytest.approx(float(xent(params)), rel=1e-6)
  assert set(new_state.opt_state) == {'semi'}


def test_semisupervised_step_equals_four_sequential_gradient_steps():
  """The jitted step against the four phases written out with jax.grad and plain SGD;
  the discriminators see one-hot categorical and N(0, I) samples drawn from
  fold_in(key, step)."""
  model, batch, params = _tiny_ss()
  _, step = _ss_sgd_step()
  key = jax.random.key(3)
  new_state, metrics = step(_ss_sgd_state(
      params, {'recon': 0.1, 'disc': 0.05, 'gen': 0.02, 'semi': 0.03}), batch, key)

  x = batch['image']
  step_key = jax.random.fold_in(key, 0)
  class_key, style_key = jax.random.split(step_key)
  y_prior = jax.nn.one_hot(jax.random.randint(class_key, (6,), 0, 3), 3)
  z_prior = jax.random.normal(style_key, (6, 2))
  apply = lambda q, *a, method: model.apply({'params': q}, *a, method=method)

  def sgd(p, g, names, lr):
    return {**p, **{n: jax.tree.map(lambda a, b: a - lr * b, p[n], g[n]) for n in names}}

  def codes(q):
    code = apply(q, x, method=model.encode)
    return jax.nn.softmax(code.y_logits, -1), code.z

  def recon(q):
    y, z = codes(q)
    logits = apply(q, y, z, method=model.decode)
    return jnp.mean(jnp.sum(jax.nn.softplus(logits) - x.reshape(6, -1) * logits, -1))

  p = params['params']
  p = sgd(p, jax.grad(recon)(p), ('trunk', 'y_head', 'z_head', 'decoder'), 0.1)
  y_data, z_data = codes(p)
  dy = lambda q, v: apply(q, v, method=model.discriminate_y)
  dz = lambda q, v: apply(q, v, method=model.discriminate_z)

  def disc(q):
    return jnp.mean(-jax.nn.log_sigmoid(dy(q, y_prior)) - jax.nn.log_sigmoid(-dy(q, y_data))
                    - jax.nn.log_sigmoid(dz(q, z_prior)) - jax.nn.log_sigmoid(-dz(q, z_data)))

  p = sgd(p, jax.grad(disc)(p), ('disc_y', 'disc_z'), 0.05)

  def gen(q):
    y, z = codes(q)
    return jnp.mean(-jax.nn.log_sigmoid(dy(q, y)) - jax.nn.log_sigmoid(dz(q, z)))

  gen_before = gen(p)
  p = sgd(p, jax.grad(gen)(p), ('trunk', 'y_head', 'z_head'), 0.02)

  def semi(q):
    logits = apply(q, batch['labelled_image'], method=model.classify)
    log_q = jax.nn.log_softmax(logits, -1)
    return -jnp.mean(jnp.take_along_axis(log_q, batch['labelled_label'][:, None], 1))

  semi_before = semi(p)
  p = sgd(p, jax.grad(semi)(p), ('trunk', 'y_head'), 0.03)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
               new_state.params['params'], p)
  assert float(metrics['gen_loss']) == pytest.approx(float(gen_before), rel=1e-5)
  assert float(metrics['xent']) == pytest.approx(float(semi_before), rel=1e-5)


def test_semisupervised_eval_error_counts_unmasked_mistakes():
  model, batch, params = _tiny_ss()
  objective = ssaae.make_objective(model)
  logits = model.apply(params, batch['image'], method=model.classify)
  pred = np.asarray(jnp.argmax(logits, -1))
  labels = np.array([pred[0], (pred[1] + 1) % 3, pred[2], (pred[3] + 1) % 3, pred[4], -1])
  mask = np.array([1, 1, 1, 1, 1, 0], np.float32)
  error, metrics = objective(params, {'image': batch['image'], 'label': jnp.asarray(labels),
                                      'mask': jnp.asarray(mask)}, jax.random.key(0))
  assert float(error) == pytest.approx(2 / 5)
  assert float(metrics['error']) == pytest.approx(2 / 5)


def test_semisupervised_config_arguments_and_bad_settings():
  config = aae_config.get_config('semisupervised')
  assert config.recipe == 'ssaae' and config.data.num_labels == 100
  assert not config.loss.supervised_only and 'semi_optim' in config
  baseline = aae_config.get_config('supervised')
  assert baseline.loss.supervised_only and 'disc_optim' not in baseline
  # The baseline's classifier optimizer is the semi-supervised run's semi phase's.
  assert baseline.optim.to_dict() == {**baseline.optim.to_dict(), **config.semi_optim.to_dict()}
  assert aae_config.get_config('fashion,supervised').data.name == 'fashion_mnist'
  with pytest.raises(ValueError, match="'fashion' goes with"):
    aae_config.get_config('fashion,mixture')
  config = aae_config.get_config('smoke,semisupervised')
  config.data.num_labels = 25
  with pytest.raises(ValueError, match='num_labels must be a positive multiple of the 10'):
    training.validate(config)
  config = aae_config.get_config('smoke,semisupervised')
  config.data.num_labels = 10
  with pytest.raises(ValueError, match=r'batch_size=16 must be at most config\.data\.num_labels'):
    training.validate(config)
  config = aae_config.get_config('smoke,semisupervised')
  config.loss.supervised_only = True
  with pytest.raises(ValueError, match=r'config\.disc_optim has no effect'):
    training.validate(config)
  with pytest.raises(ValueError, match='supervised_only must be True or False'):
    ssaae.hyperparameters(_tiny_ss()[0], supervised_only='yes')


def _test_error(stage, state, batch) -> float:
  return float(jax.jit(stage.eval_step)(state, batch, jax.random.key(1))['error'])


def _train_classifier(arg: str, num_steps: int):
  """`num_steps` steps of a config (100 labels of the MNIST 5k train split) by its stage's
  own jitted steps; the test error (1,000 test digits) before and after."""
  stage = ssaae.make_stage(aae_config.get_config(arg), 'model', {})
  test_x, test_y = data.load_arrays('mnist5k', 'test')
  test_batch = {'image': jnp.asarray(test_x), 'label': jnp.asarray(test_y)}
  state = jax.jit(stage.init)(jax.random.key(0))
  before = _test_error(stage, state, test_batch)
  step = jax.jit(stage.train_step, donate_argnums=(0,))
  batches = stage.train_data(0)
  for _ in range(num_steps):
    state, metrics = step(state, jax.tree.map(jnp.asarray, next(batches)), jax.random.key(2))
  assert all(np.isfinite(float(v)) for v in metrics.values())
  return before, _test_error(stage, state, test_batch)


@pytest.mark.integration
@pytest.mark.learning
def test_semisupervised_aae_classifies_from_100_labels_near_the_supervised_baseline():
  """300 steps with 100 labels (10 per class) on MNIST 5k: the semi-supervised AAE's test
  error is below chance (90%) and the untrained model's by 40 points, and not above the
  supervised baseline's (same trunk and head, same labels, same steps) by more than 6
  points. Seen once: untrained 0.892, semi-supervised 0.151, supervised 0.222; with the
  adversarial phases at 1e-4 instead of the config's 1e-3 it was 0.284 against 0.222, so
  only that margin is asserted, not a win."""
  untrained, semi = _train_classifier('semisupervised', 300)
  _, supervised = _train_classifier('supervised', 300)
  print({'untrained': untrained, 'semisupervised': semi, 'supervised': supervised})
  assert semi < 0.9 - 0.4
  assert semi < untrained - 0.4
  assert semi < supervised + 0.06


if __name__ == '__main__':
  print(json.dumps(_pmap_report()))
