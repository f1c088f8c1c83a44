"""Train-step throughput of every training config, against the machine's matmul peak.

  python -m experiments.bench                      # every config, batch 128 and 1024
  python -m experiments.bench --only=vae,contractive --batches=128

Each config's train step is the one `ae_jax.training.fit` runs: the pure
`train_step` of its recipe's first stage (`ae_jax.recipes`), jitted, on a
batch of the config's training data. Prints one JSON object per line:
  name (the config), batch, step_ms, samples_per_s;
  gflops: the compiled step's floating-point operations as XLA's cost analysis
    counts them, divided by the measured step time;
  peak_gflops: the best fp32 matmul rate XLA reaches on this machine, measured
    in the same run (square matmuls, the best of several sizes);
  fraction_of_peak = gflops / peak_gflops;
  relative_to_plain_ae (contractive rows): the step's time over the time of the
    plain autoencoder step with the same model and batch, measured side by side;
  vae_matmuls_only rows: only the matrix products of the MLP VAE step, the
    ceiling on the step's fraction of peak.

Timings are the median of repeated steps after compilation; the first line
reports the matmul peak itself. Run it on an otherwise idle machine.
"""

import argparse
import importlib
import json
import pkgutil
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import training
import experiments.configs

CONTRACTIVE_MODES = ('jacfwd', 'jacrev', 'auto', 'dense_first', 'estimate')


def _median_seconds(fn, *, min_repeats: int = 10, min_seconds: float = 1.0) -> float:
  """Median wall time of fn(), which must block until its result is ready."""
  fn()
  times = []
  start = time.perf_counter()
  while len(times) < min_repeats or time.perf_counter() - start < min_seconds:
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return float(np.median(times))


def matmul_peak_gflops() -> float:
  """The best fp32 matmul rate over a few square sizes, in GFLOP/s."""
  best = 0.0
  for n in (512, 1024, 2048):
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    matmul = jax.jit(jnp.matmul)
    seconds = _median_seconds(lambda: matmul(a, b).block_until_ready())
    best = max(best, 2 * n**3 / seconds / 1e9)
  return best


def config_names() -> list[str]:
  """The training configs in experiments/configs/ (not the shared pieces, not apps/)."""
  return sorted(m.name for m in pkgutil.iter_modules(experiments.configs.__path__)
                if not m.ispkg and m.name != 'common')


def _time_step(config: ml_collections.ConfigDict, batch_size: int):
  """(seconds per step, flops per step) of the jitted train step of `config`'s first stage."""
  config = ml_collections.ConfigDict(config.to_dict())
  config.data.batch_size = batch_size
  recipe = training.validate(config)
  stage = recipe.make_stage(config, recipe.stages(config)[0], {})
  key = jax.random.key(0)
  state = jax.jit(stage.init)(key)
  batch = jax.tree.map(jnp.asarray, next(stage.train_data(0)))
  # No donation: the same state is stepped again and again.
  compiled = jax.jit(stage.train_step).lower(state, batch, key).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get('flops', 0.0))

  def run():
    new_state, metrics = compiled(state, batch, key)
    jax.block_until_ready((new_state, metrics))

  return _median_seconds(run), flops


def _mlp_vae_matmul_bound(batch_size: int, dims=(784, 400, 20)) -> tuple[float, float]:
  """(seconds, flops) of only the matrix products of one MLP VAE train step.

  The forward pass (784→400→2·20, 20→400→784) and the backward products
  (weight gradients, and input gradients below the first layer), with no
  elementwise work, loss or optimizer: no step can run faster than this on
  the machine, so it is the ceiling for the step's fraction of peak.
  """
  d, h, z = dims
  keys = jax.random.split(jax.random.key(0), 6)
  x = jax.random.uniform(keys[0], (batch_size, d))
  w1, w_mv = jax.random.normal(keys[1], (d, h)), jax.random.normal(keys[2], (h, 2 * z))
  w3, w4 = jax.random.normal(keys[3], (z, h)), jax.random.normal(keys[4], (h, d))

  @jax.jit
  def products(x, w1, w_mv, w3, w4):
    h1 = x @ w1
    mv = h1 @ w_mv
    h2 = mv[:, :z] @ w3
    out = h2 @ w4
    d_h2 = out @ w4.T
    d_mv = jnp.concatenate([d_h2 @ w3.T, d_h2 @ w3.T], axis=1)
    d_h1 = d_mv @ w_mv.T
    return (h2.T @ out, mv[:, :z].T @ d_h2, h1.T @ d_mv, x.T @ d_h1)

  compiled = products.lower(x, w1, w_mv, w3, w4).compile()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  seconds = _median_seconds(
      lambda: jax.block_until_ready(compiled(x, w1, w_mv, w3, w4)))
  return seconds, float(cost.get('flops', 0.0))


def _row(name, batch, seconds, flops, peak, **extra):
  gflops = flops / seconds / 1e9
  return {'name': name, 'batch': batch, 'step_ms': round(seconds * 1e3, 3),
          'samples_per_s': round(batch / seconds, 1), 'gflops': round(gflops, 2),
          'peak_gflops': round(peak, 2), 'fraction_of_peak': round(gflops / peak, 4), **extra}


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default='',
                      help='Comma-separated config names (default: every training config).')
  parser.add_argument('--batches', default='128,1024', help='Comma-separated batch sizes.')
  args = parser.parse_args()
  names = args.only.split(',') if args.only else config_names()
  batches = [int(b) for b in args.batches.split(',')]

  peak = matmul_peak_gflops()
  print(json.dumps({'name': 'matmul_peak', 'peak_gflops': round(peak, 2),
                    'backend': jax.default_backend(), 'devices': jax.device_count()}), flush=True)
  for name in names:
    config = importlib.import_module(f'experiments.configs.{name}').get_config()
    for batch_size in batches:
      if config.loss.get('objective') != 'contractive':
        seconds, flops = _time_step(config, batch_size)
        print(json.dumps(_row(name, batch_size, seconds, flops, peak)), flush=True)
        if name == 'vae':
          bound_seconds, bound_flops = _mlp_vae_matmul_bound(batch_size)
          print(json.dumps(_row('vae_matmuls_only', batch_size, bound_seconds, bound_flops, peak,
                                relative_to_vae_step=round(bound_seconds / seconds, 3))),
                flush=True)
        continue
      # The contractive step against the plain AE step with the same model.
      plain = ml_collections.ConfigDict(config.to_dict())
      plain.loss = dict(reconstruction=config.loss.reconstruction)
      plain_seconds, plain_flops = _time_step(plain, batch_size)
      print(json.dumps(_row(f'plain_ae_for_{name}', batch_size, plain_seconds, plain_flops,
                            peak, relative_to_plain_ae=1.0)), flush=True)
      for mode in CONTRACTIVE_MODES:
        with_mode = ml_collections.ConfigDict(config.to_dict())
        with_mode.loss.mode = mode
        seconds, flops = _time_step(with_mode, batch_size)
        print(json.dumps(_row(f'{name}_{mode}', batch_size, seconds, flops, peak,
                              relative_to_plain_ae=round(seconds / plain_seconds, 3))),
              flush=True)


if __name__ == '__main__':
  main()
