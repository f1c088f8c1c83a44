"""Train state and jitted train/eval steps for autoencoder objectives.

An *objective* is what `ae_jax.objectives` builds:

* stateless: ``objective(params, batch, key) -> (loss, metrics)``;
* stateful (e.g. a VQ-VAE with an EMA codebook):
  ``objective(params, batch, key, model_state) -> (loss, (metrics, new_model_state))``.

If the objective also takes a keyword ``step`` (schedules such as β warm-up), the
steps pass ``step=state.step``, the number of updates applied before this one.

``params`` is the full variables dict given to ``model.apply`` (``{'params': ...}``)
and ``model_state`` holds the non-trainable collections (``{'vq_stats': ...}``).
A `TrainState` is stateful iff its ``model_state`` is non-empty; the check is on the
pytree structure, so it is resolved at trace time.

The step logic lives in one pure function, `train_step_fn`; `make_train_step` jits
it for one device and `ae_jax.parallel` wraps the same function with ``jax.pmap`` or
``jax.jit`` over a `jax.sharding.Mesh`, so all three paths share the update rule.

Randomness: the step receives the run's base ``key`` and folds ``state.step`` in
itself, ``step_key = fold_in(key, state.step)``. A loop therefore passes the same key
every step and a restarted run draws the same noise for the same step.

Example:

>>> import jax, jax.numpy as jnp, optax
>>> def objective(params, batch, key):
...   loss = jnp.mean((batch['image'] * params['params']['w'] - 1.0) ** 2)
...   return loss, {}
>>> tx = optax.sgd(0.1)
>>> state = create_train_state({'params': {'w': jnp.zeros(())}}, tx)
>>> step = make_train_step(objective, tx)
>>> batch = {'image': jnp.ones((4, 2, 2, 1))}
>>> state, metrics = step(state, batch, jax.random.key(0))
>>> int(state.step), round(float(metrics['loss']), 4)
(1, 1.0)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
import functools
import inspect
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

PyTree = Any
Metrics = dict[str, jax.Array]
Objective = Callable[..., tuple[jax.Array, Any]]
StepFn = Callable[['TrainState', PyTree, jax.Array], tuple['TrainState', Metrics]]
EvalFn = Callable[['TrainState', PyTree, jax.Array], Metrics]


class TrainState(flax.struct.PyTreeNode):
  """Everything a training step reads and writes.

  Attributes:
    step: int32 scalar, number of updates applied so far.
    params: trainable variables, the full dict given to ``model.apply``
      (``{'params': ...}``).
    opt_state: optax state of ``tx`` for ``params``.
    model_state: non-trainable collections updated by a stateful objective
      (e.g. ``{'vq_stats': ...}``); ``{}`` for stateless objectives.
  """

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState
  model_state: dict[str, Any]


def create_train_state(
    params: PyTree,
    tx: optax.GradientTransformation,
    model_state: Mapping[str, Any] | None = None,
) -> TrainState:
  """Builds the step-0 state.

  Args:
    params: the variables dict given to ``model.apply``, e.g. ``{'params': ...}``.
    tx: the optimizer; its state is initialised on ``params``.
    model_state: non-trainable collections of a stateful objective, or None.

  Returns:
    A `TrainState` with ``step == 0``.
  """
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      opt_state=tx.init(params),
      model_state=dict(model_state) if model_state else {},
  )


def is_stateful(state: TrainState) -> bool:
  """True iff ``state`` carries model state for a stateful objective."""
  return bool(jax.tree.leaves(state.model_state))


def _step_key(key: jax.Array, step: jax.Array, axis_name: str | None) -> jax.Array:
  key = jax.random.fold_in(key, step)
  if axis_name is not None:
    # Independent noise per replica: with the same key every replica would draw the
    # same noise pattern for its own shard of the batch.
    key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
  return key


def accepts_step(objective: Objective) -> bool:
  """True iff ``objective`` takes a ``step`` keyword (or ``**kwargs``)."""
  try:
    parameters = inspect.signature(objective).parameters.values()
  except (TypeError, ValueError):  # Builtins and some C callables have no signature.
    return False
  return any(
      p.kind is inspect.Parameter.VAR_KEYWORD
      or (p.name == 'step' and p.kind is not inspect.Parameter.POSITIONAL_ONLY)
      for p in parameters
  )


def _call_objective(
    objective: Objective,
    params: PyTree,
    batch: PyTree,
    key: jax.Array,
    model_state: dict[str, Any],
    step: jax.Array,
) -> tuple[jax.Array, tuple[Metrics, dict[str, Any]]]:
  """Calls either objective signature; returns (loss, (metrics, model_state))."""
  kwargs = {'step': step} if accepts_step(objective) else {}
  if jax.tree.leaves(model_state):
    loss, (metrics, new_model_state) = objective(params, batch, key, model_state, **kwargs)
    return loss, (dict(metrics), dict(new_model_state))
  loss, metrics = objective(params, batch, key, **kwargs)
  return loss, (dict(metrics), model_state)


def _pmean_floats(tree: PyTree, axis_name: str) -> PyTree:
  """Averages the floating leaves over ``axis_name`` and leaves the others alone."""

  def mean(x):
    if jnp.issubdtype(jnp.result_type(x), jnp.inexact):
      return jax.lax.pmean(x, axis_name)
    return x

  return jax.tree.map(mean, tree)


def global_norm(tree: PyTree) -> jax.Array:
  """L2 norm of all leaves of ``tree`` taken together: sqrt(sum_i ||x_i||^2)."""
  leaves = jax.tree.leaves(tree)
  return jnp.sqrt(sum(jnp.sum(jnp.square(x.astype(jnp.float32))) for x in leaves))


def train_step_fn(
    objective: Objective,
    tx: optax.GradientTransformation,
    *,
    axis_name: str | None = None,
    sync_model_state: bool = True,
) -> StepFn:
  """Returns the pure (un-jitted) train step shared by all execution paths.

  The step computes ``loss, grads`` of ``objective`` at ``state.params`` with the key
  ``fold_in(key, state.step)``, applies ``tx`` and increments ``state.step``.

  With ``axis_name`` (for ``jax.pmap``; `ae_jax.parallel` sets it) each replica sees
  one shard of the batch: gradients and metrics are ``pmean``-ed over the axis, so for
  objectives that are a mean over examples the update equals the single-device update
  on the whole batch. The key is further folded with the replica index so noise is
  independent across replicas; a stochastic objective then draws different noise
  than the single-device step (same distribution, different samples).

  Args:
    objective: stateless or stateful objective (see module docstring).
    tx: optimizer.
    axis_name: name of the mapped device axis, or None on a single device / under
      ``jax.jit`` with shardings (there the whole batch is one logical array).
    sync_model_state: with ``axis_name``, ``pmean`` the floating leaves of the new
      model state so replicas stay identical (integer leaves are kept, they must
      already agree). Harmless if the model reduces its own statistics over the
      axis (the mean of equal values is that value). For EMA statistics of batch
      means this equals the single-device EMA; for statistics that are sums (counts)
      it gives the per-replica average, i.e. the global sum divided by the number
      of replicas. Set False to leave merging entirely to the model.

  Returns:
    ``step(state, batch, key) -> (new_state, metrics)`` where metrics holds the
    objective's metrics plus ``'loss'`` and ``'grad_norm'`` (global L2 norm of the
    averaged gradient).
  """

  def step(state: TrainState, batch: PyTree, key: jax.Array) -> tuple[TrainState, Metrics]:
    step_key = _step_key(key, state.step, axis_name)

    def loss_fn(params):
      return _call_objective(
          objective, params, batch, step_key, state.model_state, state.step
      )

    (loss, (metrics, model_state)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params
    )
    metrics = {**metrics, 'loss': loss}
    if axis_name is not None:
      grads = jax.lax.pmean(grads, axis_name)
      metrics = jax.lax.pmean(metrics, axis_name)
      if sync_model_state:
        model_state = _pmean_floats(model_state, axis_name)
    metrics['grad_norm'] = global_norm(grads)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(
        step=state.step + 1, params=params, opt_state=opt_state, model_state=model_state
    )
    return new_state, metrics

  return step


def eval_step_fn(objective: Objective, *, axis_name: str | None = None) -> EvalFn:
  """Returns the pure eval step: the objective's metrics and ``'loss'``, no gradients.

  The key is used as given (not folded with the step), so evaluating two states with
  the same key draws the same noise. A stateful objective's new model state is
  discarded. With ``axis_name`` the key is folded with the replica index and metrics
  are ``pmean``-ed, as in `train_step_fn`.

  Args:
    objective: stateless or stateful objective.
    axis_name: name of the mapped device axis under ``jax.pmap``, else None.

  Returns:
    ``eval_step(state, batch, key) -> metrics``.
  """

  def eval_step(state: TrainState, batch: PyTree, key: jax.Array) -> Metrics:
    if axis_name is not None:
      key = jax.random.fold_in(key, jax.lax.axis_index(axis_name))
    loss, (metrics, _) = _call_objective(
        objective, state.params, batch, key, state.model_state, state.step
    )
    metrics = {**metrics, 'loss': loss}
    if axis_name is not None:
      metrics = jax.lax.pmean(metrics, axis_name)
    return metrics

  return eval_step


# XLA:CPU hands matrix products and convolutions to YNNPACK by default. For the
# convolutional models XLA's own convolutions are faster (train steps at batch
# 128 on 2 cores: conv AE 0.86x, conv VAE 0.92x, VQ-VAE 0.72x the time, MLP
# VAE unchanged; `python -m experiments.bench --torch`), so ae-jax's steps
# keep only the products on YNNPACK.
_CPU_COMPILER_OPTIONS = {
    'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_INDIVIDUAL_DOT'}


@functools.cache
def _cpu_options_accepted() -> bool:
  try:
    jax.jit(lambda x: x + 1, compiler_options=_CPU_COMPILER_OPTIONS).lower(1.0).compile()
  except Exception:  # pylint: disable=broad-except
    return False  # An XLA that does not know the option: its defaults.
  return True


def compiler_options() -> dict[str, str]:
  """XLA options for ae-jax's jitted steps on the default backend (`jax.jit(compiler_options=)`).

  On CPU, convolutions stay with XLA and only matrix products go to YNNPACK
  (see `_CPU_COMPILER_OPTIONS`); elsewhere, and with an XLA that does not
  know the option, none. The training loop, `make_train_step`,
  `ae_jax.parallel`'s jitted steps and the benchmark use them.
  """
  if jax.default_backend() == 'cpu' and _cpu_options_accepted():
    return dict(_CPU_COMPILER_OPTIONS)
  return {}


def make_train_step(
    objective: Objective, tx: optax.GradientTransformation, *, donate: bool = True
) -> StepFn:
  """Jits `train_step_fn` for one device.

  Donation contract (the default): the step reuses the memory of the state it
  is given for the state it returns, so the state passed in, and every array it
  holds, is deleted by the call; so are the `params` that `create_train_state`
  was given, which the state holds as they are. Always rebind the result,
  `state, metrics = step(state, batch, key)`, and read parameters from the
  newest state (`state.params`); touching a donated array raises
  `RuntimeError: Array has been deleted`. Copy what you want to keep before the
  step (`jax.tree.map(jnp.copy, state)`), or pass `donate=False`.

  Args:
    objective: stateless or stateful objective.
    tx: optimizer (the one the state was created with).
    donate: donate the input state's buffers to the output state (above); set
      False to keep the state passed in (e.g. in tests), at the cost of a second
      copy of the state in memory during the step.

  Returns:
    ``step(state, batch, key) -> (new_state, metrics)``; ``key`` is the run's base
    key, folded with ``state.step`` inside the step.
  """
  return jax.jit(train_step_fn(objective, tx), donate_argnums=(0,) if donate else (),
                 compiler_options=compiler_options())


def make_eval_step(objective: Objective) -> EvalFn:
  """Jits `eval_step_fn`: ``eval_step(state, batch, key) -> metrics``."""
  return jax.jit(eval_step_fn(objective), compiler_options=compiler_options())


def nonfinite_metrics(metrics: Mapping[str, Any]) -> list[str]:
  """Names of the metrics holding NaN or Inf (sorted); fetches them to the host."""
  bad = []
  for name, value in metrics.items():
    value = np.asarray(jax.device_get(value))
    if np.issubdtype(value.dtype, np.inexact) and not np.all(np.isfinite(value)):
      bad.append(name)
  return sorted(bad)


def is_finite_metrics(metrics: Mapping[str, Any]) -> bool:
  """True iff every floating metric is finite."""
  return not nonfinite_metrics(metrics)


def check_finite_metrics(metrics: Mapping[str, Any], step: int) -> None:
  """Raises if a metric is NaN or Inf, naming the step and the offending terms.

  Args:
    metrics: metrics of one step (host or device values).
    step: the step the metrics belong to, for the message.

  Raises:
    FloatingPointError: if any floating metric is not finite.
  """
  bad = nonfinite_metrics(metrics)
  if bad:
    values = ', '.join(f'{name}={_describe(metrics[name])}' for name in bad)
    raise FloatingPointError(f'Non-finite metrics at step {step}: {values}.')


def _describe(value: Any) -> str:
  value = np.asarray(jax.device_get(value))
  if value.ndim == 0:
    return str(value.item())
  num_nan, num_inf = int(np.isnan(value).sum()), int(np.isinf(value).sum())
  return f'array(shape={value.shape}, {num_nan} nan, {num_inf} inf)'
