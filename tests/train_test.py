"""Tests for ae_jax.train on a tiny self-contained MLP autoencoder."""

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ae_jax import train

from _tiny_objectives import deterministic_objective
from _tiny_objectives import EMA_DECAY
from _tiny_objectives import IMAGE_SHAPE
from _tiny_objectives import MODEL
from _tiny_objectives import mse as _mse
from _tiny_objectives import stateful_objective
from _tiny_objectives import zero_stats as _zero_stats


def stochastic_objective(params, batch, key):
  """Denoising MSE; 'probe' exposes one uniform draw of the key the step used."""
  x = batch['image']
  noise_key, probe_key = jax.random.split(key)
  loss = _mse(params, x + 0.3 * jax.random.normal(noise_key, x.shape), x)
  return loss, {'recon': loss, 'probe': jax.random.uniform(probe_key)}


def scheduled_objective(params, batch, key, *, step=0):
  """Reports the `step` keyword it was called with."""
  loss, metrics = deterministic_objective(params, batch, key)
  return loss, {**metrics, 'seen_step': jnp.asarray(step, jnp.float32)}


def _batch(seed=0, batch_size=16):
  # Rank-2 images in [0, 0.5]: a 3-unit code can reconstruct them.
  rng = np.random.default_rng(seed)
  codes, basis = rng.uniform(size=(batch_size, 2)), rng.uniform(size=(2, 16))
  return {'image': (codes @ basis / 2).reshape(batch_size, *IMAGE_SHAPE).astype(np.float32)}


def _state(tx, model_state=None):
  params = MODEL.init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
  return train.create_train_state(params, tx, model_state)


def test_create_train_state():
  tx = optax.adam(1e-3)
  state = _state(tx)
  assert state.step.dtype == jnp.int32 and state.step.shape == ()
  assert int(state.step) == 0
  assert state.model_state == {}
  assert not train.is_stateful(state)
  chex.assert_trees_all_equal(state.opt_state, tx.init(state.params))
  assert train.is_stateful(_state(tx, _zero_stats()))


@pytest.mark.learning
def test_loss_decreases_over_50_steps():
  tx = optax.adam(3e-2)
  state, batch, key = _state(tx), _batch(), jax.random.key(1)
  step = train.make_train_step(deterministic_objective, tx)
  losses = []
  for _ in range(50):
    state, metrics = step(state, batch, key)
    losses.append(float(metrics['loss']))
  assert int(state.step) == 50
  # Measured: 0.091 -> 0.0014.
  assert losses[-1] < 0.1 * losses[0]


def test_first_step_matches_hand_written_optax_update():
  tx = optax.adam(1e-2)
  state, batch, key = _state(tx), _batch(), jax.random.key(3)
  new_state, metrics = train.make_train_step(stochastic_objective, tx, donate=False)(
      state, batch, key
  )
  step_key = jax.random.fold_in(key, 0)
  (loss, aux), grads = jax.value_and_grad(stochastic_objective, has_aux=True)(
      state.params, batch, step_key
  )
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  chex.assert_trees_all_close(new_state.params, optax.apply_updates(state.params, updates),
                              rtol=1e-6, atol=1e-7)
  chex.assert_trees_all_close(new_state.opt_state, opt_state, rtol=1e-6, atol=1e-9)
  assert sorted(metrics) == ['grad_norm', 'loss', 'probe', 'recon']
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics['recon'], aux['recon'], rtol=1e-6)
  flat = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads)])
  np.testing.assert_allclose(metrics['grad_norm'], np.linalg.norm(flat), rtol=1e-5)


def test_pure_step_equals_jitted_step():
  tx = optax.sgd(0.1)
  state, batch, key = _state(tx), _batch(), jax.random.key(4)
  jitted = train.make_train_step(stochastic_objective, tx, donate=False)(state, batch, key)
  pure = train.train_step_fn(stochastic_objective, tx)(state, batch, key)
  chex.assert_trees_all_close(jitted, pure, rtol=1e-5, atol=1e-6)


def test_step_key_is_base_key_folded_with_step():
  tx = optax.sgd(0.0)  # Parameters stay put: only the step counter changes the noise.
  state, batch, key = _state(tx), _batch(), jax.random.key(5)
  step = train.make_train_step(stochastic_objective, tx, donate=False)
  state1, m0 = step(state, batch, key)
  _, m0_again = step(state, batch, key)
  _, m1 = step(state1, batch, key)

  def probe(step_index):
    return jax.random.uniform(jax.random.split(jax.random.fold_in(key, step_index))[1])

  assert float(m0['probe']) == float(m0_again['probe'])  # Same step, same key.
  assert float(m0['probe']) != float(m1['probe'])  # Different steps, different keys.
  np.testing.assert_allclose(m0['probe'], probe(0), rtol=1e-7)
  np.testing.assert_allclose(m1['probe'], probe(1), rtol=1e-7)
  # Same parameters, different noise: the losses differ too.
  assert float(m0['loss']) != float(m1['loss'])


def test_eval_step_matches_objective_without_updating():
  tx = optax.adam(1e-2)
  state, batch, key = _state(tx), _batch(), jax.random.key(6)
  state, _ = train.make_train_step(stochastic_objective, tx)(state, batch, key)
  eval_step = train.make_eval_step(stochastic_objective)
  metrics = eval_step(state, batch, key)
  loss, expected = stochastic_objective(state.params, batch, key)  # Key used as given.
  assert sorted(metrics) == ['loss', 'probe', 'recon']
  np.testing.assert_allclose(metrics['loss'], loss, rtol=1e-6)
  np.testing.assert_allclose(metrics['probe'], expected['probe'], rtol=1e-7)
  # A second evaluation with the same key is identical (no state, no step folding).
  chex.assert_trees_all_equal(eval_step(state, batch, key), metrics)


