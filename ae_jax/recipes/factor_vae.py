"""FactorVAE: a VAE whose total correlation is estimated by a discriminator, two optimizers in one step.

The objective of Kim & Mnih (2018, Eq. 2 and Algorithm 2) per batch:

  VAE      recon + KL(q(z|x) ‖ N(0, I)) + γ · TC_D,  TC_D = mean_b logit D(z_b)
           (the density-ratio trick: log q(z)/Π_j q(z_j) ≈ log D/(1 - D) = logit D);
  D        -log D(z) - log(1 - D(perm(z'))): codes z of the batch against codes
           z' whose every dimension is permuted across the batch independently
           (`permute_dims`), samples of Π_j q(z_j).

`train_step_fn` makes both updates in one step, each with its own optax
optimizer (`config.optim` for the VAE, `config.disc_optim` for the
discriminator), and keeps their states in one `train.TrainState` whose
`opt_state` is `{'vae': ..., 'disc': ...}`. Algorithm 2 draws z' from a second
batch; here z' is a second posterior sample of the same batch (another key),
permuted, so one batch serves both updates.

Config: `config.model` holds `FactorVAEModel`'s fields (name 'mlp_factor_vae':
an `MLPVAE` plus `disc_hidden`), `config.loss` `gamma` and `reconstruction`.
One stage, 'model'. Eval metrics: recon, kl, tc (TC_D), disc_loss,
disc_accuracy, loss. Figures as the `vae` recipe's.

Shape letters: B batch, Z latent.

References:
  Kim & Mnih, "Disentangling by Factorising", ICML 2018,
  https://arxiv.org/abs/1802.05983.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import optax

from ae_jax import layers
from ae_jax import losses
from ae_jax import objectives
from ae_jax import train
from ae_jax.models import vae as vae_models
from ae_jax.recipes import common
from ae_jax.recipes import vae
from ae_jax.recipes.base import Stage

Array = jax.Array

DISCRIMINATOR = 'discriminator'
PHASES = ('vae', 'disc')
OPTIMIZERS = {'vae': 'optim', 'disc': 'disc_optim'}


class FactorVAEModel(vae_models.MLPVAE):
  """The `MLPVAE` plus a discriminator Z -> disc_hidden -> 1 logit on codes.

  `params['discriminator']` is the discriminator, every other parameter the
  VAE; `init_all` initialises both. The logit is large for codes of q(z) and
  small for codes of Π_j q(z_j).

  Attributes:
    disc_hidden: the discriminator's hidden sizes (the paper: 6 x 1000,
      leaky ReLU).
    (the rest as `MLPVAE`.)

  References:
    Kim & Mnih, "Disentangling by Factorising", ICML 2018 (Appendix).
  """
  disc_hidden: Sequence[int] = (500, 500)

  def setup(self):
    super().setup()
    self.discriminator = layers.MLP(tuple(self.disc_hidden) + (1,), activation='leaky_relu')

  def discriminate(self, z_BxZ: Array) -> Array:
    """Logits [B] of 'z is a sample of q(z)'."""
    return self.discriminator(z_BxZ)[:, 0]

  def init_all(self, x: Array, key: Array):
    """`__call__` and then `discriminate` on its codes: `init` with it creates every parameter."""
    out = self(x, key)
    self.discriminate(out.z)
    return out


MODELS = {'mlp_factor_vae': FactorVAEModel}


def permute_dims(key: Array, z_BxZ: Array) -> Array:
  """Every column of z permuted across the batch with its own permutation, [B, Z].

  Samples of the product of the marginals Π_j q(z_j) when the rows are samples
  of q(z) (Kim & Mnih 2018, Algorithm 1).
  """
  keys = jax.random.split(key, z_BxZ.shape[1])
  return jax.vmap(lambda k, col: jax.random.permutation(k, col), in_axes=(0, 1),
                  out_axes=1)(keys, z_BxZ)


def hyperparameters(*, gamma: float = 6.4, reconstruction: str = 'bernoulli'
                    ) -> tuple[float, str]:
  """Checks `config.loss`: γ >= 0 and a known reconstruction; returns (γ, reconstruction)."""
  if gamma < 0:
    raise ValueError(f'config.loss.gamma must be >= 0, got {gamma}.')
  if reconstruction not in objectives.RECONSTRUCTIONS:
    raise ValueError(f'config.loss.reconstruction={reconstruction!r} is unknown; expected one '
                     f'of {objectives.RECONSTRUCTIONS}.')
  return gamma, reconstruction


def _bce_joint(logits_B: Array) -> Array:
  """-log D(z) = softplus(-l): z labelled as a sample of q(z)."""
  return jax.nn.softplus(-logits_B)


def _bce_product(logits_B: Array) -> Array:
  """-log(1 - D(z)) = softplus(l): z labelled as a sample of Π_j q(z_j)."""
  return jax.nn.softplus(logits_B)


def _group(params: Mapping[str, Any], phase: str) -> dict[str, Any]:
  tree = params['params']
  keep = (lambda k: k == DISCRIMINATOR) if phase == 'disc' else (lambda k: k != DISCRIMINATOR)
  return {'params': {k: v for k, v in tree.items() if keep(k)}}


def _merge(params: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
  return {**params, 'params': {**params['params'], **group['params']}}


def _vae_terms(model, params, x, key, batch, reconstruction):
  """recon, KL and TC_D (batch means) of one posterior sample drawn with `key`."""
  out = model.apply(params, x, key)
  mean = lambda v: objectives.batch_mean(v, batch)
  recon = mean(objectives.reconstruction_loss(out.logits, x, kind=reconstruction))
  kl = mean(losses.gaussian_kl(out.mean, out.log_var))
  tc = mean(model.apply(params, out.z, method='discriminate'))
  return recon, kl, tc


def _disc_terms(model, params, x, key, batch):
  """The discriminator's loss and accuracy on codes of q(z) and permuted codes."""
  joint_key, second_key, perm_key = jax.random.split(key, 3)
  z = jax.lax.stop_gradient(model.apply(params, x, joint_key).z)
  z_perm = permute_dims(perm_key, jax.lax.stop_gradient(model.apply(params, x, second_key).z))
  l_joint = model.apply(params, z, method='discriminate')
  l_perm = model.apply(params, z_perm, method='discriminate')
  mean = lambda v: objectives.batch_mean(v, batch)
  loss = mean(_bce_joint(l_joint) + _bce_product(l_perm))
  accuracy = mean(0.5 * ((l_joint > 0).astype(jnp.float32) + (l_perm < 0).astype(jnp.float32)))
  return loss, accuracy


