"""WAE-MMD and InfoVAE (MMD-VAE): autoencoders whose aggregate posterior is matched to N(0, I) by MMD.

`config.loss` holds the hyperparameters of `objectives.make_mmd_objective`:
`objective` ('wae' or 'infovae'), `reg_weight` (λ), `alpha` (InfoVAE's α),
`kernel` ('imq' or 'rbf'), `bandwidths`, `reconstruction`.

`config.model.name` is 'mlp_ae' or 'conv_ae' (a deterministic encoder, as in
the WAE paper's MNIST experiments) or 'mlp_vae' / 'conv_vae' (a Gaussian
q(z|x); InfoVAE needs one). One stage, 'model'. Figures: reconstructions,
samples decoded from N(0, I) draws, the map of the test codes, training curves.

References:
  Tolstikhin, Bousquet, Gelly & Schölkopf, "Wasserstein Auto-Encoders", ICLR
  2018, https://arxiv.org/abs/1711.01558.
  Zhao, Song & Ermon, "InfoVAE: Balancing Learning and Inference in
  Variational Autoencoders", AAAI 2019, https://arxiv.org/abs/1706.02262.
"""

from __future__ import annotations

import jax

from ae_jax import models
from ae_jax import objectives
from ae_jax.recipes import common

MODELS = {'mlp_ae': models.MLPAutoencoder, 'conv_ae': models.ConvAutoencoder,
          'mlp_vae': models.MLPVAE, 'conv_vae': models.ConvVAE}


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_mmd_objective, model, config.loss)


def _stochastic(model) -> bool:
  return getattr(model, 'family', None) == 'vae'


def validate(config) -> None:
  common.validate_sections(config)
  _model_and_objective(config)  # Also rejects alpha != 1 with objective='wae'.


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained):
  del name, trained
  model, objective = _model_and_objective(config)
  x = common.example_images(config)
  if _stochastic(model):
    init_variables = lambda key: model.init(key, x, key)
  else:
    init_variables = lambda key: model.init(key, x)
  return common.objective_stage(config, model=model, objective=objective,
                                init_variables=init_variables)


def code_fn(model):
  """`(variables, x) -> codes [B, Z]`: the code, or the posterior mean of a VAE model."""
  encode = common.jit_apply(model, 'encode')
  if _stochastic(model):
    return lambda v, x: encode(v, x)[0]
  return encode


def finish(config, trained, workdir) -> dict[str, float]:
  model = trained['model'].stage.model
  encode = code_fn(model)
  decode = common.jit_apply(model, 'decode')

  def sample(variables, key, n):
    return decode(variables, jax.random.normal(key, (n, model.latent_dim)))

  common.write_figures(
      config, trained['model'], workdir,
      reconstruct=lambda v, x: decode(v, encode(v, x)).reshape(x.shape),
      encode=encode, sample=sample)
  return {}
