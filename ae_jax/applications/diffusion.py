"""A trained diffusion autoencoder: reconstruction, interpolation, sampling.

Each function takes the first stage (`models.DiffusionAutoencoder`, images in
[0, 1]) and its variables; `sample` also takes the latent DDPM as a
`LatentPrior`. The recipe `ae_jax.recipes.diffusion_ae` trains both and draws
these functions' outputs.

- `reconstruct`: DDIM encode x_0 → x_T and decode (z_sem, x_T) back, nearly
  exact; and decode (z_sem, x_T' ~ N(0, I)), which keeps the semantics and
  redraws the details;
- `interpolate`: lerp in z_sem and slerp in x_T between two images;
- `sample`: z_sem from the latent DDPM (DDIM, η = 0), un-normalised, then
  x_T ~ N(0, I) through the image decoder's DDIM.

PSNR of the reconstructions: `applications.denoising.psnr` of the outputs
clipped to [0, 1].

References:
  Preechakul et al., "Diffusion Autoencoders: Toward a Meaningful and
  Decodable Representation", CVPR 2022, https://arxiv.org/abs/2111.15640.
  Song et al., "Denoising Diffusion Implicit Models", ICLR 2021,
  https://arxiv.org/abs/2010.02502.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ae_jax.applications import latent as latent_paths
from ae_jax.models import diffusion

Array = jax.Array


def reconstruct(model: diffusion.DiffusionAutoencoder, variables, x: Array, key: Array,
                *, num_steps: int | None = None) -> dict[str, Array]:
  """DDIM encode/decode and z_sem-only reconstructions of images x in [0, 1].

  Args:
    model: the diffusion autoencoder.
    variables: its variables (`{'params': ...}`).
    x: [B, H, W, C] images in [0, 1].
    key: draws the random x_T of 'zsem_only'.
    num_steps: DDIM steps each way (default `model.num_ddim_steps`).

  Returns:
    {'z_sem': [B, Z], 'x_T': the DDIM code, 'ddim': decode(z_sem, x_T),
     'zsem_only': decode(z_sem, x_T' ~ N(0, I)), x̂_0 clipped as when
     sampling}, images in [0, 1] (not clipped).
  """
  steps = num_steps or model.num_ddim_steps

  @jax.jit
  def run(variables, x, key):
    z = model.apply(variables, x, method=model.encode)
    x_T = model.apply(variables, x, z, steps, method=model.encode_stochastic)
    ddim = model.apply(variables, z, x_T, steps, method=model.decode)
    random_x_T = jax.random.normal(key, x.shape)
    zsem_only = model.apply(variables, z, random_x_T, steps, method=model.decode, clip_x0=True)
    return {'z_sem': z, 'x_T': x_T, 'ddim': ddim, 'zsem_only': zsem_only}

  return run(variables, x, key)


def interpolate(model: diffusion.DiffusionAutoencoder, variables, x_a: Array, x_b: Array,
                *, num_points: int, num_steps: int | None = None) -> Array:
  """Decodes lerp(z_sem) and slerp(x_T) between the codes of x_a and x_b.

  x_T is interpolated on the sphere: a straight line between two Gaussian
  draws passes through points of atypically small norm (Song et al. 2021,
  §5.3; Preechakul et al. 2022, §5.1).

  Args:
    model: the diffusion autoencoder.
    variables: its variables.
    x_a: [B, H, W, C] first images of the pairs, in [0, 1].
    x_b: [B, H, W, C] second images.
    num_points: points per pair, endpoints included.
    num_steps: DDIM steps each way (default `model.num_ddim_steps`).

  Returns:
    [B, num_points, H, W, C] images in [0, 1] (not clipped).
  """
  steps = num_steps or model.num_ddim_steps

  @jax.jit
  def run(variables, x_a, x_b):
    x = jnp.concatenate([x_a, x_b])
    z = model.apply(variables, x, method=model.encode)
    x_T = model.apply(variables, x, z, steps, method=model.encode_stochastic)
    (z_a, z_b), (t_a, t_b) = jnp.split(z, 2), jnp.split(x_T, 2)
    z_path = jax.vmap(lambda a, b: latent_paths.interpolate(a, b, num_points))(z_a, z_b)
    t_path = jax.vmap(lambda a, b: latent_paths.interpolate(a, b, num_points, method='slerp'))(
        t_a, t_b)
    flat = lambda v: v.reshape((-1,) + v.shape[2:])
    images = model.apply(variables, flat(z_path), flat(t_path), steps, method=model.decode)
    return images.reshape(z_path.shape[:2] + images.shape[1:])

  return run(variables, x_a, x_b)


class LatentPrior(flax.struct.PyTreeNode):
  """A trained latent DDPM over z_sem and the normalisation it was trained in.

  The DDPM models (z_sem - mean) / std; `sample` maps its draws back.

  Attributes:
    denoiser: ε_θ(z_t, t), e.g. `models.LatentDenoiser`.
    variables: the denoiser's variables (`{'params': ...}`).
    mean: [Z] mean of the training codes.
    std: [Z] standard deviation of the training codes.
    alpha_bars: [T] ᾱ of the schedule it was trained with.
    num_sampling_steps: DDIM steps when sampling.
  """
  denoiser: nn.Module = flax.struct.field(pytree_node=False)
  variables: Any
  mean: Array
  std: Array
  alpha_bars: Array
  num_sampling_steps: int = flax.struct.field(pytree_node=False)


def sample(model: diffusion.DiffusionAutoencoder, variables, prior: LatentPrior, key: Array,
           num: int, image_shape: tuple[int, ...]) -> Array:
  """Unconditional samples: z_sem from the latent DDPM (DDIM, η = 0), then
  x_T ~ N(0, I) and the image decoder's DDIM, x̂_0 clipped at each step.

  Args:
    model: the diffusion autoencoder.
    variables: its variables.
    prior: the latent DDPM trained on the model's codes.
    key: draws z_T and x_T.
    num: number of samples.
    image_shape: (H, W, C).

  Returns:
    [num, *image_shape] images in [0, 1] (not clipped).
  """
  z_key, x_key = jax.random.split(key)

  @jax.jit
  def run(variables, prior):
    z_T = jax.random.normal(z_key, (num, prior.mean.shape[0]))
    z_n = diffusion.ddim_decode(lambda z, t: prior.denoiser.apply(prior.variables, z, t), z_T,
                                prior.alpha_bars, num_steps=prior.num_sampling_steps)
    z = z_n * prior.std + prior.mean
    x_T = jax.random.normal(x_key, (num, *image_shape))
    return model.apply(variables, z, x_T, method=model.decode, clip_x0=True)

  return run(variables, prior)
