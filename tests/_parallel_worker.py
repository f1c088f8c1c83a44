"""Data-parallel equivalence checks, run by `parallel_test.py` in a subprocess.

Not collected by pytest (the name does not end in ``_test.py``). The parent sets
``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before this process starts
JAX; a subprocess keeps a possible XLA abort on fake CPU devices (a known
XLA:CPU collective issue on 2 cores) from killing the pytest session. Every step is blocked on,
which avoids the async all-reduce hang seen on 2 cores.

Run: ``python tests/_parallel_worker.py`` prints one JSON line, a dict from check
name to numbers (max absolute differences, flags, error messages). The same
`report` also runs in-process on one device.

Checks, all from the same initial parameters and the same global batches:

* ``*_pmap`` / ``*_sharded``: N Adam steps of the pmap step and of the jit +
  NamedSharding step against N steps of the single-device step, for a
  deterministic and a stateful objective (model state compared too).
* ``stochastic_sharded``: the same for a denoising objective; equal because the
  sharded program draws the global noise array from the same key.
* ``stochastic_pmap``: the pmap step against a reference written here from the
  documented semantics: replica ``i`` uses ``fold_in(fold_in(key, step), i)`` on
  its shard and the gradients are averaged.
* ``generic_sharded``: `parallel.shard_train_step` of a pure step of the kind
  a recipe's stage brings to `ae_jax.training.fit` (a dict state with two
  optimizer states and an int32 step, noise from the step's key) against the
  same step jitted on one device.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import parallel
from ae_jax import train
from _tiny_objectives import deterministic_objective
from _tiny_objectives import EMA_DECAY
from _tiny_objectives import IMAGE_SHAPE
from _tiny_objectives import MODEL
from _tiny_objectives import mse as _mse
from _tiny_objectives import stateful_objective
from _tiny_objectives import zero_stats

NUM_STEPS = 5
BATCH_SIZE = 8  # Global; divisible by 1 and 2 devices.
NOISE_SIGMA = 0.3


def stochastic_objective(params, batch, key):
  x = batch['image']
  noisy = x + NOISE_SIGMA * jax.random.normal(key, x.shape)
  loss = _mse(params, noisy, x)
  return loss, {'recon': loss}


def _init_state(tx, stateful: bool) -> train.TrainState:
  x = jnp.zeros((1, *IMAGE_SHAPE))
  params = MODEL.init(jax.random.key(0), x)
  model_state = None
  if stateful:
    model_state = zero_stats()
  return train.create_train_state(params, tx, model_state)


def _batches() -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(0)
  return [
      {
          'image': rng.uniform(size=(BATCH_SIZE, *IMAGE_SHAPE)).astype(np.float32),
          'label': rng.integers(0, 10, size=(BATCH_SIZE,)).astype(np.int32),
      }
      for _ in range(NUM_STEPS)
  ]


def _block(tree):
  return jax.block_until_ready(tree)


def _run_single(objective, tx, stateful, key):
  state = _init_state(tx, stateful)
  step = train.make_train_step(objective, tx)
  for batch in _batches():
    state, _ = _block(step(state, batch, key))
  return state


def _run_pmap(objective, tx, stateful, key):
  state = parallel.replicate(_init_state(tx, stateful))
  step = parallel.make_pmap_train_step(objective, tx)
  for batch in _batches():
    state, metrics = _block(step(state, parallel.split_batch(batch), key))
  return parallel.unreplicate(state), parallel.unreplicate(metrics)


def _run_sharded(objective, tx, stateful, key):
  mesh = parallel.make_mesh()
  state = parallel.replicate_on_mesh(_init_state(tx, stateful), mesh)
  step = parallel.make_sharded_train_step(objective, tx, mesh)
  for batch in _batches():
    state, metrics = _block(step(state, parallel.shard_batch(batch, mesh), key))
  return state, metrics


def _run_pmap_reference(objective, tx, key):
  """Single-device emulation of the documented pmap semantics for a stochastic objective."""
  n = jax.local_device_count()
  state = _init_state(tx, stateful=False)
  grad_fn = jax.jit(jax.grad(lambda p, b, k: objective(p, b, k)[0]))
  params, opt_state = state.params, state.opt_state
  for step, batch in enumerate(_batches()):
    shards = parallel.split_batch(batch, n)
    step_key = jax.random.fold_in(key, step)
    grads = [
        grad_fn(params, jax.tree.map(lambda x: x[i], shards), jax.random.fold_in(step_key, i))
        for i in range(n)
    ]
    grads = jax.tree.map(lambda *g: sum(g) / n, *grads)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = _block(optax.apply_updates(params, updates))
  return params


def _two_optimizer_step(tx_a, tx_b):
  """A pure step over a dict state: a noisy gradient step with `tx_a`, then a
  clean one with `tx_b` from the updated parameters (two phases, as the AAE's)."""

  def step(state, batch, key):
    key = jax.random.fold_in(key, state['step'])
    loss = lambda params, x: _mse(params, x, batch['image'])
    noisy = batch['image'] + NOISE_SIGMA * jax.random.normal(key, batch['image'].shape)
    loss_a, grads = jax.value_and_grad(loss)(state['params'], noisy)
    updates, opt_a = tx_a.update(grads, state['opt_a'], state['params'])
    params = optax.apply_updates(state['params'], updates)
    loss_b, grads = jax.value_and_grad(loss)(params, batch['image'])
    updates, opt_b = tx_b.update(grads, state['opt_b'], params)
    params = optax.apply_updates(params, updates)
    new_state = {'step': state['step'] + 1, 'params': params, 'opt_a': opt_a, 'opt_b': opt_b}
    return new_state, {'loss_a': loss_a, 'loss_b': loss_b}

  return step


def _run_generic(sharded: bool, key):
  tx_a, tx_b = optax.adam(1e-2), optax.sgd(0.1)
  params = MODEL.init(jax.random.key(0), jnp.zeros((1, *IMAGE_SHAPE)))
  state = {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_a': tx_a.init(params),
           'opt_b': tx_b.init(params)}
  step = _two_optimizer_step(tx_a, tx_b)
  if sharded:
    mesh = parallel.make_mesh()
    state = parallel.replicate_on_mesh(state, mesh)
    step = parallel.shard_train_step(step, mesh)
    put = lambda batch: parallel.shard_batch(batch, mesh)
  else:
    step = jax.jit(step)
    put = lambda batch: jax.tree.map(jnp.asarray, batch)
  for batch in _batches():
    state, metrics = _block(step(state, put(batch), key))
  return state, metrics


def _max_abs_diff(a, b) -> float:
  diffs = jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a,
      b,
  )
  return max(jax.tree.leaves(diffs))


