"""Argument checks of ae_jax.losses: bad inputs raise, good ones pass, jit is free.

The checks on dtypes and shapes run while tracing; the checks on values
(Bernoulli targets in [0, 1], token ids in [0, V), sparsity activations and
rho in [0, 1]) run only on concrete arguments. Each bad case below names the
loss, the argument and what is wrong, and says where its expected message
comes from (`_check_dtypes`, `_check_shapes`, `_check_values_in` or a check
written in the loss itself).
"""

import functools
import re
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ae_jax import losses

B, D, V = 2, 5, 7


def _f32(*shape: int, seed: int = 0) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _u01(*shape: int, seed: int = 1) -> jax.Array:
  return jnp.asarray(np.random.default_rng(seed).uniform(size=shape), jnp.float32)


def _ids(*shape: int, dtype=jnp.int32) -> jax.Array:
  return jnp.asarray(np.arange(np.prod(shape)).reshape(shape) % V, dtype)


def _encode(x_D: jax.Array) -> jax.Array:
  return jnp.tanh(x_D[:2])


# ----------------------------------------------------------------------------
# Bad inputs: every one raises, with a message naming the problem.
# ----------------------------------------------------------------------------


class Case(NamedTuple):
  """One bad call: what it is, how to make it, and what it must raise."""
  call: str
  bad_input: str
  fn: Callable[[], jax.Array]
  error: type[Exception]
  match: str


_FLOAT_ERR = 'must have a floating-point dtype, got '
_INT_ERR = 'must have an integer dtype, got '

