"""The command line shared by the application scripts.

Each script defines `run(config, workdir[, model_workdir])` and ends with

  if __name__ == '__main__':
    cli.run_app(run, config_help='...', model_workdir_help='...')

The flags are defined only when a script runs, so tests can import several
scripts into one process without absl's duplicate-flag error.
"""

from collections.abc import Callable

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags


def run_app(run: Callable[..., object], *, config_help: str,
            model_workdir_help: str | None = None) -> None:
  """Defines --config, --workdir (and --model_workdir), then calls `run` with them."""
  config = config_flags.DEFINE_config_file('config', None, config_help)
  workdir = flags.DEFINE_string('workdir', None, 'Directory for the run, metrics and figures.')
  model_workdir = None
  if model_workdir_help is not None:
    model_workdir = flags.DEFINE_string('model_workdir', None, model_workdir_help)
  flags.mark_flags_as_required(['config', 'workdir'])

  def main(argv):
    if len(argv) > 1:
      raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
    # Orbax logs every save at INFO; the scripts print what matters.
    if not flags.FLAGS['verbosity'].present:
      logging.set_verbosity(logging.WARNING)
    extra = () if model_workdir is None else (model_workdir.value,)
    run(config.value, workdir.value, *extra)

  app.run(main)
