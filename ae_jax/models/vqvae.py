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
import jax.numpy as jnp
import numpy as np

from ae_jax import layers
from ae_jax import quantizers

Array = jax.Array

QUANTIZERS = ('vq', 'vq_ema', 'fsq', 'lfq', 'residual', 'grouped')
_CODEBOOK_QUANTIZERS = ('vq', 'vq_ema', 'residual', 'grouped')


def quantizer_kind(model) -> str:
  """`model.quantizer_type`, or 'vq_ema' / 'vq' by `model.ema` when it is None."""
  kind = model.quantizer_type
  if kind is None:
    return 'vq_ema' if model.ema else 'vq'
  if kind not in QUANTIZERS:
    raise ValueError(f'VQVAE.quantizer_type must be one of {QUANTIZERS} (or None), got {kind!r}.')
  return kind


def uses_ema(model) -> bool:
  """Whether the quantizer has EMA codebooks (state in 'vq_stats')."""
  kind = quantizer_kind(model)
  return kind == 'vq_ema' or (kind in ('residual', 'grouped') and model.ema)


def check_quantizer(model) -> str:
  """Checks the quantizer fields of a `VQVAE` together; returns the quantizer's name.

  Raises:
    ValueError: naming the field, its value and what is expected.
  """
  kind = quantizer_kind(model)
  if kind == 'vq' and model.ema:
    raise ValueError("VQVAE.quantizer_type='vq' trains the codebook by gradient but ema=True asks "
                     "for the EMA codebook: set ema=False, or quantizer_type='vq_ema'.")
  if kind in ('fsq', 'lfq') and model.ema:
    raise ValueError(f'VQVAE.ema=True has no effect: quantizer_type={kind!r} has no codebook; '
                     'set ema=False.')
  if model.gradient not in quantizers.GRADIENTS:
    raise ValueError(f'VQVAE.gradient must be one of {quantizers.GRADIENTS}, got '
                     f'{model.gradient!r}.')
  if kind not in _CODEBOOK_QUANTIZERS and (model.gradient != 'ste' or model.cosine):
    raise ValueError(f"VQVAE.gradient={model.gradient!r} and cosine={model.cosine} apply to "
                     f"codebook quantizers {_CODEBOOK_QUANTIZERS}, not {kind!r}: leave 'ste', "
                     'False.')
  if kind == 'residual' and model.cosine:
    raise ValueError('VQVAE.cosine=True does not apply to residual VQ (its residuals are not '
                     'unit vectors); use it with vq, vq_ema or grouped.')
  if not uses_ema(model) and (model.axis_name is not None
                              or model.dead_code_threshold is not None
                              or model.kmeans_init) and kind != 'lfq':
    raise ValueError('VQVAE.axis_name, dead_code_threshold and kmeans_init need an EMA '
                     "codebook (quantizer_type='vq_ema', or ema=True with residual/grouped); use "
                     'ae_jax.layers.restart_dead_codes otherwise.')
  if kind == 'lfq' and (model.dead_code_threshold is not None or model.kmeans_init):
    raise ValueError('VQVAE.dead_code_threshold and kmeans_init have no effect with '
                     "quantizer_type='lfq' (no codebook).")
  if kind == 'fsq':
    levels = tuple(model.levels)
    if not levels or any(not isinstance(l, (int, np.integer)) or l < 2 for l in levels):
      raise ValueError(f"VQVAE.levels must be integers >= 2 for quantizer_type='fsq', got {levels!r}.")
    if model.code_dim != len(levels):
      raise ValueError(f'VQVAE.code_dim={model.code_dim} must equal len(levels)={len(levels)} '
                       f'for FSQ levels {levels}.')
    if model.num_codes != int(np.prod(levels)):
      raise ValueError(f'VQVAE.num_codes={model.num_codes} must equal the FSQ codebook size '
                       f'prod(levels)={int(np.prod(levels))} for levels {levels}.')
  elif tuple(model.levels):
    raise ValueError(f"VQVAE.levels={tuple(model.levels)} is read only by quantizer_type='fsq', "
                     f'not {kind!r}; leave it empty.')
  if kind == 'lfq':
    if not 1 <= model.code_dim <= quantizers.LookupFreeQuantizer.MAX_CODE_DIM:
      raise ValueError(f'VQVAE.code_dim={model.code_dim} must be in [1, '
                       f'{quantizers.LookupFreeQuantizer.MAX_CODE_DIM}] for LFQ.')
    if model.num_codes != 2 ** model.code_dim:
      raise ValueError(f'VQVAE.num_codes={model.num_codes} must equal the LFQ codebook size '
                       f'2^code_dim={2 ** model.code_dim}.')
    if not model.entropy_temperature > 0:
      raise ValueError(f'VQVAE.entropy_temperature must be > 0, got {model.entropy_temperature}.')
    if model.entropy_weight < 0 or model.diversity_weight < 0:
      raise ValueError(f'VQVAE.entropy_weight={model.entropy_weight} and diversity_weight='
                       f'{model.diversity_weight} must be >= 0.')
  if kind == 'residual':
    if model.num_quantizers < 1:
      raise ValueError(f'VQVAE.num_quantizers must be >= 1, got {model.num_quantizers}.')
    if not 0.0 <= model.quantizer_dropout <= 1.0:
      raise ValueError(f'VQVAE.quantizer_dropout must be in [0, 1], got '
                       f'{model.quantizer_dropout}.')
  if kind == 'grouped' and (model.num_groups < 1 or model.code_dim % model.num_groups):
    raise ValueError(f'VQVAE.num_groups={model.num_groups} must be >= 1 and divide '
                     f'code_dim={model.code_dim}.')
  if model.kmeans_init and model.kmeans_iters < 0:
    raise ValueError(f'VQVAE.kmeans_iters must be >= 0, got {model.kmeans_iters}.')
  return kind


