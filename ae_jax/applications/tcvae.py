"""β-TCVAE: the ELBO's KL term split into index-code MI, total correlation and
dimension-wise KL, with the total correlation weighted.

For one sample z_i ~ q(z | x_i) per example of a minibatch {x_1..x_B} drawn
from a data set of N examples, Chen et al. (2018) write

  log q(z_i | x_i) - log p(z_i)
    = [log q(z_i | x_i) - log q(z_i)]                  index-code MI
    + [log q(z_i) - Σ_d log q(z_id)]                   total correlation (TC)
    + [Σ_d log q(z_id) - log p(z_id)]                  dimension-wise KL

whose batch mean is a one-sample estimate of E_x KL(q(z|x) ‖ p(z)); the three
brackets telescope, so the terms always sum to it exactly. The aggregate
posterior q(z) = (1/N) Σ_n q(z | x_n) is intractable; the minibatch-weighted
sampling (MWS) estimator replaces the sum over the data by the batch:

  log q(z_i)    ≈ logsumexp_j log q(z_i | x_j) - log(N B)
  log q(z_id)   ≈ logsumexp_j log q(z_id | x_j) - log(N B)

(biased for finite B). Read the values with that bias in mind: when the
posteriors of the batch overlap completely (a collapsed model), every sum
over j is B times one term and the estimates read log q(z) = log q(z|x) -
log N, so MI ≈ log N and TC ≈ (Z - 1) log N instead of 0 (about 78 nats for
Z = 10, N = 6,144). The offset does not depend on the parameters there, and
the decomposition identity below holds exactly whatever the bias. The
β-TCVAE loss is

  recon + α · MI + β · TC + γ · dimension-wise KL,   α = γ = 1 in the paper.

Shape letters: B batch, Z latent.

References:
  Chen, Li, Grosse & Duvenaud, "Isolating Sources of Disentanglement in
  Variational Autoencoders", NeurIPS 2018, https://arxiv.org/abs/1802.04942
  (Eq. 2 for the decomposition, Sec. 3.1 / Appendix C.1 for MWS).
"""

from __future__ import annotations

import math

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import losses
from ae_jax import objectives

_LOG_2PI = math.log(2.0 * math.pi)


def gaussian_log_density(z: jax.Array, mean: jax.Array, log_var: jax.Array) -> jax.Array:
  """Elementwise log N(z; mean, exp(log_var)), broadcasting its arguments."""
  return -0.5 * (_LOG_2PI + log_var + jnp.square(z - mean) * jnp.exp(-log_var))


def tc_decomposition(z_BxZ: jax.Array, mean_BxZ: jax.Array, log_var_BxZ: jax.Array, *,
                     dataset_size: int, mask_B: jax.Array | None = None
                     ) -> dict[str, jax.Array]:
  """Per-example terms of the KL decomposition with the MWS estimator.

  Args:
    z_BxZ: one sample of q(z | x_i) per example.
    mean_BxZ, log_var_BxZ: the posteriors q(z | x_j).
    dataset_size: N, the number of examples the batch is drawn from.
    mask_B: 1 for real examples, 0 for padding rows, which then neither
      enter the sum over j nor count in B.

  Returns:
    Dict of [B] arrays in nats: 'log_qz_given_x', 'log_qz', 'log_prod_qzd',
    'log_pz', and the terms 'mi' (index-code mutual information), 'tc'
    (total correlation), 'dwkl' (dimension-wise KL) and 'kl' = mi + tc + dwkl
    = log q(z|x) - log p(z).
  """
  if dataset_size < 1:
    raise ValueError(f'dataset_size must be >= 1, got {dataset_size}.')
  batch_size = z_BxZ.shape[0]
  if mask_B is None:
    log_mask_B = jnp.zeros((batch_size,), z_BxZ.dtype)
    num_real = jnp.asarray(batch_size, z_BxZ.dtype)
  else:
    mask_B = mask_B.astype(z_BxZ.dtype)
    log_mask_B = jnp.where(mask_B > 0, 0.0, -jnp.inf)
    num_real = jnp.maximum(jnp.sum(mask_B), 1.0)
  # log q(z_id | x_j) for every pair (i, j): [B (i), B (j), Z].
  log_q_BxBxZ = gaussian_log_density(z_BxZ[:, None], mean_BxZ[None], log_var_BxZ[None])
  log_q_BxBxZ = log_q_BxBxZ + log_mask_B[None, :, None]
  log_norm = jnp.log(dataset_size * num_real)
  log_qz_given_x = jnp.sum(gaussian_log_density(z_BxZ, mean_BxZ, log_var_BxZ), axis=1)
  log_qz = jax.nn.logsumexp(jnp.sum(log_q_BxBxZ, axis=2), axis=1) - log_norm
  log_prod_qzd = jnp.sum(jax.nn.logsumexp(log_q_BxBxZ, axis=1) - log_norm, axis=1)
  log_pz = jnp.sum(gaussian_log_density(z_BxZ, 0.0, 0.0), axis=1)
  mi = log_qz_given_x - log_qz
  tc = log_qz - log_prod_qzd
  dwkl = log_prod_qzd - log_pz
  return {
      'log_qz_given_x': log_qz_given_x, 'log_qz': log_qz, 'log_prod_qzd': log_prod_qzd,
      'log_pz': log_pz, 'mi': mi, 'tc': tc, 'dwkl': dwkl, 'kl': mi + tc + dwkl,
  }


