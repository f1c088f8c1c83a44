"""VAE with the VampPrior: a mixture of the variational posteriors at learned pseudo-inputs.

Shape letters: B batch, D flattened input size, Z latent, K pseudo-inputs.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from ae_jax.models import vae

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


def diagonal_gaussian_log_density(z_BxZ: Array, mean_KxZ: Array, log_var_KxZ: Array) -> Array:
  """log N(z_b; μ_k, diag σ²_k) for every pair, [B, K] nats."""
  diff = z_BxZ[:, None, :] - mean_KxZ[None]
  return -0.5 * jnp.sum(diff**2 * jnp.exp(-log_var_KxZ)[None] + log_var_KxZ[None] + _LOG_2PI,
                        axis=-1)


class VampPriorVAE(vae.MLPVAE):
  """The `MLPVAE` with p(z) = (1/K) Σ_k q(z | u_k) instead of N(0, I).

  The pseudo-inputs u_k [K, D] are parameters (`params['pseudo_inputs']`),
  initialised N(0.05, 0.01²) and clipped to [0, 1] (the paper's hard tanh)
  before they are encoded, so they stay images. `log_prior(z)` is the
  mixture's log-density; `log_weight_terms` uses it, so the IWAE objective
  with one sample (`objectives.make_iwae_objective(num_samples=1)`) is the
  ELBO with the KL estimated by sampling, log q(z|x) - log p(z), and
  `ae_jax.likelihood` scores the model as it scores the VAE.

  Attributes:
    num_pseudo_inputs: K (the paper uses 500 on MNIST).
    (the rest as `MLPVAE`.)

  References:
    Tomczak & Welling, "VAE with a VampPrior", AISTATS 2018,
    https://arxiv.org/abs/1705.07120 (Eq. 9).
  """
  num_pseudo_inputs: int = 500

  def setup(self):
    super().setup()
    if self.num_pseudo_inputs < 1:
      raise ValueError(f'num_pseudo_inputs must be >= 1, got {self.num_pseudo_inputs}.')
    self.pseudo_inputs = self.param(
        'pseudo_inputs',
        lambda key, shape: 0.05 + 0.01 * jax.random.normal(key, shape),
        (self.num_pseudo_inputs, self.input_dim))

  def pseudo_posteriors(self) -> tuple[Array, Array]:
    """(μ_k, log σ²_k), each [K, Z]: the encoder at the clipped pseudo-inputs."""
    return self.encode(jnp.clip(self.pseudo_inputs, 0.0, 1.0))

  def log_prior(self, z_BxZ: Array) -> Array:
    """log p(z) = log (1/K) Σ_k N(z; μ_k, σ²_k), [B] nats."""
    mean, log_var = self.pseudo_posteriors()
    log_pdf = diagonal_gaussian_log_density(z_BxZ, mean, log_var)
    return jax.nn.logsumexp(log_pdf, axis=-1) - math.log(self.num_pseudo_inputs)

  def sample_prior(self, key: Array, n: int) -> Array:
    """n codes [n, Z] from the mixture: a uniform component, then its Gaussian."""
    mean, log_var = self.pseudo_posteriors()
    k_key, e_key = jax.random.split(key)
    k = jax.random.randint(k_key, (n,), 0, self.num_pseudo_inputs)
    eps = jax.random.normal(e_key, (n, self.latent_dim))
    return mean[k] + jnp.exp(0.5 * log_var[k]) * eps

  def log_weight_terms(self, posterior: tuple[Array, Array], x: Array, eps: Array
                       ) -> tuple[Array, Array, Array]:
    """log p(x | z), log p(z) (the VampPrior) and log q(z | x) of z = μ + σ ε, each [B]."""
    log_px_z, _, log_qz = vae.gaussian_log_weight_terms(self.decode, posterior, x, eps)
    mean, log_var = posterior
    z = mean + jnp.exp(0.5 * log_var) * eps
    return log_px_z, self.log_prior(z.reshape(z.shape[0], -1)), log_qz
