"""The command line shared by `python -m experiments.main` and the application scripts.

Each script defines `run(config, workdir[, model_workdir])` and ends with

  if __name__ == '__main__':
    cli.run_app(run, config_help='...', model_workdir_help='...')

The flags are defined only when a script runs, so tests can import several
scripts into one process without absl's duplicate-flag error. A script that
trains does so through `ae_jax.training`; on SIGTERM it saves a checkpoint
and exits with status 75, like `python -m experiments.main`, and the same
command resumes.

Errors of the command line and of the config (a flag, a --config file or
preset, an unknown --config.<field>, a value `ae_jax.training.validate`
rejects, a resume whose config does not fit the checkpoints, a dataset not
prepared) print one line, 'error: ...', to stderr and exit with status 2
(`EXIT_USAGE`). Set AE_JAX_TRACEBACK=1 to see the traceback as well.
`ConfigWarning`s print as one line, 'warning: ...'.
"""

from __future__ import annotations

import difflib
import importlib.util
import os
import re
import signal
import sys
import traceback
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, NoReturn

from absl import app
from absl import flags
from absl import logging
import jax
import ml_collections
from ml_collections import config_flags

from ae_jax import data
from ae_jax import training

# sysexits.h EX_TEMPFAIL: stopped cleanly, run it again.
EXIT_PREEMPTED = 75
# A usage or config error (as argparse and most Unix tools): nothing ran.
EXIT_USAGE = 2
# The run failed (disk full, no restorable checkpoint, diverged); what was saved is kept.
EXIT_FAILURE = 1
# Set to 1 to print the traceback of a usage or config error before its line.
TRACEBACK_ENV = 'AE_JAX_TRACEBACK'


def show_traceback() -> bool:
  return os.environ.get(TRACEBACK_ENV, '') not in ('', '0')


def fail(message: str, error: BaseException | None = None) -> NoReturn:
  """Prints 'error: <message>' as one line to stderr (after `error`'s traceback
  with AE_JAX_TRACEBACK=1) and exits with `EXIT_USAGE`."""
  if error is not None and show_traceback():
    traceback.print_exception(error)
  print(f'error: {" ".join(str(message).split())}', file=sys.stderr, flush=True)
  sys.exit(EXIT_USAGE)


def _innermost_message(error: BaseException) -> str:
  """The message of the exception at the bottom of `error`'s chain, one line.

  ml_collections wraps a config file's exception with its traceback in the
  text; the last line of that text is the original `Type: message`.
  """
  if isinstance(error, flags.Error) and 'Traceback' not in str(error):
    return str(error)  # 'flag --x=v: why', naming the flag.
  while error.__cause__ is not None:
    error = error.__cause__
  text = str(error.args[0]) if error.args and isinstance(error.args[0], str) else str(error)
  if 'Traceback (most recent call last)' in text:
    text = text.strip().splitlines()[-1].strip()
  return text


def _flag_values(argv: Sequence[str], name: str) -> Iterator[tuple[str, str | None]]:
  """(flag, value) of every --name / --name.field in argv (value None if it is the next
  argument that absl would take)."""
  args = list(argv[1:])
  for i, arg in enumerate(args):
    if arg == '--':
      return
    for prefix in (f'--{name}', f'-{name}'):
      if arg == prefix or arg.startswith((f'{prefix}=', f'{prefix}.')):
        flag, eq, value = arg.partition('=')
        if not eq:
          value = args[i + 1] if i + 1 < len(args) else None
        yield flag.lstrip('-'), value
        break


CONFIGS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')
"""The checkout's config files: `--config=NAME[:PRESET]` names `CONFIGS_DIR/NAME.py`."""


