"""Deterministic autoencoders: undercomplete, sparse (L1, KL), denoising, contractive.

One recipe, many configs: `config.loss.objective` picks the objective and the
other `loss` fields are its hyperparameters.

  'autoencoder'   reconstruction, plus `l1_weight`·Σ|z| (sparse, L1) or
                  `kl_sparsity_weight`·Σ_j KL(ρ‖ρ̂_j) (sparse, KL);
  'denoising'     reconstruct x from a corrupted copy (`noise`, `noise_level`);
  'contractive'   reconstruction + `weight`·‖J_f(x)‖²_F (`mode`, `num_probes`).

`config.model.name` is 'mlp_ae' or 'conv_ae'. One stage, 'model'. Figures:
reconstructions, the test codes' map, training curves.

References:
  Hinton & Salakhutdinov 2006; Ng 2011 (sparse); Vincent et al. 2008
  (denoising); Rifai et al. 2011 (contractive).
"""

from __future__ import annotations

from ae_jax import models
from ae_jax import objectives
from ae_jax.recipes import common

MODELS = {'mlp_ae': models.MLPAutoencoder, 'conv_ae': models.ConvAutoencoder}
OBJECTIVES = {
    'autoencoder': objectives.make_autoencoder_objective,
    'denoising': objectives.make_denoising_objective,
    'contractive': objectives.make_contractive_objective,
}


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  kind = config.loss.get('objective', 'autoencoder')
  if kind not in OBJECTIVES:
    raise ValueError(f'config.loss.objective={kind!r} is unknown; expected one of '
                     f'{sorted(OBJECTIVES)}.')
  return model, common.build_objective(OBJECTIVES[kind], model, config.loss, drop=('objective',))


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
                                init_variables=lambda key: model.init(key, x))


def finish(config, trained, workdir) -> dict[str, float]:
  model = trained['model'].stage.model
  apply = common.jit_apply(model)
  common.write_figures(config, trained['model'], workdir,
                       reconstruct=lambda v, x: apply(v, x).logits,
                       encode=lambda v, x: apply(v, x).z)
  return {}
