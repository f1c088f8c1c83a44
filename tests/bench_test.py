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


def test_bfloat16_precision_reaches_every_product_and_still_trains():
  """--precision=bfloat16: each dot of the model in the lowered step carries the
  BF16_BF16_F32 algorithm (float32 has none), and the step trains. The loss's
  per-example sums (`losses._sum_rows`) ask for HIGHEST and stay float32."""
  config = importlib.import_module('experiments.configs.vae').get_config()
  config.data.batch_size = 16
  recipe = bench.training.validate(config)
  stage = recipe.make_stage(config, recipe.stages(config)[0], {})
  state = jax.jit(stage.init)(jax.random.key(0))
  batch = jax.tree.map(jax.numpy.asarray, next(stage.train_data(0)))
  for precision, bf16_dots in (('float32', False), ('bfloat16', True)):
    text = jax.jit(bench.with_precision(stage.train_step, precision)).lower(
        state, batch, jax.random.key(0)).as_text()
    dots = [line for line in text.splitlines() if 'stablehlo.dot_general' in line]
    sums = [d for d in dots if 'precision = [HIGHEST, HIGHEST]' in d]
    products = [d for d in dots if d not in sums]
    assert len(sums) == 2  # The Bernoulli likelihood's value and its gradient.
    assert products and all(('lhs_precision_type = bf16' in d) == bf16_dots for d in products)
    assert not any('bf16' in d for d in sums)
  step, _ = bench._jax_step('vae', 16, 'bfloat16')
  losses = [float(step()['loss']) for _ in range(5)]
  assert losses[-1] < losses[0]
  with pytest.raises(ValueError, match="precision must be one of .* got 'fp8'"):
    bench.with_precision(stage.train_step, 'fp8')


def test_torch_comparison_names_its_configs(monkeypatch):
  monkeypatch.setattr('sys.argv', ['bench', '--torch', '--only=aae'])
  with pytest.raises(SystemExit, match='--torch compares vae, conv_ae, conv_vae, vqvae; not aae'):
    bench.main()
