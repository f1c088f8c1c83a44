"""How the package imports: no cycles, a light `import ae_jax`, the layering rules.

The static checks read the source with `ast` and import nothing:

- the import graph of the `ae_jax` modules has no cycle, counting only the
  imports a module runs when it is imported (module level, `if`/`try` blocks
  included), which is what makes a cycle fail at import time; a second test
  also counts the imports inside functions (run on first call), so that a lazy
  import never goes back down into a module that depends on the caller;
- `ae_jax/applications` never import the training side (`ae_jax.training`,
  `ae_jax.recipes`, the legacy `ae_jax.runner`), the recipes never import
  `ae_jax.training`, and nothing in `ae_jax` imports `experiments`;
- one orbax `CheckpointManager(...)` is constructed in the package, in
  `ae_jax/training/checkpoint.py`;
- no `isinstance` dispatch on a model outside `ae_jax/models`: behaviour that
  differs between model classes is a method or an attribute of the models.

An edge of the graph goes from a module to the module it names: `import
ae_jax.a.b` and `from ae_jax.a import b` (b a module) both name ae_jax.a.b,
`from ae_jax.a import f` (f not a module) names ae_jax.a. The parent packages
that Python initialises on the way are not edges (else every module importing
`from ae_jax import x` would close a loop through `ae_jax/__init__.py`).
Imports under `if TYPE_CHECKING:` never run and are left out.

The dynamic check imports `ae_jax` in a fresh interpreter and lists what it
loaded: the heavy libraries are imported inside the functions that use them.
"""

from __future__ import annotations

import ast
import doctest
import functools
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, 'ae_jax')

# Slow to import, and needed by a few functions only.
HEAVY = ('matplotlib', 'sklearn', 'tensorflow_datasets', 'tensorflow', 'orbax', 'skimage',
         'rdkit', 'tensorboardX', 'tqdm')


# ----------------------------------------------------------------------------
# The package's modules and their imports, from the source.


def _module_name(path: str) -> str:
  parts = os.path.relpath(path, REPO)[:-len('.py')].split(os.sep)
  return '.'.join(parts[:-1] if parts[-1] == '__init__' else parts)


@functools.cache
def _sources() -> dict[str, tuple[str, ast.Module]]:
  """Module name -> (path relative to the repo, parsed source) of every ae_jax module."""
  out = {}
  for root, dirs, files in os.walk(PACKAGE):
    dirs[:] = sorted(d for d in dirs if d != '__pycache__')
    for name in sorted(files):
      if name.endswith('.py'):
        path = os.path.join(root, name)
        with open(path) as f:
          out[_module_name(path)] = (os.path.relpath(path, REPO), ast.parse(f.read(), path))
  return out


def _is_type_checking(test: ast.expr) -> bool:
  return ast.unparse(test) in ('TYPE_CHECKING', 'typing.TYPE_CHECKING')


