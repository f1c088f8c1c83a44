"""The launcher end to end: every smoke preset, resume after SIGKILL or SIGTERM, NaN stop,
bad configs, two devices against one."""

import glob
import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ae_jax import runner
from experiments.configs import undercomplete
from experiments.main import EXIT_PREEMPTED

import _launch_helpers as helpers

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = sorted(
    os.path.basename(p)[:-3] for p in glob.glob(os.path.join(REPO, 'experiments/configs/*.py'))
    if not os.path.basename(p).startswith(('_', 'common')))


def _launch(config_arg, workdir, *overrides, **popen_kwargs):
  cmd = [sys.executable, '-m', 'experiments.main', f'--config={config_arg}',
         f'--workdir={workdir}', *overrides]
  env = dict(os.environ, PYTHONUNBUFFERED='1')
  return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, **popen_kwargs)


def _run(config_arg, workdir, *overrides, timeout=240):
  proc = _launch(config_arg, workdir, *overrides)
  out, _ = proc.communicate(timeout=timeout)
  return proc.returncode, out


def test_every_config_is_found():
  assert {'undercomplete', 'sparse_l1', 'sparse_kl', 'denoising', 'contractive', 'vae',
          'beta_vae', 'conv_ae', 'conv_vae', 'vqvae'} <= set(CONFIGS)


@pytest.mark.parametrize('name', CONFIGS)
def test_smoke_preset_runs_end_to_end_through_the_launcher(name, tmp_path):
  code, out = _run(f'experiments/configs/{name}.py:smoke', tmp_path)
  assert code == 0, out
  assert 'Test metrics:' in out
  lines = (tmp_path / 'metrics.jsonl').read_text().splitlines()
  assert any('"split": "eval"' in line for line in lines)
  for figure in ('reconstructions.png', 'latent_map.png', 'training_curves.png'):
    assert (tmp_path / 'figures' / figure).stat().st_size > 1000, figure
  assert glob.glob(str(tmp_path / 'tensorboard' / 'events.*'))
  assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '6']


def _restore_params(workdir):
  manager = ocp.CheckpointManager(os.path.join(workdir, 'checkpoints'))
  step = manager.latest_step()
  restored = manager.restore(step, args=ocp.args.StandardRestore())
  manager.close()
  return step, restored['params']


def test_sigkill_then_resume_ends_bitwise_equal(tmp_path):
  overrides = ['--config.train.num_train_steps=1500', '--config.train.checkpoint_every_steps=100',
               '--config.train.eval_every_steps=1500', '--config.train.log_every_steps=100']
  config_arg = 'experiments/configs/undercomplete.py:smoke'
  reference_dir, killed_dir = tmp_path / 'reference', tmp_path / 'killed'

  proc = _launch(config_arg, killed_dir, *overrides)
  deadline = time.time() + 240
  while not (killed_dir / 'checkpoints' / '200').exists():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  killed_at, _ = _restore_params(killed_dir)
  assert 200 <= killed_at < 1500, f'the kill came after the run finished ({killed_at})'

  code, out = _run(config_arg, killed_dir, *overrides)
  assert code == 0, out
  assert f'Resumed from {killed_dir}/checkpoints at step {killed_at}' in out
  code, out = _run(config_arg, reference_dir, *overrides)
  assert code == 0, out

  step_a, resumed = _restore_params(killed_dir)
  step_b, reference = _restore_params(reference_dir)
  assert step_a == step_b == 1500
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)


def test_nan_data_stops_with_the_step_and_terms_and_keeps_checkpoints(tmp_path, monkeypatch):
  config = undercomplete.get_config('smoke')
  config.train.num_train_steps = 8
  config.train.checkpoint_every_steps = 3
  real = runner._data_iterator  # pylint: disable=protected-access

  def poisoned(config, split, *, start_step=0, **kwargs):
    for step, batch in enumerate(real(config, split, start_step=start_step, **kwargs),
                                 start=start_step + 1):
      if split == config.data.train_split and step == 5:
        batch = dict(batch, image=np.full_like(batch['image'], np.nan))
      yield batch

  monkeypatch.setattr(runner, '_data_iterator', poisoned)
  with pytest.raises(runner.TrainingDivergedError, match=r'step 5.*loss.*recon'):
    runner.train_and_evaluate(config, str(tmp_path))
  step, params = _restore_params(str(tmp_path))
  assert step == 3
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(params))


