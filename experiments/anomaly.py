"""Anomaly detection, the one-class protocol of Ruff et al. (2018).

  python -m experiments.anomaly --config=experiments/configs/apps/anomaly.py --workdir=runs/anomaly
  python -m experiments.anomaly --config=experiments/configs/apps/anomaly.py \
      --config.data.name=fashion_mnist --workdir=runs/anomaly_fashion
  python -m experiments.anomaly --config=experiments/configs/apps/anomaly.py \
      --model_workdir=runs/anomaly --workdir=runs/anomaly_rescored

For each class c in `config.anomaly.classes`: the train images of c, less a
held-out `validation_fraction`, train the config's model with
`ae_jax.training` in --workdir/class_<c> (checkpoints and metrics in
class_<c>/model/; resuming, or only restoring, if a checkpoint is already
there; with --model_workdir the models of --model_workdir/class_<c> are
restored instead). The whole test split is then scored, class c normal and
the others anomalous; the threshold is the `quantile` of the held-out normal
scores. Writes into --workdir:

  anomaly.json                 per class and per score: ROC-AUC, PR-AUC, and
                               precision, recall, F1, false positive rate at
                               the threshold; and their means over classes;
  figures/anomaly_ranked.png   per class, the least and most anomalous test
                               images;
  figures/anomaly_roc.png      ROC curves of every class for the figure score;
  figures/anomaly_hist_<c>.png score histograms of the first class.

The 'eval' records in class_<c>/model/metrics.jsonl are on that class's
training images: the recipe evaluates on the data source it is given.
"""

import os
import time

import jax
import ml_collections
import numpy as np
from sklearn import metrics as sk_metrics

from ae_jax import data as data_lib
from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import anomaly
from ae_jax.applications import common
from ae_jax.recipes import common as recipe_common
from experiments import cli


