"""What the recipes share: config sections to objects, image data, one-objective
stages and the standard figures.

A recipe module reads its config through these helpers so that every family
checks, batches and draws the same way; none of them knows a model class.

`validate_sections` (every recipe's `validate` calls it first) runs
`check_config`: every float finite, every field `RULES` names in range (one
table of dotted-path patterns), no optimizer field the optimizer or schedule
does not read, no image-data field without effect, no batch larger than the
data; `ConfigWarning`s where the run only does less than the config suggests.
A recipe adds the fields its objective ignores with `check_unused`.
"""

from __future__ import annotations

import fnmatch
import functools
import inspect
import math
import os
import warnings
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


# What `build_optimizer` uses for a field its section leaves out; a field that
# the optimizer or schedule does not read must keep this value (`check_config`).
OPTIMIZER_DEFAULTS = dict(name='adam', learning_rate=1e-3, schedule='constant', warmup_steps=0,
                          decay_steps=0, grad_clip_norm=0.0, weight_decay=1e-4, momentum=0.9)


def build_optimizer(optim_config: Mapping[str, Any], *, field: str = 'optim'
                    ) -> optax.GradientTransformation:
  """An optax optimizer from a config section.

  `name` in {'adam', 'adamw', 'sgd'}, `learning_rate`, a linear warm-up then
  cosine decay when `schedule == 'cosine'` (`warmup_steps`, `decay_steps`), an
  optional global-norm clip (`grad_clip_norm` > 0; 0 or None: no clipping),
  `weight_decay` (adamw) and `momentum` (sgd). `field` names the section in
  error messages.

  Raises:
    ValueError: a learning rate that is not finite and > 0, a negative or
      non-finite clip norm, an unknown name or schedule.
  """
  cfg = {**OPTIMIZER_DEFAULTS, **as_kwargs(optim_config)}
  lr = cfg['learning_rate']
  _check_value(f'{field}.learning_rate', lr, _POSITIVE)
  schedule = cfg['schedule']
  if schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=cfg['warmup_steps'],
        decay_steps=max(cfg['decay_steps'], cfg['warmup_steps'] + 1))
  elif schedule != 'constant':
    raise ValueError(f"config.{field}.schedule must be 'constant' or 'cosine', got {schedule!r}.")
  name = cfg['name']
  if name == 'adam':
    tx = optax.adam(lr)
  elif name == 'adamw':
    tx = optax.adamw(lr, weight_decay=cfg['weight_decay'])
  elif name == 'sgd':
    tx = optax.sgd(lr, momentum=cfg['momentum'])
  else:
    raise ValueError(f"config.{field}.name must be 'adam', 'adamw' or 'sgd', got {name!r}.")
  clip = cfg['grad_clip_norm']
  _check_value(f'{field}.grad_clip_norm', clip, _CLIP_NORM)
  if clip:  # 0 and None: no clipping.
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx


def validate_sections(config: ml_collections.ConfigDict, *, image_data: bool = True) -> None:
  """Checks the sections every run has (`check_config`) and the batches' split over devices.

  Args:
    config: the run's config.
    image_data: `config.data` names an image dataset of `ae_jax.data`, whose
      split sizes and fields are checked too (False for a recipe that serves
      its own data: molecules, photo patches).

  Raises:
    ValueError: naming the field, the value and what is allowed.
  """
  check_config(config, image_data=image_data)
  for field in ('batch_size', 'eval_batch_size'):
    check_divisible(f'config.data.{field}', config.data[field])


def check_divisible(field: str, batch_size: int) -> None:
  """A global batch must split evenly over the devices."""
  if batch_size % jax.device_count():
    raise ValueError(f'{field}={batch_size} is not divisible by the {jax.device_count()} '
                     'devices.')


# ----------------------------------------------------------------------------
# Config checks: every number finite and in range, no field without effect, no
# degenerate size. `validate_sections` runs them before any recipe's own checks.


class ConfigWarning(UserWarning):
  """A config that trains, but likely not as meant (e.g. evaluating only at the end)."""


def _is_int(value: Any) -> bool:
  return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_number(value: Any) -> bool:
  return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
      value, (bool, np.bool_))


