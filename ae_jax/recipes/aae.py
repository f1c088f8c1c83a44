"""The adversarial autoencoder (AAE): three optimizers in one pure step.

An AAE is trained in two phases per batch (Makhzani et al. 2015, section 2):
the *reconstruction* phase updates encoder and decoder on the reconstruction
loss; the *regularisation* phase first updates the discriminator to tell prior
samples (label 1) from codes of data (label 0), then updates the encoder, as
the generator, to fool the updated discriminator. `train_step_fn` makes the
three updates in one step, each with its own optax optimizer, and keeps their
states in one `train.TrainState` whose `opt_state` is `{'recon': ..., 'disc':
..., 'gen': ...}`: the loop checkpoints, resumes and shards it like any other.

Config: `config.model` holds `models.AAE`'s fields (name 'aae'); `config.loss`
the prior, the reconstruction and the MMD kernel (`hyperparameters`);
`config.optim`, `config.disc_optim` and `config.gen_optim` the optimizers of
the reconstruction, discriminator and generator phases. One stage, 'model'.
Eval metrics (`make_objective`): recon, disc_loss, gen_loss, disc_accuracy and
mmd. Figures: reconstructions, the latent map and the training curves
(`common.write_figures`), samples.png (decoded prior samples, one row per
mixture component) and aae_latent.png (test codes over the prior).

Devices: `fit` jits the step on one device and shards it over several. Built
with `axis_name`, the step also runs under `jax.pmap`
(`ae_jax.parallel.pmap_train_step`): every replica draws the prior samples of
the whole global batch, as one device would, and keeps its own rows, so the
pmap step equals the one-device step up to float summation order.

Shape letters: B batch, Z latent.

References:
  Makhzani, Shlens, Jaitly, Goodfellow & Frey, "Adversarial Autoencoders",
  2015, https://arxiv.org/abs/1511.05644; Gretton et al. 2012 (MMD).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import losses
from ae_jax import models
from ae_jax import objectives
from ae_jax import train
from ae_jax.models.aae import Prior
from ae_jax.recipes import common
from ae_jax.recipes.base import Stage

Array = jax.Array

MODELS = {'aae': models.AAE}
# The parameter groups each phase's optimizer updates, and its config section.
PHASES = {'recon': ('encoder', 'decoder'), 'disc': ('discriminator',), 'gen': ('encoder',)}
OPTIMIZERS = {'recon': 'optim', 'disc': 'disc_optim', 'gen': 'gen_optim'}


@dataclasses.dataclass(frozen=True)
class Hyperparameters:
  """The AAE's loss settings, shared by the eval objective and the train step."""
  prior: Prior
  conditional: bool
  reconstruction: str
  mmd_kernel: str
  mmd_bandwidths: tuple[float, ...]


def hyperparameters(model: nn.Module, *, prior: str = 'gaussian', prior_radius: float = 4.0,
                    prior_radial_std: float = 1.0, prior_tangential_std: float = 0.25,
                    num_components: int = 10, reconstruction: str = 'bernoulli',
                    mmd_kernel: str = 'imq', mmd_bandwidths=(1.0,)) -> Hyperparameters:
  """Checks the loss settings (`config.loss`) of an AAE against its model.

  Args:
    model: an `ae_jax.models.AAE`; with `num_classes > 0` its discriminator
      sees the labels, which needs the mixture prior with one component per class.
    prior: 'gaussian' or 'mixture' (see `ae_jax.models.aae.Prior`), with
      prior_radius, prior_radial_std, prior_tangential_std, num_components.
    reconstruction: 'bernoulli' or 'mse'.
    mmd_kernel: 'imq' or 'rbf' (`losses.kernel_matrix`), for the eval MMD.
    mmd_bandwidths: its scales σ.

  Raises:
    TypeError: a model without `encode`, `decode` and `discriminate`.
    ValueError: a setting that cannot train, by name.
  """
  for method in ('encode', 'decode', 'discriminate'):
    if not hasattr(model, method):
      raise TypeError(f'{type(model).__name__} has no `{method}`: the AAE step needs an '
                      'ae_jax.models.AAE.')
  if reconstruction not in objectives.RECONSTRUCTIONS:
    raise ValueError(f'Unknown reconstruction {reconstruction!r}; expected one of '
                     f'{objectives.RECONSTRUCTIONS}.')
  conditional = bool(getattr(model, 'num_classes', 0))
  if conditional:
    if prior != 'mixture':
      raise ValueError(f'A label-conditioned discriminator (model.num_classes='
                       f'{model.num_classes}) needs prior="mixture", got {prior!r}.')
    if num_components != model.num_classes:
      raise ValueError(f'num_components={num_components} must equal model.num_classes='
                       f'{model.num_classes}: one mixture component per class.')
  bandwidths = tuple(mmd_bandwidths) if isinstance(mmd_bandwidths, Sequence) else (
      float(mmd_bandwidths),)
  losses.kernel_matrix(jnp.zeros((1, 1)), jnp.zeros((1, 1)), kernel=mmd_kernel,
                       bandwidths=bandwidths)
  return Hyperparameters(
      prior=Prior(prior, model.latent_dim, num_components, prior_radius, prior_radial_std,
                  prior_tangential_std),
      conditional=conditional, reconstruction=reconstruction, mmd_kernel=mmd_kernel,
      mmd_bandwidths=bandwidths)


