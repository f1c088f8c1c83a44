"""VQ-VAE: convolutional encoder, vector quantizer, convolutional decoder.

Shape letters: B batch, H, W, C image, h, w latent grid, D code dimension,
K number of codes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax

from ae_jax import layers

Array = jax.Array


class VQVAEOutput(flax.struct.PyTreeNode):
  """Output of a VQ-VAE.

  Attributes:
    logits: decoder output before any sigmoid, [B, H, W, C].
    z_e: encoder output, [B, h, w, D].
    z_q: raw nearest codes (no straight-through), [B, h, w, D]; the codebook
      loss ||sg[z_e] - z_q||^2 reaches the codebook through it.
    quantized: z_e + sg(z_q - z_e), [B, h, w, D], fed to the decoder.
    indices: int32 code indices, [B, h, w].
    perplexity: exp(entropy of the batch code frequencies), scalar.
    usage: fraction of codes used in the batch, scalar.
  """
  logits: Array
  z_e: Array
  z_q: Array
  quantized: Array
  indices: Array
  perplexity: Array
  usage: Array


class VQVAE(nn.Module):
  """VQ-VAE with the paper's convolutional architecture, small by default.

  Encoder: Conv hidden/2 (4x4, stride 2) ReLU, Conv hidden (4x4, stride 2)
  ReLU, Conv hidden (3x3), `num_res_blocks` residual blocks, then a 1x1 Conv
  to D (pre-quantization). Decoder: Conv hidden (3x3), residual blocks,
  ConvTranspose hidden/2 (4x4, stride 2) ReLU, ConvTranspose C (4x4, stride 2)
  to logits, cropped so logits have the input's shape (28x28 -> 7x7 grid,
  32x32 -> 8x8 grid).

  The quantizer is `VectorQuantizer` (codebook in `params['quantizer']`) or,
  with `ema=True`, `VectorQuantizerEMA` (codebook and statistics in the
  'vq_stats' collection: call with `train=True, mutable=['vq_stats']` to
  update them, and `rngs={'restart': key}` when `dead_code_threshold` is
  set). The codebook and commitment losses are computed by the objective
  from `z_e` and `z_q`.

  Attributes:
    family: 'vqvae', what the applications call a vector-quantized model
      (`encode` gives z_e, `quantize` snaps it to the codebook).
    num_codes: K.
    code_dim: D.
    ema: use the EMA codebook instead of the gradient-trained one.
    decay: EMA decay (ema=True only).
    epsilon: Laplace smoothing of the EMA counts (ema=True only).
    axis_name: pmap axis for the EMA statistics (ema=True only).
    dead_code_threshold: EMA dead-code restart threshold, or None.
    hidden_channels: channels of the conv stacks (paper: 128).
    res_channels: channels inside residual blocks (paper: 32).
    num_res_blocks: residual blocks in encoder and decoder (paper: 2).
    image_shape: (H, W, C) of the inputs.

  References:
    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation
    Learning", NeurIPS 2017, https://arxiv.org/abs/1711.00937.
  """
  family: ClassVar[str] = 'vqvae'
  num_codes: int = 64
  code_dim: int = 16
  ema: bool = False
  decay: float = 0.99
  epsilon: float = 1e-5
  axis_name: str | None = None
  dead_code_threshold: float | None = None
  hidden_channels: int = 64
  res_channels: int = 32
  num_res_blocks: int = 2
  image_shape: Sequence[int] = (28, 28, 1)

  def setup(self):
    sizes = layers.conv_encoder_sizes(self.image_shape[:2], 2)
    half = max(self.hidden_channels // 2, 1)
    self.encoder_convs = layers.ConvEncoder(
        (half, self.hidden_channels), kernel_size=4)
    self.encoder_conv = layers.Conv(self.hidden_channels, (3, 3), padding='SAME')
    self.encoder_res = layers.ResidualStack(self.num_res_blocks,
                                           self.res_channels)
    self.pre_quantization = layers.Conv(self.code_dim, (1, 1))
    if self.ema:
      self.quantizer = layers.VectorQuantizerEMA(
          self.num_codes, self.code_dim, decay=self.decay,
          epsilon=self.epsilon, axis_name=self.axis_name,
          dead_code_threshold=self.dead_code_threshold)
    else:
      if self.axis_name is not None or self.dead_code_threshold is not None:
        raise ValueError('axis_name and dead_code_threshold need ema=True; '
                         'use ae_jax.layers.restart_dead_codes otherwise.')
      self.quantizer = layers.VectorQuantizer(self.num_codes, self.code_dim)
    self.decoder_conv = layers.Conv(self.hidden_channels, (3, 3), padding='SAME')
    self.decoder_res = layers.ResidualStack(self.num_res_blocks,
                                           self.res_channels)
    self.decoder_convs = layers.ConvDecoder(
        (half, self.image_shape[2]), output_shapes=sizes[-2::-1],
        kernel_size=4, activate_final=False)

  def encode(self, x: Array) -> Array:
    """Continuous encoder output z_e [B, h, w, D] of images [B, H, W, C]."""
    if x.ndim != 4 or tuple(x.shape[1:]) != tuple(self.image_shape):
      raise ValueError(f'Expected images [B, {self.image_shape}], got '
                       f'{x.shape}.')
    h = self.encoder_res(self.encoder_conv(self.encoder_convs(x)))
    return self.pre_quantization(h)

  def quantize(self, z_e: Array, *, train: bool = False
               ) -> layers.QuantizerOutput:
    """Quantizes z_e [B, h, w, D] (updates EMA stats when training)."""
    return self.quantizer(z_e, train=train)

  def decode(self, quantized: Array) -> Array:
    """Logits [B, H, W, C] of (quantized) codes [B, h, w, D]."""
    h = self.decoder_res(self.decoder_conv(quantized))
    return self.decoder_convs(h)

  def decode_indices(self, indices: Array) -> Array:
    """Logits [B, H, W, C] of code indices [B, h, w] (e.g. from a prior)."""
    return self.decode(self.quantizer.embed(indices))

  def __call__(self, x: Array, *, train: bool = False) -> VQVAEOutput:
    """Encodes, quantizes (straight-through) and decodes."""
    z_e = self.encode(x)
    q = self.quantize(z_e, train=train)
    return VQVAEOutput(
        logits=self.decode(q.quantized), z_e=z_e, z_q=q.z_q,
        quantized=q.quantized, indices=q.indices, perplexity=q.perplexity,
        usage=q.usage)
