"""`train_and_evaluate(config, workdir)`: every stage of the config's recipe, fitted in order.

  workdir/<stage>/   checkpoints/, metrics.jsonl, tensorboard/ of each stage
                     (`ae_jax.training.fit`): workdir/model/ for one-stage
                     recipes, then e.g. workdir/prior/;
  workdir/figures/   the recipe's figures (PNG);
  workdir/config.json  the config of the first start (process 0 writes it): a
                     resume compares its config with it, warns about changes the
                     checkpoints survive (steps, rates, logging) and refuses others
                     (`check_resume`).

A later stage receives the trained earlier ones; a finished stage is restored
from its last checkpoint, not retrained, so a rerun of an interrupted
two-stage run resumes the second stage where it stopped.
"""

from __future__ import annotations

import fnmatch
import json
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import ml_collections

from ae_jax import recipes
from ae_jax.recipes import common
from ae_jax.recipes.base import Trained
from ae_jax.training import checkpoint
from ae_jax.training import workdir as workdir_lib
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
    ConfigMismatchError: a resume whose config changes fields the checkpoints
      in `workdir` depend on (a ValueError too).
    Preempted: a SIGTERM arrived; the stage in flight saved a checkpoint.
    TrainingDivergedError: a metric became NaN or Inf.
    WorkdirInUseError: another run holds `workdir` (nothing was touched).
  """
  recipe = validate(config)
  is_main = jax.process_index() == 0
  # The run's workdir is this run's (figures, config.json); each stage's too (`fit`).
  with workdir_lib.held(workdir, is_main=is_main):
    check_resume(config, workdir, recipe.stages(config))
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
    ConfigMismatchError: `config` has another recipe or model than the one
      workdir/config.json records.
  """
  recipe = _recipe(config)
  check_restore(config, workdir)
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


# ----------------------------------------------------------------------------
# The config a run started with, kept in workdir/config.json and compared on resume.

CONFIG_FILE = 'config.json'

# Fields whose change leaves the checkpoints of a run usable: when to log,
# evaluate and checkpoint, how long to train, rates and loss weights, batch
# sizes (the data of a step is a function of the step) and what runs after
# training. A resume with other changes is refused (`ConfigMismatchError`):
# the recipe, the model (parameter shapes), the training data, the optimizer's
# kind or schedule (its state), the seeds (the run would be neither run).
RESUMABLE_FIELDS = (
    '*num_train_steps', '*_every_steps', '*keep_checkpoints', 'train.num_eval_batches',
    'train.num_figure_examples', 'train.progress_bar', '*batch_size', 'data.data_dir',
    'data.eval_split', 'data.num_eval_molecules', '*learning_rate', '*warmup_steps',
    '*decay_steps', '*weight_decay', '*momentum', 'loss.*', 'prior.temperatures',
    'prior.num_samples', 'diffusion.num_eval_examples', 'diffusion.num_interpolation_points',
    'diffusion.num_samples', 'diffusion.latent.num_sampling_steps', 'molecules.*',
    'overcomplete.*',
    # Model fields that shape no parameter: DDIM sampling steps, the EMA codebook's rates.
    'model.num_ddim_steps', 'model.decay', 'model.epsilon',
)
# Refused whatever the patterns above say.
_NOT_RESUMABLE = ('diffusion.latent.num_timesteps', 'diffusion.latent.schedule')


class ConfigMismatchError(ValueError):
  """A run resumed with a config its checkpoints do not fit (the fields are named)."""


def _json_default(value: Any) -> Any:
  """A value JSON has no type for: numpy scalars as numbers; an object (a data
  source in `config.data.name`) as '<Type name>', not its arrays."""
  if hasattr(value, 'item') and getattr(value, 'shape', None) == ():
    return value.item()
  name = getattr(value, 'name', None)
  return f'<{type(value).__name__}{f" {name}" if isinstance(name, str) else ""}>'


def _plain(value: Any) -> Any:
  """A config value as JSON holds it (tuples as lists)."""
  return json.loads(json.dumps(value, default=_json_default))