# A rule: (what is allowed, as the message says it; is_ok(value)). An integer
# rule also needs an int; `None` passes only where the text says so.
Rule = tuple[str, Callable[[Any], bool], bool, bool]  # (text, ok, needs_int, none_ok)

_POSITIVE_INT: Rule = ('> 0', lambda v: v > 0, True, False)
_POSITIVE_INT_OR_NONE: Rule = ('> 0 (or None for all)', lambda v: v > 0, True, True)
_NONNEGATIVE_INT: Rule = ('>= 0', lambda v: v >= 0, True, False)
_POSITIVE: Rule = ('> 0', lambda v: v > 0, False, False)
_NONNEGATIVE: Rule = ('>= 0', lambda v: v >= 0, False, False)
_NONNEGATIVE_OR_NONE: Rule = ('>= 0 (or None for off)', lambda v: v >= 0, False, True)
_PROBABILITY: Rule = ('in [0, 1]', lambda v: 0 <= v <= 1, False, False)
_OPEN_UNIT: Rule = ('in (0, 1)', lambda v: 0 < v < 1, False, False)
_DECAY: Rule = ('in [0, 1)', lambda v: 0 <= v < 1, False, False)
_CLIP_NORM: Rule = ('> 0 (or 0/None for no clipping)', lambda v: v >= 0, False, True)

# Dotted config paths (fnmatch patterns, the first match wins) -> the rule of
# their values; a sequence's every element must pass. Fields no pattern
# matches are only checked to be finite.
RULES: tuple[tuple[str, Rule], ...] = (
    # Steps, counts and sizes.
    ('prior.num_train_steps', ('>= 0 (0: no prior)', lambda v: v >= 0, True, False)),
    ('diffusion.latent.num_train_steps', ('>= 0 (0: no latent DDPM)', lambda v: v >= 0, True,
                                          False)),
    ('*num_train_steps', _POSITIVE_INT),
    ('*_every_steps', _POSITIVE_INT),
    ('*keep_checkpoints', _POSITIVE_INT),
    ('train.num_eval_batches', _POSITIVE_INT_OR_NONE),
    ('train.num_figure_examples', _POSITIVE_INT),
    ('*batch_size', _POSITIVE_INT),
    ('*warmup_steps', _NONNEGATIVE_INT),
    ('*decay_steps', _NONNEGATIVE_INT),
    ('*capacity_steps', _NONNEGATIVE_INT),
    ('*seed', _NONNEGATIVE_INT),
    ('*model_seeds', _NONNEGATIVE_INT),
    ('data.num_train_molecules', _POSITIVE_INT_OR_NONE),
    ('data.num_eval_molecules', _POSITIVE_INT_OR_NONE),
    ('model.num_classes', _NONNEGATIVE_INT),
    ('model.latent_dim', _POSITIVE_INT),
    ('model.latent_dims', _POSITIVE_INT),
    ('model.num_codes', _POSITIVE_INT),
    ('model.code_dim', _POSITIVE_INT),
    ('model.input_dim', _POSITIVE_INT),
    ('data.image_shape', ('> 0 (or None: the default)', lambda v: v > 0, True, True)),
    ('*hidden', _POSITIVE_INT),
    ('*channels', _POSITIVE_INT),
    ('*embed_dim', _POSITIVE_INT),
    # num_samples, num_layers, num_timesteps, num_probes, ... (an application's own
    # section may give 0 a meaning: its script checks it).
    ('model.num_*', _POSITIVE_INT),
    ('loss.num_*', _POSITIVE_INT),
    ('data.num_*', _POSITIVE_INT),
    ('prior.num_*', _POSITIVE_INT),
    ('diffusion.*num_*', _POSITIVE_INT),
    ('molecules.*', _POSITIVE),
    ('*_size', _POSITIVE_INT),  # kernel_size, patch_size, vocab_size
    ('*max_length', _POSITIVE_INT),
    ('model.levels', _POSITIVE_INT),
    ('model.features', _POSITIVE_INT),
    ('model.layers_per_block', _POSITIVE_INT),
    # Rates, weights and probabilities.
    ('*learning_rate', _POSITIVE),
    ('*grad_clip_norm', _CLIP_NORM),
    ('*weight_decay', _NONNEGATIVE),
    ('*momentum', _DECAY),
    ('model.decay', _DECAY),
    ('model.epsilon', _POSITIVE),
    ('model.min_variance', _NONNEGATIVE),
    ('loss.capacity_max', _NONNEGATIVE_OR_NONE),
    ('loss.rho', _OPEN_UNIT),
    ('loss.noise_level', _PROBABILITY),
    ('loss.prior_radial_std', _POSITIVE),
    ('loss.prior_tangential_std', _POSITIVE),
    ('loss.mmd_bandwidths', _POSITIVE),
    ('loss.*', _NONNEGATIVE),  # β, γ, α, KL and penalty weights, free bits, σ, thresholds.
    ('*temperature', _POSITIVE),
    ('*temperatures', _POSITIVE),
    ('*fraction', _OPEN_UNIT),
    ('*traversal_range', _POSITIVE),
)


