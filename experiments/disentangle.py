"""Disentanglement scores of VAE, β-VAE and β-TCVAE on the generated shapes.

  python -m experiments.disentangle --config=experiments/configs/apps/disentangle.py --workdir=runs/disentangle
  python -m experiments.disentangle --config=experiments/configs/apps/disentangle.py:smoke --workdir=/tmp/disentangle

Trains one model per entry of `config.runs` and seed of
`config.disentangle.model_seeds` on all 6,144 images of `ae_jax.data.shapes`
with the `tcvae` recipe and `ae_jax.training.train_and_evaluate` (for one
seed: the same architecture, initialisation, noise, data order and number of
steps; only the objective differs), scores each and the untrained encoder of
each seed with the five metrics of `ae_jax.applications.disentanglement`, and
writes into --workdir:

  <run>_seed<k>/                     each model's run: model/ (checkpoints,
                                     metrics.jsonl, TensorBoard events) and
                                     figures/ (the recipe's);
  disentanglement.json               every score, per-factor MIG and SAP, the
                                     MI and DCI importance matrices, final
                                     eval metrics;
  disentanglement.md                 the table of the five scores (and DCI's
                                     completeness and informativeness), mean
                                     ± std over the seeds;
  figures/traversals_<run>.png       (first seed) each latent traversed over [-r, r] from
                                     one image's code, rows ordered by the
                                     dimension's KL, labelled with the factor
                                     it has most MI with.

Run again with the same --workdir, every model resumes from its last
checkpoint (a finished one is restored, not retrained); on SIGTERM the model in
training saves a checkpoint and the script exits with status 75.
"""

import copy
import functools
import os
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import common
from ae_jax.applications import disentanglement
from ae_jax.applications import latent
from ae_jax.data import shapes
from ae_jax.recipes import tcvae
from experiments import cli

COLUMNS = ('beta_vae', 'factor_vae', 'mig', 'sap', 'dci_disentanglement',
           'dci_completeness', 'dci_informativeness')


def run_config(config: ml_collections.ConfigDict, name: str, seed: int
               ) -> ml_collections.ConfigDict:
  """The training config of run `name` (its `config.runs` entry set on `loss`) for
  model seed `seed` (`train.seed`, and `data.shuffle_seed` shifted by it)."""
  cfg = copy.deepcopy(config)
  cfg.loss.update(config.runs[name].to_dict())
  cfg.train.seed = seed
  cfg.data.shuffle_seed = config.data.shuffle_seed + seed
  return cfg


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
  return plotting.save_image_rows(
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
  writes metrics and figures (figures of the first seed).

  Raises:
    ae_jax.training.Preempted: a SIGTERM stopped a model's training (after a checkpoint).
  """
  cfg = config.disentangle
  os.makedirs(workdir, exist_ok=True)
  data = shapes.make_shapes()
  names = ['untrained', *config.run_names]
  per_seed = {name: [] for name in names}
  extra = {name: [] for name in config.run_names}

  for seed in cfg.model_seeds:
    # Every run of this seed starts from these variables.
    model, untrained = tcvae.initial_variables(run_config(config, config.run_names[0], seed))
    per_seed['untrained'].append(score(
        disentanglement.representation_table(model, untrained, data.images), data, cfg))
    for name in config.run_names:
      train_config = run_config(config, name, seed)
      run_dir = os.path.join(workdir, f'{name}_seed{seed}')
      print(f'\n=== {name} seed {seed} ({train_config.loss.objective}, β = '
            f'{train_config.loss.beta}) into {run_dir} ===', flush=True)
      start = time.time()
      final = training.train_and_evaluate(train_config, run_dir)
      model, variables = training.restore_variables(train_config, run_dir)
      seconds = time.time() - start
      start = time.time()
      codes = disentanglement.representation_table(model, variables, data.images)
      result = score(codes, data, cfg)
      per_seed[name].append(result)
      kl = kl_per_dimension(model, variables, data.images)
      extra[name].append({'seed': seed, 'workdir': run_dir, 'final_metrics': final,
                          'train_seconds': seconds, 'score_seconds': time.time() - start,
                          'kl_per_dimension': kl})
      if seed == cfg.model_seeds[0]:
        traversal_figure(model, variables, data, codes, kl, result, name, workdir, cfg)
      print(f'{name} seed {seed}: ' + ', '.join(f'{c}={result[c]:.3f}' for c in COLUMNS)
            + f' (trained or restored in {seconds:.0f} s)', flush=True)

  mean = {n: {c: float(np.mean([r[c] for r in per_seed[n]])) for c in COLUMNS} for n in names}
  std = {n: {c: float(np.std([r[c] for r in per_seed[n]])) for c in COLUMNS} for n in names}
  table = markdown_table(mean, std, len(cfg.model_seeds))
  with open(os.path.join(workdir, 'disentanglement.md'), 'w') as f:
    f.write(table)
  summary = {
      'dataset': 'shapes (3 shapes x 4 scales x 8 orientations x 8 x 8 positions, 32x32)',
      'model': config.model.to_dict(), 'num_train_steps': config.train.num_train_steps,
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
