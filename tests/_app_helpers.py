"""Helpers shared by the application tests (not collected by pytest)."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import data
from ae_jax import train


def init_variables(model, x, key):
  """`model.init` with the arguments its `__call__` takes, for a batch like `x`.

  (x, key) for a VAE (the key draws z), (x, train=False) for a VQ-VAE, (x)
  for a deterministic autoencoder.
  """
  x = jnp.asarray(x)
  if model.family == 'vae':
    return model.init(key, x, key)
  if model.family == 'vqvae':
    return model.init(key, x, train=False)
  return model.init(key, x)


def train_briefly(model, objective, images, *, num_steps, batch_size=64, learning_rate=3e-3,
                  seed=0):
  """A few Adam steps of `objective` on `images`; returns the variables."""
  key = jax.random.key(seed)
  variables = init_variables(model, images[:1], key)
  tx = optax.adam(learning_rate)
  state = train.create_train_state({'params': variables['params']}, tx)
  step = train.make_train_step(objective, tx)
  batches = data.batches((images,), batch_size=batch_size, seed=seed)
  for _ in range(num_steps):
    state, _ = step(state, next(batches), key)
  return state.params


def binary_mnist5k(n, seed=0):
  """The first `n` MNIST-5k training digits, binarized once: x ~ Bernoulli(pixels)."""
  images, _ = data.load_arrays('mnist5k', 'train')
  rng = np.random.default_rng(seed)
  return (rng.random(images[:n].shape) < images[:n]).astype(np.float32)