def _flat(section: Mapping[str, Any], prefix: str = '') -> Iterator[tuple[str, Any]]:
  """(dotted path, value) of every leaf of a (nested) config section."""
  for key, value in section.items():
    path = f'{prefix}{key}'
    if isinstance(value, Mapping) or hasattr(value, 'items'):
      yield from _flat(value, f'{path}.')
    else:
      yield path, value


def _leaves(value: Any) -> list[Any]:
  if isinstance(value, (list, tuple)):
    return [leaf for item in value for leaf in _leaves(item)]
  return [value]


def _check_value(path: str, value: Any, rule: Rule) -> None:
  """Raises ValueError unless `value` (every element of a sequence) passes `rule`."""
  text, ok, needs_int, none_ok = rule
  if value is None:
    if none_ok:
      return
    raise ValueError(f'config.{path} must be {text}, got None.')
  for leaf in _leaves(value):
    if needs_int and not _is_int(leaf):
      raise ValueError(f'config.{path} must be an integer {text}, got {value!r}.')
    if not _is_number(leaf):
      raise ValueError(f'config.{path} must be a number {text}, got {value!r}.')
    if not math.isfinite(leaf):
      raise ValueError(f'config.{path} must be finite, got {value!r}.')
    if not ok(leaf):
      raise ValueError(f'config.{path} must be {text}, got {value!r}.')


def _rule(path: str) -> Rule | None:
  for pattern, rule in RULES:
    if fnmatch.fnmatchcase(path, pattern):
      return rule
  return None


def check_numbers(config: Mapping[str, Any]) -> None:
  """Every float of `config` is finite and every field a `RULES` pattern names is in range.

  Only numbers (and sequences of numbers) are checked against the rules, and
  booleans against the integer ones; strings and None are the recipes' to check.

  Raises:
    ValueError: 'config.<field> must be <allowed>, got <value>.'
  """
  for path, value in _flat(config):
    leaves = _leaves(value)
    for leaf in leaves:
      if isinstance(leaf, (float, np.floating)) and not math.isfinite(leaf):
        raise ValueError(f'config.{path} must be finite, got {value!r}.')
    rule = _rule(path)
    # A count given as a bool is wrong; other non-numbers are the recipes' to check.
    checked = (lambda x: _is_number(x) or x is None or isinstance(x, (bool, np.bool_))
               ) if rule is not None and rule[2] else (lambda x: _is_number(x) or x is None)
    if rule is None or not leaves or not all(checked(x) for x in leaves):
      continue
    _check_value(path, value, rule)


def defaults_of(fn: Callable[..., Any]) -> dict[str, Any]:
  """The keyword defaults of `fn` (an objective factory, a module class)."""
  return {name: p.default for name, p in inspect.signature(fn).parameters.items()
          if p.default is not inspect.Parameter.empty}


def _same(a: Any, b: Any) -> bool:
  if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
    return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
  return a == b


