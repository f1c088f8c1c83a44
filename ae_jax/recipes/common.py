"""What the recipes share: config sections to objects, image data, one-objective
stages and the standard figures.

A recipe module reads its config through these helpers so that every family
checks, batches and draws the same way; none of them knows a model class.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from ae_jax import data as data_lib
from ae_jax import train
from ae_jax.recipes.base import Schedule
from ae_jax.recipes.base import Stage
from ae_jax.recipes.base import Trained


def as_kwargs(section: Mapping[str, Any] | None) -> dict[str, Any]:
  """A config section as keyword arguments (lists become tuples)."""
  if section is None:
    return {}
  items = section.to_dict() if hasattr(section, 'to_dict') else dict(section)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}


def build_model(model_config: Mapping[str, Any], table: Mapping[str, type[nn.Module]]
                ) -> nn.Module:
  """`table[model_config['name']]` built with the section's other fields.

  Raises:
    ValueError: an unknown name (the recipe's names are listed) or arguments
      the class does not take.
  """
  kwargs = as_kwargs(model_config)
  name = kwargs.pop('name', None)
  if name not in table:
    raise ValueError(f'config.model.name={name!r} is not a model of this recipe; expected one '
                     f'of {sorted(table)}.')
  try:
    return table[name](**kwargs)
  except TypeError as e:
    raise ValueError(f'Bad config.model arguments for {name!r}: {e}') from e


def build_objective(factory: Callable[..., Any], model: nn.Module,
                    loss_config: Mapping[str, Any] | None, *, drop: tuple[str, ...] = ()):
  """`factory(model, **loss_config)`, with the fields in `drop` left out."""
  kwargs = {k: v for k, v in as_kwargs(loss_config).items() if k not in drop}
  try:
    return factory(model, **kwargs)
  except TypeError as e:
    raise ValueError(f'Bad config.loss settings: {e}') from e


def build_optimizer(optim_config: Mapping[str, Any], *, field: str = 'optim'
                    ) -> optax.GradientTransformation:
  """An optax optimizer from a config section.

  `name` in {'adam', 'adamw', 'sgd'}, `learning_rate`, a linear warm-up then
  cosine decay when `schedule == 'cosine'` (`warmup_steps`, `decay_steps`), an
  optional global-norm clip (`grad_clip_norm`), `weight_decay` (adamw) and
  `momentum` (sgd). `field` names the section in error messages.
  """
  cfg = as_kwargs(optim_config)
  lr = cfg.get('learning_rate', 1e-3)
  if lr <= 0:
    raise ValueError(f'config.{field}.learning_rate must be > 0, got {lr}.')
  schedule = cfg.get('schedule', 'constant')
  if schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=cfg.get('warmup_steps', 0),
        decay_steps=max(cfg['decay_steps'], cfg.get('warmup_steps', 0) + 1))
  elif schedule != 'constant':
    raise ValueError(f"config.{field}.schedule must be 'constant' or 'cosine', got {schedule!r}.")
  name = cfg.get('name', 'adam')
  if name == 'adam':
    tx = optax.adam(lr)
  elif name == 'adamw':
    tx = optax.adamw(lr, weight_decay=cfg.get('weight_decay', 1e-4))
  elif name == 'sgd':
    tx = optax.sgd(lr, momentum=cfg.get('momentum', 0.9))
  else:
    raise ValueError(f"config.{field}.name must be 'adam', 'adamw' or 'sgd', got {name!r}.")
  clip = cfg.get('grad_clip_norm')
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx


def validate_sections(config: ml_collections.ConfigDict) -> None:
  """Checks the sections every run has (`data`, `train`, model sizes).

  Raises:
    ValueError: naming the field and the value at fault.
  """
  for field in ('latent_dim', 'num_codes', 'code_dim'):
    value = config.model.get(field)
    if value is not None and value <= 0:
      raise ValueError(f'config.model.{field} must be > 0, got {value}.')
  for section, field in (('data', 'batch_size'), ('data', 'eval_batch_size'),
                         ('train', 'num_train_steps'), ('train', 'log_every_steps'),
                         ('train', 'eval_every_steps'), ('train', 'checkpoint_every_steps'),
                         ('train', 'num_eval_batches'), ('train', 'keep_checkpoints')):
    value = config[section][field]
    if value <= 0:
      raise ValueError(f'config.{section}.{field} must be > 0, got {value}.')
  for field in ('batch_size', 'eval_batch_size'):
    check_divisible(f'config.data.{field}', config.data[field])
  build_optimizer(config.optim)


def check_divisible(field: str, batch_size: int) -> None:
  """A global batch must split evenly over the devices."""
  if batch_size % jax.device_count():
    raise ValueError(f'{field}={batch_size} is not divisible by the {jax.device_count()} '
                     'devices.')


def schedule(config: ml_collections.ConfigDict) -> Schedule:
  """The `Schedule` of the config's `train` section."""
  return Schedule.from_config(config.train)


def image_batches(config: ml_collections.ConfigDict, split: str, *, batch_size: int,
                  shuffle: bool, start_step: int = 0, drop_remainder: bool = True,
                  whole_batch: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Batches of `split` of `config.data`: this process's rows unless `whole_batch`."""
  return data_lib.batches(
      config.data.name, split, batch_size=batch_size, seed=config.data.shuffle_seed,
      shuffle=shuffle, drop_remainder=drop_remainder, binarize=config.data.binarize,
      start_step=start_step, data_dir=config.data.data_dir,
      process_index=0 if whole_batch else jax.process_index(),
      process_count=1 if whole_batch else jax.process_count())


def train_data(config: ml_collections.ConfigDict) -> Callable[[int], Iterator[dict]]:
  """`train_data(start_step)` over the train split, shuffled, from that step on."""
  return lambda start_step: image_batches(
      config, config.data.train_split, batch_size=config.data.batch_size, shuffle=True,
      start_step=start_step)


def eval_data(config: ml_collections.ConfigDict) -> Callable[[], Iterator[dict]]:
  """`eval_data()` over the eval split in order, the last batch padded (mask 0)."""
  return lambda: image_batches(
      config, config.data.eval_split, batch_size=config.data.eval_batch_size, shuffle=False,
      drop_remainder=False)


def eval_images(config: ml_collections.ConfigDict, num: int) -> dict[str, np.ndarray]:
  """The first `num` (at least) images of the eval split, whole (all processes' rows)."""
  return next(image_batches(config, config.data.eval_split,
                            batch_size=max(config.data.eval_batch_size, num), shuffle=False,
                            drop_remainder=False, whole_batch=True))


def example_images(config: ml_collections.ConfigDict) -> jax.Array:
  """One zero image of the train split's shape, [1, H, W, C], for `model.init`."""
  source = data_lib.open_source(config.data.name, config.data.train_split,
                                data_dir=config.data.get('data_dir'))
  return jnp.zeros((1, *source.element_shape), jnp.float32)


def split_variables(variables: Mapping[str, Any]) -> tuple[dict, dict]:
  """({'params': ...}, the other collections) of a model's variables."""
  params = {'params': variables['params']}
  return params, {k: v for k, v in variables.items() if k != 'params'}


def objective_stage(config: ml_collections.ConfigDict, *, model: nn.Module, objective,
                    init_variables: Callable[[jax.Array], Mapping[str, Any]],
                    tx: optax.GradientTransformation | None = None, name: str = 'model',
                    **overrides) -> Stage:
  """The stage of one objective trained by one optimizer (most families).

  The steps are `train.train_step_fn(objective, tx)` and
  `train.eval_step_fn(objective)`; the state is a `train.TrainState` over the
  variables `init_variables(key)` returns, split into params and model state.
  The data are the config's image splits and the schedule its `train`
  section, unless `overrides` (Stage fields) say otherwise.
  """
  tx = build_optimizer(config.optim) if tx is None else tx

  def init(key):
    params, model_state = split_variables(init_variables(key))
    return train.create_train_state(params, tx, model_state)

  fields = dict(
      name=name, init=init, train_step=train.train_step_fn(objective, tx),
      eval_step=train.eval_step_fn(objective), train_data=train_data(config),
      eval_data=eval_data(config), schedule=schedule(config), seed=config.train.seed,
      model=model)
  fields.update(overrides)
  return Stage(**fields)


def decode_pixels(logits: np.ndarray, config: ml_collections.ConfigDict) -> np.ndarray:
  """Decoder outputs as pixels: sigmoid unless the loss says 'identity'."""
  if config.loss.get('output_activation') == 'identity':
    return np.asarray(logits)
  return np.asarray(jax.nn.sigmoid(logits))


def title(config: ml_collections.ConfigDict) -> str:
  """How figures name a run: its recipe and model."""
  return f"{config.recipe} ({config.model.get('name', '')})"


def write_figures(config: ml_collections.ConfigDict, trained: Trained, workdir: str, *,
                  reconstruct: Callable[[Any, jax.Array], jax.Array],
                  encode: Callable[[Any, jax.Array], jax.Array],
                  sample: Callable[[Any, jax.Array, int], jax.Array] | None = None,
                  sample_title: str = 'samples from the prior') -> list[str]:
  """reconstructions.png, latent_map.png, samples.png (with `sample`) and
  training_curves.png under workdir/figures; process 0 only.

  Args:
    config: the run's config.
    trained: the fitted stage whose model is drawn.
    workdir: the run's directory.
    reconstruct: `(variables, x) -> logits` of x's shape.
    encode: `(variables, x) -> codes [N, ...]` (flattened for the map).
    sample: `(variables, key, n) -> logits [n, H, W, C]` from the prior.
    sample_title: the samples figure's title.

  Returns:
    The paths written ([] outside process 0).
  """
  if jax.process_index() != 0:
    return []
  from ae_jax import plotting  # pylint: disable=g-import-not-at-top
  n = config.train.num_figure_examples
  batch = eval_images(config, n)
  variables = trained.variables
  x = jnp.asarray(batch['image'])
  head = title(config)
  paths = [plotting.save_reconstructions(
      np.asarray(x[:n]), decode_pixels(reconstruct(variables, x[:n]), config),
      plotting.figure_path(workdir, 'reconstructions.png'),
      title=f'{head}: test inputs and reconstructions')]
  codes = np.asarray(encode(variables, x))
  paths.append(plotting.save_latent_map(
      codes.reshape(len(codes), -1), batch.get('label'),
      plotting.figure_path(workdir, 'latent_map.png'), title=f'{head}: test codes'))
  if sample is not None:
    samples = decode_pixels(sample(variables, trained.eval_key, n), config)
    paths.append(plotting.save_image_grid(
        samples.reshape((n,) + x.shape[1:]), plotting.figure_path(workdir, 'samples.png'),
        title=f'{head}: {sample_title}'))
  paths += training_curves(trained, workdir)
  return paths


def training_curves(trained: Trained, workdir: str, name: str = 'training_curves.png'
                    ) -> list[str]:
  """The stage's metrics.jsonl drawn as curves (process 0; [] without records)."""
  metrics_path = os.path.join(trained.workdir, 'metrics.jsonl')
  if jax.process_index() != 0 or not os.path.exists(metrics_path):
    return []
  from ae_jax import plotting  # pylint: disable=g-import-not-at-top
  return [plotting.save_training_curves(metrics_path, plotting.figure_path(workdir, name))]


def jit_apply(model: nn.Module, method: str | None = None, **kwargs):
  """A jitted `(variables, *args) -> model.apply(variables, *args, method=method)`."""
  @functools.partial(jax.jit)
  def apply(variables, *args):
    return model.apply(variables, *args, method=method, **kwargs)
  return apply
