"""Tests for experiments.bench: the PyTorch twins and the side-by-side protocol.

Speed itself is measured by the benchmark, never asserted here.
"""

import importlib

import jax
import pytest

from experiments import bench


@pytest.mark.parametrize('name', bench.TORCH_CONFIGS)
def test_torch_twins_have_the_same_parameter_counts(name):
  """Each PyTorch model in bench_torch has exactly its ae-jax config's parameter count."""
  pytest.importorskip('torch')
  from experiments import bench_torch  # pylint: disable=g-import-not-at-top
  config = importlib.import_module(f'experiments.configs.{name}').get_config()
  config.data.batch_size = 8
  recipe = bench.training.validate(config)
  stage = recipe.make_stage(config, recipe.stages(config)[0], {})
  shapes = jax.eval_shape(stage.init, jax.random.key(0))
  ours = sum(x.size for x in jax.tree.leaves(shapes.params))
  step, theirs = bench_torch.make_step(name, 8)
  assert ours == theirs
  losses = [step() for _ in range(3)]
  assert losses[-1] < losses[0]  # The twin trains: Adam lowers its loss on a fixed batch.


def test_jax_worker_step_is_the_donated_training_step():
  """The side-by-side ae-jax step advances one state (donated) and trains."""
  step, num_params = bench._jax_step('vae', 16)
  assert num_params == 784 * 400 + 400 + 2 * (400 * 20 + 20) + 20 * 400 + 400 + 400 * 784 + 784
  losses = [float(step()['loss']) for _ in range(5)]
  assert losses[-1] < losses[0]


def test_torch_comparison_names_its_configs(monkeypatch):
  monkeypatch.setattr('sys.argv', ['bench', '--torch', '--only=aae'])
  with pytest.raises(SystemExit, match='--torch compares vae, conv_ae, conv_vae, vqvae; not aae'):
    bench.main()