def check_unused(config: ml_collections.ConfigDict, unused: Mapping[str, str],
                 defaults: Mapping[str, Any]) -> None:
  """Rejects a field that has no effect on this run unless it keeps its default.

  Args:
    config: the run's config.
    unused: dotted field ('loss.gamma') -> why nothing reads it here.
    defaults: field name -> the value it may keep (absent: any value is wrong).

  Raises:
    ValueError: 'config.<field>=<value> has no effect: <why>; ...'.
  """
  for path, why in unused.items():
    section, _, name = path.rpartition('.')
    node = config
    for part in filter(None, section.split('.')):
      node = node.get(part) if hasattr(node, 'get') else None
    if node is None or name not in node:
      continue
    value = node[name]
    if name in defaults and _same(value, defaults[name]):
      continue
    keep = f'leave it at {defaults[name]!r}' if name in defaults else 'leave it out'
    raise ValueError(f'config.{path}={value!r} has no effect: {why}; {keep}.')


def warn(message: str) -> None:
  """A `ConfigWarning` (the launcher prints it as one 'warning: ...' line)."""
  warnings.warn(message, ConfigWarning, stacklevel=3)


def _optimizer_sections(config: Mapping[str, Any]) -> list[str]:
  return [name for name in config if name == 'optim' or name.endswith('_optim')]


def check_optimizer(config: ml_collections.ConfigDict, field: str = 'optim') -> None:
  """`build_optimizer`'s checks, and no field the optimizer or schedule does not read.

  Raises:
    ValueError: naming the field, the value and what is allowed.
  """
  section = config[field]
  build_optimizer(section, field=field)
  cfg = {**OPTIMIZER_DEFAULTS, **as_kwargs(section)}
  name, schedule = cfg['name'], cfg['schedule']
  defaults = {k: OPTIMIZER_DEFAULTS[k] for k in ('weight_decay', 'momentum')}
  unused = {}
  if name != 'adamw':
    unused[f'{field}.weight_decay'] = (f"only config.{field}.name='adamw' reads it, the name is "
                                       f'{name!r}')
  if name != 'sgd':
    unused[f'{field}.momentum'] = f"only config.{field}.name='sgd' reads it, the name is {name!r}"
  check_unused(config, unused, defaults)
  if schedule == 'cosine':
    if cfg['decay_steps'] <= 0 or cfg['decay_steps'] < cfg['warmup_steps']:
      raise ValueError(
          f"config.{field}.decay_steps must be > 0 and >= config.{field}.warmup_steps="
          f"{cfg['warmup_steps']} with schedule='cosine' (the rate reaches 0 at decay_steps), "
          f"got {cfg['decay_steps']}.")
  else:
    # A warning, not an error: shipped configs tie decay_steps to num_train_steps,
    # and --config.optim.schedule=constant should not need two more flags.
    ignored = [f'{k}={cfg[k]}' for k in ('warmup_steps', 'decay_steps') if cfg[k]]
    if ignored:
      warn(f"config.{field}: {', '.join(ignored)} have no effect with schedule={schedule!r}.")
  steps = config.train.num_train_steps
  if schedule == 'cosine' and cfg['warmup_steps'] > steps:
    warn(f"config.{field}.warmup_steps={cfg['warmup_steps']} > config.train.num_train_steps="
         f'{steps}: the learning rate never reaches its peak.')


# Datasets whose images are 0/1 already: `data.binarize` changes nothing.
BINARY_DATASETS = ('binarized_mnist', 'shapes')


def _is_source(name: Any) -> bool:
  """An in-memory source object in `config.data.name` (as the anomaly app's per-class
  configs hold), which `ae_jax.data.open_source` serves as it is for every split."""
  return not isinstance(name, str) and all(
      hasattr(name, attr) for attr in ('get', '__len__', 'element_shape'))


def check_dataset_name(name: Any) -> None:
  """Raises ValueError unless `name` is a dataset of `ae_jax.data` ('tfds:<name>',
  'npz:PATH' and 'folder:PATH' included) or a source object."""
  if _is_source(name):
    return
  if not isinstance(name, str) or not (name in data_lib.known_datasets()
                                       or name.startswith(data_lib.sources.TFDS_PREFIX)
                                       or data_lib.sources.is_own_data(name)):
    raise ValueError(f'config.data.name={name!r} is not a dataset of ae_jax.data; expected one '
                     f"of {list(data_lib.known_datasets())}, 'tfds:<name>' (a TFDS image "
                     "dataset), or your own images: 'npz:PATH' (a .npz with 'image' [N, H, W, "
                     "C] and optional 'label') or 'folder:PATH' (image files, class "
                     'subfolders as labels).')


