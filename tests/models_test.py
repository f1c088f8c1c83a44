"""Tests for ae_jax.models."""

import dataclasses

from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import models
from ae_jax import layers


def _images(shape, seed=0):
  return jax.random.uniform(jax.random.key(seed), shape)


class MLPAutoencoderTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_default_shapes_and_compose(self):
    model = models.MLPAutoencoder()
    x = _images((3, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    out = self.variant(model.apply)(variables, x)
    assert isinstance(out, models.AEOutput)
    assert out.logits.shape == x.shape and out.z.shape == (3, 32)
    chex.assert_tree_all_finite(out)
    z = model.apply(variables, x, method=model.encode)
    flat = model.apply(variables, z, method=model.decode)
    assert flat.shape == (3, 784)
    np.testing.assert_allclose(z, out.z, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(flat.reshape(x.shape), out.logits, rtol=1e-5,
                               atol=1e-5)

  def test_param_tree_is_the_card(self):
    model = models.MLPAutoencoder()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 784)))
    shapes = jax.tree.map(jnp.shape, variables['params'])
    enc = [shapes['encoder'][f'layers_{i}']['kernel'] for i in range(3)]
    dec = [shapes['decoder'][f'layers_{i}']['kernel'] for i in range(3)]
    assert enc == [(784, 256), (256, 128), (128, 32)]
    assert dec == [(32, 128), (128, 256), (256, 784)]

  def test_contractive_split(self):
    model = models.MLPAutoencoder(input_dim=6, hidden=(5, 4), latent_dim=3,
                                  activation='tanh',
                                  latent_activation='sigmoid')
    x = jax.random.normal(jax.random.key(1), (2, 6))
    variables = model.init(jax.random.key(0), x)
    kernel = models.MLPAutoencoder.first_kernel(variables)
    assert kernel is variables['params']['encoder']['layers_0']['kernel']
    assert models.MLPAutoencoder.first_kernel(variables['params']) is kernel
    assert kernel.shape == (6, 5)
    u = model.apply(variables, x, method=model.encode_first)
    z = model.apply(variables, x, method=model.encode)
    np.testing.assert_allclose(
        model.apply(variables, u, method=model.encode_rest), z, rtol=1e-6)
    assert bool(jnp.all((z > 0) & (z < 1)))  # latent sigmoid

    # Chain rule through the linear first layer: J_f(x) = J_rest(u) W1^T,
    # checked on one example (encode_rest accepts an unbatched u).
    def encode_one(x_d):
      return model.apply(variables, x_d[None], method=model.encode)[0]

    def rest_one(u_h):
      return model.apply(variables, u_h, method=model.encode_rest)

    jac_x = jax.jacfwd(encode_one)(x[0])
    jac_u = jax.jacfwd(rest_one)(u[0])
    np.testing.assert_allclose(jac_x, jac_u @ kernel.T, rtol=1e-5, atol=1e-6)

  def test_rejects_wrong_input_size(self):
    model = models.MLPAutoencoder()
    with pytest.raises(ValueError, match='input_dim'):
      model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


class MLPVAETest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_default_shapes_and_reparameterization(self):
    model = models.MLPVAE()
    x = _images((3, 784))
    key = jax.random.key(5)
    variables = model.init(jax.random.key(0), x, key)
    assert variables['params']['encoder']['layers_0']['kernel'].shape == (
        784, 400)
    assert variables['params']['mean']['kernel'].shape == (400, 20)
    assert variables['params']['decoder']['layers_1']['kernel'].shape == (
        400, 784)
    out = self.variant(model.apply)(variables, x, key)
    assert isinstance(out, models.VAEOutput)
    assert out.logits.shape == x.shape
    assert out.z.shape == out.mean.shape == out.log_var.shape == (3, 20)
    chex.assert_tree_all_finite(out)
    mean, log_var = model.apply(variables, x, method=model.encode)
    eps = jax.random.normal(key, mean.shape)
    np.testing.assert_allclose(out.z, mean + jnp.exp(0.5 * log_var) * eps,
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.apply(variables, out.z, method=model.decode), out.logits,
        rtol=1e-5, atol=1e-5)

  def test_keeps_input_shape_and_key_matters(self):
    model = models.MLPVAE(input_dim=64, hidden=(8,), latent_dim=2)
    x = _images((2, 8, 8, 1))
    variables = model.init(jax.random.key(0), x, jax.random.key(1))
    a = model.apply(variables, x, jax.random.key(1))
    b = model.apply(variables, x, jax.random.key(2))
    assert a.logits.shape == x.shape
    np.testing.assert_array_equal(a.mean, b.mean)
    assert not np.allclose(a.z, b.z)


class ConvAutoencoderTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((28, 28, 1), (32, 32, 3))
  def test_shapes_and_compose(self, height, width, channels):
    model = models.ConvAutoencoder(image_shape=(height, width, channels))
    x = _images((2, height, width, channels))
    variables = model.init(jax.random.key(0), x)
    out = self.variant(model.apply)(variables, x)
    assert out.logits.shape == x.shape and out.z.shape == (2, 16)
    chex.assert_tree_all_finite(out)
    z = model.apply(variables, x, method=model.encode)
    np.testing.assert_allclose(
        model.apply(variables, z, method=model.decode), out.logits,
        rtol=1e-5, atol=1e-5)

  def test_card_architecture(self):
    model = models.ConvAutoencoder()
    variables = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
    s = jax.tree.map(jnp.shape, variables['params'])
    assert s['encoder']['Conv_0']['kernel'] == (3, 3, 1, 32)
    assert s['encoder']['Conv_1']['kernel'] == (3, 3, 32, 64)
    assert s['latent']['kernel'] == (7 * 7 * 64, 16)
    assert s['decoder_dense']['kernel'] == (16, 7 * 7 * 64)
    assert s['decoder']['ConvTranspose_0']['kernel'] == (3, 3, 64, 64)
    assert s['decoder']['ConvTranspose_1']['kernel'] == (3, 3, 64, 32)
    assert s['output']['kernel'] == (3, 3, 32, 1)

  def test_odd_size_is_cropped_back(self):
    model = models.ConvAutoencoder(image_shape=(30, 26, 2), channels=(4, 8),
                                   latent_dim=3)
    x = _images((2, 30, 26, 2))
    out, _ = jax.eval_shape(model.init_with_output, jax.random.key(0), x)  # Shapes only.
    assert out.logits.shape == x.shape

  def test_rejects_wrong_image_shape(self):
    model = models.ConvAutoencoder()
    with pytest.raises(ValueError, match='Expected images'):
      model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 1)))


class ConvVAETest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((28, 28, 1), (32, 32, 3))
  def test_shapes_and_compose(self, height, width, channels):
    model = models.ConvVAE(latent_dim=8, image_shape=(height, width, channels))
    x = _images((2, height, width, channels))
    key = jax.random.key(3)
    variables = model.init(jax.random.key(0), x, key)
    # Both sizes reach a 4x4x128 bottleneck (28->14->7->4, 32->16->8->4).
    assert variables['params']['mean']['kernel'].shape == (4 * 4 * 128, 8)
    out = self.variant(model.apply)(variables, x, key)
    assert out.logits.shape == x.shape
    assert out.z.shape == out.mean.shape == out.log_var.shape == (2, 8)
    chex.assert_tree_all_finite(out)
    mean, log_var = model.apply(variables, x, method=model.encode)
    np.testing.assert_allclose(
        out.z, layers.reparameterize(key, mean, log_var), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.apply(variables, out.z, method=model.decode), out.logits,
        rtol=1e-5, atol=1e-5)

  @parameterized.parameters((28, 28, 1), (32, 32, 3), (27, 33, 2), (8, 8, 4))
  def test_output_shape_equals_input_shape(self, height, width, channels):
    model = models.ConvVAE(latent_dim=2, channels=(2, 3, 4),
                           image_shape=(height, width, channels))
    x = _images((1, height, width, channels))
    out, _ = model.init_with_output(jax.random.key(0), x, jax.random.key(1))
    assert out.logits.shape == x.shape


