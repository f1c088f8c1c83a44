"""VQ-VAE generation: a gated PixelCNN prior over the code grids, sampled and decoded.

  python -m experiments.vq_prior --config=experiments/configs/apps/vq_prior.py --workdir=runs/vq_prior
  python -m experiments.vq_prior --config=experiments/configs/apps/vq_prior.py \
      --model_workdir=runs/vqvae --workdir=runs/vq_prior_from_run

Trains the config's VQ-VAE with the runner into --workdir (or restores
--model_workdir), encodes the train and test splits to code grids, trains
the prior on them into <workdir>/prior (checkpoints/, metrics.jsonl; a rerun
resumes), and writes into --workdir:

  vq_prior.json                  test NLL of the prior (nats per code, bits per
                                 image) before and after training, against the
                                 uniform (log K) and code-frequency baselines;
                                 code usage and perplexity;
  figures/vq_code_usage.png      how often each code is used (train split);
  figures/vq_prior_samples.png   test inputs, their VQ-VAE reconstructions,
                                 and decoded prior samples at each temperature.
"""

import math
import os
import time

import jax
import numpy as np
from matplotlib.figure import Figure

from ae_jax import app_plots
from ae_jax import data as data_lib
from ae_jax import models
from ae_jax import plotting
from ae_jax.applications import common
from ae_jax.applications import vq_prior
from experiments import cli


def save_code_usage(codes: np.ndarray, num_codes: int, path: str, *, title: str = '') -> str:
  """Bar chart of code frequencies, most used first, with the perplexity."""
  counts = np.bincount(codes.ravel(), minlength=num_codes)
  freq = counts / counts.sum()
  nonzero = freq[freq > 0]
  perplexity = float(np.exp(-np.sum(nonzero * np.log(nonzero))))
  fig = Figure(figsize=(8, 3.2))
  ax = fig.subplots()
  order = np.argsort(-counts)
  ax.bar(np.arange(num_codes), freq[order], color='tab:blue')
  ax.set_xticks(np.arange(num_codes)[::max(1, num_codes // 16)])
  ax.set_xticklabels(order[::max(1, num_codes // 16)], fontsize=7)
  ax.set_xlabel('code index (sorted by use)')
  ax.set_ylabel('frequency')
  ax.set_title((title + ': ' if title else '') + f'{int(np.sum(counts > 0))}/{num_codes} codes '
               f'used, perplexity {perplexity:.1f}')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def run(config, workdir: str, model_workdir: str | None = None) -> dict:
  """Trains or restores the VQ-VAE, trains the prior, samples, writes metrics and figures."""
  cfg = config.vq_prior
  vqvae, variables = common.train_or_restore(config, workdir, model_workdir=model_workdir)
  if not isinstance(vqvae, models.VQVAE):
    raise ValueError(f'vq_prior needs a VQ-VAE config (model.name="vqvae"), got '
                     f'{config.model.name!r}.')
  data_dir = config.data.get('data_dir')
  train_x, _ = data_lib.load_arrays(config.data.name, config.data.train_split, data_dir=data_dir)
  test_x, _ = data_lib.load_arrays(config.data.name, config.data.eval_split, data_dir=data_dir)
  train_codes = vq_prior.encode_indices(vqvae, variables, train_x)
  test_codes = vq_prior.encode_indices(vqvae, variables, test_x)
  num_codes = vqvae.num_codes
  grid = tuple(train_codes.shape[1:])
  print(f'Codes: {grid[0]}x{grid[1]} grid of {num_codes} codes; {len(train_codes)} train, '
        f'{len(test_codes)} test grids.')

  start = time.time()
  prior, params, history = vq_prior.train_prior(
      cfg, os.path.join(workdir, 'prior'), train_codes, test_codes, num_codes=num_codes)
  seconds = time.time() - start

  activation = common.output_activation(config)
  n = cfg.num_samples
  rows = [test_x[:n], vq_prior.decode_indices(vqvae, variables, test_codes[:n],
                                              output_activation=activation)]
  labels = ['test inputs', 'reconstructions']
  sample_key = jax.random.key(cfg.seed + 1)
  for t in cfg.temperatures:
    codes = vq_prior.sample_codes(prior, params, sample_key, n, grid, temperature=t)
    images = vq_prior.decode_indices(vqvae, variables, np.asarray(codes),
                                     output_activation=activation)
    if not np.all(np.isfinite(images)):
      raise FloatingPointError(f'Decoded prior samples at temperature {t} are not finite.')
    rows.append(images)
    labels.append(f'prior T={t:g}')
  figures = [
      save_code_usage(train_codes, num_codes, plotting.figure_path(workdir, 'vq_code_usage.png'),
                      title=f'{config.data.name} train codes'),
      app_plots.save_image_rows(rows, plotting.figure_path(workdir, 'vq_prior_samples.png'),
                                row_labels=labels,
                                title=f'{config.data.name}: VQ-VAE reconstructions and '
                                      'gated PixelCNN prior samples'),
  ]
  counts = np.bincount(train_codes.ravel(), minlength=num_codes)
  freq = counts[counts > 0] / counts.sum()
  metrics = {
      'dataset': config.data.name, 'grid': list(grid), 'num_codes': num_codes,
      'codes_used': int(np.sum(counts > 0)),
      'code_perplexity': float(np.exp(-np.sum(freq * np.log(freq)))),
      'uniform_nats_per_code': math.log(num_codes),
      'unigram_nats_per_code': vq_prior.unigram_nats_per_code(train_codes, test_codes,
                                                               num_codes),
      'prior_history': history,
      'prior_nats_per_code': history[-1]['nats_per_code'],
      'prior_bits_per_image': history[-1]['bits_per_image'],
      'prior_train_seconds': seconds,
  }
  json_path = common.write_json(os.path.join(workdir, 'vq_prior.json'), metrics)
  print(f"\nPrior test NLL: {history[0]['nats_per_code']:.4f} -> "
        f"{metrics['prior_nats_per_code']:.4f} nats/code "
        f"({metrics['prior_bits_per_image']:.1f} bits/image); baselines: uniform "
        f"{metrics['uniform_nats_per_code']:.4f}, code frequencies "
        f"{metrics['unigram_nats_per_code']:.4f} nats/code. Prior trained in {seconds:.1f} s.")
  print(f'Metrics: {json_path}\nFigures: ' + ', '.join(figures))
  return metrics


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/vq_prior.py[:smoke].',
              model_workdir_help='Restore the VQ-VAE from this run instead of training one.')
