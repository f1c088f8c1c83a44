"""Data-parallel training steps: ``jax.pmap`` and ``jax.jit`` over a device mesh.

Both paths wrap the single-device update rule, `ae_jax.train.train_step_fn`, so for
an objective that is a mean over examples they apply the same update as
`ae_jax.train.make_train_step` on the whole (global) batch, up to float summation
order.

Shapes: ``B`` is the global batch size (all devices, all processes), ``n`` the
number of devices and ``L`` the number of local devices of this process.

**jit + NamedSharding (recommended).** `make_mesh` builds a 1-D ``'data'`` mesh,
`shard_batch` lays the batch out along it (``P('data')``), the state and the key
are replicated (``P()``) and `make_sharded_train_step` jits the unchanged step
with those shardings. XLA inserts the gradient all-reduce. The program is the
single-device program on a global array, so randomness is identical too: with
``jax_threefry_partitionable`` (the default since JAX 0.5) a sharded
``jax.random.normal(key, (B, ...))`` returns the same numbers as on one device,
and batch statistics (sparsity targets, EMA codebooks, masked means) are global.

**pmap (maintenance mode in JAX, kept for older code).** `replicate` puts a copy
of the state on every local device, `split_batch` reshapes ``[B, ...]`` into
``[L, B/L, ...]`` and `make_pmap_train_step` maps the step with ``axis_name``;
gradients and metrics are ``lax.pmean``-ed, so the update equals the
single-device one for deterministic objectives whose loss is a mean over equally
sized shards. Differences from the single-device step, by design:

* keys: every replica folds the base key with the step and then with its replica
  index (``lax.axis_index``), so noise is independent across replicas; a
  stochastic objective draws different (equally distributed) noise than on one
  device. (Without the replica fold every shard would reuse one noise pattern.)
* batch statistics are per replica: a KL sparsity target ρ̂, a masked mean over
  shards with unequal numbers of padding rows, or metrics such as codebook
  perplexity are computed per shard and then averaged.
* model state: by default the floating leaves of a stateful objective's new
  model state are ``pmean``-ed (``sync_model_state=True``) so replicas never
  drift apart; models that reduce their statistics over ``axis_name`` themselves
  (e.g. a cross-replica EMA codebook) are unaffected, since the mean of equal
  values is that value. Pass ``sync_model_state=False`` to leave merging to the
  model alone.

**Multiple hosts.** Each process loads only its rows of each global batch
(`process_batch_slice`), then `shard_batch` assembles the global array with
``jax.make_array_from_process_local_data``; `make_mesh` spans all processes'
devices. Under pmap each process passes its own rows to `split_batch`, and
`replicate` / `unreplicate` act on local devices. Save the unreplicated state in
checkpoints: a stacked pmap state does not restore on another device count.

Example (single process):

>>> import jax, jax.numpy as jnp, optax
>>> from ae_jax import train
>>> def objective(params, batch, key):
...   return jnp.mean((batch['image'] - params['params']['b']) ** 2), {}
>>> tx = optax.sgd(0.5)
>>> mesh = make_mesh()
>>> state = replicate_on_mesh(train.create_train_state({'params': {'b': jnp.zeros(())}}, tx), mesh)
>>> step = make_sharded_train_step(objective, tx, mesh)
>>> batch = shard_batch({'image': jnp.ones((2 * mesh.size, 3))}, mesh)
>>> state, metrics = step(state, batch, jax.random.key(0))
>>> float(state.params['params']['b'])
1.0
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ae_jax import train

PyTree = train.PyTree
DATA_AXIS = 'data'


# ----------------------------------------------------------------------------
# pmap path
# ----------------------------------------------------------------------------


def replicate(tree: PyTree, devices: Sequence[jax.Device] | None = None) -> PyTree:
  """Stacks one copy of every leaf per device, for the pmap path.

  Args:
    tree: arrays to copy (e.g. a `train.TrainState`).
    devices: target devices; default ``jax.local_devices()``, pmap's order.

  Returns:
    The tree with leaves of shape ``[L, ...]``, row ``i`` on device ``i``.
  """
  devices = list(devices or jax.local_devices())
  sharding = NamedSharding(Mesh(np.array(devices), ('replica',)), P('replica'))

  def copy(x):
    x = jnp.asarray(x)
    # One single-device copy per device; avoids materialising all copies on one.
    rows = [jax.device_put(x[None], device) for device in devices]
    return jax.make_array_from_single_device_arrays((len(devices), *x.shape), sharding, rows)

  return jax.tree.map(copy, tree)


def unreplicate(tree: PyTree) -> PyTree:
  """Returns replica 0 of a `replicate`-d or pmap-output tree."""

  def first(x):
    shards = getattr(x, 'addressable_shards', None)
    if shards and len(shards) > 1 and shards[0].data.shape[:1] == (1,):
      # Reading one shard is a copy-free view; ``x[0]`` would launch a computation.
      return shards[0].data[0]
    return x[0]

  return jax.tree.map(first, tree)


def split_batch(batch: PyTree, num_devices: int | None = None) -> PyTree:
  """Reshapes every leaf ``[B, ...]`` into ``[n, B / n, ...]`` for ``jax.pmap``.

  Args:
    batch: this process's batch.
    num_devices: leading axis size; default ``jax.local_device_count()``.

  Returns:
    The reshaped batch (still on the host if it was).

  Raises:
    ValueError: if a leaf's leading size is not divisible by ``num_devices``.
  """
  n = jax.local_device_count() if num_devices is None else num_devices

  def split(x):
    size = x.shape[0]
    if size % n:
      raise ValueError(
          f'Batch size {size} is not divisible by the number of devices {n}.'
      )
    return x.reshape((n, size // n, *x.shape[1:]))

  return jax.tree.map(split, batch)


def make_pmap_train_step(
    objective: train.Objective,
    tx: optax.GradientTransformation,
    axis_name: str = 'batch',
    *,
    donate: bool = True,
    sync_model_state: bool = True,
) -> train.StepFn:
  """Maps `train.train_step_fn` over local devices with ``jax.pmap``.

  Args:
    objective: stateless or stateful objective.
    tx: optimizer.
    axis_name: name of the device axis; a model that reduces statistics across
      replicas must use the same name.
    donate: donate the replicated input state's buffers.
    sync_model_state: ``pmean`` the floating leaves of the new model state (see
      module docstring).

  Returns:
    ``step(state_L, batch_L, key) -> (state_L, metrics_L)``: ``state_L`` from
    `replicate`, ``batch_L`` from `split_batch`, ``key`` the run's base key (not
    replicated). Metrics are already averaged over replicas; `unreplicate` them.
  """
  step = train.train_step_fn(
      objective, tx, axis_name=axis_name, sync_model_state=sync_model_state
  )
  return pmap_train_step(step, axis_name, donate=donate)


def pmap_train_step(step: train.StepFn, axis_name: str = 'batch', *,
                    donate: bool = True) -> train.StepFn:
  """Maps a pure step over local devices with ``jax.pmap``.

  Unlike `shard_train_step`, pmap runs one program per replica, so the step
  itself must average its gradients and metrics over ``axis_name`` (build it
  with ``axis_name=``, as `train.train_step_fn` and
  `ae_jax.recipes.aae.train_step_fn` take).

  Returns:
    ``step(state_L, batch_L, key) -> (state_L, metrics_L)`` (see
    `make_pmap_train_step`).
  """
  return jax.pmap(
      step,
      axis_name=axis_name,
      in_axes=(0, 0, None),
      donate_argnums=(0,) if donate else (),
  )


def make_pmap_eval_step(objective: train.Objective, axis_name: str = 'batch') -> train.EvalFn:
  """pmap-ed `train.eval_step_fn`: ``eval_step(state_L, batch_L, key) -> metrics_L``."""
  return jax.pmap(
      train.eval_step_fn(objective, axis_name=axis_name),
      axis_name=axis_name,
      in_axes=(0, 0, None),
  )


# ----------------------------------------------------------------------------
# jit + NamedSharding path
# ----------------------------------------------------------------------------


def make_mesh(num_devices: int | None = None, axis_name: str = DATA_AXIS) -> Mesh:
  """A 1-D data-parallel mesh over the first ``num_devices`` devices.

  The axis type is ``Auto`` (JAX 0.10's ``jax.make_mesh`` defaults to
  ``Explicit``), so shardings are given to ``jax.jit`` as ``in_shardings`` /
  ``out_shardings`` and XLA propagates them.

  Args:
    num_devices: devices to use; default all devices of all processes.
    axis_name: name of the mesh axis.

  Returns:
    A `jax.sharding.Mesh` of shape ``(num_devices,)``.
  """
  available = jax.device_count()
  n = available if num_devices is None else num_devices
  if not 1 <= n <= available:
    raise ValueError(f'num_devices must be in [1, {available}], got {n}.')
  return jax.make_mesh(
      (n,),
      (axis_name,),
      axis_types=(jax.sharding.AxisType.Auto,),
      devices=jax.devices()[:n],
  )


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Splits the leading (batch) axis over all mesh axes."""
  return NamedSharding(mesh, P(tuple(mesh.axis_names)))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """A full copy on every device of ``mesh``."""
  return NamedSharding(mesh, P())


