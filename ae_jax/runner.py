"""The training loop behind `python -m experiments.main`.

`train_and_evaluate(config, workdir)` validates the config, builds the model,
objective, optimizer and data, restores the latest checkpoint in `workdir` if
there is one, trains with progress shown, evaluates, and writes into `workdir`:

  metrics.jsonl          one JSON object per logged train step and per eval;
  tensorboard/           the same scalars as TensorBoard events;
  checkpoints/           orbax checkpoints (atomic, the last few kept);
  figures/*.png          reconstructions, prior samples, latent map, curves.

A run started again on the same workdir resumes from its latest checkpoint
with the data order it would have had, so an interrupted run ends where an
uninterrupted one would. A non-finite loss or gradient stops the run with a
`TrainingDivergedError` naming the step and the terms; the checkpoints written
before it are kept, and none is written after it.

Devices and processes. With one device the loop uses `train.make_train_step`;
with more (one process or several) it uses the jit + NamedSharding step of
`ae_jax.parallel` on a 1-D mesh over all devices of all processes. The global
batch `config.data.batch_size` is the same either way; each process loads only
its rows of every batch. State and keys are replicated and the sharded program
draws the same noise as the single-device one, so a run on n devices follows
the 1-device run up to float summation order. With more than one device the
loop blocks on every step (it reads that step's metrics at once): on CPU hosts
with few cores, a stream of unblocked all-reduce steps over fake devices was
seen to deadlock now and then (XLA then aborts the process after about 60 s).
Checkpoints hold the unreplicated state and restore on any device count.
In a multi-process run (`jax.distributed.initialize` called first, as
`experiments/main.py` does) every process calls the orbax save and restore,
which write and read collectively; metrics, TensorBoard events, figures and
printed lines come from process 0 only.

Preemption. A SIGTERM makes the loop finish the step in flight, save a
checkpoint at the next step boundary every process agrees on, and raise
`Preempted`; running again on the same workdir resumes there. With
`jax.distributed` initialized the agreement comes from JAX's preemption service
through `CheckpointManager.reached_preemption(step)` (JAX itself catches
SIGTERM in every process, and a signal to any one process stops all at the same
step); otherwise a Python SIGTERM handler, installed for the duration of the
loop, sets a flag checked after every step.
"""

import functools
import json
import math
import os
import signal
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import tqdm

from ae_jax import build
from ae_jax import data as data_lib
from ae_jax import models
from ae_jax import parallel
from ae_jax import plotting
from ae_jax import train


# Datasets of token rows (ae_jax.molecules.data.MOLECULE_DATASETS), named here so
# that image runs never import the molecule package.
_MOLECULE_DATASETS = ('moses',)


class TrainingDivergedError(FloatingPointError):
  """The loss or a gradient became NaN or Inf."""


