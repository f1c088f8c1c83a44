"""`fit` on a tiny autoencoder stage, for the random-SIGKILL trials of workdir_test.py.

  python tests/_kill_worker.py WORKDIR OUT.npz

Not collected by pytest. Prints 'fitting' when the loop is about to start (so
the parent can time its kill) and writes the final state to OUT.npz.
"""

import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import data
from ae_jax import train
from ae_jax import training
from ae_jax.recipes.base import Schedule
from ae_jax.recipes.base import Stage

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _tiny_objectives import deterministic_objective  # pylint: disable=g-import-not-at-top,wrong-import-position
from _tiny_objectives import IMAGE_SHAPE  # pylint: disable=g-import-not-at-top,wrong-import-position
from _tiny_objectives import MODEL  # pylint: disable=g-import-not-at-top,wrong-import-position

NUM_STEPS = 20
TX = optax.adam(1e-2)
IMAGES = np.random.default_rng(0).uniform(size=(20, *IMAGE_SHAPE)).astype(np.float32)


def stage() -> Stage:
  def init(key):
    return train.create_train_state(MODEL.init(key, jnp.zeros((1, *IMAGE_SHAPE))), TX)

  def eval_step(state, batch, key):
    del key
    loss, metrics = deterministic_objective(state.params, batch, None)
    return {'loss': loss, **metrics}

  return Stage(
      name='tiny', init=init,
      train_data=lambda start: data.batches((IMAGES,), batch_size=4, seed=1, binarize=True,
                                            start_step=start),
      train_step=train.train_step_fn(deterministic_objective, TX),
      eval_step=eval_step,
      eval_data=lambda: data.batches((IMAGES,), batch_size=10, shuffle=False, num_epochs=1),
      schedule=Schedule(num_train_steps=NUM_STEPS, log_every_steps=1, eval_every_steps=4,
                        checkpoint_every_steps=2, keep_checkpoints=2, progress_bar=False))


def main():
  workdir, out = sys.argv[1:3]
  print('fitting', flush=True)
  trained = training.fit(stage(), workdir, faults='')
  leaves = jax.tree.leaves(jax.device_get(trained.state))
  np.savez(out, *[np.asarray(x) for x in leaves])


if __name__ == '__main__':
  main()
