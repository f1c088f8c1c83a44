"""Tests for ae_jax.losses: closed forms, references and numerical gradients."""

import functools
import math

from absl.testing import absltest
from absl.testing import parameterized
import chex
import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from ae_jax import losses


def _rng(seed: int = 0) -> np.random.Generator:
  return np.random.default_rng(seed)


def _sigmoid_np(x):
  return 1.0 / (1.0 + np.exp(-x))


# ----------------------------------------------------------------------------
# Reconstruction losses.
# ----------------------------------------------------------------------------


class ReconstructionTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_mse_and_sse_match_numpy(self):
    predictions = _rng(0).normal(size=(3, 4, 5)).astype(np.float32)
    targets = _rng(1).normal(size=(3, 4, 5)).astype(np.float32)
    squared = (predictions.astype(np.float64) - targets) ** 2
    np.testing.assert_allclose(
        self.variant(losses.mse)(predictions, targets),
        squared.mean(axis=(1, 2)), rtol=1e-5)
    np.testing.assert_allclose(
        self.variant(losses.sum_squared_error)(predictions, targets),
        squared.sum(axis=(1, 2)), rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bernoulli_nll_matches_naive_formula_on_moderate_logits(self):
    logits = _rng(2).uniform(-5.0, 5.0, size=(4, 6))
    targets = _rng(3).uniform(0.0, 1.0, size=(4, 6))
    p = _sigmoid_np(logits)
    expected = -(targets * np.log(p) + (1 - targets) * np.log(1 - p)).sum(-1)
    got = self.variant(losses.bernoulli_nll)(
        logits.astype(np.float32), targets.astype(np.float32))
    chex.assert_shape(got, (4,))
    np.testing.assert_allclose(got, expected, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  def test_bernoulli_nll_is_finite_and_exact_for_extreme_logits(self):
    # softplus(l) - t*l by hand: l=100,t=1 -> log(1+e^-100) ~ 3.7e-44 ~ 0;
    # l=-100,t=0 -> ~0; l=100,t=0 -> ~100; l=-100,t=1 -> ~100;
    # l=100,t=0.5 -> ~50. A sigmoid-then-log version gives inf or nan here.
    logits = jnp.array([[100.0], [-100.0], [100.0], [-100.0], [100.0]])
    targets = jnp.array([[1.0], [0.0], [0.0], [1.0], [0.5]])
    nll_fn = self.variant(losses.bernoulli_nll)
    np.testing.assert_allclose(
        nll_fn(logits, targets), [0.0, 0.0, 100.0, 100.0, 50.0], atol=1e-5)
    # d/dl = sigmoid(l) - t.
    grads = jax.grad(lambda l: jnp.sum(nll_fn(l, targets)))(logits)
    np.testing.assert_allclose(
        grads[:, 0], [0.0, 0.0, 1.0, -1.0, 0.5], atol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_gaussian_nll_matches_scipy(self):
    x = _rng(4).normal(size=(3, 5))
    mean = _rng(5).normal(size=(3, 5))
    log_var = _rng(6).uniform(-2.0, 2.0, size=(3, 5))
    expected = -stats.norm.logpdf(
        x, loc=mean, scale=np.exp(0.5 * log_var)).sum(-1)
    got = self.variant(losses.gaussian_nll)(
        *(a.astype(np.float32) for a in (x, mean, log_var)))
    np.testing.assert_allclose(got, expected, rtol=1e-5)


# ----------------------------------------------------------------------------
# KL terms.
# ----------------------------------------------------------------------------


class GaussianKLTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_gaussian_kl_hand_computed(self):
    # KL = 1/2 sum_j (s2_j + m_j^2 - 1 - log s2_j), by hand:
    #   m = (0.5, -1, 0), s2 = (1, 0.25, 2):
    #   j=1: 1 + 0.25 - 1 - 0            = 0.25
    #   j=2: 0.25 + 1 - 1 - log 0.25     = 0.25 + 1.3862944 = 1.6362944
    #   j=3: 2 + 0 - 1 - log 2           = 1 - 0.6931472   = 0.3068528
    #   KL = (0.25 + 1.6362944 + 0.3068528) / 2 = 1.0965736.
    # The second example is N(0, I) itself: KL = 0.
    mean = jnp.array([[0.5, -1.0, 0.0], [0.0, 0.0, 0.0]])
    log_var = jnp.log(jnp.array([[1.0, 0.25, 2.0], [1.0, 1.0, 1.0]]))
    np.testing.assert_allclose(
        self.variant(losses.gaussian_kl)(mean, log_var), [1.0965736, 0.0],
        rtol=1e-6, atol=1e-7)

  def test_gaussian_kl_agrees_with_monte_carlo(self):
    mean = np.array([0.5, -1.0, 0.0])
    std = np.sqrt(np.array([1.0, 0.25, 2.0]))
    z = mean + std * _rng(7).normal(size=(100_000, 3))
    # KL(q || p) = E_q[log q(z) - log p(z)].
    log_ratio = (stats.norm.logpdf(z, mean, std) - stats.norm.logpdf(z)).sum(-1)
    estimate = log_ratio.mean()
    standard_error = log_ratio.std(ddof=1) / math.sqrt(len(log_ratio))
    exact = losses.gaussian_kl(
        jnp.asarray(mean[None]), jnp.asarray(np.log(std**2)[None]))[0]
    self.assertLess(abs(estimate - float(exact)), 4 * standard_error)

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_between_hand_computed_and_matches_standard_prior(self):
    kl_between = self.variant(losses.gaussian_kl_between)
    # q = N(1, 1), p = N(0, 4): 1/2 (log 4 - 0 + (1 + 1)/4 - 1)
    #   = 1/2 (1.3862944 - 0.5) = 0.4431472.
    np.testing.assert_allclose(
        kl_between(jnp.array([[1.0]]), jnp.array([[0.0]]),
                   jnp.array([[0.0]]), jnp.log(jnp.array([[4.0]]))),
        [0.4431472], rtol=1e-6)
    mean = jnp.asarray(_rng(8).normal(size=(4, 3)), jnp.float32)
    log_var = jnp.asarray(_rng(9).normal(size=(4, 3)), jnp.float32)
    np.testing.assert_allclose(
        kl_between(mean, log_var, jnp.zeros_like(mean), jnp.zeros_like(mean)),
        losses.gaussian_kl(mean, log_var), rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_is_nonnegative_and_zero_only_for_equal_distributions(self):
    kl_between = self.variant(losses.gaussian_kl_between)
    rng = _rng(10)
    mean_q, log_var_q, mean_p, log_var_p = (
        jnp.asarray(rng.normal(size=(64, 3)), jnp.float32) for _ in range(4))
    kl = kl_between(mean_q, log_var_q, mean_p, log_var_p)
    self.assertTrue(np.all(np.asarray(kl) > 0.0))
    np.testing.assert_allclose(
        kl_between(mean_q, log_var_q, mean_q, log_var_q), np.zeros(64),
        atol=1e-6)
    # Moving one coordinate of the mean away from p makes it positive again.
    np.testing.assert_array_less(
        0.0, kl_between(mean_q.at[:, 0].add(1e-2), log_var_q, mean_q,
                        log_var_q))


# ----------------------------------------------------------------------------
# Sparsity.
# ----------------------------------------------------------------------------


def _kl_sparsity_np(h, rho):
  rho_hat = h.mean(axis=0)
  return np.sum(rho * np.log(rho / rho_hat)
                + (1 - rho) * np.log((1 - rho) / (1 - rho_hat)))


class SparsityTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_l1_matches_numpy(self):
    h = _rng(11).normal(size=(3, 2, 4)).astype(np.float32)
    np.testing.assert_allclose(
        self.variant(losses.l1_sparsity)(h), np.abs(h).sum(axis=(1, 2)),
        rtol=1e-6)

  @chex.variants(with_jit=True, without_jit=True)
  def test_kl_sparsity_hand_computed_and_matches_numpy(self):
    kl_fn = self.variant(functools.partial(losses.kl_sparsity, rho=0.2))
    # rho_hat = (0.2, 0.5): unit 1 is on target (KL 0); unit 2:
    # 0.2 log(0.2/0.5) + 0.8 log(0.8/0.5) = -0.1832581 + 0.3760036 = 0.1927455.
    h = jnp.array([[0.1, 0.5], [0.3, 0.5]])
    np.testing.assert_allclose(kl_fn(h), 0.1927455, rtol=1e-5)
    h = _rng(12).uniform(0.01, 0.99, size=(16, 7))
    np.testing.assert_allclose(
        kl_fn(h.astype(np.float32)), _kl_sparsity_np(h, 0.2), rtol=1e-5)

  def test_kl_sparsity_clips_dead_units_to_a_finite_value(self):
    eps = 1e-6
    value = losses.kl_sparsity(jnp.zeros((8, 3)), rho=0.05, eps=eps)
    # rho_hat is clipped to eps for each of the 3 units.
    expected = 3 * (0.05 * np.log(0.05 / eps) + 0.95 * np.log(0.95 / (1 - eps)))
    np.testing.assert_allclose(value, expected, rtol=1e-4)


# ----------------------------------------------------------------------------
# Numerical gradients (float64, central differences in a random direction).
# ----------------------------------------------------------------------------


class NumericalGradientTest(parameterized.TestCase):

  def test_losses_have_correct_gradients(self):
    rng = _rng(13)
    with jax.enable_x64(True):
      a, b, c = (jnp.asarray(rng.normal(size=(3, 4))) for _ in range(3))
      targets = jnp.asarray(rng.uniform(size=(3, 4)))
      h = jnp.asarray(rng.uniform(0.05, 0.95, size=(6, 4)))
      cases = {
          'bernoulli_nll': (lambda l: losses.bernoulli_nll(l, targets), (a,)),
          # Its custom JVP, in the targets too (soft targets may carry gradients).
          'bernoulli_nll_targets': (losses.bernoulli_nll, (a, targets)),
          'bernoulli_nll_image': (losses.bernoulli_nll,
                                  (a.reshape(3, 2, 2, 1), targets.reshape(3, 2, 2, 1))),
          'gaussian_nll': (losses.gaussian_nll, (a, b, c)),
          'gaussian_kl': (losses.gaussian_kl, (a, b)),
          'gaussian_kl_between': (losses.gaussian_kl_between, (a, b, c, a)),
          'kl_sparsity': (functools.partial(losses.kl_sparsity, rho=0.1),
                          (h,)),
      }
      for name, (fn, args) in cases.items():
        with self.subTest(name):
          jax.test_util.check_grads(fn, args, order=2, modes=('fwd', 'rev'))


# ----------------------------------------------------------------------------
# Contractive penalty.
# ----------------------------------------------------------------------------


def nn_activation(name):
  return {'tanh': jnp.tanh, 'sigmoid': jax.nn.sigmoid, 'relu': jax.nn.relu}[name]


def _init_mlp(sizes, seed):
  rng = _rng(seed)
  return [(jnp.asarray(rng.normal(size=(m, n)) / math.sqrt(m), jnp.float32),
           jnp.asarray(0.1 * rng.normal(size=(n,)), jnp.float32))
          for m, n in zip(sizes[:-1], sizes[1:])]


def _mlp_rest(layers, u):
  """Applies tanh to u, then the remaining dense layers (tanh between)."""
  h = jnp.tanh(u)
  for i, (kernel, bias) in enumerate(layers[1:]):
    h = h @ kernel + bias
    if i < len(layers) - 2:
      h = jax.nn.sigmoid(h)
  return h


def _mlp_encode(layers, x):
  kernel, bias = layers[0]
  return _mlp_rest(layers, x @ kernel + bias)


def _dense_first(layers, x_BxD, mode='auto'):
  kernel, bias = layers[0]
  return losses.contractive_penalty_dense_first(
      functools.partial(_mlp_rest, layers), x_BxD @ kernel + bias, kernel,
      mode=mode)


# Shapes (D, H1, H2, H, B). The first uses the Gram form in dense_first
# (multiply-adds: direct B*H*H1*D = 1440 > Gram D*H1^2 + B*H*H1^2 = 1224),
# the second the direct form (D < H1: 48*B = 240 <= 192 + 128*B = 832).
_MLP_SHAPES = (
    ('gram', (10, 6, 5, 3, 8)),
    ('direct', (3, 8, 4, 2, 5)),
)


class ContractiveTest(chex.TestCase):

  def _one_layer(self):
    rng = _rng(14)
    w_HxD = jnp.asarray(rng.normal(size=(4, 6)), jnp.float32)
    b_H = jnp.asarray(rng.normal(size=(4,)), jnp.float32)
    x_BxD = jnp.asarray(rng.uniform(size=(5, 6)), jnp.float32)
    return w_HxD, b_H, x_BxD

  @chex.variants(with_jit=True, without_jit=True)
  def test_one_layer_sigmoid_closed_form(self):
    w_HxD, b_H, x_BxD = self._one_layer()
    # Rifai et al. 2011, Eq. 4: for h = sigmoid(W x + b),
    # ||J||_F^2 = sum_j (h_j (1 - h_j))^2 sum_i W_ji^2.
    h_BxH = jax.nn.sigmoid(x_BxD @ w_HxD.T + b_H)
    expected = jnp.sum(
        jnp.square(h_BxH * (1 - h_BxH)) * jnp.sum(jnp.square(w_HxD), axis=1),
        axis=1)
    encode = lambda x_D: jax.nn.sigmoid(w_HxD @ x_D + b_H)
    for mode in ('auto', 'jacfwd', 'jacrev'):
      with self.subTest(mode):
        got = self.variant(functools.partial(
            losses.contractive_penalty, encode, mode=mode))(x_BxD)
        chex.assert_shape(got, (5,))
        np.testing.assert_allclose(got, expected, rtol=1e-5)
    for mode in ('auto', 'jacfwd', 'jacrev'):
      with self.subTest(f'dense_first_{mode}'):
        got = self.variant(lambda x: losses.contractive_penalty_dense_first(
            jax.nn.sigmoid, x @ w_HxD.T + b_H, w_HxD.T, mode=mode))(x_BxD)
        np.testing.assert_allclose(got, expected, rtol=1e-5)

  @chex.variants(with_jit=True, without_jit=True)
  @parameterized.named_parameters(*_MLP_SHAPES)
  def test_modes_agree_on_mlp(self, shapes):
    d, h1, h2, h, b = shapes
    layers = _init_mlp((d, h1, h2, h), seed=15)
    x_BxD = jnp.asarray(_rng(16).uniform(size=(b, d)), jnp.float32)
    encode = functools.partial(_mlp_encode, layers)
    reference = jax.vmap(lambda x: jnp.sum(jnp.square(jax.jacfwd(encode)(x))))(
        x_BxD)
    for mode in ('auto', 'jacfwd', 'jacrev'):
      with self.subTest(mode):
        got = self.variant(functools.partial(
            losses.contractive_penalty, encode, mode=mode))(x_BxD)
        np.testing.assert_allclose(got, reference, rtol=1e-5)
        got = self.variant(functools.partial(_dense_first, layers, mode=mode))(
            x_BxD)
        np.testing.assert_allclose(got, reference, rtol=1e-5)

  @parameterized.named_parameters(*_MLP_SHAPES)
  def test_dense_first_gradient_matches_generic(self, shapes):
    # Gradients w.r.t. all encoder weights, through u and the kernel; this
    # checks the custom JVP of the Gram contraction in reverse mode.
    d, h1, h2, h, b = shapes
    layers = _init_mlp((d, h1, h2, h), seed=17)
    x_BxD = jnp.asarray(_rng(18).uniform(size=(b, d)), jnp.float32)
    generic = lambda ls: jnp.sum(losses.contractive_penalty(
        functools.partial(_mlp_encode, ls), x_BxD, mode='jacrev'))
    dense = lambda ls: jnp.sum(_dense_first(ls, x_BxD))
    chex.assert_trees_all_close(
        jax.grad(dense)(layers), jax.grad(generic)(layers), rtol=1e-4,
        atol=1e-6)
    # With the first layer held fixed the kernel's tangent is a symbolic zero.
    deeper = lambda loss: jax.grad(lambda rest: loss([layers[0], *rest]))
    chex.assert_trees_all_close(
        deeper(dense)(layers[1:]), deeper(generic)(layers[1:]), rtol=1e-4,
        atol=1e-6)

  @parameterized.named_parameters(
      ('jacrev', 'jacrev'), ('jacfwd', 'jacfwd'), ('dense_first', 'dense'))
  def test_penalty_gradient_wrt_weights_is_numerically_correct(self, mode):
    with jax.enable_x64(True):
      layers = [tuple(jnp.asarray(p, jnp.float64) for p in layer)
                for layer in _init_mlp((10, 6, 5, 3), seed=19)]
      x_BxD = jnp.asarray(_rng(20).uniform(size=(8, 10)))
      if mode == 'dense':
        penalty = lambda ls: _dense_first(ls, x_BxD)
      else:
        penalty = lambda ls: losses.contractive_penalty(
            functools.partial(_mlp_encode, ls), x_BxD, mode=mode)
      # Order 1: the gradient training uses (the penalty already holds the
      # encoder's first derivatives, so this checks their derivatives too).
      jax.test_util.check_grads(penalty, (layers,), order=1,
                                modes=('fwd', 'rev'))

  @parameterized.parameters('jvp', 'vjp')
  def test_estimate_is_unbiased_and_random(self, mode):
    layers = _init_mlp((10, 6, 5, 3), seed=21)
    x_BxD = jnp.asarray(_rng(22).uniform(size=(4, 10)), jnp.float32)
    encode = functools.partial(_mlp_encode, layers)
    jac_BxHxD = jax.vmap(jax.jacrev(encode))(x_BxD)
    exact = jnp.sum(jnp.square(jac_BxHxD), axis=(1, 2))
    num_probes = 2000
    keys = jax.random.split(jax.random.key(23), num_probes)
    estimate_fn = jax.jit(lambda k: losses.contractive_penalty_estimate(
        encode, x_BxD, k, num_probes=1, mode=mode))
    samples_PxB = np.asarray(jax.vmap(estimate_fn)(keys), np.float64)
    mean_B = samples_PxB.mean(axis=0)
    variance_B = samples_PxB.var(axis=0, ddof=1)
    standard_error_B = np.sqrt(variance_B / num_probes)
    self.assertTrue(np.all(variance_B > 0.0))
    np.testing.assert_array_less(np.abs(mean_B - exact), 4 * standard_error_B)
    # Gaussian probes: Var ||Jv||^2 = Var ||u^T J||^2 = 2 ||J^T J||_F^2.
    jtj = jnp.einsum('bhd,bhe->bde', jac_BxHxD, jac_BxHxD)
    np.testing.assert_allclose(
        variance_B, 2 * jnp.sum(jnp.square(jtj), axis=(1, 2)), rtol=0.3)
    # All probes in one call: the mean of num_probes fresh probes.
    averaged = losses.contractive_penalty_estimate(
        encode, x_BxD, jax.random.key(24), num_probes=num_probes, mode=mode)
    chex.assert_shape(averaged, (4,))
    np.testing.assert_array_less(np.abs(averaged - exact), 4 * standard_error_B)

  @parameterized.parameters(((10, 6, 5, 3), ('tanh', 'sigmoid', 'sigmoid')),
                            ((12, 7, 4), ('relu', 'tanh')), ((9, 5), ('sigmoid',)))
  def test_mlp_form_equals_jacfwd_in_value_and_gradient(self, sizes, activations):
    """The transposed-Jacobian MLP form is the same penalty as the Jacobian by
    jax.jacfwd of the whole encoder, and has the same gradient in every weight."""
    acts = [nn_activation(a) for a in activations]
    layers = _init_mlp(sizes, seed=31)
    x_BxD = jnp.asarray(_rng(32).uniform(size=(4, sizes[0])), jnp.float32)

    def encode(layers, x_D):
      h = acts[0](x_D @ layers[0][0] + layers[0][1])
      for (kernel, bias), act in zip(layers[1:], acts[1:]):
        h = act(h @ kernel + bias)
      return h

    def reference(layers):
      jac_BxHxD = jax.vmap(jax.jacfwd(functools.partial(encode, layers)))(x_BxD)
      return jnp.sum(jnp.square(jac_BxHxD), axis=(1, 2))

    def mlp(layers):
      kernel, bias = layers[0]
      return losses.contractive_penalty_mlp(x_BxD @ kernel + bias, kernel, layers[1:], acts)

    np.testing.assert_allclose(mlp(layers), reference(layers), rtol=1e-5)
    want = jax.grad(lambda l: jnp.sum(reference(l) * jnp.arange(1.0, 5.0)))(layers)
    got = jax.jit(jax.grad(lambda l: jnp.sum(mlp(l) * jnp.arange(1.0, 5.0))))(layers)
    for w, g in zip(jax.tree.leaves(want), jax.tree.leaves(got)):
      np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(w))))

  def test_rademacher_signs_are_balanced_and_independent(self):
    v = np.asarray(losses.rademacher(jax.random.key(25), (400, 250)), np.float64)
    assert v.shape == (400, 250) and set(np.unique(v)) == {-1.0, 1.0}
    # 100,000 fair signs: the mean has standard error 1/sqrt(1e5) = 0.0032, and
    # the sample second-moment matrix over 400 rows is I up to 1/sqrt(400) = 0.05.
    assert abs(v.mean()) < 4 * 0.0032
    second = v.T @ v / 400
    np.testing.assert_allclose(np.diag(second), 1.0)
    assert np.max(np.abs(second - np.eye(250))) < 6 * 0.05
    # Different keys, different signs; odd sizes use part of the last word.
    other = losses.rademacher(jax.random.key(26), (400, 250))
    assert float(jnp.mean(jnp.asarray(v) == other)) < 0.6
    assert losses.rademacher(jax.random.key(0), (3, 7)).shape == (3, 7)

  def test_dense_first_estimate_is_unbiased_with_rademacher_variance(self):
    layers = _init_mlp((10, 6, 5, 3), seed=27)
    kernel, bias = layers[0]
    x_BxD = jnp.asarray(_rng(28).uniform(size=(4, 10)), jnp.float32)
    jac_BxHxD = jax.vmap(jax.jacrev(functools.partial(_mlp_encode, layers)))(x_BxD)
    exact = jnp.sum(jnp.square(jac_BxHxD), axis=(1, 2))
    rest = functools.partial(_mlp_rest, layers)
    num_probes = 4000
    probes_PxBxD = losses.rademacher(jax.random.key(29), (num_probes, 4, 10))
    estimate_fn = jax.jit(jax.vmap(lambda v_BxD: losses.contractive_penalty_dense_first_estimate(
        rest, x_BxD @ kernel + bias, (v_BxD @ kernel)[None])))
    samples_PxB = np.asarray(estimate_fn(probes_PxBxD), np.float64)
    standard_error_B = np.sqrt(samples_PxB.var(axis=0, ddof=1) / num_probes)
    np.testing.assert_array_less(np.abs(samples_PxB.mean(axis=0) - exact), 4 * standard_error_B)
    # Rademacher probes: Var ||Jv||^2 = 2 (||A||_F^2 - sum_i A_ii^2), A = J^T J
    # (the fourth moment of a sign is 1, not a Gaussian's 3).
    jtj = np.asarray(jnp.einsum('bhd,bhe->bde', jac_BxHxD, jac_BxHxD), np.float64)
    expected_var = 2 * (np.sum(jtj**2, axis=(1, 2)) - np.sum(np.diagonal(jtj, axis1=1, axis2=2)**2, axis=1))
    np.testing.assert_allclose(samples_PxB.var(axis=0, ddof=1), expected_var, rtol=0.15)
    # Several probes in one call average them.
    directions_PxBxH1 = probes_PxBxD[:8] @ kernel
    together = losses.contractive_penalty_dense_first_estimate(rest, x_BxD @ kernel + bias,
                                                               directions_PxBxH1)
    np.testing.assert_allclose(together, samples_PxB[:8].mean(axis=0), rtol=1e-4)
    with self.assertRaisesRegex(ValueError, r'expected directions_PxBxH1 \[P, 4, 6\]'):
      losses.contractive_penalty_dense_first_estimate(rest, x_BxD @ kernel, x_BxD @ kernel)

  def test_invalid_modes_raise(self):
    _, _, x_BxD = self._one_layer()
    with self.assertRaises(ValueError):
      losses.contractive_penalty(jnp.tanh, x_BxD, mode='forward')
    with self.assertRaises(ValueError):
      losses.contractive_penalty_estimate(
          jnp.tanh, x_BxD, jax.random.key(0), mode='jacrev')


# ----------------------------------------------------------------------------
# Vector quantization.
# ----------------------------------------------------------------------------


class VectorQuantizationTest(chex.TestCase):

  @chex.variants(with_jit=True, without_jit=True)
  def test_values_and_gradient_routing(self):
    rng = _rng(25)
    z_e = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    z_q = jnp.asarray(rng.normal(size=(2, 3, 4)), jnp.float32)
    expected = np.mean((np.asarray(z_e) - np.asarray(z_q)) ** 2, axis=(1, 2))
    codebook = self.variant(losses.vq_codebook_loss)
    commitment = self.variant(losses.vq_commitment_loss)
    np.testing.assert_allclose(codebook(z_e, z_q), expected, rtol=1e-6)
    np.testing.assert_allclose(commitment(z_e, z_q), expected, rtol=1e-6)

    d_codebook = jax.grad(lambda e, q: jnp.sum(codebook(e, q)), (0, 1))
    d_commitment = jax.grad(lambda e, q: jnp.sum(commitment(e, q)), (0, 1))
    # Each example's loss is a mean over 12 entries: d/dz = 2 (z_e - z_q) / 12.
    step = 2 * (z_e - z_q) / 12
    grad_e, grad_q = d_codebook(z_e, z_q)
    np.testing.assert_array_equal(grad_e, np.zeros_like(grad_e))
    np.testing.assert_allclose(grad_q, -step, rtol=1e-6)
    grad_e, grad_q = d_commitment(z_e, z_q)
    np.testing.assert_allclose(grad_e, step, rtol=1e-6)
    np.testing.assert_array_equal(grad_q, np.zeros_like(grad_q))


if __name__ == '__main__':
  absltest.main()
