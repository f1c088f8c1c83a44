"""Tests for the notebooks in notebooks/ and for ae_jax.notebook_utils.

Unmarked (they run in `make test`): every committed notebook is stripped (no
outputs, no execution counts), has its percent-format twin in notebooks/py/
with the same cells, starts with the Colab install cell, has a `FULL` flag and
trains through `ae_jax.training` and the recipes, not the removed runner;
and the plotting helpers of `ae_jax.notebook_utils`.

Marked `notebooks` (`make test-notebooks`): each notebook executes top to
bottom in a real Jupyter kernel started with this interpreter (so the .venv's
packages, whatever kernelspecs are installed), with the notebooks/ folder as its
working directory, and its outputs are checked: figures drawn, losses finite and
lower at the end of training than at the start, and the numbers each notebook
exists to show (e.g. the data-parallel steps matching the single-device one).
"""

import math
import os
import pathlib
import re
import sys
import time

import jupytext
import matplotlib

matplotlib.use('Agg')
import matplotlib.figure  # pylint: disable=g-import-not-at-top
import nbformat
import numpy as np
import pytest

import _baselines

from ae_jax import data
from ae_jax import notebook_utils

REPO = pathlib.Path(__file__).resolve().parents[1]
NOTEBOOK_DIR = REPO / 'notebooks'
NOTEBOOKS = sorted(p.stem for p in NOTEBOOK_DIR.glob('*.ipynb'))
EXPECTED = ('quickstart', 'classical_zoo', 'vqvae', 'multi_device', 'anomaly_detection',
            'latent_tour')
CELL_TIMEOUT_S = 300


def _read(name: str) -> nbformat.NotebookNode:
  return nbformat.read(NOTEBOOK_DIR / f'{name}.ipynb', as_version=4)


def _code_cells(notebook):
  return [cell for cell in notebook.cells if cell.cell_type == 'code']


# ----------------------------------------------------------------------------
# Committed notebooks: stripped, paired, with the install cell and FULL flag.
# ----------------------------------------------------------------------------


def test_the_expected_notebooks_are_there():
  assert set(EXPECTED) <= set(NOTEBOOKS)


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_committed_notebook_is_valid_and_stripped(name):
  notebook = _read(name)
  nbformat.validate(notebook)
  for i, cell in enumerate(_code_cells(notebook)):
    assert cell.outputs == [], f'{name}: code cell {i} has outputs'
    assert cell.execution_count is None, f'{name}: code cell {i} has an execution count'
  assert notebook.metadata.kernelspec.name == 'python3'


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_matches_its_percent_script(name):
  script = NOTEBOOK_DIR / 'py' / f'{name}.py'
  assert script.exists(), f'{script} is missing; write it and run notebooks/sync.py'
  paired = jupytext.read(script, fmt='py:percent')
  notebook = _read(name)
  assert [(c.cell_type, c.source) for c in paired.cells] == [
      (c.cell_type, c.source) for c in notebook.cells
  ], f'{name}.ipynb and py/{name}.py differ: run `python notebooks/sync.py`'


def test_every_percent_script_has_a_notebook():
  scripts = sorted(p.stem for p in (NOTEBOOK_DIR / 'py').glob('*.py'))
  assert scripts == NOTEBOOKS


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_starts_with_install_cell_and_has_full_flag(name):
  cells = _code_cells(_read(name))
  install = cells[0].source
  assert "'google.colab' in sys.modules" in install
  assert 'pip' in install and 'jax[tpu]' in install
  assert any(re.search(r'^FULL = False\b', c.source, re.M) for c in cells), 'no `FULL = False`'
  # Notebooks use the library; they do not define models, losses or steps.
  for cell in cells:
    assert not re.search(r'class \w+\((nn|linen)\.Module\)', cell.source)
    assert 'jax.value_and_grad' not in cell.source and 'jax.grad(' not in cell.source


# The training side before `ae_jax.training` and the recipes (issue 12).
_REMOVED = (r'\bae_jax\.(runner|build)\b', r'from ae_jax import (runner|build)\b',
            r'\bconfig\.variant\b', r'\bbuild\.build_')


@pytest.mark.parametrize('name', NOTEBOOKS)
def test_notebook_uses_the_training_side_of_recipes(name):
  for cell in _code_cells(_read(name)):
    for pattern in _REMOVED:
      assert not re.search(pattern, cell.source), (name, pattern, cell.source[:300])


# ----------------------------------------------------------------------------
# ae_jax.notebook_utils
# ----------------------------------------------------------------------------