class VQVAETest(chex.TestCase):

  def _small(self, **kw):
    return models.VQVAE(num_codes=8, code_dim=4, hidden_channels=8,
                        res_channels=4, num_res_blocks=1, **kw)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.parameters((28, 28, 1, False), (32, 32, 3, True))
  def test_shapes_and_compose(self, height, width, channels, ema):
    model = models.VQVAE(ema=ema, image_shape=(height, width, channels))
    x = _images((2, height, width, channels))
    variables = model.init(jax.random.key(0), x)
    out = self.variant(model.apply)(variables, x)
    assert isinstance(out, models.VQVAEOutput)
    grid = (2, height // 4, width // 4)
    assert out.logits.shape == x.shape
    assert out.z_e.shape == out.z_q.shape == out.quantized.shape == grid + (
        16,)
    assert out.indices.shape == grid and out.indices.dtype == jnp.int32
    chex.assert_tree_all_finite(out)
    assert 1.0 <= float(out.perplexity) <= 64.0
    assert 0.0 < float(out.usage) <= 1.0
    z_e = model.apply(variables, x, method=model.encode)
    np.testing.assert_allclose(z_e, out.z_e, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        model.apply(variables, out.quantized, method=model.decode),
        out.logits, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(
        model.apply(variables, out.indices, method=model.decode_indices),
        out.logits, rtol=1e-5, atol=1e-5)

  def test_codebook_location(self):
    x = _images((1, 28, 28, 1))
    # Shapes only: traced, not run op by op.
    plain = jax.eval_shape(self._small().init, jax.random.key(0), x)
    assert plain['params']['quantizer']['codebook'].shape == (8, 4)
    assert 'vq_stats' not in plain
    ema = jax.eval_shape(self._small(ema=True).init, jax.random.key(0), x)
    assert 'quantizer' not in ema['params']
    assert ema['vq_stats']['quantizer']['codebook'].shape == (8, 4)

  def test_ema_train_updates_state(self):
    model = self._small(ema=True)
    x = _images((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    _, frozen = model.apply(variables, x, train=False, mutable=['vq_stats'])
    chex.assert_trees_all_equal(frozen, {'vq_stats': variables['vq_stats']})
    out, new = jax.jit(lambda v, x: model.apply(
        v, x, train=True, mutable=['vq_stats']))(variables, x)
    stats = new['vq_stats']['quantizer']
    assert int(stats['count']) == 1
    # First update: EMA counts are the batch counts.
    np.testing.assert_allclose(
        stats['cluster_size'], np.bincount(np.ravel(out.indices), minlength=8),
        rtol=1e-6)

  def test_ema_dead_code_restart_uses_rng(self):
    model = self._small(ema=True, dead_code_threshold=1.0)
    x = _images((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)
    out, new = model.apply(variables, x, train=True, mutable=['vq_stats'],
                           rngs={'restart': jax.random.key(1)})
    stats = new['vq_stats']['quantizer']
    unused = np.bincount(np.ravel(out.indices), minlength=8) == 0
    assert unused.any()
    # Restarted codes sit on encoder outputs with EMA count 1.
    rows = {tuple(r) for r in np.asarray(out.z_e).reshape(-1, 4)}
    assert all(tuple(c) in rows for c in np.asarray(stats['codebook'])[unused])
    np.testing.assert_allclose(stats['cluster_size'][unused], 1.0)

  def test_gradients(self):
    model = self._small()
    x = _images((2, 28, 28, 1))
    variables = model.init(jax.random.key(0), x)

    def recon(v):
      return jnp.mean(model.apply(v, x).logits ** 2)

    def codebook_term(v):
      out = model.apply(v, x)
      return jnp.mean((jax.lax.stop_gradient(out.z_e) - out.z_q) ** 2)

    g = jax.grad(recon)(variables)
    chex.assert_tree_all_finite(g)
    # The reconstruction reaches the encoder (straight-through) but not the
    # codebook; the codebook term reaches only the codebook.
    assert float(jnp.abs(g['params']['pre_quantization']['kernel']).sum()) > 0
    np.testing.assert_array_equal(g['params']['quantizer']['codebook'], 0.0)
    g = jax.grad(codebook_term)(variables)
    assert float(jnp.abs(g['params']['quantizer']['codebook']).sum()) > 0
    np.testing.assert_array_equal(g['params']['pre_quantization']['kernel'],
                                  0.0)

  def test_non_ema_rejects_ema_options(self):
    with pytest.raises(ValueError, match='ema=True'):
      self._small(dead_code_threshold=1.0).init(
          jax.random.key(0), jnp.zeros((1, 28, 28, 1)))


@pytest.mark.parametrize('cls, family', [
    (models.MLPAutoencoder, 'ae'), (models.ConvAutoencoder, 'ae'), (models.MLPVAE, 'vae'),
    (models.ConvVAE, 'vae'), (models.VQVAE, 'vqvae'), (models.LadderVAE, 'ladder_vae'),
    (models.SequenceVAE, 'sequence_vae'),
])
def test_family_is_a_class_attribute_not_a_field(cls, family):
  # The applications read `model.family`; it is no constructor argument.
  assert cls.family == family
  assert 'family' not in {f.name for f in dataclasses.fields(cls)}
