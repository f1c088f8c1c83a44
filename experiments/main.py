"""Trains and evaluates one ae-jax run described by a config file.

  python -m experiments.main --config=experiments/configs/vae.py --workdir=runs/vae
  python -m experiments.main --config=experiments/configs/vae.py:smoke --workdir=/tmp/smoke
  python -m experiments.main --config=experiments/configs/beta_vae.py --config.loss.beta=4 --workdir=runs/b4

`--config=FILE:PRESET` picks a preset ('smoke', 'colab_tpu'); `--config=vae:smoke`
names experiments/configs/vae.py by its short name (--help lists the configs,
their presets and the data sets); `--config.a.b=v`
overrides any field, and a field that does not exist is an error. The config's
`recipe` names the family (`ae_jax.recipes`); each of its stages trains into
<workdir>/<stage>/ and figures go to <workdir>/figures/. Running again with
the same --workdir resumes from the latest checkpoint of the unfinished stage.

Several processes (hosts) train one run when `jax.distributed.initialize` is
called first: give --coordinator_address (host:port of process 0, reachable by
all; or set JAX_COORDINATOR_ADDRESS), --num_processes and --process_id, or pass
--distributed alone where JAX detects them (Cloud TPU pods, SLURM, Open MPI).
Every process runs the same command with the same --workdir (a shared
filesystem); `config.data.batch_size` is the global batch. Two processes with
two CPU devices each on one machine:

  export XLA_FLAGS=--xla_force_host_platform_device_count=2 JAX_PLATFORMS=cpu
  python -m experiments.main --config=experiments/configs/vae.py:smoke --workdir=/tmp/mh \\
      --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=0 &
  python -m experiments.main --config=experiments/configs/vae.py:smoke --workdir=/tmp/mh \\
      --coordinator_address=127.0.0.1:12355 --num_processes=2 --process_id=1

On SIGTERM (a preemption notice) the run saves a checkpoint at the next step
all processes agree on and exits with status 75 (EX_TEMPFAIL: "try again");
the same command then resumes. A SIGTERM before the training loop runs (while
the data are read, say) or between stages exits with 75 at once, nothing being
lost. A finished run exits with 0.

The first start writes the config to <workdir>/config.json; a resume compares
its config with it: a change the checkpoints survive (steps, logging and
checkpoint frequency, rates, loss weights, batch sizes) prints one
'warning: ...' line naming the fields, any other (recipe, model, training
data, optimizer kind or schedule, seeds) is refused with status 2.

A usage or config error prints one line, 'error: <what is wrong>', to stderr
and exits with status 2 before anything trains: an unknown flag or field
(--config.loss.betta names the closest fields), a missing config file or an
unknown preset, a value the checks of `ae_jax.training.validate` reject
(non-finite numbers, values out of range, fields without effect for the chosen
data or recipe, batches larger than the data), a resume that does not fit, a
dataset that is not prepared, a workdir another run holds (naming its PID and
host). A failure during the run prints one 'error: ...' line and exits with
status 1: a write into the workdir that failed (disk full: the checkpoints
already written stay restorable), no checkpoint that restores, a loss that
diverged. Set AE_JAX_TRACEBACK=1 to print the traceback too:

  AE_JAX_TRACEBACK=1 python -m experiments.main --config=experiments/configs/vae.py:smoke \\
      --config.optim.grad_clip_norm=-1 --workdir=/tmp/smoke
"""

import os
import sys

from absl import app
from absl import flags
import jax
from ml_collections import config_flags

from ae_jax import training
from experiments import cli

# sysexits.h EX_TEMPFAIL: the run stopped cleanly but is not finished; run it again.
EXIT_PREEMPTED = cli.EXIT_PREEMPTED

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, optionally FILE:PRESET, or a config by name, NAME[:PRESET] '
    '(experiments/configs/NAME.py; --help lists them).')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and figures.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False,
    'Call jax.distributed.initialize() before training. Implied by the three flags below '
    'and by JAX_COORDINATOR_ADDRESS; alone, JAX detects the cluster (TPU pod, SLURM, MPI).')
_COORDINATOR_ADDRESS = flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for a multi-process run.')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, in [0, num_processes).')
flags.mark_flags_as_required(['config', 'workdir'])


def _maybe_initialize_distributed() -> None:
  """Starts jax.distributed if asked; must run before anything touches devices."""
  given = (_COORDINATOR_ADDRESS.value, _NUM_PROCESSES.value, _PROCESS_ID.value)
  if not (_DISTRIBUTED.value or any(v is not None for v in given)
          or os.environ.get('JAX_COORDINATOR_ADDRESS')):
    return
  # JAX's preemption service (and the loop through it) owns SIGTERM here.
  cli.restore_default_sigterm()
  jax.distributed.initialize(
      coordinator_address=_COORDINATOR_ADDRESS.value,
      num_processes=_NUM_PROCESSES.value,
      process_id=_PROCESS_ID.value)


def main(argv):
  if len(argv) > 1:
    cli.fail(f'unexpected arguments: {" ".join(argv[1:])}')
  cli.configure_logging()
  _maybe_initialize_distributed()
  cli.validate_or_fail(_CONFIG.value)
  cli.run_guarded(lambda: training.train_and_evaluate(_CONFIG.value, _WORKDIR.value))


def run() -> None:
  """The command: SIGTERM exits with 75 until the loop runs, one-line errors, then `main`."""
  cli.exit_on_early_sigterm()
  cli.show_config_warnings()
  cli.add_help_listing(sys.argv)
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
