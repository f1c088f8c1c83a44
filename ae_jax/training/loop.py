"""`fit(stage, workdir)`: the one training loop, for every recipe and stage.

It owns everything that is not the model; a stage (`ae_jax.recipes.base`)
brings only pure steps, data and a schedule. Into `workdir` it writes

  checkpoints/     orbax checkpoints of the whole state (atomic, the last few);
  metrics.jsonl    one JSON object per logged train step and per evaluation;
  tensorboard/     the same scalars as TensorBoard events.

Resumption. A stage started again on the same workdir restores its latest
checkpoint and asks the stage's data for the batches after that step, so an
interrupted run ends bitwise equal to an uninterrupted one; the records after
the checkpoint are dropped from metrics.jsonl first. A stage whose checkpoint is
at its last step is restored and evaluated, not retrained.

Data. A background thread (`ae_jax.training.prefetch`) takes the stage's
train batches and places them on the devices, `PREFETCH_BATCHES` ahead of the
step, so the training thread only dispatches steps and reads metrics; the
batches are the stage's own, so the run is the same. An error in the data is
raised on the training thread at the step whose batch failed.

Divergence. Train metrics are read one step late on one device (the host
never waits for the step it just dispatched) and at once on several; eval
metrics as they come. A NaN or Inf in either raises `TrainingDivergedError`
naming the step and every term; a save first waits for its own step's metrics,
so no checkpoint holds a state reached through a non-finite loss, and the
checkpoints before it are kept.

Devices and processes. With one device the steps are jitted as they are;
with more (one process or several) they are jitted over a 1-D data mesh
(`ae_jax.parallel`): the batch is split along it, state and keys are
replicated, so the program is the one-device program on global arrays and
draws the same noise. Each process loads only its rows of every batch; every
step is waited for (a stream of unblocked all-reduce steps over fake CPU
devices was seen to deadlock now and then on 2 cores). Metrics, TensorBoard
events and printed lines come from process 0; every process calls the orbax
save and restore, which are collective.

Preemption. A SIGTERM makes the loop finish the step in flight, save a
checkpoint at the next step every process agrees on and raise `Preempted`.
Under `jax.distributed` the agreement comes from JAX's preemption service
(`CheckpointManager.reached_preemption`); in a single process a Python
handler, installed while the loop runs, sets a flag checked after every step.

Faults for tests (`ae_jax.training.faults`): NaN, SIGTERM or SIGKILL at a
chosen step, from the `AE_JAX_FAULT` environment variable or `faults=`.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import threading
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import parallel
from ae_jax import train
from ae_jax.recipes.base import Stage
from ae_jax.recipes.base import Trained
from ae_jax.training import checkpoint
from ae_jax.training import faults as faults_lib
from ae_jax.training import prefetch
from ae_jax.training import workdir as workdir_lib

PREFETCH_BATCHES = 2
"""Placed train batches the loop's data thread keeps ready ahead of the step."""


class TrainingDivergedError(FloatingPointError):
  """A train or eval metric (the loss, a gradient norm, a term) became NaN or Inf."""


class Preempted(Exception):  # pylint: disable=g-bad-exception-name
  """The run stopped on a preemption notice (SIGTERM) after saving a checkpoint.

  Attributes:
    step: the step of the saved checkpoint, where a rerun resumes.
    checkpoint_dir: the directory holding it.
  """

  def __init__(self, step: int, checkpoint_dir: str):
    super().__init__(
        f'Preempted: saved a checkpoint at step {step} in {checkpoint_dir}; run the '
        'same command again to resume from it.')
    self.step = step
    self.checkpoint_dir = checkpoint_dir


def _to_host(metrics: Mapping[str, Any]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(dict(metrics)).items()}


class _MetricVector:
  """A train step whose metrics come back as one float32 vector, and their names.

  Reading one array costs the host about 1 us; reading a dict of scalars,
  one transfer each, about 40 us, every step.
  """

  def __init__(self, train_step):
    self._train_step = train_step
    self.names: tuple[str, ...] = ()

  def __call__(self, state, batch, key):
    state, metrics = self._train_step(state, batch, key)
    self.names = tuple(sorted(metrics))  # Set while tracing.
    return state, jnp.stack([jnp.asarray(metrics[k], jnp.float32) for k in self.names])

  def to_host(self, vector) -> dict[str, float]:
    return dict(zip(self.names, np.asarray(vector).tolist()))


