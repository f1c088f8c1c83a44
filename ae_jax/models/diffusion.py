"""Diffusion autoencoder: a semantic encoder and a conditional denoising U-Net.

The semantic encoder maps an image to a code z_sem; the decoder is a DDPM
noise predictor ε_θ(x_t, t, z_sem) conditioned on t and z_sem through
adaptive group normalisation. Deterministic DDIM (η = 0) runs the probability
flow both ways: `ddim_encode` takes x_0 to a stochastic code x_T and
`ddim_decode` takes x_T back to x_0, so (z_sem, x_T) reconstructs the image
nearly exactly, while z_sem with a random x_T gives an image that keeps the
semantics and redraws the details. A small latent DDPM on z_sem
(`LatentDenoiser`) makes the model generative.

Images live in [0, 1] outside this module (the data pipeline's range) and in
[-1, 1] inside the diffusion (`to_diffusion_space`, `from_diffusion_space`).

Timesteps are integers t ∈ {0, ..., T-1} with β_t the noise added at step t and
ᾱ_t = Π_{s ≤ t} (1 - β_s), so x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε. A DDIM
trajectory visits S increasing timesteps τ_1 < ... < τ_S = T - 1 and starts
(or ends) at the clean image, where ᾱ = 1.

Shape letters: B batch, H W C image, Z z_sem size, T training timesteps, S
DDIM steps, E embedding width.

References:
  Preechakul et al., "Diffusion Autoencoders: Toward a Meaningful and
  Decodable Representation", CVPR 2022, https://arxiv.org/abs/2111.15640.
  Ho et al., "Denoising Diffusion Probabilistic Models", NeurIPS 2020,
  https://arxiv.org/abs/2006.11239.
  Song et al., "Denoising Diffusion Implicit Models", ICLR 2021,
  https://arxiv.org/abs/2010.02502.
  Nichol & Dhariwal, "Improved Denoising Diffusion Probabilistic Models",
  ICML 2021, https://arxiv.org/abs/2102.09672 (cosine schedule).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import layers

Array = jax.Array
# eps_fn(x_t [B, ...], t [B] int32) -> predicted noise, x_t's shape.
EpsFn = Callable[[Array, Array], Array]

SCHEDULES = ('linear', 'cosine')


# ----------------------------------------------------------------------------
# Noise schedules and the forward process.
# ----------------------------------------------------------------------------


def beta_schedule(name: str, num_timesteps: int, *, beta_start: float = 1e-4,
                  beta_end: float = 0.02) -> np.ndarray:
  """β_t for t = 0..T-1, as float64 numpy.

  Args:
    name: 'linear' (Ho et al.: β_t linear from beta_start to beta_end) or
      'cosine' (Nichol & Dhariwal: ᾱ(t) = f(t)/f(0), f(t) = cos²((t/T + s) /
      (1 + s) · π/2), s = 0.008, β_t = 1 - ᾱ_t/ᾱ_{t-1} clipped at 0.999).
    num_timesteps: T.
    beta_start: first β of the linear schedule.
    beta_end: last β of the linear schedule.

  Returns:
    [T] betas in (0, 1).
  """
  if num_timesteps < 1:
    raise ValueError(f'num_timesteps must be >= 1, got {num_timesteps}.')
  if name == 'linear':
    if not 0.0 < beta_start <= beta_end < 1.0:
      raise ValueError(
          f'Need 0 < beta_start <= beta_end < 1, got beta_start={beta_start}, '
          f'beta_end={beta_end}.')
    return np.linspace(beta_start, beta_end, num_timesteps, dtype=np.float64)
  if name == 'cosine':
    s = 0.008
    steps = np.arange(num_timesteps + 1, dtype=np.float64) / num_timesteps
    f = np.cos((steps + s) / (1 + s) * np.pi / 2) ** 2
    return np.clip(1.0 - f[1:] / f[:-1], 0.0, 0.999)
  raise ValueError(f'Unknown noise schedule {name!r}; expected one of {SCHEDULES}.')


def alpha_bars(betas_T: np.ndarray | Array) -> Array:
  """ᾱ_t = Π_{s ≤ t} (1 - β_s), float32 [T]."""
  betas = np.asarray(betas_T, np.float64)
  return jnp.asarray(np.cumprod(1.0 - betas), jnp.float32)


def _broadcast_to(values_B: Array, x: Array) -> Array:
  return values_B.reshape((-1,) + (1,) * (x.ndim - 1))


def q_sample(x0: Array, t_B: Array, eps: Array, alpha_bars_T: Array) -> Array:
  """Forward process: x_t = √ᾱ_t x_0 + √(1 - ᾱ_t) ε (Ho et al. eq. 4).

  Args:
    x0: [B, ...] clean inputs (in [-1, 1]).
    t_B: [B] integer timesteps.
    eps: standard normal noise, x0's shape.
    alpha_bars_T: [T] ᾱ.

  Returns:
    x_t, x0's shape.
  """
  a = _broadcast_to(alpha_bars_T[t_B], x0)
  return jnp.sqrt(a) * x0 + jnp.sqrt(1.0 - a) * eps


def predict_x0(x_t: Array, eps: Array, alpha_bar: Array) -> Array:
  """x̂_0 = (x_t - √(1 - ᾱ) ε) / √ᾱ, with ᾱ a scalar or [B]."""
  a = _broadcast_to(jnp.asarray(alpha_bar), x_t) if jnp.ndim(alpha_bar) else alpha_bar
  return (x_t - jnp.sqrt(1.0 - a) * eps) / jnp.sqrt(a)


def ddim_step(x: Array, eps: Array, alpha_bar_from: Array, alpha_bar_to: Array, *,
              clip_x0: bool = False) -> Array:
  """One deterministic DDIM move (η = 0) from noise level ᾱ_from to ᾱ_to.

  x' = √ᾱ_to x̂_0 + √(1 - ᾱ_to) ε with x̂_0 = (x - √(1 - ᾱ_from) ε) / √ᾱ_from
  (Song et al. eq. 12 with σ = 0). The same formula moves towards noise
  (ᾱ_to < ᾱ_from, encoding) or towards data; for a fixed ε the two moves
  invert each other exactly.

  Args:
    x: [B, ...] current point.
    eps: predicted noise, x's shape.
    alpha_bar_from: scalar ᾱ of x.
    alpha_bar_to: scalar ᾱ of the result; 1 gives x̂_0.
    clip_x0: clip x̂_0 to [-1, 1] (sampling only: it breaks invertibility).

  Returns:
    The point at ᾱ_to, x's shape.
  """
  x0 = predict_x0(x, eps, alpha_bar_from)
  if clip_x0:
    x0 = jnp.clip(x0, -1.0, 1.0)
  return jnp.sqrt(alpha_bar_to) * x0 + jnp.sqrt(1.0 - alpha_bar_to) * eps


def ddim_timesteps(num_timesteps: int, num_steps: int) -> np.ndarray:
  """S evenly spaced increasing timesteps τ_1 < ... < τ_S = T - 1, int32 [S]."""
  if not 1 <= num_steps <= num_timesteps:
    raise ValueError(
        f'num_steps must be in [1, num_timesteps={num_timesteps}], got {num_steps}.')
  # τ_i = ⌊i T / S⌋ - 1, i = 1..S: strictly increasing since S ≤ T.
  return (np.arange(1, num_steps + 1) * num_timesteps // num_steps - 1).astype(np.int32)


def _ddim_levels(alpha_bars_T: Array, num_steps: int) -> tuple[Array, Array]:
  """(τ [S], ᾱ at τ_0..τ_S [S+1]) with ᾱ(τ_0) = 1 for the clean image."""
  taus = ddim_timesteps(alpha_bars_T.shape[0], num_steps)
  levels = jnp.concatenate([jnp.ones((1,), jnp.float32), alpha_bars_T[taus]])
  return jnp.asarray(taus), levels


def ddim_encode(eps_fn: EpsFn, x0: Array, alpha_bars_T: Array, *, num_steps: int) -> Array:
  """Deterministic DDIM inversion x_0 → x_T in `num_steps` moves.

  The move from τ_i to τ_{i+1} uses ε_θ(x_{τ_i}, τ_{i+1}): the noise level of
  the point being reached, evaluated where the trajectory is now (the usual
  first-order inversion of the decoder's move, exact as S grows).

  Args:
    eps_fn: ε_θ(x_t, t_B).
    x0: [B, ...] clean images in [-1, 1].
    alpha_bars_T: [T] ᾱ.
    num_steps: S.

  Returns:
    x_T, x0's shape.
  """
  taus, levels = _ddim_levels(alpha_bars_T, num_steps)
  batch = x0.shape[0]

  def move(x, i):
    eps = eps_fn(x, jnp.full((batch,), taus[i], jnp.int32))
    return ddim_step(x, eps, levels[i], levels[i + 1]), None

  x_T, _ = jax.lax.scan(move, x0, jnp.arange(num_steps))
  return x_T


def ddim_decode(eps_fn: EpsFn, x_T: Array, alpha_bars_T: Array, *, num_steps: int,
                clip_x0: bool = False) -> Array:
  """Deterministic DDIM sampling x_T → x_0 in `num_steps` moves.

  Args:
    eps_fn: ε_θ(x_t, t_B).
    x_T: [B, ...] start points (from `ddim_encode`, or N(0, I) to sample).
    alpha_bars_T: [T] ᾱ.
    num_steps: S.
    clip_x0: clip each x̂_0 to [-1, 1] (for sampling from noise).

  Returns:
    x_0, x_T's shape, in diffusion space.
  """
  taus, levels = _ddim_levels(alpha_bars_T, num_steps)
  batch = x_T.shape[0]

  def move(x, i):
    eps = eps_fn(x, jnp.full((batch,), taus[i], jnp.int32))
    return ddim_step(x, eps, levels[i + 1], levels[i], clip_x0=clip_x0), None

  x0, _ = jax.lax.scan(move, x_T, jnp.arange(num_steps - 1, -1, -1))
  return x0


def to_diffusion_space(x01: Array) -> Array:
  """[0, 1] images to the diffusion's [-1, 1]."""
  return 2.0 * x01 - 1.0


def from_diffusion_space(x: Array) -> Array:
  """The diffusion's [-1, 1] back to [0, 1] (not clipped)."""
  return (x + 1.0) / 2.0


# ----------------------------------------------------------------------------
# Networks.
# ----------------------------------------------------------------------------


def timestep_embedding(t_B: Array, dim: int, *, max_period: float = 10_000.0) -> Array:
  """Sinusoidal embedding [cos(t ω_k), sin(t ω_k)], ω_k = max_period^(-k/(dim/2)).

  Args:
    t_B: [B] timesteps (int or float).
    dim: E, even.
    max_period: the slowest frequency's period.

  Returns:
    [B, E] float32.

  References:
    Vaswani et al. 2017 (positional encoding); Ho et al. 2020 (used for t).
  """
  if dim % 2:
    raise ValueError(f'The embedding width must be even, got {dim}.')
  half = dim // 2
  freqs = jnp.exp(-math.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
  angles = jnp.asarray(t_B, jnp.float32)[:, None] * freqs[None]
  return jnp.concatenate([jnp.cos(angles), jnp.sin(angles)], axis=-1)


def _zero_init_conv(features: int) -> nn.Conv:
  return nn.Conv(features, (3, 3), padding='SAME', kernel_init=nn.initializers.zeros)


class AdaptiveResBlock(nn.Module):
  """Residual block whose second normalisation is AdaGN(h, t, z_sem).

  AdaGN(h, t, z) = (1 + z_s) ⊙ ((1 + t_s) ⊙ GroupNorm(h) + t_b), with (t_s, t_b)
  an affine map of the time embedding and z_s an affine map of z_sem: the
  paper's z_s (t_s GroupNorm(h) + t_b), written around the identity so that a
  fresh block starts unmodulated.

  Attributes:
    features: output channels.
    groups: GroupNorm groups (must divide the channel counts).

  References:
    Preechakul et al. 2022, eq. 7; Dhariwal & Nichol 2021 (AdaGN).
  """
  features: int
  groups: int = 8

  @nn.compact
  def __call__(self, x: Array, t_emb: Array, z_sem: Array) -> Array:
    h = nn.Conv(self.features, (3, 3), padding='SAME')(
        nn.silu(nn.GroupNorm(num_groups=self.groups)(x)))
    t_scale, t_shift = jnp.split(nn.Dense(2 * self.features)(nn.silu(t_emb)), 2, axis=-1)
    z_scale = nn.Dense(self.features)(z_sem)
    h = nn.GroupNorm(num_groups=self.groups, use_bias=False, use_scale=False)(h)
    h = (1.0 + t_scale[:, None, None]) * h + t_shift[:, None, None]
    h = (1.0 + z_scale[:, None, None]) * h
    h = _zero_init_conv(self.features)(nn.silu(h))
    if x.shape[-1] != self.features:
      x = nn.Conv(self.features, (1, 1))(x)
    return x + h


class ConditionalUNet(nn.Module):
  """ε_θ(x_t, t, z_sem): a small U-Net with AdaGN residual blocks.

  One level per entry of `channels`; each level has `num_res_blocks` blocks,
  a stride-2 convolution halves the resolution between levels (28 → 14 → 7)
  and nearest-neighbour upsampling plus a convolution restores it, with skip
  connections from the way down. The output convolution starts at zero, so a
  fresh model predicts ε = 0.

  Attributes:
    channels: channels per resolution level.
    num_res_blocks: blocks per level on the way down (one more on the way up).
    time_embed_dim: E of the sinusoidal embedding; its MLP widens it 4x.
    groups: GroupNorm groups.

  References:
    Ronneberger et al. 2015 (U-Net); Ho et al. 2020, Appendix B (the DDPM
    U-Net this follows, without attention at these sizes).
  """
  channels: Sequence[int] = (32, 64, 64)
  num_res_blocks: int = 1
  time_embed_dim: int = 64
  groups: int = 8

  @nn.compact
  def __call__(self, x_t: Array, t_B: Array, z_sem: Array) -> Array:
    emb = timestep_embedding(t_B, self.time_embed_dim)
    emb = nn.Dense(4 * self.time_embed_dim)(emb)
    emb = nn.Dense(4 * self.time_embed_dim)(nn.silu(emb))
    block = lambda c: AdaptiveResBlock(c, groups=self.groups)

    h = nn.Conv(self.channels[0], (3, 3), padding='SAME')(x_t)
    skips = [h]
    for level, c in enumerate(self.channels):
      for _ in range(self.num_res_blocks):
        h = block(c)(h, emb, z_sem)
        skips.append(h)
      if level < len(self.channels) - 1:
        h = nn.Conv(c, (3, 3), strides=(2, 2), padding='SAME')(h)
        skips.append(h)
    h = block(self.channels[-1])(h, emb, z_sem)
    h = block(self.channels[-1])(h, emb, z_sem)
    for level in reversed(range(len(self.channels))):
      for _ in range(self.num_res_blocks + 1):
        h = block(self.channels[level])(jnp.concatenate([h, skips.pop()], -1), emb, z_sem)
      if level > 0:
        target = skips[-1].shape[1:3]
        h = jax.image.resize(h, (h.shape[0], *target, h.shape[-1]), 'nearest')
        h = nn.Conv(self.channels[level], (3, 3), padding='SAME')(h)
    h = nn.silu(nn.GroupNorm(num_groups=self.groups)(h))
    return _zero_init_conv(x_t.shape[-1])(h)


class SemanticEncoder(nn.Module):
  """x (in [0, 1]) → z_sem: strided SiLU convolutions, then a Dense layer.

  Attributes:
    latent_dim: Z.
    channels: channels of the stride-2 convolutions.
  """
  latent_dim: int = 32
  channels: Sequence[int] = (32, 64, 128)

  @nn.compact
  def __call__(self, x: Array) -> Array:
    h = layers.ConvEncoder(tuple(self.channels), kernel_size=4, activation='silu')(x)
    return nn.Dense(self.latent_dim)(h.reshape(h.shape[0], -1))


class DiffusionOutput(flax.struct.PyTreeNode):
  """Output of `DiffusionAutoencoder.__call__`.

  Attributes:
    eps: predicted noise ε_θ(x_t, t, z_sem), x_t's shape.
    z_sem: [B, Z] semantic codes of the clean inputs.
  """
  eps: Array
  z_sem: Array


class DiffusionAutoencoder(nn.Module):
  """Semantic encoder plus a z_sem-conditioned DDPM decoder.

  `encode(x)` gives z_sem of images in [0, 1]; `denoise(x_t, t, z_sem)` gives
  ε_θ; `__call__(x, x_t, t)` does both (the training objective's forward
  pass). `decode(z_sem, x_T)` runs the deterministic DDIM decoder and
  `encode_stochastic(x, z_sem)` its inverse; the schedule is a pure function
  of the attributes (`alpha_bars()`), not a variable.

  Attributes:
    latent_dim: Z, the size of z_sem.
    channels: U-Net channels per level.
    num_res_blocks: U-Net blocks per level.
    time_embed_dim: sinusoidal embedding width.
    encoder_channels: semantic encoder convolution channels.
    num_timesteps: T.
    schedule: 'linear' or 'cosine'.
    num_ddim_steps: S used by `decode` and `encode_stochastic`.

  References:
    Preechakul et al., "Diffusion Autoencoders: Toward a Meaningful and
    Decodable Representation", CVPR 2022.
  """
  latent_dim: int = 32
  channels: Sequence[int] = (32, 64, 64)
  num_res_blocks: int = 1
  time_embed_dim: int = 64
  encoder_channels: Sequence[int] = (32, 64, 128)
  num_timesteps: int = 1000
  schedule: str = 'linear'
  num_ddim_steps: int = 100

  def setup(self):
    if self.latent_dim <= 0:
      raise ValueError(f'latent_dim must be > 0, got {self.latent_dim}.')
    self.alpha_bars()  # Checks the schedule's name and T.
    self.encoder = SemanticEncoder(self.latent_dim, tuple(self.encoder_channels))
    self.unet = ConditionalUNet(tuple(self.channels), self.num_res_blocks, self.time_embed_dim)

  def alpha_bars(self) -> Array:
    """ᾱ_t, float32 [T]."""
    return alpha_bars(beta_schedule(self.schedule, self.num_timesteps))

  def encode(self, x: Array) -> Array:
    """z_sem [B, Z] of images [B, H, W, C] in [0, 1]."""
    if x.ndim != 4:
      raise ValueError(f'Expected images [B, H, W, C], got shape {x.shape}.')
    return self.encoder(x)

  def denoise(self, x_t: Array, t_B: Array, z_sem: Array) -> Array:
    """ε_θ(x_t, t, z_sem) for x_t in diffusion space, t [B] int."""
    return self.unet(x_t, t_B, z_sem)

  def __call__(self, x: Array, x_t: Array, t_B: Array) -> DiffusionOutput:
    """Encodes clean x (in [0, 1]) and predicts the noise in x_t."""
    z_sem = self.encode(x)
    return DiffusionOutput(eps=self.denoise(x_t, t_B, z_sem), z_sem=z_sem)

  def _eps_fn(self, z_sem: Array) -> EpsFn:
    return lambda x_t, t_B: self.denoise(x_t, t_B, z_sem)

  def encode_stochastic(self, x: Array, z_sem: Array, num_steps: int | None = None) -> Array:
    """x_T of images x in [0, 1] by DDIM inversion conditioned on z_sem."""
    return ddim_encode(self._eps_fn(z_sem), to_diffusion_space(x), self.alpha_bars(),
                       num_steps=num_steps or self.num_ddim_steps)

  def decode(self, z_sem: Array, x_T: Array, num_steps: int | None = None,
             clip_x0: bool = False) -> Array:
    """Images in [0, 1] (not clipped) from (z_sem, x_T) by deterministic DDIM."""
    x0 = ddim_decode(self._eps_fn(z_sem), x_T, self.alpha_bars(),
                     num_steps=num_steps or self.num_ddim_steps, clip_x0=clip_x0)
    return from_diffusion_space(x0)


class LatentDenoiser(nn.Module):
  """ε_θ(z_t, t) for the latent DDPM on (normalised) z_sem.

  An MLP whose every hidden layer sees the input z_t again (the paper's
  "MLP + skip" latent DDIM) and is modulated by the time embedding,
  h ← SiLU(LayerNorm(Dense(h ⊕ z_t)) ⊙ (1 + t_s) + t_b).

  Attributes:
    hidden: width of the hidden layers.
    num_layers: number of hidden layers.
    time_embed_dim: sinusoidal embedding width.

  References:
    Preechakul et al. 2022, §4 and Appendix (latent DDIM).
  """
  hidden: int = 256
  num_layers: int = 4
  time_embed_dim: int = 64

  @nn.compact
  def __call__(self, z_t: Array, t_B: Array) -> Array:
    emb = timestep_embedding(t_B, self.time_embed_dim)
    emb = nn.Dense(self.hidden)(nn.silu(nn.Dense(self.hidden)(emb)))
    h = z_t
    for _ in range(self.num_layers):
      h = nn.Dense(self.hidden)(jnp.concatenate([h, z_t], -1))
      scale, shift = jnp.split(nn.Dense(2 * self.hidden)(nn.silu(emb)), 2, -1)
      h = nn.silu(nn.LayerNorm()(h) * (1.0 + scale) + shift)
    return nn.Dense(z_t.shape[-1], kernel_init=nn.initializers.zeros)(h)
