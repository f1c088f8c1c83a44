"""Adversarial autoencoder training: priors, MMD, the three-phase step, figures.

An adversarial autoencoder (AAE) is trained in two phases per batch
(Makhzani et al. 2015, section 2): the *reconstruction* phase updates encoder
and decoder on the reconstruction loss; the *regularisation* phase first
updates the discriminator to tell prior samples (label 1) from codes of data
(label 0), then updates the encoder, as the generator, to fool the updated
discriminator. `make_aae_train_step` does the three updates in one jitted
step, each with its own optax optimizer and optimizer state, kept in a
`train.TrainState` whose `opt_state` is `{'recon': ..., 'disc': ..., 'gen':
...}`: the runner checkpoints and resumes it like any other state.

`make_aae_objective` is the variant's entry in `build.VARIANTS`: the runner
evaluates with it (reconstruction, both adversarial losses, and the squared
MMD between the batch's codes and as many prior samples, which falls as the
aggregated posterior approaches the prior).

Shape letters: B batch, N and M sample counts, Z latent, K mixture
components, G grid points.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import objectives
from ae_jax import plotting
from ae_jax import train

Array = jax.Array

PRIORS = ('gaussian', 'mixture')
KERNELS = ('rbf', 'imq')
# The parameter groups each phase's optimizer updates.
PHASES = {'recon': ('encoder', 'decoder'), 'disc': ('discriminator',), 'gen': ('encoder',)}


@dataclasses.dataclass(frozen=True)
class Prior:
  """The prior p(z) an AAE's codes are matched to.

  'gaussian': N(0, I). 'mixture': K equally weighted Gaussians whose means lie
  on a circle of radius `radius` in the first two latent dimensions (angle
  2πk/K for component k), each elongated along its radius (standard deviation
  `radial_std`) and narrow across it (`tangential_std`, also used for latent
  dimensions beyond the second): the paper's 10-component mixture, one
  component per digit class.

  Attributes:
    kind: 'gaussian' or 'mixture'.
    latent_dim: Z.
    num_components: K (mixture only).
    radius: distance of the component means from the origin.
    radial_std: standard deviation along the radius.
    tangential_std: standard deviation across it.

  References:
    Makhzani et al., "Adversarial Autoencoders", 2015, section 2.3 and fig. 4.
  """
  kind: str = 'gaussian'
  latent_dim: int = 2
  num_components: int = 10
  radius: float = 4.0
  radial_std: float = 1.0
  tangential_std: float = 0.25

  def __post_init__(self):
    if self.kind not in PRIORS:
      raise ValueError(f'Unknown prior {self.kind!r}; expected one of {PRIORS}.')
    if self.latent_dim <= 0:
      raise ValueError(f'latent_dim must be > 0, got {self.latent_dim}.')
    if self.kind == 'mixture':
      if self.latent_dim < 2:
        raise ValueError(f'The mixture prior needs latent_dim >= 2, got {self.latent_dim}.')
      if self.num_components <= 0:
        raise ValueError(f'num_components must be > 0, got {self.num_components}.')
      for name in ('radius', 'radial_std', 'tangential_std'):
        if getattr(self, name) <= 0:
          raise ValueError(f'prior {name} must be > 0, got {getattr(self, name)}.')

  def _angles_K(self) -> np.ndarray:
    return 2 * np.pi * np.arange(self.num_components) / self.num_components

  def _stds_Z(self) -> np.ndarray:
    return np.array([self.radial_std] + [self.tangential_std] * (self.latent_dim - 1), np.float32)

  def means(self) -> np.ndarray:
    """Component means [K, Z] (mixture) or [1, Z] zeros (gaussian)."""
    if self.kind == 'gaussian':
      return np.zeros((1, self.latent_dim), np.float32)
    means = np.zeros((self.num_components, self.latent_dim), np.float32)
    angles = self._angles_K()
    means[:, 0], means[:, 1] = self.radius * np.cos(angles), self.radius * np.sin(angles)
    return means

  def sample(self, key: Array, num: int, components: Array | None = None) -> Array:
    """Draws [num, Z] samples.

    Args:
      key: PRNG key.
      num: N.
      components: mixture only: int [N], the component of each sample, -1 for
        one drawn uniformly at random (unlabelled examples); None draws all
        at random.
    """
    normal_key, component_key = jax.random.split(key)
    eps = jax.random.normal(normal_key, (num, self.latent_dim))
    if self.kind == 'gaussian':
      if components is not None:
        raise ValueError('components are only defined for the mixture prior.')
      return eps
    random_k = jax.random.randint(component_key, (num,), 0, self.num_components)
    k = random_k if components is None else jnp.where(components < 0, random_k, components)
    eps = eps * jnp.asarray(self._stds_Z())
    angle = 2 * jnp.pi * k.astype(jnp.float32) / self.num_components
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Rotate (radial, tangential) into the component's frame, then shift.
    rotated = jnp.stack([cos * eps[:, 0] - sin * eps[:, 1], sin * eps[:, 0] + cos * eps[:, 1]], -1)
    z = jnp.concatenate([rotated, eps[:, 2:]], -1)
    return z + jnp.asarray(self.means())[k]

  def log_prob(self, z_NxZ: Array) -> Array:
    """log p(z), [N]."""
    z = jnp.asarray(z_NxZ, jnp.float32)
    log_2pi = math.log(2 * math.pi)
    if self.kind == 'gaussian':
      return -0.5 * jnp.sum(z**2 + log_2pi, -1)
    angles = jnp.asarray(self._angles_K())
    u = z[:, None, :] - jnp.asarray(self.means())[None]  # [N, K, Z]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    radial = cos * u[..., 0] + sin * u[..., 1]
    tangential = -sin * u[..., 0] + cos * u[..., 1]
    e = jnp.concatenate([radial[..., None], tangential[..., None], u[..., 2:]], -1)
    stds = jnp.asarray(self._stds_Z())
    log_normal = -0.5 * jnp.sum((e / stds)**2 + log_2pi + 2 * jnp.log(stds), -1)  # [N, K]
    return jax.nn.logsumexp(log_normal, -1) - math.log(self.num_components)


def _squared_distances(x_NxZ: Array, y_MxZ: Array) -> Array:
  d2 = (jnp.sum(x_NxZ**2, -1)[:, None] + jnp.sum(y_MxZ**2, -1)[None, :]
        - 2 * x_NxZ @ y_MxZ.T)
  return jnp.maximum(d2, 0.0)


def kernel_matrix(x_NxZ: Array, y_MxZ: Array, *, kernel: str = 'imq',
                  bandwidths: Sequence[float] = (1.0,)) -> Array:
  """Sum over bandwidths σ of k_σ(x_i, y_j), [N, M].

  rbf: k_σ(x, y) = exp(-‖x - y‖² / (2σ²)).
  imq: k_σ(x, y) = C / (C + ‖x - y‖²) with C = 2·Z·σ², the inverse multiquadric
  of Tolstikhin et al. (WAE), whose heavy tails keep gradients alive for
  distant samples.
  """
  if kernel not in KERNELS:
    raise ValueError(f'Unknown kernel {kernel!r}; expected one of {KERNELS}.')
  bandwidths = tuple(bandwidths) if isinstance(bandwidths, Sequence) else (bandwidths,)
  if not bandwidths or any(s <= 0 for s in bandwidths):
    raise ValueError(f'bandwidths must be a non-empty sequence of values > 0, got {bandwidths}.')
  d2 = _squared_distances(x_NxZ, y_MxZ)
  dim = x_NxZ.shape[-1]
  total = jnp.zeros_like(d2)
  for s in bandwidths:
    if kernel == 'rbf':
      total = total + jnp.exp(-d2 / (2 * s**2))
    else:
      c = 2 * dim * s**2
      total = total + c / (c + d2)
  return total


def mmd2(x_NxZ: Array, y_MxZ: Array, *, kernel: str = 'imq',
         bandwidths: Sequence[float] = (1.0,), unbiased: bool = True,
         weights_N: Array | None = None) -> Array:
  """Squared maximum mean discrepancy between samples x ~ P and y ~ Q.

  Biased (V-statistic, Gretton et al. eq. 5):
    mean_ij k(x_i, x_j) + mean_ij k(y_i, y_j) - 2 mean_ij k(x_i, y_j),
  zero when the two samples are the same.

  Unbiased (U-statistic): with N == M, Gretton et al. Lemma 6,
    1/(N(N-1)) Σ_{i≠j} h(i, j),  h = k(x_i,x_j) + k(y_i,y_j) - k(x_i,y_j) - k(x_j,y_i),
  which is exactly zero when x == y and has expectation MMD²(P, Q) (so it can
  be negative); with N != M, Gretton et al. eq. 3 (the cross term over all
  pairs).

  Args:
    x_NxZ: samples of P.
    y_MxZ: samples of Q.
    kernel: 'imq' or 'rbf' (see `kernel_matrix`).
    bandwidths: kernel scales σ; the kernel is their sum.
    unbiased: U-statistic (True) or V-statistic (False).
    weights_N: optional 0/1 weights (N == M only): pairs (x_i, y_i) with
      weight 0 are left out, e.g. the padding rows of an eval batch.

  Returns:
    Scalar MMD².

  References:
    Gretton, Borgwardt, Rasch, Schölkopf & Smola, "A Kernel Two-Sample Test",
    JMLR 13, 2012, https://jmlr.org/papers/v13/gretton12a.html.
    Tolstikhin, Bousquet, Gelly & Schölkopf, "Wasserstein Auto-Encoders",
    ICLR 2018, https://arxiv.org/abs/1711.01558 (IMQ kernel).
  """
  if x_NxZ.ndim != 2 or y_MxZ.ndim != 2 or x_NxZ.shape[1] != y_MxZ.shape[1]:
    raise ValueError(f'Expected samples [N, Z] and [M, Z], got {x_NxZ.shape} and {y_MxZ.shape}.')
  n, m = x_NxZ.shape[0], y_MxZ.shape[0]
  if unbiased and min(n, m) < 2:
    raise ValueError(f'The unbiased MMD needs at least 2 samples each, got {n} and {m}.')
  if weights_N is not None and (n != m or weights_N.shape != (n,)):
    raise ValueError(f'weights need N == M and shape [N]; got N={n}, M={m}, '
                     f'weights {weights_N.shape}.')
  kxx = kernel_matrix(x_NxZ, x_NxZ, kernel=kernel, bandwidths=bandwidths)
  kyy = kernel_matrix(y_MxZ, y_MxZ, kernel=kernel, bandwidths=bandwidths)
  kxy = kernel_matrix(x_NxZ, y_MxZ, kernel=kernel, bandwidths=bandwidths)
  if not unbiased:
    if weights_N is None:
      return jnp.mean(kxx) + jnp.mean(kyy) - 2 * jnp.mean(kxy)
    w = weights_N / jnp.sum(weights_N)
    return w @ kxx @ w + w @ kyy @ w - 2 * w @ kxy @ w
  if n == m:
    h = kxx + kyy - kxy - kxy.T
    pair_w = jnp.ones((n, n)) if weights_N is None else weights_N[:, None] * weights_N[None, :]
    pair_w = pair_w * (1.0 - jnp.eye(n))
    return jnp.sum(h * pair_w) / jnp.maximum(jnp.sum(pair_w), 1.0)
  off = lambda k, size: (jnp.sum(k) - jnp.trace(k)) / (size * (size - 1))
  return off(kxx, n) + off(kyy, m) - 2 * jnp.mean(kxy)


def _group(params: Mapping[str, Any], names: Sequence[str]) -> dict[str, Any]:
  return {'params': {name: params['params'][name] for name in names}}


def _merge(params: Mapping[str, Any], group: Mapping[str, Any]) -> dict[str, Any]:
  return {**params, 'params': {**params['params'], **group['params']}}


def _check_model(model: nn.Module) -> None:
  for method in ('encode', 'decode', 'discriminate'):
    if not hasattr(model, method):
      raise TypeError(f'{type(model).__name__} has no `{method}`: the AAE step needs an '
                      'ae_jax.models.AAE.')


@dataclasses.dataclass(frozen=True)
class _Hyper:
  """The AAE's loss settings, shared by the objective and the train step."""
  prior: Prior
  conditional: bool
  reconstruction: str
  mmd_kernel: str
  mmd_bandwidths: tuple[float, ...]


