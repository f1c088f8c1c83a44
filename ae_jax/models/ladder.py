"""Ladder variational autoencoder: a hierarchy of Gaussian latents.

Generative model, top layer L first:

  p(z_L) = N(0, I),  p(z_i | z_{i+1}) = N(μ_p,i, σ²_p,i),  p(x | z_1) Bernoulli,

with (μ_p,i, σ²_p,i) = f_i(z_{i+1}) small MLPs (the top-down path).

Inference. A deterministic bottom-up pass d_1 = g_1(x), d_i = g_i(d_{i-1})
gives one Gaussian "likelihood" term (μ̂_i, σ̂²_i) per layer. The top-down
pass then samples z_L ~ q(z_L | x) = N(μ̂_L, σ̂²_L) and, for i = L-1, ..., 1,
merges the bottom-up term with the prior of the layer given the sampled
z_{i+1} by precision weighting (`precision_weighted_merge`):

  σ²_q,i = 1 / (σ̂⁻²_i + σ⁻²_p,i),  μ_q,i = (μ̂_i σ̂⁻²_i + μ_p,i σ⁻²_p,i) σ²_q,i.

The posterior q(z | x) = q(z_L | x) ∏_i q(z_i | z_{i+1}, x) and the prior
share the top-down path's parameters, as in the paper. Variances are
σ² = softplus(·) + `min_variance`, as in the paper (whose σ used a softplus
too), which keeps log σ² finite.

Normalisation (`normalization`): the paper puts batch normalisation in every
deterministic layer (Dense → BN → activation) of the bottom-up path, the
top-down path and the decoder, not in the Gaussian heads nor the decoder's
output; with KL warm-up it is one of the two remedies that keep the upper
layers active (Sønderby et al. Sec. 2.3, Table 2). 'batch' does that: the
statistics are the minibatch's when called with `train=True` (which needs
`mutable=['batch_stats']` and returns the updated running averages) and the
running averages otherwise, so every method other than a training call is a
deterministic function of one example (what importance sampling needs).
'layer' puts layer normalisation in the same places (no state, not the
paper's); 'none' (the class default) none at all.

Shape letters: B batch, D flattened input size, Z_i latent size of layer i
(layer 0 is the bottom one, z_1 in the paper's numbering), L layers.

References:
  Sønderby, Raiko, Maaløe, Sønderby & Winther, "Ladder Variational
  Autoencoders", NeurIPS 2016, https://arxiv.org/abs/1602.02282 (Eqs. 15-21,
  Fig. 2, Sec. 3: MLP setup on MNIST).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp

from ae_jax import losses
from ae_jax import layers

Array = jax.Array


def precision_weighted_merge(mean_a: Array, log_var_a: Array, mean_b: Array,
                             log_var_b: Array) -> tuple[Array, Array]:
  r"""Product of two Gaussians, renormalised: the ladder VAE's posterior merge.

  .. math::
    \sigma^2 = \frac{1}{\sigma_a^{-2} + \sigma_b^{-2}}, \qquad
    \mu = (\mu_a \sigma_a^{-2} + \mu_b \sigma_b^{-2})\,\sigma^2.

  Computed in log space: log σ² = -logaddexp(-log σ²_a, -log σ²_b), and the
  weight of `a` is σ_a⁻² / (σ_a⁻² + σ_b⁻²) = sigmoid(log σ²_b - log σ²_a),
  so neither precision is ever formed (no overflow for tiny variances).

  Args:
    mean_a, log_var_a: the first Gaussian (e.g. the bottom-up term μ̂, log σ̂²).
    mean_b, log_var_b: the second (e.g. the top-down prior μ_p, log σ²_p); all
      four broadcast together.

  Returns:
    (mean, log_var) of the merged Gaussian.

  References:
    Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016, Eqs. 18-19.
  """
  weight_a = jax.nn.sigmoid(log_var_b - log_var_a)
  mean = weight_a * mean_a + (1.0 - weight_a) * mean_b
  log_var = -jnp.logaddexp(-log_var_a, -log_var_b)
  return mean, log_var


class LadderOutput(flax.struct.PyTreeNode):
  """Output of a `LadderVAE` pass; tuples are ordered bottom (z_1) to top (z_L).

  Attributes:
    logits: decoder logits of the sampled z_1, with the model input's shape.
    z: per layer, the sample from q, [B, Z_i].
    q_mean, q_log_var: per layer, the (merged) posterior q(z_i | z_{i+1}, x).
    p_mean, p_log_var: per layer, the top-down prior p(z_i | z_{i+1}) at the
      sampled z_{i+1}; N(0, I) (zeros) for the top layer.
  """
  logits: Array
  z: tuple[Array, ...]
  q_mean: tuple[Array, ...]
  q_log_var: tuple[Array, ...]
  p_mean: tuple[Array, ...]
  p_log_var: tuple[Array, ...]

  @property
  def mean(self) -> Array:
    """The top layer's posterior mean [B, Z_L]: the most abstract code."""
    return self.q_mean[-1]


