"""Inline figures for the notebooks in `notebooks/`.

Unlike `ae_jax.plotting`, which writes PNG files with the Agg backend for the
launcher, these functions return matplotlib `Figure`s and leave the backend
alone, so Jupyter and Colab show them inline. They take numpy (or jax) arrays.

Shape letters: N images, H, W, C image size, D = H*W*C, K filters.

>>> import numpy as np
>>> tile_images(np.zeros((5, 2, 3, 1)), ncols=4).shape  # 2 rows of 2x3 tiles, 1-pixel gaps
(5, 15, 1)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import matplotlib.figure
import matplotlib.pyplot as plt
import numpy as np


def tile_images(images_NxHxWxC, ncols: int, *, pad: int = 1, pad_value: float = 1.0) -> np.ndarray:
  """Tiles N images row-major into one [rows*(H+pad)-pad, ncols*(W+pad)-pad, C] canvas.

  Args:
    images_NxHxWxC: the images.
    ncols: tiles per row; the last row is filled with `pad_value`.
    pad: pixels between tiles.
    pad_value: value of the gaps and of empty tiles.

  Returns:
    The canvas, float32.
  """
  images = np.asarray(images_NxHxWxC, np.float32)
  if images.ndim != 4:
    raise ValueError(f'Expected images [N, H, W, C], got shape {images.shape}.')
  if ncols < 1:
    raise ValueError(f'ncols must be >= 1, got {ncols}.')
  n, h, w, c = images.shape
  nrows = max(1, -(-n // ncols))
  canvas = np.full(((h + pad) * nrows - pad, (w + pad) * ncols - pad, c), pad_value, np.float32)
  for i, image in enumerate(images):
    r, col = divmod(i, ncols)
    canvas[r * (h + pad):r * (h + pad) + h, col * (w + pad):col * (w + pad) + w] = image
  return canvas


def _draw(ax, canvas: np.ndarray, *, vmin: float = 0.0, vmax: float = 1.0) -> None:
  if canvas.shape[-1] == 1:
    ax.imshow(canvas[..., 0], cmap='gray', vmin=vmin, vmax=vmax, interpolation='nearest')
  else:
    ax.imshow(np.clip(canvas, vmin, vmax), interpolation='nearest')
  ax.set_xticks([])
  ax.set_yticks([])


def show_images(images_NxHxWxC, *, ncols: int = 8, title: str = '',
                scale: float = 0.9) -> matplotlib.figure.Figure:
  """One grid of images with values in [0, 1] (grey for one channel)."""
  images = np.asarray(images_NxHxWxC)
  if not len(images):
    raise ValueError('No images to show.')
  ncols = min(ncols, len(images))
  nrows = -(-len(images) // ncols)
  fig, ax = plt.subplots(figsize=(scale * ncols, scale * nrows + (0.4 if title else 0.1)))
  _draw(ax, tile_images(images, ncols))
  if title:
    ax.set_title(title)
  fig.tight_layout()
  return fig


def show_image_rows(rows: Mapping[str, np.ndarray], *, title: str = '',
                    scale: float = 0.9) -> matplotlib.figure.Figure:
  """One labelled row per entry of `rows` (name -> images [n, H, W, C] in [0, 1]).

  Every row shows its images side by side, so rows of equal length line up
  column by column (e.g. inputs above each model's reconstructions).
  """
  if not rows:
    raise ValueError('rows is empty.')
  ncols = max(len(images) for images in rows.values())
  fig, axes = plt.subplots(len(rows), 1, squeeze=False,
                           figsize=(scale * ncols + 1.2, scale * len(rows) + (0.4 if title else 0.1)))
  for ax, (name, images) in zip(axes[:, 0], rows.items()):
    _draw(ax, tile_images(images, ncols))
    ax.set_ylabel(name, rotation=0, ha='right', va='center')
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig


def filters_as_images(kernel_DxK, image_shape: Sequence[int], *, num: int | None = None) -> np.ndarray:
  """Columns of a first-layer kernel as images, each min-max scaled to [0, 1].

  A Dense layer's unit k responds to the input x through x . kernel[:, k];
  drawing that column as an image shows the pattern the unit detects.

  Args:
    kernel_DxK: the first Dense kernel, D = prod(image_shape).
    image_shape: (H, W, C) of the inputs.
    num: the first `num` columns (all if None).

  Returns:
    [num, H, W, C] float32 in [0, 1]; a constant column maps to 0.5.
  """
  kernel = np.asarray(kernel_DxK, np.float32)
  if kernel.ndim != 2 or kernel.shape[0] != int(np.prod(image_shape)):
    raise ValueError(f'Expected a kernel [{int(np.prod(image_shape))}, K], got {kernel.shape}.')
  columns = kernel[:, :num].T
  low = columns.min(axis=1, keepdims=True)
  span = columns.max(axis=1, keepdims=True) - low
  scaled = np.where(span > 0, (columns - low) / np.where(span > 0, span, 1.0), 0.5)
  return scaled.reshape((len(columns), *image_shape)).astype(np.float32)


def plot_curves(history: Mapping[str, Sequence[float]], *, steps: Sequence[int] | None = None,
                title: str = '', logy: Sequence[str] = ()) -> matplotlib.figure.Figure:
  """One panel per metric name, the values against the step.

  Args:
    history: metric name -> values, all of the same length.
    steps: x values (default 0, 1, ...).
    title: figure title.
    logy: metric names drawn on a log scale.
  """
  names = list(history)
  ncols = min(3, max(1, len(names)))
  nrows = max(1, -(-len(names) // ncols))
  fig, axes = plt.subplots(nrows, ncols, figsize=(4 * ncols, 2.8 * nrows), squeeze=False)
  for ax, name in zip(axes.flat, names):
    values = np.asarray(history[name], np.float64)
    x = np.arange(len(values)) if steps is None else np.asarray(steps)
    ax.plot(x, values)
    ax.set_title(name)
    ax.set_xlabel('step')
    if name in logy:
      ax.set_yscale('log')
  for ax in list(axes.flat)[len(names):]:
    ax.axis('off')
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  return fig