def class_config(config: ml_collections.ConfigDict, train_images: np.ndarray,
                 normal_class: int) -> ml_collections.ConfigDict:
  """The training config of one class: `data.name` becomes an in-memory source of
  its images (the recipes' data functions take any source where a dataset name goes)."""
  fields = config.to_dict()
  fields['data']['name'] = data_lib.ArraySource.create(
      train_images, np.full(len(train_images), normal_class, np.int32),
      name=f'{config.data.name}:class{normal_class}')
  # A class smaller than a batch would give no full batch; shrink the batch to fit.
  fields['data']['batch_size'] = min(fields['data']['batch_size'], len(train_images))
  # The source serves its images for every split: evaluate on as many batches
  # and draw as many figure examples as it has (the config checks refuse more).
  num_eval_batches = fields['train'].get('num_eval_batches')
  if num_eval_batches is not None:
    available = -(-len(train_images) // fields['data']['eval_batch_size'])
    fields['train']['num_eval_batches'] = min(num_eval_batches, available)
  if 'num_figure_examples' in fields['train']:
    fields['train']['num_figure_examples'] = min(fields['train']['num_figure_examples'],
                                                 len(train_images))
  return ml_collections.ConfigDict(fields)


def run(config, workdir: str, model_workdir: str | None = None) -> dict:
  """Runs the one-class protocol; returns the metrics written to anomaly.json."""
  cfg = config.anomaly
  if cfg.figure_score and cfg.figure_score not in anomaly.SCORES:
    raise ValueError(f'config.anomaly.figure_score={cfg.figure_score!r}; expected one of '
                     f'{anomaly.SCORES} or empty.')
  data_dir = config.data.get('data_dir')
  train_x, train_y = data_lib.load_arrays(config.data.name, config.data.train_split,
                                          data_dir=data_dir)
  test_x, test_y = data_lib.load_arrays(config.data.name, config.data.eval_split,
                                        data_dir=data_dir)
  key = jax.random.key(cfg.seed)
  per_class, ranked, roc_curves, hist = {}, [], {}, None
  start = time.time()
  for i, c in enumerate(cfg.classes):
    print(f'\n=== class {c} normal ({i + 1}/{len(cfg.classes)}), '
          f'{time.time() - start:.0f} s so far ===', flush=True)
    normal_train, normal_val = anomaly.one_class_split(
        train_x, train_y, c, validation_fraction=cfg.validation_fraction, seed=cfg.seed)
    run_config = class_config(config, normal_train, c)
    model, variables = training.train_or_restore(
        run_config, os.path.join(workdir, f'class_{c}'),
        model_workdir=None if model_workdir is None else os.path.join(model_workdir, f'class_{c}'))
    # The likelihood scores assume the Bernoulli decoder the model was trained with.
    scores = None if common.reconstruction_kind(config) == 'bernoulli' else [
        'reconstruction_error']
    kwargs = dict(scores=scores, iwae_samples=cfg.iwae_samples, elbo_samples=cfg.elbo_samples,
                  recon_samples=cfg.recon_samples, chunk_size=cfg.chunk_size,
                  batch_size=cfg.batch_size, output_activation=common.output_activation(config))
    # Validation and test images draw from independent streams of the run's key.
    val_scores = anomaly.anomaly_scores(model, variables, normal_val,
                                        jax.random.fold_in(key, 2 * c), **kwargs)
    test_scores = anomaly.anomaly_scores(model, variables, test_x,
                                         jax.random.fold_in(key, 2 * c + 1),
                                         desc=f'class {c}', **kwargs)
    is_anomaly = test_y != c
    per_class[c] = anomaly.evaluate_scores(val_scores, test_scores, is_anomaly,
                                           quantile=cfg.quantile)
    print('  ROC-AUC: ' + ', '.join(f'{s}={m["roc_auc"]:.3f}' for s, m in per_class[c].items()),
          flush=True)

    figure_score = cfg.figure_score or list(test_scores)[0]
    order = np.argsort(test_scores[figure_score], kind='stable')
    k = cfg.num_ranked
    ranked.append((test_x[order[:k]], test_x[order[::-1][:k]]))
    fpr, tpr, _ = sk_metrics.roc_curve(is_anomaly, test_scores[figure_score])
    roc_curves[f'{c} (AUC {per_class[c][figure_score]["roc_auc"]:.3f})'] = (fpr, tpr)
    if hist is None:
      hist = (c, figure_score, test_scores[figure_score], is_anomaly,
              per_class[c][figure_score]['threshold'])

  means = anomaly.mean_over_classes(per_class)
  metrics = {
      'dataset': config.data.name, 'model': recipe_common.title(config),
      'protocol': 'one-class (Ruff et al. 2018): train on one class, test split with that class '
                  'normal and the rest anomalous',
      'num_train_steps': config.train.num_train_steps, 'quantile': cfg.quantile,
      'iwae_samples': cfg.iwae_samples, 'recon_samples': cfg.recon_samples,
      'elbo_samples': cfg.elbo_samples, 'num_test': len(test_x),
      # PR-AUC of a random score: the share of anomalies in the test split.
      'pr_auc_chance': float(np.mean([np.mean(test_y != c) for c in cfg.classes])),
      'per_class': per_class, 'mean': means,
  }
  json_path = common.write_json(os.path.join(workdir, 'anomaly.json'), metrics)

  figure_score = cfg.figure_score or list(per_class[cfg.classes[0]])[0]
  figures = [
      plotting.save_ranked_images(
          np.stack([r[0] for r in ranked]), np.stack([r[1] for r in ranked]),
          plotting.figure_path(workdir, 'anomaly_ranked.png'),
          row_labels=[f'normal: {c}' for c in cfg.classes],
          title=f'{config.data.name} test images ranked by {figure_score}'),
      plotting.save_roc_curves(
          roc_curves, plotting.figure_path(workdir, 'anomaly_roc.png'),
          title=f'ROC by normal class, {figure_score}'),
  ]
  c, name, scores, is_anomaly, threshold = hist
  figures.append(plotting.save_score_histograms(
      scores[~is_anomaly], scores[is_anomaly],
      plotting.figure_path(workdir, f'anomaly_hist_{c}.png'), threshold=threshold,
      xlabel=name, title=f'class {c} normal: test scores and the {cfg.quantile} threshold'))

  print(f'\n{config.data.name}, one-class ROC-AUC ({recipe_common.title(config)}, '
        f'{config.train.num_train_steps} steps per class, {time.time() - start:.0f} s):')
  print(anomaly.format_table(per_class, metric='roc_auc'))
  print(f'\nPR-AUC (average precision; anomalies are the positives, chance = '
        f'{metrics["pr_auc_chance"]:.3f}):')
  print(anomaly.format_table(per_class, metric='pr_auc'))
  print(f'\nMetrics: {json_path}\nFigures: ' + ', '.join(figures))
  return metrics


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/anomaly.py[:smoke,model=vae].',
              model_workdir_help='Restore the per-class models from this directory instead of training.')
