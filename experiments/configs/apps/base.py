"""What the application configs share: the argument syntax and the trained model.

An application config is a training config from `experiments/configs/`
(`recipe`, the family in `ae_jax.recipes`, and the sections `model`, `loss`,
`optim`, `data`, `train`: `ae_jax.training` trains it) plus one section of the
application's own. Its `get_config(arg)`
takes a comma-separated argument: a preset name from `common.PRESETS`
('default', 'smoke', 'colab_tpu') and `model=<config name>` to start from
another training config, e.g.

  --config=experiments/configs/apps/dimred.py:smoke,model=vae
"""

import importlib

import ml_collections

from experiments.configs import common

# The arguments get_config takes, for the launcher's --help (comma-separated combinations too).
ARGS = common.PRESETS + ('model=<config>',)


def parse_arg(arg: str | None, *, default_model: str) -> tuple[str, str]:
  """(preset, model config name) from 'preset', 'model=name' or both, comma-separated."""
  preset, model = 'default', default_model
  for part in filter(None, (arg or '').split(',')):
    if part.startswith('model='):
      model = part[len('model='):]
    elif part in common.PRESETS:
      preset = part
    else:
      raise ValueError(f'Unknown config argument {part!r}: expected a preset from '
                       f"{common.PRESETS} or 'model=<name of a config in experiments/configs>'.")
  return preset, model


def training_config(model: str, preset: str) -> ml_collections.ConfigDict:
  """The locked config `experiments/configs/<model>.py` builds for `preset`."""
  if model in ('common', 'apps') or not model.isidentifier():
    raise ValueError(f'model={model!r} is not a training config.')
  try:
    module = importlib.import_module(f'experiments.configs.{model}')
  except ModuleNotFoundError:
    raise ValueError(f'model={model!r}: there is no experiments/configs/{model}.py.') from None
  return module.get_config(preset)


def train_on_fashion_mnist(config: ml_collections.ConfigDict) -> None:
  """Full Fashion-MNIST (60k train) for 6,000 steps, evaluated and saved every 2,000."""
  config.data.name = 'fashion_mnist'
  config.train.num_train_steps = 6000
  config.train.eval_every_steps = 2000
  config.train.checkpoint_every_steps = 2000
  config.train.log_every_steps = 200


def add_section(config: ml_collections.ConfigDict, name: str, fields: dict
                ) -> ml_collections.ConfigDict:
  """Adds the application's section to a locked training config; it stays locked."""
  with config.unlocked():
    config[name] = ml_collections.ConfigDict(fields)
  return config