class Preempted(Exception):  # pylint: disable=g-bad-exception-name
  """The run stopped on a preemption notice (SIGTERM) after saving a checkpoint.

  Attributes:
    step: the step of the saved checkpoint, where a rerun resumes.
    checkpoint_dir: the directory holding it.
  """

  def __init__(self, step: int, checkpoint_dir: str):
    super().__init__(
        f'Preempted: saved a checkpoint at step {step} in {checkpoint_dir}; run the '
        'same command again to resume from it.')
    self.step = step
    self.checkpoint_dir = checkpoint_dir


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Rejects a config that cannot train, before any work is done.

  Raises:
    ValueError: naming the field and the value at fault.
  """
  if config.variant not in build.VARIANTS:
    raise ValueError(
        f'config.variant={config.variant!r} is unknown; expected one of {sorted(build.VARIANTS)}.')
  allowed = build.VARIANTS[config.variant][1]
  if config.model.name not in allowed:
    raise ValueError(
        f'config.model.name={config.model.name!r} does not fit variant {config.variant!r}; '
        f'expected one of {allowed}.')
  for field in ('latent_dim', 'num_codes', 'code_dim'):
    value = config.model.get(field)
    if value is not None and value <= 0:
      raise ValueError(f'config.model.{field} must be > 0, got {value}.')
  for section, field in (('data', 'batch_size'), ('data', 'eval_batch_size'),
                         ('train', 'num_train_steps'), ('train', 'log_every_steps'),
                         ('train', 'eval_every_steps'), ('train', 'checkpoint_every_steps'),
                         ('train', 'num_eval_batches'), ('train', 'keep_checkpoints')):
    value = config[section][field]
    if value <= 0:
      raise ValueError(f'config.{section}.{field} must be > 0, got {value}.')
  num_devices = jax.device_count()
  for field in ('batch_size', 'eval_batch_size'):
    if config.data[field] % num_devices:
      raise ValueError(
          f'config.data.{field}={config.data[field]} is not divisible by the '
          f'{num_devices} devices.')
  # The builders check the remaining values (β < 0, unknown noise, ...) by name.
  build.build_objective(config.variant, build.build_model(config.model), config.loss)
  if config.variant in build.TRAINERS:
    if jax.device_count() > 1:
      raise ValueError(f'config.variant={config.variant!r} trains on one device only; got '
                       f'{jax.device_count()} devices (set JAX_PLATFORMS/CUDA_VISIBLE_DEVICES '
                       'to expose one).')
    build.build_trainer(build.build_model(config.model), config)
  build.build_optimizer(config.optim)
  if config.variant == 'diffusion_ae':
    from ae_jax import diffusion_ae  # pylint: disable=g-import-not-at-top
    diffusion_ae.validate_config(config)


def _data_iterator(config, split: str, *, batch_size: int, shuffle: bool, start_step: int = 0,
                   drop_remainder: bool = True,
                   whole_batch: bool = False) -> Iterator[dict[str, np.ndarray]]:
  """Batches of `split`; this process's rows of each global batch unless `whole_batch`."""
  data = config.data.name
  if data in _MOLECULE_DATASETS:
    # Token rows of tokenized molecules, served under the batch key 'tokens'.
    from ae_jax.molecules import data as molecule_data  # pylint: disable=g-import-not-at-top
    molecule_data.check_config(config)
    data = molecule_data.source_from_config(config.data, split)
  return data_lib.batches(
      data, split, batch_size=batch_size, seed=config.data.shuffle_seed,
      shuffle=shuffle, drop_remainder=drop_remainder, binarize=config.data.binarize,
      start_step=start_step, data_dir=config.data.data_dir,
      process_index=0 if whole_batch else jax.process_index(),
      process_count=1 if whole_batch else jax.process_count())


def _replicate_key(key: jax.Array, sharding: jax.sharding.Sharding) -> jax.Array:
  """`key` as a global array with `sharding` (device_put refuses committed local keys)."""
  data = np.asarray(jax.random.key_data(key))
  return jax.random.wrap_key_data(jax.device_put(data, sharding), impl=jax.random.key_impl(key))


def init_variables(model, x: jax.Array, key: jax.Array) -> dict[str, Any]:
  """Initial variables of any ae_jax model for an input batch like `x`."""
  if isinstance(model, (models.MLPVAE, models.ConvVAE, models.SequenceVAE, models.LadderVAE)):
    return model.init(key, x, key)
  if isinstance(model, models.VQVAE):
    return model.init(key, x, train=False)
  if isinstance(model, models.DiffusionAutoencoder):
    return model.init(key, x, x, jnp.zeros((x.shape[0],), jnp.int32))
  return model.init(key, x)


def _split_variables(variables) -> tuple[dict, dict]:
  params = {'params': variables['params']}
  model_state = {k: v for k, v in variables.items() if k != 'params'}
  return params, model_state


def _to_host(metrics: Mapping[str, jax.Array]) -> dict[str, float]:
  return {k: float(v) for k, v in jax.device_get(metrics).items()}


def _check_finite(step: int, metrics: dict[str, float]) -> None:
  bad = {k: v for k, v in metrics.items() if not math.isfinite(v)}
  if bad:
    terms = ', '.join(f'{k}={v}' for k, v in sorted(metrics.items()))
    raise TrainingDivergedError(
        f'Training diverged at step {step}: non-finite {sorted(bad)}. All terms: {terms}. '
        'The checkpoints written before this step are kept.')