def make_objective(model, **loss) -> objectives.Objective:
  """The eval objective: both phases' losses at the current parameters, no update.

  Metrics: 'recon', 'kl', 'tc' (TC_D), 'loss' (recon + KL + γ TC_D),
  'disc_loss', 'disc_accuracy'. The permuted codes of the last eval batch
  may include its padding rows' codes (zero images); the means leave those
  rows out.
  """
  gamma, reconstruction = hyperparameters(**loss)

  def objective(params, batch, key: Array, *, step=0):
    del step  # No schedule.
    x = batch['image']
    vae_key, disc_key = jax.random.split(key)
    recon, kl, tc = _vae_terms(model, params, x, vae_key, batch, reconstruction)
    disc_loss, accuracy = _disc_terms(model, params, x, disc_key, batch)
    total = recon + kl + gamma * tc
    return total, {'recon': recon, 'kl': kl, 'tc': tc, 'loss': total, 'disc_loss': disc_loss,
                   'disc_accuracy': accuracy}

  return objective


def create_state(params: Mapping[str, Any], txs: Mapping[str, optax.GradientTransformation]
                 ) -> train.TrainState:
  """The step-0 state: one optimizer state per phase, each over its own parameters."""
  opt_state = {phase: txs[phase].init(_group(params, phase)) for phase in PHASES}
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=dict(params),
                          opt_state=opt_state, model_state={})


