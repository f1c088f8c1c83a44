"""The ladder VAE: a hierarchy of stochastic layers with a precision-weighted merge.

`config.model` holds `LadderVAE`'s fields (name 'ladder_vae', normalisation
included; with 'batch' the train state carries the 'batch_stats' collection
as model state, the objective being stateful); `config.loss` the
hyperparameters of `objectives.make_ladder_vae_objective` (KL warm-up, free
bits per layer or per unit, KL balancing, ELBO or IWAE). One stage,
'model'. Figures: reconstructions from posterior samples, ancestral samples
z_L → … → z_1 → x, the map of the top layer's posterior means, the KL of
each layer (kl_per_layer.png) and the training curves.

References:
  Sønderby, Raiko, Maaløe, Sønderby & Winther, "Ladder Variational
  Autoencoders", NeurIPS 2016, https://arxiv.org/abs/1602.02282.
"""

from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import losses
from ae_jax import models
from ae_jax import objectives
from ae_jax.recipes import common

MODELS = {'ladder_vae': models.LadderVAE}


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_ladder_vae_objective, model, config.loss)


def validate(config) -> None:
  common.validate_sections(config)
  if config.loss.get('objective', 'elbo') == 'iwae':
    common.check_unused(config, {'loss.active_threshold': "objective='iwae' does not read it",
                                 'loss.free_bits_group': "objective='iwae' has no free bits"},
                        common.defaults_of(objectives.make_ladder_vae_objective))
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


def layer_kl(model, variables, x: jax.Array, key: jax.Array) -> np.ndarray:
  """Mean KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1})) of each layer over `x`, [L] nats."""
  out = model.apply(variables, x, key)
  return np.array([float(jnp.mean(losses.gaussian_kl_between(qm, qv, pm, pv)))
                   for qm, qv, pm, pv in zip(out.q_mean, out.q_log_var, out.p_mean,
                                             out.p_log_var)])


def finish(config, trained, workdir) -> dict[str, float]:
  fitted = trained['model']
  model = fitted.stage.model
  recon_key, sample_key, kl_key = jax.random.split(fitted.eval_key, 3)
  forward = jax.jit(lambda v, x, k: model.apply(v, x, k).logits)
  means = common.jit_apply(model, 'posterior_means')
  paths = common.write_figures(
      config, fitted, workdir,
      reconstruct=lambda v, x: forward(v, x, recon_key),
      encode=lambda v, x: means(v, x)[-1],
      sample=lambda v, key, n: model.apply(v, sample_key, n, method=model.sample)[0],
      sample_title='ancestral samples from the prior')
  if paths:
    from ae_jax import plotting  # pylint: disable=g-import-not-at-top
    x = jnp.asarray(common.eval_images(config, config.train.num_figure_examples)['image'])
    plotting.save_layer_kl(
        layer_kl(model, fitted.variables, x, kl_key), tuple(model.latent_dims),
        os.path.join(fitted.workdir, 'metrics.jsonl'),
        plotting.figure_path(workdir, 'kl_per_layer.png'),
        title=f'{common.title(config)}: KL(q ‖ p) per layer')
  return {}