def data_source(config: ml_collections.ConfigDict, split: str) -> data_lib.Source:
  """`split` of `config.data`'s dataset as a source (`ae_jax.data.open_source`), with
  its `data_dir` and `image_shape`."""
  return data_lib.open_source(config.data.name, split, data_dir=config.data.get('data_dir'),
                              image_shape=config.data.get('image_shape'))


def load_arrays(config: ml_collections.ConfigDict, split: str
                ) -> tuple[np.ndarray, np.ndarray]:
  """`split` of `config.data`'s dataset as arrays (`ae_jax.data.load_arrays`)."""
  return data_lib.load_arrays(config.data.name, split, data_dir=config.data.get('data_dir'),
                              image_shape=config.data.get('image_shape'))


def split_info(data_config: Mapping[str, Any], split: str) -> tuple[int, tuple[int, ...]] | None:
  """(number of examples, [H, W, C]) of `split`, or None where that is not known
  without reading the data (a TFDS dataset not prepared: loading it says how).

  Raises:
    ValueError: an in-memory dataset without such a split, an unknown dataset.
  """
  name = data_config['name']
  check_dataset_name(name)
  if _is_source(name):
    return len(name), tuple(name.element_shape)
  if name in data_lib.IN_MEMORY_DATASETS or data_lib.sources.is_own_data(name):
    source = data_lib.open_source(name, split, image_shape=data_config.get('image_shape'))
    return len(source), tuple(source.element_shape)
  tfds_name = name.removeprefix(data_lib.sources.TFDS_PREFIX)
  data_dir = os.path.expanduser(data_config.get('data_dir') or data_lib.default_data_dir())
  # Whether ae-jax can read the dataset at all comes before whether it is prepared.
  data_lib.sources.tfds_builder(name, data_dir, data_config.get('image_shape'))
  if not os.path.isdir(os.path.join(data_dir, tfds_name)):
    return None
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
    info = tfds.builder(tfds_name, data_dir=data_dir).info
    shape = data_config.get('image_shape') or info.features['image'].shape
    return info.splits[split].num_examples, tuple(shape)
  except Exception:  # pylint: disable=broad-except
    return None  # Opening the source reports what is wrong, with the fix.