def _hyper(model, *, prior: str, prior_radius: float, prior_radial_std: float,
           prior_tangential_std: float, num_components: int, reconstruction: str,
           mmd_kernel: str, mmd_bandwidths) -> _Hyper:
  _check_model(model)
  objectives._check_reconstruction(reconstruction)  # pylint: disable=protected-access
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
  kernel_matrix(jnp.zeros((1, 1)), jnp.zeros((1, 1)), kernel=mmd_kernel, bandwidths=bandwidths)
  return _Hyper(
      prior=Prior(prior, model.latent_dim, num_components, prior_radius, prior_radial_std,
                  prior_tangential_std),
      conditional=conditional, reconstruction=reconstruction, mmd_kernel=mmd_kernel,
      mmd_bandwidths=bandwidths)


def _hyper_kwargs(prior='gaussian', prior_radius=4.0, prior_radial_std=1.0,
                  prior_tangential_std=0.25, num_components=10, reconstruction='bernoulli',
                  mmd_kernel='imq', mmd_bandwidths=(1.0,)) -> dict[str, Any]:
  return dict(prior=prior, prior_radius=prior_radius, prior_radial_std=prior_radial_std,
              prior_tangential_std=prior_tangential_std, num_components=num_components,
              reconstruction=reconstruction, mmd_kernel=mmd_kernel,
              mmd_bandwidths=mmd_bandwidths)