def test_tile_images_places_tiles_row_major_with_gaps():
  images = np.arange(1, 4, dtype=np.float32).reshape(3, 1, 1, 1) * np.ones((3, 2, 2, 1))
  canvas = notebook_utils.tile_images(images, ncols=2, pad=1, pad_value=-1.0)
  # 2 rows x 2 cols of 2x2 tiles with 1-pixel gaps: 5x5; the 4th tile is empty.
  expected = np.array([
      [1, 1, -1, 2, 2],
      [1, 1, -1, 2, 2],
      [-1, -1, -1, -1, -1],
      [3, 3, -1, -1, -1],
      [3, 3, -1, -1, -1],
  ], np.float32)[..., None]
  np.testing.assert_array_equal(canvas, expected)


def test_tile_images_rejects_bad_shapes():
  with pytest.raises(ValueError, match='N, H, W, C'):
    notebook_utils.tile_images(np.zeros((2, 3, 3)), ncols=2)
  with pytest.raises(ValueError, match='ncols'):
    notebook_utils.tile_images(np.zeros((2, 3, 3, 1)), ncols=0)


def test_filters_as_images_scales_each_column_to_unit_range():
  kernel = np.array([[0.0, 2.0, 5.0], [1.0, 4.0, 5.0], [3.0, 2.0, 5.0], [-1.0, 6.0, 5.0]])
  filters = notebook_utils.filters_as_images(kernel, (2, 2, 1))
  assert filters.shape == (3, 2, 2, 1)
  # Column 0: min -1, max 3 -> (x + 1) / 4; column 1: (x - 2) / 4; column 2 constant.
  np.testing.assert_allclose(filters[0, ..., 0], [[0.25, 0.5], [1.0, 0.0]])
  np.testing.assert_allclose(filters[1, ..., 0], [[0.0, 0.5], [0.0, 1.0]])
  np.testing.assert_allclose(filters[2], 0.5)
  assert notebook_utils.filters_as_images(kernel, (2, 2, 1), num=2).shape == (2, 2, 2, 1)
  with pytest.raises(ValueError, match='kernel'):
    notebook_utils.filters_as_images(kernel, (3, 3, 1))


def test_figure_helpers_draw_the_tiled_canvas():
  images = np.random.default_rng(0).uniform(size=(5, 4, 4, 1))
  fig = notebook_utils.show_images(images, ncols=3, title='t')
  assert isinstance(fig, matplotlib.figure.Figure)
  (drawn,) = fig.axes[0].get_images()
  np.testing.assert_array_equal(drawn.get_array(), notebook_utils.tile_images(images, 3)[..., 0])
  fig = notebook_utils.show_image_rows({'a': images, 'b': images[:2]})
  assert [ax.get_ylabel() for ax in fig.axes] == ['a', 'b']
  # Rows share one column count, so the shorter row's canvas is as wide.
  widths = [ax.get_images()[0].get_array().shape[1] for ax in fig.axes]
  assert widths == [5 * 5 - 1] * 2
  fig = notebook_utils.plot_curves({'loss': [3.0, 2.0, 1.0], 'kl': [1.0, 1.0, 1.0]}, logy=('loss',))
  assert [ax.get_title() for ax in fig.axes[:2]] == ['loss', 'kl']
  assert fig.axes[0].get_yscale() == 'log'
  np.testing.assert_array_equal(fig.axes[0].lines[0].get_ydata(), [3.0, 2.0, 1.0])
  matplotlib.pyplot.close('all')


# ----------------------------------------------------------------------------
# Execution (marked: `make test-notebooks`).
# ----------------------------------------------------------------------------


def _execute(name: str) -> tuple[nbformat.NotebookNode, float]:
  """Runs notebooks/<name>.ipynb in a fresh kernel of this interpreter."""
  from jupyter_client.kernelspec import KernelSpec  # pylint: disable=g-import-not-at-top
  from jupyter_client.kernelspec import KernelSpecManager  # pylint: disable=g-import-not-at-top
  from jupyter_client.manager import KernelManager  # pylint: disable=g-import-not-at-top
  from nbclient import NotebookClient  # pylint: disable=g-import-not-at-top

  class ThisInterpreter(KernelSpecManager):
    """A kernelspec for sys.executable, independent of installed kernelspecs."""

    def get_kernel_spec(self, kernel_name):
      env = {
          'PYTHONPATH': os.pathsep.join(filter(None, [str(REPO), os.environ.get('PYTHONPATH')])),
          # The CPU, whatever accelerator or XLA flags the caller's shell has:
          # multi_device.ipynb adds its own fake devices.
          'JAX_PLATFORMS': 'cpu',
          'XLA_FLAGS': '',
      }
      return KernelSpec(
          argv=[sys.executable, '-m', 'ipykernel_launcher', '-f', '{connection_file}'],
          display_name='Python 3', language='python', name=kernel_name, env=env)

  notebook = _read(name)
  manager = KernelManager(kernel_name='python3', kernel_spec_manager=ThisInterpreter())
  client = NotebookClient(notebook, km=manager, timeout=CELL_TIMEOUT_S, startup_timeout=120,
                          resources={'metadata': {'path': str(NOTEBOOK_DIR)}})
  start = time.time()
  # The client only shuts down kernels it started itself unless told to.
  client.execute(cleanup_kc=True)
  seconds = time.time() - start
  print(f'{name}: executed in {seconds:.1f} s')
  return notebook, seconds