def check_image_data(config: ml_collections.ConfigDict) -> tuple[int, ...] | None:
  """The image fields of `config.data` against the dataset's splits; returns [H, W, C]
  (None where unknown before the data is read).

  Raises:
    ValueError: a field without effect for this dataset, a batch larger than
      the train split, more eval batches or figure examples than the eval split has.
  """
  data, train = config.data, config.train
  name = data.name
  # A source object is not a named dataset: the name rules do not apply to it.
  name_text = None if _is_source(name) else name
  shown = getattr(name, 'name', type(name).__name__) if name_text is None else name
  if data.get('binarize') and name_text in BINARY_DATASETS:
    raise ValueError(f'config.data.binarize=True has no effect: the images of {name!r} are '
                     '0/1 already; leave it at False.')
  own_data = data_lib.sources.is_own_data(name_text)
  if data.get('data_dir') is not None and (name_text in data_lib.IN_MEMORY_DATASETS
                                           or own_data):
    raise ValueError(f'config.data.data_dir={data.data_dir!r} has no effect: {name!r} is '
                     f'{"read from its own path" if own_data else "built in"} (data_dir is '
                     'where TFDS datasets are read); leave it at None.')
  tfds_data = isinstance(name_text, str) and (name_text in data_lib.TFDS_DATASETS or
                                              name_text.startswith(data_lib.sources.TFDS_PREFIX))
  if data.get('image_shape') is not None:
    if not (own_data or tfds_data):
      raise ValueError(f'config.data.image_shape={tuple(data.image_shape)!r} has no effect on '
                       f"{shown!r}: only 'folder:PATH' and TFDS images are resized to it "
                       "('npz:PATH' checks it); leave it at None.")
    data_lib.sources.check_image_shape(data.image_shape, what='config.data.image_shape')
  check_dataset_name(name)
  if own_data:
    try:  # The whole file or folder is checked once, with the path in the message.
      data_source(config, data.train_split if data.train_split in ('train', 'test')
                  else 'train')
    except ValueError as e:
      raise ValueError(f'config.data.name={name!r}: {e}') from None
  infos = {}
  for field in ('train_split', 'eval_split'):
    try:
      infos[field] = split_info(data, data[field])
    except ValueError as e:
      raise ValueError(f'config.data.{field}={data[field]!r}: {e}') from None
  train_info, eval_info = infos['train_split'], infos['eval_split']
  if train_info is not None and data.batch_size > train_info[0]:
    raise ValueError(f'config.data.batch_size={data.batch_size} is larger than the '
                     f'{train_info[0]} examples of the {data.train_split!r} split of {shown!r}; '
                     f'it must be at most {train_info[0]}.')
  if eval_info is not None:
    num_eval = eval_info[0]
    available = math.ceil(num_eval / data.eval_batch_size)
    if train.get('num_eval_batches') is not None and train.num_eval_batches > available:
      raise ValueError(
          f'config.train.num_eval_batches={train.num_eval_batches} is more than the {available} '
          f'batch(es) of config.data.eval_batch_size={data.eval_batch_size} that the '
          f'{num_eval} examples of the {data.eval_split!r} split of {shown!r} make; it must be '
          f'at most {available}.')
    if train.get('num_figure_examples', 0) > num_eval:
      raise ValueError(f'config.train.num_figure_examples={train.num_figure_examples} is more '
                       f'than the {num_eval} examples of the {data.eval_split!r} split of '
                       f'{shown!r}; it must be at most {num_eval}.')
    if data.eval_batch_size > num_eval:
      warn(f'config.data.eval_batch_size={data.eval_batch_size} is larger than the {num_eval} '
           f'examples of the {data.eval_split!r} split: each evaluation is one padded batch.')
  info = train_info or eval_info
  return None if info is None else info[1]


