"""`train_and_evaluate(config, workdir)`: every stage of the config's recipe, fitted in order.

  workdir/<stage>/   checkpoints/, metrics.jsonl, tensorboard/ of each stage
                     (`ae_jax.training.fit`): workdir/model/ for one-stage
                     recipes, then e.g. workdir/prior/;
  workdir/figures/   the recipe's figures (PNG).

A later stage receives the trained earlier ones; a finished stage is restored
from its last checkpoint, not retrained, so a rerun of an interrupted
two-stage run resumes the second stage where it stopped.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from ae_jax import recipes
from ae_jax.recipes.base import Trained
from ae_jax.training import checkpoint
from ae_jax.training.loop import fit


def _recipe(config: ml_collections.ConfigDict):
  if 'recipe' not in config:
    raise ValueError('The config has no `recipe` field naming its family; expected one of '
                     f'{list(recipes.names())}.')
  return recipes.get(config.recipe)


def validate(config: ml_collections.ConfigDict):
  """Checks `config` with its recipe before anything trains; returns the recipe."""
  recipe = _recipe(config)
  recipe.validate(config)
  return recipe


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       handle_preemption: bool = True, faults: str | None = None,
                       num_devices: int | None = None) -> dict[str, float]:
  """Trains (or resumes) every stage of `config`'s recipe in `workdir`, then finishes.

  In a multi-process run every process calls this with the same arguments.

  Args:
    config: the run's config (experiments/configs); `config.recipe` names the family.
    workdir: the run's directory, shared by all processes.
    handle_preemption: stop cleanly on SIGTERM (`ae_jax.training.fit`).
    faults: faults to inject for tests (`ae_jax.training.faults`).
    num_devices: train on the first this many devices (default: all).

  Returns:
    The final metrics: the first stage's eval metrics under their own names,
    a later stage's as '<stage>/<name>', and what the recipe's `finish` adds.

  Raises:
    ValueError: the config is invalid (before any training).
    Preempted: a SIGTERM arrived; the stage in flight saved a checkpoint.
    TrainingDivergedError: a metric became NaN or Inf.
  """
  recipe = validate(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  if is_main:
    print(f'Devices: {jax.device_count()} x {jax.devices()[0].platform} in '
          f'{jax.process_count()} process(es); recipe {config.recipe!r}, stages '
          f'{list(recipe.stages(config))}.', flush=True)
  start = time.time()
  trained: dict[str, Trained] = {}
  for name in recipe.stages(config):
    stage = recipe.make_stage(config, name, trained)
    trained[name] = fit(stage, os.path.join(workdir, name),
                        handle_preemption=handle_preemption, faults=faults,
                        num_devices=num_devices)
  metrics = {**final_metrics(trained), **recipe.finish(config, trained, workdir)}
  if is_main:
    print(f'Finished {list(trained)} in {time.time() - start:.1f} s. Final metrics: '
          + ', '.join(f'{k}={v:.4g}' for k, v in sorted(metrics.items())), flush=True)
    print(f'Figures: {os.path.join(workdir, "figures")}', flush=True)
  return metrics


def restore(config: ml_collections.ConfigDict, workdir: str, *,
            stages: Sequence[str] | None = None, step: int | None = None
            ) -> dict[str, Trained]:
  """The trained stages of a run, restored from `workdir` without training.

  Args:
    config: the config the run was trained with.
    workdir: the run's directory.
    stages: the stages to restore, a prefix of the recipe's stages; default all.
    step: restore this step of the last stage asked for (default: its latest).

  Returns:
    name -> `Trained` (with empty metrics).

  Raises:
    FileNotFoundError: a stage has no checkpoint in workdir/<stage>/.
  """
  recipe = _recipe(config)
  names = tuple(recipe.stages(config))
  wanted = names if stages is None else tuple(stages)
  if wanted != names[:len(wanted)]:
    raise ValueError(f'stages={list(wanted)} is not a prefix of the recipe stages '
                     f'{list(names)}.')
  trained: dict[str, Trained] = {}
  for i, name in enumerate(wanted):
    stage = recipe.make_stage(config, name, trained)
    stage_dir = os.path.join(workdir, name)
    if checkpoint.latest_step(stage_dir) is None:
      raise FileNotFoundError(f'No checkpoints in {stage_dir}/checkpoints: train the run '
                              f'first (python -m experiments.main --config=... '
                              f'--workdir={workdir}).')
    init_key, _, eval_key = jax.random.split(jax.random.key(stage.seed), 3)
    like = jax.jit(stage.init)(init_key)
    mngr = checkpoint.manager(stage_dir, create=False)
    try:
      state = checkpoint.restore(mngr, like, step if i == len(wanted) - 1 else None)
    finally:
      mngr.close()
    trained[name] = Trained(stage=stage, state=jax.device_get(state), metrics={},
                            workdir=stage_dir, eval_key=eval_key)
  return trained


def restore_variables(config: ml_collections.ConfigDict, workdir: str, *,
                      step: int | None = None) -> tuple[Any, dict[str, Any]]:
  """`(model, variables)` of a run's first stage, restored from `workdir`."""
  first = _recipe(config).stages(config)[0]
  trained = restore(config, workdir, stages=(first,), step=step)[first]
  return trained.stage.model, trained.variables


def train_or_restore(config: ml_collections.ConfigDict, workdir: str, *,
                     model_workdir: str | None = None) -> tuple[Any, dict[str, Any]]:
  """Trains `config` into `workdir` (resuming, or only restoring a finished run) and
  returns the first stage's `(model, variables)`; with `model_workdir`, trains
  nothing and restores that run."""
  if model_workdir is None:
    train_and_evaluate(config, workdir)
    return restore_variables(config, workdir)
  return restore_variables(config, model_workdir)


def final_metrics(trained: Mapping[str, Trained]) -> dict[str, float]:
  """The eval metrics of every trained stage, '<stage>/<name>' after the first."""
  out = {}
  for i, (name, t) in enumerate(trained.items()):
    out.update({(f'{name}/' if i else '') + k: v for k, v in t.metrics.items()})
  return out