def _labels(hp: Hyperparameters, batch) -> Array | None:
  if not hp.conditional:
    return None
  if 'label' not in batch:
    raise ValueError("A label-conditioned AAE needs batch['label'] (-1 for unlabelled).")
  return batch['label'].astype(jnp.int32)


def _prior_samples(hp: Hyperparameters, key: Array, num: int, labels: Array | None,
                   axis_name: str | None = None) -> Array:
  """[num, Z] prior samples (of each label's component when conditional).

  Under pmap (`axis_name`) the replica draws the samples of the whole global
  batch from the same key, as one device would, and keeps its own rows.
  """
  if axis_name is None:
    return hp.prior.sample(key, num, labels) if hp.conditional else hp.prior.sample(key, num)
  if labels is not None:
    labels = jax.lax.all_gather(labels, axis_name, tiled=True)
  z = _prior_samples(hp, key, num * jax.lax.axis_size(axis_name), labels)
  return jax.lax.dynamic_slice_in_dim(z, jax.lax.axis_index(axis_name) * num, num)


def _bce_real(logits_B: Array) -> Array:
  """-log D: the discriminator says 'prior sample' (softplus(-l) = -log σ(l))."""
  return jax.nn.softplus(-logits_B)


def _bce_fake(logits_B: Array) -> Array:
  """-log(1 - D) = softplus(l)."""
  return jax.nn.softplus(logits_B)


def make_objective(model: nn.Module, **loss) -> objectives.Objective:
  """The AAE's evaluation objective: `fn(params, batch, key, *, step=0) -> (loss, metrics)`.

  Metrics (batch means): 'recon' (the reconstruction loss, also 'loss');
  'disc_loss' = -log D(z_prior) - log(1 - D(z_data)) (2 ln 2 ≈ 1.386 at
  chance); 'gen_loss' = -log D(z_data) (the non-saturating generator loss);
  'disc_accuracy' on both halves; 'mmd' = unbiased MMD² between the codes
  and as many prior samples (`losses.mmd2`), which falls as the aggregated
  posterior approaches the prior. Training uses `train_step_fn`; this gives
  the same quantities without updating anything.

  Args:
    model: an `ae_jax.models.AAE`.
    **loss: the settings of `hyperparameters`.
  """
  hp = hyperparameters(model, **loss)

  def objective(params, batch, key: Array, *, step=0):
    del step
    x = batch['image']
    labels = _labels(hp, batch)
    z = model.apply(params, x, method=model.encode)
    logits = model.apply(params, z, method=model.decode).reshape(x.shape)
    recon = objectives.batch_mean(
        objectives.reconstruction_loss(logits, x, kind=hp.reconstruction), batch)
    z_prior = _prior_samples(hp, key, x.shape[0], labels)
    d_fake = model.apply(params, z, labels, method=model.discriminate)
    d_real = model.apply(params, z_prior, labels, method=model.discriminate)
    metrics = {
        'recon': recon,
        'disc_loss': objectives.batch_mean(_bce_real(d_real) + _bce_fake(d_fake), batch),
        'gen_loss': objectives.batch_mean(_bce_real(d_fake), batch),
        'disc_accuracy': objectives.batch_mean(
            0.5 * ((d_real > 0).astype(jnp.float32) + (d_fake < 0).astype(jnp.float32)), batch),
        'mmd': losses.mmd2(z, z_prior, kernel=hp.mmd_kernel, bandwidths=hp.mmd_bandwidths,
                           weights_N=batch.get('mask')),
        'loss': recon,
    }
    return recon, metrics

  return objective


