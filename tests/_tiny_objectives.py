"""A tiny autoencoder and objectives shared by the train and data-parallel tests.

Not collected by pytest; imported by `train_test.py` and by the subprocess
script `_parallel_worker.py`.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

IMAGE_SHAPE = (4, 4, 1)
EMA_DECAY = 0.9


class TinyAE(nn.Module):
  """16 -> 8 -> 3 -> 8 -> 16 MLP autoencoder; returns logits of the input's shape."""

  @nn.compact
  def __call__(self, x):
    h = x.reshape(x.shape[0], -1)
    h = nn.tanh(nn.Dense(8)(h))
    z = nn.Dense(3)(h)
    h = nn.tanh(nn.Dense(8)(z))
    return nn.Dense(x[0].size)(h).reshape(x.shape)


MODEL = TinyAE()


def mse(params, x_in, x):
  return jnp.mean((jax.nn.sigmoid(MODEL.apply(params, x_in)) - x) ** 2)


def deterministic_objective(params, batch, key):
  del key
  loss = mse(params, batch['image'], batch['image'])
  return loss, {'recon': loss}


def stateful_objective(params, batch, key, model_state):
  """MSE, with an EMA of the per-pixel batch mean and an update count as model state."""
  loss, metrics = deterministic_objective(params, batch, key)
  stats = model_state['stats']
  new_stats = {
      'ema': EMA_DECAY * stats['ema'] + (1.0 - EMA_DECAY) * jnp.mean(batch['image'], axis=0),
      'updates': stats['updates'] + 1,
  }
  return loss, (metrics, {'stats': new_stats})


def zero_stats():
  return {'stats': {'ema': jnp.zeros(IMAGE_SHAPE), 'updates': jnp.zeros((), jnp.int32)}}
