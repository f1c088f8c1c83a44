"""Image denoising: a DAE against scikit-image's classical denoisers.

  python -m experiments.denoise --config=experiments/configs/apps/denoise.py --workdir=runs/denoise
  python -m experiments.denoise --config=experiments/configs/apps/denoise.py:smoke --workdir=/tmp/denoise

Trains the `denoiser` recipe (`ae_jax.models.UNetDenoiser`, Gaussian noise
sigma ~ U[loss.sigma_min, loss.sigma_max] drawn per image) on the train split
of `config.data.name` with `ae_jax.training.train_and_evaluate`, then, for
each sigma in `denoise.sigmas`, adds noise of that sigma to `num_test`
held-out images (the eval split) and compares the noisy input, the DAE and
scikit-image's TV, wavelet and NL-means denoisers, each tuned per sigma on
`num_val` train-split images (the DAE trains on that split too; the test
images stay unseen by every method). With `denoise.photos`, a second DAE is
trained on the random grayscale patches of `data.photos.train` pictures
(`data.name = 'photos'`, `denoise.photo_num_train_steps` steps) and
everything is repeated on the grid patches of the `data.photos.test`
pictures. Writes into --workdir:

  <data>/model/                  each DAE's checkpoints, metrics.jsonl and
                                 TensorBoard events (`ae_jax.training.fit`);
                                 <data>/figures/ its training figures;
  denoise.json                   the table: per data set and sigma, mean PSNR
                                 (dB) and SSIM of every method, the tuned
                                 classical parameters, the DAE's margin over
                                 the best classical denoiser;
  figures/denoise_<data>.png     per sigma, rows noisy / DAE / best classical
                                 / clean for a few test images.

Run again with the same --workdir, a DAE resumes from its last checkpoint (a
finished one is restored, not retrained); on SIGTERM the DAE in training saves
a checkpoint and the script exits with status 75.
"""

import copy
import os
import time

import jax
import ml_collections
import numpy as np

from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import common
from ae_jax.applications import denoising
from ae_jax.recipes import denoiser
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
  return plotting.save_image_rows(rows, path, row_labels=labels, title=title)


def photo_config(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` on the photo patches for `denoise.photo_num_train_steps` steps (the
  cosine schedule follows: its decay_steps refers to num_train_steps)."""
  photos = copy.deepcopy(config)
  photos.data.name = denoiser.PHOTOS
  photos.train.num_train_steps = config.denoise.photo_num_train_steps
  return photos


def subsample(images: np.ndarray, num: int, rng: np.random.Generator) -> np.ndarray:
  """`num` of `images` drawn without replacement, in their order (all for num=0)."""
  if not num:
    return np.asarray(images)
  return np.asarray(images[np.sort(rng.permutation(len(images))[:num])])


def run_one(name: str, config, val_images, test_images, *, num_train: int, key,
            workdir: str) -> dict:
  """Trains (or restores) the DAE of `config` in workdir/<name>/, benchmarks it, saves
  the figure; returns the table."""
  cfg = config.denoise
  run_dir = os.path.join(workdir, name)
  print(f'\n=== {name}: train {config.data.name} ({config.data.train_split}), '
        f'{config.train.num_train_steps} steps into {run_dir}; test {len(test_images)}, '
        f'validation {len(val_images)} ===', flush=True)
  start = time.time()
  final_metrics = training.train_and_evaluate(config, run_dir)
  model, variables = training.restore_variables(config, run_dir)
  train_seconds = time.time() - start
  start = time.time()
  table, examples = denoising.benchmark(
      model, variables, test_images, val_images, key, sigmas=cfg.sigmas,
      num_examples=cfg.num_examples)
  for sigma, ex in examples.items():
    ex['best_name'] = table[str(sigma)]['best_classical']
    ex['psnr'] = {m: denoising.psnr(ex['clean'], ex[m]) for m in denoising.METHODS}
  figure = save_strips(examples, plotting.figure_path(workdir, f'denoise_{name}.png'),
                       title=f'{name}: noisy / DAE / best classical / clean')
  return {'table': table, 'final_metrics': final_metrics,
          'metrics_jsonl': os.path.join(run_dir, 'model', 'metrics.jsonl'),
          'train_seconds': train_seconds, 'benchmark_seconds': time.time() - start,
          'num_train': num_train, 'num_test': len(test_images), 'num_val': len(val_images),
          'num_train_steps': config.train.num_train_steps, 'figure': figure}


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Runs the benchmark(s); returns the metrics written to denoise.json.

  Raises:
    ae_jax.training.Preempted: a SIGTERM stopped a DAE's training (after a checkpoint).
  """
  cfg = config.denoise
  key = jax.random.key(cfg.seed)
  start = time.time()
  rng = np.random.default_rng(cfg.seed)
  test_x = subsample(denoiser.images(config, config.data.eval_split), cfg.num_test, rng)
  train_x = denoiser.images(config, config.data.train_split)
  # Validation images come from the train split: they tune the classical denoisers only.
  val_x = subsample(train_x, cfg.num_val, rng)
  results = {config.data.name: run_one(config.data.name, config, val_x, test_x,
                                       num_train=len(train_x), key=jax.random.fold_in(key, 0),
                                       workdir=workdir)}
  if cfg.photos:
    photos = photo_config(config)
    photo_val = denoising.photo_patches(photos.data.photos.train,
                                        patch_size=photos.data.photos.patch_size,
                                        num=cfg.num_photo_val, seed=cfg.seed + 1)
    photo_test = subsample(denoiser.images(photos, photos.data.eval_split), cfg.num_photo_test,
                           rng)
    results[denoiser.PHOTOS] = run_one(
        denoiser.PHOTOS, photos, photo_val, photo_test,
        num_train=len(denoiser.images(photos, photos.data.train_split)),
        key=jax.random.fold_in(key, 1), workdir=workdir)
  metrics = {
      'protocol': 'noisy = clip(x + sigma * eps, 0, 1), the same noisy images for every '
                  'method; PSNR (dB) and SSIM: skimage.metrics, data range 1, mean over '
                  'images; classical denoisers tuned per sigma by grid search on validation '
                  'images (best mean PSNR), wavelet and NL means given the true sigma',
      'model': config.model.to_dict(), 'loss': config.loss.to_dict(),
      'grids': denoising.DEFAULT_GRIDS, 'sigmas': list(cfg.sigmas),
      'photo_train': list(config.data.photos.train),
      'photo_test': list(config.data.photos.test),
      'results': results, 'seconds': time.time() - start,
  }
  json_path = common.write_json(os.path.join(workdir, 'denoise.json'), metrics)
  print(f'\nPSNR dB / SSIM, mean over test images ({time.time() - start:.0f} s):')
  print(denoising.format_table({n: r['table'] for n, r in results.items()}))
  print(f'\nMetrics: {json_path}\nFigures: ' + ', '.join(r['figure'] for r in results.values()))
  return metrics


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/denoise.py[:smoke].')
