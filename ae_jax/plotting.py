"""Figures a person reads after a run, written as PNG files.

Every function takes numpy arrays and a path, draws on a bare
`matplotlib.figure.Figure` (no pyplot, no display, and no change to the
backend of a notebook that imports it) and returns the path it wrote.
"""

import json
import os

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