class _GaussianHead(nn.Module):
  """Dense (mean, log σ²) of a diagonal Gaussian, σ² = softplus(·) + min_variance."""
  features: int
  min_variance: float

  @nn.compact
  def __call__(self, h: Array) -> tuple[Array, Array]:
    mean = nn.Dense(self.features, name='mean')(h)
    variance = nn.softplus(nn.Dense(self.features, name='variance')(h)) + self.min_variance
    return mean, jnp.log(variance)


NORMALIZATIONS = ('none', 'batch', 'layer')


class _Block(nn.Module):
  """Dense layers `features`, each followed by the normalisation and the activation.

  The last layer is left linear and unnormalised when `linear_output`. Dense
  parameters are `layers_{i}` (as in `layers.MLP`, so a model without
  normalisation keeps `layers.MLP`'s parameter tree), normalisers `norms_{i}`.
  With 'batch' the normalised Dense layers have no bias (it would be redundant).
  """
  features: Sequence[int]
  activation: str
  normalization: str = 'none'
  linear_output: bool = False
  momentum: float = 0.99

  def setup(self):
    num_normed = len(self.features) - int(self.linear_output)
    # Batch normalisation subtracts each unit's batch mean, so a Dense bias before it
    # has no effect and a zero gradient up to rounding, which Adam would turn into
    # steps of the full learning rate: those layers have none (BatchNorm's own bias
    # takes its place).
    self.layers = [nn.Dense(f, use_bias=not (self.normalization == 'batch' and i < num_normed))
                   for i, f in enumerate(self.features)]
    if self.normalization == 'batch':
      self.norms = [nn.BatchNorm(momentum=self.momentum) for _ in range(num_normed)]
    elif self.normalization == 'layer':
      self.norms = [nn.LayerNorm() for _ in range(num_normed)]

  def __call__(self, h: Array, train: bool = False) -> Array:
    act = layers.get_activation(self.activation)
    last = len(self.features) - 1
    for i, dense in enumerate(self.layers):
      h = dense(h)
      if i == last and self.linear_output:
        break
      if self.normalization == 'batch':
        h = self.norms[i](h, use_running_average=not train)
      elif self.normalization == 'layer':
        h = self.norms[i](h)
      h = act(h)
    return h


