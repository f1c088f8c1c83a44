"""What `pip install ae-jax` installs: the `ae_jax` package only, with runtime
dependencies that the package itself imports.

The launcher, the configs and the scripts (`experiments/`) and the tests run
from a checkout; a wheel that carried them put top-level `experiments` and
`tests` packages into site-packages, where they shadowed (or were shadowed by)
a user's own. The wheel test builds from a copy of the checkout, so it sees
every file a release would.
"""

import ast
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Distribution name -> the module `ae_jax` imports.
_MODULE_OF = {
    'jax': 'jax', 'flax': 'flax', 'optax': 'optax', 'numpy': 'numpy',
    'tensorflow-datasets': 'tensorflow_datasets', 'ml_collections': 'ml_collections',
    'orbax-checkpoint': 'orbax', 'scikit-learn': 'sklearn', 'matplotlib': 'matplotlib',
    'tqdm': 'tqdm', 'tensorboardX': 'tensorboardX', 'pillow': 'PIL',
    'array_record': 'array_record',
}
# Declared but never imported by ae_jax: TFDS imports it to prepare a dataset
# without declaring it (tensorflow/datasets#11212).
_DECLARED_FOR_OTHERS = {'importlib_resources'}


def _pyproject():
  with open(os.path.join(REPO, 'pyproject.toml'), 'rb') as f:
    return tomllib.load(f)


def _name(requirement: str) -> str:
  return re.split(r'[<>=!~\[; ]', requirement, maxsplit=1)[0]


def _modules_imported_by_ae_jax() -> set[str]:
  found = set()
  for root, _, files in os.walk(os.path.join(REPO, 'ae_jax')):
    for file in files:
      if file.endswith('.py'):
        with open(os.path.join(root, file), encoding='utf-8') as f:
          tree = ast.parse(f.read())
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            found |= {alias.name.split('.')[0] for alias in node.names}
          elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split('.')[0])
  return found


def test_every_runtime_dependency_is_imported_by_ae_jax():
  project = _pyproject()['project']
  declared = {_name(r) for r in project['dependencies']}
  assert declared - _DECLARED_FOR_OTHERS == set(_MODULE_OF), (
      'a runtime dependency without its module in _MODULE_OF (or the reverse)')
  imported = _modules_imported_by_ae_jax()
  missing = sorted(d for d, m in _MODULE_OF.items() if m not in imported)
  assert not missing, f'declared but never imported by ae_jax: {missing}'
  # What only some uses need is an extra, not a runtime dependency.
  for optional in ('chex', 'mlxtend', 'scikit-image', 'PyWavelets', 'rdkit', 'torch'):
    assert optional not in declared, optional
  extras = project['optional-dependencies']
  assert {'apps', 'molecules', 'bench', 'notebooks', 'mnist5k', 'test'} <= set(extras)
  assert {_name(r) for r in extras['apps']} == {'scikit-image', 'PyWavelets'}
  # The test extra installs what the whole suite needs.
  test = {_name(r) for r in extras['test']}
  for extra in ('apps', 'molecules', 'mnist5k'):
    assert {_name(r) for r in extras[extra]} <= test, extra
  assert 'chex' in test
  packages = _pyproject()['tool']['setuptools']['packages']['find']
  assert packages['include'] == ['ae_jax*']


def _copy_checkout(dest):
  """The files a source distribution of the checkout would hold."""
  ignore = shutil.ignore_patterns('__pycache__', '*.pyc', '*.egg-info', 'build', 'dist', '.venv',
                                  'runs', '.git', '.pytest_cache', '.ipynb_checkpoints')
  os.makedirs(dest)
  for name in os.listdir(REPO):
    src = os.path.join(REPO, name)
    if name in ('.git', '.venv', 'runs', 'build', 'dist') or name.endswith('.egg-info'):
      continue
    if os.path.isdir(src):
      shutil.copytree(src, os.path.join(dest, name), ignore=ignore)
    else:
      shutil.copy2(src, dest)


@pytest.mark.integration
def test_the_wheel_holds_ae_jax_only(tmp_path):
  source = tmp_path / 'checkout'
  _copy_checkout(source)
  assert (source / 'experiments' / 'main.py').exists() and (source / 'tests').is_dir()
  # Without build isolation: the setuptools of this environment, no download.
  result = subprocess.run(
      [sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation', '--quiet',
       '--wheel-dir', str(tmp_path / 'dist'), str(source)],
      capture_output=True, text=True, timeout=600, check=False)
  assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
  (wheel,) = (tmp_path / 'dist').glob('ae_jax-*.whl')
  with zipfile.ZipFile(wheel) as archive:
    names = archive.namelist()
    metadata = archive.read(next(n for n in names if n.endswith('.dist-info/METADATA')))
  top = {n.split('/', 1)[0] for n in names}
  assert top == {'ae_jax', next(t for t in top if t.endswith('.dist-info'))}, sorted(top)
  for expected in ('ae_jax/__init__.py', 'ae_jax/data/sources.py', 'ae_jax/recipes/vae.py',
                   'ae_jax/training/loop.py', 'ae_jax/applications/denoising.py'):
    assert expected in names, expected
  assert not [n for n in names if n.startswith(('experiments/', 'tests/', 'notebooks/'))]
  # Every module of the checkout's ae_jax is in the wheel.
  modules = {os.path.relpath(os.path.join(root, f), source).replace(os.sep, '/')
             for root, _, files in os.walk(source / 'ae_jax') for f in files if f.endswith('.py')}
  assert modules <= set(names), sorted(modules - set(names))
  # scikit-image only through an extra.
  requires = [line for line in metadata.decode().splitlines() if line.startswith('Requires-Dist:')]
  skimage = [line for line in requires if 'scikit-image' in line]
  assert skimage and all('extra ==' in line for line in skimage), skimage
