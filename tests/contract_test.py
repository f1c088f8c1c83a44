"""The training contract, for every recipe and every stage.

For each (recipe, stage) the smoke preset is fitted by `ae_jax.training.fit`
in subprocesses (`_contract_worker.py`) and must

  * fit end to end (the reference run, on one device);
  * after a SIGKILL right after step c + 1 (c = the stage's checkpoint
    interval), resume from step c and, after a SIGTERM right after step c + 2
    (exit status 75, a checkpoint at c + 2), resume again and end bitwise
    equal to the reference in the whole state of every stage (params,
    optimizer states, model state, step);
  * with a NaN injected into the state at a non-checkpoint step (c + 2) and at
    a checkpoint step (2c), stop with a `TrainingDivergedError` naming the
    stage, that step and the terms, and keep the checkpoint at c as the latest;
  * on 2 devices (the jit + NamedSharding step) end equal to the one-device
    reference up to float summation order.

Earlier stages are copied from the reference's directories: a finished stage
must be restored, not retrained. Faults come at a chosen step through
AE_JAX_FAULT (`ae_jax.training.faults`), never from the wall clock. All
processes run with 2 fake CPU devices and the same XLA flags (one-device
runs use the first), and share one persistent compilation cache per case.
Every subprocess has a timeout; the one with the 2-device run is retried
once if it hangs or aborts (a rare XLA:CPU all-reduce deadlock on 2 cores, see
tests/_launch_helpers.py).
"""

import os
import pickle
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest

from ae_jax import training
import _launch_helpers as helpers
from _contract_worker import load_config

pytestmark = pytest.mark.integration

WORKER = os.path.join(helpers.REPO, 'tests', '_contract_worker.py')
TIMEOUT = 300

CASES = [
    ('vqvae', 'experiments/configs/vqvae.py:smoke', 'model'),
    ('vqvae', 'experiments/configs/apps/vq_prior.py:smoke', 'prior'),
    ('autoencoder', 'experiments/configs/undercomplete.py:smoke', 'model'),
    ('vae', 'experiments/configs/vae.py:smoke', 'model'),
    ('ladder', 'experiments/configs/ladder_vae.py:smoke', 'model'),
    ('aae', 'experiments/configs/aae.py:smoke', 'model'),
    ('ssaae', 'experiments/configs/aae.py:smoke,semisupervised', 'model'),
    ('sequence_vae', 'experiments/configs/molecule_vae.py:smoke', 'model'),
    ('denoiser', 'experiments/configs/apps/denoise.py:smoke', 'model'),
    ('tcvae', 'experiments/configs/apps/disentangle.py:smoke', 'model'),
    ('diffusion_ae', 'experiments/configs/diffusion_ae.py:smoke', 'model'),
    ('diffusion_ae', 'experiments/configs/diffusion_ae.py:smoke', 'latent'),
    ('wae', 'experiments/configs/wae.py:smoke', 'model'),
    ('wae', 'experiments/configs/wae.py:smoke,infovae', 'model'),
    ('rae', 'experiments/configs/rae.py:smoke', 'model'),
    ('iwae_bounds', 'experiments/configs/miwae.py:smoke', 'model'),
    ('vampprior', 'experiments/configs/vampprior.py:smoke', 'model'),
    ('dip_vae', 'experiments/configs/dip_vae.py:smoke', 'model'),
    ('factor_vae', 'experiments/configs/factor_vae.py:smoke', 'model'),
    ('vqvae', 'experiments/configs/vqvae.py:smoke,fsq', 'model'),
    ('vqvae', 'experiments/configs/vqvae.py:smoke,lfq', 'model'),
]


def _env(tmp_path, fault: str = '') -> dict[str, str]:
  env = helpers.env_with_devices(2)
  env.update(JAX_COMPILATION_CACHE_DIR=str(tmp_path / 'jax_cache'),
             JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
             JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0',
             PYTHONPATH=helpers.REPO)
  env.pop('AE_JAX_FAULT', None)
  if fault:
    env['AE_JAX_FAULT'] = fault
  return env


def _work(tmp_path, *args, fault=''):
  """Runs the worker with `args`; returns (exit status, output, result or None)."""
  out = tmp_path / f'result{len(os.listdir(tmp_path))}.pkl'
  log = f'{out}.log'
  cmd = [sys.executable, WORKER, args[0], args[1], str(args[2]), str(out), *args[3:]]
  with open(log, 'w') as f:
    try:
      code = subprocess.run(cmd, cwd=helpers.REPO, env=_env(tmp_path, fault), stdout=f,
                            stderr=subprocess.STDOUT, timeout=TIMEOUT, check=False).returncode
    except subprocess.TimeoutExpired:
      code = None
  with open(log) as f:
    output = f.read()
  if code is None or code == -signal.SIGABRT:
    raise helpers.Hang(output[-3000:])
  result = None
  if code == 0:
    with open(out, 'rb') as f:
      result = pickle.load(f)
  return code, output, result


