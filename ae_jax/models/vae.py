"""Dense variational autoencoder with a diagonal Gaussian posterior.

Shape letters: B batch, D flattened input size, Z latent.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ae_jax import layers
from ae_jax import losses

Array = jax.Array

_LOG_2PI = math.log(2.0 * math.pi)


class VAEOutput(flax.struct.PyTreeNode):
  """Output of a Gaussian VAE.

  Attributes:
    logits: decoder output for the sampled z, before any sigmoid, with the
      model input's shape.
    z: reparameterized sample from q(z | x), [B, Z].
    mean: posterior mean, [B, Z].
    log_var: posterior log variance, [B, Z].
  """
  logits: Array
  z: Array
  mean: Array
  log_var: Array


def gaussian_log_weight_terms(decode: Callable[[Array], Array], posterior: tuple[Array, Array],
                              x: Array, eps: Array) -> tuple[Array, Array, Array]:
  """log p(x | z), log p(z) and log q(z | x) of z = μ + σ ε, each [B] nats.

  The importance-sampling terms of a one-layer VAE with p(z) = N(0, I), q(z |
  x) = N(μ, σ²) and a Bernoulli decoder (`ae_jax.likelihood`).

  Args:
    decode: codes [B, Z] -> logits (any shape with B·D entries).
    posterior: (μ, log σ²), each [B, Z], of the examples x.
    x: targets [B, ...] in [0, 1].
    eps: standard normal noise [B, Z].
  """
  mean, log_var = posterior
  z = mean + jnp.exp(0.5 * log_var) * eps
  log_px_z = -losses.bernoulli_nll(decode(z).reshape(x.shape), x)
  sum_z = lambda a: jnp.sum(a.reshape(a.shape[0], -1), axis=-1)
  log_pz = -0.5 * sum_z(jnp.square(z) + _LOG_2PI)
  # log N(z; μ, σ²) at z = μ + σ ε: the squared standardized distance is ε².
  log_qz = -0.5 * sum_z(jnp.square(eps) + _LOG_2PI + log_var)
  return log_px_z, log_pz, log_qz


class MLPVAE(nn.Module):
  """VAE with Dense encoder D -> hidden -> (mean, log_var) and decoder Z -> D.

  Defaults are the paper's MNIST setting: 784 -> 400 -> 20 (+20) and
  20 -> 400 -> 784, ReLU hidden units, Bernoulli decoder (logits).

  Parameters: `encoder/layers_{i}`, `mean`, `log_var`, `decoder/layers_{i}`;
  the first Dense kernel is `params['encoder']['layers_0']['kernel']`.

  Importance sampling (`ae_jax.likelihood`): `importance_context` is the
  posterior (μ, log σ²), `importance_noise` one ε [Z], `log_weight_terms` the
  log densities (`gaussian_log_weight_terms`).

  Attributes:
    family: 'vae', what the applications call a one-layer Gaussian-posterior
      model (`encode` gives (μ, log σ²)).
    input_dim: D, the flattened input size.
    hidden: hidden sizes of the encoder (the decoder uses them reversed).
    latent_dim: Z.
    activation: hidden activation name.

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014,
    https://arxiv.org/abs/1312.6114 (Appendix C).
  """
  family: ClassVar[str] = 'vae'
  input_dim: int = 784
  hidden: Sequence[int] = (400,)
  latent_dim: int = 20
  activation: str = 'relu'

  def setup(self):
    self.encoder = layers.MLP(tuple(self.hidden), activation=self.activation,
                             final_activation=self.activation)
    self.mean = nn.Dense(self.latent_dim)
    self.log_var = nn.Dense(self.latent_dim)
    self.decoder = layers.MLP(
        tuple(reversed(self.hidden)) + (self.input_dim,),
        activation=self.activation, final_activation=None)

  def encode(self, x: Array) -> tuple[Array, Array]:
    """Posterior (mean, log_var), each [B, Z], of inputs [B, ...]."""
    x_BxD = x.reshape(x.shape[0], -1)
    if x_BxD.shape[1] != self.input_dim:
      raise ValueError(
          f'Input flattens to {x_BxD.shape[1]} features, expected '
          f'input_dim={self.input_dim}.')
    h = self.encoder(x_BxD)
    return self.mean(h), self.log_var(h)

  def decode(self, z: Array) -> Array:
    """Flat logits [B, D] of codes [B, Z]."""
    return self.decoder(z)

  def __call__(self, x: Array, key: Array) -> VAEOutput:
    """Encodes, samples z with `key` (reparameterized) and decodes it."""
    mean, log_var = self.encode(x)
    z = layers.reparameterize(key, mean, log_var)
    logits = self.decode(z).reshape(x.shape)
    return VAEOutput(logits=logits, z=z, mean=mean, log_var=log_var)

  def importance_context(self, x: Array) -> tuple[Array, Array]:
    """What the importance samples of `x` share: the posterior (μ, log σ²), [B, Z] each."""
    return self.encode(x)

  @nn.nowrap
  def importance_noise(self, key: Array) -> Array:
    """Standard normal ε [Z] of one sample of one example (no variables needed)."""
    return jax.random.normal(key, (self.latent_dim,))

  def log_weight_terms(self, posterior: tuple[Array, Array], x: Array, eps: Array
                       ) -> tuple[Array, Array, Array]:
    """log p(x | z), log p(z), log q(z | x) of z = μ + σ ε per row, each [B] nats."""
    return gaussian_log_weight_terms(self.decode, posterior, x, eps)