def config_fields(config: ml_collections.ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
  """Dotted field -> value of every leaf of `config` (a ConfigDict or its JSON dict)."""
  out = {}

  def walk(node, prefix):
    for key, value in node.items():
      if isinstance(value, Mapping) or hasattr(value, 'items'):
        walk(value, f'{prefix}{key}.')
      else:
        out[f'{prefix}{key}'] = _plain(value)

  walk(config, '')
  return out


def write_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes `config` to workdir/config.json atomically (a temporary file, then
  `os.replace`); returns the path. Call it from process 0 only."""
  path = os.path.join(workdir, CONFIG_FILE)
  tmp = f'{path}.tmp{os.getpid()}'
  with open(tmp, 'w') as f:
    json.dump(config.to_dict(), f, indent=2, sort_keys=True, default=_json_default)
    f.write('\n')
  os.replace(tmp, path)
  return path


def read_config(workdir: str) -> dict[str, Any] | None:
  """The config.json of `workdir` as a dict, or None if there is none."""
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    return json.load(f)


def config_changes(old: Mapping[str, Any], config: ml_collections.ConfigDict
                   ) -> tuple[list[str], list[str]]:
  """(resumable, refused) changes from the saved config `old` to `config`,
  each 'field: old -> new' (a field only one of them has reads '<absent>')."""
  before, after = config_fields(old), config_fields(config)
  resumable, refused = [], []
  for field in sorted(set(before) | set(after)):
    a, b = before.get(field, '<absent>'), after.get(field, '<absent>')
    if a == b or (a == '<absent>' and b is None):
      continue  # A field added since (None: its default) changes nothing.
    line = f'{field}: {a!r} -> {b!r}'
    ok = (any(fnmatch.fnmatchcase(field, p) for p in RESUMABLE_FIELDS)
          and field not in _NOT_RESUMABLE)
    if field.endswith('grad_clip_norm') and bool(a) != bool(b):
      ok = False  # Clipping on or off changes the optimizer state's structure.
    (resumable if ok else refused).append(line)
  return resumable, refused


def _has_checkpoint(workdir: str, stage_names) -> bool:
  return any(checkpoint.latest_step(os.path.join(workdir, name)) is not None
             for name in stage_names)


def check_resume(config: ml_collections.ConfigDict, workdir: str, stage_names) -> None:
  """Compares `config` with workdir/config.json and (process 0) writes it there.

  The first start writes it; a start without a checkpoint yet rewrites it; a
  resume with changes `RESUMABLE_FIELDS` allows warns once (a `ConfigWarning`
  naming them) and rewrites it; any other change is refused.

  Raises:
    ConfigMismatchError: naming every field that changed and why the
      checkpoint cannot be used.
  """
  is_main = jax.process_index() == 0
  old = read_config(workdir)
  if old is not None:
    resumable, refused = config_changes(old, config)
    if not resumable and not refused:
      return
    if _has_checkpoint(workdir, stage_names):
      path = os.path.join(workdir, CONFIG_FILE)
      if refused:
        raise ConfigMismatchError(
            f'{workdir} holds checkpoints of another config ({path}); these changes do not fit '
            f'them (the recipe, model shapes, training data, optimizer kind or seed): '
            f'{"; ".join(refused)}'
            + (f' (and, resumable: {"; ".join(resumable)})' if resumable else '')
            + '. Use a new --workdir, or undo the changes.')
      if is_main:
        common.warn(f'resuming {workdir} with changed fields (the checkpoints still fit): '
                    f'{"; ".join(resumable)}.')
  if is_main:
    write_config(config, workdir)


def check_restore(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Refuses to restore with a recipe or model config other than the run's.

  Raises:
    ConfigMismatchError: naming the fields.
  """
  old = read_config(workdir)
  if old is None:
    return
  _, refused = config_changes(old, config)
  shape = [line for line in refused if line.startswith(('recipe:', 'model.'))]
  if shape:
    raise ConfigMismatchError(
        f'{workdir} was trained with another recipe or model ({CONFIG_FILE}); its checkpoints '
        f'do not fit this config: {"; ".join(shape)}.')
