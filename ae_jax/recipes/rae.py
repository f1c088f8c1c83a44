"""Regularized autoencoders (RAE): a deterministic autoencoder, then a density fitted to its codes.

Stage 'model' trains `objectives.make_rae_objective` (`config.loss`:
`code_weight` β on ½‖z‖², `regularizer` 'l2' (decoder weight decay), 'gp'
(the decoder's gradient penalty) or 'none', `decoder_weight` λ,
`reconstruction`). Then, ex-post density estimation: `finish` fits a Gaussian
mixture of `config.density.num_components` full-covariance components to the
training set's codes (`fit_code_density`) and draws the samples figure from
it. `config.model.name` is 'mlp_ae' or 'conv_ae'. Final metrics:
'density_test_log_likelihood' (mean log-density of the test codes under the
mixture, nats) and 'density_num_components'.

References:
  Ghosh, Sajjadi, Vergari, Black & Schölkopf, "From Variational to
  Deterministic Autoencoders", ICLR 2020, https://arxiv.org/abs/1903.12436
  (Sec. 4, ex-post density estimation with a 10-component GMM).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import models
from ae_jax import objectives
from ae_jax.recipes import common

MODELS = {'mlp_ae': models.MLPAutoencoder, 'conv_ae': models.ConvAutoencoder}


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_rae_objective, model, config.loss)


def _num_components(config) -> int:
  n = config.get('density', {}).get('num_components', 10)
  if isinstance(n, bool) or not isinstance(n, int) or n < 1:
    raise ValueError(f'config.density.num_components={n!r}: expected an integer >= 1.')
  return n


def validate(config) -> None:
  common.validate_sections(config)
  _model_and_objective(config)
  _num_components(config)
  if config.loss.get('regularizer', 'l2') == 'none':
    common.check_unused(config, {'loss.decoder_weight': "regularizer='none' does not read it"},
                        common.defaults_of(objectives.make_rae_objective))


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained):
  del name, trained
  model, objective = _model_and_objective(config)
  x = common.example_images(config)
  return common.objective_stage(config, model=model, objective=objective,
                                init_variables=lambda key: model.init(key, x))


def fit_code_density(codes_NxZ: np.ndarray, *, num_components: int = 10, seed: int = 0):
  """A full-covariance Gaussian mixture fitted to codes by EM (scikit-learn).

  Args:
    codes_NxZ: training codes.
    num_components: mixture components (the paper's GMM has 10).
    seed: EM initialisation seed.

  Returns:
    A fitted `sklearn.mixture.GaussianMixture`: `.sample(n)` draws codes,
    `.score_samples(codes)` gives log-densities in nats.

  Raises:
    ValueError: codes that are not [N, Z] or fewer than `num_components` rows.

  References:
    Ghosh et al., "From Variational to Deterministic Autoencoders", ICLR 2020,
    https://arxiv.org/abs/1903.12436 (Sec. 4).
  """
  from sklearn import mixture  # pylint: disable=g-import-not-at-top
  codes = np.asarray(codes_NxZ, np.float64)
  if codes.ndim != 2 or len(codes) < num_components:
    raise ValueError(f'codes_NxZ must be [N, Z] with N >= num_components={num_components}, '
                     f'got shape {codes.shape}.')
  gmm = mixture.GaussianMixture(num_components, covariance_type='full', reg_covar=1e-4,
                                random_state=seed, max_iter=200)
  return gmm.fit(codes)


def codes_of(config, model, variables, split: str) -> np.ndarray:
  """The codes [N, Z] of every image of `split`, in order (padding rows dropped)."""
  encode = common.jit_apply(model, 'encode')
  rows = [np.asarray(encode(variables, jnp.asarray(b['image'])))[np.asarray(b['mask']) > 0]
          for b in common.image_batches(config, split, batch_size=config.data.eval_batch_size,
                                        shuffle=False, drop_remainder=False, num_epochs=1,
                                        whole_batch=True)]
  codes = np.concatenate(rows)
  return codes.reshape(len(codes), -1)


def finish(config, trained, workdir) -> dict[str, float]:
  stage = trained['model']
  model = stage.stage.model
  variables = stage.variables
  gmm = fit_code_density(codes_of(config, model, variables, config.data.train_split),
                         num_components=_num_components(config), seed=config.train.seed)
  test_ll = float(np.mean(gmm.score_samples(
      codes_of(config, model, variables, config.data.eval_split))))
  apply = common.jit_apply(model)
  decode = common.jit_apply(model, 'decode')

  def sample(v, key, n):
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    gmm.set_params(random_state=seed)
    z, _ = gmm.sample(n)
    return decode(v, jnp.asarray(z, jnp.float32))

  common.write_figures(config, stage, workdir, reconstruct=lambda v, x: apply(v, x).logits,
                       encode=lambda v, x: apply(v, x).z, sample=sample,
                       sample_title='samples from the ex-post GMM')
  return {'density_test_log_likelihood': test_ll,
          'density_num_components': float(_num_components(config))}
