"""End-to-end training rate of the launcher against its own bare train step.

  python -m experiments.bench_e2e                         # both cases
  python -m experiments.bench_e2e --only=vae_fashion --steps=1000

For each case, in one process:
  launcher_steps_per_s: `ae_jax.training.fit` on the config's first stage, as
    `python -m experiments.main` runs it (data pipeline, prefetch, metrics read
    one step late, logging, TensorBoard, progress bar, orbax checkpoints and
    evaluations as the config schedules them), in a temporary workdir. The rate
    is taken over a window of steps after the first evaluation (so after the
    train and eval steps have compiled) and before the final step's
    checkpoint and evaluation; the evaluations and checkpoints inside the
    window count. Steps are timed where the loop takes each batch from the
    stage's data: the loop builds a fixed few batches ahead, so over a window
    the rate is the loop's.
  bare_step_steps_per_s: the same jitted train step (with donation, as fit
    runs it) dispatched back to back on one batch resident on the device,
    no data, no metrics read: the rate the launcher could reach, measured
    just before and just after each launcher run.
  ratio: the median over the launcher runs (rounds) of launcher_steps_per_s
    over the mean of the bare rates around that run; the round_* lists give
    every run, so a machine whose load changed shows it.
  bare_step_blocked_steps_per_s: the step timed one at a time, waiting for
    each (as experiments/bench.py times it), for reference.

Cases:
  vae_fashion    experiments/configs/vae.py (MLP VAE 784-400-20, batch 128) on
                 dynamically binarized Fashion-MNIST (prepared offline:
                 `python -m ae_jax.data.prepare fashion_mnist`), 2,000 steps,
                 evaluation and checkpoint every 500.
  conv_vae_demo  experiments/configs/conv_vae.py, the README's demo (`make
                 demo`): conv VAE on the MNIST 5k subset, 1,000 steps,
                 evaluation and checkpoint every 250.

Run it on an otherwise idle machine: the load average is in every row.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from ae_jax import train
from ae_jax import training
from ae_jax.training import loop
from experiments.configs import conv_vae
from experiments.configs import vae

CASES = ('vae_fashion', 'conv_vae_demo')
# Launcher runs per case: the conv demo's 1,000 steps take minutes on 2 cores.
DEFAULT_ROUNDS = {'vae_fashion': 3, 'conv_vae_demo': 1}


def case_config(name: str) -> ml_collections.ConfigDict:
  """The launcher config of a case (see the module docstring)."""
  if name == 'vae_fashion':
    config = vae.get_config()
    config.data.name = 'fashion_mnist'
    config.data.binarize = True
    return config
  if name == 'conv_vae_demo':
    return conv_vae.get_config()
  raise ValueError(f'Unknown case {name!r}; expected one of {CASES}.')


def _timed(train_data, times: list[float]):
  """`train_data` whose iterator records when each batch is taken."""

  def timed_data(start_step: int) -> Iterator:
    for batch in train_data(start_step):
      times.append(time.perf_counter())
      yield batch

  return timed_data


def _window(schedule, num_steps: int) -> tuple[int, int]:
  """Steps (first, last) timed: from after the first evaluation to before the end."""
  # The batches the loop builds ahead (and, with a thread, the one in its hands).
  ahead = loop.PREFETCH_BATCHES + 2
  last = num_steps - 1
  first = schedule.eval_every_steps + ahead
  if last - first < num_steps // 2:  # No evaluation early enough: skip the compilation.
    first = min(20, num_steps // 4)
  return first, last


def _launcher_rate(stage) -> tuple[float, tuple[int, int]]:
  """(steps/s over the window, the window) of `fit` on `stage` in a fresh workdir."""
  times: list[float] = []
  stage = dataclasses.replace(stage, train_data=_timed(stage.train_data, times))
  num_steps = stage.schedule.num_train_steps
  first, last = _window(stage.schedule, num_steps)
  if last <= first:
    raise ValueError(f'{num_steps} steps leave no window to time; run more steps.')
  with tempfile.TemporaryDirectory(prefix='ae_jax_bench_e2e_') as workdir:
    training.fit(stage, os.path.join(workdir, stage.name), faults='')
  # times[i] is when the batch of step i + 1 was taken.
  return (last - first) / (times[last - 1] - times[first - 1]), (first, last)


class _BareStep:
  """The stage's jitted step (donating, with the compiler options, as fit jits it
  on one device) on one resident batch."""

  def __init__(self, stage):
    self._key = jax.random.key(0)
    self._batch = jax.tree.map(jnp.asarray, next(stage.train_data(0)))
    self._step = jax.jit(stage.train_step, donate_argnums=(0,),
                         compiler_options=train.compiler_options())
    self._state, metrics = self._step(jax.jit(stage.init)(self._key), self._batch, self._key)
    jax.block_until_ready((self._state, metrics))

  def back_to_back(self, min_seconds: float) -> float:
    """Steps/s dispatched back to back (waiting once, at the end)."""
    count, start = 0, time.perf_counter()
    while count < 10 or time.perf_counter() - start < min_seconds:
      self._state, metrics = self._step(self._state, self._batch, self._key)
      count += 1
    jax.block_until_ready((self._state, metrics))
    return count / (time.perf_counter() - start)

  def blocked(self, min_seconds: float) -> float:
    """1 / the median time of one step waited for."""
    times, start = [], time.perf_counter()
    while len(times) < 10 or time.perf_counter() - start < min_seconds:
      t = time.perf_counter()
      self._state, metrics = self._step(self._state, self._batch, self._key)
      jax.block_until_ready((self._state, metrics))
      times.append(time.perf_counter() - t)
    return 1.0 / statistics.median(times)


def end_to_end_row(name: str, *, steps: int | None = None, rounds: int = 3,
                   bare_seconds: float = 1.5) -> dict:
  """One case's row (see the module docstring).

  Args:
    name: a case from `CASES`.
    steps: train steps of each launcher run (default the config's num_train_steps).
    rounds: launcher runs, each between two bare-step measurements; the
      ratio is the median over the rounds of launcher / mean(bare before, after).
    bare_seconds: length of each bare-step measurement.
  """
  config = case_config(name)
  if steps is not None:
    config.train.num_train_steps = steps
  recipe = training.validate(config)
  stage = recipe.make_stage(config, recipe.stages(config)[0], {})
  bare = _BareStep(stage)
  blocked = bare.blocked(bare_seconds)
  before = bare.back_to_back(bare_seconds)
  launcher, bare_rates, ratios = [], [], []
  for _ in range(rounds):
    rate, (first, last) = _launcher_rate(stage)
    after = bare.back_to_back(bare_seconds)
    launcher.append(rate)
    bare_rates.append((before + after) / 2)
    ratios.append(rate / bare_rates[-1])
    before = after
  return {
      'name': f'end_to_end_{name}',
      'launcher_steps_per_s': round(statistics.median(launcher), 2),
      'bare_step_steps_per_s': round(statistics.median(bare_rates), 2),
      'ratio': round(statistics.median(ratios), 3),
      'round_ratios': [round(r, 3) for r in ratios],
      'round_launcher_steps_per_s': [round(r, 2) for r in launcher],
      'round_bare_step_steps_per_s': [round(r, 2) for r in bare_rates],
      'bare_step_blocked_steps_per_s': round(blocked, 2),
      'batch': config.data.batch_size,
      'num_train_steps': config.train.num_train_steps,
      'window_steps': [first, last],
      'eval_every_steps': config.train.eval_every_steps,
      'checkpoint_every_steps': config.train.checkpoint_every_steps,
      'load_average': [round(x, 2) for x in os.getloadavg()],
      'backend': jax.default_backend(),
  }


def end_to_end_rows(names: Sequence[str] = CASES,
                    steps: int | Mapping[str, int] | None = None,
                    rounds: int | Mapping[str, int] | None = None) -> list[dict]:
  """The launcher's end-to-end steps/s against its bare train step, per case.

  Args:
    names: cases from `CASES`.
    steps: train steps of each launcher run: one int for every case, a dict
      name -> int, or None for each config's num_train_steps (2,000 and 1,000).
    rounds: launcher runs per case (int or dict; default `DEFAULT_ROUNDS`).

  Returns:
    One dict per case: name ('end_to_end_<case>'), launcher_steps_per_s,
    bare_step_steps_per_s, ratio, and how they were measured.
  """
  def pick(value, name):
    return value.get(name) if isinstance(value, Mapping) else value

  rows = []
  for name in names:
    r = pick(rounds, name) or DEFAULT_ROUNDS[name]
    rows.append(end_to_end_row(name, steps=pick(steps, name), rounds=r))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default=','.join(CASES), help='Comma-separated cases.')
  parser.add_argument('--steps', type=int, default=None,
                      help='Train steps per launcher run (default: the config\'s).')
  parser.add_argument('--rounds', type=int, default=None,
                      help='Launcher runs per case (default: 3 for vae_fashion, 1 for the demo).')
  args = parser.parse_args()
  for row in end_to_end_rows(args.only.split(','), args.steps, args.rounds):
    print(json.dumps(row), flush=True)


if __name__ == '__main__':
  main()