def drop_records_after(path: str, step: int) -> list[dict[str, Any]]:
  """A resumed run repeats the steps after its checkpoint: forgets their records
  in the JSON-lines file `path` and returns the records kept (none if no file)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    kept = [line for line in f if json.loads(line)['step'] <= step]
  with open(path, 'w') as f:
    f.writelines(kept)
  return [json.loads(line) for line in kept]


class _MetricWriter:
  """JSON lines plus TensorBoard events (tensorboardX: no TensorFlow needed)."""

  def __init__(self, workdir: str, enabled: bool, start_step: int):
    self.enabled = enabled
    self.path = os.path.join(workdir, 'metrics.jsonl')
    if enabled:
      drop_records_after(self.path, start_step)
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, split: str, metrics: Mapping[str, float]) -> None:
    if not self.enabled:
      return
    with open(self.path, 'a') as f:
      f.write(json.dumps({'step': step, 'split': split, **metrics}) + '\n')
    for name, value in metrics.items():
      self._tb.add_scalar(f'{split}/{name}', value, step)
    self._tb.flush()

  def close(self) -> None:
    if self.enabled:
      self._tb.close()


class _PreemptionNotice:
  """Says after which step to stop for a SIGTERM: the same step in every process.

  Under `jax.distributed`, JAX's preemption service catches SIGTERM and
  `reached_preemption(step)` (to be called at every step by every process)
  turns true at one agreed step. In a plain single-process run a Python
  handler sets a flag instead; there is nobody to agree with.
  """

  def __init__(self, manager: ocp.CheckpointManager, enabled: bool):
    self._manager = manager
    self._distributed = enabled and jax.distributed.is_initialized()
    self._signaled = False
    self._previous_handler = None
    if (enabled and not self._distributed
        and threading.current_thread() is threading.main_thread()):
      self._previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

  def _on_sigterm(self, signum, frame) -> None:
    del signum, frame
    self._signaled = True

  def reached(self, step: int) -> bool:
    if self._distributed:
      return self._manager.reached_preemption(step)
    return self._signaled

  def close(self) -> None:
    if self._previous_handler is not None:
      signal.signal(signal.SIGTERM, self._previous_handler)
      self._previous_handler = None


def _checkpoint_manager(workdir: str, config) -> ocp.CheckpointManager:
  options = ocp.CheckpointManagerOptions(
      max_to_keep=config.train.keep_checkpoints, create=True)
  return ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                               options=options)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str, *,
                       handle_preemption: bool = True) -> dict[str, float]:
  """Trains and evaluates the run described by `config`, writing into `workdir`.

  In a multi-process run every process calls this with the same arguments.

  Args:
    config: the run's config (see experiments/configs).
    workdir: directory for checkpoints, metrics and figures; shared by all
      processes.
    handle_preemption: stop cleanly on SIGTERM (see module docstring). Without
      `jax.distributed`, a SIGTERM handler is installed while training (main
      thread only) and the previous one restored after.

  Returns:
    The final eval metrics.

  Raises:
    Preempted: after saving a checkpoint, when a SIGTERM arrived while training.
    TrainingDivergedError: when the loss or a gradient became NaN or Inf.
  """
  validate_config(config)
  os.makedirs(workdir, exist_ok=True)
  is_main = jax.process_index() == 0
  model = build.build_model(config.model)
  objective = build.build_objective(config.variant, model, config.loss)
  tx = build.build_optimizer(config.optim)

  key = jax.random.key(config.train.seed)
  init_key, train_key, eval_key = jax.random.split(key, 3)
  first = next(_data_iterator(config, config.data.train_split,
                              batch_size=config.data.batch_size, shuffle=False))
  # Jitted: one compilation instead of one per eager op (seconds on CPU).
  params, model_state = _split_variables(jax.jit(functools.partial(init_variables, model))(
      jnp.asarray(first['tokens' if 'tokens' in first else 'image'][:1]), init_key))
  state = train.create_train_state(params, tx, model_state)
  trainer = build.build_trainer(model, config)  # None unless a multi-phase variant (AAE).
  if trainer is not None:
    state = trainer.create_state(params, model_state)

  if jax.device_count() > 1:
    mesh = parallel.make_mesh()
    replicated = parallel.replicated_sharding(mesh)
    train_step = parallel.make_sharded_train_step(objective, tx, mesh)
    eval_step = parallel.make_sharded_eval_step(objective, mesh)
    # Every process built the same host values (same seed); device_put of host
    # values onto a sharding spanning all processes checks that they agree.
    state = jax.device_put(jax.device_get(state), replicated)
    train_key, eval_key = (_replicate_key(k, replicated) for k in (train_key, eval_key))
    put = lambda batch: parallel.shard_batch(batch, mesh)
  else:
    train_step = (train.make_train_step(objective, tx) if trainer is None
                  else trainer.make_train_step())
    eval_step = train.make_eval_step(objective)
    put = lambda batch: jax.tree.map(jnp.asarray, batch)
  if is_main:
    print(f'Devices: {jax.device_count()} x {jax.devices()[0].platform} in '
          f'{jax.process_count()} process(es); '
          + ('data-parallel step over the mesh.' if jax.device_count() > 1
             else 'single-device step.'), flush=True)

  manager = _checkpoint_manager(workdir, config)
  if manager.latest_step() is not None:
    # The target carries this run's shardings, so a checkpoint written on any
    # number of devices restores onto the current ones.
    target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
    state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))
    if is_main:
      print(f'Resumed from {workdir}/checkpoints at step {int(state.step)}.', flush=True)
  start_step = int(state.step)

  writer = _MetricWriter(workdir, enabled=is_main, start_step=start_step)
  num_steps = config.train.num_train_steps
  train_iter = _data_iterator(config, config.data.train_split, batch_size=config.data.batch_size,
                              shuffle=True, start_step=start_step)
  progress = tqdm.tqdm(total=num_steps, initial=start_step, unit='step', dynamic_ncols=True,
                       disable=not (config.train.progress_bar and is_main))

  def evaluate(step: int) -> dict[str, float]:
    eval_iter = _data_iterator(config, config.data.eval_split,
                               batch_size=config.data.eval_batch_size, shuffle=False,
                               drop_remainder=False)
    totals, count = {}, 0
    for _, batch in zip(range(config.train.num_eval_batches), eval_iter):
      metrics = _to_host(eval_step(state, put(batch), eval_key))
      for k, v in metrics.items():
        totals[k] = totals.get(k, 0.0) + v
      count += 1
    result = {k: v / count for k, v in totals.items()}
    writer.write(step, 'eval', result)
    return result

  # On one device metrics are read one step late so the host never waits on the
  # step it just dispatched; with several devices each step is waited for (see
  # the module docstring). A save waits for its own step's metrics, so no
  # checkpoint ever holds a state reached through a non-finite loss or gradient.
  block_every_step = jax.device_count() > 1
  pending = None
  preempted_at = None
  eval_metrics: dict[str, float] = {}
  start_time = time.time()
  preemption = _PreemptionNotice(manager, enabled=handle_preemption)
  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = put(next(train_iter))
      state, metrics = train_step(state, batch, train_key)
      if pending is not None:
        _finish_step(*pending, writer=writer, config=config, progress=progress)
      pending = (step, metrics)
      if block_every_step:
        _finish_step(*pending, writer=writer, config=config, progress=progress)
        pending = None
      preempt = preemption.reached(step)
      if step % config.train.checkpoint_every_steps == 0 or step == num_steps or preempt:
        if pending is not None:
          _finish_step(*pending, writer=writer, config=config, progress=progress)
          pending = None
        manager.save(step, args=ocp.args.StandardSave(state), force=preempt)
      if preempt:
        preempted_at = step
        break
      if step % config.train.eval_every_steps == 0 or step == num_steps:
        eval_metrics = evaluate(step)
        if is_main:
          progress.write(f'step {step}: eval ' +
                         ', '.join(f'{k}={v:.4g}' for k, v in sorted(eval_metrics.items())))
    if pending is not None:
      _finish_step(*pending, writer=writer, config=config, progress=progress)
  finally:
    manager.wait_until_finished()
    manager.close()
    # After the last save has landed: a SIGTERM until then is absorbed.
    preemption.close()
    progress.close()
    writer.close()
  if preempted_at is not None:
    raise Preempted(preempted_at, os.path.join(os.path.abspath(workdir), 'checkpoints'))

  if not eval_metrics:
    eval_metrics = evaluate(start_step)
  if isinstance(model, models.DiffusionAutoencoder):
    # DDIM reconstruction PSNRs, then the second stage: a latent DDPM on the frozen encoder.
    from ae_jax import diffusion_ae  # pylint: disable=g-import-not-at-top
    eval_metrics = {**eval_metrics, **diffusion_ae.finish_run(
        config, model, state, workdir, eval_key, is_main=is_main)}
  if is_main:
    paths = write_figures(config, model, state, workdir, eval_key)
    seconds = time.time() - start_time
    print(f'Trained steps {start_step}..{num_steps} in {seconds:.1f} s. '
          f'Test metrics: ' + ', '.join(f'{k}={v:.4g}' for k, v in sorted(eval_metrics.items())))
    print(f'Metrics: {writer.path}')
    print('Figures: ' + ', '.join(paths))
  return eval_metrics


def _finish_step(step, metrics, *, writer, config, progress) -> None:
  host = _to_host(metrics)
  _check_finite(step, host)
  progress.update(step - progress.n)
  progress.set_postfix(loss=f"{host['loss']:.4g}", refresh=False)
  if step % config.train.log_every_steps == 0 or step == config.train.num_train_steps:
    writer.write(step, 'train', host)


def write_figures(config, model, state, workdir: str, key: jax.Array) -> list[str]:
  """Reconstructions, prior samples (generative models), the latent map and
  the training curves, as PNG files under workdir/figures."""
  if isinstance(model, models.SequenceVAE):
    from ae_jax.molecules import figures as molecule_figures  # pylint: disable=g-import-not-at-top
    return molecule_figures.write_run_figures(config, model, state, workdir, key)
  if isinstance(model, models.DiffusionAutoencoder):
    from ae_jax import diffusion_ae  # pylint: disable=g-import-not-at-top
    return diffusion_ae.write_figures(config, model, state, workdir, key)
  n = config.train.num_figure_examples
  batch = next(_data_iterator(config, config.data.eval_split,
                              batch_size=max(config.data.eval_batch_size, n), shuffle=False,
                              drop_remainder=False, whole_batch=True))
  variables = jax.device_get({**state.params, **state.model_state})
  x = jnp.asarray(batch['image'])
  paths = []

  if isinstance(model, (models.MLPVAE, models.ConvVAE)):
    mean, _ = model.apply(variables, x, method=model.encode)
    codes = mean
    logits = model.apply(variables, mean[:n], method=model.decode).reshape(x[:n].shape)
    z = jax.random.normal(key, (n,) + mean.shape[1:])
    samples = jax.nn.sigmoid(model.apply(variables, z, method=model.decode)).reshape(
        (n,) + x.shape[1:])
    paths.append(plotting.save_image_grid(
        np.asarray(samples), plotting.figure_path(workdir, 'samples.png'),
        title=f'{config.variant}: samples from the prior'))
  elif isinstance(model, models.LadderVAE):
    # Decoded posterior samples, ancestral prior samples z_L -> ... -> z_1 -> x,
    # top-layer posterior means as the codes, and the KL of each layer.
    from ae_jax import ladder_figures  # pylint: disable=g-import-not-at-top
    recon_key, sample_key, kl_key = jax.random.split(key, 3)
    logits = model.apply(variables, x[:n], recon_key).logits
    codes = model.apply(variables, x, method=model.posterior_means)[-1]
    sample_logits, _ = model.apply(variables, sample_key, n, method=model.sample)
    paths.append(plotting.save_image_grid(
        np.asarray(jax.nn.sigmoid(sample_logits)).reshape((n,) + x.shape[1:]),
        plotting.figure_path(workdir, 'samples.png'),
        title=f'{config.variant}: ancestral samples from the prior'))
    paths.append(ladder_figures.save_layer_kl(
        ladder_figures.layer_kl(model, variables, x, kl_key), tuple(model.latent_dims),
        os.path.join(workdir, 'metrics.jsonl'), plotting.figure_path(workdir, 'kl_per_layer.png'),
        title=f'{config.variant}: KL(q ‖ p) per layer'))
  elif isinstance(model, models.VQVAE):
    out = model.apply(variables, x, train=False)
    codes, logits = out.z_e.reshape(len(x), -1), out.logits[:n]
  else:
    out = model.apply(variables, x)
    codes, logits = out.z, out.logits[:n]

  reconstructions = np.asarray(jax.nn.sigmoid(logits))
  if config.loss.get('output_activation') == 'identity':
    reconstructions = np.asarray(logits)
  paths.append(plotting.save_reconstructions(
      np.asarray(x[:n]), reconstructions, plotting.figure_path(workdir, 'reconstructions.png'),
      title=f'{config.variant}: test inputs and reconstructions'))
  paths.append(plotting.save_latent_map(
      np.asarray(codes), batch.get('label'), plotting.figure_path(workdir, 'latent_map.png'),
      title=f'{config.variant}: test codes'))
  if isinstance(model, models.AAE):
    from ae_jax import adversarial  # pylint: disable=g-import-not-at-top
    paths += adversarial.save_figures(config, model, variables, x, batch.get('label'),
                                      workdir, key)
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(metrics_path):
    paths.append(plotting.save_training_curves(
        metrics_path, plotting.figure_path(workdir, 'training_curves.png')))
  return paths
