"""The IWAE bound against an exact log-likelihood: probabilistic PCA.

A linear-Gaussian VAE, p(z) = N(0, I), p(x | z) = N(W z + μ, σ² I), has a
closed-form marginal and posterior (Tipping & Bishop 1999):

  log p(x) = log N(x; μ, W Wᵀ + σ² I),
  p(z | x) = N(M⁻¹ Wᵀ (x − μ), σ² M⁻¹),  M = Wᵀ W + σ² I.

So the bounds that `ae_jax.likelihood` computes can be compared with the true
log p(x), not only with each other. (That L_K ≥ the mean of the same K log
weights holds for any array by Jensen's inequality and says nothing about the
code.) Here:

* with q(z | x) = p(z | x), every log weight log p(x, z) − log q(z | x) is
  log p(x) exactly, so L_K = log p(x) for every K: a missing or doubled log K,
  a wrong sign on log q, a wrong prior or a wrong reparameterization breaks it;
* with a mismatched q, E[L_1] = log p(x) − KL(q ‖ p(z|x)) in closed form,
  E[L_K] stays below log p(x), grows with K, and its gap closes like
  χ²(p(z|x) ‖ q) / (2K) (the delta method; Maddison et al. 2017, Prop. 1;
  Rainforth et al. 2018), each estimated from independent samples per K;
* the IWAE training objective's ELBO, reconstruction and KL terms match their
  closed forms.

The encoder is diagonal, like `models.MLPVAE`'s, and its log p(z) and
log q(z | x) are the library's own (`models.vae.gaussian_log_weight_terms`); W
has orthogonal columns (the maximum-likelihood pPCA form W = U (Λ − σ² I)^½),
so M is diagonal and the exact posterior is in the diagonal family. Runs in
float64 (`jax.enable_x64`), so "exactly" means to 1e-10 nats.

References:
  Tipping & Bishop, "Probabilistic Principal Component Analysis", JRSS B 61(3),
  1999 (Eqs. 6-7: the marginal; Sec. 3.2: the posterior).
  Burda, Grosse & Salakhutdinov, "Importance Weighted Autoencoders", ICLR 2016
  (Theorem 1: E[L_K] ≤ E[L_{K+1}] ≤ log p(x)).
  Maddison et al., "Filtering Variational Objectives", NeurIPS 2017.
"""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from ae_jax import likelihood
from ae_jax import objectives
from ae_jax.models import vae as vae_lib

KEY = jax.random.key(0)
D, Z = 5, 2
SIGMA = 0.1


class LinearGaussianVAE(nn.Module):
  """pPCA as a VAE: decoder N(W z + μ, σ² I), encoder N(A x + c, diag exp(log_var)).

  Scored through `ae_jax.likelihood` like `models.MLPVAE`: the same three
  methods, the same log p(z) and log q(z | x) (`gaussian_log_weight_terms`),
  only log p(x | z) is Gaussian instead of Bernoulli.
  """
  data_dim: int = D
  latent_dim: int = Z

  def setup(self):
    zeros = nn.initializers.zeros
    self.weight = self.param('weight', zeros, (self.data_dim, self.latent_dim))   # W
    self.bias = self.param('bias', zeros, (self.data_dim,))                       # μ
    self.log_sigma = self.param('log_sigma', zeros, ())                           # log σ
    self.enc_weight = self.param('enc_weight', zeros, (self.latent_dim, self.data_dim))
    self.enc_bias = self.param('enc_bias', zeros, (self.latent_dim,))
    self.enc_log_var = self.param('enc_log_var', zeros, (self.latent_dim,))

  def encode(self, x):
    mean = x @ self.enc_weight.T + self.enc_bias
    return mean, jnp.broadcast_to(self.enc_log_var, mean.shape)

  def __call__(self, x):
    return self.encode(x)

  def importance_context(self, x):
    return self.encode(x)

  @nn.nowrap
  def importance_noise(self, key):
    return jax.random.normal(key, (self.latent_dim,))

  def log_weight_terms(self, posterior, x, eps):
    mean, log_var = posterior
    # The Bernoulli log p(x|z) the library computes is dropped; log p(z) and log q(z|x) are
    # its own, at the z it draws. A reparameterization other than z = μ + σ ε there would
    # disagree with the z decoded here and break the exact-posterior identity below.
    _, log_pz, log_qz = vae_lib.gaussian_log_weight_terms(
        lambda z: jnp.zeros_like(x), posterior, jnp.zeros_like(x), eps)
    z = mean + jnp.exp(0.5 * log_var) * eps
    residual = x - z @ self.weight.T - self.bias
    log_px_z = -0.5 * jnp.sum(jnp.square(residual) * jnp.exp(-2 * self.log_sigma)
                              + 2 * self.log_sigma + math.log(2 * math.pi), axis=-1)
    return log_px_z, log_pz, log_qz


