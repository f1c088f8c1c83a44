"""Tests for ae_jax.layers.

Run as a script (`python nn_test.py IN.npz OUT.npz`), this file performs the
pmap part of the cross-replica EMA test; `test_pmap_ema_matches_one_device`
starts it in a subprocess with two fake CPU devices.
"""

import functools
import os
import subprocess
import sys

from absl.testing import parameterized
import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import layers


class ActivationTest(parameterized.TestCase):

  def test_known_names(self):
    x = jnp.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(layers.get_activation('relu')(x), [0, 0, 2])
    np.testing.assert_allclose(layers.get_activation(None)(x), x)
    np.testing.assert_allclose(layers.get_activation('sigmoid')(x),
                               1 / (1 + np.exp(-np.array(x))), rtol=1e-6)

  def test_unknown_name_raises(self):
    with pytest.raises(ValueError, match='Unknown activation'):
      layers.get_activation('swishy')


class MLPTest(parameterized.TestCase):

  def test_shapes_names_and_split(self):
    mlp = layers.MLP((5, 4, 3), activation='tanh', final_activation='sigmoid')
    x = jax.random.normal(jax.random.key(0), (6, 7))
    variables = mlp.init(jax.random.key(1), x)
    params = variables['params']
    assert sorted(params) == ['layers_0', 'layers_1', 'layers_2']
    assert params['layers_0']['kernel'].shape == (7, 5)
    y = mlp.apply(variables, x)
    assert y.shape == (6, 3)
    assert bool(jnp.all((y > 0) & (y < 1)))  # final sigmoid
    u = mlp.apply(variables, x, method=mlp.first)
    # first is the bare affine map x W + b.
    np.testing.assert_allclose(
        u, x @ params['layers_0']['kernel'] + params['layers_0']['bias'],
        rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(mlp.apply(variables, u, method=mlp.rest), y,
                               rtol=1e-6)

  def test_manual_forward(self):
    mlp = layers.MLP((3, 2), activation='relu')
    x = jax.random.normal(jax.random.key(2), (4, 5))
    variables = mlp.init(jax.random.key(3), x)
    p = variables['params']
    h = np.maximum(x @ p['layers_0']['kernel'] + p['layers_0']['bias'], 0)
    expected = h @ p['layers_1']['kernel'] + p['layers_1']['bias']
    np.testing.assert_allclose(mlp.apply(variables, x), expected, rtol=1e-5,
                               atol=1e-6)


class ReparameterizeTest(parameterized.TestCase):

  def test_value_and_gradients(self):
    key = jax.random.key(0)
    mean = jnp.array([[0.5, -1.0, 2.0]])
    log_var = jnp.array([[0.0, 1.0, -2.0]])
    eps = jax.random.normal(key, mean.shape)
    z = layers.reparameterize(key, mean, log_var)
    np.testing.assert_allclose(z, mean + jnp.exp(0.5 * log_var) * eps,
                               rtol=1e-6)
    g_mean, g_log_var = jax.grad(
        lambda m, lv: jnp.sum(layers.reparameterize(key, m, lv)),
        argnums=(0, 1))(mean, log_var)
    # dz/dmean = 1, dz/dlog_var = exp(log_var / 2) * eps / 2.
    np.testing.assert_allclose(g_mean, jnp.ones_like(mean))
    np.testing.assert_allclose(g_log_var, 0.5 * jnp.exp(0.5 * log_var) * eps,
                               rtol=1e-6)


def _flax_reference_check(ref, fast, x, *, rtol=2e-5):
  """`fast` has `ref`'s parameters and outputs, and the same gradients for every leaf.

  The reference is flax.linen's own module differentiated by JAX's rules; a
  random cotangent weights every output element differently, so a kernel
  gradient with a flipped, shifted or transposed kernel axis fails.
  """
  params = ref.init(jax.random.key(1), x)
  fast_params = fast.init(jax.random.key(1), x)
  chex.assert_trees_all_equal(params, fast_params)  # Same names, shapes, initial values.
  cotangent = jax.random.normal(jax.random.key(2), jax.eval_shape(ref.apply, params, x).shape)

  @jax.jit
  def outputs_and_grads(params, x):
    loss = lambda module: lambda p, x: jnp.sum(module.apply(p, x) * cotangent)
    return ((ref.apply(params, x), jax.grad(loss(ref), argnums=(0, 1))(params, x)),
            (fast.apply(params, x), jax.grad(loss(fast), argnums=(0, 1))(params, x)))

  reference, ours = outputs_and_grads(params, x)
  for want, got in zip(jax.tree.leaves(reference), jax.tree.leaves(ours)):
    scale = float(jnp.max(jnp.abs(want)))
    np.testing.assert_allclose(got, want, rtol=0, atol=rtol * scale)


_TRANSPOSED_CASES = [
    # (kernel, stride, padding, input spatial, C_in, C_out): kernels 3 and 4,
    # strides 1 to 3, 'SAME', 'VALID' and explicit padding, odd sizes.
    (3, 2, 'SAME', (7, 7), 5, 3), (4, 2, 'SAME', (5, 6), 3, 5), (4, 3, 'SAME', (5, 5), 5, 3),
    (3, 1, 'SAME', (6, 5), 5, 3), (4, 3, 'VALID', (4, 7), 5, 3),
    (4, 2, ((1, 2), (2, 1)), (5, 5), 5, 3),
]
# The same checks on more shapes, in the integration tier.
_MORE_TRANSPOSED_CASES = [
    (3, 2, 'SAME', (7, 6), 3, 5), (4, 2, 'SAME', (4, 4), 3, 5), (4, 1, 'SAME', (5, 5), 3, 5),
    (3, 3, 'SAME', (5, 4), 4, 4), (3, 2, 'VALID', (5, 7), 3, 5), (4, 1, 'VALID', (3, 4), 4, 4),
    (3, 2, ((0, 0), (1, 1)), (6, 5), 3, 5), (3, 3, ((2, 2), (0, 1)), (4, 5), 4, 4),
    (3, 2, 1, (5, 5), 3, 5), (2, 2, 'SAME', (4, 3), 5, 3),
]


def _check_conv_transpose(k, s, padding, size, c_in, c_out):
  x = jax.random.normal(jax.random.key(0), (3,) + size + (c_in,))
  _flax_reference_check(nn.ConvTranspose(c_out, (k, k), strides=(s, s), padding=padding),
                        layers.ConvTranspose(c_out, (k, k), strides=(s, s), padding=padding), x)


def _check_conv(k, s, padding, size, c_in, c_out):
  x = jax.random.normal(jax.random.key(0), (3,) + tuple(2 * n + 1 for n in size) + (c_in,))
  _flax_reference_check(nn.Conv(c_out, (k, k), strides=(s, s), padding=padding),
                        layers.Conv(c_out, (k, k), strides=(s, s), padding=padding), x)


@pytest.mark.integration
class FastConvolutionMoreShapesTest(parameterized.TestCase):

  @parameterized.parameters(*_MORE_TRANSPOSED_CASES)
  def test_conv_transpose_matches_flax(self, *case):
    _check_conv_transpose(*case)

  @parameterized.parameters(*_MORE_TRANSPOSED_CASES)
  def test_conv_matches_flax(self, *case):
    _check_conv(*case)


class FastConvolutionTest(parameterized.TestCase):
  """layers.ConvTranspose and layers.Conv against flax.linen's modules."""

  @parameterized.parameters(*_TRANSPOSED_CASES)
  def test_conv_transpose_matches_flax(self, *case):
    _check_conv_transpose(*case)

  @parameterized.parameters(*_TRANSPOSED_CASES[:4])
  def test_conv_matches_flax(self, *case):
    _check_conv(*case)

  @parameterized.parameters(((7,), (3,), (2,)), ((3, 4, 5), (3, 2, 2), (2, 1, 2)))
  def test_one_and_three_spatial_dims(self, size, kernel, strides):
    x = jax.random.normal(jax.random.key(0), (2,) + size + (3,))
    _flax_reference_check(nn.ConvTranspose(4, kernel, strides=strides),
                          layers.ConvTranspose(4, kernel, strides=strides), x)
    _flax_reference_check(nn.Conv(4, kernel, strides=strides),
                          layers.Conv(4, kernel, strides=strides), x)

  def test_no_bias_and_bfloat16(self):
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
    _flax_reference_check(nn.ConvTranspose(4, (3, 3), strides=(2, 2), use_bias=False),
                          layers.ConvTranspose(4, (3, 3), strides=(2, 2), use_bias=False), x)
    fast = layers.ConvTranspose(4, (3, 3), strides=(2, 2), dtype=jnp.bfloat16)
    params = fast.init(jax.random.key(1), x)
    grads = jax.grad(lambda p: jnp.sum(fast.apply(p, x).astype(jnp.float32)))(params)
    assert fast.apply(params, x).dtype == jnp.bfloat16
    assert grads['params']['kernel'].dtype == jnp.float32  # The parameter's dtype.

  def test_bad_arguments_are_named(self):
    x = jnp.ones((2, 5, 5, 3))
    with pytest.raises(ValueError, match="padding must be 'SAME', 'VALID'.*'CIRCULAR'"):
      layers.ConvTranspose(4, (3, 3), padding='CIRCULAR').init(jax.random.key(0), x)
    with pytest.raises(ValueError, match=r'2-d kernel expects inputs \[B, 2 spatial dims, C\]'):
      layers.Conv(4, (3, 3)).init(jax.random.key(0), jnp.ones((5, 5, 3)))

  def test_decoders_use_the_fast_layer(self):
    """Every transposed convolution the image models call is layers.ConvTranspose,
    and every convolution of the conv AE, conv VAE and VQ-VAE is layers.Conv."""
    from ae_jax import models  # pylint: disable=g-import-not-at-top
    called = []

    def record(next_fun, args, kwargs, context):
      called.append(type(context.module))
      return next_fun(*args, **kwargs)

    image = jnp.ones((1, 28, 28, 1))
    for model, args in [(models.ConvAutoencoder(), (image,)),
                        (models.ConvVAE(), (image, jax.random.key(0))),
                        (models.VQVAE(), (image,))]:
      with nn.intercept_methods(record):
        jax.eval_shape(model.init, jax.random.key(0), *args)
    assert layers.Conv in called and layers.ConvTranspose in called
    assert nn.Conv not in called and nn.ConvTranspose not in called
    called.clear()
    with nn.intercept_methods(record):
      jax.eval_shape(models.UNetDenoiser().init, jax.random.key(0), image)
    assert layers.ConvTranspose in called
    assert nn.ConvTranspose not in called


class ConvStackTest(parameterized.TestCase):

  def test_encoder_sizes(self):
    assert layers.conv_encoder_sizes((28, 28), 3) == [(28, 28), (14, 14),
                                                     (7, 7), (4, 4)]
    assert layers.conv_encoder_sizes((32, 32), 3) == [(32, 32), (16, 16),
                                                     (8, 8), (4, 4)]
    assert layers.conv_encoder_sizes((5, 9), 2) == [(5, 9), (3, 5), (2, 3)]

  @parameterized.parameters((28, 28), (32, 32), (30, 27), (9, 5))
  def test_decoder_inverts_encoder(self, height, width):
    sizes = layers.conv_encoder_sizes((height, width), 3)
    encoder = layers.ConvEncoder((2, 3, 4), kernel_size=4)
    decoder = layers.ConvDecoder((3, 2, 1), output_shapes=sizes[-2::-1],
                                kernel_size=4, activate_final=False)
    x = jnp.ones((2, height, width, 1))
    h, _ = encoder.init_with_output(jax.random.key(0), x)
    assert h.shape == (2,) + sizes[-1] + (4,)
    y, _ = decoder.init_with_output(jax.random.key(1), h)
    assert y.shape == x.shape

  def test_decoder_rejects_impossible_size(self):
    decoder = layers.ConvDecoder((1,), output_shapes=[(9, 9)])
    with pytest.raises(ValueError, match='cannot map'):
      decoder.init(jax.random.key(0), jnp.ones((1, 4, 4, 1)))

  def test_residual_stack_shape(self):
    stack = layers.ResidualStack(num_blocks=2, hidden_channels=3)
    x = jax.random.normal(jax.random.key(0), (2, 5, 5, 4))
    y, _ = stack.init_with_output(jax.random.key(1), x)
    assert y.shape == x.shape
    assert bool(jnp.all(y >= 0))  # ends with a ReLU


class NearestCodeTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_matches_brute_force_argmin(self):
    rng = np.random.RandomState(0)
    z = rng.normal(size=(50, 6)).astype(np.float32)
    codebook = rng.normal(size=(13, 6)).astype(np.float32)
    # Reference: the full [N, K, D] difference tensor in float64.
    dist = ((z[:, None, :].astype(np.float64) - codebook[None]) ** 2).sum(-1)
    expected = dist.argmin(1)
    got = self.variant(layers.nearest_code_indices)(z, codebook)
    assert got.dtype == jnp.int32
    np.testing.assert_array_equal(got, expected)

  @chex.variants(with_jit=True, without_jit=True)
  def test_perplexity_and_usage_by_hand(self):
    fn = self.variant(
        lambda idx: layers.perplexity_and_usage(layers.code_counts(idx, 4)))
    # Two codes used equally: entropy log 2, perplexity 2; 2 of 4 codes used.
    perplexity, usage = fn(jnp.array([0, 0, 1, 1]))
    np.testing.assert_allclose([perplexity, usage], [2.0, 0.5], rtol=1e-6)
    # All four equally: perplexity 4, usage 1.
    perplexity, usage = fn(jnp.array([[3, 2], [1, 0]]))
    np.testing.assert_allclose([perplexity, usage], [4.0, 1.0], rtol=1e-6)
    # p = (3/4, 1/4, 0, 0): H = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.5623351,
    # perplexity = e^H = 1.7547654.
    perplexity, usage = fn(jnp.array([2, 2, 2, 0]))
    np.testing.assert_allclose([perplexity, usage], [1.7547654, 0.5],
                               rtol=1e-6)

  def test_codebook_init_range(self):
    codebook = layers.codebook_init(jax.random.key(0), (500, 12))
    limit = np.sqrt(3.0 / 12)
    assert codebook.shape == (500, 12)
    assert float(jnp.max(jnp.abs(codebook))) <= limit
    # Uniform(-a, a) has variance a^2 / 3 = 1 / D.
    np.testing.assert_allclose(jnp.var(codebook), 1 / 12, rtol=0.05)


class VectorQuantizerTest(chex.TestCase):

  def _two_code_setup(self):
    # Codes e_0 = (0, 0), e_1 = (1, 1); z_e rows are nearest to e_0, e_1, e_1.
    codebook = jnp.array([[0.0, 0.0], [1.0, 1.0]])
    z_e = jnp.array([[0.2, -0.1], [0.9, 1.3], [0.7, 0.6]])
    vq = layers.VectorQuantizer(num_codes=2, code_dim=2)
    return vq, {'params': {'codebook': codebook}}, z_e

  @chex.variants(with_jit=True, without_jit=True)
  def test_forward_values(self):
    vq, variables, z_e = self._two_code_setup()
    out = self.variant(lambda v, z: vq.apply(v, z))(variables, z_e)
    np.testing.assert_array_equal(out.indices, [0, 1, 1])
    expected = np.array([[0.0, 0.0], [1.0, 1.0], [1.0, 1.0]])
    np.testing.assert_allclose(out.z_q, expected)
    np.testing.assert_allclose(out.quantized, expected, atol=1e-7)
    # p = (1/3, 2/3): perplexity = exp(-(1/3 ln 1/3 + 2/3 ln 2/3)).
    p = np.array([1 / 3, 2 / 3])
    np.testing.assert_allclose(out.perplexity, np.exp(-(p * np.log(p)).sum()),
                               rtol=1e-6)
    np.testing.assert_allclose(out.usage, 1.0)

  def test_straight_through_gradient(self):
    vq, variables, z_e = self._two_code_setup()
    c = jnp.array([[1.0, 2.0], [-3.0, 0.5], [4.0, -1.0]])

    def through_quantized(v, z):
      return jnp.sum(vq.apply(v, z).quantized * c)

    g_vars, g_z = jax.grad(through_quantized, argnums=(0, 1))(variables, z_e)
    # quantized = z_e + sg(z_q - z_e): d/dz_e = c exactly, nothing to codes.
    np.testing.assert_array_equal(g_z, c)
    np.testing.assert_array_equal(g_vars['params']['codebook'],
                                  jnp.zeros((2, 2)))

    def through_raw_codes(v, z):
      return jnp.sum(vq.apply(v, z).z_q * c)

    g_vars, g_z = jax.grad(through_raw_codes, argnums=(0, 1))(variables, z_e)
    # z_q = E[idx]: code 0 collects row 0 of c, code 1 rows 1 and 2;
    # nothing reaches z_e.
    np.testing.assert_array_equal(g_vars['params']['codebook'],
                                  [[1.0, 2.0], [1.0, -0.5]])
    np.testing.assert_array_equal(g_z, jnp.zeros_like(z_e))

  def test_quantizes_last_axis_of_a_grid(self):
    vq = layers.VectorQuantizer(num_codes=7, code_dim=3)
    z_e = jax.random.normal(jax.random.key(0), (2, 4, 5, 3))
    out, variables = vq.init_with_output(jax.random.key(1), z_e)
    assert variables['params']['codebook'].shape == (7, 3)
    assert out.indices.shape == (2, 4, 5)
    assert out.z_q.shape == z_e.shape
    np.testing.assert_array_equal(
        out.z_q, variables['params']['codebook'][out.indices])
    np.testing.assert_allclose(
        vq.apply(variables, out.indices, method=vq.embed), out.z_q)


# State for the hand-worked EMA update: K = 2 codes in D = 2, one previous
# update (count = 1), decay 0.5, epsilon 0.1 (large, to make the smoothing
# visible).
_EMA_STATE = {
    'codebook': np.array([[0.0, 0.0], [10.0, 10.0]], np.float32),
    'cluster_size': np.array([1.0, 2.0], np.float32),
    'embed_sum': np.array([[1.0, 1.0], [20.0, 20.0]], np.float32),
    'count': np.array(1, np.int32),
}
_EMA_BATCH = np.array([[1.0, 0.0], [0.0, 1.0], [9.0, 9.0], [1.0, 1.0]],
                      np.float32)


def _ema_by_hand():
  """The update of `_EMA_STATE` with `_EMA_BATCH`, worked with fractions.

  Assignments: (1,0), (0,1), (1,1) -> code 0; (9,9) -> code 1.
    batch counts n = (3, 1), sums s_0 = (2, 2), s_1 = (9, 9).
  t = 2, weight w = (1 - 0.5) / (1 - 0.5^2) = 2/3.
    N_0 = 1 + 2/3 (3 - 1) = 7/3,   N_1 = 2 + 2/3 (1 - 2) = 4/3
    m_0 = 1 + 2/3 (2 - 1) = 5/3,   m_1 = 20 + 2/3 (9 - 20) = 38/3  (per coord)
  Laplace: n = 11/3, N~_k = (N_k + 0.1) / (11/3 + 2 * 0.1) * 11/3
    N~_0 = (73/30) (11/3) (15/58) = 803/348,  N~_1 = 473/348  (sum 11/3)
  New codes: e_0 = (5/3) / (803/348) = 580/803,
             e_1 = (38/3) / (473/348) = 4408/473  (both coordinates).
  """
  return {
      'codebook': np.array([[580 / 803] * 2, [4408 / 473] * 2]),
      'cluster_size': np.array([7 / 3, 4 / 3]),
      'embed_sum': np.array([[5 / 3] * 2, [38 / 3] * 2]),
      'count': 2,
  }


class VectorQuantizerEMATest(chex.TestCase):

  def _vq(self, **kw):
    return layers.VectorQuantizerEMA(num_codes=2, code_dim=2, decay=0.5,
                                    epsilon=0.1, **kw)

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_update_by_hand(self):
    vq = self._vq()
    fn = self.variant(lambda s, z: vq.apply(
        {'vq_stats': s}, z, train=True, mutable=['vq_stats']))
    out, new = fn(_EMA_STATE, _EMA_BATCH)
    expected = _ema_by_hand()
    for name in ('codebook', 'cluster_size', 'embed_sum'):
      np.testing.assert_allclose(new['vq_stats'][name], expected[name],
                                 rtol=1e-6, err_msg=name)
    assert int(new['vq_stats']['count']) == expected['count']
    # The batch is quantized with the codebook from before the update.
    np.testing.assert_array_equal(out.indices, [0, 0, 1, 0])
    np.testing.assert_allclose(out.z_q, _EMA_STATE['codebook'][[0, 0, 1, 0]])

  def test_first_update_from_init_is_the_batch_mean(self):
    vq = layers.VectorQuantizerEMA(num_codes=3, code_dim=2, decay=0.99,
                                  epsilon=1e-5)
    variables = vq.init(jax.random.key(0), _EMA_BATCH, train=True)
    stats = variables['vq_stats']
    assert int(stats['count']) == 0
    np.testing.assert_array_equal(stats['cluster_size'], np.zeros(3))
    out, new = vq.apply(variables, _EMA_BATCH, train=True,
                        mutable=['vq_stats'])
    counts = np.bincount(np.asarray(out.indices), minlength=3)
    sums = np.zeros((3, 2))
    np.add.at(sums, np.asarray(out.indices), _EMA_BATCH)
    # w_1 = 1: N = n and m = s, whatever the decay.
    np.testing.assert_allclose(new['vq_stats']['cluster_size'], counts,
                               rtol=1e-6)
    np.testing.assert_allclose(new['vq_stats']['embed_sum'], sums, rtol=1e-6)
    used = counts > 0
    np.testing.assert_allclose(new['vq_stats']['codebook'][used],
                               sums[used] / counts[used, None], rtol=1e-4)
    np.testing.assert_allclose(new['vq_stats']['codebook'][~used], 0.0)

  def test_no_update_unless_training_and_mutable(self):
    vq = self._vq()
    variables = {'vq_stats': _EMA_STATE}
    _, new = vq.apply(variables, _EMA_BATCH, train=False, mutable=['vq_stats'])
    chex.assert_trees_all_equal(new['vq_stats'], _EMA_STATE)
    out = vq.apply(variables, _EMA_BATCH, train=True)  # immutable: no error.
    np.testing.assert_array_equal(out.indices, [0, 0, 1, 0])

  def test_codebook_gets_no_gradient(self):
    vq = self._vq()
    c = jnp.arange(8.0).reshape(4, 2)

    def loss(codebook, z):
      stats = dict(_EMA_STATE, codebook=codebook)
      return jnp.sum(vq.apply({'vq_stats': stats}, z).quantized * c)

    g_codebook, g_z = jax.grad(loss, argnums=(0, 1))(
        jnp.asarray(_EMA_STATE['codebook']), jnp.asarray(_EMA_BATCH))
    np.testing.assert_array_equal(g_z, c)
    np.testing.assert_array_equal(g_codebook, np.zeros((2, 2)))

  def test_restart_moves_dead_codes_onto_batch_outputs(self):
    # Code 1 sits far away, is never chosen, and its count decays below the
    # threshold; codes 0 and 2 are live.
    state = {
        'codebook': np.array([[0.0, 0.0], [100.0, 100.0], [5.0, 5.0]],
                             np.float32),
        'cluster_size': np.array([4.0, 1.5, 4.0], np.float32),
        'embed_sum': np.array([[0.0, 0.0], [150.0, 150.0], [20.0, 20.0]],
                              np.float32),
        'count': np.array(3, np.int32),
    }
    z = np.array([[0.1, 0.0], [0.0, 0.2], [5.0, 4.8], [5.2, 5.0]], np.float32)
    plain = layers.VectorQuantizerEMA(3, 2, decay=0.5, epsilon=1e-5)
    restarting = layers.VectorQuantizerEMA(3, 2, decay=0.5, epsilon=1e-5,
                                          dead_code_threshold=1.0)
    _, ref = plain.apply({'vq_stats': state}, z, train=True,
                         mutable=['vq_stats'])
    ref = ref['vq_stats']
    # w_4 = 0.5 / (1 - 0.5^4) = 8/15: N_1 = 1.5 (1 - 8/15) = 0.7 < 1.
    np.testing.assert_allclose(ref['cluster_size'][1], 0.7, rtol=1e-6)
    run = jax.jit(lambda s, z, key: restarting.apply(
        {'vq_stats': s}, z, train=True, mutable=['vq_stats'],
        rngs={'restart': key}))
    _, new = run(state, z, jax.random.key(7))
    new = new['vq_stats']
    live = np.array([0, 2])
    for name in ('codebook', 'cluster_size', 'embed_sum'):
      np.testing.assert_allclose(new[name][live], ref[name][live], rtol=1e-6,
                                 err_msg=name)
    restarted = np.asarray(new['codebook'][1])
    assert any(np.array_equal(restarted, row) for row in z), restarted
    np.testing.assert_allclose(new['embed_sum'][1], restarted)
    np.testing.assert_allclose(new['cluster_size'][1], 1.0)
    # Deterministic given the key.
    _, again = run(state, z, jax.random.key(7))
    chex.assert_trees_all_equal(again['vq_stats'], new)

  def test_restart_needs_rng(self):
    vq = self._vq(dead_code_threshold=1.0)
    with pytest.raises(Exception, match='restart'):
      vq.apply({'vq_stats': _EMA_STATE}, _EMA_BATCH, train=True,
               mutable=['vq_stats'])


class RestartDeadCodesTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_dead_codes_move_live_codes_stay(self):
    codebook = jnp.array([[1.0, 1.0], [2.0, 2.0], [3.0, 3.0], [4.0, 4.0]])
    counts = jnp.array([5.0, 0.0, 3.0, 0.5])
    z = jnp.arange(20.0).reshape(10, 2) + 100.0
    fn = self.variant(
        lambda cb, n, z, key: layers.restart_dead_codes(cb, n, z, key,
                                                       threshold=1.0))
    new, dead = fn(codebook, counts, z, jax.random.key(0))
    np.testing.assert_array_equal(dead, [False, True, False, True])
    np.testing.assert_array_equal(new[0], codebook[0])
    np.testing.assert_array_equal(new[2], codebook[2])
    rows = [tuple(r) for r in np.asarray(z)]
    assert tuple(np.asarray(new[1])) in rows
    assert tuple(np.asarray(new[3])) in rows
    # Without replacement (N >= K): two dead codes get different rows.
    assert not np.array_equal(new[1], new[3])
    again, _ = fn(codebook, counts, z, jax.random.key(0))
    np.testing.assert_array_equal(again, new)

  def test_fewer_vectors_than_codes(self):
    codebook = jnp.zeros((6, 2))
    z = jnp.array([[1.0, 2.0], [3.0, 4.0]])
    new, dead = layers.restart_dead_codes(codebook, jnp.zeros(6), z,
                                         jax.random.key(1), threshold=1.0)
    assert bool(jnp.all(dead))
    rows = [tuple(r) for r in np.asarray(z)]
    assert all(tuple(r) in rows for r in np.asarray(new))


def _pmap_main(in_path: str, out_path: str) -> None:
  """Runs the EMA update under pmap on 2 fake devices (see the test below)."""
  assert jax.local_device_count() == 2, jax.devices()
  data = np.load(in_path)
  stats = {k[len('stats_'):]: data[k] for k in data.files
           if k.startswith('stats_')}
  batches = data['batches']  # [steps, 2 replicas, N, D]
  num_codes, code_dim = stats['codebook'].shape
  vq = layers.VectorQuantizerEMA(num_codes, code_dim, decay=0.9,
                                axis_name='batch')

  @functools.partial(jax.pmap, axis_name='batch')
  def step(s, z):
    _, new = vq.apply({'vq_stats': s}, z, train=True, mutable=['vq_stats'])
    return new['vq_stats']

  replicated = jax.tree.map(lambda a: np.stack([a, a]), stats)
  for z in batches:
    replicated = jax.block_until_ready(step(replicated, z))
  results = {f'ema_{k}': np.asarray(v) for k, v in replicated.items()}

  restarting = layers.VectorQuantizerEMA(num_codes, code_dim, decay=0.9,
                                        axis_name='batch',
                                        dead_code_threshold=2.0)

  @functools.partial(jax.pmap, axis_name='batch')
  def restart_step(s, z):
    _, new = restarting.apply({'vq_stats': s}, z, train=True,
                              mutable=['vq_stats'],
                              rngs={'restart': jax.random.key(3)})
    return new['vq_stats']

  restarted = jax.block_until_ready(
      restart_step(jax.tree.map(lambda a: np.stack([a, a]), stats),
                   batches[0]))
  results |= {f'restart_{k}': np.asarray(v) for k, v in restarted.items()}
  np.savez(out_path, **results)


def test_pmap_ema_matches_one_device(tmp_path):
  in_path, out_path = str(tmp_path / 'in.npz'), str(tmp_path / 'out.npz')
  rng = np.random.RandomState(0)
  num_codes, code_dim = 8, 3
  # Two steps, two replicas of 12 vectors each; shifted so codes are unevenly
  # used and some stay dead.
  batches = (rng.normal(size=(2, 2, 12, code_dim)) + 0.3).astype(np.float32)
  vq = layers.VectorQuantizerEMA(num_codes, code_dim, decay=0.9)
  stats = vq.init(jax.random.key(0), batches[0, 0])['vq_stats']
  np.savez(in_path, batches=batches,
           **{f'stats_{k}': np.asarray(v) for k, v in stats.items()})

  env = dict(os.environ)
  env['XLA_FLAGS'] = (env.get('XLA_FLAGS', '') +
                      ' --xla_force_host_platform_device_count=2'
                      ' --xla_cpu_multi_thread_eigen=false').strip()
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run(
      [sys.executable, os.path.abspath(__file__), in_path, out_path],
      env=env, capture_output=True, text=True, timeout=120, check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr
  got = np.load(out_path)

  # One device on the concatenated batch of both replicas.
  state = {'vq_stats': stats}
  for z in batches:
    _, state = vq.apply(state, z.reshape(-1, code_dim), train=True,
                        mutable=['vq_stats'])
  for name, want in state['vq_stats'].items():
    replicas = got[f'ema_{name}']
    np.testing.assert_array_equal(replicas[0], replicas[1], err_msg=name)
    np.testing.assert_allclose(replicas[0], want, rtol=1e-5, atol=1e-6,
                               err_msg=name)

  # Restarts keep the replicas identical and draw from the global batch.
  codebooks = got['restart_codebook']
  np.testing.assert_array_equal(codebooks[0], codebooks[1])
  _, no_restart = vq.apply({'vq_stats': stats},
                           batches[0].reshape(-1, code_dim), train=True,
                           mutable=['vq_stats'])
  dead = np.asarray(no_restart['vq_stats']['cluster_size']) < 2.0
  assert dead.any() and (~dead).any(), no_restart['vq_stats']['cluster_size']
  rows = {tuple(r) for r in batches[0].reshape(-1, code_dim)}
  assert all(tuple(c) in rows for c in codebooks[0][dead])
  np.testing.assert_allclose(codebooks[0][~dead],
                             no_restart['vq_stats']['codebook'][~dead],
                             rtol=1e-5, atol=1e-6)


if __name__ == '__main__':
  _pmap_main(sys.argv[1], sys.argv[2])
