"""Latent space: interpolation (linear and slerp), attribute arithmetic, traversals.

  python -m experiments.latent --config=experiments/configs/apps/latent.py --workdir=runs/latent
  python -m experiments.latent --config=experiments/configs/apps/latent.py:model=undercomplete \
      --workdir=runs/latent_ae
  python -m experiments.latent --config=experiments/configs/apps/latent.py \
      --model_workdir=runs/vae --workdir=runs/latent_from_run

Trains the config's model with `ae_jax.training` into --workdir (checkpoints
and metrics in --workdir/model/; or restores the run in --model_workdir),
embeds the train and test splits and writes into --workdir:

  latent.json                      midpoint norms of linear and spherical
                                   paths, attribute-arithmetic success rates
                                   (a pixel-space k-NN classifier judges the
                                   decoded images), latent activity;
  figures/latent_interpolation.png linear and slerp paths between test digits
                                   of each class pair;
  figures/latent_attributes.png    test codes of class a plus s times the
                                   attribute vector mean(z | b) - mean(z | a);
  figures/latent_traversals.png    the most active dimensions traversed one
                                   at a time from a test code.
"""

import os

import numpy as np
from sklearn import neighbors

from ae_jax import data as data_lib
from ae_jax import plotting
from ae_jax import training
from ae_jax.applications import common
from ae_jax.applications import embedding
from ae_jax.applications import latent
from ae_jax.recipes import common as recipe_common
from experiments import cli


def _midpoint_norm_ratios(codes: np.ndarray, num_pairs: int, seed: int) -> dict[str, float]:
  """Mean |z_mid| / mean(|z0|, |z1|) of linear and slerp paths between random pairs."""
  rng = np.random.default_rng(seed)
  first, second = rng.integers(0, len(codes), (2, num_pairs))
  ratios = {method: [] for method in latent.METHODS}
  for i, j in zip(first, second):
    if i == j:
      continue
    endpoint_norm = 0.5 * (np.linalg.norm(codes[i]) + np.linalg.norm(codes[j]))
    for method in latent.METHODS:
      mid = np.asarray(latent.interpolate(codes[i], codes[j], 3, method=method))[1]
      ratios[method].append(np.linalg.norm(mid) / endpoint_norm)
  return {method: float(np.mean(r)) for method, r in ratios.items()}


