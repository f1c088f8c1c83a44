"""VAE with the VampPrior (Tomczak & Welling 2018).

`config.model` holds `models.vampprior.VampPriorVAE`'s fields (name 'mlp_vamp',
`hidden`, `latent_dim`, `num_pseudo_inputs`); `config.loss` those of
`objectives.make_iwae_objective`: `num_samples` (1 trains the ELBO with the KL
estimated by sampling, as the prior has no closed-form KL; more trains the
IWAE bound under the same prior), `beta` and `warmup_steps` (the paper's KL
warm-up). One stage, 'model'. Figures: reconstructions of the posterior
means, samples from the VampPrior, the map of the test means, the
pseudo-inputs (`vamp_pseudo_inputs.png`), training curves.

References:
  Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018,
  https://arxiv.org/abs/1705.07120.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import objectives
from ae_jax.models import vampprior
from ae_jax.recipes import common

MODELS = {'mlp_vamp': vampprior.VampPriorVAE}


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_iwae_objective, model, config.loss)


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


def finish(config, trained, workdir) -> dict[str, float]:
  model = trained['model'].stage.model
  encode = common.jit_apply(model, 'encode')
  decode = common.jit_apply(model, 'decode')
  sample_prior = jax.jit(lambda v, key, n: model.apply(v, key, n, method='sample_prior'),
                         static_argnums=2)

  def reconstruct(variables, x):
    mean, _ = encode(variables, x)
    return decode(variables, mean).reshape(x.shape)

  def sample(variables, key, n):
    return decode(variables, sample_prior(variables, key, n))

  paths = common.write_figures(config, trained['model'], workdir, reconstruct=reconstruct,
                               encode=lambda v, x: encode(v, x)[0], sample=sample,
                               sample_title='samples from the VampPrior')
  if paths:
    from ae_jax import plotting  # pylint: disable=g-import-not-at-top
    n = config.train.num_figure_examples
    shape = common.example_images(config).shape[1:]
    pseudo = np.clip(np.asarray(trained['model'].variables['params']['pseudo_inputs'][:n]), 0, 1)
    plotting.save_image_grid(pseudo.reshape((len(pseudo),) + shape),
                             plotting.figure_path(workdir, 'vamp_pseudo_inputs.png'),
                             title=f'{common.title(config)}: pseudo-inputs (clipped to [0, 1])')
  return {}