def test_unknown_config_key_is_rejected_by_the_launcher(tmp_path):
  code, out = _run('experiments/configs/vae.py:smoke', tmp_path, '--config.loss.betta=2')
  assert code != 0
  assert 'betta' in out
  assert not (tmp_path / 'checkpoints').exists()


@pytest.mark.parametrize('field, value, message', [
    ('loss.beta', -1.0, 'beta must be >= 0'),
    ('model.latent_dim', 0, 'latent_dim must be > 0'),
    ('data.batch_size', 0, 'batch_size must be > 0'),
    ('variant', 'vqvae', 'does not fit variant'),
])
def test_invalid_values_are_rejected_before_training(field, value, message, tmp_path):
  from experiments.configs import vae  # pylint: disable=g-import-not-at-top
  config = vae.get_config('smoke')
  section, _, name = field.rpartition('.')
  (config[section] if section else config)[name] = value
  with pytest.raises(ValueError, match=message):
    runner.train_and_evaluate(config, str(tmp_path))
  assert not (tmp_path / 'checkpoints').exists()


def test_unknown_preset_is_rejected():
  with pytest.raises(ValueError, match='Unknown preset'):
    undercomplete.get_config('huge')


# Several devices, preemption. The multi-device runs are subprocesses with fake
# CPU devices and a timeout (tests/_launch_helpers.py); a hang or an XLA abort is
# retried once from scratch, a wrong answer never.

LAUNCH_TIMEOUT_S = 120
# Same global batch and keys on 1 and 2 devices; only the gradient all-reduce's
# summation order differs: float32 rounding.
PARAMS_ATOL = 1e-5


def test_two_devices_train_like_one_and_their_checkpoint_resumes_on_one(tmp_path):
  # The VAE draws noise in the step: the replicated key must give the same draws.
  config_arg = 'experiments/configs/vae.py:smoke'

  def body(root):
    root.mkdir()
    one, two = root / 'one', root / 'two'
    (code, out_one), = helpers.wait(
        [helpers.launch(config_arg, one, '--config.train.num_train_steps=9')], LAUNCH_TIMEOUT_S)
    assert code == 0, out_one
    (code, out_two), = helpers.wait([helpers.launch(config_arg, two, num_devices=2)],
                                    LAUNCH_TIMEOUT_S)
    assert code == 0, out_two
    return one, two, out_one, out_two

  one, two, out_one, out_two = helpers.with_one_retry(body, tmp_path)
  assert 'Devices: 1 x cpu in 1 process(es); single-device step.' in out_one
  assert 'Devices: 2 x cpu in 1 process(es); data-parallel step over the mesh.' in out_two

  _, at_6_one = helpers.restore(one, 6)
  step, at_6_two = helpers.restore(two)
  assert step == 6
  diff_6 = helpers.max_abs_diff(at_6_two['params'], at_6_one['params'])
  print(f'step 6: max |params(2 devices) - params(1 device)| = {diff_6:.3g}')
  assert diff_6 <= PARAMS_ATOL
  assert helpers.max_abs_diff(at_6_two['opt_state'], at_6_one['opt_state']) <= PARAMS_ATOL

  # The 2-device checkpoint resumes on 1 device and goes on like the 1-device run.
  (code, out), = helpers.wait(
      [helpers.launch(config_arg, two, '--config.train.num_train_steps=9',
                      log_path=f'{two}.resume.log')], LAUNCH_TIMEOUT_S)
  assert code == 0, out
  assert 'Devices: 1 x cpu' in out and f'Resumed from {two}/checkpoints at step 6.' in out
  _, at_9_one = helpers.restore(one, 9)
  step, at_9_two = helpers.restore(two)
  assert step == 9
  diff_9 = helpers.max_abs_diff(at_9_two['params'], at_9_one['params'])
  print(f'step 9: max |params(2 then 1 devices) - params(1 device)| = {diff_9:.3g}')
  assert diff_9 <= PARAMS_ATOL
  # The comparisons mean something only if training moved the parameters.
  assert helpers.max_abs_diff(at_9_one['params'], at_6_one['params']) > 100 * PARAMS_ATOL