def config_names() -> list[str]:
  """Short names of the config files: 'vae', 'apps/denoise', ... (sorted)."""
  names = []
  for root, _, files in os.walk(CONFIGS_DIR):
    for file in files:
      if file.endswith('.py') and file not in ('__init__.py', 'common.py', 'base.py'):
        rel = os.path.relpath(os.path.join(root, file[:-3]), CONFIGS_DIR)
        names.append(rel.replace(os.sep, '/'))
  return sorted(names)


def config_args(name: str) -> tuple[str, ...]:
  """The arguments (presets, variants) `get_config` of the config `name` takes: its
  module's `ARGS`, else the presets of `experiments.configs.common`."""
  module = importlib.import_module('experiments.configs.' + name.replace('/', '.'))
  from experiments.configs import common  # pylint: disable=g-import-not-at-top
  return tuple(getattr(module, 'ARGS', common.PRESETS))


def help_listing() -> str:
  """What --help adds to the script's docstring: the configs with their presets, and
  the data sets `config.data.name` accepts."""
  lines = ['', 'Configs (--config=NAME[:ARG], or --config=experiments/configs/NAME.py[:ARG]):']
  for name in config_names():
    module = importlib.import_module('experiments.configs.' + name.replace('/', '.'))
    paragraph = ' '.join((module.__doc__ or '').strip().split('\n\n', 1)[0].split())
    summary = re.split(r'(?<!\bal)\.(?:\s|$)', paragraph, maxsplit=1)[0] + '.'
    lines.append(f'  {name}: {summary}')
    lines.append(f'      ARG: {", ".join(config_args(name))}')
  lines += ['', 'Data sets (--config.data.name=...):',
            f'  built in: {", ".join(data.IN_MEMORY_DATASETS)}',
            f'  TFDS, prepared as array_record in config.data.data_dir: '
            f'{", ".join(data.TFDS_DATASETS)}, or tfds:<name> (fixed-size uint8 images)',
            '  your own: npz:PATH (a .npz with image [N, H, W, C], uint8 or floats in [0, 1], '
            'optional label [N]); folder:PATH (image files, class subfolders as labels, '
            'resized to --config.data.image_shape, default (28, 28, 1))', '']
  return '\n'.join(lines)


_HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')


