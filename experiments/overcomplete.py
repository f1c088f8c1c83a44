"""Overcomplete autoencoders: does the code copy the input, or model the data?

  python -m experiments.overcomplete --config=experiments/configs/overcomplete.py --workdir=runs/overcomplete
  python -m experiments.overcomplete --config=experiments/configs/overcomplete.py:smoke --workdir=/tmp/overcomplete

Trains every variant of `config.overcomplete.variants` (the unconstrained
784-1024-784 autoencoder and its sparse, denoising and contractive versions,
`experiments/configs/overcomplete.py`) with `ae_jax.training` into
--workdir/<variant>/ (checkpoints and metrics in <variant>/model/, the
recipe's figures in <variant>/figures/; a finished variant is restored, not
retrained). The variant the --config names keeps its --config.loss overrides;
the others take their loss from the config module's `VARIANTS`. Then, on the
held-out test split, `ae_jax.applications.overcomplete.copying_metrics`
measures each one: reconstruction MSE on the test digits, on i.i.d. uniform
noise images and on Gaussian noise with the train digits' mean and pixel
covariance, and a logistic-regression probe on the codes against the same
probe on the raw pixels. Writes into --workdir:

  overcomplete.json               the table, per variant, with the configs;
  figures/overcomplete.png        test digits, uniform and Gaussian noise, and
                                  each variant's reconstructions of them.

On SIGTERM the variant in training saves a checkpoint and the script exits
with status 75; the same command resumes.
"""

import copy
import os
import time

import ml_collections
import numpy as np

from ae_jax import data as data_lib
from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import common
from ae_jax.applications import embedding
from ae_jax.applications import overcomplete
from experiments import cli
from experiments.configs import overcomplete as overcomplete_config