def _text(notebook) -> str:
  """All stream and plain-text outputs, in order."""
  parts = []
  for cell in _code_cells(notebook):
    for output in cell.outputs:
      if output.output_type == 'stream':
        parts.append(output.text)
      elif 'data' in output and 'text/plain' in output.data:
        parts.append(output.data['text/plain'])
  return '\n'.join(parts)


def _num_figures(notebook) -> int:
  return sum('image/png' in output.get('data', {})
             for cell in _code_cells(notebook) for output in cell.outputs)


def _number(pattern: str, text: str) -> float:
  match = re.search(pattern, text, re.M)
  assert match, f'{pattern!r} not found in the outputs:\n{text}'
  return float(match.group(1))


@pytest.mark.notebooks
@pytest.mark.learning
def test_quickstart_executes_and_learns():
  notebook, _ = _execute('quickstart')
  text = _text(notebook)
  first = _number(r'first \d+ steps (\S+) ->', text)
  last = _number(r'-> last \d+ steps (\S+)', text)
  test_loss = _number(r'test loss \(negative ELBO, nats\): (\S+)', text)
  assert all(map(math.isfinite, (first, last, test_loss)))
  assert last < 0.8 * first, (first, last)
  # A 2-D VAE on MNIST 5k reaches ~150-170 nats; an untrained one ~540; the mean
  # training image, the best guess that ignores the input, 207.9.
  baseline = _mean_image_nll()
  assert test_loss < 0.9 * baseline, (test_loss, baseline)
  # train_and_evaluate's work directory: its lock and config, the stage's directory
  # and the recipe's figures.
  assert "['.lock', 'config.json', 'figures', 'model'] ['latent_map.png', " \
         "'reconstructions.png', 'samples.png', 'training_curves.png']" in text
  assert _num_figures(notebook) >= 6


def _mean_image_nll():
  train_x, _ = data.load_arrays('mnist5k', 'train')
  test_x, _ = data.load_arrays('mnist5k', 'test')
  return _baselines.mean_image_bernoulli_nll(train_x, test_x)


def _mean_image_mse():
  train_x, _ = data.load_arrays('mnist5k', 'train')
  test_x, _ = data.load_arrays('mnist5k', 'test')
  return _baselines.mean_image_mse(train_x, test_x)


ZOO_MODELS = ('undercomplete', 'sparse L1', 'sparse KL', 'denoising', 'contractive')


@pytest.mark.notebooks
@pytest.mark.learning
def test_classical_zoo_executes_and_shows_what_each_model_learns():
  notebook, _ = _execute('classical_zoo')
  text = _text(notebook)
  train_x, _ = data.load_arrays('mnist5k', 'train')
  train_baseline = _baselines.mean_image_bernoulli_nll(train_x, train_x)
  table = {}
  for name in ZOO_MODELS:
    first = _number(rf'{name} +train recon \(nats/image\): first 50 steps +(\S+)', text)
    last = _number(rf'{name} +train recon .*-> last 50 steps +(\S+)', text)
    assert math.isfinite(last) and last < 0.7 * first, (name, first, last)
    # Below what the mean training image scores on the training digits (206.3).
    assert last < 0.9 * train_baseline, (name, last, train_baseline)
    match = re.search(rf'^{name} +(\S+) +(\S+) +(\S+) +(\d+)%$', text, re.M)
    assert match, f'no summary row for {name}:\n{text}'
    table[name] = [float(v) for v in match.groups()]
    assert all(map(math.isfinite, table[name])), (name, table[name])
  recon_noisy = {name: row[1] for name, row in table.items()}
  # The claims the notebook's text makes about its table.
  assert min(recon_noisy, key=recon_noisy.get) == 'denoising', recon_noisy
  assert table['contractive'][2] < table['sparse KL'][2]  # ||J||^2 among the sigmoid codes.
  assert table['sparse L1'][3] > table['undercomplete'][3]  # share of |z| < 0.05.
  assert _num_figures(notebook) >= 5


