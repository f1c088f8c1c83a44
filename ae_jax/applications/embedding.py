"""Dimensionality reduction with a trained autoencoder, measured against PCA.

`embed` maps images to codes with any ae_jax model: the posterior mean of
q(z|x) for a VAE, z for a deterministic autoencoder, and the continuous
encoder output z_e, flattened, for a VQ-VAE. `compare_with_pca` then fits PCA
with as many components as the code has dimensions and scores both on the
same test images:

- reconstruction error: mean squared error in pixel space, per pixel, of the
  decoder output through the sigmoid (the PCA reconstruction is used as is);
- k-NN accuracy: a k-nearest-neighbour classifier (Euclidean) fit on the
  train codes and scored on the test codes;
- trustworthiness: how far the code's nearest neighbours are also neighbours
  in pixel space (1 is best), on a random subsample of the test set.

Shape letters: N examples, Z code size, D pixels per image.

>>> import jax, numpy as np
>>> from ae_jax import models
>>> model = models.MLPAutoencoder(input_dim=64, hidden=(32,), latent_dim=4)
>>> x = np.random.default_rng(0).uniform(size=(10, 8, 8, 1)).astype(np.float32)
>>> variables = model.init(jax.random.key(0), x[:1])
>>> embed(model, variables, x, batch_size=4).shape
(10, 4)

References:
  Hinton & Salakhutdinov, "Reducing the Dimensionality of Data with Neural
  Networks", Science 2006 (autoencoders against PCA).
  Venna & Kaski, "Neighborhood preservation in nonlinear projection
  methods: an experimental study", ICANN 2001 (trustworthiness).
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import numpy as np

from ae_jax.applications import common

Variables = common.Variables

# The model families (`model.family`, see `ae_jax.models`) whose codes and
# reconstructions are read here; scikit-learn is imported by the functions that
# use it, so that importing the applications stays cheap.
CODE_FAMILIES = ('ae', 'vae', 'vqvae')


def code_family(model: nn.Module) -> str:
  """`model.family`, checked to be one of `CODE_FAMILIES`.

  Raises:
    TypeError: a model without a code these functions can read.
  """
  family = getattr(model, 'family', None)
  if family not in CODE_FAMILIES:
    raise TypeError(f'{type(model).__name__} (family {family!r}) has no code to embed; '
                    f'expected a model of family {CODE_FAMILIES}: MLPAutoencoder, '
                    'ConvAutoencoder, MLPVAE, ConvVAE or VQVAE.')
  return family


def _codes_fn(model: nn.Module, variables: Variables):
  family = code_family(model)

  # Variables are an argument, not a closure: jit would bake them into the program.
  @jax.jit
  def codes(variables, x):
    if family == 'vae':
      mean, _ = model.apply(variables, x, method='encode')
      return mean
    z = model.apply(variables, x, method='encode')
    return z.reshape(z.shape[0], -1)

  return functools.partial(codes, variables)


def embed(model: nn.Module, variables: Variables, images: np.ndarray, *,
          batch_size: int = 256, desc: str | None = None) -> np.ndarray:
  """Codes of `images` under a trained model.

  Args:
    model: an ae_jax model of a family in `CODE_FAMILIES`.
    variables: its variables, `{'params': ...}` (and 'vq_stats').
    images: [N, H, W, C] in [0, 1].
    batch_size: examples per jitted call.
    desc: progress bar label, or None.

  Returns:
    float32 [N, Z]: the posterior mean for a VAE, z for an autoencoder, the
    flattened z_e [N, h*w*D] for a VQ-VAE. Deterministic.
  """
  return common.map_batches(_codes_fn(model, variables), images,
                            batch_size=batch_size, desc=desc)


OUTPUT_ACTIVATIONS = ('sigmoid', 'identity')


def to_pixels(logits: jax.Array, output_activation: str = 'sigmoid') -> jax.Array:
  """Decoder logits to pixels: 'sigmoid', or 'identity' for a linear decoder."""
  if output_activation not in OUTPUT_ACTIVATIONS:
    raise ValueError(f'output_activation must be one of {OUTPUT_ACTIVATIONS}, '
                     f'got {output_activation!r}.')
  return jax.nn.sigmoid(logits) if output_activation == 'sigmoid' else logits


def reconstruct(model: nn.Module, variables: Variables, images: np.ndarray, *,
                batch_size: int = 256, output_activation: str = 'sigmoid',
                desc: str | None = None) -> np.ndarray:
  """Decoder outputs in pixel space, [N, H, W, C].

  A VAE decodes its posterior mean (no sampling), an autoencoder its code and
  a VQ-VAE its quantized code. `output_activation` maps logits to pixels:
  'sigmoid', or 'identity' for a linear decoder.
  """
  to_pixels(np.zeros(()), output_activation)  # Rejects a bad name before any work.
  fn = jax.jit(reconstruction_fn(model, output_activation))
  return common.map_batches(functools.partial(fn, variables), images, batch_size=batch_size,
                            desc=desc)


def reconstruction_fn(model: nn.Module, output_activation: str = 'sigmoid'):
  """fn(variables, x_B) -> the model's deterministic reconstruction in pixels.

  A VAE decodes its posterior mean, an autoencoder its code and a VQ-VAE its
  quantized code.
  """
  family = code_family(model)

  def fn(variables, x):
    if family == 'vae':
      mean, _ = model.apply(variables, x, method='encode')
      logits = model.apply(variables, mean, method='decode')
    elif family == 'vqvae':
      logits = model.apply(variables, x, train=False).logits
    else:
      logits = model.apply(variables, x).logits
    return to_pixels(logits.reshape(x.shape), output_activation)

  return fn


def reconstruction_error(model: nn.Module, variables: Variables, images: np.ndarray, *,
                         batch_size: int = 256, output_activation: str = 'sigmoid',
                         desc: str | None = None) -> np.ndarray:
  """Per-example mean squared error over pixels of `reconstruct`, float [N]."""
  outputs = reconstruct(model, variables, images, batch_size=batch_size,
                        output_activation=output_activation, desc=desc)
  diff = outputs.reshape(len(images), -1) - np.asarray(images).reshape(len(images), -1)
  return np.mean(np.square(diff), axis=1)


def knn_accuracy(train_codes: np.ndarray, train_labels: np.ndarray,
                 test_codes: np.ndarray, test_labels: np.ndarray, *,
                 n_neighbors: int = 5) -> float:
  """Test accuracy of a Euclidean k-NN classifier fit on the train codes."""
  from sklearn import neighbors  # pylint: disable=g-import-not-at-top
  classifier = neighbors.KNeighborsClassifier(n_neighbors=n_neighbors)
  classifier.fit(np.asarray(train_codes).reshape(len(train_codes), -1), train_labels)
  return float(classifier.score(np.asarray(test_codes).reshape(len(test_codes), -1),
                                test_labels))


def subsample_indices(num: int, size: int | None, *, seed: int = 0) -> np.ndarray:
  """`size` distinct indices of range(num) drawn with `seed`, sorted; all if size is None."""
  if size is None or size >= num:
    return np.arange(num)
  return np.sort(np.random.default_rng(seed).choice(num, size, replace=False))


def trustworthiness(inputs: np.ndarray, codes: np.ndarray, *, n_neighbors: int = 5,
                    num_examples: int | None = 1000, seed: int = 0) -> float:
  """sklearn's trustworthiness of `codes` as an embedding of `inputs`.

  It costs O(n^2) time and memory in the number of examples, so it is taken
  on `num_examples` examples drawn with `seed` (all of them if None).
  """
  from sklearn import manifold  # pylint: disable=g-import-not-at-top
  rows = subsample_indices(len(inputs), num_examples, seed=seed)
  x = np.asarray(inputs).reshape(len(inputs), -1)[rows]
  z = np.asarray(codes).reshape(len(codes), -1)[rows]
  return float(manifold.trustworthiness(x, z, n_neighbors=n_neighbors))


def fit_pca(train_images: np.ndarray, num_components: int, *, seed: int = 0
            ) -> 'sklearn.decomposition.PCA':
  """PCA of the flattened train images with `num_components` components."""
  from sklearn import decomposition  # pylint: disable=g-import-not-at-top
  flat = np.asarray(train_images).reshape(len(train_images), -1)
  num_components = min(num_components, *flat.shape)
  return decomposition.PCA(n_components=num_components, random_state=seed).fit(flat)


def embedding_metrics(
    train_codes: np.ndarray, train_labels: np.ndarray,
    test_images: np.ndarray, test_codes: np.ndarray, test_labels: np.ndarray,
    test_reconstructions: np.ndarray, *, n_neighbors: int = 5,
    trust_neighbors: int = 5, trust_examples: int | None = 1000, seed: int = 0,
) -> dict[str, float]:
  """Reconstruction MSE, k-NN accuracy and trustworthiness of one embedding."""
  n = len(test_images)
  mse = np.mean(np.square(np.asarray(test_reconstructions).reshape(n, -1)
                          - np.asarray(test_images).reshape(n, -1)))
  return {
      'code_dim': int(np.asarray(test_codes).reshape(n, -1).shape[1]),
      'reconstruction_mse': float(mse),
      'knn_accuracy': knn_accuracy(train_codes, train_labels, test_codes, test_labels,
                                   n_neighbors=n_neighbors),
      'trustworthiness': trustworthiness(test_images, test_codes,
                                         n_neighbors=trust_neighbors,
                                         num_examples=trust_examples, seed=seed),
  }


def compare_with_pca(
    model: nn.Module,
    variables: Variables,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    *,
    batch_size: int = 256,
    n_neighbors: int = 5,
    trust_neighbors: int = 5,
    trust_examples: int | None = 1000,
    output_activation: str = 'sigmoid',
    seed: int = 0,
    progress: bool = False,
) -> dict[str, Any]:
  """Scores the model's codes and PCA at the same dimension on the test images.

  Returns:
    {'model': metrics, 'pca': metrics, and the codes for plotting:
     'test_codes': [N_test, Z], 'pca_test_codes': [N_test, Z]}, metrics being
    `embedding_metrics`'s dict. PCA's reconstruction is
    `inverse_transform(transform(x))`, in pixel space without clipping.
  """
  desc = (lambda s: s) if progress else (lambda s: None)
  train_codes = embed(model, variables, train_images, batch_size=batch_size,
                      desc=desc('embed train'))
  test_codes = embed(model, variables, test_images, batch_size=batch_size,
                     desc=desc('embed test'))
  recon = reconstruct(model, variables, test_images, batch_size=batch_size,
                      output_activation=output_activation, desc=desc('reconstruct'))
  common_kwargs = dict(n_neighbors=n_neighbors, trust_neighbors=trust_neighbors,
                       trust_examples=trust_examples, seed=seed)
  model_metrics = embedding_metrics(train_codes, train_labels, test_images, test_codes,
                                    test_labels, recon, **common_kwargs)
  pca = fit_pca(train_images, train_codes.shape[1], seed=seed)
  n_test = len(test_images)
  pca_train = pca.transform(np.asarray(train_images).reshape(len(train_images), -1))
  pca_test = pca.transform(np.asarray(test_images).reshape(n_test, -1))
  pca_recon = pca.inverse_transform(pca_test).reshape(np.shape(test_images))
  pca_metrics = embedding_metrics(pca_train, train_labels, test_images, pca_test,
                                  test_labels, pca_recon, **common_kwargs)
  return {'model': model_metrics, 'pca': pca_metrics, 'test_codes': test_codes,
          'pca_test_codes': pca_test}


def map_2d(codes: np.ndarray, *, method: str = 'pca', seed: int = 0) -> np.ndarray:
  """Codes [N, Z] drawn in the plane, [N, 2]: as they are when Z == 2, else by
  their first two principal components ('pca') or by t-SNE ('tsne')."""
  from sklearn import decomposition  # pylint: disable=g-import-not-at-top
  from sklearn import manifold  # pylint: disable=g-import-not-at-top
  codes = np.asarray(codes, np.float64).reshape(len(codes), -1)
  if codes.shape[1] == 2:
    return codes
  if method == 'pca':
    return decomposition.PCA(n_components=2, random_state=seed).fit_transform(codes)
  if method == 'tsne':
    return manifold.TSNE(n_components=2, init='pca', random_state=seed,
                         perplexity=min(30.0, max(5.0, (len(codes) - 1) / 3))
                         ).fit_transform(codes)
  raise ValueError(f"method must be 'pca' or 'tsne', got {method!r}.")