def test_sigterm_saves_exits_tempfail_and_the_resumed_run_ends_bitwise_equal(tmp_path):
  overrides = ['--config.train.num_train_steps=1500', '--config.train.checkpoint_every_steps=100',
               '--config.train.eval_every_steps=1500', '--config.train.log_every_steps=100']
  config_arg = 'experiments/configs/undercomplete.py:smoke'
  reference_dir, preempted_dir = tmp_path / 'reference', tmp_path / 'preempted'

  proc = _launch(config_arg, preempted_dir, *overrides)
  deadline = time.time() + 240
  while not (preempted_dir / 'checkpoints' / '200').exists():
    assert proc.poll() is None, proc.stdout.read()
    assert time.time() < deadline
    time.sleep(0.02)
  proc.send_signal(signal.SIGTERM)
  out, _ = proc.communicate(timeout=120)
  assert proc.returncode == EXIT_PREEMPTED == 75, out
  match = re.search(r'Preempted: saved a checkpoint at step (\d+) in (\S+); run the same command '
                    r'again to resume from it\.', out)
  assert match, out
  stop_step = int(match.group(1))
  assert 200 <= stop_step < 1500, f'the signal came after the run finished ({stop_step})'
  assert _restore_params(preempted_dir)[0] == stop_step  # Saved at the step it stopped.
  assert 'Test metrics' not in out  # Stops at once: no eval, no figures.

  code, out = _run(config_arg, preempted_dir, *overrides)
  assert code == 0, out
  assert f'Resumed from {preempted_dir}/checkpoints at step {stop_step}.' in out
  code, out = _run(config_arg, reference_dir, *overrides)
  assert code == 0, out

  step_a, resumed = _restore_params(preempted_dir)
  step_b, reference = _restore_params(reference_dir)
  assert step_a == step_b == 1500
  jax.tree.map(np.testing.assert_array_equal, resumed, reference)
  # The resumed run's records continue the preempted run's, with no step twice.
  lines = (preempted_dir / 'metrics.jsonl').read_text().splitlines()
  records = [json.loads(line) for line in lines]
  keys = [(r['step'], r['split']) for r in records]
  assert len(set(keys)) == len(keys)
  assert [r['step'] for r in records if r['split'] == 'train'] == list(range(100, 1501, 100))


def test_sigterm_in_process_stops_after_that_step_and_restores_the_handler(tmp_path, monkeypatch):
  config = undercomplete.get_config('smoke')
  config.train.num_train_steps = 8
  real = runner._data_iterator  # pylint: disable=protected-access

  def signalling(config, split, *, start_step=0, **kwargs):
    for step, batch in enumerate(real(config, split, start_step=start_step, **kwargs),
                                 start=start_step + 1):
      if split == config.data.train_split and step == 5:
        os.kill(os.getpid(), signal.SIGTERM)  # Arrives before step 5 runs.
      yield batch

  monkeypatch.setattr(runner, '_data_iterator', signalling)
  calls = []
  previous = signal.signal(signal.SIGTERM, lambda *args: calls.append(args))
  try:
    with pytest.raises(runner.Preempted, match='step 5') as raised:
      runner.train_and_evaluate(config, str(tmp_path))
    assert raised.value.step == 5
    assert raised.value.checkpoint_dir == str(tmp_path / 'checkpoints')
    assert sorted(os.listdir(tmp_path / 'checkpoints')) == ['3', '5']
    assert calls == []  # The runner's handler took the signal ...
    os.kill(os.getpid(), signal.SIGTERM)
    assert len(calls) == 1  # ... and gave the previous handler back.
  finally:
    signal.signal(signal.SIGTERM, previous)
