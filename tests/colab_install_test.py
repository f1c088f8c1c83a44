"""The notebooks' Colab install cell, run as on Colab (a `google.colab` module in
sys.modules, no checkout on the path) in subprocesses.

Unset, AE_JAX_SOURCE stops the cell with a message saying what to set. Set to
the git URL of a repository (a local copy of this checkout, committed, cloned
over file://), the cell clones it, pip builds the package from it and installs
it into a fresh virtualenv, and the notebook then imports `ae_jax` from that
virtualenv's site-packages and the configs from the clone. The virtualenv sees
the test environment's packages through a .pth file, so pip installs only
ae-jax itself (building it with pip's default build isolation, which fetches
setuptools from the package registry).
"""

import os
import re
import subprocess
import sys
import sysconfig

import pytest

import packaging_test

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOKS = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, 'notebooks', 'py'))
                   if f.endswith('.py'))


def _install_cell(name: str) -> str:
  with open(os.path.join(REPO, 'notebooks', 'py', f'{name}.py'), encoding='utf-8') as f:
    text = f.read()
  cells = [c for c in re.split(r'^# %%.*$', text, flags=re.M)]
  (cell,) = [c for c in cells if '# Install.' in c][:1]
  return cell


def _as_on_colab(cell: str, after: str = '') -> str:
  return ('import sys, types\n'
          "sys.modules['google.colab'] = types.ModuleType('google.colab')\n"
          f'{cell}\n{after}')


def test_every_notebook_has_the_same_install_cell():
  cells = {name: _install_cell(name) for name in NOTEBOOKS}
  assert len(set(cells.values())) == 1, sorted(cells)
  assert 'OWNER' not in cells['quickstart']


def test_unset_source_stops_the_cell_and_says_what_to_set(tmp_path):
  env = dict(os.environ)
  env.pop('AE_JAX_SOURCE', None)
  env.pop('PYTHONPATH', None)
  result = subprocess.run([sys.executable, '-c', _as_on_colab(_install_cell('quickstart'))],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
                          check=False)
  assert result.returncode != 0
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('RuntimeError: AE_JAX_SOURCE is not set: set it to the git URL of '
                         'the ae-jax repository'), last


@pytest.mark.integration
def test_cell_clones_installs_and_the_notebook_imports(tmp_path):
  repo = tmp_path / 'origin'
  packaging_test._copy_checkout(repo)  # pylint: disable=protected-access
  git = dict(os.environ, GIT_AUTHOR_NAME='t', GIT_AUTHOR_EMAIL='t@t', GIT_COMMITTER_NAME='t',
             GIT_COMMITTER_EMAIL='t@t')
  for cmd in (['git', 'init', '-q'], ['git', 'add', '-A'], ['git', 'commit', '-qm', 'copy']):
    subprocess.run(cmd, cwd=repo, env=git, check=True, capture_output=True)
  venv = tmp_path / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', str(venv)], check=True, timeout=300)
  python = venv / 'bin' / 'python'
  site = subprocess.run([str(python), '-c', 'import sysconfig; print(sysconfig.get_paths()'
                         "['purelib'])"], capture_output=True, text=True, check=True).stdout.strip()
  with open(os.path.join(site, 'test_env.pth'), 'w', encoding='utf-8') as f:
    f.write(sysconfig.get_paths()['purelib'] + '\n')
  colab = tmp_path / 'content'
  colab.mkdir()
  env = dict(os.environ, AE_JAX_SOURCE=f'file://{repo}', JAX_PLATFORMS='cpu')
  env.pop('PYTHONPATH', None)
  # JAX imports google.colab.output when a google.colab module is loaded: ours is a stand-in.
  after = ("del sys.modules['google.colab']\n"
           'import ae_jax, experiments.configs.vae as vae\n'
           'print("ae_jax", ae_jax.__file__)\n'
           'print("experiments", vae.__file__)\n'
           "print('recipe', vae.get_config('smoke').recipe)\n")
  result = subprocess.run([str(python), '-c', _as_on_colab(_install_cell('quickstart'), after)],
                          cwd=colab, env=env, capture_output=True, text=True, timeout=900,
                          check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  found = dict(line.split(' ', 1) for line in result.stdout.splitlines() if ' ' in line)
  assert found['ae_jax'] == os.path.join(site, 'ae_jax', '__init__.py')
  assert found['experiments'] == str(colab / 'ae-jax' / 'experiments' / 'configs' / 'vae.py')
  assert found['recipe'] == 'vae'
  assert not os.path.exists(os.path.join(site, 'experiments'))
