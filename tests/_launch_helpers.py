"""Runs `experiments.main` in subprocesses on fake CPU devices, for the tests.

Not collected by pytest (the name does not end in ``_test.py``); the test
modules beside it import it. Fake devices must be set before JAX starts, and a
rare XLA abort must not take the pytest session down (on 2 CPU cores, async
all-reduce steps over fake devices deadlocked in a few runs in 30, and XLA then
aborts after about 60 s), so every multi-device run is its own process with a
timeout. `Hang` marks the two failures a caller may retry once: a timeout and
a SIGABRT. A wrong answer is never one of them.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Settings under which that deadlock was not seen (single-threaded CPU kernels).
_XLA_MITIGATIONS = '--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'


class Hang(RuntimeError):
  """A launcher process timed out or aborted (SIGABRT): retry once, never more."""


def env_with_devices(num_devices: int) -> dict[str, str]:
  """The environment for a process with `num_devices` fake CPU devices."""
  return dict(os.environ, PYTHONUNBUFFERED='1', JAX_PLATFORMS='cpu',
              XLA_FLAGS=f'--xla_force_host_platform_device_count={num_devices} {_XLA_MITIGATIONS}')


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def launch(config_arg: str, workdir, *overrides: str, num_devices: int = 1,
           log_path=None, fault: str = '') -> subprocess.Popen:
  """Starts the launcher; its output goes to `log_path` (a file, so no pipe can fill).

  `fault` is an AE_JAX_FAULT spec (`ae_jax.training.faults`), e.g. 'sigterm@4'.
  """
  cmd = [sys.executable, '-m', 'experiments.main', f'--config={config_arg}',
         f'--workdir={workdir}', *overrides]
  env = env_with_devices(num_devices)
  env.pop('AE_JAX_FAULT', None)
  if fault:
    env['AE_JAX_FAULT'] = fault
  log = open(log_path or f'{workdir}.log', 'w')  # pylint: disable=consider-using-with
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log,
                          stderr=subprocess.STDOUT, text=True)
  proc.log_path = log.name
  log.close()
  return proc


def launch_processes(config_arg: str, workdir, *overrides: str, num_processes: int = 2,
                     devices_per_process: int = 2, tag: str = 'run') -> list[subprocess.Popen]:
  """Starts one multi-process run on 127.0.0.1, logs in `{workdir}.{tag}{process_id}.log`."""
  coordinator = f'--coordinator_address=127.0.0.1:{free_port()}'
  return [launch(config_arg, workdir, *overrides, coordinator,
                 f'--num_processes={num_processes}', f'--process_id={i}',
                 num_devices=devices_per_process, log_path=f'{workdir}.{tag}{i}.log')
          for i in range(num_processes)]


def wait(procs: list[subprocess.Popen], timeout: float) -> list[tuple[int, str]]:
  """Waits for all; returns (exit code, output) each. Kills all and raises Hang on
  a timeout or a SIGABRT."""
  deadline = time.time() + timeout
  while any(p.poll() is None for p in procs) and time.time() < deadline:
    time.sleep(0.1)
  hung = any(p.poll() is None for p in procs)
  kill(procs)
  results = [(p.returncode, read_log(p)) for p in procs]
  if hung or any(code == -signal.SIGABRT for code, _ in results):
    raise Hang('\n'.join(f'exit {code}:\n{out[-3000:]}' for code, out in results))
  return results


def kill(procs: list[subprocess.Popen]) -> None:
  """Kills the ones still running (these processes only, by their handles)."""
  for p in procs:
    if p.poll() is None:
      p.kill()
      p.wait()


def read_log(proc: subprocess.Popen) -> str:
  with open(proc.log_path) as f:
    return f.read()


def with_one_retry(body, tmp_path):
  """Runs `body(workdir_root)`, once more in a fresh directory after a `Hang`."""
  try:
    return body(tmp_path / 'try0')
  except Hang:
    return body(tmp_path / 'try1')


def restore(stage_dir, step: int | None = None) -> tuple[int, dict[str, Any]]:
  """A checkpoint of a stage (latest by default) as host arrays, whatever the
  number of devices that wrote it: the target is built from the saved shapes
  on this process's first device.

  Args:
    stage_dir: a stage's directory, <workdir>/<stage> (e.g. <workdir>/model),
      which holds checkpoints/.
    step: the checkpoint's step; None for the latest.
  """
  manager = ocp.CheckpointManager(os.path.join(stage_dir, 'checkpoints'),
                                  item_handlers=ocp.StandardCheckpointHandler())
  step = manager.latest_step() if step is None else step
  device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
                        manager.item_metadata(step))
  state = manager.restore(step, args=ocp.args.StandardRestore(target))
  manager.close()
  return step, jax.device_get(state)


def max_abs_diff(a, b) -> float:
  diffs = jax.tree.map(
      lambda x, y: float(np.max(np.abs(np.asarray(x, np.float64) - np.asarray(y, np.float64)))),
      a, b)
  return max(jax.tree.leaves(diffs))
