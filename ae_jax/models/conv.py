"""Convolutional autoencoder and VAE.

Both take images [B, H, W, C] whose shape is fixed by `image_shape` (the
decoder must know it). Spatial sizes follow 'SAME' stride-2 arithmetic,
n -> ceil(n / 2), and the decoder inverts them exactly (see
`ae_jax.layers.ConvDecoder`), so logits always have the input's shape: e.g.
28 -> 14 -> 7 -> 4 -> 7 -> 14 -> 28 and 32 -> 16 -> 8 -> 4 -> 8 -> 16 -> 32.

Shape letters: B batch, H, W, C image, Z latent.
"""

from __future__ import annotations

from collections.abc import Sequence
import math
from typing import ClassVar

import flax.linen as nn
import jax

from ae_jax import layers
from ae_jax.models.autoencoder import AEOutput
from ae_jax.models.vae import gaussian_log_weight_terms
from ae_jax.models.vae import VAEOutput

Array = jax.Array


def _check_image(x: Array, image_shape: Sequence[int]) -> None:
  if x.ndim != 4 or tuple(x.shape[1:]) != tuple(image_shape):
    raise ValueError(
        f'Expected images [B, {", ".join(map(str, image_shape))}], got '
        f'{x.shape}.')


class ConvAutoencoder(nn.Module):
  """The card's convolutional autoencoder.

  Encoder: Conv 32 (3x3, stride 2) ReLU, Conv 64 (3x3, stride 2) ReLU,
  flatten, Dense Z (linear). Decoder: Dense (H/4 * W/4 * 64) ReLU, reshape,
  ConvTranspose 64 (3x3, stride 2) ReLU, ConvTranspose 32 (3x3, stride 2)
  ReLU, Conv C (3x3) to logits. For 28x28 inputs the bottleneck map is 7x7x64
  exactly as on the card; sizes not divisible by 4 use ceil(n/4) and are
  cropped back.

  Parameters: `encoder/Conv_{i}`, `latent` (Dense), `decoder_dense`,
  `decoder/ConvTranspose_{i}`, `output` (Conv).

  Attributes:
    family: 'ae', what the applications call a deterministic-code model.
    image_shape: (H, W, C) of the inputs.
    latent_dim: Z (the card uses 16).
    channels: encoder channels (decoder uses them reversed).
    kernel_size: square kernel of every convolution.
    activation: activation name.

  References:
    Masci et al., "Stacked Convolutional Auto-Encoders for Hierarchical
    Feature Extraction", ICANN 2011,
    https://doi.org/10.1007/978-3-642-21735-7_7.
  """
  family: ClassVar[str] = 'ae'
  image_shape: Sequence[int] = (28, 28, 1)
  latent_dim: int = 16
  channels: Sequence[int] = (32, 64)
  kernel_size: int = 3
  activation: str = 'relu'

  def setup(self):
    sizes = layers.conv_encoder_sizes(self.image_shape[:2], len(self.channels))
    self._bottleneck = sizes[-1] + (self.channels[-1],)
    self.encoder = layers.ConvEncoder(
        tuple(self.channels), kernel_size=self.kernel_size,
        activation=self.activation)
    self.latent = nn.Dense(self.latent_dim)
    self.decoder_dense = nn.Dense(math.prod(self._bottleneck))
    self.decoder = layers.ConvDecoder(
        tuple(reversed(self.channels)), output_shapes=sizes[-2::-1],
        kernel_size=self.kernel_size, activation=self.activation)
    self.output = layers.Conv(self.image_shape[2],
                              (self.kernel_size, self.kernel_size), padding='SAME')

  def encode(self, x: Array) -> Array:
    """Latent code [B, Z] of images [B, H, W, C]."""
    _check_image(x, self.image_shape)
    h = self.encoder(x)
    return self.latent(h.reshape(h.shape[0], -1))

  def decode(self, z: Array) -> Array:
    """Logits [B, H, W, C] of codes [B, Z]."""
    act = layers.get_activation(self.activation)
    h = act(self.decoder_dense(z)).reshape((z.shape[0],) + self._bottleneck)
    return self.output(self.decoder(h))

  def __call__(self, x: Array) -> AEOutput:
    """Encodes and decodes; logits have the shape of `x`."""
    z = self.encode(x)
    return AEOutput(logits=self.decode(z), z=z)


class ConvVAE(nn.Module):
  """Convolutional Gaussian VAE with 4x4 stride-2 convolutions.

  Encoder: Conv 32, 64, 128 (4x4, stride 2, 'SAME') with ReLU, flatten,
  Dense Z for the mean and Dense Z for the log variance. Decoder: Dense to the
  bottleneck map ReLU, reshape, ConvTranspose 64, 32 (4x4, stride 2) with
  ReLU, ConvTranspose C (4x4, stride 2) to logits, each cropped to the
  encoder's sizes so the logits have the input's shape (28x28 and 32x32 both
  reach a 4x4 bottleneck).

  Parameters: `encoder/Conv_{i}`, `mean`, `log_var`, `decoder_dense`,
  `decoder/ConvTranspose_{i}`.

  Importance sampling (`ae_jax.likelihood`) as for `MLPVAE`.

  Attributes:
    family: 'vae', as `MLPVAE`.
    latent_dim: Z.
    channels: encoder channels; the decoder uses channels[-2::-1] + (C,).
    image_shape: (H, W, C) of the inputs.
    kernel_size: square kernel of every convolution.
    activation: activation name.

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014,
    https://arxiv.org/abs/1312.6114.
  """
  family: ClassVar[str] = 'vae'
  latent_dim: int = 16
  channels: Sequence[int] = (32, 64, 128)
  image_shape: Sequence[int] = (28, 28, 1)
  kernel_size: int = 4
  activation: str = 'relu'

  def setup(self):
    sizes = layers.conv_encoder_sizes(self.image_shape[:2], len(self.channels))
    self._bottleneck = sizes[-1] + (self.channels[-1],)
    self.encoder = layers.ConvEncoder(
        tuple(self.channels), kernel_size=self.kernel_size,
        activation=self.activation)
    self.mean = nn.Dense(self.latent_dim)
    self.log_var = nn.Dense(self.latent_dim)
    self.decoder_dense = nn.Dense(math.prod(self._bottleneck))
    self.decoder = layers.ConvDecoder(
        tuple(self.channels[-2::-1]) + (self.image_shape[2],),
        output_shapes=sizes[-2::-1], kernel_size=self.kernel_size,
        activation=self.activation, activate_final=False)

  def encode(self, x: Array) -> tuple[Array, Array]:
    """Posterior (mean, log_var), each [B, Z], of images [B, H, W, C]."""
    _check_image(x, self.image_shape)
    h = self.encoder(x)
    h = h.reshape(h.shape[0], -1)
    return self.mean(h), self.log_var(h)

  def decode(self, z: Array) -> Array:
    """Logits [B, H, W, C] of codes [B, Z]."""
    act = layers.get_activation(self.activation)
    h = act(self.decoder_dense(z)).reshape((z.shape[0],) + self._bottleneck)
    return self.decoder(h)

  def __call__(self, x: Array, key: Array) -> VAEOutput:
    """Encodes, samples z with `key` (reparameterized) and decodes it."""
    mean, log_var = self.encode(x)
    z = layers.reparameterize(key, mean, log_var)
    return VAEOutput(logits=self.decode(z), z=z, mean=mean, log_var=log_var)

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
