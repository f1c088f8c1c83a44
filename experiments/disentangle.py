"""Disentanglement scores of VAE, β-VAE and β-TCVAE on the generated shapes.

  python -m experiments.disentangle --config=experiments/configs/apps/disentangle.py --workdir=runs/disentangle
  python -m experiments.disentangle --config=experiments/configs/apps/disentangle.py:smoke --workdir=/tmp/disentangle

Trains one model per entry of `config.runs` and seed of
`config.disentangle.model_seeds` on all 6,144 images of `ae_jax.data.shapes`
(for one seed: the same architecture, initialisation, noise, data order and
number of steps; only the objective differs), scores each and the untrained
encoder of each seed with the five metrics of
`ae_jax.applications.disentanglement`, and writes into --workdir:

  disentanglement.json               every score, per-factor MIG and SAP, the
                                     MI and DCI importance matrices, final
                                     training metrics;
  disentanglement.md                 the table of the five scores (and DCI's
                                     completeness and informativeness), mean
                                     ± std over the seeds;
  figures/traversals_<run>.png       (first seed) each latent traversed over [-r, r] from
                                     one image's code, rows ordered by the
                                     dimension's KL, labelled with the factor
                                     it has most MI with.
"""

import functools
import os
import time

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import app_plots
from ae_jax import build
from ae_jax import data as data_lib
from ae_jax import objectives
from ae_jax import plotting
from ae_jax import runner
from ae_jax import train
from ae_jax.applications import common
from ae_jax.applications import disentanglement
from ae_jax.applications import latent
from ae_jax.applications import tcvae
from ae_jax.data import shapes
from experiments import cli

COLUMNS = ('beta_vae', 'factor_vae', 'mig', 'sap', 'dci_disentanglement',
           'dci_completeness', 'dci_informativeness')


def make_objective(model, run_config, dataset_size: int):
  """The objective a `config.runs` entry names."""
  if run_config.objective == 'vae':
    return objectives.make_vae_objective(model, beta=run_config.beta)
  if run_config.objective == 'tcvae':
    return tcvae.make_tcvae_objective(model, dataset_size=dataset_size, beta=run_config.beta)
  raise ValueError(f"objective must be 'vae' or 'tcvae', got {run_config.objective!r}.")


def train_model(config, objective, images: np.ndarray, init_variables, *, seed: int,
                desc: str = ''):
  """Adam steps of `objective` on `images` from `init_variables`; `seed` fixes the
  sampling noise and the data order.

  Returns:
    (variables, last logged metrics, seconds).
  """
  train_key = jax.random.fold_in(jax.random.key(seed), 1)
  tx = build.build_optimizer(config.optim)
  # The step donates its state: start from a copy so the initial variables survive.
  params = jax.tree.map(jnp.copy, {'params': init_variables['params']})
  state = train.create_train_state(params, tx)
  step = train.make_train_step(objective, tx)
  batches = data_lib.batches((images,), batch_size=config.data.batch_size,
                             seed=config.data.shuffle_seed + seed)
  start = time.time()
  metrics = {}
  for i in range(config.train.num_train_steps):
    state, metrics = step(state, next(batches), train_key)
    if (i + 1) % config.train.log_every_steps == 0 or i + 1 == config.train.num_train_steps:
      metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
      train.check_finite_metrics(metrics, i + 1)
      print(f'  {desc} step {i + 1}: ' + ', '.join(
          f'{k}={metrics[k]:.2f}' for k in ('loss', 'recon', 'kl', 'tc') if k in metrics),
            flush=True)
  jax.block_until_ready(state)
  return state.params, metrics, time.time() - start


@functools.partial(jax.jit, static_argnums=0)
def _kl_per_example(model, variables, x):
  mean, log_var = model.apply(variables, x, method='encode')
  return 0.5 * (jnp.square(mean) + jnp.exp(log_var) - 1.0 - log_var)


@functools.partial(jax.jit, static_argnums=0)
def _decode_pixels(model, variables, z):
  return jax.nn.sigmoid(model.apply(variables, z, method='decode'))


def kl_per_dimension(model, variables, images: np.ndarray) -> np.ndarray:
  """Mean over the data of KL(q(z_j | x) ‖ N(0, 1)) for each dimension j, [Z]."""
  fn = functools.partial(_kl_per_example, model, variables)
  return common.map_batches(fn, images, batch_size=512).mean(0)


def score(codes: np.ndarray, data: shapes.Shapes, cfg) -> dict:
  return disentanglement.evaluate(
      codes, data, seed=cfg.seed, num_train=cfg.num_train, num_eval=cfg.num_eval,
      batch_size=cfg.vote_batch_size, test_fraction=cfg.test_fraction, num_bins=cfg.num_bins,
      dci_num_trees=cfg.dci_num_trees)