def check_finite(step: int, metrics: Mapping[str, float], *, split: str = 'train',
                 stage: str = '') -> None:
  """Raises `TrainingDivergedError` if a metric is NaN or Inf, naming step and terms."""
  bad = sorted(k for k, v in metrics.items() if not math.isfinite(v))
  if bad:
    terms = ', '.join(f'{k}={v}' for k, v in sorted(metrics.items()))
    where = f'stage {stage!r} ' if stage else ''
    raise TrainingDivergedError(
        f'Training {where}diverged at step {step}: non-finite {split} {bad}. All terms: {terms}. '
        'The checkpoints written before this step are kept.')


def drop_records_after(path: str, step: int) -> list[dict[str, Any]]:
  """Forgets the records after `step` in the JSON-lines file `path` (a resumed run
  repeats those steps) and returns the records kept (none if no file).

  A torn last line is dropped with a warning; the file is replaced atomically.
  """
  if not os.path.exists(path):
    return []
  kept = [r for r in workdir_lib.read_records(path) if r['step'] <= step]
  workdir_lib.write_records(path, kept)
  return kept


class _MetricWriter:
  """JSON lines plus TensorBoard events (tensorboardX, loaded on first use)."""

  def __init__(self, workdir: str, enabled: bool, start_step: int):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    self.kept: list[dict[str, Any]] = []  # The records of the steps up to start_step.
    self._tb = None
    if enabled:
      self.kept = drop_records_after(self.path, start_step)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def has(self, step: int, split: str) -> bool:
    """Whether a record of `split` at `step` was kept from an earlier run."""
    return any(r['step'] == step and r.get('split') == split for r in self.kept)

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    try:
      with open(self.path, 'a') as f:
        f.write(json.dumps({'step': step, 'split': split, **metrics}) + '\n')
        f.flush()
      for name, value in metrics.items():
        self._tb.add_scalar(f'{split}/{name}', value, step)
      self._tb.flush()
    except OSError as e:
      raise workdir_lib.as_write_error(e, self.path) from e

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


