"""Flax linen building blocks for autoencoders.

Dense and convolutional stacks and the Gaussian reparameterization. The
vector quantizers (VQ, EMA VQ, FSQ, LFQ, residual and grouped VQ) live in
`ae_jax.quantizers` and are re-exported here.

Shape letters: B batch, D input features (or code dimension in the quantizers),
H hidden units, K number of codes, N number of vectors quantized (B times the
spatial positions), R replicas along a pmap axis.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# The quantizers, re-exported: `layers.VectorQuantizer` etc. keep working.
from ae_jax.quantizers import (  # pylint: disable=unused-import
    FiniteScalarQuantizer, GroupedVectorQuantizer, LookupFreeQuantizer, QuantizerOutput,
    ResidualVectorQuantizer, VectorQuantizer, VectorQuantizerEMA, code_counts, codebook_init,
    kmeans_codebook, nearest_code_indices, perplexity_and_usage, restart_dead_codes,
    rotation_trick, straight_through)

Array = jax.Array

_ACTIVATIONS: dict[str, Callable[[Array], Array]] = {
    'relu': nn.relu,
    'sigmoid': nn.sigmoid,
    'tanh': jnp.tanh,
    'gelu': nn.gelu,
    'elu': nn.elu,
    'selu': nn.selu,
    'silu': nn.silu,
    'swish': nn.swish,
    'leaky_relu': nn.leaky_relu,
    'softplus': nn.softplus,
    'identity': lambda x: x,
    'linear': lambda x: x,
}


def get_activation(name: str | None) -> Callable[[Array], Array]:
  """Returns the activation function called `name`.

  Args:
    name: one of 'relu', 'sigmoid', 'tanh', 'gelu', 'elu', 'selu', 'silu',
      'swish', 'leaky_relu', 'softplus', 'identity'/'linear', or None for the
      identity.

  Returns:
    The elementwise function.

  Raises:
    ValueError: for an unknown name.
  """
  if name is None:
    return _ACTIVATIONS['identity']
  try:
    return _ACTIVATIONS[name]
  except KeyError:
    raise ValueError(
        f'Unknown activation {name!r}; known: {sorted(_ACTIVATIONS)}') from None


def reparameterize(key: Array, mean: Array, log_var: Array) -> Array:
  """Draws z = mean + exp(log_var / 2) * eps, eps ~ N(0, I).

  Args:
    key: PRNG key.
    mean: Gaussian means, any shape.
    log_var: log variances, same shape as `mean`.

  Returns:
    A sample with the shape of `mean`, differentiable in `mean` and `log_var`.

  References:
    Kingma & Welling, "Auto-Encoding Variational Bayes", ICLR 2014,
    https://arxiv.org/abs/1312.6114 (Sec. 2.4).
  """
  eps = jax.random.normal(key, mean.shape, mean.dtype)
  return mean + jnp.exp(0.5 * log_var) * eps


class MLP(nn.Module):
  """A stack of Dense layers.

  `__call__(x) == rest(first(x))`, where `first` is the first Dense layer
  without its activation; the split lets the contractive penalty use the
  closed form for a linear first layer.

  Attributes:
    features: output sizes of the Dense layers, in order.
    activation: name of the activation between layers (see `get_activation`).
    final_activation: name of the activation after the last layer, or None for
      linear outputs.

  Parameters are named `layers_0`, `layers_1`, ... (each with `kernel` [in,
  out] and `bias` [out]).
  """
  features: Sequence[int]
  activation: str = 'relu'
  final_activation: str | None = None

  def setup(self):
    if not self.features:
      raise ValueError('MLP needs at least one layer.')
    self.layers = [nn.Dense(f) for f in self.features]

  def first(self, x: Array) -> Array:
    """Pre-activation of the first layer, [..., features[0]]."""
    return self.layers[0](x)

  def rest(self, u: Array) -> Array:
    """Applies the first layer's activation and all the later layers."""
    act = get_activation(self.activation)
    last = len(self.layers) - 1
    h = u
    for i, layer in enumerate(self.layers):
      if i > 0:
        h = layer(h)
      h = get_activation(self.final_activation)(h) if i == last else act(h)
    return h

  def __call__(self, x: Array) -> Array:
    """Maps [..., D] to [..., features[-1]]."""
    return self.rest(self.first(x))


