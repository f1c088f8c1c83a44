"""MIWAE, PIWAE and CIWAE: the bounds of "Tighter Variational Bounds are Not Necessarily Better".

`config.loss` holds the hyperparameters of
`objectives.make_tighter_bound_objective`: `bound` ('miwae', 'piwae' or
'ciwae'), `num_samples` (K), `num_groups` (M) and `beta` (CIWAE's β).
`config.model.name` is 'mlp_vae' or 'conv_vae'. One stage, 'model'; figures
as the `vae` recipe's. The plain IWAE and the ELBO are the `vae` recipe's
`objective='iwae'` and `'elbo'`; `experiments/likelihood.py` scores any of
these runs by the same importance-weighted estimate.

References:
  Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, "Tighter Variational
  Bounds are Not Necessarily Better", ICML 2018, https://arxiv.org/abs/1802.04537.
"""

from __future__ import annotations

from ae_jax import objectives
from ae_jax.recipes import common
from ae_jax.recipes import vae

MODELS = vae.MODELS


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_tighter_bound_objective, model,
                                       config.loss)


def validate(config) -> None:
  common.validate_sections(config)
  _model_and_objective(config)
  if config.loss.get('bound', 'miwae') != 'ciwae':
    common.check_unused(config, {'loss.beta': "only bound='ciwae' reads it"},
                        common.defaults_of(objectives.make_tighter_bound_objective))


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained):
  del name, trained
  model, objective = _model_and_objective(config)
  x = common.example_images(config)
  return common.objective_stage(config, model=model, objective=objective,
                                init_variables=lambda key: model.init(key, x, key))


finish = vae.finish
