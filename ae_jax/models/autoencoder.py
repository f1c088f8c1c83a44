"""Dense autoencoder.

Shape letters: B batch, D flattened input size, H1 first hidden layer, Z latent.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax

from ae_jax import layers

Array = jax.Array


class AEOutput(flax.struct.PyTreeNode):
  """Output of a deterministic autoencoder.

  Attributes:
    logits: decoder output before any sigmoid, with the model input's shape.
    z: latent code, [B, Z] (or [B, ...] for convolutional latents).
  """
  logits: Array
  z: Array


class MLPAutoencoder(nn.Module):
  """Fully connected autoencoder D -> hidden -> Z -> reversed(hidden) -> D.

  The default is the card's 784 -> 256 -> 128 -> 32 encoder and its mirror.
  Inputs [B, ...] are flattened to [B, D]. For the contractive penalty,
  `encode(x) == encode_rest(encode_first(x))` where `encode_first` is the
  first Dense layer without activation and `first_kernel(params)` its kernel.

  Parameters: `encoder/layers_{i}/{kernel,bias}` and
  `decoder/layers_{i}/{kernel,bias}`; the first Dense kernel [D, H1] is
  `params['encoder']['layers_0']['kernel']`.

  Attributes:
    family: 'ae', what the applications call a deterministic-code model
      (`encode` gives z).
    input_dim: D, the flattened input size.
    hidden: encoder hidden sizes (the decoder uses them reversed).
    latent_dim: Z.
    activation: hidden activation name (see `ae_jax.layers.get_activation`).
    latent_activation: activation of the code (None, 'sigmoid', 'relu', ...);
      'sigmoid' suits the KL sparsity penalty, 'relu' the L1 one.

  References:
    Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with Neural
    Networks", Science 2006, https://doi.org/10.1126/science.1127647.
  """
  family: ClassVar[str] = 'ae'
  input_dim: int = 784
  hidden: Sequence[int] = (256, 128)
  latent_dim: int = 32
  activation: str = 'relu'
  latent_activation: str | None = None

  def setup(self):
    self.encoder = layers.MLP(
        tuple(self.hidden) + (self.latent_dim,), activation=self.activation,
        final_activation=self.latent_activation)
    self.decoder = layers.MLP(
        tuple(reversed(self.hidden)) + (self.input_dim,),
        activation=self.activation, final_activation=None)

  def _flatten(self, x: Array) -> Array:
    x_BxD = x.reshape(x.shape[0], -1)
    if x_BxD.shape[1] != self.input_dim:
      raise ValueError(
          f'Input flattens to {x_BxD.shape[1]} features, expected '
          f'input_dim={self.input_dim}.')
    return x_BxD

  def encode_first(self, x: Array) -> Array:
    """Pre-activation of the first Dense layer, u = x W1 + b1, [B, H1]."""
    return self.encoder.first(self._flatten(x))

  def encode_rest(self, u: Array) -> Array:
    """First activation and the remaining encoder layers, [..., H1] -> [..., Z].

    Works on one example u [H1] as well as on a batch [B, H1].
    """
    return self.encoder.rest(u)

  def encode(self, x: Array) -> Array:
    """Latent code [B, Z] of inputs [B, ...]."""
    return self.encoder(self._flatten(x))

  def decode(self, z: Array) -> Array:
    """Flat logits [B, D] of codes [B, Z]."""
    return self.decoder(z)

  def __call__(self, x: Array) -> AEOutput:
    """Encodes and decodes; logits have the shape of `x`."""
    z = self.encode(x)
    return AEOutput(logits=self.decode(z).reshape(x.shape), z=z)

  @nn.nowrap
  def rest_layers(self, params: Mapping[str, Any]
                  ) -> tuple[list[tuple[Array, Array]], list[Callable[[Array], Array]]]:
    """What `encode_rest` computes, spelled out for `losses.contractive_penalty_mlp`:
    the (kernel, bias) of every encoder layer after the first, and the
    activations σ_1 (after the first layer) to σ_L (the code's)."""
    if 'params' in params:
      params = params['params']
    encoder = params['encoder']
    num_layers = len(self.hidden) + 1
    rest = [(encoder[f'layers_{i}']['kernel'], encoder[f'layers_{i}']['bias'])
            for i in range(1, num_layers)]
    acts = [layers.get_activation(self.activation)] * (num_layers - 1)
    return rest, acts + [layers.get_activation(self.latent_activation)]

  @staticmethod
  def first_kernel(params: Mapping[str, Any]) -> Array:
    """First Dense kernel [D, H1] from `{'params': ...}` or the params tree."""
    if 'params' in params:
      params = params['params']
    return params['encoder']['layers_0']['kernel']
