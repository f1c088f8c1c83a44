"""Builds models, objectives and optimizers from plain config sections.

The launcher and the notebooks describe a run with an `ml_collections`
config; this module turns its `model`, `loss` and `optim` sections into
objects. It reads the sections as mappings and never parses flags.
"""

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import optax

from ae_jax import models
from ae_jax import objectives

MODELS = {
    'mlp_ae': models.MLPAutoencoder,
    'mlp_vae': models.MLPVAE,
    'conv_ae': models.ConvAutoencoder,
    'conv_vae': models.ConvVAE,
    'vqvae': models.VQVAE,
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
}

GENERATIVE_VARIANTS = ('vae', 'beta_vae', 'conv_vae')


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