def _decoder():
  """W = U diag(0.3, 0.15), U orthonormal [D, Z]; μ = 0.5; σ = 0.1 (float64 numpy)."""
  u, _ = np.linalg.qr(np.random.default_rng(0).normal(size=(D, Z)))
  return u * np.array([0.3, 0.15]), np.full(D, 0.5), SIGMA


def _exact_posterior(weight, bias, sigma):
  """p(z|x) = N(A x + c, diag(v)) with A = M⁻¹Wᵀ, c = −A μ, v = σ² diag(M⁻¹)."""
  m = weight.T @ weight + sigma**2 * np.eye(Z)
  np.testing.assert_allclose(m, np.diag(np.diag(m)), atol=1e-12)  # Orthogonal columns.
  enc_weight = np.linalg.solve(m, weight.T)
  return enc_weight, -enc_weight @ bias, sigma**2 / np.diag(m)


def _variables(weight, bias, sigma, enc_weight, enc_bias, enc_var):
  return {'params': jax.tree.map(jnp.asarray, dict(
      weight=weight, bias=bias, log_sigma=np.log(sigma), enc_weight=enc_weight,
      enc_bias=enc_bias, enc_log_var=np.log(enc_var)))}


def _data():
  """Four points in [0, 1] (float32-representable): three from the model, one far off it."""
  weight, bias, sigma = _decoder()
  rng = np.random.default_rng(1)
  x = bias + rng.normal(size=(3, Z)) @ weight.T + sigma * rng.normal(size=(3, D))
  x = np.concatenate([np.clip(x, 0, 1), [[0.9, 0.1, 0.8, 0.2, 0.6]]])
  return x.astype(np.float32).astype(np.float64)


def _log_marginal(x, weight, bias, sigma):
  """log N(x; μ, W Wᵀ + σ² I) (scipy; Tipping & Bishop Eq. 6)."""
  cov = weight @ weight.T + sigma**2 * np.eye(D)
  return stats.multivariate_normal(bias, cov).logpdf(x)


def _kl_diag(mean_q, var_q, mean_p, var_p):
  """KL(N(mean_q, diag var_q) ‖ N(mean_p, diag var_p)) per row."""
  return 0.5 * np.sum(np.log(var_p / var_q) + (var_q + (mean_q - mean_p)**2) / var_p - 1, -1)


def _chi_square(mean_q, var_q, mean_p, var_p):
  """χ²(p ‖ q) = ∫ p²/q − 1 for diagonal Gaussians (finite since var_q > var_p / 2):
  per dimension ∫ p²/q = var_q / sqrt(var_p (2 var_q − var_p)) · exp(δ² / (2 var_q − var_p))."""
  per_dim = (var_q / np.sqrt(var_p * (2 * var_q - var_p))
             * np.exp((mean_q - mean_p)**2 / (2 * var_q - var_p)))
  return np.prod(per_dim, axis=-1) - 1


def _mismatched(x):
  """An encoder off the posterior: means shifted by 1.2 posterior std, variances × 1.5."""
  weight, bias, sigma = _decoder()
  enc_weight, enc_bias, var_p = _exact_posterior(weight, bias, sigma)
  shift = 1.2 * np.sqrt(var_p) * np.array([1.0, -1.0])
  variables = _variables(weight, bias, sigma, enc_weight, enc_bias + shift, 1.5 * var_p)
  mean_p = x @ enc_weight.T + enc_bias
  return variables, (mean_p + shift, 1.5 * var_p), (mean_p, var_p)


