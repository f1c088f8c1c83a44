"""Gated PixelCNN over a grid of discrete codes (the VQ-VAE's prior).

Shape letters: B batch, h, w grid, C channels, K number of codes.

Causality comes from shifted convolutions instead of masked kernels: the
*vertical* stack convolves rows i - k//2 ... i (all columns j - k//2 ...
j + k//2) and is shifted down one row before the horizontal stack reads it,
so it carries only rows above; the *horizontal* stack convolves columns
j - k//2 ... j of the current row, and its first layer reads the input
shifted right one column (mask 'A': the current position excluded). The
logit at position (i, j) therefore depends only on positions before it in
raster order, and, unlike the original PixelCNN's masked 3x3 stack, on every
position the receptive field reaches: no blind spot.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

Array = jax.Array


def shift_down(x_BxHxWxC: Array) -> Array:
  """Row i of the output is row i - 1 of the input; row 0 is zero."""
  return jnp.pad(x_BxHxWxC, ((0, 0), (1, 0), (0, 0), (0, 0)))[:, :-1]


def shift_right(x_BxHxWxC: Array) -> Array:
  """Column j of the output is column j - 1 of the input; column 0 is zero."""
  return jnp.pad(x_BxHxWxC, ((0, 0), (0, 0), (1, 0), (0, 0)))[:, :, :-1]


def _gate(x: Array) -> Array:
  a, b = jnp.split(x, 2, axis=-1)
  return jnp.tanh(a) * jax.nn.sigmoid(b)


class GatedLayer(nn.Module):
  """One gated layer: vertical and horizontal stacks, tanh ⊙ sigmoid gates.

  Attributes:
    channels: C, the width of both stacks.
    kernel_size: k (odd).
    first: the first layer (mask 'A': the horizontal stack does not see the
      current position, and there is no residual connection).
  """
  channels: int
  kernel_size: int = 3
  first: bool = False

  @nn.compact
  def __call__(self, v: Array, h: Array) -> tuple[Array, Array]:
    k, half = self.kernel_size, self.kernel_size // 2
    v_conv = nn.Conv(2 * self.channels, (half + 1, k), padding=((half, 0), (half, half)),
                     name='vertical')(v)
    h_in = shift_right(h) if self.first else h
    h_conv = nn.Conv(2 * self.channels, (1, half + 1), padding=((0, 0), (half, 0)),
                     name='horizontal')(h_in)
    # The vertical stack reaches the horizontal one only shifted down a row.
    h_conv = h_conv + nn.Conv(2 * self.channels, (1, 1), name='vertical_to_horizontal')(
        shift_down(v_conv))
    v_out = _gate(v_conv)
    h_out = nn.Conv(self.channels, (1, 1), name='horizontal_out')(_gate(h_conv))
    if not self.first:
      h_out = h_out + h
    return v_out, h_out


class GatedPixelCNN(nn.Module):
  """Autoregressive model p(c) = Π_i p(c_i | c_<i) of code grids c ∈ {0..K-1}^{h×w}.

  Codes are embedded, passed through `num_layers` gated layers, then
  ReLU-1x1-ReLU-1x1 to K logits per position (raster order: row by row).

  Attributes:
    num_codes: K.
    channels: C.
    num_layers: gated layers (the first is mask 'A').
    kernel_size: k; with L layers the horizontal stack reaches L·(k//2)
      columns to the left, the vertical stack L·(k//2) + 1 rows up.

  References:
    van den Oord, Kalchbrenner, Vinyals, Espeholt, Graves & Kavukcuoglu,
    "Conditional Image Generation with PixelCNN Decoders", NeurIPS 2016,
    https://arxiv.org/abs/1606.05328 (gated layers, two stacks).
    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation
    Learning", NeurIPS 2017 (a PixelCNN prior over VQ-VAE codes).
  """
  num_codes: int = 64
  channels: int = 64
  num_layers: int = 4
  kernel_size: int = 5

  def setup(self):
    if self.kernel_size < 3 or self.kernel_size % 2 == 0:
      raise ValueError(f'kernel_size must be odd and >= 3, got {self.kernel_size}.')
    if self.num_layers < 1:
      raise ValueError(f'num_layers must be >= 1, got {self.num_layers}.')
    self.embed = nn.Embed(self.num_codes, self.channels)
    self.layers = [GatedLayer(self.channels, self.kernel_size, first=i == 0)
                   for i in range(self.num_layers)]
    self.hidden = nn.Conv(4 * self.channels, (1, 1))
    self.out = nn.Conv(self.num_codes, (1, 1))

  def logits_of_embeddings(self, e_BxHxWxC: Array) -> Array:
    """Logits [B, h, w, K] of embedded codes [B, h, w, C]: the causal network."""
    v = h = e_BxHxWxC
    for layer in self.layers:
      v, h = layer(v, h)
    return self.out(jax.nn.relu(self.hidden(jax.nn.relu(h))))

  def embed_codes(self, codes_BxHxW: Array) -> Array:
    """Embeddings [B, h, w, C] of int codes [B, h, w]."""
    if codes_BxHxW.ndim != 3 or not jnp.issubdtype(codes_BxHxW.dtype, jnp.integer):
      raise ValueError(f'Expected int codes [B, h, w], got {codes_BxHxW.dtype} '
                       f'{codes_BxHxW.shape}.')
    return self.embed(codes_BxHxW)

  def __call__(self, codes_BxHxW: Array) -> Array:
    """Logits [B, h, w, K]: position (i, j) predicts codes[:, i, j] from the
    codes before it in raster order."""
    return self.logits_of_embeddings(self.embed_codes(codes_BxHxW))
