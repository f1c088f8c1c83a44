"""Training objectives, one per autoencoder variant.

Each `make_<variant>_objective(model, **hyperparameters)` returns a pure function

    fn(params, batch, key, *, step=0) -> (loss, metrics)

where `params` is the variables dict given to `model.apply` (`{'params': ...}`),
`batch` is `{'image': [B, H, W, C] in [0, 1], ...}` (an optional float 'mask' of
shape [B] marks padding examples with 0), `key` is this step's PRNG key and
`step` drives schedules (β warm-up, capacity). `loss` is a scalar mean over
the batch and `metrics` holds every term of it, also batch means.

Stateful objectives (the EMA VQ-VAE) take and return the model's non-trainable
collections:

    fn(params, batch, key, model_state, *, step=0) -> (loss, (metrics, new_model_state))

Losses are sums over pixels in nats for the Bernoulli likelihood and means over
pixels for MSE, as is usual for each.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import corruption
from ae_jax import losses

Batch = dict[str, jax.Array]
Metrics = dict[str, jax.Array]
Objective = Callable[..., tuple[jax.Array, Any]]

RECONSTRUCTIONS = ('bernoulli', 'mse')


def batch_mean(values_B: jax.Array, batch: Batch) -> jax.Array:
  """Mean over the batch, counting only examples whose batch['mask'] is 1."""
  mask = batch.get('mask')
  if mask is None:
    return jnp.mean(values_B)
  mask = mask.astype(values_B.dtype)
  return jnp.sum(values_B * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def reconstruction_loss(
    logits: jax.Array, targets: jax.Array, *, kind: str, output_activation: str = 'sigmoid'
) -> jax.Array:
  """Per-example reconstruction loss of decoder logits against targets in [0, 1].

  Args:
    logits: decoder outputs, the targets' shape.
    targets: clean inputs.
    kind: 'bernoulli' (negative log-likelihood from logits, summed over pixels)
      or 'mse' (mean squared error of the decoder's output over pixels).
    output_activation: for 'mse', 'sigmoid' maps logits into [0, 1]; 'identity'
      uses them as they are (a linear autoencoder).

  Returns:
    [B] losses.
  """
  if kind == 'bernoulli':
    return losses.bernoulli_nll(logits, targets)
  if kind == 'mse':
    if output_activation == 'sigmoid':
      outputs = jax.nn.sigmoid(logits)
    elif output_activation == 'identity':
      outputs = logits
    else:
      raise ValueError(
          f"output_activation must be 'sigmoid' or 'identity', got {output_activation!r}.")
    return losses.mse(outputs, targets)
  raise ValueError(f'Unknown reconstruction {kind!r}; expected one of {RECONSTRUCTIONS}.')


def _check_reconstruction(kind: str) -> None:
  if kind not in RECONSTRUCTIONS:
    raise ValueError(f'Unknown reconstruction {kind!r}; expected one of {RECONSTRUCTIONS}.')


def _check_nonnegative(**values: float) -> None:
  for name, value in values.items():
    if value < 0:
      raise ValueError(f'{name} must be >= 0, got {value}.')


def linear_ramp(step: jax.Array, num_steps: int) -> jax.Array:
  """min(1, step / num_steps); 1 throughout when num_steps is 0."""
  if num_steps <= 0:
    return jnp.ones((), jnp.float32)
  return jnp.minimum(1.0, jnp.asarray(step, jnp.float32) / num_steps)


def make_autoencoder_objective(
    model: nn.Module,
    *,
    reconstruction: str = 'bernoulli',
    output_activation: str = 'sigmoid',
    l1_weight: float = 0.0,
    kl_sparsity_weight: float = 0.0,
    rho: float = 0.05,
    corruption_fn: corruption.Corruption | None = None,
) -> Objective:
  """Objective of a deterministic autoencoder and its regularised variants.

  With the defaults this is the undercomplete autoencoder. `l1_weight` adds
  λ·Σ|z| (sparse AE, L1), `kl_sparsity_weight` adds β·Σ_j KL(ρ‖ρ̂_j) on the
  code (sparse AE, KL; the code should be sigmoid so that ρ̂ ∈ (0, 1)), and
  `corruption_fn` feeds a corrupted input while the clean one stays the target
  (denoising AE). The model's `__call__(x)` must return an `AEOutput`.

  References:
    Hinton & Salakhutdinov 2006 (undercomplete AE); Ng 2011, "Sparse
    autoencoder", CS294A notes (KL sparsity); Vincent et al. 2008 (denoising).
  """
  _check_reconstruction(reconstruction)
  _check_nonnegative(l1_weight=l1_weight, kl_sparsity_weight=kl_sparsity_weight)
  if kl_sparsity_weight and not 0.0 < rho < 1.0:
    raise ValueError(f'The sparsity target rho must be in (0, 1), got {rho}.')

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    del step  # No schedule.
    x = batch['image']
    x_in = corruption_fn(x, key) if corruption_fn is not None else x
    out = model.apply(params, x_in)
    recon = batch_mean(
        reconstruction_loss(out.logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
    metrics = {'recon': recon}
    loss = recon
    if l1_weight:
      metrics['l1_sparsity'] = batch_mean(losses.l1_sparsity(out.z), batch)
      loss = loss + l1_weight * metrics['l1_sparsity']
    if kl_sparsity_weight:
      # ρ̂ is a batch statistic: padding rows must not enter it.
      metrics['kl_sparsity'] = losses.kl_sparsity(_drop_padding(out.z, batch), rho=rho)
      loss = loss + kl_sparsity_weight * metrics['kl_sparsity']
    metrics['loss'] = loss
    return loss, metrics

  return objective


def _drop_padding(z_BxH: jax.Array, batch: Batch) -> jax.Array:
  """Moves padding rows' activations to the batch mean so they do not shift it."""
  mask = batch.get('mask')
  if mask is None:
    return z_BxH
  mask = mask.astype(z_BxH.dtype)[:, None]
  mean = jnp.sum(z_BxH * mask, 0) / jnp.maximum(jnp.sum(mask), 1.0)
  return mask * z_BxH + (1.0 - mask) * mean


def make_denoising_objective(
    model: nn.Module,
    *,
    noise: str = 'gaussian',
    noise_level: float = 0.3,
    reconstruction: str = 'bernoulli',
    output_activation: str = 'sigmoid',
) -> Objective:
  """Denoising AE: reconstruct the clean x from a corrupted copy.

  `noise` is 'gaussian' (σ = noise_level, clipped to [0, 1]), 'masking' or
  'salt_and_pepper' (fraction = noise_level); see `ae_jax.corruption`.

  References:
    Vincent et al. 2008, 2010.
  """
  return make_autoencoder_objective(
      model,
      reconstruction=reconstruction,
      output_activation=output_activation,
      corruption_fn=corruption.get_corruption(noise, level=noise_level))


CONTRACTIVE_MODES = ('auto', 'jacfwd', 'jacrev', 'dense_first', 'estimate')


def make_contractive_objective(
    model: nn.Module,
    *,
    weight: float = 0.1,
    mode: str = 'auto',
    num_probes: int = 1,
    reconstruction: str = 'bernoulli',
    output_activation: str = 'sigmoid',
) -> Objective:
  """Contractive AE: reconstruction + λ·‖J_f(x)‖²_F of the encoder f.

  Modes: 'jacfwd' and 'jacrev' form the exact Jacobian forward or backward
  through the whole encoder; 'dense_first' is exact and uses the model's dense
  first layer (`encode_first`, `encode_rest`, `first_kernel`) so the D-wide
  input enters once per batch, through KᵀK, rather than once per code unit;
  'estimate' is the unbiased random-projection estimate with `num_probes`
  probes. 'auto', the default, is the cheapest exact mode: 'dense_first' when
  the model has a dense first layer (about 8x the plain AE step for the
  784-256-128-32 encoder, against about 20x for reverse mode over the whole
  encoder; see `make bench`), else the cheaper of 'jacrev' and 'jacfwd' from
  the shapes (reverse for a code narrower than the input).

  References:
    Rifai et al. 2011, "Contractive auto-encoders: explicit invariance during
    feature extraction".
  """
  _check_reconstruction(reconstruction)
  _check_nonnegative(weight=weight)
  if mode not in CONTRACTIVE_MODES:
    raise ValueError(f'Unknown contractive mode {mode!r}; expected one of {CONTRACTIVE_MODES}.')
  has_dense_first = hasattr(model, 'encode_first')
  if mode == 'auto' and has_dense_first:
    mode = 'dense_first'
  if mode == 'dense_first' and not has_dense_first:
    raise ValueError(
        f"mode='dense_first' needs a model with a dense first layer "
        f'(encode_first/encode_rest/first_kernel); {type(model).__name__} has none.')

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    del step
    x = batch['image']
    out = model.apply(params, x)
    recon = batch_mean(
        reconstruction_loss(out.logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
    x_BxD = x.reshape(x.shape[0], -1)
    encode_one = lambda x_D: model.apply(params, x_D[None], method=model.encode)[0]
    if mode == 'dense_first':
      u_BxH = model.apply(params, x, method=model.encode_first)
      rest_one = lambda u_H: model.apply(params, u_H[None], method=model.encode_rest)[0]
      penalty = losses.contractive_penalty_dense_first(
          rest_one, u_BxH, model.first_kernel(params))
    elif mode == 'estimate':
      penalty = losses.contractive_penalty_estimate(encode_one, x_BxD, key, num_probes=num_probes)
    else:
      penalty = losses.contractive_penalty(encode_one, x_BxD, mode=mode)
    penalty = batch_mean(penalty, batch)
    loss = recon + weight * penalty
    return loss, {'loss': loss, 'recon': recon, 'contractive': penalty}

  return objective


def make_vae_objective(
    model: nn.Module,
    *,
    beta: float = 1.0,
    warmup_steps: int = 0,
    capacity_max: float | None = None,
    capacity_steps: int = 0,
    gamma: float = 1000.0,
    reconstruction: str = 'bernoulli',
    output_activation: str = 'sigmoid',
) -> Objective:
  """Negative ELBO of a Gaussian VAE, with the β-VAE schedules.

  loss = recon + β_t · KL(q(z|x) ‖ N(0, I)),  β_t = β · min(1, step / warmup_steps)

  With `capacity_max` set, the controlled-capacity objective of Burgess et al.
  replaces the β term: loss = recon + γ · |KL − C_t|, C_t = C_max · min(1,
  step / capacity_steps), in nats. The model's `__call__(x, key)` must return
  a `VAEOutput`.

  References:
    Kingma & Welling 2014, "Auto-encoding variational Bayes"; Higgins et al.
    2017, "β-VAE"; Bowman et al. 2016 (KL warm-up); Burgess et al. 2018,
    "Understanding disentangling in β-VAE" (capacity schedule).
  """
  _check_reconstruction(reconstruction)
  _check_nonnegative(beta=beta, warmup_steps=warmup_steps, gamma=gamma)
  if capacity_max is not None:
    _check_nonnegative(capacity_max=capacity_max, capacity_steps=capacity_steps)

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    x = batch['image']
    out = model.apply(params, x, key)
    recon = batch_mean(
        reconstruction_loss(out.logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
    kl = batch_mean(losses.gaussian_kl(out.mean, out.log_var), batch)
    metrics = {'recon': recon, 'kl': kl}
    if capacity_max is None:
      beta_t = beta * linear_ramp(step, warmup_steps)
      loss = recon + beta_t * kl
      metrics['beta'] = beta_t
    else:
      capacity = capacity_max * linear_ramp(step, capacity_steps)
      loss = recon + gamma * jnp.abs(kl - capacity)
      metrics['capacity'] = capacity
    if reconstruction == 'bernoulli':
      # The ELBO is a bound on log p(x) only for a likelihood; report it in nats.
      metrics['elbo'] = -(recon + kl)
    metrics['loss'] = loss
    return loss, metrics

  return objective


def make_vqvae_objective(
    model: nn.Module,
    *,
    commitment_cost: float = 0.25,
    reconstruction: str = 'mse',
    output_activation: str = 'sigmoid',
) -> Objective:
  """VQ-VAE: reconstruction + ‖sg[z_e] − e‖² + β‖z_e − sg[e]‖².

  With an EMA codebook (`model.ema`) the codebook term is dropped (the EMA
  update moves the codes) and the objective is stateful: it takes and returns
  the 'vq_stats' collection.

  References:
    van den Oord et al. 2017, "Neural discrete representation learning".
  """
  _check_reconstruction(reconstruction)
  _check_nonnegative(commitment_cost=commitment_cost)

  def terms(out, batch):
    x = batch['image']
    recon = batch_mean(
        reconstruction_loss(out.logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
    commitment = batch_mean(losses.vq_commitment_loss(out.z_e, out.z_q), batch)
    codebook = batch_mean(losses.vq_codebook_loss(out.z_e, out.z_q), batch)
    metrics = {
        'recon': recon, 'commitment': commitment, 'codebook': codebook,
        'perplexity': out.perplexity, 'usage': out.usage,
    }
    return recon, codebook, commitment, metrics

  if not getattr(model, 'ema', False):

    def objective(params, batch: Batch, key: jax.Array, *, step=0):
      del key, step
      out = model.apply(params, batch['image'], train=True)
      recon, codebook, commitment, metrics = terms(out, batch)
      loss = recon + codebook + commitment_cost * commitment
      metrics['loss'] = loss
      return loss, metrics

    return objective

  def stateful_objective(params, batch: Batch, key: jax.Array, model_state, *, step=0):
    del step
    # The 'restart' stream draws replacements for dead codes, when enabled.
    out, new_state = model.apply(
        {**params, **model_state}, batch['image'], train=True, mutable=list(model_state),
        rngs={'restart': key})
    recon, _, commitment, metrics = terms(out, batch)
    loss = recon + commitment_cost * commitment
    metrics['loss'] = loss
    return loss, (metrics, dict(new_state))

  return stateful_objective
