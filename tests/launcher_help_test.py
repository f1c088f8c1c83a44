"""The launcher's --help lists the configs, their presets and the data sets; every
preset it lists builds; the `colab_tpu` presets validate on the device count of a
v2-8 / v5e-8 slice (8 fake CPU devices, set in a subprocess before JAX starts)."""

import importlib
import json
import os
import subprocess
import sys
import textwrap

import pytest

from ae_jax import data
from experiments import cli

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = cli.config_names()


def _env(**extra):
  env = dict(os.environ, JAX_PLATFORMS='cpu', PYTHONUNBUFFERED='1', **extra)
  if 'XLA_FLAGS' not in extra:
    env.pop('XLA_FLAGS', None)
  return env


def test_help_lists_configs_presets_and_data_sets():
  # absl prints the help and exits with status 1.
  result = subprocess.run([sys.executable, '-m', 'experiments.main', '--help'], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300, check=False)
  assert not result.stderr, result.stderr[-3000:]
  out = result.stdout
  assert 'Configs (--config=NAME[:ARG]' in out and '--workdir' in out
  for name in NAMES:
    assert f'\n  {name}: ' in out, name
  assert 'ARG: default, smoke, colab_tpu, elbo\n' in out  # iwae's own preset.
  assert 'ARG: default, smoke, colab_tpu, collapsed, vae_equal_params\n' in out
  assert 'ARG: default, smoke\n' in out  # apps/disentangle has no colab_tpu.
  assert f'built in: {", ".join(data.IN_MEMORY_DATASETS)}' in out
  for name in list(data.TFDS_DATASETS) + ['tfds:<name>', 'npz:PATH', 'folder:PATH']:
    assert name in out, name
  # The application scripts list them too.
  result = subprocess.run([sys.executable, '-m', 'experiments.denoise', '--help'], cwd=REPO,
                          env=_env(), capture_output=True, text=True, timeout=300, check=False)
  assert '\n  apps/denoise: ' in result.stdout and 'npz:PATH' in result.stdout


@pytest.mark.parametrize('name', NAMES)
def test_every_listed_argument_builds_its_config(name):
  module = importlib.import_module('experiments.configs.' + name.replace('/', '.'))
  args = [a for a in cli.config_args(name) if '<' not in a]
  assert 'default' in args and 'smoke' in args
  for arg in args:
    config = module.get_config(arg)
    assert 'data' in config, (name, arg)
  with pytest.raises(ValueError):
    module.get_config('no_such_preset')


_COLAB_CHECK = textwrap.dedent('''
    import importlib, json, sys, warnings
    import jax
    assert jax.device_count() == 8, jax.devices()
    import tensorflow_datasets as tfds
    from ae_jax import training
    from experiments import cli
    warnings.simplefilter('ignore', training.ConfigWarning)
    done = []
    # The presets train on Fashion-MNIST, not prepared here: TFDS's mock serves its
    # examples (shapes and dtypes of the real ones) to the recipes that open it.
    with tfds.testing.mock_data(num_examples=2048):
      for name in cli.config_names():
        if 'colab_tpu' not in cli.config_args(name):
          continue
        module = importlib.import_module('experiments.configs.' + name.replace('/', '.'))
        config = module.get_config('colab_tpu')
        if 'recipe' in config and config.recipe:
          training.validate(config)
          done.append([name, config.data.name, config.data.batch_size,
                       config.data.eval_batch_size])
    print(json.dumps(done))
''')


def test_colab_tpu_presets_validate_on_eight_devices(tmp_path):
  env = _env(XLA_FLAGS='--xla_force_host_platform_device_count=8',
             TFDS_DATA_DIR=str(tmp_path / 'tfds'))
  result = subprocess.run([sys.executable, '-c', _COLAB_CHECK], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stderr[-4000:]
  done = json.loads(result.stdout.strip().splitlines()[-1])
  names = [name for name, _, _, _ in done]
  assert {'vae', 'conv_vae', 'vqvae', 'aae', 'diffusion_ae'} <= set(names), names
  for name, _, batch, eval_batch in done:
    assert batch % 8 == 0 and eval_batch % 8 == 0, (name, batch, eval_batch)
  # A batch that does not split over the 8 devices is refused: the check is live.
  bad = _COLAB_CHECK.replace("config = module.get_config('colab_tpu')",
                             "config = module.get_config('colab_tpu'); "
                             "config.data.batch_size = 1020")
  result = subprocess.run([sys.executable, '-c', bad], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600, check=False)
  assert 'config.data.batch_size=1020 is not divisible by the 8 devices' in result.stderr