def _labels(hp: _Hyper, batch) -> Array | None:
  if not hp.conditional:
    return None
  if 'label' not in batch:
    raise ValueError("A label-conditioned AAE needs batch['label'] (-1 for unlabelled).")
  return batch['label'].astype(jnp.int32)


def _prior_samples(hp: _Hyper, key: Array, num: int, labels: Array | None) -> Array:
  return hp.prior.sample(key, num, labels) if hp.conditional else hp.prior.sample(key, num)


def _bce_real(logits_B: Array) -> Array:
  """-log D: the discriminator says 'prior sample' (softplus(-l) = -log σ(l))."""
  return jax.nn.softplus(-logits_B)


def _bce_fake(logits_B: Array) -> Array:
  """-log(1 - D) = softplus(l)."""
  return jax.nn.softplus(logits_B)


def make_aae_objective(model: nn.Module, **hyperparameters) -> objectives.Objective:
  """The AAE's evaluation objective: `fn(params, batch, key, *, step=0) -> (loss, metrics)`.

  Metrics (batch means): 'recon' (the reconstruction loss, also 'loss');
  'disc_loss' = -log D(z_prior) - log(1 - D(z_data)) (2 ln 2 ≈ 1.386 at
  chance); 'gen_loss' = -log D(z_data) (the non-saturating generator loss);
  'disc_accuracy' on both halves; 'mmd' = unbiased MMD² between the codes
  and as many prior samples (`mmd2`). Training uses `make_aae_train_step`;
  this function gives the same quantities without updating anything.

  Args:
    model: an `ae_jax.models.AAE`.
    **hyperparameters: prior ('gaussian' | 'mixture'), prior_radius,
      prior_radial_std, prior_tangential_std, num_components (see `Prior`),
      reconstruction ('bernoulli' | 'mse'), mmd_kernel ('imq' | 'rbf'),
      mmd_bandwidths (tuple of σ).

  References:
    Makhzani et al., "Adversarial Autoencoders", 2015,
    https://arxiv.org/abs/1511.05644; Gretton et al. 2012 (MMD).
  """
  hp = _hyper(model, **_hyper_kwargs(**hyperparameters))

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
        'mmd': mmd2(z, z_prior, kernel=hp.mmd_kernel, bandwidths=hp.mmd_bandwidths,
                    weights_N=batch.get('mask')),
        'loss': recon,
    }
    return recon, metrics

  return objective