class LadderVAE(nn.Module):
  """Ladder VAE with MLP blocks: x -> d_1 -> ... -> d_L bottom-up, z_L -> ... -> z_1 -> x.

  Defaults: 784 -> 512 -> 256 -> 128 deterministic units (two Dense layers
  each) with latents 64, 32, 16: the first three layers of the paper's MNIST
  model (512-256-128-64-32 with latents 64-32-16-8-4), sized for a CPU.

  Parameters: `up_{i}` (MLP) and `up_head_{i}` (Gaussian head) for the
  bottom-up path; `down_{i}` and `down_head_{i}` for the top-down prior of
  layer i < L-1 given z_{i+1}; `decoder` (MLP to D logits).

  Importance sampling (`ae_jax.likelihood`): `importance_context` is the
  bottom-up pass, `importance_noise` one ε per layer, `log_weight_terms` the
  log densities summed over the layers.

  Attributes:
    family: 'ladder_vae', a hierarchy of Gaussian latents (no one-layer
      `encode`).
    input_dim: D.
    hidden: deterministic sizes d_1..d_L (also used, reversed, top-down).
    latent_dims: Z_1..Z_L, one per layer; at least 3 is the paper's setting.
    layers_per_block: Dense layers in each deterministic block.
    activation: hidden activation name (the paper: leaky ReLU).
    min_variance: floor added to every softplus variance.
    normalization: 'none', 'batch' (the paper's) or 'layer', in every
      deterministic layer; see the module docstring. 'batch' adds the
      'batch_stats' collection.
    norm_momentum: the running averages' decay with 'batch'.

  References:
    Sønderby et al., "Ladder Variational Autoencoders", NeurIPS 2016,
    https://arxiv.org/abs/1602.02282.
  """
  family: ClassVar[str] = 'ladder_vae'
  input_dim: int = 784
  hidden: Sequence[int] = (512, 256, 128)
  latent_dims: Sequence[int] = (64, 32, 16)
  layers_per_block: int = 2
  activation: str = 'leaky_relu'
  min_variance: float = 1e-4
  normalization: str = 'none'
  norm_momentum: float = 0.99

  def setup(self):
    if len(self.hidden) != len(self.latent_dims):
      raise ValueError(f'hidden {tuple(self.hidden)} and latent_dims {tuple(self.latent_dims)} '
                       'need one entry per stochastic layer each.')
    if len(self.latent_dims) < 2:
      raise ValueError(f'A ladder needs at least 2 stochastic layers, got {len(self.latent_dims)}.')
    if min(self.latent_dims) <= 0 or min(self.hidden) <= 0:
      raise ValueError(f'Sizes must be > 0: hidden={tuple(self.hidden)}, '
                       f'latent_dims={tuple(self.latent_dims)}.')
    if self.layers_per_block < 1:
      raise ValueError(f'layers_per_block must be >= 1, got {self.layers_per_block}.')
    if self.min_variance <= 0:
      raise ValueError(f'min_variance must be > 0, got {self.min_variance}.')
    if self.normalization not in NORMALIZATIONS:
      raise ValueError(f'normalization={self.normalization!r}; expected one of {NORMALIZATIONS}.')
    if not 0.0 <= self.norm_momentum < 1.0:
      raise ValueError(f'norm_momentum must be in [0, 1), got {self.norm_momentum}.')
    block = lambda width: _Block((width,) * self.layers_per_block, self.activation,
                                 self.normalization, momentum=self.norm_momentum)
    num = len(self.latent_dims)
    self.up = [block(h) for h in self.hidden]
    self.up_head = [_GaussianHead(z, self.min_variance) for z in self.latent_dims]
    self.down = [block(self.hidden[i]) for i in range(num - 1)]
    self.down_head = [_GaussianHead(self.latent_dims[i], self.min_variance)
                      for i in range(num - 1)]
    self.decoder = _Block((self.hidden[0],) * self.layers_per_block + (self.input_dim,),
                          self.activation, self.normalization, linear_output=True,
                          momentum=self.norm_momentum)

  @property
  def num_layers(self) -> int:
    return len(self.latent_dims)

  def _flatten(self, x: Array) -> Array:
    x_BxD = x.reshape(x.shape[0], -1)
    if x_BxD.shape[1] != self.input_dim:
      raise ValueError(f'Input flattens to {x_BxD.shape[1]} features, expected '
                       f'input_dim={self.input_dim}.')
    return x_BxD

  @property
  def stateful(self) -> bool:
    """True iff training updates a collection besides 'params' ('batch_stats')."""
    return self.normalization == 'batch'

  def bottom_up(self, x: Array, train: bool = False) -> tuple[tuple[Array, Array], ...]:
    """The deterministic pass: per layer (μ̂_i, log σ̂²_i), each [B, Z_i].

    `train` (here and below): batch normalisation with the minibatch's
    statistics, updating the running averages; otherwise with the averages.
    """
    d = self._flatten(x)
    stats = []
    for up, head in zip(self.up, self.up_head):
      d = up(d, train)
      stats.append(head(d))
    return tuple(stats)

  def prior(self, i: int, z_above: Array, train: bool = False) -> tuple[Array, Array]:
    """(μ_p,i, log σ²_p,i) of p(z_i | z_{i+1}) for layer i < L-1 (0-based)."""
    return self.down_head[i](self.down[i](z_above, train))

  def top_down(self, stats: Sequence[tuple[Array, Array]], noise: Sequence[Array],
               train: bool = False) -> tuple[tuple[Array, ...], ...]:
    """Samples z from q(z | x) given the bottom-up `stats` and standard normal `noise`.

    Args:
      stats: `bottom_up`'s output.
      noise: per layer ε_i [B, Z_i]; z_i = μ_q,i + σ_q,i ε_i. All zeros give
        the mean path (each layer at its posterior mean given the layers above).

    Returns:
      (z, q_mean, q_log_var, p_mean, p_log_var), each a tuple over layers,
      bottom first.
    """
    num = self.num_layers
    z, q_mean, q_log_var = [None] * num, [None] * num, [None] * num
    p_mean, p_log_var = [None] * num, [None] * num
    top = num - 1
    q_mean[top], q_log_var[top] = stats[top]
    p_mean[top] = jnp.zeros_like(q_mean[top])
    p_log_var[top] = jnp.zeros_like(q_mean[top])
    z[top] = q_mean[top] + jnp.exp(0.5 * q_log_var[top]) * noise[top]
    for i in range(top - 1, -1, -1):
      p_mean[i], p_log_var[i] = self.prior(i, z[i + 1], train)
      q_mean[i], q_log_var[i] = precision_weighted_merge(*stats[i], p_mean[i], p_log_var[i])
      z[i] = q_mean[i] + jnp.exp(0.5 * q_log_var[i]) * noise[i]
    return tuple(z), tuple(q_mean), tuple(q_log_var), tuple(p_mean), tuple(p_log_var)

  def decode(self, z_bottom: Array, train: bool = False) -> Array:
    """Flat logits [B, D] of bottom-layer codes z_1 [B, Z_1]."""
    return self.decoder(z_bottom, train)

  def draw_noise(self, key: Array, batch_size: int) -> tuple[Array, ...]:
    """Standard normal ε_i [B, Z_i] for every layer, one split of `key` per layer."""
    keys = jax.random.split(key, self.num_layers)
    return tuple(jax.random.normal(k, (batch_size, z)) for k, z in zip(keys, self.latent_dims))

  def __call__(self, x: Array, key: Array, train: bool = False) -> LadderOutput:
    """Bottom-up pass, a reparameterized top-down sample drawn with `key`, decoding.

    With `train` and batch normalisation, call with `mutable=['batch_stats']`.
    """
    stats = self.bottom_up(x, train)
    z, q_mean, q_log_var, p_mean, p_log_var = self.top_down(
        stats, self.draw_noise(key, x.shape[0]), train)
    logits = self.decode(z[0], train).reshape(x.shape)
    return LadderOutput(logits=logits, z=z, q_mean=q_mean, q_log_var=q_log_var,
                        p_mean=p_mean, p_log_var=p_log_var)

  def posterior_means(self, x: Array) -> tuple[Array, ...]:
    """Per layer, E_q[z_i] along the mean path (every layer above at its mean)."""
    stats = self.bottom_up(x)
    zeros = tuple(jnp.zeros_like(m) for m, _ in stats)
    return self.top_down(stats, zeros)[1]

  def sample(self, key: Array, num: int) -> tuple[Array, tuple[Array, ...]]:
    """Ancestral samples of the generative model: z_L ~ N(0, I), z_i ~ p(z_i | z_{i+1}).

    Returns:
      (logits [num, D], z per layer bottom first).
    """
    noise = self.draw_noise(key, num)
    top = self.num_layers - 1
    z = [None] * self.num_layers
    z[top] = noise[top]
    for i in range(top - 1, -1, -1):
      mean, log_var = self.prior(i, z[i + 1])
      z[i] = mean + jnp.exp(0.5 * log_var) * noise[i]
    return self.decode(z[0]), tuple(z)

  def importance_context(self, x: Array) -> tuple[tuple[Array, Array], ...]:
    """What the importance samples of `x` share: the bottom-up pass (`bottom_up`)."""
    return self.bottom_up(x)

  @nn.nowrap
  def importance_noise(self, key: Array) -> tuple[Array, ...]:
    """Standard normal ε_i [Z_i] per layer for one sample of one example (no variables)."""
    keys = jax.random.split(key, len(self.latent_dims))
    return tuple(jax.random.normal(k, (z,)) for k, z in zip(keys, self.latent_dims))

  def log_weight_terms(self, stats: Sequence[tuple[Array, Array]], x: Array,
                       noise: Sequence[Array]) -> tuple[Array, Array, Array]:
    """log p(x | z_1), log p(z) and log q(z | x) of one sample per row, each [B] nats.

    log p(z) = log N(z_L; 0, I) + Σ_{i<L} log p(z_i | z_{i+1}) and
    log q(z | x) = Σ_i log q(z_i | z_{i+1}, x), at z drawn with `noise` (see
    `top_down`); x [B, ...] holds binary or grey targets for the Bernoulli
    decoder. Their combination log p(x|z) + log p(z) - log q(z|x) is the
    importance weight of IWAE (`ae_jax.likelihood`).
    """
    z, q_mean, q_log_var, p_mean, p_log_var = self.top_down(stats, noise)
    log_px_z = -losses.bernoulli_nll(self.decode(z[0]), self._flatten(x))
    log_pz = -sum(losses.gaussian_nll(z[i], p_mean[i], p_log_var[i])
                  for i in range(self.num_layers))
    log_qz = -sum(losses.gaussian_nll(z[i], q_mean[i], q_log_var[i])
                  for i in range(self.num_layers))
    return log_px_z, log_pz, log_qz
