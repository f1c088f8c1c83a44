"""Switches off parameter updates for `pytest --untrained` (see tests/conftest.py).

Every training path in ae-jax applies its updates with `optax.apply_updates`
(ae_jax.train's step, the AAE's phases, flax's TrainState), looked up when a
step is traced, so replacing it before anything is jitted leaves every model
at its initialisation. State that is not a parameter (batch statistics, EMA
codebooks) still updates.
"""

import optax


def _no_update(params, updates):
  del updates
  return params


def install() -> None:
  optax.apply_updates = _no_update