def add_help_listing(argv: Sequence[str]) -> None:
  """With a help flag in `argv`, appends `help_listing()` to the docstring that absl
  prints for it (the `__main__` module's)."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    main = sys.modules['__main__']
    main.__doc__ = (main.__doc__ or '') + help_listing()


def resolve_config_spec(spec: str) -> str:
  """`FILE[:PRESET]` as given, or the path of a short name: 'vae:smoke' ->
  '<checkout>/experiments/configs/vae.py:smoke' when the argument names no file
  but `CONFIGS_DIR` has `<name>.py` (also 'apps/denoise')."""
  path, colon, arg = spec.partition(':')
  if os.path.isfile(path) or path.endswith('.py') or not path:
    return spec
  candidate = os.path.join(CONFIGS_DIR, *path.split('/')) + '.py'
  if path in config_names() and os.path.isfile(candidate):
    return f'{candidate}{colon}{arg}'
  return spec


def resolve_config_argv(argv: Sequence[str], config_flag: str = 'config') -> list[str]:
  """argv with a short --config name (`resolve_config_spec`) replaced by its file."""
  args = list(argv)
  for i, arg in enumerate(args[1:], start=1):
    if arg == '--':
      break
    for prefix in (f'--{config_flag}', f'-{config_flag}'):
      if arg.startswith(f'{prefix}='):
        args[i] = f'{prefix}={resolve_config_spec(arg[len(prefix) + 1:])}'
      elif arg == prefix and i + 1 < len(args):
        args[i + 1] = resolve_config_spec(args[i + 1])
  return args


def _load_config_file(spec: str) -> Any:
  """`get_config(arg)` of the config file `FILE[:ARG]`, as config_flags loads it."""
  path, colon, arg = resolve_config_spec(spec).partition(':')
  if not os.path.isfile(path) and '/' not in path and not path.endswith('.py'):
    raise FileNotFoundError(
        f'no config file {path!r} (from {os.getcwd()}) and no config named {path!r}; '
        f'the configs: {", ".join(config_names())}')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'no config file {path!r} (from {os.getcwd()})')
  module_spec = importlib.util.spec_from_file_location('_ae_jax_cli_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg) if colon else module.get_config()


def _leaf_paths(config: Any, prefix: str = '') -> list[str]:
  paths = []
  for key, value in config.items():
    paths.append(f'{prefix}{key}')
    if isinstance(value, ml_collections.ConfigDict):
      paths += _leaf_paths(value, f'{prefix}{key}.')
  return paths


def unknown_field(config: Any, path: str) -> str | None:
  """None if `path` ('loss.beta') is a field of `config`, else what to say about it:
  the closest fields (difflib), or those of the deepest section that exists."""
  node = config
  for part in path.split('.'):
    if not isinstance(node, ml_collections.ConfigDict) or part not in node:
      close = difflib.get_close_matches(path, _leaf_paths(config), n=3, cutoff=0.6)
      if close:
        return 'no such field; closest: ' + ', '.join(f'config.{c}' for c in close)
      if isinstance(node, ml_collections.ConfigDict):
        return f'no such field; the section has {", ".join(sorted(node.keys()))}'
      return 'no such field (its parent is not a section)'
    node = node[part]
  return None


def _describe_flag_error(error: BaseException, argv: Sequence[str], config_flag: str) -> str:
  """One line saying which flag is wrong and why."""
  specs = [(f, v) for f, v in _flag_values(argv, config_flag) if f == config_flag]
  if specs and specs[-1][1] is not None:
    spec = specs[-1][1]
    try:
      config = _load_config_file(spec)
    except Exception as e:  # pylint: disable=broad-except
      return f'--{config_flag}={spec}: {_innermost_message(e)}'
    for flag, _ in _flag_values(argv, config_flag):
      if flag != config_flag:
        problem = unknown_field(config, flag[len(config_flag) + 1:])
        if problem:
          return f'--{flag}: {problem}'
  return _innermost_message(error)


def parse_flags(argv: list[str], *, config_flag: str = 'config') -> list[str]:
  """absl's flag parsing (for `app.run(..., flags_parser=...)`), with one-line errors.

  Also loads the --config file (ml_collections defers a missing file's error
  to the first read), so that every usage error stops here with `fail`.
  """
  resolved = resolve_config_argv(argv, config_flag)
  try:
    rest = flags.FLAGS(resolved)
  except Exception as e:  # pylint: disable=broad-except
    fail(_describe_flag_error(e, argv, config_flag), e)
  if config_flag in flags.FLAGS and flags.FLAGS[config_flag].value is not None:
    try:
      'recipe' in flags.FLAGS[config_flag].value  # pylint: disable=pointless-statement
    except Exception as e:  # pylint: disable=broad-except
      fail(_describe_flag_error(e, argv, config_flag), e)
  return rest


def show_config_warnings() -> None:
  """Prints each `ConfigWarning` as one line, 'warning: <message>', to stderr."""
  previous = warnings.showwarning

  def show(message, category, filename, lineno, file=None, line=None):
    if issubclass(category, training.ConfigWarning):
      print(f'warning: {message}', file=sys.stderr, flush=True)
    else:
      previous(message, category, filename, lineno, file, line)

  warnings.showwarning = show


def exit_on_early_sigterm() -> None:
  """Until the training loop installs its SIGTERM handler (`ae_jax.training.fit`,
  which restores this one when a stage ends), SIGTERM exits with status 75 at once:
  nothing trained yet (or every finished stage is checkpointed), so the same
  command starts or resumes the run. Not in a multi-process run, where JAX's
  preemption service owns SIGTERM (`restore_default_sigterm`)."""

  def on_sigterm(signum, frame):
    del signum, frame
    os.write(2, b'SIGTERM outside the training loop: nothing to save; run the same command '
                b'again.\n')
    sys.exit(EXIT_PREEMPTED)

  signal.signal(signal.SIGTERM, on_sigterm)


def run_guarded(run: Callable[[], object]) -> None:
  """Calls `run()`, turning the run's expected failures into one line and a status.

  Preempted: its line on stdout, `EXIT_PREEMPTED`. A config that does not fit
  the workdir's run or checkpoints, a dataset not prepared, a workdir held by
  another run: `fail` (status 2, nothing trained). A failed write into the
  workdir (disk full), no restorable checkpoint, a diverged loss: 'error: ...'
  and status 1; after a failed write the process exits at once, so that the
  checkpoint library's unfinished writes do not print at interpreter shutdown
  (the checkpoints already written are complete).
  """
  try:
    run()
  except training.Preempted as preempted:
    if jax.process_index() == 0:
      print(preempted, flush=True)
    sys.exit(EXIT_PREEMPTED)
  except (training.ConfigMismatchError, training.CheckpointMismatchError,
          training.WorkdirInUseError, data.DatasetNotFoundError) as e:
    fail(str(e), e)
  except (training.WorkdirWriteError, training.CheckpointError,
          training.TrainingDivergedError) as e:
    if show_traceback():
      traceback.print_exception(e)
    print(f'error: {" ".join(str(e).split())}', file=sys.stderr, flush=True)
    if isinstance(e, training.WorkdirWriteError):
      sys.stdout.flush()
      os._exit(EXIT_FAILURE)  # pylint: disable=protected-access
    sys.exit(EXIT_FAILURE)


class _OneLineFromLibraries:
  """A logging filter: records of the checkpoint library keep their first line only.

  Orbax logs a failed asynchronous write with its whole traceback from its
  own thread; the run then stops with its own one-line error, which says
  what the traceback does (with AE_JAX_TRACEBACK=1 nothing is cut).
  """

  def filter(self, record) -> bool:
    if f'{os.sep}orbax{os.sep}' in record.pathname and not show_traceback():
      record.msg = str(record.getMessage()).splitlines()[0] if record.getMessage() else ''
      record.args, record.exc_info, record.exc_text = (), None, None
    return True


def configure_logging() -> None:
  """WARNING and above (orbax logs every save at INFO; the scripts print what
  matters) unless --verbosity was given; library records on one line."""
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  logging.get_absl_handler().addFilter(_OneLineFromLibraries())


def restore_default_sigterm() -> None:
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def validate_or_fail(config: ml_collections.ConfigDict) -> None:
  """`ae_jax.training.validate(config)`; a config error ends the process (`fail`)."""
  try:
    training.validate(config)
  except ValueError as e:
    fail(str(e), e)


def run_app(run: Callable[..., object], *, config_help: str,
            model_workdir_help: str | None = None) -> None:
  """Defines --config, --workdir (and --model_workdir), then calls `run` with them."""
  exit_on_early_sigterm()
  show_config_warnings()
  config = config_flags.DEFINE_config_file('config', None, config_help)
  workdir = flags.DEFINE_string('workdir', None, 'Directory for the run, metrics and figures.')
  model_workdir = None
  if model_workdir_help is not None:
    model_workdir = flags.DEFINE_string('model_workdir', None, model_workdir_help)
  flags.mark_flags_as_required(['config', 'workdir'])
  add_help_listing(sys.argv)

  def main(argv):
    if len(argv) > 1:
      fail(f'unexpected arguments: {" ".join(argv[1:])}')
    configure_logging()
    if 'recipe' in config.value:
      validate_or_fail(config.value)
    extra = () if model_workdir is None else (model_workdir.value,)
    run_guarded(lambda: run(config.value, workdir.value, *extra))

  app.run(main, flags_parser=parse_flags)