def create_aae_state(params: Mapping[str, Any],
                     txs: Mapping[str, optax.GradientTransformation],
                     model_state: Mapping[str, Any] | None = None) -> train.TrainState:
  """The step-0 state: one optimizer state per phase, each over its own group."""
  _check_txs(txs)
  opt_state = {phase: txs[phase].init(_group(params, names)) for phase, names in PHASES.items()}
  return train.TrainState(step=jnp.zeros((), jnp.int32), params=dict(params),
                          opt_state=opt_state, model_state=dict(model_state or {}))


def _check_txs(txs: Mapping[str, Any]) -> None:
  if set(txs) != set(PHASES):
    raise ValueError(f'Expected one optimizer per phase {sorted(PHASES)}, got {sorted(txs)}.')


def aae_train_step_fn(model: nn.Module, txs: Mapping[str, optax.GradientTransformation],
                      **hyperparameters):
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

  Returns:
    `step(state, batch, key) -> (new_state, metrics)`; metrics are 'recon'
    (also 'loss'), 'disc_loss', 'gen_loss' (each measured before its own
    update) and the three phases' gradient norms.

  References:
    Makhzani et al., "Adversarial Autoencoders", 2015, section 2.
  """
  hp = _hyper(model, **_hyper_kwargs(**hyperparameters))
  _check_txs(txs)

  def update(phase, loss_fn, params, opt_state):
    group = _group(params, PHASES[phase])
    loss, grads = jax.value_and_grad(lambda g: loss_fn(_merge(params, g)))(group)
    updates, new_opt = txs[phase].update(grads, opt_state[phase], group)
    group = optax.apply_updates(group, updates)
    return _merge(params, group), {**opt_state, phase: new_opt}, loss, train.global_norm(grads)

  def step(state: train.TrainState, batch, key: Array):
    key = jax.random.fold_in(key, state.step)
    x = batch['image']
    labels = _labels(hp, batch)
    z_prior = _prior_samples(hp, key, x.shape[0], labels)
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


def make_aae_train_step(model: nn.Module, txs: Mapping[str, optax.GradientTransformation], *,
                        donate: bool = True, **hyperparameters):
  """Jits `aae_train_step_fn` for one device (`donate`: as `train.make_train_step`)."""
  return jax.jit(aae_train_step_fn(model, txs, **hyperparameters),
                 donate_argnums=(0,) if donate else ())


@dataclasses.dataclass(frozen=True)
class AAETrainer:
  """What the runner needs for a variant with its own step: state and step."""
  model: nn.Module
  txs: Mapping[str, optax.GradientTransformation]
  hyperparameters: Mapping[str, Any]

  def __post_init__(self):
    _check_txs(self.txs)
    _hyper(self.model, **_hyper_kwargs(**self.hyperparameters))

  def create_state(self, params, model_state=None) -> train.TrainState:
    return create_aae_state(params, self.txs, model_state)

  def make_train_step(self):
    return make_aae_train_step(self.model, self.txs, **self.hyperparameters)


def save_figures(config, model: nn.Module, variables, x: Array, labels: np.ndarray | None,
                 workdir: str, key: Array) -> list[str]:
  """samples.png (decoded prior samples; one row per component of a mixture)
  and aae_latent.png (test codes by class over the prior's density and
  samples), under workdir/figures."""
  hp = _hyper(model, **_hyper_kwargs(**config.loss.to_dict()))
  prior = hp.prior
  sample_key, scatter_key = jax.random.split(key)
  if prior.kind == 'mixture':
    per = 8
    components = jnp.repeat(jnp.arange(prior.num_components), per)
    z = prior.sample(sample_key, len(components), components)
    ncols, title = per, 'samples from the prior, one row per mixture component'
  else:
    z = prior.sample(sample_key, 64)
    ncols, title = 8, 'samples from the prior'
  images = jax.nn.sigmoid(model.apply(variables, z, method=model.decode)).reshape(
      (len(z),) + x.shape[1:])
  paths = [plotting.save_image_grid(np.asarray(images), plotting.figure_path(
      workdir, 'samples.png'), title=f'{config.variant}: {title}', ncols=ncols)]

  codes = np.asarray(model.apply(variables, x, method=model.encode))[:, :2]
  prior_z = np.asarray(prior.sample(scatter_key, 2000))[:, :2]
  from matplotlib.figure import Figure  # pylint: disable=g-import-not-at-top
  fig = Figure(figsize=(6, 5.5))
  ax = fig.subplots()
  lim = float(np.quantile(np.abs(np.concatenate([codes, prior_z])), 0.995)) * 1.1
  if prior.latent_dim == 2:
    g = np.linspace(-lim, lim, 200, dtype=np.float32)
    gx, gy = np.meshgrid(g, g)
    density = np.exp(np.asarray(prior.log_prob(np.stack([gx.ravel(), gy.ravel()], -1))))
    ax.contour(gx, gy, density.reshape(gx.shape), levels=6, colors='0.5', linewidths=0.7)
  ax.scatter(prior_z[:, 0], prior_z[:, 1], s=2, c='0.75', label='prior samples')
  scatter = ax.scatter(codes[:, 0], codes[:, 1], s=5, c=labels, cmap='tab10', alpha=0.85)
  if labels is not None:
    fig.colorbar(scatter, ax=ax, label='class')
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_xlabel('z1')
  ax.set_ylabel('z2')
  ax.legend(loc='upper right', fontsize=8)
  ax.set_title(f'{config.variant}: test codes over the {prior.kind} prior'
               + ('' if prior.latent_dim == 2 else ' (first two dimensions)'))
  fig.tight_layout()
  path = plotting.figure_path(workdir, 'aae_latent.png')
  fig.savefig(path, dpi=100)
  paths.append(path)
  return paths