CASES = [
    # Reconstruction losses.
    Case('mse(predictions, targets)', 'uint8 targets',
         lambda: losses.mse(_f32(B, D), jnp.ones((B, D), jnp.uint8)),
         TypeError, 'mse: targets ' + _FLOAT_ERR + r'uint8 \(for uint8 pixels'),
    Case('mse(predictions, targets)', 'int32 predictions',
         lambda: losses.mse(jnp.ones((B, D), jnp.int32), _f32(B, D)),
         TypeError, 'mse: predictions ' + _FLOAT_ERR + 'int32'),
    Case('mse(predictions, targets)', 'bool targets',
         lambda: losses.mse(_f32(B, D), jnp.ones((B, D), bool)),
         TypeError, 'mse: targets ' + _FLOAT_ERR + 'bool'),
    Case('mse(predictions, targets)', 'predictions [B, 1], targets [B, D]',
         lambda: losses.mse(_f32(B, 1), _f32(B, D)),
         ValueError, re.escape('mse: targets has shape (2, 5); expected the '
                               'shape of predictions (2, 1)')),
    Case('mse(predictions, targets)', 'predictions [B, 784], targets [B, 28, 28, 1]',
         lambda: losses.mse(_f32(B, 784), _f32(B, 28, 28, 1)),
         ValueError, re.escape('mse: targets has shape (2, 28, 28, 1); expected '
                               'the shape of predictions (2, 784)')),
    Case('sum_squared_error(predictions, targets)', 'uint8 targets',
         lambda: losses.sum_squared_error(_f32(B, D), jnp.ones((B, D), jnp.uint8)),
         TypeError, 'sum_squared_error: targets ' + _FLOAT_ERR + 'uint8'),
    Case('sum_squared_error(predictions, targets)', 'predictions [B, D], targets [B, 1]',
         lambda: losses.sum_squared_error(_f32(B, D), _f32(B, 1)),
         ValueError, re.escape('sum_squared_error: targets has shape (2, 1); '
                               'expected the shape of predictions (2, 5)')),
    Case('bernoulli_nll(logits, targets)', 'uint8 targets (raw pixels)',
         lambda: losses.bernoulli_nll(_f32(B, D), jnp.full((B, D), 255, jnp.uint8)),
         TypeError, 'bernoulli_nll: targets ' + _FLOAT_ERR + 'uint8'),
    Case('bernoulli_nll(logits, targets)', 'bool targets',
         lambda: losses.bernoulli_nll(_f32(B, D), jnp.ones((B, D), bool)),
         TypeError, 'bernoulli_nll: targets ' + _FLOAT_ERR + 'bool'),
    Case('bernoulli_nll(logits, targets)', 'int32 logits',
         lambda: losses.bernoulli_nll(jnp.ones((B, D), jnp.int32), _u01(B, D)),
         TypeError, 'bernoulli_nll: logits ' + _FLOAT_ERR + 'int32'),
    Case('bernoulli_nll(logits, targets)', 'logits [B, 784], targets [B, 28, 28, 1]',
         lambda: losses.bernoulli_nll(_f32(B, 784), _u01(B, 28, 28, 1)),
         ValueError, re.escape('bernoulli_nll: targets has shape (2, 28, 28, 1); '
                               'expected the shape of logits (2, 784)')),
    Case('bernoulli_nll(logits, targets)', 'logits [B, 1], targets [B, D]',
         lambda: losses.bernoulli_nll(_f32(B, 1), _u01(B, D)),
         ValueError, re.escape('bernoulli_nll: targets has shape (2, 5); '
                               'expected the shape of logits (2, 1)')),
    Case('bernoulli_nll(logits, targets)', 'targets 2.0 (eager)',
         lambda: losses.bernoulli_nll(_f32(B, D), jnp.full((B, D), 2.0)),
         ValueError, re.escape('bernoulli_nll: targets must lie in [0.0, 1.0], '
                               'got 10 of 10 values outside (min 2.0, max 2.0)')),
    Case('bernoulli_nll(logits, targets)', 'one target -0.5 (eager)',
         lambda: losses.bernoulli_nll(_f32(B, D), _u01(B, D).at[1, 3].set(-0.5)),
         ValueError, re.escape('bernoulli_nll: targets must lie in [0.0, 1.0], '
                               'got 1 of 10 values outside (min -0.5')),
    Case('bernoulli_nll(logits, targets)', 'one target NaN (eager)',
         lambda: losses.bernoulli_nll(_f32(B, D), _u01(B, D).at[0, 0].set(jnp.nan)),
         ValueError, re.escape('bernoulli_nll: targets must lie in [0.0, 1.0], '
                               'got 1 of 10 values outside (min nan')),
    Case('gaussian_nll(x, mean, log_var)', 'int32 x',
         lambda: losses.gaussian_nll(jnp.ones((B, D), jnp.int32), _f32(B, D), _f32(B, D)),
         TypeError, 'gaussian_nll: x ' + _FLOAT_ERR + 'int32'),
    Case('gaussian_nll(x, mean, log_var)', 'int32 log_var',
         lambda: losses.gaussian_nll(_f32(B, D), _f32(B, D), jnp.zeros((B, D), jnp.int32)),
         TypeError, 'gaussian_nll: log_var ' + _FLOAT_ERR + 'int32'),
    Case('gaussian_nll(x, mean, log_var)', 'x [B, 1], mean [B, D] (would broadcast x up)',
         lambda: losses.gaussian_nll(_f32(B, 1), _f32(B, D), 0.0),
         ValueError, re.escape('gaussian_nll: mean has shape (2, 5); expected a '
                               'scalar or a shape of rank 2 that broadcasts to x (2, 1)')),
    Case('gaussian_nll(x, mean, log_var)', 'x [D, D], log_var [D] (rank mismatch)',
         lambda: losses.gaussian_nll(_f32(D, D), _f32(D, D), _f32(D)),
         ValueError, re.escape('gaussian_nll: log_var has shape (5,); expected a '
                               'scalar or a shape of rank 2')),
    # Variational terms.
    Case('gaussian_kl(mean, log_var)', 'int32 mean',
         lambda: losses.gaussian_kl(jnp.zeros((B, D), jnp.int32), _f32(B, D)),
         TypeError, 'gaussian_kl: mean ' + _FLOAT_ERR + 'int32'),
    Case('gaussian_kl(mean, log_var)', 'mean [B, D], log_var [B, 1]',
         lambda: losses.gaussian_kl(_f32(B, D), _f32(B, 1)),
         ValueError, re.escape('gaussian_kl: log_var has shape (2, 1); expected '
                               'the shape of mean (2, 5)')),
    Case('gaussian_kl_between(mean_q, log_var_q, mean_p, log_var_p)', 'int32 mean_p',
         lambda: losses.gaussian_kl_between(_f32(B, D), _f32(B, D),
                                            jnp.zeros((B, D), jnp.int32), 0.0),
         TypeError, 'gaussian_kl_between: mean_p ' + _FLOAT_ERR + 'int32'),
    Case('gaussian_kl_between(mean_q, log_var_q, mean_p, log_var_p)',
         'log_var_q [B, 1] against mean_q [B, D]',
         lambda: losses.gaussian_kl_between(_f32(B, D), _f32(B, 1), 0.0, 0.0),
         ValueError, re.escape('gaussian_kl_between: log_var_q has shape (2, 1); '
                               'expected the shape of mean_q (2, 5)')),
    Case('gaussian_kl_between(mean_q, log_var_q, mean_p, log_var_p)',
         'mean_q [B, 1], mean_p [B, D] (would broadcast q up)',
         lambda: losses.gaussian_kl_between(_f32(B, 1), _f32(B, 1), _f32(B, D), 0.0),
         ValueError, re.escape('gaussian_kl_between: mean_p has shape (2, 5); '
                               'expected a scalar or a shape of rank 2 that '
                               'broadcasts to mean_q (2, 1)')),
    # Sparsity.
    Case('l1_sparsity(activations)', 'int32 activations',
         lambda: losses.l1_sparsity(jnp.ones((B, D), jnp.int32)),
         TypeError, 'l1_sparsity: activations ' + _FLOAT_ERR + 'int32'),
    Case('kl_sparsity(activations_BxH, rho=0.1)', 'int32 activations',
         lambda: losses.kl_sparsity(jnp.ones((B, D), jnp.int32), rho=0.1),
         TypeError, 'kl_sparsity: activations_BxH ' + _FLOAT_ERR + 'int32'),
    Case('kl_sparsity(activations_BxH, rho=0.1)', 'activations 1.5 (eager)',
         lambda: losses.kl_sparsity(jnp.full((B, D), 1.5), rho=0.1),
         ValueError, re.escape('kl_sparsity: activations_BxH must lie in [0.0, 1.0], '
                               'got 10 of 10 values outside (min 1.5, max 1.5)')),
    Case('kl_sparsity(activations_BxH, rho=1.5)', 'rho 1.5 (eager)',
         lambda: losses.kl_sparsity(_u01(B, D), rho=1.5),
         ValueError, re.escape('kl_sparsity: rho must lie in [0.0, 1.0], got 1 of 1')),
    # Contractive penalties.
    Case('contractive_penalty(encode_fn, x_BxD)', 'int32 x_BxD',
         lambda: losses.contractive_penalty(_encode, jnp.ones((B, D), jnp.int32)),
         TypeError, 'contractive_penalty: x_BxD ' + _FLOAT_ERR + 'int32'),
    Case('contractive_penalty_estimate(encode_fn, x_BxD, key)', 'uint8 x_BxD',
         lambda: losses.contractive_penalty_estimate(
             _encode, jnp.ones((B, D), jnp.uint8), jax.random.key(0)),
         TypeError, 'contractive_penalty_estimate: x_BxD ' + _FLOAT_ERR + 'uint8'),
    Case('contractive_penalty_dense_first_estimate(rest_fn, u_BxH1, directions_PxBxH1)',
         'int32 u_BxH1',
         lambda: losses.contractive_penalty_dense_first_estimate(
             jnp.tanh, jnp.ones((B, 3), jnp.int32), _f32(1, B, 3)),
         TypeError, 'contractive_penalty_dense_first_estimate: u_BxH1 ' + _FLOAT_ERR + 'int32'),
    Case('contractive_penalty_dense_first_estimate(rest_fn, u_BxH1, directions_PxBxH1)',
         'directions [B, H1]',
         lambda: losses.contractive_penalty_dense_first_estimate(jnp.tanh, _f32(B, 3), _f32(B, 3)),
         ValueError, re.escape('contractive_penalty_dense_first_estimate: expected '
                               f'directions_PxBxH1 [P, {B}, 3], got shape ({B}, 3)')),
    Case('contractive_penalty_mlp(u_BxH1, kernel_DxH1, layers, activations)', 'int32 u_BxH1',
         lambda: losses.contractive_penalty_mlp(jnp.ones((B, 3), jnp.int32), _f32(D, 3), [],
                                                [jnp.tanh]),
         TypeError, 'contractive_penalty_mlp: u_BxH1 ' + _FLOAT_ERR + 'int32'),
    Case('contractive_penalty_mlp(u_BxH1, kernel_DxH1, layers, activations)',
         'two activations for one layer',
         lambda: losses.contractive_penalty_mlp(_f32(B, 3), _f32(D, 3), [], [jnp.tanh] * 2),
         ValueError, re.escape('contractive_penalty_mlp: 0 layers after the first need 1 '
                               'activations, got 2')),
    Case('contractive_penalty_mlp(u_BxH1, kernel_DxH1, layers, activations)', 'kernel [D, 4]',
         lambda: losses.contractive_penalty_mlp(_f32(B, 3), _f32(D, 4), [], [jnp.tanh]),
         ValueError, re.escape('contractive_penalty_mlp: expected u_BxH1 [B, H1] and '
                               f'kernel_DxH1 [D, H1], got shapes ({B}, 3) and ({D}, 4)')),
    Case('rademacher(key, shape, dtype)', 'uint8 dtype',
         lambda: losses.rademacher(jax.random.key(0), (B, D), jnp.uint8),
         ValueError, 'rademacher: dtype uint8 cannot hold -1'),
    Case('contractive_penalty_dense_first(rest_fn, u_BxH1, kernel_DxH1)', 'int32 u_BxH1',
         lambda: losses.contractive_penalty_dense_first(
             jnp.tanh, jnp.ones((B, 3), jnp.int32), _f32(D, 3)),
         TypeError, 'contractive_penalty_dense_first: u_BxH1 ' + _FLOAT_ERR + 'int32'),
    Case('contractive_penalty_dense_first(rest_fn, u_BxH1, kernel_DxH1)', 'u_BxH1 [B, 1, H1]',
         lambda: losses.contractive_penalty_dense_first(jnp.tanh, _f32(B, 1, 3), _f32(D, 3)),
         ValueError, re.escape('contractive_penalty_dense_first: expected u_BxH1 '
                               '[B, H1] and kernel_DxH1 [D, H1], got shapes (2, 1, 3)')),
    Case('contractive_penalty_dense_first(rest_fn, u_BxH1, kernel_DxH1)',
         'kernel_DxH1 [D, 4] against u_BxH1 [B, 3]',
         lambda: losses.contractive_penalty_dense_first(jnp.tanh, _f32(B, 3), _f32(D, 4)),
         ValueError, re.escape('contractive_penalty_dense_first: kernel_DxH1 has '
                               'shape (5, 4); expected [D, 3]')),
    # Vector quantization and diffusion.
    Case('vq_codebook_loss(z_e, z_q)', 'z_e [B, D], z_q [B, 1]',
         lambda: losses.vq_codebook_loss(_f32(B, D), _f32(B, 1)),
         ValueError, re.escape('vq_codebook_loss: z_q has shape (2, 1); expected '
                               'the shape of z_e (2, 5)')),
    Case('vq_codebook_loss(z_e, z_q)', 'int32 z_q',
         lambda: losses.vq_codebook_loss(_f32(B, D), jnp.ones((B, D), jnp.int32)),
         TypeError, 'vq_codebook_loss: z_q ' + _FLOAT_ERR + 'int32'),
    Case('vq_commitment_loss(z_e, z_q)', 'z_e [B, D], z_q [D]',
         lambda: losses.vq_commitment_loss(_f32(B, D), _f32(D)),
         ValueError, re.escape('vq_commitment_loss: z_q has shape (5,); expected '
                               'the shape of z_e (2, 5)')),
    Case('vq_commitment_loss(z_e, z_q)', 'int32 z_e',
         lambda: losses.vq_commitment_loss(jnp.ones((B, D), jnp.int32), _f32(B, D)),
         TypeError, 'vq_commitment_loss: z_e ' + _FLOAT_ERR + 'int32'),
    Case('ddpm_epsilon_loss(eps_pred, eps)', 'eps_pred [1, D], eps [B, D]',
         lambda: losses.ddpm_epsilon_loss(_f32(1, D), _f32(B, D)),
         ValueError, re.escape('ddpm_epsilon_loss: eps_pred has shape (1, 5); '
                               'expected the shape of eps (2, 5)')),
    Case('ddpm_epsilon_loss(eps_pred, eps)', 'int32 eps',
         lambda: losses.ddpm_epsilon_loss(_f32(B, D), jnp.ones((B, D), jnp.int32)),
         TypeError, 'ddpm_epsilon_loss: eps ' + _FLOAT_ERR + 'int32'),
    # Token sequences.
    Case('token_nll(logits, targets, mask)', 'float32 targets',
         lambda: losses.token_nll(_f32(B, 3, V), jnp.ones((B, 3)), jnp.ones((B, 3))),
         TypeError, 'token_nll: targets ' + _INT_ERR + 'float32'),
    Case('token_nll(logits, targets, mask)', 'bool targets',
         lambda: losses.token_nll(_f32(B, 3, V), jnp.ones((B, 3), bool), jnp.ones((B, 3))),
         TypeError, 'token_nll: targets ' + _INT_ERR + 'bool'),
    Case('token_nll(logits, targets, mask)', 'int32 logits',
         lambda: losses.token_nll(jnp.ones((B, 3, V), jnp.int32), _ids(B, 3), jnp.ones((B, 3))),
         TypeError, 'token_nll: logits ' + _FLOAT_ERR + 'int32'),
    Case('token_nll(logits, targets, mask)', 'logits [B, V] (no time axis)',
         lambda: losses.token_nll(_f32(B, V), _ids(B, 3), jnp.ones((B, 3))),
         ValueError, re.escape('token_nll: logits has shape (2, 7); expected [B, T, V]')),
    Case('token_nll(logits, targets, mask)', 'logits [B, 3, V], targets [B, 4]',
         lambda: losses.token_nll(_f32(B, 3, V), _ids(B, 4), jnp.ones((B, 4))),
         ValueError, re.escape('token_nll: targets has shape (2, 4); expected the '
                               'shape of logits[..., 0] (2, 3)')),
    Case('token_nll(logits, targets, mask)', 'targets [B, 3], mask [B, 1]',
         lambda: losses.token_nll(_f32(B, 3, V), _ids(B, 3), jnp.ones((B, 1))),
         ValueError, re.escape('token_nll: mask has shape (2, 1); expected the '
                               'shape of targets (2, 3)')),
    Case('token_nll(logits, targets, mask)', 'a token id equal to V (eager)',
         lambda: losses.token_nll(_f32(B, 3, V), _ids(B, 3).at[1, 2].set(V), jnp.ones((B, 3))),
         ValueError, re.escape('token_nll: targets must lie in [0, 7), got 1 of 6 '
                               'values outside (min 7, max 7)')),
    Case('token_nll(logits, targets, mask)', 'a token id -1 at a masked step (eager)',
         lambda: losses.token_nll(_f32(B, 3, V), _ids(B, 3).at[0, 2].set(-1),
                                  jnp.ones((B, 3)).at[0, 2].set(0.0)),
         ValueError, re.escape('token_nll: targets must lie in [0, 7), got 1 of 6 '
                               'values outside (min -1, max -1)')),
    # Distances between distributions.
    Case('kernel_matrix(x_NxZ, y_MxZ)', 'int32 y_MxZ',
         lambda: losses.kernel_matrix(_f32(4, 3), jnp.ones((4, 3), jnp.int32)),
         TypeError, 'kernel_matrix: y_MxZ ' + _FLOAT_ERR + 'int32'),
    Case('kernel_matrix(x_NxZ, y_MxZ)', 'x [N, 3], y [M, 2]',
         lambda: losses.kernel_matrix(_f32(4, 3), _f32(4, 2)),
         ValueError, re.escape('kernel_matrix: expected samples [N, Z] and '
                               '[M, Z] (x_NxZ, y_MxZ), got (4, 3) and (4, 2)')),
    Case('mmd2(x_NxZ, y_MxZ)', 'int32 x_NxZ',
         lambda: losses.mmd2(jnp.ones((4, 3), jnp.int32), _f32(4, 3)),
         TypeError, 'mmd2: x_NxZ ' + _FLOAT_ERR + 'int32'),
]