def test_exact_posterior_makes_every_bound_the_log_likelihood():
  with jax.enable_x64(True):
    x = _data()
    weight, bias, sigma = _decoder()
    model = LinearGaussianVAE()
    assert likelihood.supports(model)
    variables = _variables(weight, bias, sigma, *_exact_posterior(weight, bias, sigma))
    log_px = _log_marginal(x, weight, bias, sigma)
    # K = 1000 samples per point (keys fold_in(fold_in(KEY, n), k)), in chunks of 250.
    result = likelihood.evaluate_log_likelihood(model, variables, x, KEY, num_samples=1000,
                                                chunk_size=250, batch_size=4)
    # L_K is log p(x) (a missing log K would add log 1000 = 6.9 nats, a wrong sign on
    # log q or a wrong prior would move it by nats) ...
    np.testing.assert_allclose(result['log_likelihood'], log_px, rtol=0, atol=1e-10)
    # ... and so is the mean of the same log weights, the ELBO estimate. log-mean-exp equals
    # the mean only for equal values (Jensen's equality case): every log weight is log p(x),
    # so L_K = log p(x) for every K <= 1000 as well.
    assert result['elbo_nats'] == pytest.approx(log_px.mean(), abs=1e-10)
    assert result['stderr_nats'] == pytest.approx(np.std(log_px, ddof=1) / 2, rel=1e-8)
    # The reference itself: Bayes' rule at an arbitrary z, log p(x) = log p(x|z) + log p(z)
    # − log p(z|x), with p(z|x) from Tipping & Bishop's Sec. 3.2 formula.
    enc_weight, enc_bias, var_p = _exact_posterior(weight, bias, sigma)
    z = np.array([0.3, -1.2])
    by_bayes = (stats.norm(z @ weight.T + bias, sigma).logpdf(x).sum(1)
                + stats.norm.logpdf(z).sum()
                - stats.norm(x @ enc_weight.T + enc_bias, np.sqrt(var_p)).logpdf(z).sum(1))
    np.testing.assert_allclose(by_bayes, log_px, rtol=1e-12)


