"""A small U-Net denoising autoencoder: an encoder-decoder with skips and no narrow code.

Shape letters: B batch, H, W, C image.

References:
  Ronneberger, Fischer & Brox, "U-Net: Convolutional Networks for Biomedical
  Image Segmentation", MICCAI 2015 (the encoder-decoder with skips).
  Vincent et al., "Extracting and composing robust features with denoising
  autoencoders", ICML 2008 (the denoising autoencoder).
  Wu & He, "Group Normalization", ECCV 2018.
"""

from __future__ import annotations

import math
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from ae_jax import layers
from ae_jax.models.autoencoder import AEOutput


class UNetDenoiser(nn.Module):
  """A small fully convolutional denoising autoencoder (a U-Net).

  `levels` times: two 3x3 convs (GroupNorm, ReLU), then 2x2 average pooling, channels
  `features * 2**level`; a bottleneck of two 3x3 convs; back up with 2x2
  stride-2 transposed convs, each followed by the concatenated skip of the
  same resolution and two 3x3 convs (GroupNorm, ReLU); the noisy input is concatenated before
  a last 1x1 conv to C logits. Pixels are sigmoid(logits). H and W must be
  divisible by 2**levels (28 and 32 are, for levels <= 2).

  Unlike `ConvAutoencoder` there is no narrow code: the skips carry the
  image's detail, which a 16-d bottleneck cannot, and the network only has
  to learn to remove the noise. `__call__` returns an `AEOutput` so that
  `objectives.make_autoencoder_objective` trains it; `z` is the bottleneck
  feature map.

  Attributes:
    family: 'denoiser', an image-to-image model without a code to embed
      (no `encode`).
    features: channels at full resolution.
    levels: poolings (resolution halvings).
  """
  family: ClassVar[str] = 'denoiser'
  features: int = 32
  levels: int = 2

  @nn.compact
  def __call__(self, x: jax.Array) -> AEOutput:
    """Logits of the clean image [B, H, W, C] from noisy images x [B, H, W, C] in [0, 1]."""
    if x.ndim != 4:
      raise ValueError(f'Expected images [B, H, W, C], got {x.shape}.')
    factor = 2 ** self.levels
    if x.shape[1] % factor or x.shape[2] % factor:
      raise ValueError(f'H and W must be divisible by 2**levels = {factor}, got {x.shape}.')
    # GroupNorm keeps the activations' scale fixed: without it, Adam's early updates can
    # blow the ReLU features up until the sigmoid saturates at 0 on sparse images (MNIST).
    conv = lambda f, h: nn.relu(nn.GroupNorm(num_groups=math.gcd(4, f))(nn.Conv(f, (3, 3))(h)))
    h, skips = x, []
    for level in range(self.levels):
      f = self.features * 2 ** level
      h = conv(f, conv(f, h))
      skips.append(h)
      h = nn.avg_pool(h, (2, 2), strides=(2, 2))
    f = self.features * 2 ** self.levels
    z = conv(f, conv(f, h))
    h = z
    for level in reversed(range(self.levels)):
      f = self.features * 2 ** level
      h = layers.ConvTranspose(f, (2, 2), strides=(2, 2))(h)
      h = conv(f, conv(f, jnp.concatenate([h, skips[level]], axis=-1)))
    logits = nn.Conv(x.shape[-1], (1, 1))(jnp.concatenate([h, x], axis=-1))
    return AEOutput(logits=logits, z=z)
