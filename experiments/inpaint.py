"""Inpainting with a trained autoencoder: random-pixel and box masks, PSNR on the missing pixels.

  python -m experiments.inpaint --config=experiments/configs/apps/inpaint.py --workdir=runs/inpaint
  python -m experiments.inpaint --config=experiments/configs/apps/inpaint.py:model=undercomplete \
      --workdir=runs/inpaint_ae
  python -m experiments.inpaint --config=experiments/configs/apps/inpaint.py \
      --model_workdir=runs/vae --workdir=runs/inpaint_from_run

Trains the config's model with `ae_jax.training` into --workdir (checkpoints
and metrics in --workdir/model/, the recipe's figures in --workdir/figures/;
resuming, or only restoring, if a checkpoint is already there), or with
--model_workdir restores a run trained before (a --workdir of
`python -m experiments.main` or of another application; its config must
match). Then, for each mask
of `config.inpaint.masks`, hides pixels of the first `num_examples` test
images and fills them by

  mean_train      the per-pixel mean of the train images (the baseline);
  mean_observed   the mean of the image's own observed pixels;
  iterative       n projections x <- (observed, reconstruction on missing);
  latent          (VAEs) the decoded MAP latent of the observed pixels,

and writes into --workdir:

  inpaint.json                   PSNR (dB) on the missing pixels per mask and
                                 fill: mean over images and its standard error;
  figures/inpaint_<mask>.png     masked (missing in red) / each fill / truth.
"""

import os

import jax
import numpy as np

from ae_jax import data as data_lib
from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import common
from ae_jax.applications import embedding
from ae_jax.applications import inpainting
from ae_jax.recipes import common as recipe_common
from experiments import cli


def _rgb(images: np.ndarray) -> np.ndarray:
  images = np.asarray(images, np.float32)
  return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def _show_missing(images: np.ndarray, missing: np.ndarray) -> np.ndarray:
  """RGB images with the missing pixels drawn in red."""
  red = np.array([0.85, 0.1, 0.1], np.float32)
  return np.where(missing[..., :1], red, _rgb(images))


def run(config, workdir: str, model_workdir: str | None = None) -> dict:
  """Trains or restores the model, inpaints masked test images, writes metrics and figures."""
  cfg = config.inpaint
  model, variables = training.train_or_restore(config, workdir, model_workdir=model_workdir)
  family = embedding.code_family(model)
  activation = common.output_activation(config)
  data_dir = config.data.get('data_dir')
  train_x, _ = data_lib.load_arrays(config.data.name, config.data.train_split, data_dir=data_dir)
  test_x, _ = data_lib.load_arrays(config.data.name, config.data.eval_split, data_dir=data_dir)
  test_x = test_x[:cfg.num_examples]
  mean_image = inpainting.pixel_mean(train_x)
  use_latent = family == 'vae' and common.reconstruction_kind(config) == 'bernoulli'
  name = recipe_common.title(config)
  print(f'Inpainting {len(test_x)} {config.data.name} test images with {name}.', flush=True)

  table, figures = {}, []
  key = jax.random.key(cfg.seed)
  for index, spec in enumerate(cfg.masks):
    missing = inpainting.make_mask(test_x, spec, seed=cfg.seed + index)
    fills = {
        'mean_train': inpainting.mean_fill(test_x, missing, pixel_mean=mean_image),
        'mean_observed': inpainting.mean_fill(test_x, missing),
        'iterative': inpainting.iterative_fill(
            model, variables, test_x, missing, num_iterations=cfg.num_iterations,
            pixel_mean=mean_image, output_activation=activation, batch_size=cfg.batch_size,
            desc=f'{spec} iterative'),
    }
    if use_latent:
      fills['latent'] = inpainting.latent_fill(
          model, variables, test_x, missing, jax.random.fold_in(key, index),
          num_steps=cfg.latent_steps, learning_rate=cfg.latent_learning_rate,
          num_starts=cfg.latent_starts, pixel_mean=mean_image, batch_size=cfg.batch_size,
          desc=f'{spec} latent')
    table[spec] = {}
    for method, filled in fills.items():
      psnr = inpainting.psnr_missing(filled, test_x, missing)
      table[spec][method] = {'psnr_db': float(psnr.mean()),
                             'psnr_sem_db': float(psnr.std(ddof=1) / np.sqrt(len(psnr)))
                             if len(psnr) > 1 else 0.0}
    n = min(cfg.num_figure_examples, len(test_x))
    rows = [_show_missing(test_x[:n], missing[:n])] + [_rgb(f[:n]) for f in fills.values()]
    rows.append(_rgb(test_x[:n]))
    name = spec.replace(':', '_').replace('.', 'p')
    figures.append(plotting.save_image_rows(
        rows, plotting.figure_path(workdir, f'inpaint_{name}.png'),
        row_labels=['masked'] + list(fills) + ['truth'],
        title=f'{config.data.name}, mask {spec}, {name}'))

  metrics = {
      'dataset': config.data.name, 'model': name,
      'family': family, 'num_examples': len(test_x), 'metric': 'PSNR on missing pixels (dB)',
      'baseline': 'mean_train (per-pixel mean of the train images)',
      'num_iterations': cfg.num_iterations,
      'latent_steps': cfg.latent_steps if use_latent else None,
      'latent_starts': cfg.latent_starts if use_latent else None,
      'psnr': table,
  }
  json_path = common.write_json(os.path.join(workdir, 'inpaint.json'), metrics)
  methods = list(next(iter(table.values())))
  print(f'\n{config.data.name} test, {len(test_x)} images, PSNR on the missing pixels (dB):')
  print('| mask | ' + ' | '.join(methods) + ' |')
  print('|---' * (len(methods) + 1) + '|')
  for spec, row in table.items():
    print(f'| {spec} | ' + ' | '.join(
        f"{row[m]['psnr_db']:.2f} ± {row[m]['psnr_sem_db']:.2f}" for m in methods) + ' |')
  print(f'\nMetrics: {json_path}\nFigures: ' + ', '.join(figures))
  return metrics


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/inpaint.py[:smoke,model=vae].',
              model_workdir_help='Restore the model from this run instead of training one.')
