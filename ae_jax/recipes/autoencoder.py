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

import math

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
  """The shared checks, the model and objective, and no loss field without effect.

  An overcomplete code (latent_dim >= the pixels of an image) without a sparsity
  penalty, noise or contraction only warns: it can learn the identity.
  """
  common.validate_sections(config)
  _model_and_objective(config)
  loss = config.loss
  kind = loss.get('objective', 'autoencoder')
  unused = {}
  if kind == 'autoencoder' and not loss.get('kl_sparsity_weight', 0.0):
    unused['loss.rho'] = ('only the KL sparsity penalty (config.loss.kl_sparsity_weight > 0) '
                          'reads it')
  if kind == 'contractive' and loss.get('mode', 'auto') != 'estimate':
    unused['loss.num_probes'] = "only mode='estimate' reads it"
  common.check_unused(config, unused, common.defaults_of(OBJECTIVES[kind]))
  latent_dim = config.model.get('latent_dim')
  plain = kind == 'autoencoder' and not loss.get('l1_weight') and not loss.get(
      'kl_sparsity_weight')
  info = common.split_info(config.data, config.data.train_split) if plain else None
  if info is not None and latent_dim is not None and latent_dim >= math.prod(info[1]):
    common.warn(f'config.model.latent_dim={latent_dim} >= the {math.prod(info[1])} values of an '
                f'image of {config.data.name!r}: without a penalty (l1_weight, '
                "kl_sparsity_weight), noise (objective='denoising') or contraction "
                "(objective='contractive') this autoencoder can learn the identity; "
                'experiments/overcomplete.py measures it.')


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