def train_step_fn(model, txs: Mapping[str, optax.GradientTransformation], **loss):
  """The pure (un-jitted) two-phase FactorVAE step (Kim & Mnih 2018, Algorithm 2).

  1. VAE: every parameter but the discriminator's takes a step of
     `txs['vae']` on recon + KL + γ · TC_D.
  2. Discriminator: with the updated VAE's codes held fixed, the
     discriminator takes a step of `txs['disc']` on -log D(z) - log(1 -
     D(perm z')).

  The noise comes from `fold_in(key, state.step)`, so a resumed run draws
  what an uninterrupted one would.

  Returns:
    `step(state, batch, key) -> (new_state, metrics)`; metrics 'loss', 'recon',
    'kl', 'tc' (before the VAE update), 'disc_loss' (before the discriminator
    update) and both phases' gradient norms.
  """
  gamma, reconstruction = hyperparameters(**loss)

  def update(phase, loss_fn, params, opt_state):
    group = _group(params, phase)
    (value, aux), grads = jax.value_and_grad(
        lambda g: loss_fn(_merge(params, g)), has_aux=True)(group)
    updates, new_opt = txs[phase].update(grads, opt_state[phase], group)
    group = optax.apply_updates(group, updates)
    return _merge(params, group), {**opt_state, phase: new_opt}, value, aux, train.global_norm(grads)

  def step(state: train.TrainState, batch, key: Array):
    key = jax.random.fold_in(key, state.step)
    vae_key, disc_key = jax.random.split(key)
    x = batch['image']

    def vae_loss(p):
      recon, kl, tc = _vae_terms(model, p, x, vae_key, batch, reconstruction)
      return recon + kl + gamma * tc, (recon, kl, tc)

    params, opt_state, total, (recon, kl, tc), vae_norm = update(
        'vae', vae_loss, state.params, state.opt_state)

    def disc_loss(p):
      return _disc_terms(model, p, x, disc_key, batch)

    params, opt_state, d_loss, _, disc_norm = update('disc', disc_loss, params, opt_state)
    metrics = {'loss': total, 'recon': recon, 'kl': kl, 'tc': tc, 'disc_loss': d_loss,
               'grad_norm': vae_norm, 'disc_grad_norm': disc_norm}
    return state.replace(step=state.step + 1, params=params, opt_state=opt_state), metrics

  return step


def optimizers(config) -> dict[str, optax.GradientTransformation]:
  """{'vae', 'disc'}: the optimizers of `config.optim` and `config.disc_optim`.

  Raises:
    ValueError: a section is missing or invalid (named).
  """
  txs = {}
  for phase, section in OPTIMIZERS.items():
    if section not in config:
      raise ValueError(f"Recipe 'factor_vae' needs a config.{section} section (the {phase} "
                       "phase's optimizer).")
    txs[phase] = common.build_optimizer(config[section], field=section)
  return txs


def _parts(config):
  model = common.build_model(config.model, MODELS)
  objective = common.build_objective(make_objective, model, config.loss)
  return model, optimizers(config), objective


def validate(config) -> None:
  common.validate_sections(config)
  _parts(config)


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained) -> Stage:
  del trained
  model, txs, objective = _parts(config)
  x = common.example_images(config)

  def init(key):
    variables = model.init(key, x, key, method='init_all')
    return create_state({'params': variables['params']}, txs)

  return Stage(
      name=name, init=init, train_step=train_step_fn(model, txs, **common.as_kwargs(config.loss)),
      eval_step=train.eval_step_fn(objective), train_data=common.train_data(config),
      eval_data=common.eval_data(config), schedule=common.schedule(config),
      seed=config.train.seed, model=model)


finish = vae.finish