def variant_config(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """`config` itself for the variant it names, else a copy set to `variant`."""
  if variant == config.overcomplete.variant:
    return config
  return overcomplete_config.set_variant(copy.deepcopy(config), variant)


def subsample(images, labels, num: int, seed: int):
  """`num` (images, labels) drawn without replacement, in order; all for num=0."""
  if not num or num >= len(images):
    return images, labels
  rows = embedding.subsample_indices(len(images), num, seed=seed)
  return images[rows], labels[rows]


def run(config: ml_collections.ConfigDict, workdir: str) -> dict:
  """Trains (or restores) each variant, measures it; returns what overcomplete.json holds.

  Raises:
    ae_jax.training.Preempted: a SIGTERM stopped a variant's training (after a checkpoint).
    ValueError: an unknown variant in config.overcomplete.variants.
  """
  cfg = config.overcomplete
  for variant in cfg.variants:  # Every name is checked before anything trains.
    training.validate(variant_config(config, variant))
  start = time.time()
  data_dir = config.data.get('data_dir')
  train_x, train_y = data_lib.load_arrays(config.data.name, config.data.train_split,
                                          data_dir=data_dir)
  test_x, test_y = data_lib.load_arrays(config.data.name, config.data.eval_split,
                                        data_dir=data_dir)
  probe_x, probe_y = subsample(train_x, train_y, cfg.num_probe_train, seed=cfg.noise_seed)
  probe = dict(inverse_regularization=cfg.probe_inverse_regularization,
               max_iter=cfg.probe_max_iter)
  print(f'Linear probe on the raw pixels ({len(probe_x)} train, {len(test_x)} test '
        f'{config.data.name} images) ...', flush=True)
  pixel_accuracy = overcomplete.linear_probe_accuracy(probe_x, probe_y, test_x, test_y, **probe)
  print(f'  pixel probe test accuracy {pixel_accuracy:.3f}', flush=True)

  n = cfg.num_figure_examples
  shown = {'digits': test_x[:n]}
  for i, kind in enumerate(overcomplete.NOISE_KINDS):
    shown[f'{kind} noise'] = overcomplete.noise_images(kind, train_x, n,
                                                       seed=cfg.noise_seed + 100 + i)
  reconstructions = {name: [] for name in shown}
  results = {}
  for i, variant in enumerate(cfg.variants):
    vc = variant_config(config, variant)
    run_dir = os.path.join(workdir, variant)
    print(f'\n=== [{i + 1}/{len(cfg.variants)}] {variant}: code {vc.model.latent_dim} '
          f'({vc.model.latent_activation}), loss {vc.loss.to_dict()}, '
          f'{vc.train.num_train_steps} steps into {run_dir} ===', flush=True)
    variant_start = time.time()
    final = training.train_and_evaluate(vc, run_dir)
    model, variables = training.restore_variables(vc, run_dir)
    train_seconds = time.time() - variant_start
    print(f'Measuring {variant} (digits, noise, linear probe) ...', flush=True)
    activation = common.output_activation(vc)
    metrics = overcomplete.copying_metrics(
        model, variables, probe_x, probe_y, test_x, test_y, pixel_probe_accuracy=pixel_accuracy,
        output_activation=activation, probe_inverse_regularization=cfg.probe_inverse_regularization,
        probe_max_iter=cfg.probe_max_iter, noise_seed=cfg.noise_seed, batch_size=cfg.batch_size)
    results[variant] = {**metrics, 'final_eval_metrics': final, 'train_seconds': train_seconds,
                        'model': vc.model.to_dict(), 'loss': vc.loss.to_dict(),
                        'num_train_steps': vc.train.num_train_steps}
    print('  ' + ', '.join(f'{k}={v:.4g}' for k, v in metrics.items()), flush=True)
    for name, images in shown.items():
      reconstructions[name].append(embedding.reconstruct(
          model, variables, images, batch_size=n, output_activation=activation))

  # One row of inputs (digits, then each noise), one row per variant's reconstructions.
  rows = [np.concatenate(list(shown.values()))]
  rows += [np.clip(np.concatenate([reconstructions[name][v] for name in shown]), 0.0, 1.0)
           for v in range(len(cfg.variants))]
  figure = plotting.save_image_rows(
      rows, plotting.figure_path(workdir, 'overcomplete.png'),
      row_labels=['input'] + list(cfg.variants),
      col_labels=[name if j == 0 else '' for name in shown for j in range(n)],
      title=f'{config.data.name}: test digits, uniform noise and Gaussian noise (columns), '
            f'reconstructed by each {config.model.latent_dim}-unit code (rows)')
  out = {
      'protocol': (
          'held-out test split; MSE per pixel of the reconstruction (decoder output through '
          'its output activation); uniform noise: i.i.d. U[0,1) pixels; gaussian noise: '
          'N(train mean, train pixel covariance) clipped to [0,1]; *_variance_kept = 1 - '
          'MSE / the images\' variance per pixel about their mean; linear probe: '
          'StandardScaler + sklearn LogisticRegression (lbfgs) fit on the train codes '
          '(or pixels), accuracy on the test codes'),
      'dataset': config.data.name, 'num_probe_train': len(probe_x), 'num_test': len(test_x),
      'probe': probe, 'probe_accuracy_pixels': pixel_accuracy, 'results': results,
      'figure': figure, 'seconds': time.time() - start,
  }
  json_path = common.write_json(os.path.join(workdir, 'overcomplete.json'), out)
  print(f'\n{config.data.name} test split; pixel probe accuracy {pixel_accuracy:.3f} '
        f'({time.time() - start:.0f} s):')
  print(format_table(results))
  print(f'\nMetrics: {json_path}\nFigure: {figure}')
  return out


def format_table(results: dict) -> str:
  lines = ['| variant | digit MSE | uniform-noise MSE (ratio) | Gaussian-noise MSE (ratio) | '
           'probe on codes (pixels) |', '|---|---|---|---|---|']
  for variant, m in results.items():
    lines.append(
        f"| {variant} | {m['digit_mse']:.4f} | {m['uniform_noise_mse']:.4f} "
        f"({m['uniform_to_digit_mse']:.1f}) | {m['gaussian_noise_mse']:.4f} "
        f"({m['gaussian_to_digit_mse']:.2f}) | {m['probe_accuracy_codes']:.3f} "
        f"({m['probe_accuracy_pixels']:.3f}) |")
  return '\n'.join(lines)


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/overcomplete.py[:smoke].')
