"""Recipes: one module per model family, behind the protocol of `base`.

A config names its recipe once, `config.recipe = 'vae'`, and
`ae_jax.training.train_and_evaluate` imports `ae_jax.recipes.vae`; nothing
keeps a table of families. Variants of one family (sparse, denoising and
contractive autoencoders; VAE, β-VAE, IWAE) are configs of one recipe.

  autoencoder   undercomplete, sparse (L1, KL), denoising, contractive; MLP or conv
  vae           VAE, β-VAE (warm-up, capacity), conv VAE, IWAE training; MLP or conv
  ladder        ladder VAE (Sønderby et al. 2016)
  vqvae         VQ-VAE, then a gated PixelCNN prior over its codes (two stages)
  aae           adversarial autoencoder: three optimizers in one step
  ssaae         semi-supervised AAE (class and style codes) and its supervised baseline
  diffusion_ae  diffusion autoencoder, then a latent DDPM (two stages)
  sequence_vae  GRU sequence VAE on molecules (SMILES / SELFIES tokens)
  denoiser      U-Net denoising autoencoder over a range of noise levels
  tcvae         β-VAE and β-TCVAE on the shapes data, for disentanglement
  wae           WAE-MMD and InfoVAE (MMD-VAE): the aggregate posterior matched by MMD
  rae           regularized autoencoder (RAE-L2, RAE-GP), then a GMM on its codes
  iwae_bounds   MIWAE, PIWAE and CIWAE (Rainforth et al. 2018)
  vampprior     VAE with the VampPrior (learned pseudo-inputs)
  dip_vae       DIP-VAE-I and -II (covariance penalties)
  factor_vae    FactorVAE: a discriminator's total-correlation estimate, two optimizers
"""

import importlib
import pkgutil
from types import ModuleType

PROTOCOL = ('validate', 'stages', 'make_stage', 'finish')
_NOT_RECIPES = ('base', 'common')


def names() -> tuple[str, ...]:
  """The recipe modules of this package."""
  return tuple(sorted(m.name for m in pkgutil.iter_modules(__path__)
                      if m.name not in _NOT_RECIPES and not m.name.startswith('_')))


def get(name: str) -> ModuleType:
  """The recipe module `name`, checked to follow the protocol.

  Raises:
    ValueError: no such recipe (the known ones are listed), or it lacks a
      protocol function.
  """
  if not isinstance(name, str) or name not in names():
    raise ValueError(f'config.recipe={name!r} is unknown; expected one of {list(names())}.')
  module = importlib.import_module(f'{__name__}.{name}')
  missing = [f for f in PROTOCOL if not callable(getattr(module, f, None))]
  if missing:
    raise ValueError(f'Recipe {name!r} lacks {missing} of the protocol {PROTOCOL}.')
  return module
