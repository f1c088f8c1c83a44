"""Multi-process training through the launcher: 2 processes x 2 fake CPU devices.

The processes find each other through `jax.distributed.initialize` on
127.0.0.1 (gloo collectives) and share one workdir, as hosts of a pod share a
filesystem; the one stage of these recipes trains into <workdir>/model/. Each run is a set of subprocesses with a timeout; a hang or an
XLA abort (the rare CPU collective deadlock, see _launch_helpers.py) is retried
once from scratch, a wrong answer never.
"""

import json
import re
import signal
import time

import pytest

from experiments.main import EXIT_PREEMPTED

import _launch_helpers as helpers

pytestmark = pytest.mark.integration

TIMEOUT_S = 300  # Guards against a hang (retried once), not a time limit.
# Same global batches and keys; only the all-reduce's summation order differs
# (gloo across processes vs XLA's in-process reduction): float32 rounding.
PARAMS_ATOL = 1e-5


def _records(workdir):
  with open(workdir / 'model' / 'metrics.jsonl') as f:
    return [json.loads(line) for line in f]


def test_two_processes_train_like_one_process_with_four_devices(tmp_path):
  # A stochastic objective with per-step binarization: the model's noise and the
  # data's are both drawn for the global batch, then each process takes its rows.
  config_arg = 'experiments/configs/vae.py:smoke'
  overrides = ('--config.data.binarize=True',)

  def body(root):
    root.mkdir()
    multi, single = root / 'multi', root / 'single'
    procs = helpers.launch_processes(config_arg, multi, *overrides)
    results = helpers.wait(procs, TIMEOUT_S)
    for code, out in results:
      assert code == 0, out
    (code, out), = helpers.wait([helpers.launch(config_arg, single, *overrides, num_devices=4)],
                                TIMEOUT_S)
    assert code == 0, out
    return results, out, multi, single

  ((_, out0), (_, out1)), single_out, multi, single = helpers.with_one_retry(body, tmp_path)

  assert "Devices: 4 x cpu in 2 process(es); recipe 'vae'" in out0
  assert "Devices: 4 x cpu in 1 process(es); recipe 'vae'" in single_out
  # Process 0 alone prints, writes metrics and figures.
  assert 'Final metrics:' in out0
  for line in ('Devices:', 'Final metrics:', 'Figures:'):
    assert line not in out1
  records = _records(multi)
  assert len({(r['step'], r['split']) for r in records}) == len(records)
  assert [(r['step'], r['split']) for r in records] == [
      (r['step'], r['split']) for r in _records(single)]
  assert {r['split'] for r in records} == {'train', 'eval'}
  # Process 0's records (the eval covering every process's rows) equal the 1-process ones.
  for multi_record, single_record in zip(records, _records(single)):
    numbers = {k: v for k, v in single_record.items() if k != 'split'}
    assert {k: multi_record[k] for k in numbers} == pytest.approx(numbers, rel=1e-4, abs=1e-5), (
        multi_record, single_record)
  assert (multi / 'figures' / 'reconstructions.png').exists()

  for step in (3, 6):
    _, multi_state = helpers.restore(multi / 'model', step)
    _, single_state = helpers.restore(single / 'model', step)
    diff = helpers.max_abs_diff(multi_state['params'], single_state['params'])
    print(f'step {step}: max |params(2x2) - params(1x4)| = {diff:.3g}')
    assert diff <= PARAMS_ATOL
    assert helpers.max_abs_diff(multi_state['opt_state'], single_state['opt_state']) <= PARAMS_ATOL
  # The comparison means something only if training moved the parameters.
  _, at_3 = helpers.restore(single / 'model', 3)
  assert helpers.max_abs_diff(at_3['params'], single_state['params']) > 100 * PARAMS_ATOL


def test_sigterm_to_one_process_stops_both_at_one_step_and_resume_is_bitwise_equal(tmp_path):
  config_arg = 'experiments/configs/undercomplete.py:smoke'
  # The stop came 10 to 30 steps after the signal in trials: 60 steps of margin.
  num_steps = 80
  overrides = (f'--config.train.num_train_steps={num_steps}',
               '--config.train.checkpoint_every_steps=10',
               f'--config.train.eval_every_steps={num_steps}',
               '--config.train.log_every_steps=10')

  def body(root):
    root.mkdir()
    preempted, reference = root / 'preempted', root / 'reference'
    procs = helpers.launch_processes(config_arg, preempted, *overrides)
    deadline = time.time() + TIMEOUT_S
    while not (preempted / 'model' / 'checkpoints' / '20').exists():
      if time.time() > deadline:
        helpers.wait(procs, 0)  # Kills both and raises Hang.
      if any(p.poll() is not None for p in procs):  # A process stopped early: show why.
        helpers.kill(procs)
        raise AssertionError([helpers.read_log(p) for p in procs])
      time.sleep(0.02)
    # The notice reaches one host; JAX's preemption service stops both.
    procs[1].send_signal(signal.SIGTERM)
    stopped = helpers.wait(procs, TIMEOUT_S)
    resumed = helpers.wait(
        helpers.launch_processes(config_arg, preempted, *overrides, tag='resume'), TIMEOUT_S)
    uninterrupted = helpers.wait(helpers.launch_processes(config_arg, reference, *overrides),
                                 TIMEOUT_S)
    return stopped, resumed, uninterrupted, preempted, reference

  stopped, resumed, uninterrupted, preempted, reference = helpers.with_one_retry(body, tmp_path)

  for code, out in stopped:
    assert code == EXIT_PREEMPTED, out
  match = re.search(r'Preempted: saved a checkpoint at step (\d+)', stopped[0][1])
  assert match, stopped[0][1]
  stop_step = int(match.group(1))
  assert 20 <= stop_step < num_steps
  assert 'Preempted' not in stopped[1][1]  # Process 0 alone prints.
  for code, out in resumed + uninterrupted:
    assert code == 0, out
  assert f'model: resumed from {preempted}/model/checkpoints at step {stop_step}.' in resumed[0][1]

  step_a, state_a = helpers.restore(preempted / 'model')
  step_b, state_b = helpers.restore(reference / 'model')
  assert step_a == step_b == num_steps
  assert helpers.max_abs_diff(state_a, state_b) == 0.0
