"""The training side: one loop (`fit`) for every stage of every recipe.

>>> from ae_jax import training
>>> from experiments.configs import vae
>>> config = vae.get_config('smoke')
>>> metrics = training.train_and_evaluate(config, '/tmp/ae_jax_doctest_vae')  # doctest: +SKIP

`train_and_evaluate(config, workdir)` looks up `config.recipe` in
`ae_jax.recipes` and fits its stages in order with `fit(stage, workdir)`;
`restore(config, workdir)` gives the trained stages back without training.
"""

from ae_jax.recipes.common import ConfigWarning
from ae_jax.training import checkpoint
from ae_jax.training.checkpoint import CheckpointError
from ae_jax.training.checkpoint import CheckpointMismatchError
from ae_jax.training import faults
from ae_jax.training.loop import check_finite
from ae_jax.training.loop import drop_records_after
from ae_jax.training.loop import fit
from ae_jax.training.loop import Preempted
from ae_jax.training.loop import TrainingDivergedError
from ae_jax.training.run import ConfigMismatchError
from ae_jax.training.run import restore
from ae_jax.training.run import restore_variables
from ae_jax.training.run import train_and_evaluate
from ae_jax.training.run import train_or_restore
from ae_jax.training.run import validate
from ae_jax.training.workdir import WorkdirInUseError
from ae_jax.training.workdir import WorkdirWriteError

__all__ = [
    'checkpoint', 'CheckpointError', 'CheckpointMismatchError', 'check_finite',
    'ConfigMismatchError', 'ConfigWarning', 'drop_records_after', 'faults', 'fit', 'Preempted',
    'restore', 'restore_variables', 'train_and_evaluate', 'train_or_restore',
    'TrainingDivergedError', 'validate', 'WorkdirInUseError', 'WorkdirWriteError',
]