@pytest.mark.notebooks
@pytest.mark.learning
def test_vqvae_executes_learns_and_uses_its_codebook():
  notebook, _ = _execute('vqvae')
  text = _text(notebook)
  first = _number(r'train recon \(MSE per pixel\): first \d+ steps (\S+) ->', text)
  last = _number(r'-> last \d+ steps (\S+)', text)
  assert math.isfinite(last) and last < 0.5 * first, (first, last)
  # Predicting a blank image scores 0.113 on MNIST 5k, the mean training image 0.068;
  # a collapsed codebook stays near them.
  test_mse = _number(r'test MSE per pixel: (\S+);', text)
  assert test_mse < 0.6 * _mean_image_mse(), (test_mse, _mean_image_mse())
  used = _number(r'test set: (\d+) of 64 codes used', text)
  perplexity = _number(r'codes used, perplexity (\S+)', text)
  assert used >= 8 and 4 < perplexity <= used, (used, perplexity)
  assert _num_figures(notebook) >= 6


def _execute_multi_device():
  # One retry, only for a dead kernel: the rare abort of an all-reduce on fake
  # CPU devices (a known XLA:CPU collective issue). Wrong numbers are never retried.
  from nbclient.exceptions import DeadKernelError  # pylint: disable=g-import-not-at-top
  try:
    return _execute('multi_device')
  except DeadKernelError:
    return _execute('multi_device')


@pytest.mark.notebooks
def test_multi_device_executes_and_data_parallel_steps_match():
  notebook, _ = _execute_multi_device()
  text = _text(notebook)
  assert 'with 4 devices' in text
  rows = {}
  for optimizer in ('sgd', 'adam'):
    match = re.search(rf'^{optimizer} +(\S+) +(\S+) +(\S+)$', text, re.M)
    assert match, f'no row for {optimizer}:\n{text}'
    rows[optimizer] = [float(v) for v in match.groups()]
  moved, pmap_diff, sharded_diff = rows['sgd']
  assert moved > 1e-4  # The steps did move the parameters,
  assert pmap_diff < 1e-6 and sharded_diff < 1e-6  # and all three paths agree.
  moved, pmap_diff, sharded_diff = rows['adam']
  assert pmap_diff < 0.05 * moved and sharded_diff < 0.05 * moved
  assert _number(r'denoising, sgd: max \|single - sharded\| = (\S+)', text) < 1e-6
  assert _number(r'denoising, sgd: max \|single - pmap\| += (\S+)', text) > 1e-6
  first = _number(r'train loss: first 20 steps (\S+) ->', text)
  last = _number(r'-> last 20 steps (\S+)', text)
  assert math.isfinite(last) and last < 0.7 * first
  assert _num_figures(notebook) >= 1


@pytest.mark.notebooks
@pytest.mark.learning
def test_anomaly_detection_executes_and_separates_the_classes():
  notebook, _ = _execute('anomaly_detection')
  text = _text(notebook)
  for model in ('VAE', 'AE'):
    first = _number(rf'{model} train loss: first 20 steps (\S+) ->', text)
    last = _number(rf'{model} train loss: .*-> last 20 steps (\S+)', text)
    assert math.isfinite(last) and last < 0.5 * first, (model, first, last)
  for score in ('reconstruction_error', 'negative_elbo', 'iwae_nll',
                'reconstruction_probability', 'AE reconstruction_error'):
    roc_auc = _number(rf'^{score} +(\S+) ', text)
    # Chance is 0.5; digit 7 against the rest scores ~0.96 after a short run.
    assert 0.85 < roc_auc <= 1.0, (score, roc_auc)
    false_positive_rate = _number(rf'^{score} +\S+ +\S+ +\S+ +\S+ +(\S+)$', text)
    # The threshold is the 95th percentile of 40 held-out normal scores.
    assert false_positive_rate <= 0.2, (score, false_positive_rate)
  assert _number(r'^\| mean \| (\S+) \|', text) > 0.85
  assert _num_figures(notebook) >= 3


@pytest.mark.notebooks
def test_latent_tour_executes_and_slerp_keeps_the_norm():
  notebook, _ = _execute('latent_tour')
  text = _text(notebook)
  first = _number(r'first 50 steps (\S+) ->', text)
  last = _number(r'-> last 50 steps (\S+)', text)
  assert math.isfinite(last) and last < 0.7 * first, (first, last)
  assert _number(r'; (\d+) of 20 dimensions active', text) >= 2
  codes = _number(r'mean norm: codes (\S+),', text)
  linear = _number(r'linear midpoints (\S+),', text)
  slerp = _number(r'slerp midpoints (\S+)$', text)
  # Midpoints of random pairs: the chord falls inside the sphere, the arc does not.
  assert linear < 0.9 * codes and abs(slerp - codes) < 0.1 * codes, (codes, linear, slerp)
  assert _num_figures(notebook) >= 5