def _group(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
  return {'params': {name: params['params'][name] for name in names}}


def _merge(params: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
  return {**params, 'params': {**params['params'], **group['params']}}


def _check_txs(txs: Mapping[str, Any]) -> None:
  if set(txs) != set(PHASES):
    raise ValueError(f'Expected one optimizer per phase {sorted(PHASES)}, got {sorted(txs)}.')


def create_state(params: Mapping[str, Any], txs: Mapping[str, optax.GradientTransformation],
                 model_state: Mapping[str, Any] | None = None) -> train.TrainState:
  """The step-0 state: one optimizer state per phase, each over its own group."""
  _check_txs(txs)
  opt_state = {phase: txs[phase].init(_group(params, names)) for phase, names in PHASES.items()}
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=dict(params),
                          opt_state=opt_state, model_state=dict(model_state or {}))


def train_step_fn(model: nn.Module, txs: Mapping[str, optax.GradientTransformation], *,
                  axis_name: str | None = None, **loss):
  """The pure (un-jitted) three-phase AAE step.

  1. Reconstruction: encoder and decoder take a step of `txs['recon']` on the
     reconstruction loss.
  2. Discriminator: with the updated encoder's codes held fixed, the
     discriminator takes a step of `txs['disc']` on
     -log D(z_prior) - log(1 - D(z_data)).
  3. Generator: the encoder takes a step of `txs['gen']` on -log D(z_data)
     against the updated discriminator.

  The prior noise comes from `fold_in(key, state.step)`, so a resumed run
  draws what an uninterrupted one would.

  Args:
    model: an `ae_jax.models.AAE`.
    txs: one optimizer per phase, {'recon', 'disc', 'gen'}.
    axis_name: the mapped device axis under `jax.pmap`: each phase's gradients
      and losses are averaged over it, and the prior samples are this
      replica's rows of the global batch's (see the module docstring). None
      on one device and under jit with shardings.
    **loss: the settings of `hyperparameters`.

  Returns:
    `step(state, batch, key) -> (new_state, metrics)`; metrics are 'recon'
    (also 'loss'), 'disc_loss', 'gen_loss' (each measured before its own
    update) and the three phases' gradient norms.

  References:
    Makhzani et al., "Adversarial Autoencoders", 2015, section 2.
  """
  hp = hyperparameters(model, **loss)
  _check_txs(txs)
  pmean = (lambda tree: tree) if axis_name is None else (
      lambda tree: jax.lax.pmean(tree, axis_name))

  def update(phase, loss_fn, params, opt_state):
    group = _group(params, PHASES[phase])
    value, grads = pmean(jax.value_and_grad(lambda g: loss_fn(_merge(params, g)))(group))
    updates, new_opt = txs[phase].update(grads, opt_state[phase], group)
    group = optax.apply_updates(group, updates)
    return _merge(params, group), {**opt_state, phase: new_opt}, value, train.global_norm(grads)

  def step(state: train.TrainState, batch, key: Array):
    key = jax.random.fold_in(key, state.step)
    x = batch['image']
    labels = _labels(hp, batch)
    z_prior = _prior_samples(hp, key, x.shape[0], labels, axis_name)
    mean = lambda values: objectives.batch_mean(values, batch)

    def recon_loss(p):
      z = model.apply(p, x, method=model.encode)
      logits = model.apply(p, z, method=model.decode).reshape(x.shape)
      return mean(objectives.reconstruction_loss(logits, x, kind=hp.reconstruction))

    params, opt_state, recon, recon_norm = update('recon', recon_loss, state.params,
                                                  state.opt_state)
    z_data = jax.lax.stop_gradient(model.apply(params, x, method=model.encode))

    def disc_loss(p):
      d_real = model.apply(p, z_prior, labels, method=model.discriminate)
      d_fake = model.apply(p, z_data, labels, method=model.discriminate)
      return mean(_bce_real(d_real) + _bce_fake(d_fake))

    params, opt_state, d_loss, disc_norm = update('disc', disc_loss, params, opt_state)

    def gen_loss(p):
      z = model.apply(p, x, method=model.encode)
      return mean(_bce_real(model.apply(p, z, labels, method=model.discriminate)))

    params, opt_state, g_loss, gen_norm = update('gen', gen_loss, params, opt_state)
    metrics = {'recon': recon, 'loss': recon, 'disc_loss': d_loss, 'gen_loss': g_loss,
               'grad_norm': recon_norm, 'disc_grad_norm': disc_norm, 'gen_grad_norm': gen_norm}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def optimizers(config) -> dict[str, optax.GradientTransformation]:
  """{'recon', 'disc', 'gen'}: the optimizers of `config.optim`, `config.disc_optim`
  and `config.gen_optim`.

  Raises:
    ValueError: a section is missing or invalid (named).
  """
  txs = {}
  for phase, section in OPTIMIZERS.items():
    if section not in config:
      raise ValueError(f"Recipe 'aae' needs a config.{section} section (the {phase} phase's "
                       'optimizer).')
    txs[phase] = common.build_optimizer(config[section], field=section)
  return txs


def _parts(config):
  model = common.build_model(config.model, MODELS)
  objective = common.build_objective(make_objective, model, config.loss)
  return model, optimizers(config), objective


def validate(config) -> None:
  common.validate_sections(config)
  _parts(config)
  if config.loss.get('prior', 'gaussian') == 'gaussian':
    why = "only prior='mixture' reads it"
    common.check_unused(config, {f'loss.{k}': why for k in (
        'num_components', 'prior_radius', 'prior_radial_std', 'prior_tangential_std')},
                        common.defaults_of(hyperparameters))


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained) -> Stage:
  del trained
  model, txs, objective = _parts(config)
  x = common.example_images(config)

  def init(key):
    params, model_state = common.split_variables(model.init(key, x))
    return create_state(params, txs, model_state)

  return Stage(
      name=name, init=init,
      train_step=train_step_fn(model, txs, **common.as_kwargs(config.loss)),
      eval_step=train.eval_step_fn(objective), train_data=common.train_data(config),
      eval_data=common.eval_data(config), schedule=common.schedule(config),
      seed=config.train.seed, model=model)