def _max_abs(a) -> float:
  return max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(a))


def _error_message(fn) -> str | None:
  try:
    fn()
  except ValueError as e:
    return str(e)
  return None


def report() -> dict[str, Any]:
  """Runs every check on the current devices; returns JSON-serialisable results."""
  tx = optax.adam(1e-2)
  key = jax.random.key(42)
  out: dict[str, Any] = {'device_count': jax.device_count()}

  for name, objective, stateful in [
      ('deterministic', deterministic_objective, False),
      ('stateful', stateful_objective, True),
  ]:
    single = _run_single(objective, tx, stateful, key)
    out[f'{name}_params_moved'] = _max_abs_diff(single.params, _init_state(tx, stateful).params)
    out[f'{name}_params_max_abs'] = _max_abs(single.params)
    for path, run in [('pmap', _run_pmap), ('sharded', _run_sharded)]:
      state, metrics = run(objective, tx, stateful, key)
      out[f'{name}_{path}_step'] = int(state.step)
      out[f'{name}_{path}_params'] = _max_abs_diff(state.params, single.params)
      out[f'{name}_{path}_opt_state'] = _max_abs_diff(state.opt_state, single.opt_state)
      out[f'{name}_{path}_metric_keys'] = sorted(metrics)
      if stateful:
        out[f'{name}_{path}_model_state'] = _max_abs_diff(state.model_state, single.model_state)
        out[f'{name}_{path}_updates'] = int(state.model_state['stats']['updates'])
    if stateful:
      expected_ema = np.zeros(IMAGE_SHAPE)
      for batch in _batches():
        expected_ema = EMA_DECAY * expected_ema + (1 - EMA_DECAY) * batch['image'].mean(0)
      out['stateful_single_ema'] = _max_abs_diff(single.model_state['stats']['ema'], expected_ema)

  single = _run_single(stochastic_objective, tx, False, key)
  sharded, _ = _run_sharded(stochastic_objective, tx, False, key)
  out['stochastic_sharded_params'] = _max_abs_diff(sharded.params, single.params)
  pmapped, _ = _run_pmap(stochastic_objective, tx, False, key)
  out['stochastic_pmap_params'] = _max_abs_diff(pmapped.params, _run_pmap_reference(
      stochastic_objective, tx, key))
  out['stochastic_pmap_vs_single'] = _max_abs_diff(pmapped.params, single.params)

  single, _ = _run_generic(False, key)
  sharded, metrics = _run_generic(True, key)
  out['generic_sharded_step'] = int(sharded['step'])
  out['generic_sharded_state'] = _max_abs_diff(sharded, single)
  out['generic_sharded_metric_keys'] = sorted(metrics)

  mesh = parallel.make_mesh()
  odd = {'image': np.zeros((2 * mesh.size + 1, *IMAGE_SHAPE), np.float32)}
  out['shard_batch_error'] = _error_message(lambda: parallel.shard_batch(odd, mesh))
  out['split_batch_error'] = _error_message(lambda: parallel.split_batch(odd))
  return out


if __name__ == '__main__':
  print(json.dumps(report()))
  sys.stdout.flush()
