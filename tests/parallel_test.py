"""Tests for ae_jax.parallel.

The two-device checks run `_parallel_worker.py` once in a subprocess with two fake
CPU devices (XLA flags must be set before JAX starts, and an XLA abort there
cannot take pytest down); the tests below assert on its JSON report. The other
tests run in-process on the session's single CPU device.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from ae_jax import parallel
from ae_jax import train

# The multi-device tests share one subprocess worker (the `report` fixture): they
# are in the integration tier, on one pytest worker (--dist loadgroup), so it runs once.

WORKER = pathlib.Path(__file__).with_name('_parallel_worker.py')
NUM_FAKE_DEVICES = 2
WORKER_TIMEOUT_S = 240
# Adam normalises gradients, so summation-order noise in the all-reduce stays at
# float32 rounding of the parameters (|params| < 2 here).
RTOL, ATOL = 1e-5, 1e-6


def _run_worker() -> subprocess.CompletedProcess:
  env = dict(os.environ)
  env['XLA_FLAGS'] = (
      f'--xla_force_host_platform_device_count={NUM_FAKE_DEVICES} '
      '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
  )
  env['JAX_PLATFORMS'] = 'cpu'
  root = str(pathlib.Path(__file__).resolve().parents[1])
  env['PYTHONPATH'] = os.pathsep.join(filter(None, [root, env.get('PYTHONPATH')]))
  return subprocess.run(
      [sys.executable, str(WORKER)],
      env=env,
      capture_output=True,
      text=True,
      timeout=WORKER_TIMEOUT_S,
  )


@pytest.fixture(scope='module')
def report():
  # One retry, only for a hang or an abort (rc < 0: killed by a signal), the
  # rare XLA:CPU collective deadlock on 2 fake devices; wrong
  # numbers are never retried because the worker then exits normally.
  for attempt in range(2):
    try:
      result = _run_worker()
    except subprocess.TimeoutExpired:
      if attempt:
        raise
      continue
    if result.returncode < 0 and not attempt:
      continue
    assert result.returncode == 0, result.stderr[-4000:]
    return json.loads(result.stdout.strip().splitlines()[-1])


@pytest.mark.integration
@pytest.mark.xdist_group('parallel_worker')
def test_worker_saw_fake_devices(report):
  assert report['device_count'] == NUM_FAKE_DEVICES


@pytest.mark.integration
@pytest.mark.xdist_group('parallel_worker')
@pytest.mark.parametrize('objective', ['deterministic', 'stateful'])
@pytest.mark.parametrize('path', ['pmap', 'sharded'])
def test_data_parallel_matches_single_device(report, objective, path):
  # Five Adam steps on the same global batches from the same parameters.
  tolerance = ATOL + RTOL * report[f'{objective}_params_max_abs']
  assert report[f'{objective}_{path}_step'] == 5
  assert report[f'{objective}_{path}_params'] <= tolerance
  assert report[f'{objective}_{path}_opt_state'] <= tolerance
  assert report[f'{objective}_{path}_metric_keys'] == ['grad_norm', 'loss', 'recon']
  # The comparison means something only if training moved the parameters.
  assert report[f'{objective}_params_moved'] > 1e3 * tolerance


@pytest.mark.integration
@pytest.mark.xdist_group('parallel_worker')
@pytest.mark.parametrize('path', ['pmap', 'sharded'])
def test_stateful_model_state_matches_single_device(report, path):
  # EMA of per-replica batch means, pmean-ed, is the EMA of the global batch mean.
  assert report[f'stateful_{path}_model_state'] <= ATOL
  assert report[f'stateful_{path}_updates'] == 5  # Integer leaves are not averaged.
  assert report['stateful_single_ema'] <= ATOL  # Against the closed form in numpy.


@pytest.mark.integration
@pytest.mark.xdist_group('parallel_worker')
def test_sharded_stochastic_objective_matches_single_device(report):
  # The sharded program draws the global noise array from the same key.
  assert report['stochastic_sharded_params'] <= ATOL + RTOL * report['deterministic_params_max_abs']


@pytest.mark.integration
@pytest.mark.xdist_group('parallel_worker')
def test_pmap_stochastic_objective_uses_per_replica_keys(report):
  # Matches a reference that folds the replica index into the step key ...
  assert report['stochastic_pmap_params'] <= ATOL + RTOL * report['deterministic_params_max_abs']
  # ... and therefore differs from the single-device run.
  assert report['stochastic_pmap_vs_single'] > 1e-3


@pytest.mark.integration
@pytest.mark.xdist_group('parallel_worker')
def test_shard_train_step_of_any_pure_step_matches_single_device(report):
  # The path `ae_jax.training.fit` takes on several devices, for a state that is
  # not a TrainState: a dict with two optimizer states and a step counter.
  assert report['generic_sharded_step'] == 5
  assert report['generic_sharded_metric_keys'] == ['loss_a', 'loss_b']
  assert report['generic_sharded_state'] <= ATOL + RTOL * report['deterministic_params_max_abs']


@pytest.mark.integration
@pytest.mark.xdist_group('parallel_worker')
def test_shard_batch_names_batch_size_and_device_count(report):
  assert report['shard_batch_error'] == (
      'Global batch size 5 is not divisible by the number of devices 2 in the mesh.'
  )
  assert report['split_batch_error'] == 'Batch size 5 is not divisible by the number of devices 2.'


# In-process tests on one device.


def test_replicate_unreplicate_round_trip():
  tree = {'a': jnp.arange(6.0).reshape(2, 3), 'step': jnp.asarray(3, jnp.int32)}
  replicated = parallel.replicate(tree)
  n = jax.local_device_count()
  assert replicated['a'].shape == (n, 2, 3)
  assert replicated['step'].shape == (n,)
  back = parallel.unreplicate(replicated)
  np.testing.assert_array_equal(back['a'], tree['a'])
  assert back['step'].dtype == jnp.int32 and int(back['step']) == 3


def test_split_batch_shapes_and_order():
  batch = {'image': np.arange(12.0).reshape(6, 2), 'label': np.arange(6)}
  split = parallel.split_batch(batch, 3)
  assert split['image'].shape == (3, 2, 2)
  np.testing.assert_array_equal(split['label'], [[0, 1], [2, 3], [4, 5]])


def test_make_mesh_is_one_auto_data_axis():
  mesh = parallel.make_mesh()
  assert mesh.axis_names == ('data',)
  assert mesh.size == jax.device_count()
  assert mesh.axis_types == (jax.sharding.AxisType.Auto,)
  with pytest.raises(ValueError, match='num_devices must be in'):
    parallel.make_mesh(jax.device_count() + 1)


def test_shard_batch_layout():
  mesh = parallel.make_mesh()
  batch = {'image': np.ones((4, 2), np.float32), 'label': np.arange(4, dtype=np.int32)}
  sharded = parallel.shard_batch(batch, mesh)
  assert sharded['image'].sharding == parallel.batch_sharding(mesh)
  assert sharded['image'].shape == (4, 2)
  np.testing.assert_array_equal(sharded['label'], batch['label'])
  with pytest.raises(ValueError, match='different leading sizes'):
    parallel.shard_batch({'a': np.ones(4), 'b': np.ones(3)}, mesh)


def test_process_batch_slice_single_process():
  assert parallel.process_batch_slice(8) == slice(0, 8)


def _objective(params, batch, key):
  del key
  loss = jnp.mean((batch['image'] - params['params']['b']) ** 2)
  return loss, {'abs_b': jnp.abs(params['params']['b'])}


@pytest.mark.parametrize('path', ['pmap', 'sharded'])
def test_one_device_paths_and_eval_steps(path):
  # d/db mean((x - b)^2) = 2 (b - mean x); one SGD step with lr 0.25 from b = 0 on
  # x = 2 gives b = 0.25 * 2 * 2 = 1, loss 4 and grad_norm 4.
  tx = optax.sgd(0.25)
  state = train.create_train_state({'params': {'b': jnp.zeros(())}}, tx)
  batch = {'image': np.full((4, 3), 2.0, np.float32)}
  key = jax.random.key(0)
  if path == 'pmap':
    step = parallel.make_pmap_train_step(_objective, tx, donate=False)
    eval_step = parallel.make_pmap_eval_step(_objective)
    state, metrics = step(parallel.replicate(state), parallel.split_batch(batch), key)
    eval_metrics = parallel.unreplicate(eval_step(state, parallel.split_batch(batch), key))
    state, metrics = parallel.unreplicate((state, metrics))
  else:
    mesh = parallel.make_mesh()
    step = parallel.make_sharded_train_step(_objective, tx, mesh, donate=False)
    eval_step = parallel.make_sharded_eval_step(_objective, mesh)
    state, metrics = step(state, parallel.shard_batch(batch, mesh), key)
    eval_metrics = eval_step(state, parallel.shard_batch(batch, mesh), key)
  assert int(state.step) == 1
  np.testing.assert_allclose(state.params['params']['b'], 1.0, rtol=1e-6)
  np.testing.assert_allclose(metrics['loss'], 4.0, rtol=1e-6)
  np.testing.assert_allclose(metrics['grad_norm'], 4.0, rtol=1e-6)
  np.testing.assert_allclose(metrics['abs_b'], 0.0)
  # Evaluated after the step: b = 1, loss = (2 - 1)^2.
  np.testing.assert_allclose(eval_metrics['loss'], 1.0, rtol=1e-6)
  np.testing.assert_allclose(eval_metrics['abs_b'], 1.0, rtol=1e-6)