def check_schedule(config: ml_collections.ConfigDict) -> None:
  """Warns where `config.train` logs, evaluates or checkpoints only at the last step."""
  train = config.train
  for field in ('log_every_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    if train[field] > train.num_train_steps:
      warn(f'config.train.{field}={train[field]} > config.train.num_train_steps='
           f'{train.num_train_steps}: only at the last step.')
  warmup = config.loss.get('warmup_steps') if 'loss' in config else None
  if _is_int(warmup) and warmup > train.num_train_steps:
    warn(f'config.loss.warmup_steps={warmup} > config.train.num_train_steps='
         f'{train.num_train_steps}: the KL weight never reaches config.loss.beta.')


def check_config(config: ml_collections.ConfigDict, *, image_data: bool = True) -> None:
  """The checks every recipe shares, in order: numbers (`check_numbers`), optimizers
  (`check_optimizer`), the loss's output activation, the image data
  (`check_image_data`, if `image_data`); then `check_schedule`'s warnings.

  Raises:
    ValueError: naming the field, the value and what is allowed.
  """
  check_numbers(config)
  for field in _optimizer_sections(config):
    check_optimizer(config, field)
  loss = config.get('loss') or {}
  if loss.get('reconstruction') == 'bernoulli' and loss.get('output_activation',
                                                           'sigmoid') != 'sigmoid':
    raise ValueError(f"config.loss.output_activation={loss['output_activation']!r} has no "
                     "effect: reconstruction='bernoulli' reads the logits (and the figures "
                     "would draw them raw); leave it at 'sigmoid'.")
  if image_data:
    check_input_dim(config, check_image_data(config))
  check_schedule(config)


# Models of flattened images, whose `input_dim` (default 784) must be H * W * C, and
# models of fixed-shape images, whose `image_shape` (default (28, 28, 1)) must be [H, W, C].
_DENSE_INPUT_MODELS = ('mlp_vae', 'mlp_ae', 'aae', 'ssaae', 'ladder_vae')
_DEFAULT_INPUT_DIM = 784
_SHAPED_INPUT_MODELS = ('conv_vae', 'conv_ae', 'vqvae')
_DEFAULT_MODEL_IMAGE_SHAPE = (28, 28, 1)


def check_input_dim(config: ml_collections.ConfigDict, shape: tuple[int, ...] | None) -> None:
  """The model's input size (`config.model.input_dim` of a dense model,
  `config.model.image_shape` of a convolutional one) against the data's [H, W, C]."""
  model = config.get('model') or {}
  name = model.get('name')
  if shape is None or name not in _DENSE_INPUT_MODELS + _SHAPED_INPUT_MODELS:
    return
  shape = tuple(shape)
  if name in _DENSE_INPUT_MODELS:
    field, wanted = 'input_dim', math.prod(shape)
    given = model.get(field, _DEFAULT_INPUT_DIM)
    fits = lambda: given == wanted
    data_shape = f'{"x".join(map(str, shape))} = {wanted} values'
    alternative = (f'give config.data.image_shape {given} values (e.g. (28, 28, 1)) if the data '
                   "is 'folder:PATH'")
  else:
    field, wanted = 'image_shape', shape
    given = model.get(field, _DEFAULT_MODEL_IMAGE_SHAPE)
    fits = lambda: tuple(given) == wanted
    data_shape = f'of shape {wanted}'
    alternative = (f'give config.data.image_shape={tuple(given)} if the data is '
                   "'folder:PATH'")
  try:
    if fits():
      return
  except TypeError:
    return  # Not a number or shape: the model's own checks name it.
  shown = f'config.model.{field}={given!r}' + ('' if field in model else ' (the model default)')
  fix = (f'set config.model.{field}={wanted!r}' if field in model else
         f'this config has no config.model.{field} field to set: {alternative}')
  raise ValueError(f'{shown} does not fit the data: the images of {config.data.name!r} are '
                   f'{data_shape}; {fix}.')


def schedule(config: ml_collections.ConfigDict) -> Schedule:
  """The `Schedule` of the config's `train` section."""
  return Schedule.from_config(config.train)


def image_batches(config: ml_collections.ConfigDict, split: str, *, batch_size: int,
                  shuffle: bool, start_step: int = 0, drop_remainder: bool = True,
                  whole_batch: bool = False, num_epochs: int | None = None
                  ) -> Iterator[dict[str, np.ndarray]]:
  """Batches of `split` of `config.data`: this process's rows unless `whole_batch`;
  endless unless `num_epochs`."""
  data = (data_source(config, split) if (data_lib.sources.is_own_data(config.data.name)
                                          or config.data.get('image_shape') is not None)
          else config.data.name)
  return data_lib.batches(
      data, split, batch_size=batch_size, seed=config.data.shuffle_seed,
      shuffle=shuffle, drop_remainder=drop_remainder, binarize=config.data.binarize,
      start_step=start_step, data_dir=config.data.data_dir, num_epochs=num_epochs,
      process_index=0 if whole_batch else jax.process_index(),
      process_count=1 if whole_batch else jax.process_count())


def train_data(config: ml_collections.ConfigDict) -> Callable[[int], Iterator[dict]]:
  """`train_data(start_step)` over the train split, shuffled, from that step on."""
  return lambda start_step: image_batches(
      config, config.data.train_split, batch_size=config.data.batch_size, shuffle=True,
      start_step=start_step)


def eval_data(config: ml_collections.ConfigDict) -> Callable[[], Iterator[dict]]:
  """`eval_data()`: one pass over the eval split in order, the last batch padded
  (mask 0), so `train.num_eval_batches=None` evaluates the whole split once."""
  return lambda: image_batches(
      config, config.data.eval_split, batch_size=config.data.eval_batch_size, shuffle=False,
      drop_remainder=False, num_epochs=1)


def eval_images(config: ml_collections.ConfigDict, num: int) -> dict[str, np.ndarray]:
  """The first `num` (at least) images of the eval split, whole (all processes' rows)."""
  return next(image_batches(config, config.data.eval_split,
                            batch_size=max(config.data.eval_batch_size, num), shuffle=False,
                            drop_remainder=False, whole_batch=True))


def example_images(config: ml_collections.ConfigDict) -> jax.Array:
  """One zero image of the train split's shape, [1, H, W, C], for `model.init`."""
  source = data_source(config, config.data.train_split)
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
