"""DIP-VAE-I and DIP-VAE-II: a VAE whose (aggregate) posterior covariance is pushed to the identity.

`config.loss` holds the hyperparameters of `objectives.make_dip_vae_objective`:
`dip` ('i': the covariance of the posterior means; 'ii': that of the
aggregate posterior), `lambda_od`, `lambda_d`, `beta`, `reconstruction`.
`config.model.name` is 'mlp_vae' or 'conv_vae'. One stage, 'model'; figures
as the `vae` recipe's.

References:
  Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled
  Latent Concepts from Unlabeled Observations", ICLR 2018,
  https://arxiv.org/abs/1711.00848.
"""

from __future__ import annotations

from ae_jax import objectives
from ae_jax.recipes import common
from ae_jax.recipes import vae

MODELS = vae.MODELS


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_dip_vae_objective, model, config.loss)


def validate(config) -> None:
  common.validate_sections(config)
  _model_and_objective(config)


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
