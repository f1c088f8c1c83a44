"""Autoencoder models: each has `encode`, `decode` and `__call__`."""

from ae_jax.models.aae import AAE
from ae_jax.models.aae import AAEOutput
from ae_jax.models.aae import SemiSupervisedAAE
from ae_jax.models.autoencoder import AEOutput
from ae_jax.models.autoencoder import MLPAutoencoder
from ae_jax.models.conv import ConvAutoencoder
from ae_jax.models.conv import ConvVAE
from ae_jax.models.diffusion import DiffusionAutoencoder
from ae_jax.models.diffusion import DiffusionOutput
from ae_jax.models.diffusion import LatentDenoiser
from ae_jax.models.ladder import LadderOutput
from ae_jax.models.ladder import LadderVAE
from ae_jax.models.pixelcnn import GatedPixelCNN
from ae_jax.models.sequence import SequenceVAE
from ae_jax.models.sequence import SequenceVAEOutput
from ae_jax.models.unet import UNetDenoiser
from ae_jax.models.vae import MLPVAE
from ae_jax.models.vae import VAEOutput
from ae_jax.models.vqvae import VQVAE
from ae_jax.models.vqvae import VQVAEOutput

__all__ = [
    'AAE',
    'AAEOutput',
    'SemiSupervisedAAE',
    'AEOutput',
    'ConvAutoencoder',
    'ConvVAE',
    'DiffusionAutoencoder',
    'DiffusionOutput',
    'LatentDenoiser',
    'GatedPixelCNN',
    'LadderOutput',
    'LadderVAE',
    'MLPAutoencoder',
    'MLPVAE',
    'SequenceVAE',
    'SequenceVAEOutput',
    'UNetDenoiser',
    'VAEOutput',
    'VQVAE',
    'VQVAEOutput',
]