def traversal_figure(model, variables, data: shapes.Shapes, codes: np.ndarray, kl: np.ndarray,
                     result: dict, name: str, workdir: str, cfg) -> str:
  """Every latent, most KL first, traversed from the code of a mid-size centred heart."""
  dims = np.argsort(-kl, kind='stable')
  base = data.index_of(np.array([[2, 2, 0, 4, 4]]))[0]
  values = np.linspace(-cfg.traversal_range, cfg.traversal_range, cfg.num_traversal_values)
  grid = latent.traverse(codes[base].astype(np.float32), values, dims=dims)  # [Z, V, Z]
  flat = grid.reshape(-1, grid.shape[-1])
  pixels = np.asarray(_decode_pixels(model, variables, jnp.asarray(flat)))
  images = pixels.reshape(grid.shape[:2] + data.images.shape[1:])
  mi = np.asarray(result['details']['mutual_information'])
  # Each active row is labelled with the factor it has most MI with.
  labels = [f'z[{d}] KL {kl[d]:.2f}\n'
            + (f'~{data.factor_names[int(np.argmax(mi[d]))]}' if kl[d] > 0.05 else 'inactive')
            for d in dims]
  return app_plots.save_image_rows(
      images, plotting.figure_path(workdir, f'traversals_{name}.png'), row_labels=labels,
      col_labels=[f'{v:.1f}' for v in values],
      title=f'{name}: latent traversals (MIG {result["mig"]:.2f})')


def markdown_table(mean: dict, std: dict, num_seeds: int) -> str:
  """Scores as a table: mean ± std over the seeds when there are several."""
  headers = ('BetaVAE score', 'FactorVAE score', 'MIG', 'SAP', 'DCI disentanglement',
             'DCI completeness', 'DCI informativeness')
  lines = ['| model | ' + ' | '.join(headers) + ' |', '|---|' + '---|' * len(COLUMNS)]
  for name in mean:
    cells = [f'{mean[name][c]:.3f}' + (f' ± {std[name][c]:.3f}' if num_seeds > 1 else '')
             for c in COLUMNS]
    lines.append(f'| {name} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def run(config, workdir: str) -> dict:
  """Trains every run for every seed, scores them and the untrained encoders,
  writes metrics and figures (figures of the first seed)."""
  cfg = config.disentangle
  os.makedirs(workdir, exist_ok=True)
  data = shapes.make_shapes()
  model = build.build_model(config.model)
  names = ['untrained', *config.run_names]
  per_seed = {name: [] for name in names}
  extra = {name: [] for name in config.run_names}
  init = jax.jit(functools.partial(runner.init_variables, model))

  for seed in cfg.model_seeds:
    init_variables = {'params': init(jnp.asarray(data.images[:1]), jax.random.key(seed))['params']}
    per_seed['untrained'].append(score(
        disentanglement.representation_table(model, init_variables, data.images), data, cfg))
    for name in config.run_names:
      run_config = config.runs[name]
      objective = make_objective(model, run_config, len(data))
      variables, final, seconds = train_model(config, objective, data.images, init_variables,
                                              seed=seed, desc=f'{name} seed {seed}')
      start = time.time()
      codes = disentanglement.representation_table(model, variables, data.images)
      result = score(codes, data, cfg)
      per_seed[name].append(result)
      kl = kl_per_dimension(model, variables, data.images)
      extra[name].append({'seed': seed, 'final_train_metrics': final, 'train_seconds': seconds,
                          'score_seconds': time.time() - start, 'kl_per_dimension': kl})
      if seed == cfg.model_seeds[0]:
        traversal_figure(model, variables, data, codes, kl, result, name, workdir, cfg)
      print(f'{name} seed {seed}: ' + ', '.join(f'{c}={result[c]:.3f}' for c in COLUMNS)
            + f' (trained {seconds:.0f} s)', flush=True)

  mean = {n: {c: float(np.mean([r[c] for r in per_seed[n]])) for c in COLUMNS} for n in names}
  std = {n: {c: float(np.std([r[c] for r in per_seed[n]])) for c in COLUMNS} for n in names}
  table = markdown_table(mean, std, len(cfg.model_seeds))
  with open(os.path.join(workdir, 'disentanglement.md'), 'w') as f:
    f.write(table)
  summary = {
      'dataset': 'shapes (3 shapes x 4 scales x 8 orientations x 8 x 8 positions, 32x32)',
      'model': dict(config.model), 'num_train_steps': config.train.num_train_steps,
      'batch_size': config.data.batch_size, 'seeds': list(cfg.model_seeds),
      'scores': mean, 'scores_std': std, 'scores_per_seed': per_seed,
      'runs': {name: {'objective': config.runs[name].objective,
                      'beta': config.runs[name].beta, 'per_seed': extra[name]}
               for name in config.run_names},
      'metric_settings': cfg.to_dict(),
  }
  path = common.write_json(os.path.join(workdir, 'disentanglement.json'), summary)
  print('\n' + table + f'\nMetrics: {path}\nFigures: {os.path.join(workdir, "figures")}')
  return summary


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/disentangle.py[:smoke].')
