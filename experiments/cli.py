"""The command line shared by the application scripts.

Each script defines `run(config, workdir[, model_workdir])` and ends with

  if __name__ == '__main__':
    cli.run_app(run, config_help='...', model_workdir_help='...')

The flags are defined only when a script runs, so tests can import several
scripts into one process without absl's duplicate-flag error. A script that
trains does so through `ae_jax.training`; on SIGTERM it saves a checkpoint
and exits with status 75, like `python -m experiments.main`, and the same
command resumes.
"""

import sys
from collections.abc import Callable

from absl import app
from absl import flags
from absl import logging
import jax
from ml_collections import config_flags

from ae_jax import training

# sysexits.h EX_TEMPFAIL, as experiments/main.py: stopped cleanly, run it again.
EXIT_PREEMPTED = 75


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
    try:
      run(config.value, workdir.value, *extra)
    except training.Preempted as preempted:
      if jax.process_index() == 0:
        print(preempted, flush=True)
      sys.exit(EXIT_PREEMPTED)

  app.run(main)
