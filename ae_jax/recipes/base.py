"""What a model family tells the training loop: stages of pure steps and data.

A *recipe* is a module of `ae_jax.recipes` (one per family) with four
functions; `ae_jax.training.train_and_evaluate` finds it by the config's
`recipe` field and never looks at a model class:

  validate(config) -> None
      Rejects a config that cannot train, naming the field and value, before
      any stage trains.
  stages(config) -> tuple[str, ...]
      The names of the stages, in training order: ('model',), or
      ('model', 'prior') for a model with a second trained part.
  make_stage(config, name, trained) -> Stage
      The stage `name`; `trained` maps the names of the earlier stages to their
      `Trained` results (a VQ prior reads the VQ-VAE's variables there).
  finish(config, trained, workdir) -> dict[str, float]
      After the last stage: final metrics that need the trained parts (DDIM
      reconstructions, a prior's test NLL) and the figures under
      workdir/figures. Called in every process; figures come from process 0.

A `Stage` is data: a `init(key) -> state` for step 0, a pure jittable
`train_step(state, batch, key) -> (state, metrics)` that folds
`state.step` into `key` itself, an optional `eval_step(state, batch, key) ->
metrics`, the data as functions of the step, and a `Schedule`. The loop
(`ae_jax.training.fit`) jits the steps (with shardings on several devices),
checkpoints, resumes, preempts, stops on NaN and logs; a stage never does.

The state is any pytree with an int32 scalar `step` field (usually
`ae_jax.train.TrainState`; the AAE keeps its three optimizer states in one).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax

PyTree = Any
Batch = Mapping[str, Any]
Metrics = Mapping[str, jax.Array]
StepFn = Callable[[PyTree, Batch, jax.Array], tuple[PyTree, Metrics]]
EvalFn = Callable[[PyTree, Batch, jax.Array], Metrics]


@dataclasses.dataclass(frozen=True)
class Schedule:
  """When the loop trains, logs, evaluates and checkpoints (all in steps).

  Attributes:
    num_train_steps: steps of the stage; a stage whose checkpoint is at this
      step is finished and is restored, not retrained.
    log_every_steps: write the train metrics of every such step.
    eval_every_steps: run the eval step over the eval data this often (and
      at the last step).
    checkpoint_every_steps: save the state this often (and at the last step).
    keep_checkpoints: how many checkpoints to keep.
    num_eval_batches: eval batches per evaluation; None for all of them.
    progress_bar: show a tqdm bar (process 0 only).
  """
  num_train_steps: int
  log_every_steps: int = 50
  eval_every_steps: int = 500
  checkpoint_every_steps: int = 500
  keep_checkpoints: int = 3
  num_eval_batches: int | None = None
  progress_bar: bool = True

  def __post_init__(self):
    for field in ('num_train_steps', 'log_every_steps', 'eval_every_steps',
                  'checkpoint_every_steps', 'keep_checkpoints'):
      value = getattr(self, field)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f'Schedule.{field} must be an int > 0, got {value!r}.')
    if self.num_eval_batches is not None and self.num_eval_batches <= 0:
      raise ValueError(f'Schedule.num_eval_batches must be > 0 or None, got '
                       f'{self.num_eval_batches}.')

  @classmethod
  def from_config(cls, train: Mapping[str, Any], **overrides) -> 'Schedule':
    """The schedule of a config's `train` section (fields of the same names)."""
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {k: train[k] for k in fields if k in train}
    values.update(overrides)
    return cls(**values)


@dataclasses.dataclass(frozen=True)
class Stage:
  """One trained part of a recipe, fitted by `ae_jax.training.fit`.

  Attributes:
    name: the stage's directory under the run's workdir.
    init: `init(key) -> state` at step 0; deterministic in `key`.
    train_step: pure `(state, batch, key) -> (state, metrics)`; the loop jits it
      (donating the state) and passes the same `key` every step.
    train_data: `train_data(start_step)` iterates over the batches of steps
      start_step + 1, start_step + 2, ... (this process's rows of each global
      batch), a function of the step alone so that a resumed run sees the data
      an uninterrupted one would. The loop may place a batch's numpy arrays on
      the device without copying them: never write into a batch once yielded.
    schedule: steps, logging, evaluation and checkpoints.
    seed: the stage's PRNG seed: `key(seed)` splits into init, train and eval keys.
    eval_step: pure `(state, batch, key) -> metrics`, or None.
    eval_data: `eval_data()` iterates over eval batches (the same ones each
      call; padding rows carry mask 0), or None.
    model: the linen module the stage trains, for `Trained.variables` users.
  """
  name: str
  init: Callable[[jax.Array], PyTree]
  train_step: StepFn
  train_data: Callable[[int], Iterator[Batch]]
  schedule: Schedule
  seed: int = 0
  eval_step: EvalFn | None = None
  eval_data: Callable[[], Iterable[Batch]] | None = None
  model: nn.Module | None = None


@dataclasses.dataclass(frozen=True)
class Trained:
  """A fitted stage: its final state (host arrays) and its last eval metrics.

  Attributes:
    stage: the stage that was fitted.
    state: its state at `stage.schedule.num_train_steps`.
    metrics: eval metrics of the final state ({} without an eval step).
    workdir: the stage's directory.
    eval_key: the stage's eval key, for figures that sample.
  """
  stage: Stage
  state: PyTree
  metrics: Mapping[str, float]
  workdir: str
  eval_key: jax.Array

  @property
  def variables(self) -> dict[str, Any]:
    """The dict given to `stage.model.apply`: params and the model's other collections."""
    return {**self.state.params, **getattr(self.state, 'model_state', {})}
