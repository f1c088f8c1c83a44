"""Dense variational autoencoder with a diagonal Gaussian posterior.

Shape letters: B batch, D flattened input size, Z latent.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax

from ae_jax import nn as ae_nn

Array = jax.Array


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


class MLPVAE(nn.Module):
  """VAE with Dense encoder D -> hidden -> (mean, log_var) and decoder Z -> D.

  Defaults are the paper's MNIST setting: 784 -> 400 -> 20 (+20) and
  20 -> 400 -> 784, ReLU hidden units, Bernoulli decoder (logits).

  Parameters: `encoder/layers_{i}`, `mean`, `log_var`, `decoder/layers_{i}`;
  the first Dense kernel is `params['encoder']['layers_0']['kernel']`.

  Attributes:
    input_dim: D, the flattened input size.
    hidden: hidden sizes of the encoder (the decoder uses them reversed).
    latent_dim: Z.
    activation: hidden activation name.

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014,
    https://arxiv.org/abs/1312.6114 (Appendix C).
  """
  input_dim: int = 784
  hidden: Sequence[int] = (400,)
  latent_dim: int = 20
  activation: str = 'relu'

  def setup(self):
    self.encoder = ae_nn.MLP(tuple(self.hidden), activation=self.activation,
                             final_activation=self.activation)
    self.mean = nn.Dense(self.latent_dim)
    self.log_var = nn.Dense(self.latent_dim)
    self.decoder = ae_nn.MLP(
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
    z = ae_nn.reparameterize(key, mean, log_var)
    logits = self.decode(z).reshape(x.shape)
    return VAEOutput(logits=logits, z=z, mean=mean, log_var=log_var)