def _imports(tree: ast.Module):
  """(node, at_import_time) of every import statement; at_import_time is False
  inside a function (or a class body's method), skipping `if TYPE_CHECKING:`."""
  def walk(node, at_import_time):
    for child in ast.iter_child_nodes(node):
      if isinstance(child, ast.If) and _is_type_checking(child.test):
        for sub in child.orelse:
          yield from walk_one(sub, at_import_time)
        continue
      yield from walk_one(child, at_import_time)

  def walk_one(node, at_import_time):
    if isinstance(node, (ast.Import, ast.ImportFrom)):
      yield node, at_import_time
    inside = at_import_time and not isinstance(
        node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
    yield from walk(node, inside)

  yield from walk(tree, True)


def _named_modules(module: str, node: ast.Import | ast.ImportFrom) -> list[str]:
  """The absolute names an import statement in `module` names (any package)."""
  if isinstance(node, ast.Import):
    return [alias.name for alias in node.names]
  if node.level:  # Relative: from the package of `module`.
    is_package = _sources().get(module, ('',))[0].endswith('__init__.py')
    base = module.split('.')
    base = base[:len(base) - node.level + (1 if is_package else 0)]
    prefix = '.'.join(base + ([node.module] if node.module else []))
  else:
    prefix = node.module
  return [f'{prefix}.{alias.name}' for alias in node.names] + [prefix]


def _resolve(name: str) -> str | None:
  """The ae_jax module an imported name belongs to, or None outside ae_jax."""
  while name and name not in _sources():
    name = name.rpartition('.')[0]
  return name or None


def _edges(module: str, *, include_functions: bool) -> set[str]:
  """The ae_jax modules that `module` imports."""
  out = set()
  for node, at_import_time in _imports(_sources()[module][1]):
    if not (at_import_time or include_functions):
      continue
    names = _named_modules(module, node)
    if isinstance(node, ast.ImportFrom):
      # `from P import x` names P.x when x is a module, else only P.
      prefix, members = names[-1], names[:-1]
      modules = [m for m in members if m in _sources()]
      names = modules if len(modules) == len(members) else modules + [prefix]
    out.update(m for m in map(_resolve, names) if m is not None and m != module)
  return out


def _all_imported_names(module: str) -> set[str]:
  """Every absolute name `module` imports anywhere (functions included)."""
  out = set()
  for node, _ in _imports(_sources()[module][1]):
    out.update(_named_modules(module, node))
  return out


def _cycles(include_functions: bool) -> list[list[str]]:
  """The import cycles of the package (see `find_cycles`)."""
  return find_cycles({m: sorted(_edges(m, include_functions=include_functions))
                      for m in _sources()})


def find_cycles(graph: dict[str, list[str]]) -> list[list[str]]:
  """One cycle per strongly connected component of more than one node (or a
  node with an edge to itself), as a closed path [a, ..., a] through it."""
  index, low, stack, on_stack, components = {}, {}, [], set(), []

  def connect(v):  # Tarjan's algorithm, recursive: the graph is small.
    index[v] = low[v] = len(index)
    stack.append(v)
    on_stack.add(v)
    for w in graph[v]:
      if w not in index:
        connect(w)
        low[v] = min(low[v], low[w])
      elif w in on_stack:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      component = []
      while True:
        w = stack.pop()
        on_stack.discard(w)
        component.append(w)
        if w == v:
          break
      if len(component) > 1 or v in graph[v]:
        components.append(sorted(component))

  for v in sorted(graph):
    if v not in index:
      connect(v)
  return [_closed_path(graph, component) for component in components]


def _closed_path(graph: dict[str, list[str]], component: list[str]) -> list[str]:
  """A shortest cycle through the first module of a strongly connected component."""
  start, members = component[0], set(component)
  parents, frontier = {start: None}, [start]
  while frontier:
    nxt = []
    for v in frontier:
      for w in graph[v]:
        if w == start:
          path = [v]
          while parents[path[-1]] is not None:
            path.append(parents[path[-1]])
          return path[::-1] + [start]  # start, ..., v, start
        if w in members and w not in parents:
          parents[w] = v
          nxt.append(w)
    frontier = nxt
  return component


def _describe(cycles: list[list[str]]) -> str:
  return '\n'.join(' -> '.join(c) for c in cycles)


def test_the_source_walk_finds_the_package():
  modules = _sources()
  for name in ('ae_jax', 'ae_jax.losses', 'ae_jax.models', 'ae_jax.models.vae',
               'ae_jax.recipes.base', 'ae_jax.training.loop', 'ae_jax.applications.common'):
    assert name in modules, name
  # The resolution of the three import forms, on modules that exist.
  assert {'ae_jax.layers', 'ae_jax.losses'} <= _edges('ae_jax.models.vae', include_functions=False)
  assert 'ae_jax.recipes.base' in _edges('ae_jax.recipes.common', include_functions=False)
  assert 'ae_jax.plotting' not in _edges('ae_jax.recipes.common', include_functions=False)
  assert 'ae_jax.plotting' in _edges('ae_jax.recipes.common', include_functions=True)


def test_the_cycle_finder_finds_planted_cycles():
  graph = {'a': ['b'], 'b': ['c'], 'c': ['a', 'd'], 'd': [], 'e': ['e', 'a'],
           'f': ['g'], 'g': ['f']}
  assert find_cycles(graph) == [['a', 'b', 'c', 'a'], ['e', 'e'], ['f', 'g', 'f']]
  assert find_cycles({'a': ['b'], 'b': ['c'], 'c': []}) == []


def test_no_import_cycle_at_import_time():
  cycles = _cycles(include_functions=False)
  assert not cycles, 'Import cycles (module-level imports):\n' + _describe(cycles)


def test_no_import_cycle_counting_imports_inside_functions():
  cycles = _cycles(include_functions=True)
  assert not cycles, 'Import cycles (imports inside functions included):\n' + _describe(cycles)


# ----------------------------------------------------------------------------
# Layering.


def _importers(prefix: str, forbidden: tuple[str, ...]) -> dict[str, list[str]]:
  """Modules under `prefix` that import (anywhere) a name under one of `forbidden`."""
  bad = {}
  for module in _sources():
    if module != prefix and not module.startswith(prefix + '.'):
      continue
    hits = sorted(n for n in _all_imported_names(module)
                  if any(n == f or n.startswith(f + '.') for f in forbidden))
    if hits:
      bad[_sources()[module][0]] = hits
  return bad


def test_applications_never_import_the_training_side():
  bad = _importers('ae_jax.applications', ('ae_jax.training', 'ae_jax.recipes', 'ae_jax.runner'))
  assert not bad, f'ae_jax/applications analyse a trained model; they import {bad}.'


def test_recipes_never_import_the_training_loop():
  bad = _importers('ae_jax.recipes', ('ae_jax.training', 'ae_jax.runner'))
  assert not bad, f'ae_jax.training runs the recipes, not the other way round: {bad}.'


def test_the_package_never_imports_experiments():
  bad = _importers('ae_jax', ('experiments',))
  assert not bad, f'experiments/ sits on top of ae_jax; these modules import it: {bad}.'


# ----------------------------------------------------------------------------
# One checkpoint manager, no model dispatch by type.


def _calls(tree: ast.Module):
  for node in ast.walk(tree):
    if isinstance(node, ast.Call):
      yield node


def test_one_checkpoint_manager_is_constructed_in_training_checkpoint():
  found = []
  for path, tree in _sources().values():
    for call in _calls(tree):
      func = call.func
      name = func.attr if isinstance(func, ast.Attribute) else getattr(func, 'id', None)
      if name == 'CheckpointManager':
        found.append(f'{path}:{call.lineno}')
  assert len(found) == 1 and found[0].startswith(
      os.path.join('ae_jax', 'training', 'checkpoint.py') + ':'), found


@functools.cache
def _model_classes() -> frozenset[str]:
  """The model classes `ae_jax.models` exports (not their output structs)."""
  _, tree = _sources()['ae_jax.models']
  for node in tree.body:
    if isinstance(node, ast.Assign) and any(getattr(t, 'id', None) == '__all__'
                                            for t in node.targets):
      return frozenset(n for n in ast.literal_eval(node.value) if not n.endswith('Output'))
  raise AssertionError('ae_jax/models/__init__.py has no __all__.')


def _is_model_dispatch(call: ast.Call) -> bool:
  """`isinstance(model, ...)` (or `x.model`, `vq_model`), or `isinstance(x, C)` with
  C (or one of a tuple) a model class of `ae_jax.models`."""
  if getattr(call.func, 'id', None) != 'isinstance' or len(call.args) != 2:
    return False
  subject = ast.unparse(call.args[0]).rpartition('.')[2]
  if subject == 'model' or subject.endswith('_model'):
    return True
  classes = call.args[1].elts if isinstance(call.args[1], ast.Tuple) else [call.args[1]]
  return any(ast.unparse(c).rpartition('.')[2] in _model_classes() for c in classes)


def test_no_isinstance_dispatch_on_models_outside_the_models():
  found = []
  for module, (path, tree) in _sources().items():
    if module == 'ae_jax.models' or module.startswith('ae_jax.models.'):
      continue
    found += [f'{path}:{c.lineno}: {ast.unparse(c)}' for c in _calls(tree)
              if _is_model_dispatch(c)]
  assert not found, ('Dispatch on the model class; make it a method or an attribute of the '
                     'models (e.g. `model.family`):\n' + '\n'.join(found))


# ----------------------------------------------------------------------------
# What `import ae_jax` loads.


def _loaded_after(steps: dict[str, str]) -> dict[str, list[str]]:
  """Runs each step's code in turn in one fresh interpreter; for each step, the
  heavy libraries (`HEAVY` and ml_collections) loaded by the end of it."""
  names = HEAVY + ('ml_collections',)
  script = ['import json, sys', 'out = {}']
  for label, code in steps.items():
    script += [code, f'out[{label!r}] = sorted({{m.split(".")[0] for m in sys.modules}} & '
                     f'set({names!r}))']
  script.append('print(json.dumps(out))')
  proc = subprocess.run([sys.executable, '-c', '\n'.join(script)], cwd=REPO,
                        capture_output=True, text=True, timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_ae_jax_loads_no_heavy_library():
  loaded = _loaded_after({
      'import ae_jax': 'import ae_jax\nfrom ae_jax import losses\n'
                       'ae_jax.train.make_train_step, ae_jax.models.MLPVAE',
      # ae_jax.data reads TFDS only when a TFDS dataset is opened.
      'ae_jax.data': 'assert callable(ae_jax.data.load_arrays)',
  })
  assert loaded == {'import ae_jax': [], 'ae_jax.data': []}, (
      f'Loaded: {loaded}; import them inside the functions that use them.')


def test_the_package_docstring_example_runs():
  import ae_jax  # pylint: disable=g-import-not-at-top
  assert doctest.testmod(ae_jax, raise_on_error=False, verbose=False).failed == 0


def test_the_lazy_subpackages_are_listed_and_unknown_names_fail():
  import ae_jax  # pylint: disable=g-import-not-at-top
  for name in ('applications', 'data', 'recipes', 'training', 'plotting'):
    assert name in ae_jax.__all__ and name in dir(ae_jax), name
  with pytest.raises(AttributeError, match='no attribute'):
    ae_jax.no_such_module  # pylint: disable=pointless-statement


def _recipe_names() -> list[str]:
  directory = os.path.join(PACKAGE, 'recipes')
  return sorted(n[:-3] for n in os.listdir(directory)
                if n.endswith('.py') and not n.startswith('_'))


def test_importing_the_recipes_loads_no_heavy_library():
  """A recipe's figures and data import matplotlib, TFDS, ... inside functions
  (`ae_jax.training` imports the recipe before anything trains). One
  interpreter imports them in turn: a library is blamed on the first recipe
  that loads it."""
  loaded = _loaded_after({name: f'import ae_jax.recipes.{name}' for name in _recipe_names()})
  heavy, seen = {}, set()
  for name in _recipe_names():
    new = set(loaded[name]) - seen - {'ml_collections'}
    if new:
      heavy[name] = sorted(new)
    seen |= new
  assert not heavy, f'Importing these recipes loads heavy libraries: {heavy}.'
