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
from ae_jax import likelihood
from ae_jax import losses
from ae_jax.models import diffusion

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
  probes: with a dense first layer, Rademacher probes stacked under the batch
  so data and probes share the first layer's product
  (`losses.contractive_penalty_dense_first_estimate`), else Gaussian probes
  pulled back through the whole encoder (`losses.contractive_penalty_estimate`).
  'auto', the default, is the cheapest exact mode: 'dense_first' when
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

  def dense_first_estimate(params, x, key):
    """(logits, penalty [B]): the data and the probes share the first layer's product."""
    x_BxD = x.reshape(x.shape[0], -1)
    batch_size = x_BxD.shape[0]
    probes = losses.rademacher(key, (num_probes * batch_size, x_BxD.shape[1]), x_BxD.dtype)
    first = lambda v: model.apply(params, v, method=model.encode_first)
    # [x; v] K + b in one product; the probes' directions v K are linear in v.
    u_all = first(jnp.concatenate([x_BxD, probes]))
    u_BxH1 = u_all[:batch_size]
    directions = u_all[batch_size:] - first(jnp.zeros_like(x_BxD[:1]))
    z = model.apply(params, u_BxH1, method=model.encode_rest)
    logits = model.apply(params, z, method=model.decode).reshape(x.shape)
    rest_one = lambda u_H: model.apply(params, u_H[None], method=model.encode_rest)[0]
    penalty = losses.contractive_penalty_dense_first_estimate(
        rest_one, u_BxH1, directions.reshape(num_probes, batch_size, -1))
    return logits, penalty

  def logits_and_penalty(params, x, key):
    """(logits, per-example penalty [B]) of the mode."""
    if mode == 'estimate' and has_dense_first:
      return dense_first_estimate(params, x, key)
    logits = model.apply(params, x).logits
    x_BxD = x.reshape(x.shape[0], -1)
    encode_one = lambda x_D: model.apply(params, x_D[None], method=model.encode)[0]
    if mode == 'dense_first' and hasattr(model, 'rest_layers'):
      # A dense MLP: its transposed Jacobian built layer by layer (same value).
      u_BxH = model.apply(params, x, method=model.encode_first)
      return logits, losses.contractive_penalty_mlp(
          u_BxH, model.first_kernel(params), *model.rest_layers(params))
    if mode == 'dense_first':
      u_BxH = model.apply(params, x, method=model.encode_first)
      rest_one = lambda u_H: model.apply(params, u_H[None], method=model.encode_rest)[0]
      return logits, losses.contractive_penalty_dense_first(
          rest_one, u_BxH, model.first_kernel(params))
    if mode == 'estimate':
      return logits, losses.contractive_penalty_estimate(
          encode_one, x_BxD, key, num_probes=num_probes)
    return logits, losses.contractive_penalty(encode_one, x_BxD, mode=mode)

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    del step
    x = batch['image']
    logits, penalty = logits_and_penalty(params, x, key)
    recon = batch_mean(
        reconstruction_loss(logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
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
    objective: str = 'elbo',
    num_samples: int = 1,
) -> Objective:
  """Negative ELBO of a Gaussian VAE, with the β-VAE schedules.

  loss = recon + β_t · KL(q(z|x) ‖ N(0, I)),  β_t = β · min(1, step / warmup_steps)

  With `capacity_max` set, the controlled-capacity objective of Burgess et al.
  replaces the β term: loss = recon + γ · |KL − C_t|, C_t = C_max · min(1,
  step / capacity_steps), in nats. The model's `__call__(x, key)` must return
  a `VAEOutput`. `objective='iwae'` trains the `num_samples`-sample IWAE
  bound instead (`make_iwae_objective`).

  References:
    Kingma & Welling 2014, "Auto-encoding variational Bayes"; Higgins et al.
    2017, "β-VAE"; Bowman et al. 2016 (KL warm-up); Burgess et al. 2018,
    "Understanding disentangling in β-VAE" (capacity schedule).
  """
  if _use_iwae(objective, num_samples, capacity_max=capacity_max,
               reconstruction=reconstruction):
    return make_iwae_objective(model, num_samples=num_samples, beta=beta,
                               warmup_steps=warmup_steps)
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
  """VQ-VAE: reconstruction + codebook + β commitment + the quantizer's aux loss.

  The quantizer gives the per-example terms (`ae_jax.quantizers`): for a
  codebook, ‖sg[z] − e‖² (zero when the codebook is an EMA, FSQ or LFQ) and
  ‖z − sg[e]‖² (zero for FSQ), summed over residual stages; LFQ adds its
  entropy penalty. With EMA codebooks (`model.stateful`) the objective is
  stateful: it takes and returns the 'vq_stats' collection. The key feeds
  the rng streams 'restart' (dead-code restarts) and 'dropout' (quantizer
  dropout).

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
    commitment = batch_mean(out.commitment, batch)
    codebook = batch_mean(out.codebook, batch)
    loss = recon + codebook + commitment_cost * commitment + out.aux_loss
    metrics = {
        'recon': recon, 'commitment': commitment, 'codebook': codebook,
        'perplexity': out.perplexity, 'usage': out.usage, 'loss': loss,
        **{f'quantizer/{k}': v for k, v in out.quantizer_metrics.items()},
    }
    return loss, metrics

  def rngs(key):
    return {'restart': key, 'dropout': jax.random.fold_in(key, 1)}

  if not getattr(model, 'stateful', getattr(model, 'ema', False)):

    def objective(params, batch: Batch, key: jax.Array, *, step=0):
      del step
      out = model.apply(params, batch['image'], train=True, rngs=rngs(key))
      return terms(out, batch)

    return objective

  def stateful_objective(params, batch: Batch, key: jax.Array, model_state, *, step=0):
    del step
    out, new_state = model.apply(
        {**params, **model_state}, batch['image'], train=True, mutable=list(model_state),
        rngs=rngs(key))
    loss, metrics = terms(out, batch)
    return loss, (metrics, dict(new_state))

  return stateful_objective


def make_diffusion_ae_objective(model: nn.Module) -> Objective:
  """Diffusion autoencoder: the DDPM noise-prediction loss, conditioned on z_sem.

  For each example, t ~ U{0, ..., T-1} and ε ~ N(0, I) are drawn from `key`,
  x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε is formed from the image in [-1, 1], and
  loss = ‖ε - ε_θ(x_t, t, Enc(x_0))‖² / D. The encoder learns only through
  this loss. Metrics also hold `x0_mse`, the per-pixel squared error (in
  [0, 1] units) of the one-step estimate x̂_0 of the clean image, clipped to
  the data range.

  The model must be a diffusion autoencoder (`models.DiffusionAutoencoder`):
  `model(x, x_t, t)` returning `.eps`, with `num_timesteps` and `schedule`
  attributes and `encode`/`denoise` methods.

  References:
    Preechakul et al. 2022, "Diffusion Autoencoders", eq. 8; Ho et al. 2020,
    "Denoising diffusion probabilistic models", eq. 14.
  """
  missing = [name for name in ('num_timesteps', 'schedule', 'encode', 'denoise')
             if not hasattr(model, name)]
  if missing:
    raise ValueError(f'The diffusion_ae objective needs a diffusion autoencoder such as '
                     f'models.DiffusionAutoencoder; {type(model).__name__} lacks {missing}.')
  alpha_bars_T = diffusion.alpha_bars(diffusion.beta_schedule(model.schedule, model.num_timesteps))

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    del step
    x = batch['image']
    t_key, eps_key = jax.random.split(key)
    t_B = jax.random.randint(t_key, (x.shape[0],), 0, model.num_timesteps)
    eps = jax.random.normal(eps_key, x.shape)
    x0 = diffusion.to_diffusion_space(x)
    x_t = diffusion.q_sample(x0, t_B, eps, alpha_bars_T)
    out = model.apply(params, x, x_t, t_B)
    loss = batch_mean(losses.ddpm_epsilon_loss(out.eps, eps), batch)
    # Clipped to the data range: at large t, 1/√ᾱ_t (~150 at t = T-1) amplifies any error.
    x0_hat = jnp.clip(diffusion.predict_x0(x_t, out.eps, alpha_bars_T[t_B]), -1.0, 1.0)
    x0_mse = batch_mean(losses.mse(diffusion.from_diffusion_space(x0_hat), x), batch)
    return loss, {'loss': loss, 'eps_mse': loss, 'x0_mse': x0_mse}

  return objective


def make_latent_ddpm_objective(denoiser: nn.Module, *, num_timesteps: int = 1000,
                               schedule: str = 'linear') -> Objective:
  """DDPM noise-prediction loss for vectors: the diffusion AE's latent prior.

  `batch['z']` holds [B, Z] (normalised) semantic codes of a frozen encoder;
  `denoiser(z_t, t)` predicts ε (e.g. `models.LatentDenoiser`).

  References:
    Preechakul et al. 2022, §4 (latent DDIM); Ho et al. 2020, eq. 14.
  """
  alpha_bars_T = diffusion.alpha_bars(diffusion.beta_schedule(schedule, num_timesteps))

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    del step
    z = batch['z']
    t_key, eps_key = jax.random.split(key)
    t_B = jax.random.randint(t_key, (z.shape[0],), 0, num_timesteps)
    eps = jax.random.normal(eps_key, z.shape)
    eps_pred = denoiser.apply(params, diffusion.q_sample(z, t_B, eps, alpha_bars_T), t_B)
    loss = batch_mean(losses.ddpm_epsilon_loss(eps_pred, eps), batch)
    return loss, {'loss': loss}

  return objective


def make_sequence_vae_objective(
    model: nn.Module,
    *,
    beta: float = 1.0,
    warmup_steps: int = 0,
) -> Objective:
  """Negative ELBO of a token-sequence VAE with KL annealing.

  loss = NLL(tokens | z) + β_t · KL(q(z|x) ‖ N(0, I)),
  β_t = β · min(1, step / warmup_steps)

  The NLL is summed over the tokens after <bos> up to and including <eos>
  (teacher forcing), in nats per molecule. `batch['tokens']` holds int32 rows
  [B, L] (see `ae_jax.molecules.tokenizer`); the model's `__call__(tokens, key)`
  must return a `SequenceVAEOutput`. Metrics add the teacher-forced token
  accuracy.

  References:
    Bowman et al. 2016, "Generating sentences from a continuous space" (KL
    annealing); Gómez-Bombarelli et al. 2018, "Automatic chemical design using
    a data-driven continuous representation of molecules".
  """
  from ae_jax.models import sequence  # pylint: disable=g-import-not-at-top
  _check_nonnegative(beta=beta, warmup_steps=warmup_steps)

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    tokens = batch['tokens']
    out = model.apply(params, tokens, key)
    targets = tokens[:, 1:]
    mask_BxT = sequence.target_mask(tokens)
    recon = batch_mean(losses.token_nll(out.logits, targets, mask_BxT), batch)
    kl = batch_mean(losses.gaussian_kl(out.mean, out.log_var), batch)
    correct_B = jnp.sum((jnp.argmax(out.logits, -1) == targets) * mask_BxT, axis=1)
    accuracy = (batch_mean(correct_B, batch)
                / jnp.maximum(batch_mean(jnp.sum(mask_BxT, axis=1), batch), 1.0))
    beta_t = beta * linear_ramp(step, warmup_steps)
    loss = recon + beta_t * kl
    metrics = {'recon': recon, 'kl': kl, 'beta': beta_t, 'elbo': -(recon + kl),
               'token_accuracy': accuracy, 'loss': loss}
    return loss, metrics

  return objective


# ----------------------------------------------------------------------------
# Importance-weighted and hierarchical VAEs.
# ----------------------------------------------------------------------------

OBJECTIVES = ('elbo', 'iwae')


def _use_iwae(objective: str, num_samples: int, *, capacity_max=None,
              reconstruction: str = 'bernoulli', free_bits: float = 0.0) -> bool:
  """Checks the `objective`/`num_samples` pair; True for 'iwae'."""
  if objective not in OBJECTIVES:
    raise ValueError(f'Unknown objective {objective!r}; expected one of {OBJECTIVES}.')
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}.')
  if objective == 'elbo':
    if num_samples != 1:
      raise ValueError(f"num_samples={num_samples} applies to objective='iwae' only.")
    return False
  if capacity_max is not None:
    raise ValueError("objective='iwae' has no capacity schedule; unset capacity_max.")
  if reconstruction != 'bernoulli':
    raise ValueError(f"objective='iwae' needs the Bernoulli likelihood, got {reconstruction!r}.")
  if free_bits:
    raise ValueError("objective='iwae' has no free bits; set free_bits=0.")
  return True


def make_iwae_objective(
    model: nn.Module,
    *,
    num_samples: int = 5,
    beta: float = 1.0,
    warmup_steps: int = 0,
) -> Objective:
  """The K-sample importance-weighted bound, negated: loss = -mean_b L_K(x_b).

    L_K = log (1/K) Σ_k w_k,  log w_k = log p(x|z_k) + β_t (log p(z_k) - log q(z_k|x)),
    β_t = β · min(1, step / warmup_steps)

  With β_t = 1 this is IWAE (Burda et al. 2016, Eq. 8); at K = 1 its
  expectation is the negative ELBO with the same β_t, so the warm-up means the
  same as in `make_vae_objective`. For `models.MLPVAE`, `models.ConvVAE` and
  `models.LadderVAE` (see `ae_jax.likelihood`). Metrics (batch means, nats):
  'iwae' (L_K at β = 1), 'elbo' (the mean of the K log weights, a K-sample
  ELBO estimate), 'recon' (-mean log p(x|z_k)), 'kl' (mean log q - log p, a
  Monte Carlo KL), 'beta', 'loss'.

  References:
    Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016.
  """
  if not likelihood.supports(model):
    raise ValueError(f'The IWAE objective needs a model with a Gaussian posterior that '
                     f'ae_jax.likelihood can sample (an MLPVAE, ConvVAE or LadderVAE), got '
                     f'{type(model).__name__}.')
  if num_samples < 1:
    raise ValueError(f'num_samples must be >= 1, got {num_samples}.')
  _check_nonnegative(beta=beta, warmup_steps=warmup_steps)

  def objective(params, batch: Batch, key: jax.Array, *, step=0):
    x = batch['image']
    terms = likelihood.log_weight_terms(model, params, x, key, num_samples=num_samples)
    beta_t = beta * linear_ramp(step, warmup_steps)
    loss = -batch_mean(likelihood.log_mean_exp(terms.log_weights(beta_t)), batch)
    log_w = terms.log_weights()
    metrics = {
        'iwae': batch_mean(likelihood.log_mean_exp(log_w), batch),
        'elbo': batch_mean(jnp.mean(log_w, axis=1), batch),
        'recon': -batch_mean(jnp.mean(terms.log_px_z, axis=1), batch),
        'kl': batch_mean(jnp.mean(terms.log_qz - terms.log_pz, axis=1), batch),
        'beta': beta_t,
        'loss': loss,
    }
    return loss, metrics

  return objective


def _masked_variance(values_BxZ: jax.Array, batch: Batch) -> jax.Array:
  """Per-unit variance over the batch rows whose mask is 1, [Z]."""
  mask = batch.get('mask')
  mask = jnp.ones(values_BxZ.shape[:1]) if mask is None else mask.astype(values_BxZ.dtype)
  count = jnp.maximum(jnp.sum(mask), 1.0)
  mean = jnp.sum(values_BxZ * mask[:, None], 0) / count
  return jnp.sum(jnp.square(values_BxZ - mean) * mask[:, None], 0) / count


_FREE_BITS_GROUPS = ('layer', 'unit')
# A unit 'carries information' when its batch-mean KL exceeds this (nats).
_KL_UNIT_THRESHOLD = 0.01


def _ladder_kl_weights(kl_per_unit, beta_t, kl_balance: bool):
  """Per-layer KL weights: 1, or during warm-up (β_t < 1) with `kl_balance`
  γ_i = L (κ_i + ε) / Σ_j (κ_j + ε) for κ_i the KL per unit of layer i (a
  batch mean, no gradient), ε = 0.01: a layer carrying less KL per unit than
  the others is penalised less. A variant of the KL balancing of Vahdat & Kautz
  2020, App. A, whose γ_l scales the group's KL by a factor of its size; here
  the KL per unit is what is balanced."""
  if not kl_balance:
    return [1.0] * len(kl_per_unit)
  kappa = [jax.lax.stop_gradient(jnp.mean(k)) + 0.01 for k in kl_per_unit]
  total = sum(kappa)
  balanced = [len(kappa) * k / total for k in kappa]
  return [jnp.where(beta_t < 1.0, g, 1.0) for g in balanced]


def make_ladder_vae_objective(
    model: nn.Module,
    *,
    beta: float = 1.0,
    warmup_steps: int = 0,
    free_bits: float = 0.0,
    free_bits_group: str = 'layer',
    kl_balance: bool = False,
    active_threshold: float = 0.01,
    reconstruction: str = 'bernoulli',
    objective: str = 'elbo',
    num_samples: int = 1,
) -> Objective:
  """Negative ELBO of a ladder VAE with KL warm-up, free bits and KL balancing.

    loss = recon + β_t Σ_i γ_i Σ_{g ∈ groups of layer i} max(λ, KL_g)
    β_t = β · min(1, step / warmup_steps)
    KL_i = E_batch KL(q(z_i | z_{i+1}, x) ‖ p(z_i | z_{i+1}))

  Each KL_i is the Gaussian-Gaussian KL in closed form between the merged
  posterior and the top-down prior of layer i, both at the sampled z_{i+1}
  (`losses.gaussian_kl_between`); the top layer's prior is N(0, I). The sum
  over layers of these terms, with z drawn from q, is an unbiased estimate of
  KL(q(z|x) ‖ p(z)), so recon + Σ_i KL_i is the negative ELBO (the 'elbo'
  metric, whatever the settings below).

  Free bits (Kingma et al. 2016): λ = `free_bits` nats per group, applied to
  the minibatch mean KL of the group, so a group whose KL is below λ gets no
  gradient pushing it further down. `free_bits_group='layer'`: each layer is
  one group (KL_i); 'unit': each latent unit is its own group (the KL of unit
  j of layer i, so λ per unit), which keeps units, not only layers, from
  collapsing. `kl_balance`: during warm-up the layers' KL terms are weighted
  by γ_i ∝ their KL per unit (see `_ladder_kl_weights`; 1 afterwards).

  With a batch-normalised model (`model.stateful`) the objective is stateful:
  `fn(params, batch, key, model_state, step=) -> (loss, (metrics,
  new_model_state))`, the forward pass in training mode (minibatch
  statistics, `mutable=['batch_stats']`). The eval step calls it likewise, so
  its metrics use the eval batch's statistics, not the running averages that
  `experiments.likelihood` scores with.

  Metrics (batch means, nats): 'recon', 'kl', 'kl_layer{i}' for i = 1..L
  (bottom first), 'active_units_layer{i}' (Burda et al.'s count of units with
  Cov_x(E_q[z]) > `active_threshold` over this batch, E_q[z_i] taken along the
  posterior-mean path, see `LadderVAE.posterior_means`, with the running
  averages of a batch-normalised model), 'kl_units_layer{i}' (the units whose
  batch-mean KL exceeds 0.01 nats: below the top layer a unit's posterior mean
  can vary with x through the prior from above, so it passes Burda's test
  while carrying no information of its own; this count says whether it
  does), 'beta', 'elbo', 'loss'.

  `objective='iwae'` trains the `num_samples`-sample IWAE bound instead
  (`make_iwae_objective`; not with batch normalisation, free bits or KL
  balancing).

  References:
    Sønderby et al. 2016, "Ladder variational autoencoders" (warm-up and batch
    normalisation, Sec. 2.3); Kingma et al. 2016, "Improved variational
    inference with inverse autoregressive flow", App. C.8 (free bits); Vahdat
    & Kautz 2020, "NVAE", App. A (KL balancing); Burda et al. 2016, Sec. 5.2
    (active units).
  """
  # What the loss reads: the per-layer posterior and prior of `model(x, key)`
  # (a `models.LadderOutput`) and the posterior-mean path.
  missing = [name for name in ('bottom_up', 'top_down', 'posterior_means')
             if not hasattr(model, name)]
  if missing:
    raise ValueError(f'The ladder_vae objective needs a ladder VAE such as models.LadderVAE; '
                     f'{type(model).__name__} lacks {missing}.')
  if free_bits_group not in _FREE_BITS_GROUPS:
    raise ValueError(f'free_bits_group={free_bits_group!r}; expected one of {_FREE_BITS_GROUPS}.')
  stateful = bool(getattr(model, 'stateful', False))
  if objective == 'iwae':
    if stateful:
      raise ValueError("objective='iwae' does not train a batch-normalised ladder VAE "
                       f"(model.normalization={model.normalization!r}); use 'none' or 'layer'.")
    if kl_balance:
      raise ValueError("objective='iwae' has no KL balancing; set kl_balance=False.")
  if _use_iwae(objective, num_samples, reconstruction=reconstruction, free_bits=free_bits):
    return make_iwae_objective(model, num_samples=num_samples, beta=beta,
                               warmup_steps=warmup_steps)
  if reconstruction != 'bernoulli':
    raise ValueError(f"The ladder VAE's decoder is Bernoulli; reconstruction={reconstruction!r}.")
  _check_nonnegative(beta=beta, warmup_steps=warmup_steps, free_bits=free_bits,
                     active_threshold=active_threshold)

  def terms(out, batch, step):
    x = batch['image']
    recon = batch_mean(losses.bernoulli_nll(out.logits, x), batch)
    # Per layer, the batch mean KL of each unit, [Z_i] (gaussian_kl_between sums
    # over the non-batch axes, so a trailing axis of 1 keeps the units apart).
    kl_units = [
        jax.vmap(lambda q_m, q_v, p_m, p_v: batch_mean(
            losses.gaussian_kl_between(q_m[:, None], q_v[:, None], p_m[:, None], p_v[:, None]),
            batch), in_axes=1)(qm, qv, pm, pv)
        for qm, qv, pm, pv in zip(out.q_mean, out.q_log_var, out.p_mean, out.p_log_var)]
    kl_layers = [jnp.sum(k) for k in kl_units]
    beta_t = beta * linear_ramp(step, warmup_steps)
    weights = _ladder_kl_weights(kl_units, beta_t, kl_balance)
    if free_bits_group == 'unit':
      penalised = [jnp.sum(jnp.maximum(free_bits, k)) for k in kl_units]
    else:
      penalised = [jnp.maximum(free_bits, k) for k in kl_layers]
    loss = recon + beta_t * sum(w * k for w, k in zip(weights, penalised))
    kl = sum(kl_layers)
    metrics = {'recon': recon, 'kl': kl, 'beta': beta_t, 'elbo': -(recon + kl), 'loss': loss}
    for i, (kl_i, units_i) in enumerate(zip(kl_layers, kl_units), start=1):
      metrics[f'kl_layer{i}'] = kl_i
      metrics[f'kl_units_layer{i}'] = jnp.sum((units_i > _KL_UNIT_THRESHOLD).astype(jnp.float32))
    return loss, metrics

  def add_active_units(metrics, variables, batch):
    means = model.apply(jax.lax.stop_gradient(variables), batch['image'],
                        method=model.posterior_means)
    for i, mean_i in enumerate(means, start=1):
      metrics[f'active_units_layer{i}'] = jnp.sum(
          (_masked_variance(mean_i, batch) > active_threshold).astype(jnp.float32))
    return metrics

  if stateful:

    def stateful_fn(params, batch: Batch, key: jax.Array, model_state, *, step=0):
      out, new_state = model.apply({**params, **model_state}, batch['image'], key, train=True,
                                   mutable=list(model_state))
      loss, metrics = terms(out, batch, step)
      metrics = add_active_units(metrics, {**params, **model_state}, batch)
      return loss, (metrics, dict(new_state))

    return stateful_fn

  def fn(params, batch: Batch, key: jax.Array, *, step=0):
    out = model.apply(params, batch['image'], key)
    loss, metrics = terms(out, batch, step)
    return loss, add_active_units(metrics, params, batch)

  return fn


# ----------------------------------------------------------------------------
# More VAE families: WAE-MMD, InfoVAE, RAE, and the bounds of Rainforth et al.
# ----------------------------------------------------------------------------

MMD_OBJECTIVES = ('wae', 'infovae')


def decoder_param_names(params) -> tuple[str, ...]:
  """The top-level parameter names of the generative network p(x|z).

  For every model of `ae_jax.models` with a `decode` method these are the
  names that start with 'decoder' (MLP: `decoder`; conv: `decoder_dense`,
  `decoder`) or are 'output' (the conv autoencoder's last layer); the rest
  (encoder, posterior heads, codes) is the inference network.
  """
  if 'params' in params:
    params = params['params']
  return tuple(k for k in params if k.startswith('decoder') or k == 'output')


def _prior_mmd(z_BxZ: jax.Array, key: jax.Array, batch: Batch, *, kernel: str,
               bandwidths) -> jax.Array:
  """Unbiased MMD² between the codes and as many N(0, I) draws; padding rows left out."""
  z_prior = jax.random.normal(key, z_BxZ.shape, z_BxZ.dtype)
  mask = batch.get('mask')
  weights = None if mask is None else mask.astype(z_BxZ.dtype)
  return losses.mmd2(z_BxZ, z_prior, kernel=kernel, bandwidths=bandwidths, unbiased=True,
                     weights_N=weights)


def make_mmd_objective(
    model: nn.Module,
    *,
    objective: str = 'wae',
    reg_weight: float = 10.0,
    alpha: float = 1.0,
    kernel: str = 'imq',
    bandwidths: tuple[float, ...] = (1.0,),
    reconstruction: str = 'bernoulli',
    output_activation: str = 'sigmoid',
) -> Objective:
  """WAE-MMD or InfoVAE: a reconstruction plus the MMD of the aggregate posterior to N(0, I).

  objective='wae' (Tolstikhin et al. 2018, Algorithm 2, WAE-MMD):

    loss = recon + λ · MMD²_u(q(z), p(z)),  λ = reg_weight,

  where q(z) is the aggregate posterior: the batch's codes (the code of a
  deterministic `models.MLPAutoencoder`/`ConvAutoencoder`, or a sample
  z ~ q(z|x) of a VAE model). There is no per-example KL term.

  objective='infovae' (Zhao, Song & Ermon 2019, Eq. 6; needs a VAE model):

    loss = recon + (1 - α) · KL(q(z|x) ‖ p(z)) + (α + λ - 1) · MMD²_u(q(z), p(z)),

  with λ = reg_weight; α = 1 is their MMD-VAE (the KL term dropped). Both use
  the unbiased estimate (`losses.mmd2`) against B fresh prior draws with the
  'imq' (the WAE paper's inverse multiquadratic, C = 2·Z·σ²) or 'rbf' kernel
  summed over `bandwidths`.

  Metrics: 'recon', 'mmd', 'loss', and 'kl' for a VAE model.

  Raises:
    ValueError: an unknown objective, kernel or reconstruction, a negative
      weight, α > 1 or α + λ < 1 (a negative weight on the KL or MMD term),
      or 'infovae' with a deterministic model.

  References:
    Tolstikhin, Bousquet, Gelly & Schölkopf, "Wasserstein Auto-Encoders", ICLR
    2018, https://arxiv.org/abs/1711.01558.
    Zhao, Song & Ermon, "InfoVAE: Balancing Learning and Inference in
    Variational Autoencoders", AAAI 2019, https://arxiv.org/abs/1706.02262.
  """
  if objective not in MMD_OBJECTIVES:
    raise ValueError(f'objective={objective!r} is unknown; expected one of {MMD_OBJECTIVES}.')
  _check_reconstruction(reconstruction)
  _check_nonnegative(reg_weight=reg_weight)
  losses.kernel_matrix(jnp.zeros((1, 1)), jnp.zeros((1, 1)), kernel=kernel,
                       bandwidths=bandwidths)  # Checks the kernel and bandwidths now.
  stochastic = getattr(model, 'family', None) == 'vae'
  if objective == 'infovae':
    if not stochastic:
      raise ValueError(f"objective='infovae' needs a VAE model with a Gaussian q(z|x) "
                       f"(mlp_vae, conv_vae), got {type(model).__name__}.")
    if alpha > 1 or alpha + reg_weight < 1:
      raise ValueError(f'InfoVAE needs alpha <= 1 and alpha + reg_weight >= 1 (weights 1 - '
                       f'alpha on the KL, alpha + reg_weight - 1 on the MMD), got alpha={alpha}, '
                       f'reg_weight={reg_weight}.')
    kl_weight, mmd_weight = 1.0 - alpha, alpha + reg_weight - 1.0
  else:
    if alpha != 1.0:
      raise ValueError(f"alpha={alpha} applies to objective='infovae' only.")
    kl_weight, mmd_weight = 0.0, reg_weight

  def fn(params, batch: Batch, key: jax.Array, *, step=0):
    del step  # No schedule.
    x = batch['image']
    model_key, prior_key = jax.random.split(key)
    out = model.apply(params, x, model_key) if stochastic else model.apply(params, x)
    recon = batch_mean(
        reconstruction_loss(out.logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
    z = out.z.reshape(out.z.shape[0], -1)
    mmd = _prior_mmd(z, prior_key, batch, kernel=kernel, bandwidths=bandwidths)
    loss = recon + mmd_weight * mmd
    metrics = {'recon': recon, 'mmd': mmd}
    if stochastic:
      metrics['kl'] = batch_mean(losses.gaussian_kl(out.mean, out.log_var), batch)
      loss = loss + kl_weight * metrics['kl']
    metrics['loss'] = loss
    return loss, metrics

  return fn


RAE_REGULARIZERS = ('l2', 'gp', 'none')


def _decoder_output(logits: jax.Array, output_activation: str) -> jax.Array:
  return logits if output_activation == 'identity' else jax.nn.sigmoid(logits)


def decoder_gradient_penalty(decode, z_BxZ: jax.Array, *,
                             output_activation: str = 'sigmoid') -> jax.Array:
  """‖∂D(z)/∂z‖²_F per example, [B]: the squared Frobenius norm of the decoder's Jacobian.

  D(z) is the decoder's output in pixel space (sigmoid of the logits, or the
  logits with output_activation='identity'); the Jacobian [D, Z] is built
  column by column with Z forward-mode products.

  References:
    Ghosh, Sajjadi, Vergari, Black & Schölkopf, "From Variational to
    Deterministic Autoencoders", ICLR 2020, https://arxiv.org/abs/1903.12436
    (Eq. 11, RAE-GP).
  """
  def one(z_Z):
    f = lambda z: _decoder_output(decode(z[None]), output_activation).reshape(-1)
    columns = jax.vmap(lambda v: jax.jvp(f, (z_Z,), (v,))[1])(jnp.eye(z_Z.shape[0], dtype=z_Z.dtype))
    return jnp.sum(jnp.square(columns))
  return jax.vmap(one)(z_BxZ)


def make_rae_objective(
    model: nn.Module,
    *,
    code_weight: float = 1e-4,
    regularizer: str = 'l2',
    decoder_weight: float = 1e-7,
    reconstruction: str = 'mse',
    output_activation: str = 'sigmoid',
) -> Objective:
  """Regularized autoencoder (RAE) of Ghosh et al. 2020, Eq. 11.

    loss = recon + β · ½‖z‖² + λ · L_REG,  β = code_weight, λ = decoder_weight,

  with L_REG = ‖θ_dec‖² (regularizer='l2': weight decay on every decoder
  parameter, `decoder_param_names`), the batch mean of ‖∂D(z)/∂z‖²_F ('gp',
  `decoder_gradient_penalty`) or nothing ('none', the paper's "AE + L_z"
  ablation keeps β). The model is deterministic (`models.MLPAutoencoder`,
  `models.ConvAutoencoder`); samples come from a density fitted to the
  training codes after training (`ae_jax.recipes.rae.fit_code_density`).

  Metrics: 'recon', 'code_l2' (½‖z‖², batch mean), 'decoder_reg' (L_REG),
  'loss'.

  References:
    Ghosh, Sajjadi, Vergari, Black & Schölkopf, "From Variational to
    Deterministic Autoencoders", ICLR 2020, https://arxiv.org/abs/1903.12436.
  """
  _check_reconstruction(reconstruction)
  if regularizer not in RAE_REGULARIZERS:
    raise ValueError(f'regularizer={regularizer!r} is unknown; expected one of '
                     f'{RAE_REGULARIZERS}.')
  _check_nonnegative(code_weight=code_weight, decoder_weight=decoder_weight)
  if getattr(model, 'family', None) != 'ae':
    raise ValueError(f'The RAE needs a deterministic autoencoder (mlp_ae, conv_ae), got '
                     f'{type(model).__name__}.')

  def fn(params, batch: Batch, key: jax.Array, *, step=0):
    del key, step  # Deterministic, no schedule.
    x = batch['image']
    out = model.apply(params, x)
    recon = batch_mean(
        reconstruction_loss(out.logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
    z = out.z.reshape(out.z.shape[0], -1)
    code_l2 = batch_mean(0.5 * jnp.sum(jnp.square(z), axis=-1), batch)
    if regularizer == 'l2':
      tree = params['params']
      reg = sum(jnp.sum(jnp.square(leaf))
                for name in decoder_param_names(params)
                for leaf in jax.tree.leaves(tree[name]))
    elif regularizer == 'gp':
      decode = lambda zz: model.apply(params, zz, method='decode')
      reg = batch_mean(decoder_gradient_penalty(decode, z, output_activation=output_activation),
                       batch)
    else:
      reg = jnp.zeros(())
    loss = recon + code_weight * code_l2 + decoder_weight * reg
    return loss, {'recon': recon, 'code_l2': code_l2, 'decoder_reg': reg, 'loss': loss}

  return fn


TIGHTER_BOUNDS = ('miwae', 'piwae', 'ciwae')


def miwae_bound(log_w_BxMxK: jax.Array) -> jax.Array:
  """MIWAE(M, K) per example, [B]: (1/M) Σ_m log (1/K) Σ_k w_mk.

  M = 1 is the K-sample IWAE bound, K = 1 the M-sample ELBO estimate.

  References:
    Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better",
    ICML 2018, https://arxiv.org/abs/1802.04537 (Eq. 8).
  """
  return jnp.mean(likelihood.log_mean_exp(log_w_BxMxK, axis=-1), axis=-1)


def ciwae_bound(log_w_BxK: jax.Array, beta: float | jax.Array) -> jax.Array:
  """CIWAE(β) per example, [B]: β · ELBO_K + (1 - β) · IWAE_K on the same K samples.

  ELBO_K = (1/K) Σ_k log w_k, IWAE_K = log (1/K) Σ_k w_k; β = 1 is the ELBO
  estimate, β = 0 the IWAE bound.

  References:
    Rainforth et al., "Tighter Variational Bounds are Not Necessarily Better",
    ICML 2018, https://arxiv.org/abs/1802.04537 (Eq. 7).
  """
  elbo = jnp.mean(log_w_BxK, axis=-1)
  return beta * elbo + (1.0 - beta) * likelihood.log_mean_exp(log_w_BxK, axis=-1)


def _stop_gradient_of(params, names: tuple[str, ...], *, keep: bool):
  """params with stop_gradient on the top-level names (keep=False) or on all others."""
  tree = params['params']
  frozen = {k: (v if (k in names) == keep else jax.lax.stop_gradient(v)) for k, v in tree.items()}
  return {**params, 'params': frozen}


def make_tighter_bound_objective(
    model: nn.Module,
    *,
    bound: str = 'miwae',
    num_samples: int = 8,
    num_groups: int = 8,
    beta: float = 0.5,
) -> Objective:
  """MIWAE, PIWAE or CIWAE of Rainforth et al. 2018, negated, for a Gaussian-posterior VAE.

  With K = num_samples and M = num_groups, the M·K log weights log w_mk =
  log p(x|z_mk) + log p(z_mk) - log q(z_mk|x) (`ae_jax.likelihood`) give

    'miwae'  loss = -MIWAE(M, K)                          (`miwae_bound`)
    'piwae'  the generative network (`decoder_param_names`) follows
             -IWAE(M·K), the inference network -MIWAE(M, K), on the same
             samples: loss = -IWAE_{MK}[θ] - MIWAE(M, K)[φ], each with the other
             network's parameters held constant (so the loss value is the sum)
    'ciwae'  loss = -CIWAE(β) over K samples              (`ciwae_bound`;
             num_groups must be 1)

  The point of the paper: a tighter bound (IWAE) gives the generative network
  a better gradient but the inference network a noisier one (its signal to
  noise falls as O(1/√K)); these mix the two. Metrics (batch means, nats):
  'iwae' (IWAE over all M·K samples), 'miwae', 'elbo' (mean log weight),
  'loss'.

  Raises:
    ValueError: an unknown bound, K or M < 1, 'ciwae' with M != 1, β outside
      [0, 1], or a model that `ae_jax.likelihood` cannot score.

  References:
    Rainforth, Kosiorek, Le, Maddison, Igl, Wood & Teh, "Tighter Variational
    Bounds are Not Necessarily Better", ICML 2018, https://arxiv.org/abs/1802.04537.
  """
  if bound not in TIGHTER_BOUNDS:
    raise ValueError(f'bound={bound!r} is unknown; expected one of {TIGHTER_BOUNDS}.')
  if not likelihood.supports(model):
    raise ValueError(f'bound={bound!r} needs a model with a Gaussian posterior that '
                     f'ae_jax.likelihood can sample (an MLPVAE or ConvVAE), got '
                     f'{type(model).__name__}.')
  if num_samples < 1 or num_groups < 1:
    raise ValueError(f'num_samples and num_groups must be >= 1, got {num_samples} and '
                     f'{num_groups}.')
  if bound == 'ciwae':
    if num_groups != 1:
      raise ValueError(f"bound='ciwae' mixes bounds over one group; set num_groups=1, got "
                       f'{num_groups}.')
    if not 0.0 <= beta <= 1.0:
      raise ValueError(f'beta must be in [0, 1] for CIWAE, got {beta}.')
  m, k = num_groups, num_samples

  def log_weights(params, x, key):
    terms = likelihood.log_weight_terms(model, params, x, key, num_samples=m * k)
    return terms.log_weights()  # [B, M·K]

  def fn(params, batch: Batch, key: jax.Array, *, step=0):
    del step  # No schedule.
    x = batch['image']
    b = x.shape[0]
    if bound == 'piwae':
      # Two passes over the same samples (same key), each differentiable in one network.
      names = decoder_param_names(params)
      log_w = log_weights(_stop_gradient_of(params, names, keep=True), x, key)
      log_w_inf = log_weights(_stop_gradient_of(params, names, keep=False), x, key)
      loss = -(batch_mean(likelihood.log_mean_exp(log_w), batch)
               + batch_mean(miwae_bound(log_w_inf.reshape(b, m, k)), batch))
    else:
      log_w = log_weights(params, x, key)
      if bound == 'miwae':
        loss = -batch_mean(miwae_bound(log_w.reshape(b, m, k)), batch)
      else:
        loss = -batch_mean(ciwae_bound(log_w, beta), batch)
    log_w = jax.lax.stop_gradient(log_w)
    metrics = {
        'iwae': batch_mean(likelihood.log_mean_exp(log_w), batch),
        'miwae': batch_mean(miwae_bound(log_w.reshape(b, m, k)), batch),
        'elbo': batch_mean(jnp.mean(log_w, axis=-1), batch),
        'loss': loss,
    }
    return loss, metrics

  return fn


DIP_KINDS = ('i', 'ii')


def dip_covariance(mean_BxZ: jax.Array, log_var_BxZ: jax.Array, batch: Batch, *,
                   kind: str = 'ii') -> jax.Array:
  """The covariance DIP-VAE pushes towards the identity, [Z, Z] (a batch statistic).

    'i':  Cov_x[μ(x)]                        (DIP-VAE-I, Kumar et al. Eq. 6)
    'ii': E_x[diag σ²(x)] + Cov_x[μ(x)]      (DIP-VAE-II, Eq. 7: the covariance of
                                             the aggregate posterior q(z) = E_x q(z|x))

  Moments are over the batch rows whose batch['mask'] is 1 (all without a
  mask), with the 1/N (not 1/(N-1)) normalisation of a population covariance.

  References:
    Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled
    Latent Concepts from Unlabeled Observations", ICLR 2018,
    https://arxiv.org/abs/1711.00848.
  """
  if kind not in DIP_KINDS:
    raise ValueError(f'dip={kind!r} is unknown; expected one of {DIP_KINDS}.')
  mask = batch.get('mask')
  w = jnp.ones(mean_BxZ.shape[:1]) if mask is None else mask.astype(mean_BxZ.dtype)
  w = w / jnp.maximum(jnp.sum(w), 1.0)
  centred = mean_BxZ - w @ mean_BxZ
  cov = (centred * w[:, None]).T @ centred
  if kind == 'ii':
    cov = cov + jnp.diag(w @ jnp.exp(log_var_BxZ))
  return cov


def dip_penalty(cov_ZxZ: jax.Array, *, lambda_od: float, lambda_d: float) -> jax.Array:
  """λ_od Σ_{i≠j} C_ij² + λ_d Σ_i (C_ii - 1)², a scalar (Kumar et al. 2018, Eq. 6-7)."""
  diag = jnp.diagonal(cov_ZxZ)
  off = jnp.sum(jnp.square(cov_ZxZ)) - jnp.sum(jnp.square(diag))
  return lambda_od * off + lambda_d * jnp.sum(jnp.square(diag - 1.0))


def make_dip_vae_objective(
    model: nn.Module,
    *,
    dip: str = 'ii',
    lambda_od: float = 10.0,
    lambda_d: float = 10.0,
    beta: float = 1.0,
    reconstruction: str = 'bernoulli',
    output_activation: str = 'sigmoid',
) -> Objective:
  """DIP-VAE-I or -II: the negative ELBO plus a penalty on the posterior's covariance.

    loss = recon + β · KL(q(z|x) ‖ N(0, I)) + `dip_penalty`(`dip_covariance`(dip))

  The paper sets λ_d = 10 λ_od for DIP-VAE-I and λ_d = λ_od for DIP-VAE-II.
  Metrics: 'recon', 'kl', 'dip' (the penalty), 'cov_offdiag' (Σ_{i≠j} C_ij²),
  'loss'.

  References:
    Kumar, Sattigeri & Balakrishnan, "Variational Inference of Disentangled
    Latent Concepts from Unlabeled Observations", ICLR 2018,
    https://arxiv.org/abs/1711.00848.
  """
  _check_reconstruction(reconstruction)
  if dip not in DIP_KINDS:
    raise ValueError(f'dip={dip!r} is unknown; expected one of {DIP_KINDS}.')
  _check_nonnegative(lambda_od=lambda_od, lambda_d=lambda_d, beta=beta)
  if getattr(model, 'family', None) != 'vae':
    raise ValueError(f'DIP-VAE needs a VAE model with a Gaussian q(z|x) (mlp_vae, conv_vae), '
                     f'got {type(model).__name__}.')

  def fn(params, batch: Batch, key: jax.Array, *, step=0):
    del step  # No schedule.
    x = batch['image']
    out = model.apply(params, x, key)
    recon = batch_mean(
        reconstruction_loss(out.logits, x, kind=reconstruction, output_activation=output_activation),
        batch)
    kl = batch_mean(losses.gaussian_kl(out.mean, out.log_var), batch)
    cov = dip_covariance(out.mean, out.log_var, batch, kind=dip)
    penalty = dip_penalty(cov, lambda_od=lambda_od, lambda_d=lambda_d)
    loss = recon + beta * kl + penalty
    return loss, {'recon': recon, 'kl': kl, 'dip': penalty,
                  'cov_offdiag': dip_penalty(cov, lambda_od=1.0, lambda_d=0.0), 'loss': loss}

  return fn
