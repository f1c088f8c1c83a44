"""Figures of the applications (`ae_jax.applications`), written as PNG files.

Like `ae_jax.plotting`, every function takes numpy arrays and a path, draws
on a bare `matplotlib.figure.Figure` and returns the path it wrote. Images are
[..., H, W, C] in [0, 1].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from matplotlib.figure import Figure

from ae_jax import plotting


def _imshow(ax, images_TxHxWxC: np.ndarray) -> None:
  """T images side by side in one frameless row."""
  images = np.asarray(images_TxHxWxC, np.float32)
  plotting.show(ax, plotting.tile(images, len(images)))
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
