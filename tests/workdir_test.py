"""A workdir is one run's, and its faults are survived with nothing lost.

The lock: a second run on a held workdir stops before touching it, naming the
holder; a holder killed with SIGKILL frees it. The metrics file: a torn last
line (killed mid-write) is dropped on resume, a damaged earlier line is an
error naming it. An evaluation lost between its checkpoint and its record is
run again. Checkpoints: a damaged latest one (truncated array file, emptied
metadata) is reported and the one before it restored; a checkpoint of another
model is refused naming the leaves; none restorable is an error, never a
silent restart. A full disk (a real 12 MB tmpfs, where mounting is allowed)
stops the run with one line naming the path, the checkpoints before it
restorable. SIGKILL at random times, saves included, resumes bitwise with a
complete, duplicate-free metrics file; the launcher tests (full disk, a read-only
workdir, two launchers on one workdir) are in the integration tier too.
"""

import dataclasses
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import orbax.checkpoint as ocp
import pytest

from ae_jax import training
from ae_jax.training import checkpoint
from ae_jax.training import workdir as workdir_lib

import _kill_worker as worker

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)


def _stage(num_steps=8):
  return dataclasses.replace(worker.stage(), schedule=dataclasses.replace(
      worker.stage().schedule, num_train_steps=num_steps, checkpoint_every_steps=4))


def _records(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f]


def _keys(records):
  return [(r['step'], r['split']) for r in records]


def _leaves(state):
  return [np.asarray(x) for x in jax.tree.leaves(jax.device_get(state))]


def test_a_held_workdir_is_refused_naming_the_holder(tmp_path):
  with workdir_lib.lock(str(tmp_path)):
    with pytest.raises(workdir_lib.WorkdirInUseError,
                       match=rf'in use by PID {os.getpid()} on host .*another --workdir'):
      training.fit(_stage(), str(tmp_path), faults='')
  assert not (tmp_path / 'checkpoints').exists()  # Refused before anything was written.
  training.fit(_stage(), str(tmp_path), faults='')  # Released: the run goes ahead.


