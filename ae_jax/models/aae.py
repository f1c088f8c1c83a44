"""Adversarial autoencoder: MLP encoder and decoder, MLP discriminator on codes,
and the prior the codes are matched to; and the semi-supervised AAE (a class
code and a style code, one discriminator each).

Shape letters: B batch, D flattened input size, Z latent, K classes (and
mixture components), N sample count.
"""

from __future__ import annotations

from collections.abc import Sequence
import dataclasses
import math

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import layers

Array = jax.Array

PRIORS = ('gaussian', 'mixture')


class AAEOutput(flax.struct.PyTreeNode):
  """Output of an adversarial autoencoder.

  Attributes:
    logits: decoder output before the sigmoid, with the model input's shape.
    z: deterministic latent code, [B, Z].
    disc_logits: discriminator logit that `z` is a prior sample, [B].
  """
  logits: Array
  z: Array
  disc_logits: Array


class AAE(nn.Module):
  """Deterministic autoencoder D -> hidden -> Z -> reversed(hidden) -> D, plus
  a discriminator Z (+ K one-hot label inputs) -> disc_hidden -> 1.

  The encoder q(z|x) is deterministic, as in the paper's MNIST experiments;
  the discriminator tells codes of data (label 0) from prior samples (label 1)
  and the encoder, as the generator, learns to fool it, which matches the
  aggregated posterior q(z) to the prior p(z).

  With `num_classes = K > 0` the discriminator also sees a one-hot vector of
  K + 1 entries, the last standing for "no label" (label -1): the
  semi-supervised regularisation of Makhzani et al. section 2.3, where a
  labelled code must land in its own class's mixture component.

  Parameters: `encoder/layers_{i}`, `decoder/layers_{i}`,
  `discriminator/layers_{i}` (each `kernel`, `bias`); the train step of
  `ae_jax.recipes.aae` updates the three groups with separate optimizers.

  Attributes:
    input_dim: D.
    hidden: encoder hidden sizes (the decoder uses them reversed).
    latent_dim: Z (2 draws the latent picture directly).
    disc_hidden: discriminator hidden sizes.
    num_classes: K for a label-conditioned discriminator, 0 for none.
    activation: hidden activation name (see `ae_jax.layers.get_activation`).

  References:
    Makhzani, Shlens, Jaitly, Goodfellow & Frey, "Adversarial Autoencoders",
    ICLR workshop 2016, https://arxiv.org/abs/1511.05644.
  """
  input_dim: int = 784
  hidden: Sequence[int] = (512, 256)
  latent_dim: int = 2
  disc_hidden: Sequence[int] = (256, 256)
  num_classes: int = 0
  activation: str = 'relu'

  def setup(self):
    if self.latent_dim <= 0:
      raise ValueError(f'latent_dim must be > 0, got {self.latent_dim}.')
    if self.num_classes < 0:
      raise ValueError(f'num_classes must be >= 0, got {self.num_classes}.')
    self.encoder = layers.MLP(tuple(self.hidden) + (self.latent_dim,),
                             activation=self.activation)
    self.decoder = layers.MLP(tuple(reversed(self.hidden)) + (self.input_dim,),
                             activation=self.activation)
    self.discriminator = layers.MLP(tuple(self.disc_hidden) + (1,),
                                   activation=self.activation)

  def encode(self, x: Array) -> Array:
    """Code [B, Z] of inputs [B, ...]."""
    x_BxD = x.reshape(x.shape[0], -1)
    if x_BxD.shape[1] != self.input_dim:
      raise ValueError(f'Input flattens to {x_BxD.shape[1]} features, expected '
                       f'input_dim={self.input_dim}.')
    return self.encoder(x_BxD)

  def decode(self, z: Array) -> Array:
    """Flat logits [B, D] of codes [B, Z]."""
    return self.decoder(z)

  def discriminate(self, z: Array, labels: Array | None = None) -> Array:
    """Logit [B] that codes z [B, Z] come from the prior.

    Args:
      z: codes, [B, Z].
      labels: int [B] in {-1, 0, ..., K-1} (-1: unlabelled); required iff
        `num_classes > 0`.
    """
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f'Expected codes [B, {self.latent_dim}], got {z.shape}.')
    if self.num_classes:
      if labels is None:
        raise ValueError(f'This discriminator is conditioned on {self.num_classes} classes: '
                         'pass labels (-1 for unlabelled examples).')
      # Label -1 picks the extra "unlabelled" slot K.
      slot = jnp.where(labels < 0, self.num_classes, labels)
      z = jnp.concatenate([z, jax.nn.one_hot(slot, self.num_classes + 1, dtype=z.dtype)], -1)
    elif labels is not None:
      raise ValueError('labels given to an unconditioned discriminator (num_classes=0).')
    return self.discriminator(z)[:, 0]

  def __call__(self, x: Array, labels: Array | None = None) -> AAEOutput:
    """Encodes, decodes and scores the codes (all three parts, so `init` makes
    every parameter)."""
    z = self.encode(x)
    if self.num_classes and labels is None:
      labels = -jnp.ones((x.shape[0],), jnp.int32)
    return AAEOutput(logits=self.decode(z).reshape(x.shape), z=z,
                     disc_logits=self.discriminate(z, labels))