def make_quantizer(model) -> nn.Module:
  """The quantizer module a `VQVAE`'s fields describe (checked by `check_quantizer`)."""
  kind = check_quantizer(model)
  d, k = model.code_dim, model.num_codes
  ema_fields = dict(decay=model.decay, epsilon=model.epsilon, axis_name=model.axis_name,
                    dead_code_threshold=model.dead_code_threshold,
                    kmeans_init=model.kmeans_init, kmeans_iters=model.kmeans_iters)
  if kind == 'vq':
    return quantizers.VectorQuantizer(k, d, gradient=model.gradient, cosine=model.cosine)
  if kind == 'vq_ema':
    return quantizers.VectorQuantizerEMA(k, d, gradient=model.gradient, cosine=model.cosine,
                                        **ema_fields)
  if kind == 'fsq':
    return quantizers.FiniteScalarQuantizer(tuple(model.levels))
  if kind == 'lfq':
    return quantizers.LookupFreeQuantizer(
        d, entropy_weight=model.entropy_weight, diversity_weight=model.diversity_weight,
        temperature=model.entropy_temperature, axis_name=model.axis_name)
  stage_fields = ema_fields if model.ema else {}
  if kind == 'residual':
    return quantizers.ResidualVectorQuantizer(
        model.num_quantizers, k, d, ema=model.ema, dropout_rate=model.quantizer_dropout,
        gradient=model.gradient, stage_kwargs=stage_fields)
  return quantizers.GroupedVectorQuantizer(
      model.num_groups, k, d, ema=model.ema, gradient=model.gradient, cosine=model.cosine,
      group_kwargs=stage_fields)


class VQVAEOutput(flax.struct.PyTreeNode):
  """Output of a VQ-VAE.

  Attributes:
    logits: decoder output before any sigmoid, [B, H, W, C].
    z_e: encoder output, [B, h, w, D].
    z_q: the codes (no gradient estimator), [B, h, w, D].
    quantized: z_q in value with the quantizer's gradient estimator to z_e,
      [B, h, w, D], fed to the decoder.
    indices: int32 code indices, [B, h, w] ([B, h, w, S] / [B, h, w, G] for
      residual and grouped VQ).
    perplexity: exp(entropy of the batch code frequencies), scalar.
    usage: fraction of codes used in the batch, scalar.
    commitment: per-example commitment loss (mean over the grid), [B].
    codebook: per-example codebook loss, [B] (zeros without a
      gradient-trained codebook).
    aux_loss: scalar the quantizer adds to the loss (LFQ's entropy penalty).
    quantizer_metrics: the quantizer's extra scalar metrics.
  """
  logits: Array
  z_e: Array
  z_q: Array
  quantized: Array
  indices: Array
  perplexity: Array
  usage: Array
  commitment: Array
  codebook: Array
  aux_loss: Array
  quantizer_metrics: dict[str, Array]


