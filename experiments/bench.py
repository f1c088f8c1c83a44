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

  python -m experiments.bench --torch              # side by side with PyTorch
  python -m experiments.bench --end_to_end         # the launcher against its bare step

With --torch (needs the optional `bench` extra: torch), each of the configs
that `experiments/bench_torch.py` mirrors (vae, conv_ae, conv_vae, vqvae:
the same architectures with the same parameter counts, checked) trains in two
long-lived worker processes, one ae-jax and one PyTorch at its default
threading, on a resident batch. Rounds alternate between them (the order
reversed every round), each round a chunk of about a second of steps; a row
gives each side's median step over the rounds, `ratio` = ae-jax time /
PyTorch time (below 1: ae-jax is faster), and the 1-minute load average
before and after. PyTorch's spin-waiting threads collapse when other work
shares the cores, so a row with a load average near the core count says
nothing. The ae-jax step is the loop's: jitted with the state donated.
"""

import argparse
import importlib
import json
import os
import pkgutil
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import train
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
  compiled = jax.jit(stage.train_step, compiler_options=train.compiler_options()).lower(
      state, batch, key).compile()
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


# ----------------------------------------------------------------------------
# Side by side with PyTorch: two worker processes, driven in alternating rounds.

TORCH_CONFIGS = ('vae', 'conv_ae', 'conv_vae', 'vqvae')


PRECISIONS = ('float32', 'bfloat16')


def with_precision(train_step, precision: str):
  """`train_step` traced with its matrix products at `precision`.

  'bfloat16' gives every matrix product XLA's BF16_BF16_F32 algorithm
  (operands rounded to bfloat16, float32 accumulation) through
  `jax.default_matmul_precision`; convolutions take no algorithm and run at
  XLA's default precision (TF32 on recent NVIDIA GPUs); parameters, optimizer
  state and the elementwise work stay float32. The PyTorch twin runs the same
  step under `torch.autocast(dtype=torch.bfloat16)`, which also runs its
  convolutions in bfloat16, so on a GPU the comparison favours PyTorch's
  convolutional models.
  """
  if precision not in PRECISIONS:
    raise ValueError(f'precision must be one of {PRECISIONS}, got {precision!r}.')
  if precision == 'float32':
    return train_step

  def step(*args):
    with jax.default_matmul_precision('BF16_BF16_F32'):
      return train_step(*args)

  return step


def _jax_step(name: str, batch_size: int, precision: str = 'float32'):
  """(step, number of parameters): one donated train step of config `name`.

  `step()` advances the state held here and returns the step's metrics once
  the step is done.
  """
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  config.data.batch_size = batch_size
  recipe = training.validate(config)
  stage = recipe.make_stage(config, recipe.stages(config)[0], {})
  key = jax.random.key(0)
  holder = [jax.jit(stage.init)(key)]
  num_params = sum(x.size for x in jax.tree.leaves(holder[0].params))
  batch = jax.tree.map(jnp.asarray, next(stage.train_data(0)))
  train_step = jax.jit(with_precision(stage.train_step, precision), donate_argnums=(0,),
                       compiler_options=train.compiler_options())

  def step():
    holder[0], metrics = train_step(holder[0], batch, key)
    return jax.block_until_ready(metrics)

  return step, num_params


def _use_flax_layers() -> None:
  """Steps built from now on are the ones before ae-jax's fast convolutions.

  The models use flax.linen's Conv and ConvTranspose (the gradients JAX
  derives) in place of ae_jax.layers', compiled with XLA's default options.
  """
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from ae_jax import layers  # pylint: disable=g-import-not-at-top
  layers.Conv, layers.ConvTranspose = nn.Conv, nn.ConvTranspose
  train.compiler_options = dict


def _worker(framework: str) -> None:
  """Answers JSON commands on stdin: {"setup": name, "batch": B}, {"steps": n}."""
  if framework == 'torch':
    import torch  # pylint: disable=g-import-not-at-top
    from experiments import bench_torch  # pylint: disable=g-import-not-at-top
    make = bench_torch.make_step
    info = {'version': torch.__version__, 'threads': torch.get_num_threads(),
            'device': bench_torch.device()}
  else:
    if framework == 'flax_layers':
      _use_flax_layers()
    make = _jax_step
    info = {'version': jax.__version__, 'device': jax.devices()[0].device_kind}
  step = None
  print(json.dumps(info), flush=True)
  for line in sys.stdin:
    command = json.loads(line)
    if 'setup' in command:
      step, num_params = make(command['setup'], command['batch'],
                              command.get('precision', 'float32'))
      for _ in range(3):  # Compilation, allocation, the optimizer's first steps.
        step()
      print(json.dumps({'params': num_params}), flush=True)
    else:
      times = []
      for _ in range(command['steps']):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
      print(json.dumps({'seconds': times}), flush=True)


class _Worker:
  """A long-lived `python -m experiments.bench --worker=...` process."""

  def __init__(self, framework: str):
    self.process = subprocess.Popen(
        [sys.executable, '-m', 'experiments.bench', f'--worker={framework}'],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    self.info = self._read()

  def _read(self) -> dict:
    line = self.process.stdout.readline()
    if not line:
      raise RuntimeError(f'The benchmark worker {self.process.args[-1]} exited '
                         f'(code {self.process.wait()}); see its error above.')
    return json.loads(line)

  def ask(self, **command) -> dict:
    self.process.stdin.write(json.dumps(command) + '\n')
    self.process.stdin.flush()
    return self._read()

  def close(self) -> None:
    self.process.stdin.close()
    self.process.wait()


def compare_with_torch(names, batches, *, rounds: int = 7, round_seconds: float = 1.0,
                       flax_layers: bool = False, precision: str = 'float32'):
  """Rows of ae-jax against PyTorch, medians over alternating rounds (module doc).

  With `flax_layers`, a third worker runs the same ae-jax step built with
  flax.linen's convolutions and XLA's default options, the step as it was
  before ae_jax.layers' convolutions (`flax_layers_ms`, `flax_layers_ratio`).
  """
  try:
    import torch  # pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    raise SystemExit('--torch needs PyTorch: pip install -e ".[bench]" '
                     '(or pip install torch).') from None
  workers = {'ae_jax': _Worker('jax'), 'torch': _Worker('torch')}
  if flax_layers:
    workers['flax_layers'] = _Worker('flax_layers')
  try:
    for name in names:
      for batch_size in batches:
        load_before = os.getloadavg()[0]
        params = {k: w.ask(setup=name, batch=batch_size, precision=precision)['params']
                  for k, w in workers.items()}
        if len(set(params.values())) > 1:
          raise RuntimeError(f'{name}: {params["ae_jax"]} ae-jax parameters but '
                             f'{params["torch"]} in experiments/bench_torch.py.')
        # One step of each, to size the rounds.
        steps = {k: max(1, round(round_seconds / min(w.ask(steps=1)['seconds'])))
                 for k, w in workers.items()}
        medians = {k: [] for k in workers}
        order = list(workers)
        for r in range(rounds):
          for k in (order if r % 2 == 0 else order[::-1]):
            medians[k].append(float(np.median(workers[k].ask(steps=steps[k])['seconds'])))
        ms = {k: 1e3 * float(np.median(v)) for k, v in medians.items()}
        jax_ms, torch_ms = ms['ae_jax'], ms['torch']
        extra = ({'flax_layers_ms': round(ms['flax_layers'], 3),
                  'flax_layers_ratio': round(ms['flax_layers'] / torch_ms, 3)}
                 if flax_layers else {})
        print(json.dumps({
            'name': f'{name}_vs_torch', 'batch': batch_size, 'precision': precision,
            'params': params['ae_jax'],
            'ae_jax_ms': round(jax_ms, 3), 'torch_ms': round(torch_ms, 3),
            'ratio': round(jax_ms / torch_ms, 3), **extra, 'rounds': rounds,
            'loadavg_before': round(load_before, 2),
            'loadavg_after': round(os.getloadavg()[0], 2),
            'jax': workers['ae_jax'].info, 'torch': workers['torch'].info}), flush=True)
  finally:
    for worker in workers.values():
      worker.close()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--only', default='',
                      help='Comma-separated config names (default: every training config).')
  parser.add_argument('--batches', default='128,1024', help='Comma-separated batch sizes.')
  parser.add_argument('--torch', action='store_true',
                      help='Side by side with PyTorch (configs: ' + ', '.join(TORCH_CONFIGS) + ').')
  parser.add_argument('--rounds', type=int, default=7, help='Alternating rounds (--torch).')
  parser.add_argument('--end_to_end', action='store_true',
                      help="The launcher's steps/s against its bare jitted step "
                           '(experiments/bench_e2e.py).')
  parser.add_argument('--flax_layers', action='store_true',
                      help="The steps before ae-jax's fast convolutions: flax.linen's Conv and "
                           "ConvTranspose, XLA's default options (with --torch: a third worker).")
  parser.add_argument('--precision', choices=PRECISIONS, default='float32',
                      help='Matrix products in float32 or bfloat16 (float32 accumulation; '
                           'PyTorch under autocast), with --torch; see with_precision.')
  parser.add_argument('--worker', choices=('jax', 'flax_layers', 'torch'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.worker:
    return _worker(args.worker)
  batches = [int(b) for b in args.batches.split(',')]
  if args.end_to_end:
    from experiments import bench_e2e  # pylint: disable=g-import-not-at-top
    for row in bench_e2e.end_to_end_rows():
      print(json.dumps({**row, 'loadavg': round(os.getloadavg()[0], 2)}), flush=True)
    return None
  if args.torch:
    names = args.only.split(',') if args.only else TORCH_CONFIGS
    unknown = sorted(set(names) - set(TORCH_CONFIGS))
    if unknown:
      raise SystemExit(f'--torch compares {", ".join(TORCH_CONFIGS)}; not {", ".join(unknown)}.')
    return compare_with_torch(names, batches, rounds=args.rounds, flax_layers=args.flax_layers,
                              precision=args.precision)
  names = args.only.split(',') if args.only else config_names()
  if args.flax_layers:
    _use_flax_layers()

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