def test_stateful_step_updates_model_state():
  tx = optax.adam(1e-2)
  state, key = _state(tx, _zero_stats()), jax.random.key(7)
  step = train.make_train_step(stateful_objective, tx)
  expected_ema = np.zeros(IMAGE_SHAPE)
  for seed in range(3):
    batch = _batch(seed)
    state, metrics = step(state, batch, key)
    expected_ema = EMA_DECAY * expected_ema + (1 - EMA_DECAY) * batch['image'].mean(0)
  assert int(state.model_state['stats']['updates']) == 3
  np.testing.assert_allclose(state.model_state['stats']['ema'], expected_ema, rtol=1e-5, atol=1e-7)
  assert sorted(metrics) == ['grad_norm', 'loss', 'recon']
  # The eval step reads the model state but does not return a new one.
  eval_metrics = train.make_eval_step(stateful_objective)(state, batch, key)
  np.testing.assert_allclose(
      eval_metrics['loss'], stateful_objective(state.params, batch, key, state.model_state)[0],
      rtol=1e-6)


def test_objective_with_step_keyword_receives_state_step():
  assert train.accepts_step(scheduled_objective)
  assert not train.accepts_step(deterministic_objective)
  assert train.accepts_step(lambda params, batch, key, **kwargs: None)
  tx = optax.sgd(0.1)
  state, batch, key = _state(tx), _batch(), jax.random.key(8)
  step = train.make_train_step(scheduled_objective, tx)
  seen = []
  for _ in range(3):
    state, metrics = step(state, batch, key)
    seen.append(float(metrics['seen_step']))
  assert seen == [0.0, 1.0, 2.0]  # Updates applied before this one.
  assert float(train.make_eval_step(scheduled_objective)(state, batch, key)['seen_step']) == 3.0


def test_donation_consumes_input_state():
  tx = optax.sgd(0.1)
  state, batch, key = _state(tx), _batch(), jax.random.key(9)
  train.make_train_step(deterministic_objective, tx, donate=False)(state, batch, key)
  assert not any(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))
  train.make_train_step(deterministic_objective, tx)(state, batch, key)
  assert all(leaf.is_deleted() for leaf in jax.tree.leaves(state.params))


def test_global_norm():
  tree = {'a': jnp.array([3.0]), 'b': {'c': jnp.array([[4.0, 0.0]])}}
  np.testing.assert_allclose(train.global_norm(tree), 5.0)


def test_finite_metrics_helpers():
  finite = {'loss': jnp.float32(1.0), 'count': jnp.int32(3), 'vec': jnp.ones(2)}
  assert train.is_finite_metrics(finite)
  train.check_finite_metrics(finite, step=4)
  bad = {**finite, 'kl': jnp.float32(np.nan), 'vec': jnp.array([1.0, np.inf])}
  assert not train.is_finite_metrics(bad)
  assert train.nonfinite_metrics(bad) == ['kl', 'vec']
  with pytest.raises(
      FloatingPointError,
      match=r'^Non-finite metrics at step 17: kl=nan, vec=array\(shape=\(2,\), 0 nan, 1 inf\)\.$',
  ):
    train.check_finite_metrics(bad, step=17)


def test_nan_loss_is_reported_by_step_metrics():
  def nan_objective(params, batch, key):
    loss, metrics = deterministic_objective(params, batch, key)
    return loss * jnp.nan, metrics

  tx = optax.sgd(0.1)
  state, metrics = train.make_train_step(nan_objective, tx)(_state(tx), _batch(), jax.random.key(0))
  assert train.nonfinite_metrics(metrics) == ['grad_norm', 'loss']
  with pytest.raises(FloatingPointError, match='step 0: grad_norm=nan, loss=nan'):
    train.check_finite_metrics(metrics, step=int(state.step) - 1)


def test_cpu_steps_keep_convolutions_with_xla():
  """On CPU the jitted steps hand matrix products, not convolutions, to YNNPACK."""
  if jax.default_backend() != 'cpu':
    pytest.skip('a CPU option')
  assert train.compiler_options() == {
      'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}

  def objective(params, batch, key):
    del key
    y = jax.lax.conv_general_dilated(batch['image'], params['params']['w'], (1, 1), 'SAME',
                                     dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
    return jnp.mean(y**2), {}

  tx = optax.sgd(0.1)
  state = train.create_train_state({'params': {'w': jnp.ones((3, 3, 4, 8))}}, tx)
  batch = {'image': jnp.ones((16, 8, 8, 4))}
  step = train.make_train_step(objective, tx, donate=False)
  hlo = step.lower(state, batch, jax.random.key(0)).compile().as_text()
  convolutions = [line for line in hlo.splitlines() if ' convolution(' in line]
  assert convolutions  # The step's convolutions are XLA's own ops ...
  assert not any('__ynn_fusion' in line and 'convolution' in line for line in hlo.splitlines())
  plain = jax.jit(train.train_step_fn(objective, tx)).lower(
      state, batch, jax.random.key(0)).compile().as_text()
  assert plain.count('__ynn_fusion') > hlo.count('__ynn_fusion')  # ... not XLA's default.
