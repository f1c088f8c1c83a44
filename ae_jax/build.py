"""Builds models, objectives and optimizers from plain config sections.

The launcher and the notebooks describe a run with an `ml_collections`
config; this module turns its `model`, `loss` and `optim` sections into
objects. It reads the sections as mappings and never parses flags.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import optax

from ae_jax import adversarial
from ae_jax import models
from ae_jax import objectives

MODELS = {
    'mlp_ae': models.MLPAutoencoder,
    'mlp_vae': models.MLPVAE,
    'conv_ae': models.ConvAutoencoder,
    'conv_vae': models.ConvVAE,
    'vqvae': models.VQVAE,
    'ladder_vae': models.LadderVAE,
    'aae': models.AAE,
    'diffusion_ae': models.DiffusionAutoencoder,
    'sequence_vae': models.SequenceVAE,
}

# Variant -> (objective factory, models it accepts).
VARIANTS = {
    'undercomplete': (objectives.make_autoencoder_objective, ('mlp_ae', 'conv_ae')),
    'sparse_l1': (objectives.make_autoencoder_objective, ('mlp_ae', 'conv_ae')),
    'sparse_kl': (objectives.make_autoencoder_objective, ('mlp_ae', 'conv_ae')),
    'denoising': (objectives.make_denoising_objective, ('mlp_ae', 'conv_ae')),
    'contractive': (objectives.make_contractive_objective, ('mlp_ae',)),
    'vae': (objectives.make_vae_objective, ('mlp_vae', 'conv_vae')),
    'beta_vae': (objectives.make_vae_objective, ('mlp_vae', 'conv_vae')),
    'conv_ae': (objectives.make_autoencoder_objective, ('conv_ae',)),
    'conv_vae': (objectives.make_vae_objective, ('conv_vae',)),
    'vqvae': (objectives.make_vqvae_objective, ('vqvae',)),
    'ladder_vae': (objectives.make_ladder_vae_objective, ('ladder_vae',)),
    # Evaluation objective; training uses the three-phase step of TRAINERS['aae'].
    'aae': (adversarial.make_aae_objective, ('aae',)),
    'diffusion_ae': (objectives.make_diffusion_ae_objective, ('diffusion_ae',)),
    'sequence_vae': (objectives.make_sequence_vae_objective, ('sequence_vae',)),
}

GENERATIVE_VARIANTS = ('vae', 'beta_vae', 'conv_vae')


def _aae_trainer(model: nn.Module, config: Mapping[str, Any]) -> adversarial.AAETrainer:
  txs = {}
  for phase, section in (('recon', 'optim'), ('disc', 'disc_optim'), ('gen', 'gen_optim')):
    if section not in config:
      raise ValueError(f'Variant {config["variant"]!r} needs a config.{section} section '
                       f'(the {phase} phase\'s optimizer).')
    try:
      txs[phase] = build_optimizer(config[section])
    except ValueError as e:
      raise ValueError(f'config.{section}: {e}') from e
  try:
    return adversarial.AAETrainer(model, txs, _as_kwargs(config.get('loss')))
  except TypeError as e:
    raise ValueError(f'Bad loss settings for variant {config["variant"]!r}: {e}') from e


# Variants whose train step is not one gradient step of one objective:
# variant -> factory(model, config) of an object with `create_state(params,
# model_state)` and `make_train_step()`. The runner evaluates them with their
# VARIANTS objective and trains them on one device.
TRAINERS = {
    'aae': _aae_trainer,
}


def build_trainer(model: nn.Module, config: Mapping[str, Any]):
  """The multi-phase trainer of `config.variant`, or None for single-objective variants."""
  factory = TRAINERS.get(config['variant'])
  return None if factory is None else factory(model, config)


def _as_kwargs(section: Mapping[str, Any] | None) -> dict[str, Any]:
  if section is None:
    return {}
  items = section.to_dict() if hasattr(section, 'to_dict') else dict(section)
  return {k: tuple(v) if isinstance(v, list) else v for k, v in items.items()}


def build_model(model_config: Mapping[str, Any]) -> nn.Module:
  """`model_config['name']` picks the class; the other fields are its arguments."""
  kwargs = _as_kwargs(model_config)
  name = kwargs.pop('name')
  if name not in MODELS:
    raise ValueError(f'Unknown model {name!r}; expected one of {sorted(MODELS)}.')
  try:
    return MODELS[name](**kwargs)
  except TypeError as e:
    raise ValueError(f'Bad arguments for model {name!r}: {e}') from e


def build_objective(variant: str, model: nn.Module, loss_config: Mapping[str, Any] | None):
  """The objective of `variant` for `model`, with `loss_config` as hyperparameters."""
  if variant not in VARIANTS:
    raise ValueError(f'Unknown variant {variant!r}; expected one of {sorted(VARIANTS)}.')
  factory, _ = VARIANTS[variant]
  try:
    return factory(model, **_as_kwargs(loss_config))
  except TypeError as e:
    raise ValueError(f'Bad loss settings for variant {variant!r}: {e}') from e


def build_optimizer(optim_config: Mapping[str, Any]) -> optax.GradientTransformation:
  """An optax optimizer: name in {'adam', 'adamw', 'sgd'}, a learning rate, a
  linear warm-up then cosine decay when `schedule == 'cosine'`, and an optional
  global-norm clip."""
  cfg = _as_kwargs(optim_config)
  lr = cfg.get('learning_rate', 1e-3)
  if lr <= 0:
    raise ValueError(f'optim.learning_rate must be > 0, got {lr}.')
  schedule = cfg.get('schedule', 'constant')
  if schedule == 'cosine':
    lr = optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=lr, warmup_steps=cfg.get('warmup_steps', 0),
        decay_steps=max(cfg['decay_steps'], cfg.get('warmup_steps', 0) + 1))
  elif schedule != 'constant':
    raise ValueError(f"optim.schedule must be 'constant' or 'cosine', got {schedule!r}.")
  name = cfg.get('name', 'adam')
  if name == 'adam':
    tx = optax.adam(lr)
  elif name == 'adamw':
    tx = optax.adamw(lr, weight_decay=cfg.get('weight_decay', 1e-4))
  elif name == 'sgd':
    tx = optax.sgd(lr, momentum=cfg.get('momentum', 0.9))
  else:
    raise ValueError(f"optim.name must be 'adam', 'adamw' or 'sgd', got {name!r}.")
  clip = cfg.get('grad_clip_norm')
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(clip), tx)
  return tx
