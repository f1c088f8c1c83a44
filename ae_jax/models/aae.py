"""Adversarial autoencoder: MLP encoder and decoder, MLP discriminator on codes.

Shape letters: B batch, D flattened input size, Z latent, K classes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ae_jax import nn as ae_nn

Array = jax.Array


class AAEOutput(flax.struct.PyTreeNode):
  """Output of an adversarial autoencoder.

  Attributes:
    logits: decoder output before the sigmoid, with the model input's shape.
    z: deterministic latent code, [B, Z].
    disc_logits: discriminator logit that `z` is a prior sample, [B].
  """
  logits: Array
  z: Array
  disc_logits: Array


class AAE(nn.Module):
  """Deterministic autoencoder D -> hidden -> Z -> reversed(hidden) -> D, plus
  a discriminator Z (+ K one-hot label inputs) -> disc_hidden -> 1.

  The encoder q(z|x) is deterministic, as in the paper's MNIST experiments;
  the discriminator tells codes of data (label 0) from prior samples (label 1)
  and the encoder, as the generator, learns to fool it, which matches the
  aggregated posterior q(z) to the prior p(z).

  With `num_classes = K > 0` the discriminator also sees a one-hot vector of
  K + 1 entries, the last standing for "no label" (label -1): the
  semi-supervised regularisation of Makhzani et al. section 2.3, where a
  labelled code must land in its own class's mixture component.

  Parameters: `encoder/layers_{i}`, `decoder/layers_{i}`,
  `discriminator/layers_{i}` (each `kernel`, `bias`); the train step of
  `ae_jax.adversarial` updates the three groups with separate optimizers.

  Attributes:
    input_dim: D.
    hidden: encoder hidden sizes (the decoder uses them reversed).
    latent_dim: Z (2 draws the latent picture directly).
    disc_hidden: discriminator hidden sizes.
    num_classes: K for a label-conditioned discriminator, 0 for none.
    activation: hidden activation name (see `ae_jax.nn.get_activation`).

  References:
    Makhzani, Shlens, Jaitly, Goodfellow & Frey, "Adversarial Autoencoders",
    ICLR workshop 2016, https://arxiv.org/abs/1511.05644.
  """
  input_dim: int = 784
  hidden: Sequence[int] = (512, 256)
  latent_dim: int = 2
  disc_hidden: Sequence[int] = (256, 256)
  num_classes: int = 0
  activation: str = 'relu'

  def setup(self):
    if self.latent_dim <= 0:
      raise ValueError(f'latent_dim must be > 0, got {self.latent_dim}.')
    if self.num_classes < 0:
      raise ValueError(f'num_classes must be >= 0, got {self.num_classes}.')
    self.encoder = ae_nn.MLP(tuple(self.hidden) + (self.latent_dim,),
                             activation=self.activation)
    self.decoder = ae_nn.MLP(tuple(reversed(self.hidden)) + (self.input_dim,),
                             activation=self.activation)
    self.discriminator = ae_nn.MLP(tuple(self.disc_hidden) + (1,),
                                   activation=self.activation)

  def encode(self, x: Array) -> Array:
    """Code [B, Z] of inputs [B, ...]."""
    x_BxD = x.reshape(x.shape[0], -1)
    if x_BxD.shape[1] != self.input_dim:
      raise ValueError(f'Input flattens to {x_BxD.shape[1]} features, expected '
                       f'input_dim={self.input_dim}.')
    return self.encoder(x_BxD)

  def decode(self, z: Array) -> Array:
    """Flat logits [B, D] of codes [B, Z]."""
    return self.decoder(z)

  def discriminate(self, z: Array, labels: Array | None = None) -> Array:
    """Logit [B] that codes z [B, Z] come from the prior.

    Args:
      z: codes, [B, Z].
      labels: int [B] in {-1, 0, ..., K-1} (-1: unlabelled); required iff
        `num_classes > 0`.
    """
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f'Expected codes [B, {self.latent_dim}], got {z.shape}.')
    if self.num_classes:
      if labels is None:
        raise ValueError(f'This discriminator is conditioned on {self.num_classes} classes: '
                         'pass labels (-1 for unlabelled examples).')
      # Label -1 picks the extra "unlabelled" slot K.
      slot = jnp.where(labels < 0, self.num_classes, labels)
      z = jnp.concatenate([z, jax.nn.one_hot(slot, self.num_classes + 1, dtype=z.dtype)], -1)
    elif labels is not None:
      raise ValueError('labels given to an unconditioned discriminator (num_classes=0).')
    return self.discriminator(z)[:, 0]

  def __call__(self, x: Array, labels: Array | None = None) -> AAEOutput:
    """Encodes, decodes and scores the codes (all three parts, so `init` makes
    every parameter)."""
    z = self.encode(x)
    if self.num_classes and labels is None:
      labels = -jnp.ones((x.shape[0],), jnp.int32)
    return AAEOutput(logits=self.decode(z).reshape(x.shape), z=z,
                     disc_logits=self.discriminate(z, labels))