@pytest.mark.parametrize('case', CASES, ids=lambda c: f'{c.call.split("(")[0]}: {c.bad_input}')
def test_bad_input_raises_naming_the_problem(case):
  with pytest.raises(case.error, match=case.match):
    case.fn()


def test_every_public_loss_has_a_bad_input_case():
  public = {name for name in dir(losses)
            if not name.startswith('_') and callable(getattr(losses, name))
            and getattr(getattr(losses, name), '__module__', '') == losses.__name__}
  covered = {case.call.split('(')[0] for case in CASES}
  assert public - covered == set()


def test_message_says_the_value_check_is_eager_only():
  with pytest.raises(ValueError, match='runs only on concrete'):
    losses.bernoulli_nll(_f32(B, D), jnp.full((B, D), 2.0))


# ----------------------------------------------------------------------------
# Valid inputs pass, in every floating dtype and every integer id dtype.
# ----------------------------------------------------------------------------


_FLOAT_DTYPES = [jnp.float32, jnp.bfloat16, jnp.float16]


@pytest.mark.parametrize('dtype', _FLOAT_DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_valid_float_inputs_pass_the_static_checks(dtype):
  # eval_shape runs the static checks (they run while tracing) without
  # compiling or running anything.
  a, b, c = (jax.ShapeDtypeStruct((B, D), dtype) for _ in range(3))
  f32 = jax.ShapeDtypeStruct((B, D), jnp.float32)
  calls = {
      'mse': (losses.mse, a, b),
      'sum_squared_error': (losses.sum_squared_error, a, b),
      'bernoulli_nll': (losses.bernoulli_nll, a, b),
      'bernoulli_nll mixed dtypes': (losses.bernoulli_nll, a, f32),
      'gaussian_nll': (losses.gaussian_nll, a, b, c),
      'gaussian_nll broadcast': (
          lambda x, m: losses.gaussian_nll(x, m, 0.0), a,
          jax.ShapeDtypeStruct((B, 1), dtype)),
      'gaussian_kl': (losses.gaussian_kl, a, b),
      'gaussian_kl_between': (losses.gaussian_kl_between, a, b, c, a),
      'gaussian_kl_between prior': (
          lambda m, v: losses.gaussian_kl_between(m, v, 0, 0.0), a, b),
      'l1_sparsity': (losses.l1_sparsity, a),
      'vq_codebook_loss': (losses.vq_codebook_loss, a, b),
      'vq_commitment_loss': (losses.vq_commitment_loss, a, b),
      'ddpm_epsilon_loss': (losses.ddpm_epsilon_loss, a, b),
      'token_nll': (losses.token_nll, jax.ShapeDtypeStruct((B, 3, V), dtype),
                    jax.ShapeDtypeStruct((B, 3), jnp.int32),
                    jax.ShapeDtypeStruct((B, 3), dtype)),
      'contractive_penalty': (functools.partial(losses.contractive_penalty, _encode), a),
      'contractive_penalty_estimate': (
          lambda x: losses.contractive_penalty_estimate(_encode, x, jax.random.key(0)), a),
      'contractive_penalty_mlp': (
          lambda u, k: losses.contractive_penalty_mlp(u, k, [], [jnp.tanh]),
          jax.ShapeDtypeStruct((B, 3), dtype), jax.ShapeDtypeStruct((D, 3), dtype)),
      'contractive_penalty_dense_first_estimate': (
          functools.partial(losses.contractive_penalty_dense_first_estimate, jnp.tanh),
          jax.ShapeDtypeStruct((B, 3), dtype), jax.ShapeDtypeStruct((2, B, 3), dtype)),
      'contractive_penalty_dense_first': (
          functools.partial(losses.contractive_penalty_dense_first, jnp.tanh),
          jax.ShapeDtypeStruct((B, 3), dtype), jax.ShapeDtypeStruct((D, 3), dtype)),
  }
  for name, (fn, *args) in calls.items():
    assert jax.eval_shape(fn, *args).shape == (B,), name
  scalars = {
      'kl_sparsity': (functools.partial(losses.kl_sparsity, rho=0.1), a),
      'kernel_matrix': (losses.kernel_matrix, a, b),
      'mmd2': (losses.mmd2, a, b),
  }
  for name, (fn, *args) in scalars.items():
    jax.eval_shape(fn, *args)


@pytest.mark.parametrize('dtype', _FLOAT_DTYPES, ids=lambda d: jnp.dtype(d).name)
def test_valid_targets_pass_the_eager_value_check(dtype):
  # The value check reads float16 and bfloat16 targets on the host; the rest of
  # each loss runs the same in every dtype (the static test above).
  value = losses.bernoulli_nll(_f32(B, D).astype(dtype), _u01(B, D).astype(dtype))
  assert value.dtype == dtype and np.all(np.isfinite(np.asarray(value, np.float32)))


def test_targets_at_the_ends_of_the_support_pass():
  logits = _f32(B, D)
  np.testing.assert_allclose(
      losses.bernoulli_nll(logits, jnp.zeros((B, D))), jnp.sum(jax.nn.softplus(logits), 1))
  losses.bernoulli_nll(logits, jnp.ones((B, D)))
  losses.kl_sparsity(jnp.zeros((B, D)), rho=0.0)
  losses.kl_sparsity(jnp.ones((B, D)), rho=1.0)
  losses.token_nll(_f32(B, 2, V), jnp.array([[0, V - 1]] * B), jnp.ones((B, 2)))


@pytest.mark.parametrize('dtype', [jnp.int32, jnp.uint8, np.int64], ids=lambda d: jnp.dtype(d).name)
def test_valid_token_ids_pass(dtype):
  logits = _f32(B, 3, V)
  targets = np.asarray(_ids(B, 3)).astype(dtype)
  expected = losses.token_nll(logits, _ids(B, 3), jnp.ones((B, 3)))
  for mask in (jnp.ones((B, 3)), jnp.ones((B, 3), bool), jnp.ones((B, 3), jnp.int32)):
    np.testing.assert_array_equal(losses.token_nll(logits, targets, mask), expected)


def test_int64_token_ids_pass_with_x64():
  with jax.enable_x64(True):
    targets = _ids(B, 3, dtype=jnp.int64)
    assert targets.dtype == jnp.int64
    value = losses.token_nll(_f32(B, 3, V), targets, jnp.ones((B, 3)))
    assert value.shape == (B,) and np.all(np.isfinite(value))
    with pytest.raises(ValueError, match=re.escape('targets must lie in [0, 7)')):
      losses.token_nll(_f32(B, 3, V), targets.at[0, 0].set(2**40), jnp.ones((B, 3)))


# ----------------------------------------------------------------------------
# Under jit: the checks add nothing to the program; value checks are skipped.
# ----------------------------------------------------------------------------


# The formulas of the losses without any checks: a checked loss must trace to
# exactly the same program.
def _bernoulli_nll_formula(logits, targets):
  # The unchecked loss itself: its value and derivatives are tested against
  # the naive formula and numerical gradients in losses_test.py.
  return losses._bernoulli_nll(logits, targets)  # pylint: disable=protected-access


def _mse_formula(predictions, targets):
  return jnp.mean(jnp.square(predictions - targets), axis=(1,))


def _token_nll_formula(logits, targets, mask):
  log_p = jax.nn.log_softmax(logits, axis=-1)
  picked = jnp.take_along_axis(
      log_p, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]
  return -jnp.sum(picked * mask.astype(log_p.dtype), axis=1)


_TRACE_CASES = {
    'bernoulli_nll': (losses.bernoulli_nll, _bernoulli_nll_formula,
                      lambda: (_f32(B, D), _u01(B, D))),
    'mse': (losses.mse, _mse_formula, lambda: (_f32(B, D), _f32(B, D, seed=1))),
    'token_nll': (losses.token_nll, _token_nll_formula,
                  lambda: (_f32(B, 3, V), _ids(B, 3), jnp.ones((B, 3)))),
}


def _hlo(fn, args):
  text = jax.jit(fn).lower(*args).as_text()
  return re.sub(r'module @\S+', 'module', text)


@pytest.mark.parametrize('name', sorted(_TRACE_CASES))
def test_checks_add_nothing_to_the_jitted_program(name):
  loss, formula, make_args = _TRACE_CASES[name]
  args = make_args()
  assert str(jax.make_jaxpr(loss)(*args)) == str(jax.make_jaxpr(formula)(*args))
  hlo = _hlo(loss, args)
  assert hlo == _hlo(formula, args)
  assert 'callback' not in hlo


def test_value_checks_are_skipped_under_jit():
  logits = jnp.zeros((B, D))
  # Targets 2.0 are no Bernoulli targets: eager raises, jit scores them.
  with pytest.raises(ValueError, match='bernoulli_nll: targets must lie in'):
    losses.bernoulli_nll(logits, jnp.full((B, D), 2.0))
  value = jax.jit(losses.bernoulli_nll)(logits, jnp.full((B, D), 2.0))
  np.testing.assert_allclose(value, D * np.log(2.0), rtol=1e-6)
  # An id equal to V: eager raises, jit gathers out of bounds (NaN).
  targets = _ids(B, 3).at[0, 0].set(V)
  with pytest.raises(ValueError, match='token_nll: targets must lie in'):
    losses.token_nll(_f32(B, 3, V), targets, jnp.ones((B, 3)))
  value = jax.jit(losses.token_nll)(_f32(B, 3, V), targets, jnp.ones((B, 3)))
  assert np.isnan(value[0]) and np.isfinite(value[1])
  # vmap traces its arguments too.
  jax.vmap(functools.partial(losses.kl_sparsity, rho=0.1))(jnp.full((3, B, D), 1.5))


def test_static_checks_run_under_jit():
  with pytest.raises(TypeError, match='bernoulli_nll: targets ' + _FLOAT_ERR + 'uint8'):
    jax.jit(losses.bernoulli_nll)(_f32(B, D), jnp.ones((B, D), jnp.uint8))
  with pytest.raises(ValueError, match='mse: targets has shape'):
    jax.jit(losses.mse)(_f32(B, 1), _f32(B, D))
  with pytest.raises(TypeError, match='token_nll: targets ' + _INT_ERR + 'float32'):
    jax.jit(losses.token_nll)(_f32(B, 3, V), jnp.ones((B, 3)), jnp.ones((B, 3)))


def test_value_checks_run_in_an_eager_gradient():
  # Under jax.grad only the logits are traced; the targets stay concrete.
  with pytest.raises(ValueError, match='bernoulli_nll: targets must lie in'):
    jax.grad(lambda l: jnp.sum(losses.bernoulli_nll(l, jnp.full((B, D), 2.0))))(_f32(B, D))