def conv_same_output_size(size: int, stride: int) -> int:
  """Spatial size after a 'SAME'-padded convolution: ceil(size / stride)."""
  return -(-size // stride)


def conv_encoder_sizes(
    spatial_shape: Sequence[int], num_layers: int, stride: int = 2
) -> list[tuple[int, ...]]:
  """Spatial shapes through `num_layers` 'SAME'-padded strided convolutions.

  Args:
    spatial_shape: input spatial shape, e.g. (H, W).
    num_layers: number of strided convolutions.
    stride: their stride.

  Returns:
    `num_layers + 1` shapes, the input's first: e.g. (28, 28) with 3 layers of
    stride 2 gives [(28, 28), (14, 14), (7, 7), (4, 4)], and (32, 32) gives
    [(32, 32), (16, 16), (8, 8), (4, 4)].
  """
  shapes = [tuple(int(s) for s in spatial_shape)]
  for _ in range(num_layers):
    shapes.append(tuple(conv_same_output_size(s, stride) for s in shapes[-1]))
  return shapes


class ConvEncoder(nn.Module):
  """Strided 'SAME' convolutions (`Conv`), each followed by an activation.

  Attributes:
    channels: output channels of each convolution.
    kernel_size: square kernel size.
    stride: stride of every convolution; the spatial size becomes
      ceil(size / stride) at each layer (see `conv_encoder_sizes`).
    activation: activation name.
    activate_final: whether the last convolution is followed by the
      activation.
  """
  channels: Sequence[int]
  kernel_size: int = 3
  stride: int = 2
  activation: str = 'relu'
  activate_final: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Maps [B, H, W, C] to [B, H', W', channels[-1]]."""
    act = get_activation(self.activation)
    k, s = self.kernel_size, self.stride
    for i, c in enumerate(self.channels):
      x = Conv(c, (k, k), strides=(s, s), padding='SAME')(x)
      if i < len(self.channels) - 1 or self.activate_final:
        x = act(x)
    return x


_SPATIAL = {1: 'W', 2: 'HW', 3: 'DHW'}


def _dimension_numbers(num_spatial: int) -> tuple[str, str, str]:
  """Channels-last specs ('NHWC', 'HWIO', 'NHWC') for 1 to 3 spatial dims."""
  if num_spatial not in _SPATIAL:
    raise ValueError(f'Transposed convolutions take 1 to 3 spatial dims, got {num_spatial}.')
  spatial = _SPATIAL[num_spatial]
  return f'N{spatial}C', f'{spatial}IO', f'N{spatial}C'


def _transpose_pads(kernel: Sequence[int], strides: Sequence[int],
                    padding: str | Sequence[tuple[int, int]]) -> tuple[tuple[int, int], ...]:
  """The padding of the lhs-dilated input that `lax.conv_transpose` uses.

  'SAME' and 'VALID' name the padding of the forward convolution that the
  transposed one inverts (as in `lax.conv_transpose`); explicit pairs pad the
  dilated input directly (its default, `use_consistent_padding=False`).
  """
  if not isinstance(padding, str):
    return tuple((int(lo), int(hi)) for lo, hi in padding)
  pads = []
  for k, s in zip(kernel, strides):
    if padding == 'SAME':
      total = k + s - 2
      lo = k - 1 if s > k - 1 else -(-total // 2)
    elif padding == 'VALID':
      total, lo = k + s - 2 + max(k - s, 0), k - 1
    else:
      raise ValueError(f"padding must be 'SAME', 'VALID' or (low, high) pairs, got {padding!r}")
    pads.append((lo, total - lo))
  return tuple(pads)


# Jitted so that eager (un-jitted) gradients run it as one program, not op by op.
@functools.partial(jax.jit, static_argnums=(2, 3))
def _valid_conv_kernel_grad(inp: Array, cot: Array, kernel_size: tuple[int, ...],
                            strides: tuple[int, ...]) -> Array:
  """dW [*K, C_in, C_out] of y = conv(inp, W) ('VALID', `strides`) at cotangent `cot`.

  dW[j] = sum_{n, a} inp[n, s a + j] cot[n, a] over batch and output
  positions, written as matrix products rather than as XLA's backward-filter
  convolution, whose window is the whole output map and which XLA:CPU runs
  several times slower than the same products. With stride 1 and fewer
  output than input channels the products take shifted copies of `cot`
  (the smaller operand); otherwise strided slices of `inp`, one product per
  kernel offset. Rows of `inp` past the last window are ignored.
  """
  out_sizes = cot.shape[1:-1]
  offsets = list(itertools.product(*(range(k) for k in kernel_size)))
  c_in, c_out = inp.shape[-1], cot.shape[-1]
  # Products of [rows, C] matrices as (.)^T @ (.): XLA:CPU runs this form
  # about 3x faster than one dot_general contracting the batch and spatial dims.
  rows = lambda a: a.reshape(-1, a.shape[-1])
  if all(s == 1 for s in strides) and c_out < c_in:
    # dW[j] = sum_u inp[u] cot[u - j]: cot shifted by each offset, zero outside.
    sizes = [a + k - 1 for a, k in zip(out_sizes, kernel_size)]
    inp = inp[(slice(None),) + tuple(slice(0, n) for n in sizes)]
    widths = [(0, 0, 0)] + [(k - 1, k - 1, 0) for k in kernel_size] + [(0, 0, 0)]
    cot_pad = lax.pad(cot, jnp.zeros((), cot.dtype), widths)
    shifted = [cot_pad[(slice(None),) + tuple(slice(k - 1 - j, k - 1 - j + n) for j, k, n
                                               in zip(offset, kernel_size, sizes))]
               for offset in offsets]
    w = rows(inp).T @ rows(jnp.concatenate(shifted, axis=-1))  # [C_in, K * C_out]
    w = w.reshape((c_in, len(offsets), c_out)).swapaxes(0, 1)
  else:
    cot_rows = rows(cot)
    windows = (inp[(slice(None),) + tuple(slice(j, j + s * (a - 1) + 1, s) for j, s, a
                                          in zip(offset, strides, out_sizes))]
               for offset in offsets)
    w = jnp.stack([rows(window).T @ cot_rows for window in windows])
  return w.reshape(tuple(kernel_size) + (c_in, c_out))


def _kernel_grad(inp: Array, cot: Array, kernel_size: tuple[int, ...],
                 strides: tuple[int, ...], padding: str | tuple[tuple[int, int], ...] = 'VALID'
                 ) -> Array:
  """dW [*K, C_in, C_out] of y = conv(inp, W) (`strides`, `padding`) at cotangent `cot`.

  For 1x1 kernels and at most 4 output channels, `_valid_conv_kernel_grad`'s
  matrix products of the padded input (2.3x faster for 32 -> 1); otherwise
  XLA's own backward-filter convolution (2.3x faster for 64 -> 64 3x3),
  given the padding rather than a padded input, which XLA would copy.
  Measured per layer at batch 128 on 2 CPU cores; the same numbers either way.
  """
  if all(k == 1 for k in kernel_size) or cot.shape[-1] <= 4:
    pads = (lax.padtype_to_pads(inp.shape[1:-1], kernel_size, strides, padding)
            if isinstance(padding, str) else padding)
    widths = [(0, 0, 0)] + [(lo, hi, 0) for lo, hi in pads] + [(0, 0, 0)]
    inp_pad = lax.pad(inp, jnp.zeros((), inp.dtype), widths)
    return _valid_conv_kernel_grad(inp_pad, cot, kernel_size, strides)
  dn = _dimension_numbers(inp.ndim - 2)
  shape = jax.ShapeDtypeStruct(tuple(kernel_size) + (inp.shape[-1], cot.shape[-1]), inp.dtype)
  (dkernel,) = jax.linear_transpose(
      lambda w: lax.conv_general_dilated(inp, w, strides, padding, dimension_numbers=dn),
      shape)(cot)
  return dkernel


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv(x: Array, kernel: Array, strides: tuple[int, ...],
         padding: str | tuple[tuple[int, int], ...]) -> Array:
  """`lax.conv_general_dilated` (channels last, no dilation) with a chosen kernel gradient.

  The output and the input gradient are JAX's. The kernel gradient is
  `_kernel_grad`'s: matrix products for 1x1 kernels and
  at most 4 output channels, where XLA:CPU's backward-filter convolution is
  slow, and that convolution itself otherwise: the same numbers either way.

  Args:
    x: inputs [B, *spatial, C_in].
    kernel: [*kernel_size, C_in, C_out].
    strides: one stride per spatial dim.
    padding: 'SAME', 'VALID' or one (low, high) pair per spatial dim.

  Returns:
    [B, *out_spatial, C_out].
  """
  return lax.conv_general_dilated(x, kernel, strides, padding,
                                  dimension_numbers=_dimension_numbers(x.ndim - 2))


def _conv_fwd(x, kernel, strides, padding):
  return conv(x, kernel, strides, padding), (x, kernel)


def _conv_bwd(strides, padding, residuals, g):
  x, kernel = residuals
  dn = _dimension_numbers(x.ndim - 2)
  (dx,) = jax.linear_transpose(
      lambda x: lax.conv_general_dilated(x, kernel, strides, padding, dimension_numbers=dn),
      x)(g)
  dkernel = _kernel_grad(x, g, kernel.shape[:-2], strides, padding)
  return dx, dkernel.astype(kernel.dtype)


conv.defvjp(_conv_fwd, _conv_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_transpose(x: Array, kernel: Array, strides: tuple[int, ...],
                   padding: str | tuple[tuple[int, int], ...]) -> Array:
  """`lax.conv_transpose` (channels last, kernel not flipped) with a fast kernel gradient.

  The output is `lax.conv_transpose(x, kernel, strides, padding)`, the
  function `flax.linen.ConvTranspose` computes. JAX lowers it to a
  convolution whose input is dilated by the strides; the gradient with
  respect to the kernel is then a convolution with a reversed, dilated window,
  which XLA:CPU runs outside its fast convolution library (about 15x slower
  than the rest of the layer; jax-ml/jax#23783). Here the kernel gradient is
  instead the kernel gradient of an ordinary strided convolution of the output
  gradient, whose kernel is the transposed one flipped: the same numbers,
  computed by the backward-filter convolution XLA runs for every strided
  convolution.

  Args:
    x: inputs [B, *spatial, C_in].
    kernel: [*kernel_size, C_in, C_out].
    strides: one stride per spatial dim.
    padding: 'SAME', 'VALID' or one (low, high) pair per spatial dim, as in
      `lax.conv_transpose`.

  Returns:
    [B, *out_spatial, C_out].
  """
  return lax.conv_transpose(x, kernel, strides, padding,
                            dimension_numbers=_dimension_numbers(x.ndim - 2))


def _conv_transpose_fwd(x, kernel, strides, padding):
  return conv_transpose(x, kernel, strides, padding), (x, kernel)


def _conv_transpose_bwd(strides, padding, residuals, g):
  x, kernel = residuals
  dn = _dimension_numbers(x.ndim - 2)
  # The input gradient is a strided convolution of g, which XLA runs well.
  (dx,) = jax.linear_transpose(
      lambda x: lax.conv_transpose(x, kernel, strides, padding, dimension_numbers=dn), x)(g)
  # The kernel gradient, with A the input size, K the kernel, s the stride and
  # (lo, hi) the padding of the dilated input, per spatial dim:
  #   dW[i] = sum_a x[a] g[s a + lo - i] = V[K - 1 - i],
  #   V[j]  = sum_a x[a] g_pad[s a + j],   g_pad[t] = g[t + lo - K + 1],
  # so V is the kernel gradient of the strided convolution
  # z[a] = sum_j g_pad[s a + j] V[j] at cotangent x.
  kernel_size = kernel.shape[:-2]
  pads = _transpose_pads(kernel_size, strides, padding)
  widths = [(0, 0, 0)]
  for a, k, s, (lo, _), n in zip(x.shape[1:-1], kernel_size, strides, pads, g.shape[1:-1]):
    left = k - 1 - lo
    widths.append((left, s * (a - 1) + k - n - left, 0))
  widths.append((0, 0, 0))
  g_pad = lax.pad(g, jnp.zeros((), g.dtype), widths)
  v = _kernel_grad(g_pad, x, kernel_size, strides)
  dkernel = jnp.flip(v, tuple(range(len(kernel_size)))).swapaxes(-1, -2)
  return dx, dkernel.astype(kernel.dtype)


conv_transpose.defvjp(_conv_transpose_fwd, _conv_transpose_bwd)


@jax.custom_vjp
def add_bias(y: Array, bias: Array) -> Array:
  """`y + bias` over the last axis, whose bias gradient is one matrix product.

  JAX's gradient of the broadcast is a sum over every other axis, which
  XLA:CPU runs as a tree of reduce-windows several times slower than
  `ones[1, rows] @ g[rows, C]`.
  """
  return y + bias


def _add_bias_fwd(y, bias):
  return y + bias, None


def _add_bias_bwd(_, g):
  rows = g.reshape(-1, g.shape[-1])
  return g, (jnp.ones((1, rows.shape[0]), g.dtype) @ rows)[0]


add_bias.defvjp(_add_bias_fwd, _add_bias_bwd)


def _canonical_conv_args(kernel_size, strides, padding, x: Array, layer: str):
  """(kernel_size, strides, padding) as tuples, checked against inputs `x`."""
  kernel_size = (kernel_size,) if isinstance(kernel_size, int) else tuple(kernel_size)
  rank = len(kernel_size)
  if x.ndim != rank + 2:
    raise ValueError(f'{layer} with a {rank}-d kernel expects inputs '
                     f'[B, {rank} spatial dims, C], got shape {x.shape}.')
  strides = 1 if strides is None else strides
  strides = (strides,) * rank if isinstance(strides, int) else tuple(strides)
  if isinstance(padding, str):
    if padding not in ('SAME', 'VALID'):
      raise ValueError(f"{layer}: padding must be 'SAME', 'VALID', an int or "
                       f'(low, high) pairs, got {padding!r}.')
  else:
    padding = tuple(tuple(p) for p in nn.linear.canonicalize_padding(padding, rank))
  return kernel_size, strides, padding


class _FastConv(nn.Module):
  """Parameters and call of `Conv` and `ConvTranspose` (see those)."""
  features: int
  kernel_size: int | Sequence[int]
  strides: int | Sequence[int] | None = None
  padding: str | int | Sequence[int | tuple[int, int]] = 'SAME'
  use_bias: bool = True
  dtype: Any = None
  param_dtype: Any = jnp.float32
  kernel_init: Callable[..., Array] = nn.initializers.lecun_normal()
  bias_init: Callable[..., Array] = nn.initializers.zeros_init()

  @nn.nowrap
  def _apply(self, fn, x: Array) -> Array:
    kernel_size, strides, padding = _canonical_conv_args(
        self.kernel_size, self.strides, self.padding, x, type(self).__name__)
    kernel = self.param('kernel', self.kernel_init,
                        kernel_size + (x.shape[-1], self.features), self.param_dtype)
    bias = (self.param('bias', self.bias_init, (self.features,), self.param_dtype)
            if self.use_bias else None)
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = fn(x, kernel, strides, padding)
    return y if bias is None else add_bias(y, bias)


class Conv(_FastConv):
  """`flax.linen.Conv` with the kernel gradient of `conv` and the bias gradient of `add_bias`.

  Every convolution of the image models' encoders and decoders is this one:
  on XLA:CPU its gradients are faster than JAX's (`experiments/bench.py
  --torch` measures the whole steps).

  Same parameters (`kernel` [*kernel_size, C_in, features], `bias`
  [features]), initializers and outputs as `nn.Conv` with no dilation and
  one feature group, so either module's checkpoints load into the other;
  tested against it for outputs and all gradients. Under `jax.jvp` (forward
  mode) use `nn.Conv`: a custom VJP has no forward-mode rule.

  Attributes:
    features: output channels.
    kernel_size: one int (every spatial dim) or one per spatial dim.
    strides: one int or one per spatial dim (default 1).
    padding: 'SAME', 'VALID', an int, or one int or (low, high) pair per
      spatial dim, as in `nn.Conv`.
    use_bias: whether to add a bias.
    dtype: computation dtype (default: inferred from inputs and params).
    param_dtype: parameter dtype.
    kernel_init, bias_init: initializers (flax's defaults).
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Maps [B, *spatial, C_in] to [B, *out_spatial, features]."""
    return self._apply(conv, x)


class ConvTranspose(_FastConv):
  """`flax.linen.ConvTranspose` with the kernel gradient of `conv_transpose`, bias as `Conv`.

  Same parameters, initializers and outputs as `nn.ConvTranspose` with its
  defaults (no kernel dilation, `transpose_kernel=False`), so either
  module's checkpoints load into the other; tested against it for outputs
  and all gradients. Attributes as `Conv`; 'SAME' and 'VALID' name the
  padding of the forward convolution this one inverts, explicit pairs pad
  the dilated input, as in `nn.ConvTranspose`. Under `jax.jvp` use
  `nn.ConvTranspose`.
  """

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Maps [B, *spatial, C_in] to [B, *out_spatial, features]."""
    return self._apply(conv_transpose, x)


class ConvDecoder(nn.Module):
  """Strided 'SAME' transposed convolutions that invert a `ConvEncoder`.

  A 'SAME' transposed convolution of stride s maps size n to s * n. When the
  encoder rounded up (e.g. 7 -> 4 with stride 2), s * n is larger than the
  encoder's input (8 > 7); the extra rows and columns at the bottom and right
  are cropped, so each layer's output has exactly the size given in
  `output_shapes` and the decoder is the exact spatial inverse of the encoder.

  Attributes:
    channels: output channels of each transposed convolution.
    output_shapes: spatial shape after each layer, e.g. [(7, 7), (14, 14),
      (28, 28)] (typically `conv_encoder_sizes(...)[-2::-1]`).
    kernel_size: square kernel size.
    stride: stride of every layer.
    activation: activation name.
    activate_final: whether the last layer is followed by the activation.
  """
  channels: Sequence[int]
  output_shapes: Sequence[Sequence[int]]
  kernel_size: int = 3
  stride: int = 2
  activation: str = 'relu'
  activate_final: bool = True

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Maps [B, h, w, C] to [B, *output_shapes[-1], channels[-1]]."""
    if len(self.channels) != len(self.output_shapes):
      raise ValueError('channels and output_shapes must have the same length.')
    act = get_activation(self.activation)
    k, s = self.kernel_size, self.stride
    for i, (c, shape) in enumerate(zip(self.channels, self.output_shapes)):
      in_shape = x.shape[1:3]
      want = tuple(shape)
      for n_in, n_out in zip(in_shape, want):
        if not (s * n_in - s < n_out <= s * n_in):
          raise ValueError(
              f'Layer {i}: cannot map spatial size {in_shape} to {want} with '
              f'stride {s}.')
      x = ConvTranspose(c, (k, k), strides=(s, s), padding='SAME')(x)
      x = x[:, :want[0], :want[1], :]
      if i < len(self.channels) - 1 or self.activate_final:
        x = act(x)
    return x


class ResidualStack(nn.Module):
  """Residual blocks x <- x + conv1x1(relu(conv3x3(relu(x)))), then a ReLU.

  Attributes:
    num_blocks: number of residual blocks.
    hidden_channels: channels of each block's 3x3 convolution (the 1x1
      convolution maps back to the input's channels).

  References:
    van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation
    Learning", NeurIPS 2017, https://arxiv.org/abs/1711.00937 (Sec. 4.1).
  """
  num_blocks: int
  hidden_channels: int

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Maps [B, H, W, C] to [B, H, W, C]."""
    channels = x.shape[-1]
    for _ in range(self.num_blocks):
      h = nn.relu(x)
      h = Conv(self.hidden_channels, (3, 3), padding='SAME')(h)
      h = nn.relu(h)
      h = Conv(channels, (1, 1))(h)
      x = x + h
    return nn.relu(x)
