"""Autoencoder models: each has `encode`, `decode` and `__call__`."""

from ae_jax.models.autoencoder import AEOutput
from ae_jax.models.autoencoder import MLPAutoencoder
from ae_jax.models.conv import ConvAutoencoder
from ae_jax.models.conv import ConvVAE
from ae_jax.models.vae import MLPVAE
from ae_jax.models.vae import VAEOutput
from ae_jax.models.vqvae import VQVAE
from ae_jax.models.vqvae import VQVAEOutput

__all__ = [
    'AEOutput',
    'ConvAutoencoder',
    'ConvVAE',
    'MLPAutoencoder',
    'MLPVAE',
    'VAEOutput',
    'VQVAE',
    'VQVAEOutput',
]