class _PreemptionNotice:
  """Says after which step to stop for a SIGTERM: the same step in every process."""

  def __init__(self, mngr, enabled: bool):
    self._manager = mngr
    self._distributed = enabled and jax.distributed.is_initialized()
    self._signaled = False
    self._previous_handler = None
    if (enabled and not self._distributed
        and threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._signaled = True

  def reached(self, step: int) -> bool:
    if self._distributed:
      return self._manager.reached_preemption(step)
    return self._signaled

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None


def _replicate_key(key: jax.Array, sharding) -> jax.Array:
  """`key` as a global array with `sharding` (device_put refuses committed local keys)."""
  data = np.asarray(jax.random.key_data(key))
  return jax.random.wrap_key_data(jax.device_put(data, sharding), impl=jax.random.key_impl(key))


class _Placement:
  """Jitted steps and data placement for one device or a data mesh over several."""

  def __init__(self, stage: Stage, num_devices: int | None):
    num_devices = jax.device_count() if num_devices is None else num_devices
    if num_devices != jax.device_count() and jax.process_count() > 1:
      raise ValueError(f'num_devices={num_devices}: a multi-process run uses all '
                       f'{jax.device_count()} devices.')
    self.multi = num_devices > 1
    self.metrics = _MetricVector(stage.train_step)
    if self.multi:
      mesh = parallel.make_mesh(num_devices)
      self.replicated = parallel.replicated_sharding(mesh)
      self.train_step = parallel.shard_train_step(self.metrics, mesh)
      self.eval_step = (parallel.shard_eval_step(stage.eval_step, mesh)
                        if stage.eval_step else None)
      self.put = lambda batch: parallel.shard_batch(batch, mesh)
    else:
      self.replicated = None
      options = train.compiler_options()
      self.train_step = jax.jit(self.metrics, donate_argnums=(0,), compiler_options=options)
      self.eval_step = (jax.jit(stage.eval_step, compiler_options=options)
                        if stage.eval_step else None)
      # One call for the whole batch; the pipeline's aligned arrays are not copied.
      self.put = jax.device_put

  def state(self, state):
    if not self.multi:
      return state
    # Every process built the same host values (same seed); device_put onto a
    # sharding spanning all processes checks that they agree.
    return jax.device_put(jax.device_get(state), self.replicated)

  def key(self, key):
    return _replicate_key(key, self.replicated) if self.multi else key


def _evaluate(stage: Stage, place: _Placement, state, key) -> dict[str, float]:
  totals, count = {}, 0
  limit = stage.schedule.num_eval_batches
  for i, batch in enumerate(stage.eval_data()):
    if limit is not None and i >= limit:
      break
    for k, v in _to_host(place.eval_step(state, place.put(batch), key)).items():
      totals[k] = totals.get(k, 0.0) + v
    count += 1
  if not count:
    raise ValueError(f'Stage {stage.name!r}: eval_data() gave no batch.')
  return {k: v / count for k, v in totals.items()}


def fit(stage: Stage, workdir: str, *, handle_preemption: bool = True,
        faults: str | None = None, num_devices: int | None = None) -> Trained:
  """Trains `stage` into `workdir` (or resumes it there) and evaluates it.

  In a multi-process run every process calls this with the same arguments.

  Args:
    stage: what to train (see `ae_jax.recipes.base.Stage`).
    workdir: the stage's directory, shared by all processes.
    handle_preemption: stop cleanly on SIGTERM (see the module docstring).
    faults: faults to inject (`ae_jax.training.faults`); None reads AE_JAX_FAULT.
    num_devices: train on the first this many devices (default: all of them;
      one device is the plain jitted step on the default device).

  Returns:
    The `Trained` stage: final state on the host and final eval metrics.

  Raises:
    Preempted: after saving a checkpoint, when a SIGTERM arrived while training.
    TrainingDivergedError: a train or eval metric became NaN or Inf.
  """
  with workdir_lib.held(workdir, is_main=jax.process_index() == 0):
    return _fit(stage, workdir, handle_preemption=handle_preemption, faults=faults,
                num_devices=num_devices)


def _fit(stage: Stage, workdir: str, *, handle_preemption: bool, faults: str | None,
         num_devices: int | None) -> Trained:
  """`fit` in a workdir this process holds."""
  schedule = stage.schedule
  num_steps = schedule.num_train_steps
  is_main = jax.process_index() == 0
  injected = faults_lib.for_stage(stage.name, faults)
  init_key, train_key, eval_key = jax.random.split(jax.random.key(stage.seed), 3)
  place = _Placement(stage, num_devices)
  # Jitted: one compilation instead of one per eager op (seconds on CPU).
  state = place.state(jax.jit(stage.init)(init_key))
  train_key, device_eval_key = place.key(train_key), place.key(eval_key)

  mngr = checkpoint.manager(workdir, keep=schedule.keep_checkpoints)
  if mngr.latest_step() is not None:
    # The target carries this run's shardings: a checkpoint written on any
    # number of devices restores onto the current ones.
    if jax.process_count() > 1:  # Every process restores the same step, or none.
      state = checkpoint.restore(mngr, state)
    else:
      state, _, broken = checkpoint.restore_newest(
          mngr, state, warn=lambda line: print(f'{stage.name}: warning: {line}', flush=True))
      if broken:
        moved = checkpoint.set_aside(mngr, broken)
        print(f'{stage.name}: warning: resuming from the checkpoint at step '
              f'{int(state.step)} instead; moved the damaged ones to '
              f'{os.path.dirname(moved[0])}.', flush=True)
    if is_main and int(state.step) < num_steps:
      print(f'{stage.name}: resumed from {workdir}/checkpoints at step {int(state.step)}.',
            flush=True)
  start_step = int(state.step)
  if start_step > num_steps:
    mngr.close()
    raise ValueError(f'Stage {stage.name!r}: the checkpoint in {workdir} is at step '
                     f'{start_step}, past num_train_steps={num_steps}.')

  writer = _MetricWriter(workdir, enabled=is_main, start_step=start_step)

  def evaluate(step: int, *, write: bool = True) -> dict[str, float]:
    if place.eval_step is None:
      return {}
    metrics = _evaluate(stage, place, state, device_eval_key)
    check_finite(step, metrics, split='eval', stage=stage.name)
    if write:
      writer.write(step, 'eval', metrics)
    return metrics

  @contextlib.contextmanager
  def saving():
    """Raises a failed checkpoint write (now or an earlier async one) as `WorkdirWriteError`."""
    try:
      yield
    except Exception as e:  # pylint: disable=broad-exception-caught
      raise workdir_lib.as_write_error(e, checkpoint.directory(workdir)) from e

  # A kill between a checkpoint and its evaluation loses that eval record: an
  # evaluation due at the resumed step is run again (written if it is missing).
  if 0 < start_step < num_steps and start_step % schedule.eval_every_steps == 0:
    missing = not writer.has(start_step, 'eval')
    if missing or jax.process_count() > 1:  # Evaluation is collective: all or none.
      evaluate(start_step, write=missing)

  progress = None
  if start_step < num_steps and schedule.progress_bar and is_main:
    import tqdm  # pylint: disable=g-import-not-at-top
    progress = tqdm.tqdm(total=num_steps, initial=start_step, unit='step', desc=stage.name,
                         dynamic_ncols=True)

  def finish_step(step: int, metrics) -> None:
    host = place.metrics.to_host(metrics)
    check_finite(step, host, stage=stage.name)
    if progress is not None:
      progress.update(step - progress.n)
      if 'loss' in host:
        progress.set_postfix(loss=f"{host['loss']:.4g}", refresh=False)
    if step % schedule.log_every_steps == 0 or step == num_steps:
      writer.write(step, 'train', host)

  block_every_step = place.multi
  pending = None
  preempted_at = None
  eval_metrics: dict[str, float] = {}
  train_batches = None
  preemption = _PreemptionNotice(mngr, enabled=handle_preemption)
  try:
    if start_step < num_steps:
      # Batch t + 1 is built and placed on the devices while step t runs.
      train_batches = prefetch.Prefetcher(stage.train_data(start_step), place.put,
                                          size=PREFETCH_BATCHES)
    for step in range(start_step + 1, num_steps + 1):
      batch = next(train_batches)
      if ('nan', step) in injected:
        state = place.state(faults_lib.poison(jax.device_get(state)))
      state, metrics = place.train_step(state, batch, train_key)
      if pending is not None:
        finish_step(*pending)
      pending = (step, metrics)
      if block_every_step:
        finish_step(*pending)
        pending = None
      for kind in ('sigkill', 'sigterm'):
        if (kind, step) in injected:
          jax.block_until_ready(state)
          # The fault is "killed after step k": the saves of earlier steps have
          # landed, so where a rerun resumes does not hang on disk speed.
          mngr.wait_until_finished()
          faults_lib.signal_self(kind)
      with saving():  # An asynchronous save that failed stops the run at the next step.
        mngr.check_for_errors()
      preempt = preemption.reached(step)
      if step % schedule.checkpoint_every_steps == 0 or step == num_steps or preempt:
        if pending is not None:
          finish_step(*pending)
          pending = None
        with saving():
          checkpoint.save(mngr, step, state, force=preempt)
      if preempt:
        preempted_at = step
        break
      if step % schedule.eval_every_steps == 0 or step == num_steps:
        eval_metrics = evaluate(step)
        if progress is not None:
          progress.write(f'{stage.name} step {step}: eval ' + ', '.join(
              f'{k}={v:.4g}' for k, v in sorted(eval_metrics.items())))
    if pending is not None:
      finish_step(*pending)
    with saving():
      mngr.wait_until_finished()
  finally:
    if train_batches is not None:
      train_batches.close()
    try:
      mngr.wait_until_finished()
    except Exception:  # pylint: disable=broad-exception-caught
      pass  # Raised above on the normal path; on an error path, the first error counts.
    mngr.close()
    # After the last save has landed: a SIGTERM until then is absorbed.
    preemption.close()
    if progress is not None:
      progress.close()
  if preempted_at is not None:
    writer.close()
    raise Preempted(preempted_at, os.path.join(os.path.abspath(workdir), 'checkpoints'))
  if not eval_metrics:  # A finished stage, restored: its record is written unless lost.
    eval_metrics = evaluate(num_steps, write=not writer.has(num_steps, 'eval'))
  writer.close()
  return Trained(stage=stage, state=jax.device_get(state), metrics=eval_metrics,
                 workdir=workdir, eval_key=eval_key)