def finish(config, trained, workdir) -> dict[str, float]:
  fitted = trained['model']
  model = fitted.stage.model
  encode = common.jit_apply(model, 'encode')
  decode = common.jit_apply(model, 'decode')
  common.write_figures(config, fitted, workdir, encode=encode,
                       reconstruct=lambda v, x: decode(v, encode(v, x)).reshape(x.shape))
  if jax.process_index() == 0:
    prior_figures(config, model, fitted.variables, workdir, fitted.eval_key)
  return {}


def prior_figures(config, model: nn.Module, variables, workdir: str, key: Array) -> list[str]:
  """samples.png (decoded prior samples; one row per component of a mixture)
  and aae_latent.png (test codes by class over the prior's density and
  samples), under workdir/figures."""
  from ae_jax import plotting  # pylint: disable=g-import-not-at-top
  prior = hyperparameters(model, **common.as_kwargs(config.loss)).prior
  head = common.title(config)
  sample_key, scatter_key = jax.random.split(key)
  ncols = 8
  if prior.kind == 'mixture':
    z = prior.sample(sample_key, ncols * prior.num_components,
                     jnp.repeat(jnp.arange(prior.num_components), ncols))
    what = 'samples from the prior, one row per mixture component'
  else:
    z = prior.sample(sample_key, 8 * ncols)
    what = 'samples from the prior'
  batch = common.eval_images(config, config.train.num_figure_examples)
  x = jnp.asarray(batch['image'])
  images = common.decode_pixels(model.apply(variables, z, method=model.decode), config)
  paths = [plotting.save_image_grid(
      images.reshape((len(z),) + x.shape[1:]), plotting.figure_path(workdir, 'samples.png'),
      title=f'{head}: {what}', ncols=ncols)]
  codes = np.asarray(model.apply(variables, x, method=model.encode))
  paths.append(plotting.save_codes_over_prior(
      codes, batch.get('label'), np.asarray(prior.sample(scatter_key, 2000)),
      plotting.figure_path(workdir, 'aae_latent.png'),
      log_density=(lambda z: np.asarray(prior.log_prob(z))) if prior.latent_dim == 2 else None,
      title=f'{head}: test codes over the {prior.kind} prior'
      + ('' if prior.latent_dim == 2 else ' (first two dimensions)')))
  return paths
