"""Figures a person reads after a run, written as PNG files.

Every function takes numpy arrays and a path, draws on a bare
`matplotlib.figure.Figure` (no pyplot, no display, and no change to the
backend of a notebook that imports it) and returns the path it wrote.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence

from matplotlib.figure import Figure
import numpy as np


def tile(images_NxHxWxC: np.ndarray, ncols: int) -> np.ndarray:
  """Tiles N images into one [rows*H, ncols*W, C] canvas with 1-pixel gaps."""
  n, h, w, c = images_NxHxWxC.shape
  nrows = -(-n // ncols)
  canvas = np.ones(((h + 1) * nrows - 1, (w + 1) * ncols - 1, c), np.float32)
  for i, image in enumerate(images_NxHxWxC):
    r, col = divmod(i, ncols)
    canvas[r * (h + 1):r * (h + 1) + h, col * (w + 1):col * (w + 1) + w] = image
  return canvas


def show(ax, canvas: np.ndarray) -> None:
  """Draws a canvas clipped to [0, 1] (grey for one channel) without ticks."""
  canvas = np.clip(canvas, 0.0, 1.0)
  if canvas.shape[-1] == 1:
    ax.imshow(canvas[..., 0], cmap='gray', vmin=0.0, vmax=1.0, interpolation='nearest')
  else:
    ax.imshow(canvas, interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])


def save_reconstructions(inputs: np.ndarray, reconstructions: np.ndarray, path: str,
                         *, title: str = '') -> str:
  """Inputs on the top row of each pair, reconstructions beneath them."""
  n = len(inputs)
  ncols = min(n, 8)
  fig = Figure(figsize=(1.2 * ncols, 3.0 * -(-n // ncols)))
  axes = fig.subplots(2, 1)
  show(axes[0], tile(np.asarray(inputs), ncols))
  axes[0].set_title('inputs')
  show(axes[1], tile(np.asarray(reconstructions), ncols))
  axes[1].set_title('reconstructions')
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def save_image_grid(images: np.ndarray, path: str, *, title: str = '', ncols: int = 8) -> str:
  """A grid of images, e.g. samples from the prior."""
  n = len(images)
  ncols = min(ncols, n)
  fig = Figure(figsize=(1.2 * ncols, 1.2 * -(-n // ncols) + 0.4))
  ax = fig.subplots()
  show(ax, tile(np.asarray(images), ncols))
  if title:
    ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def save_latent_map(codes_NxZ: np.ndarray, labels_N: np.ndarray | None, path: str,
                    *, title: str = '') -> str:
  """The codes in 2-D, coloured by label: the codes themselves if Z == 2, else
  their first two principal components."""
  codes = np.asarray(codes_NxZ, np.float64).reshape(len(codes_NxZ), -1)
  if codes.shape[1] == 2:
    xy, axis_names = codes, ('z1', 'z2')
  else:
    centred = codes - codes.mean(0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    xy, axis_names = centred @ vt[:2].T, ('PC 1', 'PC 2')
  fig = Figure(figsize=(5.5, 5))
  ax = fig.subplots()
  if labels_N is None:
    ax.scatter(xy[:, 0], xy[:, 1], s=6, alpha=0.8)
  else:
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels_N, cmap='tab10', s=6, alpha=0.8)
    fig.colorbar(scatter, ax=ax, label='label')
  ax.set_xlabel(axis_names[0])
  ax.set_ylabel(axis_names[1])
  ax.set_title(title or 'latent space')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def save_training_curves(metrics_path: str, path: str) -> str:
  """Plots every scalar of the JSON-lines metrics file against the step,
  train and eval records in one panel per metric."""
  series: dict[tuple[str, str], list[tuple[int, float]]] = {}
  with open(metrics_path) as f:
    for line in f:
      record = json.loads(line)
      split, step = record.get('split', 'train'), record['step']
      for name, value in record.items():
        if name in ('split', 'step') or not isinstance(value, (int, float)):
          continue
        series.setdefault((name, split), []).append((step, value))
  names = sorted({name for name, _ in series})
  ncols = min(3, max(1, len(names)))
  nrows = max(1, -(-len(names) // ncols))
  fig = Figure(figsize=(4.2 * ncols, 3 * nrows))
  axes = fig.subplots(nrows, ncols, squeeze=False)
  for ax, name in zip(axes.flat, names):
    for split in ('train', 'eval'):
      if (name, split) in series:
        steps, values = zip(*series[(name, split)])
        ax.plot(steps, values, marker='o' if split == 'eval' else None, markersize=3, label=split)
    ax.set_title(name)
    ax.set_xlabel('step')
    ax.legend()
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def figure_path(workdir: str, name: str) -> str:
  os.makedirs(os.path.join(workdir, 'figures'), exist_ok=True)
  return os.path.join(workdir, 'figures', name)


# Figures of the applications (ae_jax.applications); images are [..., H, W, C] in [0, 1].


def _imshow(ax, images_TxHxWxC: np.ndarray) -> None:
  """T images side by side in one frameless row."""
  images = np.asarray(images_TxHxWxC, np.float32)
  show(ax, tile(images, len(images)))
  for spine in ax.spines.values():
    spine.set_visible(False)


def save_image_rows(rows: Sequence[np.ndarray] | np.ndarray, path: str, *,
                    row_labels: Sequence[str] | None = None,
                    col_labels: Sequence[str] | None = None, title: str = '') -> str:
  """One strip of images per row (interpolations, traversals, arithmetic).

  Args:
    rows: R arrays [T, H, W, C] with the same T, or one array [R, T, H, W, C].
    path: PNG file to write.
    row_labels: R labels drawn left of the rows.
    col_labels: T labels drawn above the first row's images.
    title: figure title.
  """
  rows = [np.asarray(r) for r in rows]
  if not rows:
    raise ValueError('No rows to draw.')
  num_cols = len(rows[0])
  if any(len(r) != num_cols for r in rows):
    raise ValueError(f'Every row needs {num_cols} images; got {[len(r) for r in rows]}.')
  if row_labels is not None and len(row_labels) != len(rows):
    raise ValueError(f'{len(row_labels)} row labels for {len(rows)} rows.')
  h, w = rows[0].shape[1:3]
  cell = 0.8  # inches per image
  label_width = 1.2 if row_labels else 0.2
  fig = Figure(figsize=(label_width + cell * num_cols,
                       0.4 * bool(title) + 0.25 * bool(col_labels) + cell * len(rows) * h / w))
  axes = fig.subplots(len(rows), 1, squeeze=False)
  for i, (ax, row) in enumerate(zip(axes[:, 0], rows)):
    _imshow(ax, row)
    if row_labels is not None:
      ax.set_ylabel(row_labels[i], rotation=0, ha='right', va='center', fontsize=8)
    if i == 0 and col_labels is not None:
      ax.set_xticks([j * (w + 1) + (w - 1) / 2 for j in range(num_cols)])
      ax.set_xticklabels(col_labels, fontsize=7)
      ax.xaxis.tick_top()
      ax.tick_params(length=0)
  fig.tight_layout(pad=0.3, h_pad=0.2)
  if title:
    # Above the axes (and the column labels): bbox_inches='tight' keeps it in the file.
    fig.suptitle(title, fontsize=10, y=1.0, va='bottom')
  fig.savefig(path, dpi=100, bbox_inches='tight')
  return path


def save_embedding_maps(maps: Mapping[str, np.ndarray], labels: np.ndarray | None, path: str,
                        *, title: str = '') -> str:
  """Side-by-side 2-D maps [N, 2], one panel per embedding, coloured by label."""
  names = list(maps)
  fig = Figure(figsize=(4.6 * len(names) + 0.8, 4.4))
  axes = fig.subplots(1, len(names), squeeze=False)
  scatter = None
  for ax, name in zip(axes[0], names):
    xy = np.asarray(maps[name])
    scatter = ax.scatter(xy[:, 0], xy[:, 1], c=labels, cmap='tab10', s=5, alpha=0.8,
                         vmin=None if labels is None else np.min(labels) - 0.5,
                         vmax=None if labels is None else np.max(labels) + 0.5)
    ax.set_title(name, fontsize=10)
    ax.set_xticks([])
    ax.set_yticks([])
  if labels is not None and scatter is not None:
    fig.colorbar(scatter, ax=list(axes[0]), label='label',
                 ticks=np.unique(labels) if len(np.unique(labels)) <= 20 else None)
  if title:
    fig.suptitle(title, fontsize=11)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  return path


def save_ranked_images(least: np.ndarray, most: np.ndarray, path: str, *,
                       row_labels: Sequence[str] | None = None, title: str = '') -> str:
  """Least anomalous images on the left, most anomalous on the right, one row each.

  Args:
    least: [R, k, H, W, C], each row in increasing score order.
    most: [R, k, H, W, C], each row in decreasing score order.
    path: PNG file to write.
    row_labels: R labels (e.g. the normal class of each row).
    title: figure title.
  """
  least, most = np.asarray(least), np.asarray(most)
  if least.shape[:1] != most.shape[:1]:
    raise ValueError(f'least has {len(least)} rows, most {len(most)}.')
  rows, k = least.shape[:2]
  fig = Figure(figsize=(2 * 0.75 * k + 1.4, 0.8 * rows + 0.6))
  axes = fig.subplots(rows, 2, squeeze=False)
  for r in range(rows):
    _imshow(axes[r, 0], least[r])
    _imshow(axes[r, 1], most[r])
    if row_labels is not None:
      axes[r, 0].set_ylabel(row_labels[r], rotation=0, ha='right', va='center', fontsize=8)
  axes[0, 0].set_title('least anomalous', fontsize=9)
  axes[0, 1].set_title('most anomalous', fontsize=9)
  fig.tight_layout(pad=0.3, h_pad=0.2, w_pad=1.5)
  if title:
    fig.suptitle(title, fontsize=10, y=1.0, va='bottom')
  fig.savefig(path, dpi=100, bbox_inches='tight')
  return path


def save_roc_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: str, *,
                    title: str = '') -> str:
  """ROC curves, {name: (false positive rates, true positive rates)}, with the chance line."""
  fig = Figure(figsize=(4.8, 4.5))
  ax = fig.subplots()
  for name, (fpr, tpr) in curves.items():
    ax.plot(fpr, tpr, lw=1.2, label=name)
  ax.plot([0, 1], [0, 1], color='gray', lw=0.8, ls='--')
  ax.set_xlabel('false positive rate')
  ax.set_ylabel('true positive rate')
  ax.set_xlim(0, 1)
  ax.set_ylim(0, 1.01)
  ax.legend(fontsize=7, loc='lower right')
  ax.set_title(title or 'ROC', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def save_score_histograms(scores_normal: np.ndarray, scores_anomalous: np.ndarray, path: str,
                          *, threshold: float | None = None, title: str = '',
                          xlabel: str = 'score') -> str:
  """Histograms of normal and anomalous scores, and the threshold if given."""
  fig = Figure(figsize=(5.2, 3.6))
  ax = fig.subplots()
  both = np.concatenate([scores_normal, scores_anomalous])
  bins = np.linspace(np.min(both), np.quantile(both, 0.995), 50)
  ax.hist(scores_normal, bins=bins, alpha=0.6, density=True, label='normal')
  ax.hist(scores_anomalous, bins=bins, alpha=0.6, density=True, label='anomalous')
  if threshold is not None:
    ax.axvline(threshold, color='k', ls='--', lw=1, label='threshold')
  ax.set_xlabel(xlabel)
  ax.set_ylabel('density')
  ax.legend(fontsize=8)
  ax.set_title(title, fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


# The ladder VAE: KL(q ‖ p) per stochastic layer (Sønderby et al. 2016, Fig. 4).


def _eval_layer_kl_curves(metrics_path: str) -> dict[int, list[tuple[int, float]]]:
  curves: dict[int, list[tuple[int, float]]] = {}
  if not os.path.exists(metrics_path):
    return curves
  with open(metrics_path) as f:
    for line in f:
      record = json.loads(line)
      if record.get('split') != 'eval':
        continue
      for name, value in record.items():
        if name.startswith('kl_layer'):
          curves.setdefault(int(name[len('kl_layer'):]), []).append((record['step'], value))
  return curves


def save_layer_kl(kl_L: np.ndarray, latent_dims, metrics_path: str, path: str, *,
                  title: str = '') -> str:
  """Bars of the per-layer KL and, when metrics_path has eval records, its curves."""
  curves = _eval_layer_kl_curves(metrics_path)
  fig = Figure(figsize=(9.5 if curves else 5, 3.6))
  axes = fig.subplots(1, 2 if curves else 1, squeeze=False)[0]
  names = [f'z{i + 1}\n({d} units)' for i, d in enumerate(latent_dims)]
  axes[0].bar(names, kl_L, color='tab:blue')
  for i, value in enumerate(kl_L):
    axes[0].annotate(f'{value:.1f}', (i, value), ha='center', va='bottom')
  axes[0].set_ylabel('KL (nats)')
  axes[0].set_title('KL per layer, test batch')
  if curves:
    for layer, points in sorted(curves.items()):
      steps, values = zip(*points)
      axes[1].plot(steps, values, marker='o', markersize=3, label=f'z{layer}')
    axes[1].set_xlabel('step')
    axes[1].set_ylabel('eval KL (nats)')
    axes[1].set_title('KL per layer during training')
    axes[1].legend()
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def save_captioned_rows(rows: Sequence[tuple[str, np.ndarray]], path: str, *, title: str,
                        ncols: int) -> str:
  """Blocks of images stacked vertically, each tiled `ncols` wide under its caption.

  Args:
    rows: (caption, images [N, H, W, C] in [0, 1]) pairs with the same N
      (inputs, then each way of reconstructing them; one interpolation per row).
    path: PNG file to write.
    title: figure title.
    ncols: images per line of a block.
  """
  n = len(rows[0][1])
  fig = Figure(figsize=(1.2 * min(n, ncols), 1.5 * len(rows) * -(-n // ncols) + 0.5))
  axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
  for ax, (caption, images) in zip(axes, rows):
    show(ax, tile(np.asarray(images), ncols))
    ax.set_title(caption, fontsize=9)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


# The adversarial autoencoder: test codes over its prior (Makhzani et al. 2015, Fig. 2 and 4).


def save_codes_over_prior(codes_NxZ: np.ndarray, labels_N: np.ndarray | None,
                          prior_MxZ: np.ndarray, path: str, *, log_density=None,
                          title: str = '') -> str:
  """The first two code dimensions, coloured by label, over prior samples (grey)
  and, given `log_density(points [G, 2]) -> [G]`, contours of the prior density."""
  codes, prior = np.asarray(codes_NxZ)[:, :2], np.asarray(prior_MxZ)[:, :2]
  fig = Figure(figsize=(6, 5.5))
  ax = fig.subplots()
  lim = float(np.quantile(np.abs(np.concatenate([codes, prior])), 0.995)) * 1.1
  if log_density is not None:
    gx, gy = np.meshgrid(*2 * [np.linspace(-lim, lim, 200, dtype=np.float32)])
    density = np.exp(log_density(np.stack([gx.ravel(), gy.ravel()], -1))).reshape(gx.shape)
    ax.contour(gx, gy, density, levels=6, colors='0.5', linewidths=0.7)
  ax.scatter(prior[:, 0], prior[:, 1], s=2, c='0.75', label='prior samples')
  scatter = ax.scatter(codes[:, 0], codes[:, 1], s=5, c=labels_N, cmap='tab10', alpha=0.85)
  if labels_N is not None:
    fig.colorbar(scatter, ax=ax, label='class')
  ax.set_xlim(-lim, lim)
  ax.set_ylim(-lim, lim)
  ax.set_xlabel('z1')
  ax.set_ylabel('z2')
  ax.legend(loc='upper right', fontsize=8)
  ax.set_title(title or 'codes over the prior')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def save_code_usage(codes: np.ndarray, num_codes: int, path: str, *, title: str = '') -> str:
  """Bar chart of a VQ-VAE's code frequencies, most used first, with the perplexity."""
  counts = np.bincount(np.asarray(codes).ravel(), minlength=num_codes)
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
