"""A VQ-VAE's second stage: an autoregressive prior over its code grids.

A trained VQ-VAE maps every image to a grid of code indices (7x7 for 28x28
inputs). A `GatedPixelCNN` learns p(c) = Π_i p(c_i | c_<i) over these grids
by cross-entropy on the frozen encoder's codes; ancestral sampling draws a
grid position by position (raster order) at a temperature, and the VQ-VAE's
decoder turns it into a new image.

`train_prior` trains the prior with its own train state, orbax checkpoints
(a rerun resumes with the batch order it would have had) and metrics file,
and stops with `FloatingPointError` on a non-finite loss.

Shape letters: N examples, B batch, h, w code grid, K number of codes.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from ae_jax import runner
from ae_jax import train
from ae_jax.applications import common
from ae_jax.data import pipeline
from ae_jax.models import pixelcnn

Array = jax.Array


def encode_indices(vqvae: nn.Module, variables: Mapping[str, Any], images: np.ndarray, *,
                   batch_size: int = 256) -> np.ndarray:
  """Code indices int32 [N, h, w] of images [N, H, W, C] under a frozen VQ-VAE."""
  fn = jax.jit(lambda x: vqvae.apply(variables, x, train=False).indices)
  return common.map_batches(fn, images, batch_size=batch_size).astype(np.int32)


def decode_indices(vqvae: nn.Module, variables: Mapping[str, Any], codes: np.ndarray, *,
                   output_activation: str = 'identity', batch_size: int = 256) -> np.ndarray:
  """Images [N, H, W, C] in [0, 1] decoded from code indices [N, h, w]."""
  if output_activation not in ('identity', 'sigmoid'):
    raise ValueError(f"output_activation must be 'identity' or 'sigmoid', got "
                     f'{output_activation!r}.')

  def fn(c):
    logits = vqvae.apply(variables, c, method=vqvae.decode_indices)
    out = jax.nn.sigmoid(logits) if output_activation == 'sigmoid' else logits
    return jnp.clip(out, 0.0, 1.0)

  return common.map_batches(jax.jit(fn), np.asarray(codes, np.int32), batch_size=batch_size)


def code_nll(logits_BxHxWxK: Array, codes_BxHxW: Array) -> Array:
  """Per-example negative log-likelihood of code grids, nats, [B].

  -Σ_i log softmax(logits_i)[c_i], summed over the grid positions i.

  References:
    van den Oord, Kalchbrenner & Kavukcuoglu, "Pixel Recurrent Neural
    Networks", ICML 2016 (the discrete softmax likelihood).
  """
  if logits_BxHxWxK.shape[:-1] != codes_BxHxW.shape:
    raise ValueError(f'logits {logits_BxHxWxK.shape} do not fit codes {codes_BxHxW.shape}.')
  nll = optax.softmax_cross_entropy_with_integer_labels(logits_BxHxWxK, codes_BxHxW)
  return jnp.sum(nll, axis=(1, 2))


def make_prior_objective(prior: nn.Module):
  """`fn(params, batch, key, *, step=0) -> (loss, metrics)` on `batch['codes']`.

  loss: mean NLL per code, nats. Metrics: 'nats_per_code', 'bits_per_image'
  (NLL of the whole grid in bits), 'accuracy' (argmax equals the code).
  Padding rows (batch['mask'] == 0) are not counted.
  """

  def objective(params, batch, key, *, step=0):
    del key, step
    codes = batch['codes']
    logits = prior.apply(params, codes)
    per_image = code_nll(logits, codes)
    num_positions = codes.shape[1] * codes.shape[2]
    mask = batch.get('mask')
    weights = jnp.ones(codes.shape[0]) if mask is None else mask.astype(jnp.float32)
    denom = jnp.maximum(jnp.sum(weights), 1.0)
    nats_per_code = jnp.sum(per_image * weights) / denom / num_positions
    accuracy = jnp.mean(jnp.argmax(logits, -1) == codes, axis=(1, 2))
    metrics = {
        'nats_per_code': nats_per_code,
        'bits_per_image': nats_per_code * num_positions / math.log(2.0),
        'accuracy': jnp.sum(accuracy * weights) / denom,
    }
    return nats_per_code, metrics

  return objective


def sample_codes(prior: nn.Module, params: Mapping[str, Any], key: Array, num: int,
                 grid_shape: tuple[int, int], *, temperature: float = 1.0) -> Array:
  """Ancestral samples int32 [num, h, w] of the prior, in raster order.

  Each of the h·w positions reruns the network on the partial grid and draws
  the position's code from softmax(logits / temperature) with the key
  `fold_in(key, position)`; the positions after it do not affect its logits
  (the network is causal), so their placeholder zeros do not matter. One
  compilation serves every temperature.
  """
  if not temperature > 0:
    raise ValueError(f'temperature must be > 0, got {temperature}.')
  if num <= 0 or len(grid_shape) != 2 or min(grid_shape) <= 0:
    raise ValueError(f'Expected num > 0 and a grid (h, w), got {num} and {grid_shape}.')
  return _sample_codes(prior, params, key, jnp.float32(temperature), int(num),
                       tuple(int(s) for s in grid_shape))


@functools.partial(jax.jit, static_argnums=(0, 4, 5))
def _sample_codes(prior, params, key, temperature, num, grid_shape):
  h, w = grid_shape

  def body(position, codes):
    logits = prior.apply(params, codes).reshape(num, h * w, -1)
    logit = jax.lax.dynamic_index_in_dim(logits, position, axis=1, keepdims=False)
    drawn = jax.random.categorical(jax.random.fold_in(key, position), logit / temperature)
    return codes.reshape(num, h * w).at[:, position].set(drawn.astype(jnp.int32)).reshape(
        num, h, w)

  return jax.lax.fori_loop(0, h * w, body, jnp.zeros((num, h, w), jnp.int32))


def unigram_nats_per_code(train_codes: np.ndarray, test_codes: np.ndarray,
                          num_codes: int) -> float:
  """Test NLL per code of the train code frequencies (add-one smoothed): what a
  prior that ignores context scores."""
  counts = np.bincount(train_codes.ravel(), minlength=num_codes) + 1.0
  log_p = np.log(counts / counts.sum())
  return float(-np.mean(log_p[test_codes.ravel()]))


def _check_codes(name: str, codes: np.ndarray, num_codes: int) -> np.ndarray:
  codes = np.asarray(codes)
  if codes.ndim != 3 or not np.issubdtype(codes.dtype, np.integer):
    raise ValueError(f'{name} must be int codes [N, h, w], got {codes.dtype} {codes.shape}.')
  if codes.size and (codes.min() < 0 or codes.max() >= num_codes):
    raise ValueError(f'{name} must lie in [0, {num_codes}), got [{codes.min()}, {codes.max()}].')
  return codes.astype(np.int32)


def evaluate_prior(prior: nn.Module, params, codes: np.ndarray, *,
                   batch_size: int = 500) -> dict[str, float]:
  """Mean test metrics of `make_prior_objective` over all of `codes`."""
  eval_step = jax.jit(lambda p, c: code_nll(prior.apply(p, c), c))
  per_image = common.map_batches(lambda c: eval_step(params, c), codes, batch_size=batch_size)
  nats_per_code = float(np.mean(per_image)) / (codes.shape[1] * codes.shape[2])
  return {'nats_per_code': nats_per_code,
          'bits_per_image': nats_per_code * codes.shape[1] * codes.shape[2] / math.log(2.0)}


def train_prior(cfg: Mapping[str, Any], workdir: str, train_codes: np.ndarray,
                test_codes: np.ndarray, *, num_codes: int,
                print_fn=print) -> tuple[nn.Module, dict[str, Any], list[dict[str, Any]]]:
  """Trains a `GatedPixelCNN` on code grids, resuming from `workdir/checkpoints`.

  Args:
    cfg: channels, num_layers, kernel_size, learning_rate, batch_size,
      num_train_steps, eval_every_steps, checkpoint_every_steps, seed.
    workdir: the prior's directory: checkpoints/ and metrics.jsonl.
    train_codes, test_codes: int [N, h, w] in [0, K).
    num_codes: K.
    print_fn: where progress lines go.

  Returns:
    `(prior, params, history)`: history holds the eval records (one before
    training when it starts from scratch, then every `eval_every_steps`).

  Raises:
    FloatingPointError: the loss became non-finite (checkpoints before it kept).
  """
  train_codes = _check_codes('train_codes', train_codes, num_codes)
  test_codes = _check_codes('test_codes', test_codes, num_codes)
  for field in ('batch_size', 'num_train_steps', 'eval_every_steps', 'checkpoint_every_steps'):
    if cfg[field] <= 0:
      raise ValueError(f'vq_prior.{field} must be > 0, got {cfg[field]}.')
  if cfg['batch_size'] > len(train_codes):
    raise ValueError(f"vq_prior.batch_size={cfg['batch_size']} exceeds the "
                     f'{len(train_codes)} training grids.')
  prior = pixelcnn.GatedPixelCNN(num_codes=num_codes, channels=cfg['channels'],
                                 num_layers=cfg['num_layers'], kernel_size=cfg['kernel_size'])
  key = jax.random.key(cfg['seed'])
  init_key, train_key = jax.random.split(key)
  params = {'params': jax.jit(prior.init)(init_key, jnp.asarray(train_codes[:1]))['params']}
  tx = optax.adam(cfg['learning_rate'])
  state = train.create_train_state(params, tx)
  step_fn = train.make_train_step(make_prior_objective(prior), tx)

  os.makedirs(workdir, exist_ok=True)
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), 'checkpoints'),
                                  options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  history = []
  try:
    if manager.latest_step() is not None:
      target = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
      state = manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))
      print_fn(f'Prior: resumed from {workdir}/checkpoints at step {int(state.step)}.')
    start = int(state.step)

    def record(step, split, values):
      entry = {'step': step, 'split': split, **{k: float(v) for k, v in values.items()}}
      with open(metrics_path, 'a') as f:
        f.write(json.dumps(entry) + '\n')
      return entry

    kept = runner.drop_records_after(metrics_path, start)
    history = [entry for entry in kept if entry['split'] == 'eval']
    if start == 0:
      history.append(record(0, 'eval', evaluate_prior(prior, state.params, test_codes)))
    per_epoch = pipeline.steps_per_epoch(len(train_codes), cfg['batch_size'])
    num_steps = cfg['num_train_steps']
    for step in range(start + 1, num_steps + 1):
      epoch, position = divmod(step - 1, per_epoch)
      order = pipeline.epoch_order(len(train_codes), seed=cfg['seed'], epoch=epoch)
      rows = order[position * cfg['batch_size']:(position + 1) * cfg['batch_size']]
      state, metrics = step_fn(state, {'codes': jnp.asarray(train_codes[rows])}, train_key)
      if step % cfg['eval_every_steps'] == 0 or step == num_steps or step % 50 == 0:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        train.check_finite_metrics(host, step)
        record(step, 'train', host)
      if step % cfg['checkpoint_every_steps'] == 0 or step == num_steps:
        train.check_finite_metrics(metrics, step)
        manager.save(step, args=ocp.args.StandardSave(state))
      if step % cfg['eval_every_steps'] == 0 or step == num_steps:
        history.append(record(step, 'eval', evaluate_prior(prior, state.params, test_codes)))
        print_fn(f"Prior step {step}: test {history[-1]['nats_per_code']:.4f} nats/code, "
                 f"{history[-1]['bits_per_image']:.2f} bits/image.")
  finally:
    manager.wait_until_finished()
    manager.close()
  return prior, state.params, history
