"""Trains and evaluates one ae-jax run described by a config file.

  python -m experiments.main --config=experiments/configs/vae.py --workdir=runs/vae
  python -m experiments.main --config=experiments/configs/vae.py:smoke --workdir=/tmp/smoke
  python -m experiments.main --config=experiments/configs/beta_vae.py --config.loss.beta=4 --workdir=runs/b4

`--config=FILE:PRESET` picks a preset ('smoke', 'colab_tpu'); `--config.a.b=v`
overrides any field, and a field that does not exist is an error. Running
again with the same --workdir resumes from its latest checkpoint.
"""

from absl import app
from absl import flags
from absl import logging
from ml_collections import config_flags

from ae_jax import runner

_CONFIG = config_flags.DEFINE_config_file('config', None, 'Config file, optionally FILE:PRESET.')
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and figures.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  # Orbax logs every save at INFO; the progress bar and metrics say what matters.
  if not flags.FLAGS['verbosity'].present:
    logging.set_verbosity(logging.WARNING)
  runner.train_and_evaluate(_CONFIG.value, _WORKDIR.value)


if __name__ == '__main__':
  app.run(main)