def replicate_on_mesh(tree: PyTree, mesh: Mesh) -> PyTree:
  """Places ``tree`` (e.g. a train state) replicated on every device of ``mesh``.

  Single-process only for host values: in a multi-process run every process must
  pass identical values (same seed), as ``jax.device_put`` assumes.
  """
  return jax.device_put(tree, replicated_sharding(mesh))


def process_batch_slice(global_batch_size: int) -> slice:
  """Rows of a global batch that this process loads (contiguous, equal parts).

  Raises:
    ValueError: if ``global_batch_size`` is not divisible by the process count.
  """
  count, index = jax.process_count(), jax.process_index()
  if global_batch_size % count:
    raise ValueError(
        f'Global batch size {global_batch_size} is not divisible by the number of '
        f'processes {count}.'
    )
  per_process = global_batch_size // count
  return slice(index * per_process, (index + 1) * per_process)


def shard_batch(batch: PyTree, mesh: Mesh) -> PyTree:
  """Assembles this process's rows into global arrays sharded along the batch axis.

  With one process the batch is the global batch. With several, each passes its
  own ``B / process_count`` rows (see `process_batch_slice`) and the result is one
  global array of ``B`` rows.

  Args:
    batch: process-local arrays, leaves of shape ``[B / process_count, ...]``.
    mesh: the data-parallel mesh.

  Returns:
    The batch as global ``jax.Array``s with sharding `batch_sharding` (``mesh``).

  Raises:
    ValueError: if the global batch size is not divisible by the number of
      devices in the mesh, or leaves disagree on the batch size.
  """
  sharding = batch_sharding(mesh)
  sizes = {np.shape(x)[0] for x in jax.tree.leaves(batch)}
  if len(sizes) > 1:
    raise ValueError(f'Batch leaves have different leading sizes {sorted(sizes)}.')
  for local_size in sizes:
    global_size = local_size * jax.process_count()
    if global_size % mesh.size:
      raise ValueError(
          f'Global batch size {global_size} is not divisible by the number of '
          f'devices {mesh.size} in the mesh.'
      )

  def put(x):
    return jax.make_array_from_process_local_data(sharding, np.asarray(x))

  return jax.tree.map(put, batch)


