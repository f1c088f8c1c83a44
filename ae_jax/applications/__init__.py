"""Applications of trained autoencoders: dimensionality reduction, anomaly
detection, latent-space walks.

Each function takes a model, its variables and numpy images; see the modules:

- `embedding`: `embed`, `reconstruct`, `compare_with_pca` (k-NN accuracy,
  trustworthiness, reconstruction error against PCA at the same dimension);
- `anomaly`: `anomaly_scores` (reconstruction error, negative ELBO, IWAE
  estimate of -log p(x), reconstruction probability), thresholds, flags,
  ROC-AUC and PR-AUC, the one-class protocol;
- `latent`: `interpolate` (linear, slerp), attribute vectors, traversals,
  `decode`;
- `denoising`: a small U-Net denoiser trained across noise levels, PSNR and
  SSIM, and scikit-image's TV, wavelet and non-local-means denoisers, each
  tuned per noise level, in one benchmark;
- `disentanglement`: MIG, SAP, DCI, BetaVAE and FactorVAE scores on data with
  known factors (`ae_jax.data.shapes`); `tcvae`: the β-TCVAE objective;
- `inpainting`: random-pixel and box masks, mean fill, iterative decoder
  fill, latent optimisation for VAEs, PSNR on the missing region;
- `overcomplete`: whether an overcomplete autoencoder copies (perturbation
  kept, noise with the data's statistics reconstructed, a linear probe of
  its codes against the raw pixels);
- `vq_prior`: a gated PixelCNN prior over a VQ-VAE's code grids, trained on
  the frozen encoder's codes, sampled and decoded;
- `common`: batched inference (`map_batches`) and a run's config helpers.

A trained run's `(model, variables)` come from
`ae_jax.training.restore_variables` (or `train_or_restore`); nothing here
imports the training side.

>>> import jax.numpy as jnp
>>> from ae_jax import applications
>>> path = applications.interpolate(jnp.array([1.0, 0.0]), jnp.array([0.0, 1.0]), 3,
...                                 method='slerp')
>>> [round(float(v), 4) for v in path[1]]
[0.7071, 0.7071]
"""

from ae_jax.applications import anomaly
from ae_jax.applications import common
from ae_jax.applications import denoising
from ae_jax.applications import disentanglement
from ae_jax.applications import embedding
from ae_jax.applications import inpainting
from ae_jax.applications import latent
from ae_jax.applications import overcomplete
from ae_jax.applications import tcvae
from ae_jax.applications import vq_prior
from ae_jax.applications.anomaly import anomaly_scores
from ae_jax.applications.anomaly import detection_metrics
from ae_jax.applications.anomaly import elbo
from ae_jax.applications.anomaly import flag
from ae_jax.applications.anomaly import iwae_log_likelihood
from ae_jax.applications.anomaly import reconstruction_log_probability
from ae_jax.applications.anomaly import threshold_from_normal
from ae_jax.applications.denoising import benchmark
from ae_jax.applications.denoising import classical_denoise
from ae_jax.applications.denoising import denoise
from ae_jax.applications.denoising import gaussian_noise_range
from ae_jax.applications.denoising import photo_patches
from ae_jax.applications.denoising import psnr
from ae_jax.applications.denoising import ssim
from ae_jax.applications.denoising import tune_classical
from ae_jax.applications.disentanglement import beta_vae_score
from ae_jax.applications.disentanglement import dci
from ae_jax.applications.disentanglement import factor_vae_score
from ae_jax.applications.disentanglement import mig
from ae_jax.applications.disentanglement import representation_table
from ae_jax.applications.disentanglement import sap
from ae_jax.applications.embedding import compare_with_pca
from ae_jax.applications.embedding import embed
from ae_jax.applications.embedding import reconstruct
from ae_jax.applications.embedding import reconstruction_error
from ae_jax.applications.inpainting import box_mask
from ae_jax.applications.inpainting import iterative_fill
from ae_jax.applications.inpainting import latent_fill
from ae_jax.applications.inpainting import make_mask
from ae_jax.applications.inpainting import mean_fill
from ae_jax.applications.inpainting import pixel_mean
from ae_jax.applications.inpainting import psnr_missing
from ae_jax.applications.inpainting import random_pixel_mask
from ae_jax.applications.latent import attribute_vector
from ae_jax.applications.latent import interpolate
from ae_jax.applications.latent import traverse
from ae_jax.applications.tcvae import make_tcvae_objective
from ae_jax.applications.tcvae import tc_decomposition

__all__ = [
    'anomaly', 'common', 'denoising', 'disentanglement',
    'benchmark', 'classical_denoise', 'denoise', 'gaussian_noise_range',
    'photo_patches', 'psnr', 'ssim', 'tune_classical', 'embedding', 'inpainting', 'latent', 'tcvae',
    'beta_vae_score', 'dci', 'factor_vae_score', 'make_tcvae_objective', 'mig',
    'representation_table', 'sap', 'tc_decomposition',
    'box_mask', 'iterative_fill', 'latent_fill', 'make_mask', 'mean_fill', 'pixel_mean',
    'psnr_missing', 'random_pixel_mask',
    'anomaly_scores', 'attribute_vector', 'compare_with_pca', 'detection_metrics', 'elbo',
    'embed', 'flag', 'interpolate', 'iwae_log_likelihood', 'reconstruct',
    'reconstruction_error', 'reconstruction_log_probability',
    'threshold_from_normal', 'traverse',
]