class VQVAE(nn.Module):
  """VQ-VAE with the paper's convolutional architecture, small by default.

  Encoder: Conv hidden/2 (4x4, stride 2) ReLU, Conv hidden (4x4, stride 2)
  ReLU, Conv hidden (3x3), `num_res_blocks` residual blocks, then a 1x1 Conv
  to D (pre-quantization). Decoder: Conv hidden (3x3), residual blocks,
  ConvTranspose hidden/2 (4x4, stride 2) ReLU, ConvTranspose C (4x4, stride 2)
  to logits, cropped so logits have the input's shape (28x28 -> 7x7 grid,
  32x32 -> 8x8 grid).

  The quantizer (`quantizer_type`, see `ae_jax.quantizers`; None means
  'vq_ema' with `ema=True`, else 'vq'; the module is `self.quantizer`):

    'vq'        `VectorQuantizer`, codebook in `params['quantizer']`;
    'vq_ema'    `VectorQuantizerEMA`, codebook and statistics in the
                'vq_stats' collection (call with `train=True,
                mutable=['vq_stats']` to update them, and `rngs={'restart':
                key}` when `dead_code_threshold` is set);
    'fsq'       `FiniteScalarQuantizer(levels)`: code_dim = len(levels) and
                num_codes = prod(levels);
    'lfq'       `LookupFreeQuantizer`: num_codes = 2^code_dim;
    'residual'  `ResidualVectorQuantizer`, `num_quantizers` stages of
                `num_codes` codes, EMA codebooks with `ema=True`;
    'grouped'   `GroupedVectorQuantizer`, `num_groups` groups of
                code_dim / num_groups channels, EMA codebooks with `ema=True`.

  `gradient` ('ste' or 'rotation') and `cosine` apply to the codebook
  quantizers; `kmeans_init`, `decay`, `epsilon`, `dead_code_threshold` and
  `axis_name` to EMA codebooks. The losses come from the quantizer's output
  (`commitment`, `codebook`, `aux_loss`). Quantizer dropout draws from the
  rng stream 'dropout'.

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
    quantizer_type: 'vq', 'vq_ema', 'fsq', 'lfq', 'residual', 'grouped', or
      None (from `ema`).
    levels: FSQ levels per channel.
    num_quantizers: residual VQ stages.
    quantizer_dropout: residual VQ's quantizer dropout rate.
    num_groups: grouped VQ's groups.
    gradient: 'ste' or 'rotation' (the rotation trick).
    cosine: l2-normalised codes and inputs (ViT-VQGAN).
    kmeans_init: k-means codebook initialisation on the first batch (EMA).
    kmeans_iters: its Lloyd iterations.
    entropy_weight: LFQ's entropy penalty weight.
    diversity_weight: LFQ's codebook-entropy weight gamma inside it.
    entropy_temperature: LFQ's soft-assignment temperature.
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
  quantizer_type: str | None = None
  levels: Sequence[int] = ()
  num_quantizers: int = 1
  quantizer_dropout: float = 0.0
  num_groups: int = 1
  gradient: str = 'ste'
  cosine: bool = False
  kmeans_init: bool = False
  kmeans_iters: int = 10
  entropy_weight: float = 0.1
  diversity_weight: float = 1.0
  entropy_temperature: float = 1.0
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
    self.quantizer = make_quantizer(self)
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
    per_example = lambda v: jnp.mean(v.reshape(v.shape[0], -1), axis=1)
    return VQVAEOutput(
        logits=self.decode(q.quantized), z_e=z_e, z_q=q.z_q,
        quantized=q.quantized, indices=q.indices, perplexity=q.perplexity,
        usage=q.usage, commitment=per_example(q.commitment),
        codebook=per_example(q.codebook), aux_loss=q.aux_loss,
        quantizer_metrics=q.metrics)

  @property
  def quantizer_kind(self) -> str:
    """The quantizer's name, `quantizer_type` or its default from `ema`."""
    return quantizer_kind(self)

  @property
  def stateful(self) -> bool:
    """Whether the model keeps 'vq_stats' (an EMA codebook somewhere)."""
    return uses_ema(self)

  @property
  def codebook_size(self) -> int:
    """Codes per index: K, or prod(levels) (FSQ), 2^D (LFQ)."""
    kind = quantizer_kind(self)
    if kind == 'fsq':
      return int(np.prod(self.levels))
    if kind == 'lfq':
      return 2 ** self.code_dim
    return self.num_codes