@dataclasses.dataclass(frozen=True)
class Prior:
  """The prior p(z) an AAE's codes are matched to.

  'gaussian': N(0, I). 'mixture': K equally weighted Gaussians whose means lie
  on a circle of radius `radius` in the first two latent dimensions (angle
  2πk/K for component k), each elongated along its radius (standard deviation
  `radial_std`) and narrow across it (`tangential_std`, also used for latent
  dimensions beyond the second): the paper's 10-component mixture, one
  component per digit class.

  Attributes:
    kind: 'gaussian' or 'mixture'.
    latent_dim: Z.
    num_components: K (mixture only).
    radius: distance of the component means from the origin.
    radial_std: standard deviation along the radius.
    tangential_std: standard deviation across it.

  References:
    Makhzani et al., "Adversarial Autoencoders", 2015, section 2.3 and fig. 4.
  """
  kind: str = 'gaussian'
  latent_dim: int = 2
  num_components: int = 10
  radius: float = 4.0
  radial_std: float = 1.0
  tangential_std: float = 0.25

  def __post_init__(self):
    if self.kind not in PRIORS:
      raise ValueError(f'Unknown prior {self.kind!r}; expected one of {PRIORS}.')
    if self.latent_dim <= 0:
      raise ValueError(f'latent_dim must be > 0, got {self.latent_dim}.')
    if self.kind == 'mixture':
      if self.latent_dim < 2:
        raise ValueError(f'The mixture prior needs latent_dim >= 2, got {self.latent_dim}.')
      if self.num_components <= 0:
        raise ValueError(f'num_components must be > 0, got {self.num_components}.')
      for name in ('radius', 'radial_std', 'tangential_std'):
        if getattr(self, name) <= 0:
          raise ValueError(f'prior {name} must be > 0, got {getattr(self, name)}.')

  def _angles_K(self) -> np.ndarray:
    return 2 * np.pi * np.arange(self.num_components) / self.num_components

  def _stds_Z(self) -> np.ndarray:
    return np.array([self.radial_std] + [self.tangential_std] * (self.latent_dim - 1), np.float32)

  def means(self) -> np.ndarray:
    """Component means [K, Z] (mixture) or [1, Z] zeros (gaussian)."""
    if self.kind == 'gaussian':
      return np.zeros((1, self.latent_dim), np.float32)
    means = np.zeros((self.num_components, self.latent_dim), np.float32)
    angles = self._angles_K()
    means[:, 0], means[:, 1] = self.radius * np.cos(angles), self.radius * np.sin(angles)
    return means

  def sample(self, key: Array, num: int, components: Array | None = None) -> Array:
    """Draws [num, Z] samples.

    Args:
      key: PRNG key.
      num: N.
      components: mixture only: int [N], the component of each sample, -1 for
        one drawn uniformly at random (unlabelled examples); None draws all
        at random.
    """
    normal_key, component_key = jax.random.split(key)
    eps = jax.random.normal(normal_key, (num, self.latent_dim))
    if self.kind == 'gaussian':
      if components is not None:
        raise ValueError('components are only defined for the mixture prior.')
      return eps
    random_k = jax.random.randint(component_key, (num,), 0, self.num_components)
    k = random_k if components is None else jnp.where(components < 0, random_k, components)
    eps = eps * jnp.asarray(self._stds_Z())
    angle = 2 * jnp.pi * k.astype(jnp.float32) / self.num_components
    cos, sin = jnp.cos(angle), jnp.sin(angle)
    # Rotate (radial, tangential) into the component's frame, then shift.
    rotated = jnp.stack([cos * eps[:, 0] - sin * eps[:, 1], sin * eps[:, 0] + cos * eps[:, 1]], -1)
    z = jnp.concatenate([rotated, eps[:, 2:]], -1)
    return z + jnp.asarray(self.means())[k]

  def log_prob(self, z_NxZ: Array) -> Array:
    """log p(z), [N]."""
    z = jnp.asarray(z_NxZ, jnp.float32)
    log_2pi = math.log(2 * math.pi)
    if self.kind == 'gaussian':
      return -0.5 * jnp.sum(z**2 + log_2pi, -1)
    angles = jnp.asarray(self._angles_K())
    u = z[:, None, :] - jnp.asarray(self.means())[None]  # [N, K, Z]
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    radial = cos * u[..., 0] + sin * u[..., 1]
    tangential = -sin * u[..., 0] + cos * u[..., 1]
    e = jnp.concatenate([radial[..., None], tangential[..., None], u[..., 2:]], -1)
    stds = jnp.asarray(self._stds_Z())
    log_normal = -0.5 * jnp.sum((e / stds)**2 + log_2pi + 2 * jnp.log(stds), -1)  # [N, K]
    return jax.nn.logsumexp(log_normal, -1) - math.log(self.num_components)


