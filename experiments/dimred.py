"""Dimensionality reduction with a trained autoencoder, against PCA at the same dimension.

  python -m experiments.dimred --config=experiments/configs/apps/dimred.py --workdir=runs/dimred
  python -m experiments.dimred --config=experiments/configs/apps/dimred.py:model=vae --workdir=runs/dimred_vae
  python -m experiments.dimred --config=experiments/configs/apps/dimred.py \
      --model_workdir=runs/undercomplete --workdir=runs/dimred_from_run

Trains the config's model with `ae_jax.training` into --workdir (checkpoints
and metrics in --workdir/model/, the recipe's figures in --workdir/figures/;
resuming, or only restoring, if a checkpoint is already there), or with
--model_workdir restores a run trained before (a --workdir of
`python -m experiments.main` or of another application; its config must
match). Then embeds the train
and test splits, fits PCA with as many components as the code has, and
writes into --workdir:

  dimred.json                  reconstruction MSE, k-NN accuracy and
                               trustworthiness of the model and of PCA;
  figures/dimred_map.png       2-D maps of both codes, coloured by label;
  figures/dimred_reconstructions.png   inputs, model and PCA reconstructions.
"""

import os

import numpy as np

from ae_jax import data as data_lib
from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import common
from ae_jax.applications import embedding
from ae_jax.recipes import common as recipe_common
from experiments import cli


def run(config, workdir: str, model_workdir: str | None = None) -> dict:
  """Trains or restores the model, compares it with PCA, writes metrics and figures."""
  cfg = config.dimred
  model, variables = training.train_or_restore(config, workdir, model_workdir=model_workdir)
  data_dir = config.data.get('data_dir')
  train_x, train_y = data_lib.load_arrays(config.data.name, config.data.train_split,
                                          data_dir=data_dir)
  test_x, test_y = data_lib.load_arrays(config.data.name, config.data.eval_split,
                                        data_dir=data_dir)
  print(f'Embedding {len(train_x)} train and {len(test_x)} test images '
        f'({config.data.name}); fitting PCA.', flush=True)
  result = embedding.compare_with_pca(
      model, variables, train_x, train_y, test_x, test_y, batch_size=cfg.batch_size,
      n_neighbors=cfg.n_neighbors, trust_neighbors=cfg.trust_neighbors,
      trust_examples=cfg.trust_examples, output_activation=common.output_activation(config),
      seed=cfg.seed, progress=True)
  name = recipe_common.title(config)
  metrics = {
      'dataset': config.data.name, 'model': name, 'family': embedding.code_family(model),
      'num_train': len(train_x), 'num_test': len(test_x),
      'n_neighbors': cfg.n_neighbors, 'trust_neighbors': cfg.trust_neighbors,
      'trust_examples': min(cfg.trust_examples, len(test_x)),
      'autoencoder': result['model'], 'pca': result['pca'],
  }
  json_path = common.write_json(os.path.join(workdir, 'dimred.json'), metrics)

  rows = embedding.subsample_indices(len(test_x), cfg.map_examples, seed=cfg.seed)
  dim = result['model']['code_dim']
  maps = {
      f'{name}, {dim}-d codes': embedding.map_2d(result['test_codes'][rows],
                                                 method=cfg.map_method, seed=cfg.seed),
      f'PCA, {dim} components': embedding.map_2d(result['pca_test_codes'][rows],
                                                 method=cfg.map_method, seed=cfg.seed),
  }
  how = 'as is' if dim == 2 else 'drawn by ' + {'pca': 'PCA', 'tsne': 't-SNE'}.get(
      cfg.map_method, cfg.map_method)
  figures = [plotting.save_embedding_maps(
      maps, test_y[rows], plotting.figure_path(workdir, 'dimred_map.png'),
      title=f'{config.data.name} test codes ({how}), coloured by label')]
  n = cfg.num_reconstructions
  pca = embedding.fit_pca(train_x, dim, seed=cfg.seed)
  pca_recon = pca.inverse_transform(pca.transform(test_x[:n].reshape(n, -1)))
  figures.append(plotting.save_image_rows(
      [test_x[:n],
       embedding.reconstruct(model, variables, test_x[:n], batch_size=n,
                             output_activation=common.output_activation(config)),
       np.clip(pca_recon.reshape(test_x[:n].shape), 0.0, 1.0)],
      plotting.figure_path(workdir, 'dimred_reconstructions.png'),
      row_labels=['input', config.recipe, f'PCA-{dim}'],
      title=f'Test reconstructions at dimension {dim}'))

  print(f'\n{config.data.name} test split, code dimension {dim}:')
  print('| embedding | reconstruction MSE | k-NN accuracy | trustworthiness |')
  print('|---|---|---|---|')
  for label, m in ((name, result['model']), (f'PCA-{dim}', result['pca'])):
    print(f"| {label} | {m['reconstruction_mse']:.4f} | {m['knn_accuracy']:.3f} | "
          f"{m['trustworthiness']:.3f} |")
  print(f'\nMetrics: {json_path}\nFigures: ' + ', '.join(figures))
  return metrics


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/dimred.py[:smoke,model=vae].',
              model_workdir_help='Restore the model from this run instead of training one.')