def test_mismatched_posterior_bound_is_below_log_px_and_closes_with_k():
  """log p(x) − E[L_K] for K = 1, 10, 100, 1000, each K from its own samples.

  A draw is 100 rows per point of 1000 samples (keys from fold_in(fold_in(KEY, K), j)),
  cut into 1000 / K groups of K: 4 × 100,000 / K independent K-sample bounds per draw; K
  = 100 and 1000 take 4 draws. SE: the standard error of the mean over the bounds.

  The mismatch is the same in posterior units at every point, so the four points share
  KL(q ‖ p(z|x)) = 1.535 and χ²(p(z|x) ‖ q) = 3.748, and their gaps are pooled. Seed 0:
    K = 1: 1.5329 (SE 0.0034), KL = 1.535;
    K = 10: 0.1838 (SE 0.0032), χ²/20 = 0.187;
    K = 100: 0.0172 (SE 0.0015), χ²/200 = 0.0187;
    K = 1000: 0.0024 (SE 0.0016), χ²/2000 = 0.0019.
  """
  with jax.enable_x64(True):
    x = _data()
    weight, bias, sigma = _decoder()
    model = LinearGaussianVAE()
    variables, (mean_q, var_q), (mean_p, var_p) = _mismatched(x)
    log_px = _log_marginal(x, weight, bias, sigma)
    kl = _kl_diag(mean_q, var_q, mean_p, var_p)
    chi2 = _chi_square(mean_q, var_q, mean_p, var_p)
    np.testing.assert_allclose(kl, kl[0], rtol=1e-12)
    np.testing.assert_allclose(chi2, chi2[0], rtol=1e-12)
    rows, num = 100, 1000
    x_rep = jnp.asarray(np.repeat(x, rows, axis=0))
    # One shape for every K: one compilation.
    draw = jax.jit(lambda keys: likelihood.log_weight_terms(
        model, variables, x_rep, keys, num_samples=num, chunk_size=250).log_weights())
    gaps, errors = {}, {}
    for k, num_draws in ((1, 1), (10, 1), (100, 4), (1000, 4)):
      gap = []
      for j in range(num_draws):
        keys = jax.random.split(jax.random.fold_in(jax.random.fold_in(KEY, k), j), len(x_rep))
        bound = likelihood.log_mean_exp(draw(keys).reshape(len(x_rep), num // k, k))
        # log p(x) − L_K of every group, pooled over the four points.
        gap.append(np.ravel(log_px[:, None] - np.asarray(bound).reshape(len(x), -1)))
      gap = np.concatenate(gap)
      gaps[k], errors[k] = gap.mean(), gap.std(ddof=1) / np.sqrt(gap.size)
      # Below log p(x) at every K, up to 3 standard errors (E[L_K] ≤ log p(x)).
      assert gaps[k] > -3 * errors[k], (k, gaps[k], errors[k])
    # K = 1 is the ELBO: its gap is KL(q ‖ p(z|x)) in closed form, within 4 SE.
    assert abs(gaps[1] - kl[0]) < 4 * errors[1], (gaps[1], kl[0], errors[1])
    # E[L_K] grows with K, resolved: each gap is below the previous one by more than
    # 3 SE of the difference (the estimates are independent).
    for small, large in ((1, 10), (10, 100), (100, 1000)):
      diff, se = gaps[small] - gaps[large], math.hypot(errors[small], errors[large])
      assert diff > 3 * se, (small, large, diff, se)
    # And closes toward 0 at the delta-method rate, K · gap → χ²/2: within 10% at K = 10
    # (the O(1/K²) term is still there; 5 seeds gave 0.179-0.193), within 3 SE at K = 100
    # and 1000. A bound with a constant offset or normalized by K − 1 would miss it.
    assert 10 * gaps[10] == pytest.approx(chi2[0] / 2, rel=0.1), (gaps[10], chi2[0])
    for k in (100, 1000):
      assert abs(gaps[k] - chi2[0] / (2 * k)) < 3 * errors[k], (k, gaps[k], errors[k])


def test_iwae_objective_terms_match_the_closed_form_elbo():
  """The IWAE objective's 'elbo', 'recon' and 'kl' metrics (K-sample Monte Carlo means)
  against E_q[log p(x|z)] and KL(q ‖ N(0, I)) in closed form, and the closed-form ELBO
  against log p(x) − KL(q ‖ p(z|x)): two references that share no code."""
  with jax.enable_x64(True):
    x = _data()
    weight, bias, sigma = _decoder()
    model = LinearGaussianVAE()
    variables, (mean_q, var_q), (mean_p, var_p) = _mismatched(x)
    # E_q ‖x − W z − μ‖² = ‖x − W m − μ‖² + tr(W S Wᵀ), S = diag(var_q).
    expected_sq = (np.sum((x - mean_q @ weight.T - bias)**2, 1)
                   + np.trace(weight @ np.diag(var_q) @ weight.T))
    recon = 0.5 * expected_sq / sigma**2 + 0.5 * D * math.log(2 * math.pi * sigma**2)
    kl_prior = _kl_diag(mean_q, var_q, np.zeros(Z), np.ones(Z))
    elbo = -(recon + kl_prior)
    # Evidence decomposition: ELBO = log p(x) − KL(q ‖ p(z|x)).
    np.testing.assert_allclose(
        elbo, _log_marginal(x, weight, bias, sigma) - _kl_diag(mean_q, var_q, mean_p, var_p),
        rtol=1e-10)
    num = 20_000
    objective = objectives.make_iwae_objective(model, num_samples=num)

    @jax.jit
    def run(x):
      loss, metrics = objective(variables, {'image': x}, KEY)
      # The same samples (same key), for the Monte Carlo standard error.
      log_w = likelihood.log_weight_terms(model, variables, x, KEY,
                                          num_samples=num).log_weights()
      return loss, metrics, jnp.var(log_w, axis=1, ddof=1)

    loss, metrics, var = run(jnp.asarray(x))
    se = float(np.sqrt(np.sum(np.asarray(var) / num)) / len(x))
    # SE of the 4-point mean: 0.004 nats.
    assert abs(float(metrics['elbo']) - elbo.mean()) < 4 * se, (metrics['elbo'], elbo, se)
    assert float(metrics['recon']) == pytest.approx(recon.mean(), abs=0.03)
    assert float(metrics['kl']) == pytest.approx(kl_prior.mean(), abs=0.03)
    # The loss is −L_K, K = 20,000: its gap to −log p(x) is χ²/(2K) = 1e-4 in expectation,
    # its SD per point sqrt(χ²/K) = 0.014 (delta method), so the 4-point mean is within
    # 3 × 0.007 nats. A missing log K would put it log(20,000) = 9.9 nats off.
    assert float(loss) == pytest.approx(-_log_marginal(x, weight, bias, sigma).mean(),
                                        abs=0.021)
