"""Variational autoencoders: VAE, β-VAE (warm-up, controlled capacity), conv VAE, IWAE.

`config.model.name` is 'mlp_vae' or 'conv_vae'; `config.loss` holds the
hyperparameters of `objectives.make_vae_objective` (β, `warmup_steps`,
`capacity_max`/`capacity_steps`, `objective='iwae'` with `num_samples` for the
importance-weighted bound). One stage, 'model'. Figures: reconstructions of
the posterior means, samples from the prior, the map of the test means,
training curves.

References:
  Kingma & Welling 2014; Higgins et al. 2017 (β-VAE); Burgess et al. 2018
  (capacity); Burda et al. 2016 (IWAE).
"""

from __future__ import annotations

import jax

from ae_jax import models
from ae_jax import objectives
from ae_jax.recipes import common

MODELS = {'mlp_vae': models.MLPVAE, 'conv_vae': models.ConvVAE}


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_vae_objective, model, config.loss)


def unused_loss_fields(loss) -> dict[str, str]:
  """The `loss` fields `objectives.make_vae_objective` does not read with these settings."""
  if loss.get('objective', 'elbo') == 'iwae':
    why = "objective='iwae' does not read it"
    return {'loss.gamma': why, 'loss.capacity_steps': why}
  if loss.get('capacity_max') is None:
    why = 'only the capacity objective (config.loss.capacity_max set) reads it'
    return {'loss.gamma': why, 'loss.capacity_steps': why}
  why = 'the capacity objective (config.loss.capacity_max set) replaces the β term'
  return {'loss.beta': why, 'loss.warmup_steps': why}


def validate(config) -> None:
  common.validate_sections(config)
  _model_and_objective(config)
  common.check_unused(config, unused_loss_fields(config.loss),
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


def finish(config, trained, workdir) -> dict[str, float]:
  model = trained['model'].stage.model
  encode = common.jit_apply(model, 'encode')
  decode = common.jit_apply(model, 'decode')

  def reconstruct(variables, x):
    mean, _ = encode(variables, x)
    return decode(variables, mean).reshape(x.shape)

  def sample(variables, key, n):
    mean, _ = encode(variables, common.example_images(config))
    return decode(variables, jax.random.normal(key, (n,) + mean.shape[1:]))

  common.write_figures(config, trained['model'], workdir, reconstruct=reconstruct,
                       encode=lambda v, x: encode(v, x)[0], sample=sample)
  return {}