def make_tcvae_objective(
    model: nn.Module,
    *,
    dataset_size: int,
    beta: float = 6.0,
    alpha: float = 1.0,
    gamma: float = 1.0,
    reconstruction: str = 'bernoulli',
    output_activation: str = 'sigmoid',
) -> objectives.Objective:
  """β-TCVAE objective: recon + α·MI + β·TC + γ·dimension-wise KL (MWS estimates).

  Args:
    model: a Gaussian VAE (`MLPVAE`, `ConvVAE`) whose `__call__(x, key)`
      returns a `VAEOutput`.
    dataset_size: N, the size of the training set (enters log q(z) through
      the MWS normaliser log(N B)).
    beta: weight of the total correlation.
    alpha: weight of the index-code mutual information.
    gamma: weight of the dimension-wise KL.
    reconstruction: 'bernoulli' or 'mse', as in `objectives.make_vae_objective`.
    output_activation: for 'mse', 'sigmoid' or 'identity'.

  Returns:
    `fn(params, batch, key, *, step=0) -> (loss, metrics)`; metrics hold
    'recon', 'mi', 'tc', 'dwkl', 'kl' (their sum, the one-sample KL) and
    'kl_closed_form' (the analytic KL, for comparison), all batch means.

  References:
    Chen et al., "Isolating Sources of Disentanglement in VAEs", NeurIPS 2018.
  """
  objectives._check_reconstruction(reconstruction)  # pylint: disable=protected-access
  objectives._check_nonnegative(beta=beta, alpha=alpha, gamma=gamma)  # pylint: disable=protected-access

  def objective(params, batch: objectives.Batch, key: jax.Array, *, step=0):
    del step  # No schedule.
    x = batch['image']
    out = model.apply(params, x, key)
    recon = objectives.batch_mean(
        objectives.reconstruction_loss(out.logits, x, kind=reconstruction,
                                       output_activation=output_activation), batch)
    terms = tc_decomposition(out.z, out.mean, out.log_var, dataset_size=dataset_size,
                             mask_B=batch.get('mask'))
    metrics = {name: objectives.batch_mean(terms[name], batch)
               for name in ('mi', 'tc', 'dwkl', 'kl')}
    metrics['recon'] = recon
    metrics['kl_closed_form'] = objectives.batch_mean(
        losses.gaussian_kl(out.mean, out.log_var), batch)
    loss = recon + alpha * metrics['mi'] + beta * metrics['tc'] + gamma * metrics['dwkl']
    metrics['loss'] = loss
    return loss, metrics

  return objective