def _assert_states(actual, expected, *, exact: bool, what: str):
  for stage in actual:
    a, e = actual[stage]['state'], expected[stage]['state']
    assert a.keys() == e.keys(), (stage, sorted(set(a) ^ set(e)))
    for path in e:
      if exact or not np.issubdtype(e[path].dtype, np.inexact):
        np.testing.assert_array_equal(a[path], e[path], err_msg=f'{what}: {stage}{path}')
      else:
        _assert_close_but_for_a_few(a[path], e[path], err_msg=f'{what}: {stage}{path}')


def _assert_close_but_for_a_few(actual, expected, *, err_msg: str, rtol=2e-3, atol=2e-4):
  """Equal up to float summation order, after a few Adam steps.

  Adam divides each gradient by its running root mean square, so an element
  whose gradient is at rounding level (a unit that barely fires, a weight that
  barely matters) moves by up to the learning rate per step in a direction the
  rounding sets, and a ReLU unit near its threshold can switch for an example
  in one run and not the other: summation order then shows in a handful of
  elements (seen, in the beta-TCVAE's smoke run after 6 steps: 1 of 256
  decoder biases off by 3e-4, its Adam first moment by 2.5e-3 of a largest 0.52).
  A wrong collective or shard moves most elements, and by more. So at least
  98% of the elements must be within (rtol, atol) (all but 2 in a small
  array), and every one within 10 atol plus 1% of the array's largest magnitude.
  """
  actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
  scale = float(np.max(np.abs(expected))) if expected.size else 0.0
  np.testing.assert_allclose(actual, expected, rtol=0, atol=10 * atol + 0.01 * scale,
                             err_msg=err_msg)
  outside = ~np.isclose(actual, expected, rtol=rtol, atol=atol)
  assert outside.sum() <= max(2, 0.02 * outside.size), (
      f'{err_msg}: {outside.sum()} of {outside.size} elements differ beyond rtol={rtol}, '
      f'atol={atol}; largest difference {np.max(np.abs(actual - expected)):.3g}')


@pytest.mark.parametrize('recipe, config_arg, stage', CASES,
                         ids=[f'{r}-{s}' + (f"-{a.partition(',')[2]}" if ',' in a and r == 'vqvae'
                                                  else '') for r, a, s in CASES])
def test_recipe_stage_contract(recipe, config_arg, stage, tmp_path):
  assert load_config(config_arg).recipe == recipe

  def run_reference(root):
    os.makedirs(root, exist_ok=True)
    return (root, *_work(tmp_path, 'reference', config_arg, root, stage))

  root, code, out, result = helpers.with_one_retry(run_reference, tmp_path)
  assert code == 0, out[-4000:]
  reference = result['reference']
  assert stage in reference, f'{recipe} has stages {list(reference)}, not {stage!r}'
  schedule = reference[stage]['schedule']
  c, n = schedule.checkpoint_every_steps, schedule.num_train_steps
  assert n >= 2 * c and n > c + 2, (
      f'the smoke schedule of {recipe}/{stage} (steps {n}, checkpoints every {c}) cannot '
      'place the faults; use num_train_steps >= max(2c, c + 3).')
  assert int(reference[stage]['state']['.step']) == n

  # NaN at a non-checkpoint step, then (resuming) at a checkpoint step.
  for bad_step, error, latest in result['nan']:
    assert error is not None, f'a NaN at step {bad_step} did not stop {recipe}/{stage}'
    assert f"stage '{stage}' diverged at step {bad_step}: non-finite train" in error, error
    assert 'loss' in error and 'All terms:' in error, error
    assert latest == c, f'NaN at step {bad_step}: latest checkpoint {latest}, expected {c}'

  # Two devices: the sharded step equals the one-device step.
  _assert_states(result['two'], reference, exact=False, what='2 devices vs 1')

  # SIGKILL after step c + 1, SIGTERM after step c + 2, then the rest: bitwise.
  stages = list(reference)
  killed = tmp_path / 'killed'
  for s in stages[:stages.index(stage)]:
    shutil.copytree(root / 'reference' / s, killed / s)
  code, out, _ = _work(tmp_path, 'chain', config_arg, killed, fault=f'{stage}:sigkill@{c + 1}')
  assert code == -signal.SIGKILL, out[-4000:]
  assert training.checkpoint.latest_step(str(killed / stage)) == c
  code, out, _ = _work(tmp_path, 'chain', config_arg, killed, fault=f'{stage}:sigterm@{c + 2}')
  assert code == 75, out[-4000:]
  assert f'{stage}: resumed from {killed / stage}/checkpoints at step {c}' in out
  assert f'Preempted: saved a checkpoint at step {c + 2}' in out
  for s in stages[:stages.index(stage)]:  # Finished earlier stages are restored, not retrained.
    assert f'{s}: resumed' not in out
  assert training.checkpoint.latest_step(str(killed / stage)) == c + 2
  code, out, resumed = _work(tmp_path, 'chain', config_arg, killed)
  assert code == 0, out[-4000:]
  assert f'{stage}: resumed from {killed / stage}/checkpoints at step {c + 2}' in out
  _assert_states(resumed, reference, exact=True, what='killed, preempted and resumed')