def test_a_holder_killed_with_sigkill_frees_the_workdir(tmp_path):
  holder = subprocess.Popen(
      [sys.executable, '-c', 'import sys, time; sys.path.insert(0, sys.argv[1]);'
       'from ae_jax.training import workdir; ctx = workdir.lock(sys.argv[2]); ctx.__enter__();'
       'print("held", flush=True); time.sleep(120)', REPO, str(tmp_path)],
      stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(workdir_lib.WorkdirInUseError, match=f'PID {holder.pid} '):
      with workdir_lib.lock(str(tmp_path)):
        pass
  finally:
    holder.kill()
    holder.wait()
  with workdir_lib.lock(str(tmp_path)):
    pass


def test_a_torn_last_metrics_line_is_dropped_on_resume(tmp_path, capsys):
  stage = _stage(num_steps=8)
  full = training.fit(stage, str(tmp_path / 'full'), faults='')
  short = dataclasses.replace(stage, schedule=dataclasses.replace(stage.schedule,
                                                                  num_train_steps=4))
  training.fit(short, str(tmp_path / 'resumed'), faults='')
  with open(tmp_path / 'resumed' / 'metrics.jsonl', 'a') as f:
    f.write('{"step": 5, "split": "tr')  # Killed while writing step 5's record.
  resumed = training.fit(stage, str(tmp_path / 'resumed'), faults='')
  assert 'dropped a torn last line' in capsys.readouterr().out
  assert _records(tmp_path / 'resumed') == _records(tmp_path / 'full')
  for a, b in zip(_leaves(resumed.state), _leaves(full.state)):
    np.testing.assert_array_equal(a, b)


def test_a_damaged_earlier_metrics_line_is_named(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  path.write_text('{"step": 1, "split": "train"}\nnot json\n{"step": 2, "split": "train"}\n')
  with pytest.raises(ValueError, match=r'metrics.jsonl line 2 is not a metrics record'):
    workdir_lib.read_records(str(path))


@pytest.mark.parametrize('resume_to', [8, 12])
def test_an_eval_lost_after_its_checkpoint_is_run_again(tmp_path, resume_to):
  stage = _stage(num_steps=8)
  full = training.fit(dataclasses.replace(stage, schedule=dataclasses.replace(
      stage.schedule, num_train_steps=resume_to)), str(tmp_path / 'full'), faults='')
  del full
  training.fit(stage, str(tmp_path / 'cut'), faults='')
  # As a kill after the checkpoint at step 8 and before its eval record leaves it.
  kept = [r for r in _records(tmp_path / 'cut') if (r['step'], r['split']) != (8, 'eval')]
  workdir_lib.write_records(str(tmp_path / 'cut' / 'metrics.jsonl'), kept)
  training.fit(dataclasses.replace(stage, schedule=dataclasses.replace(
      stage.schedule, num_train_steps=resume_to)), str(tmp_path / 'cut'), faults='')
  assert _records(tmp_path / 'cut') == _records(tmp_path / 'full')


def _damage_truncate(step_dir):
  """Halves every data file of the checkpoint (as a disk that lost the end of each write)."""
  for directory, _, names in os.walk(step_dir):
    if os.path.basename(directory) == 'd':
      for name in names:
        path = os.path.join(directory, name)
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)


def _damage_metadata(step_dir):
  open(os.path.join(step_dir, 'default', '_METADATA'), 'w').close()


@pytest.mark.parametrize('damage', [_damage_truncate, _damage_metadata])
def test_a_damaged_latest_checkpoint_falls_back_to_the_one_before(tmp_path, damage, capsys):
  stage = _stage(num_steps=12)
  full = training.fit(stage, str(tmp_path / 'full'), faults='')
  eight = dataclasses.replace(stage, schedule=dataclasses.replace(stage.schedule,
                                                                  num_train_steps=8))
  training.fit(eight, str(tmp_path / 'run'), faults='')
  damage(str(tmp_path / 'run' / 'checkpoints' / '8'))
  resumed = training.fit(stage, str(tmp_path / 'run'), faults='')
  out = capsys.readouterr().out
  assert 'Checkpoint at step 8' in out and 'does not restore' in out
  assert 'resuming from the checkpoint at step 4 instead' in out
  assert (tmp_path / 'run' / 'broken_checkpoints' / '8').is_dir()  # Kept for a post-mortem.
  for a, b in zip(_leaves(resumed.state), _leaves(full.state)):
    np.testing.assert_array_equal(a, b)
  assert _records(tmp_path / 'run') == _records(tmp_path / 'full')


def test_no_restorable_checkpoint_is_an_error_not_a_restart(tmp_path):
  stage = _stage(num_steps=8)
  training.fit(stage, str(tmp_path), faults='')
  for step in (4, 8):
    _damage_metadata(str(tmp_path / 'checkpoints' / str(step)))
  with pytest.raises(checkpoint.CheckpointError,
                     match=r'No checkpoint in .* restores \(step 8: .*; step 4: .*\)'):
    training.fit(stage, str(tmp_path), faults='')


def test_a_checkpoint_of_another_model_is_refused_naming_the_leaves(tmp_path):
  from experiments.configs import vae  # pylint: disable=g-import-not-at-top
  config = vae.get_config('smoke')
  recipe = training.validate(config)
  training.fit(recipe.make_stage(config, 'model', {}), str(tmp_path), faults='')
  changed = vae.get_config('smoke')
  changed.model.latent_dim = 7
  changed.train.num_train_steps = 9
  with pytest.raises(checkpoint.CheckpointMismatchError,
                     match=r'leaves differ: params/params/decoder/layers_0/kernel: checkpoint '
                           r'float32\[20, 400\], this run float32\[7, 400\]'):
    training.fit(recipe.make_stage(changed, 'model', {}), str(tmp_path), faults='')
  assert not (tmp_path / 'broken_checkpoints').exists()  # Nothing moved: not damage.


def _mount_tmpfs(path, size):
  os.makedirs(path, exist_ok=True)
  result = subprocess.run(['mount', '-t', 'tmpfs', '-o', f'size={size}', 'tmpfs', str(path)],
                          capture_output=True, check=False)
  if result.returncode:
    pytest.skip('cannot mount a tmpfs here (needs root): ' + result.stderr.decode().strip())


@pytest.mark.integration
def test_a_full_disk_stops_the_run_with_one_line(tmp_path):
  mount = tmp_path / 'small'
  _mount_tmpfs(mount, '12m')  # Room for the first VAE checkpoint (8 MB), not the second.
  try:
    result = subprocess.run(
        [sys.executable, '-m', 'experiments.main', '--config=experiments/configs/vae.py:smoke',
         '--config.train.num_train_steps=12', f'--workdir={mount}/run'],
        cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
    assert result.returncode == 1, result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    # The last line is the launcher's, naming what could not be written (the
    # checkpoint, or the metrics file if the disk filled up under it first);
    # before it only orbax's own log lines of the failed write, one line each.
    assert re.fullmatch(
        rf'error: Cannot write {re.escape(str(mount))}/run/model/\S+: No space left on '
        r'device\. The run stopped; the checkpoints written before this are kept and a rerun '
        r'resumes from the newest one\.', lines[-1]), result.stderr[-3000:]
    assert len(lines) <= 10 and 'Traceback' not in result.stderr, result.stderr[-3000:]
    assert checkpoint.latest_step(str(mount / 'run' / 'model')) == 3
    shutil.copytree(mount / 'run', tmp_path / 'moved')  # To a disk with room.
  finally:
    subprocess.run(['umount', str(mount)], check=False)
  result = subprocess.run(
      [sys.executable, '-m', 'experiments.main', '--config=experiments/configs/vae.py:smoke',
       '--config.train.num_train_steps=12', f'--workdir={tmp_path}/moved'],
      cwd=REPO, capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'resumed from' in result.stdout and 'at step 3.' in result.stdout
  assert checkpoint.latest_step(str(tmp_path / 'moved' / 'model')) == 12


@pytest.mark.integration
def test_sigkill_at_random_times_resumes_bitwise(tmp_path):
  """10 trials: the worker killed at a uniformly random time of its loop, then rerun."""
  env = dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu')
  env.pop('AE_JAX_FAULT', None)

  def start(workdir, out):
    return subprocess.Popen([sys.executable, os.path.join(HERE, '_kill_worker.py'),
                             str(workdir), str(out)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)

  begin = time.perf_counter()
  reference = start(tmp_path / 'ref', tmp_path / 'ref.npz')
  assert reference.stdout.readline().strip() == 'fitting'
  fitting = time.perf_counter()
  assert reference.wait(timeout=600) == 0
  loop_s = time.perf_counter() - fitting
  want = np.load(tmp_path / 'ref.npz')
  want_records = _records(tmp_path / 'ref')
  rng = random.Random(0)
  killed_at = []
  for trial in range(10):
    workdir, out = tmp_path / f't{trial}', tmp_path / f't{trial}.npz'
    victim = start(workdir, out)
    assert victim.stdout.readline().strip() == 'fitting'
    delay = rng.uniform(0.0, loop_s)
    time.sleep(delay)
    victim.send_signal(signal.SIGKILL)
    victim.wait(timeout=60)
    killed_at.append((round(delay, 2), checkpoint.latest_step(str(workdir))))
    rerun = start(workdir, out)
    assert rerun.wait(timeout=600) == 0, f'trial {trial} did not resume'
    got = np.load(out)
    for name in want.files:
      np.testing.assert_array_equal(got[name], want[name], err_msg=f'trial {trial} {name}')
    records = _records(workdir)
    assert len(set(_keys(records))) == len(records), f'trial {trial}: duplicate records'
    assert records == want_records, f'trial {trial}: metrics differ'
  print('killed at (s into the loop, latest checkpoint then):', killed_at,
        f'loop {loop_s:.1f} s, all {time.perf_counter() - begin:.0f} s')


def test_a_nan_eval_stops_the_run_and_writes_no_record(tmp_path):
  stage = _stage(num_steps=8)
  images = np.full((10, *worker.IMAGE_SHAPE), np.nan, np.float32)
  bad = dataclasses.replace(stage, eval_data=lambda: iter([{'image': images}]))
  with pytest.raises(training.TrainingDivergedError, match=r'at step 4: non-finite eval'):
    training.fit(bad, str(tmp_path), faults='')
  assert all(r['split'] == 'train' for r in _records(tmp_path))
  assert checkpoint.latest_step(str(tmp_path)) == 4  # Written before the eval; kept.


@pytest.mark.integration
def test_a_second_launcher_on_a_running_workdir_exits_at_once(tmp_path):
  command = [sys.executable, '-m', 'experiments.main', '--config=experiments/configs/vae.py:smoke',
             '--config.train.num_train_steps=300', '--config.train.checkpoint_every_steps=50',
             '--config.train.eval_every_steps=100', f'--workdir={tmp_path}']
  first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True)
  try:
    assert first.stdout.readline().startswith('Devices:')  # It holds the workdir.
    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300,
                            check=False)
    assert second.returncode == 2, second.stderr[-2000:]
    assert second.stderr.strip().splitlines()[-1].startswith(
        f'error: {tmp_path} is in use by PID {first.pid} on host ')
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
  finally:
    first.kill()
  records = _records(tmp_path / 'model')
  assert len(set(_keys(records))) == len(records)  # One run's records, once each.
  assert sorted(int(d) for d in os.listdir(tmp_path / 'model' / 'checkpoints')) == [200, 250, 300]


@pytest.mark.integration
def test_an_unwritable_workdir_is_one_line(tmp_path):
  mount = tmp_path / 'ro'
  _mount_tmpfs(mount, '1m')
  try:
    subprocess.run(['mount', '-o', 'remount,ro', str(mount)], check=True)
    result = subprocess.run(
        [sys.executable, '-m', 'experiments.main', '--config=experiments/configs/vae.py:smoke',
         f'--workdir={mount}/run'], cwd=REPO, capture_output=True, text=True, timeout=600,
        check=False)
  finally:
    subprocess.run(['umount', str(mount)], check=False)
  assert result.returncode == 1, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      f'error: Cannot write {mount}/run: Read-only file system. The run stopped; the '
      'checkpoints written before this are kept and a rerun resumes from the newest one.']