def shard_train_step(step: train.StepFn, mesh: Mesh, *, donate: bool = True) -> train.StepFn:
  """Jits any pure ``step(state, batch, key) -> (state, metrics)`` data-parallel over ``mesh``.

  The state and key are replicated, the batch is split along the mesh
  (`shard_batch`), and XLA inserts the gradient all-reduce: the program is the
  single-device program on global arrays, so it draws the same noise and
  computes the same batch statistics. Works for any step of the contract in
  `ae_jax.recipes.base`, multi-optimizer ones (the AAE) included.

  Args:
    step: the pure step.
    mesh: mesh from `make_mesh`.
    donate: donate the input state's buffers.

  Returns:
    The jitted step; outputs replicated.
  """
  replicated, data = replicated_sharding(mesh), batch_sharding(mesh)
  return jax.jit(
      step,
      in_shardings=(replicated, data, replicated),
      out_shardings=(replicated, replicated),
      donate_argnums=(0,) if donate else (),
      compiler_options=train.compiler_options(),
  )


def shard_eval_step(eval_step: train.EvalFn, mesh: Mesh) -> train.EvalFn:
  """Jits any pure ``eval_step(state, batch, key) -> metrics`` with the shardings of
  `shard_train_step`."""
  replicated, data = replicated_sharding(mesh), batch_sharding(mesh)
  return jax.jit(eval_step, in_shardings=(replicated, data, replicated),
                 out_shardings=replicated, compiler_options=train.compiler_options())


def make_sharded_train_step(
    objective: train.Objective,
    tx: optax.GradientTransformation,
    mesh: Mesh,
    *,
    donate: bool = True,
) -> train.StepFn:
  """`shard_train_step` of `train.train_step_fn(objective, tx)`."""
  return shard_train_step(train.train_step_fn(objective, tx), mesh, donate=donate)


def make_sharded_eval_step(objective: train.Objective, mesh: Mesh) -> train.EvalFn:
  """`shard_eval_step` of `train.eval_step_fn(objective)`."""
  return shard_eval_step(train.eval_step_fn(objective), mesh)
