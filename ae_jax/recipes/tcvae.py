"""β-VAE and β-TCVAE, trained for disentanglement (on `ae_jax.data.shapes`).

`config.loss.objective` picks the objective and the other `loss` fields are
its hyperparameters:

  'vae'    recon + β·KL (`objectives.make_vae_objective`: β, warm-up, capacity);
  'tcvae'  recon + α·MI + β·TC + γ·dimension-wise KL with the minibatch-weighted
           sampling estimates (`applications.tcvae.make_tcvae_objective`), whose
           normaliser log(N B) takes N, the size of the train split of
           `config.data`.

`config.model.name` is 'mlp_vae' or 'conv_vae'. One stage, 'model'; figures
as the `vae` recipe's (reconstructions of the posterior means, samples from
the prior, the map of the test means, training curves). The scores
themselves come from `experiments/disentangle.py`, which trains one such run
per objective and seed.

References:
  Higgins et al., "β-VAE", ICLR 2017; Chen, Li, Grosse & Duvenaud, "Isolating
  Sources of Disentanglement in Variational Autoencoders", NeurIPS 2018.
"""

from __future__ import annotations

import functools
from typing import Any

import jax

from ae_jax import objectives
from ae_jax.applications import tcvae
from ae_jax.recipes import common
from ae_jax.recipes import vae

MODELS = vae.MODELS
OBJECTIVES = ('vae', 'tcvae')


def dataset_size(config) -> int:
  """N, the number of examples of the train split of `config.data`."""
  return len(common.data_source(config, config.data.train_split))


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  kind = config.loss.get('objective', 'vae')
  if kind == 'vae':
    factory = objectives.make_vae_objective
  elif kind == 'tcvae':
    factory = functools.partial(tcvae.make_tcvae_objective, dataset_size=dataset_size(config))
  else:
    raise ValueError(f'config.loss.objective={kind!r} is unknown; expected one of '
                     f'{list(OBJECTIVES)}.')
  return model, common.build_objective(factory, model, config.loss, drop=('objective',))


def validate(config) -> None:
  common.validate_sections(config)
  _model_and_objective(config)
  if config.loss.get('objective', 'vae') == 'vae':
    common.check_unused(config, vae.unused_loss_fields(config.loss),
                        common.defaults_of(objectives.make_vae_objective))


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained):
  del name, trained
  model, objective = _model_and_objective(config)
  x = common.example_images(config)
  return common.objective_stage(config, model=model, objective=objective,
                                init_variables=lambda key: model.init(key, x, key))


def initial_variables(config) -> tuple[Any, dict[str, Any]]:
  """`(model, variables)` at step 0: what `ae_jax.training.fit` starts the run from
  (the stage's init at the first of the three keys split from key(config.train.seed)).

  Every objective and β of one seed start from these same variables.
  """
  stage = make_stage(config, 'model', {})
  init_key = jax.random.split(jax.random.key(stage.seed), 3)[0]
  state = jax.device_get(jax.jit(stage.init)(init_key))
  return stage.model, {**state.params, **state.model_state}


finish = vae.finish