def run(config, workdir: str, model_workdir: str | None = None) -> dict:
  """Trains or restores the model, walks its latent space, writes metrics and figures."""
  cfg = config.latent
  model, variables = training.train_or_restore(config, workdir, model_workdir=model_workdir)
  family = embedding.code_family(model)
  name = recipe_common.title(config)
  data_dir = config.data.get('data_dir')
  train_x, train_y = data_lib.load_arrays(config.data.name, config.data.train_split,
                                          data_dir=data_dir)
  test_x, test_y = data_lib.load_arrays(config.data.name, config.data.eval_split,
                                        data_dir=data_dir)
  image_shape = test_x.shape[1:]
  train_z = embedding.embed(model, variables, train_x, batch_size=cfg.batch_size,
                            desc='embed train')
  test_z = embedding.embed(model, variables, test_x, batch_size=cfg.batch_size,
                           desc='embed test')
  decode = lambda codes: latent.decode(model, variables, codes, image_shape,
                                       batch_size=cfg.batch_size,
                                       output_activation=common.output_activation(config))
  first_of = {c: int(np.flatnonzero(test_y == c)[0]) for c in np.unique(test_y)}
  pairs = [(a, b) for a, b in cfg.class_pairs if a in first_of and b in first_of]
  figures = []

  # Interpolation: one linear and one slerp strip per class pair.
  rows, labels = [], []
  for a, b in pairs:
    for method in latent.METHODS:
      path = latent.interpolate(test_z[first_of[a]], test_z[first_of[b]], cfg.num_steps,
                                method=method)
      rows.append(decode(np.asarray(path)))
      labels.append(f'{a}→{b} {method}')
  figures.append(plotting.save_image_rows(
      rows, plotting.figure_path(workdir, 'latent_interpolation.png'), row_labels=labels,
      title=f'{name}: interpolation between test codes'))
  norms = {'test_codes': _midpoint_norm_ratios(test_z, cfg.num_norm_pairs, cfg.seed)}
  if family == 'vae':
    prior = np.random.default_rng(cfg.seed).standard_normal((2 * cfg.num_norm_pairs,
                                                             test_z.shape[1]))
    norms['prior_samples'] = _midpoint_norm_ratios(prior, cfg.num_norm_pairs, cfg.seed)

  # Attribute arithmetic: class a's codes plus s * (mean code of b - mean code of a).
  judge = neighbors.KNeighborsClassifier(n_neighbors=cfg.knn_neighbors)
  judge.fit(train_x.reshape(len(train_x), -1), train_y)
  scales = np.asarray(cfg.attribute_scales, np.float32)
  rows, labels, success = [], [], {}
  for a, b in pairs:
    in_pair = (train_y == a) | (train_y == b)
    vector = latent.attribute_vector(train_z[in_pair], train_y[in_pair] == b)
    sources = test_z[test_y == a]
    shifted = np.stack([latent.apply_attribute(z, vector, scales) for z in sources])
    images = decode(shifted)  # [n, S, H, W, C]
    predicted = judge.predict(images.reshape(-1, np.prod(image_shape))).reshape(len(sources), -1)
    success[f'{a}->{b}'] = {f'{s:g}': float(np.mean(predicted[:, i] == b))
                            for i, s in enumerate(scales)}
    for n in range(min(cfg.num_attribute_examples, len(sources))):
      rows.append(images[n])
      labels.append(f'{a} + s·({b}−{a})')
  figures.append(plotting.save_image_rows(
      rows, plotting.figure_path(workdir, 'latent_attributes.png'), row_labels=labels,
      col_labels=[f's={s:g}' for s in scales],
      title=f'{name}: attribute arithmetic, z + s·(mean z|b − mean z|a)'))

  # Traversals of the most active dimensions from the first test code.
  activity = latent.latent_activity(train_z)
  dims = latent.active_dims(train_z)[:cfg.num_traversal_dims]
  if family == 'vae':
    values = np.linspace(-cfg.traversal_range, cfg.traversal_range, cfg.num_traversal_values)
  else:
    q = np.linspace(cfg.traversal_quantile, 1 - cfg.traversal_quantile, cfg.num_traversal_values)
    values = np.quantile(train_z[:, dims], q, axis=0).T  # [dims, V]
  grid = latent.traverse(test_z[0], values, dims=dims)
  figures.append(plotting.save_image_rows(
      decode(grid), plotting.figure_path(workdir, 'latent_traversals.png'),
      row_labels=[f'z[{d}] (var {activity[d]:.2f})' for d in dims],
      col_labels=[f'{v:.1f}' for v in values] if values.ndim == 1 else None,
      title=f'{name}: traversals of the {len(dims)} most active dimensions'))

  metrics = {
      'dataset': config.data.name, 'model': name,
      'family': family, 'code_dim': int(test_z.shape[1]),
      'midpoint_norm_ratio': norms,
      'attribute_success': success,
      'attribute_judge': f'{cfg.knn_neighbors}-NN on train pixels',
      'latent_activity': activity,
      'num_active_units': int(np.sum(activity > 0.01)),
  }
  json_path = common.write_json(os.path.join(workdir, 'latent.json'), metrics)
  print(f'\n{config.data.name}, {name}: code dimension {test_z.shape[1]}, '
        f'{metrics["num_active_units"]} units with activity > 0.01.')
  for where, r in norms.items():
    print(f'Midpoint norm / endpoint norm ({where}): linear {r["linear"]:.3f}, '
          f'slerp {r["slerp"]:.3f}')
  print('Attribute arithmetic, share of decoded images the pixel k-NN calls the target class:')
  print('| pair | ' + ' | '.join(f's={s:g}' for s in scales) + ' |')
  print('|---|' + '---|' * len(scales))
  for pair, by_scale in success.items():
    print(f'| {pair} | ' + ' | '.join(f'{v:.2f}' for v in by_scale.values()) + ' |')
  print(f'\nMetrics: {json_path}\nFigures: ' + ', '.join(figures))
  return metrics


if __name__ == '__main__':
  cli.run_app(run, config_help='Config file, e.g. experiments/configs/apps/latent.py[:smoke,model=vae].',
              model_workdir_help='Restore the model from this run instead of training one.')