class SemiSupervisedCode(flax.struct.PyTreeNode):
  """The two codes of a semi-supervised AAE.

  Attributes:
    y_logits: class logits of q(y|x), [B, K]; softmax(y_logits) is the
      categorical code the decoder and the categorical discriminator see.
    z: continuous style code, [B, Z].
  """
  y_logits: Array
  z: Array


class SemiSupervisedAAEOutput(flax.struct.PyTreeNode):
  """Output of a semi-supervised AAE.

  Attributes:
    logits: decoder output before the sigmoid, with the model input's shape.
    code: the class logits and style code of the input.
    disc_y_logits: categorical discriminator's logit that softmax(y) is a
      one-hot prior sample, [B].
    disc_z_logits: style discriminator's logit that z is a N(0, I) sample, [B].
  """
  logits: Array
  code: SemiSupervisedCode
  disc_y_logits: Array
  disc_z_logits: Array


class SemiSupervisedAAE(nn.Module):
  """Adversarial autoencoder with a categorical class code and a continuous style.

  A shared trunk D -> hidden maps the input to two heads: class logits
  (q(y|x) = softmax, K classes) and a deterministic style z (Z). The decoder
  reconstructs from [softmax(y), z] (K + Z -> reversed(hidden) -> D). Two
  discriminators, (K -> disc_hidden -> 1) and (Z -> disc_hidden -> 1),
  tell the codes of data from samples of a categorical prior (one-hot
  vectors, classes uniform) and of N(0, I); the encoder, as the generator,
  learns to fool both. A fourth, supervised phase trains q(y|x) (trunk and
  class head) by cross-entropy on labelled examples.

  Parameters: `trunk`, `y_head`, `z_head`, `decoder`, `disc_y`, `disc_z`;
  the step of `ae_jax.recipes.ssaae` updates them by phase, each phase with
  its own optimizer.

  Attributes:
    input_dim: D.
    hidden: trunk hidden sizes (the decoder uses them reversed).
    latent_dim: Z, the style code's size.
    num_classes: K.
    disc_hidden: hidden sizes of both discriminators.
    activation: hidden activation name (see `ae_jax.layers.get_activation`).

  References:
    Makhzani, Shlens, Jaitly, Goodfellow & Frey, "Adversarial Autoencoders",
    2015, section 5 (semi-supervised adversarial autoencoders),
    https://arxiv.org/abs/1511.05644.
  """
  input_dim: int = 784
  hidden: Sequence[int] = (1000, 1000)
  latent_dim: int = 10
  num_classes: int = 10
  disc_hidden: Sequence[int] = (1000, 1000)
  activation: str = 'relu'

  def setup(self):
    if self.latent_dim <= 0:
      raise ValueError(f'latent_dim must be > 0, got {self.latent_dim}.')
    if self.num_classes < 2:
      raise ValueError(f'num_classes must be >= 2, got {self.num_classes}.')
    if not self.hidden:
      raise ValueError('hidden must name at least one trunk layer.')
    self.trunk = layers.MLP(tuple(self.hidden), activation=self.activation,
                            final_activation=self.activation)
    self.y_head = nn.Dense(self.num_classes)
    self.z_head = nn.Dense(self.latent_dim)
    self.decoder = layers.MLP(tuple(reversed(self.hidden)) + (self.input_dim,),
                              activation=self.activation)
    self.disc_y = layers.MLP(tuple(self.disc_hidden) + (1,), activation=self.activation)
    self.disc_z = layers.MLP(tuple(self.disc_hidden) + (1,), activation=self.activation)

  def _features(self, x: Array) -> Array:
    x_BxD = x.reshape(x.shape[0], -1)
    if x_BxD.shape[1] != self.input_dim:
      raise ValueError(f'Input flattens to {x_BxD.shape[1]} features, expected '
                       f'input_dim={self.input_dim}.')
    return self.trunk(x_BxD)

  def encode(self, x: Array) -> SemiSupervisedCode:
    """Class logits [B, K] and style [B, Z] of inputs [B, ...]."""
    h = self._features(x)
    return SemiSupervisedCode(y_logits=self.y_head(h), z=self.z_head(h))

  def classify(self, x: Array) -> Array:
    """Class logits [B, K] of q(y|x) (trunk and class head only)."""
    return self.y_head(self._features(x))

  def decode(self, y: Array, z: Array) -> Array:
    """Flat logits [B, D] of class vectors y [B, K] (softmax or one-hot) and styles z [B, Z]."""
    if y.ndim != 2 or y.shape[1] != self.num_classes:
      raise ValueError(f'Expected class vectors [B, {self.num_classes}], got {y.shape}.')
    if z.ndim != 2 or z.shape[1] != self.latent_dim:
      raise ValueError(f'Expected styles [B, {self.latent_dim}], got {z.shape}.')
    return self.decoder(jnp.concatenate([y, z], -1))

  def discriminate_y(self, y: Array) -> Array:
    """Logit [B] that class vectors y [B, K] are one-hot prior samples."""
    return self.disc_y(y)[:, 0]

  def discriminate_z(self, z: Array) -> Array:
    """Logit [B] that styles z [B, Z] are N(0, I) samples."""
    return self.disc_z(z)[:, 0]

  def __call__(self, x: Array) -> SemiSupervisedAAEOutput:
    """Encodes, decodes and scores both codes (every part, so `init` makes every parameter)."""
    code = self.encode(x)
    y = jax.nn.softmax(code.y_logits, -1)
    return SemiSupervisedAAEOutput(
        logits=self.decode(y, code.z).reshape(x.shape), code=code,
        disc_y_logits=self.discriminate_y(y), disc_z_logits=self.discriminate_z(code.z))
