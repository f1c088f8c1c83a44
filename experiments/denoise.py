"""Image denoising: a DAE against scikit-image's classical denoisers.

  python -m experiments.denoise --config=experiments/configs/apps/denoise.py --workdir=runs/denoise
  python -m experiments.denoise --config=experiments/configs/apps/denoise.py:smoke --workdir=/tmp/denoise

Trains `ae_jax.applications.denoising.UNetDenoiser` on the train split of
`config.data.name` with Gaussian noise sigma ~ U[loss.sigma_min,
loss.sigma_max] drawn per image, then, for each sigma in `denoise.sigmas`,
adds noise of that sigma to `num_test` held-out images (the eval split) and
compares the noisy input, the DAE and scikit-image's TV, wavelet and NL-means
denoisers, each tuned per sigma on `num_val` train-split images (the DAE
trains on that split too; the test images stay unseen by every method). With
`denoise.photos`, a second DAE is trained on random grayscale patches of the
`photo_train` pictures of `skimage.data` and everything is repeated on the
grid patches of the `photo_test` pictures. Writes into --workdir:

  denoise.json                   the table: per data set and sigma, mean PSNR
                                 (dB) and SSIM of every method, the tuned
                                 classical parameters, the DAE's margin over
                                 the best classical denoiser;
  figures/denoise_<data>.png     per sigma, rows noisy / DAE / best classical
                                 / clean for a few test images.

Nothing is checkpointed: the run takes minutes.
"""

import os
import time

import jax
import ml_collections
import numpy as np

from ae_jax import app_plots
from ae_jax import build
from ae_jax import data as data_lib
from ae_jax import plotting
from ae_jax.applications import common
from ae_jax.applications import denoising
from experiments import cli


def save_strips(examples: dict, path: str, *, title: str) -> str:
  """Per sigma, rows noisy / DAE / best classical / clean of a few test images; each
  label gives the row's mean PSNR over the images shown."""
  rows, labels = [], []
  for sigma, ex in examples.items():
    best = ex['best_name']
    for name, label in (('noisy', f'σ={sigma} noisy'), ('dae', 'DAE'), (best, best)):
      rows.append(ex[name])
      labels.append(f'{label} {ex["psnr"][name].mean():.1f} dB')
    rows.append(ex['clean'])
    labels.append('clean')
  return app_plots.save_image_rows(rows, path, row_labels=labels, title=title)


def run_one(name: str, config, train_images, val_images, test_images, *, num_steps: int,
            key, workdir: str) -> dict:
  """Trains a DAE on `train_images`, benchmarks it, saves the figure; returns the table."""
  cfg = config.denoise
  print(f'\n=== {name}: train {len(train_images)} images {train_images.shape[1:]}, '
        f'{num_steps} steps; test {len(test_images)}, validation {len(val_images)} ===',
        flush=True)
  model = denoising.UNetDenoiser(features=config.model.features, levels=config.model.levels)
  optim = config.optim.to_dict()
  optim['decay_steps'] = num_steps
  start = time.time()
  variables, history = denoising.train_denoiser(
      model, train_images, jax.random.fold_in(key, 0), num_steps=num_steps,
      batch_size=config.data.batch_size, sigma_min=config.loss.sigma_min,
      sigma_max=config.loss.sigma_max, tx=build.build_optimizer(optim),
      reconstruction=config.loss.reconstruction,
      log_every_steps=config.train.log_every_steps)
  train_seconds = time.time() - start
  start = time.time()
  table, examples = denoising.benchmark(
      model, variables, test_images, val_images, jax.random.fold_in(key, 1),
      sigmas=cfg.sigmas, num_examples=cfg.num_examples)
  for sigma, ex in examples.items():
    ex['best_name'] = table[str(sigma)]['best_classical']
    ex['psnr'] = {m: denoising.psnr(ex['clean'], ex[m]) for m in denoising.METHODS}
  figure = save_strips(examples, plotting.figure_path(workdir, f'denoise_{name}.png'),
                       title=f'{name}: noisy / DAE / best classical / clean')
  return {'table': table, 'train_history': history, 'train_seconds': train_seconds,
          'benchmark_seconds': time.time() - start, 'num_train': len(train_images),
          'num_test': len(test_images), 'num_val': len(val_images),
          'num_train_steps': num_steps, 'figure': figure}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the benchmark(s); returns the metrics written to denoise.json."""
  cfg = config.denoise
  key = jax.random.key(cfg.seed)
  start = time.time()
  data_dir = config.data.get('data_dir')
  train_x, _ = data_lib.load_arrays(config.data.name, config.data.train_split, data_dir=data_dir)
  test_x, _ = data_lib.load_arrays(config.data.name, config.data.eval_split, data_dir=data_dir)
  rng = np.random.default_rng(cfg.seed)
  test_x = test_x[np.sort(rng.permutation(len(test_x))[:cfg.num_test])]
  # Validation images come from the train split: they tune the classical denoisers only.
  val_x = train_x[np.sort(rng.permutation(len(train_x))[:cfg.num_val])]
  results = {config.data.name: run_one(
      config.data.name, config, train_x, val_x, test_x,
      num_steps=config.train.num_train_steps, key=jax.random.fold_in(key, 0), workdir=workdir)}
  if cfg.photos:
    photo_train = denoising.photo_patches(cfg.photo_train, patch_size=cfg.patch_size,
                                          num=cfg.num_photo_train, seed=cfg.seed)
    photo_val = denoising.photo_patches(cfg.photo_train, patch_size=cfg.patch_size,
                                        num=cfg.num_photo_val, seed=cfg.seed + 1)
    photo_test = denoising.photo_patches(cfg.photo_test, patch_size=cfg.patch_size)
    if cfg.num_photo_test:
      photo_test = photo_test[np.sort(rng.permutation(len(photo_test))[:cfg.num_photo_test])]
    results['photos'] = run_one(
        'photos', config, photo_train, photo_val, photo_test,
        num_steps=cfg.photo_num_train_steps, key=jax.random.fold_in(key, 1), workdir=workdir)
  metrics = {
      'protocol': 'noisy = clip(x + sigma * eps, 0, 1), the same noisy images for every '
                  'method; PSNR (dB) and SSIM: skimage.metrics, data range 1, mean over '
                  'images; classical denoisers tuned per sigma by grid search on validation '
                  'images (best mean PSNR), wavelet and NL means given the true sigma',
      'model': config.model.to_dict(), 'loss': config.loss.to_dict(),
      'grids': denoising.DEFAULT_GRIDS, 'sigmas': list(cfg.sigmas),
      'photo_train': list(cfg.photo_train), 'photo_test': list(cfg.photo_test),
      'results': results, 'seconds': time.time() - start,
  }
  json_path = common.write_json(os.path.join(workdir, 'denoise.json'), metrics)
  print(f'\nPSNR dB / SSIM, mean over test images ({time.time() - start:.0f} s):')
  print(denoising.format_table({n: r['table'] for n, r in results.items()}))
  print(f'\nMetrics: {json_path}\nFigures: ' + ', '.join(r['figure'] for r in results.values()))
  return metrics


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/denoise.py[:smoke].')
