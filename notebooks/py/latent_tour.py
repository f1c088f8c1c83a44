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
# # A tour of a VAE's latent space
#
# We train the MLP VAE (784-400-20) on the MNIST digits and walk its 20-d
# latent space with `ae_jax.applications.latent`:
#
# * **interpolation** between two digits' codes, along a straight line and
#   along a great circle (slerp);
# * **arithmetic**: the mean code of one class minus that of another is a
#   direction that turns one into the other;
# * **traversals**: one latent dimension at a time swept across the prior,
#   the others held, for the dimensions the model actually uses.
#
# Codes are posterior means, `applications.embed`; `latent.decode` maps any
# array of codes back to images.

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
FULL = False  # True: the config's full size, 2,000 steps of batch 128.

from experiments.configs.apps import latent as latent_config

config = latent_config.get_config()  # experiments/configs/vae.py plus a 'latent' section.
config.train.log_every_steps = 10  # Train metrics for the curve below.
if not FULL:
    config.data.batch_size = 64
    config.train.num_train_steps = 1500
settings = config.latent
print('recipe:', config.recipe, ' model:', config.model.to_dict(),
      ' steps:', config.train.num_train_steps)

# %%
import json
import os
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np

from ae_jax import applications
from ae_jax import data
from ae_jax import notebook_utils as nbu
from ae_jax import training
from ae_jax.applications import latent

# ae_jax.applications selects matplotlib's file-only backend for the launcher;
# this brings back inline figures.
# %matplotlib inline

print('JAX', jax.__version__, 'on', jax.devices())
test_images, test_labels = data.load_arrays(config.data.name, 'test')
image_shape = test_images.shape[1:]

# %% [markdown]
# ## Train the VAE
#
# `training.train_or_restore` is what `python -m experiments.latent` calls: it
# trains the config's recipe into the work directory (or restores a run
# finished there) and returns the model and its variables.

# %%
workdir = tempfile.mkdtemp(prefix='ae_jax_latent_tour_')
model, variables = training.train_or_restore(config, workdir)
with open(os.path.join(workdir, 'model', 'metrics.jsonl')) as f:
    records = [r for r in map(json.loads, f) if r['split'] == 'train']
steps, losses = np.array([r['step'] for r in records]), np.array([r['loss'] for r in records])
print(f'train loss (negative ELBO, nats): first 50 steps {losses[steps <= 50].mean():.1f}'
      f' -> last 50 steps {losses[steps > steps[-1] - 50].mean():.1f}')

# %% [markdown]
# ## Codes, and which dimensions are in use
#
# A VAE can switch off latent dimensions it does not need: their posterior
# equals the prior whatever the input, so their posterior mean hardly varies
# over the data. Burda et al. (2016) call a dimension *active* when that
# variance, Cov_x(E_q[z|x]), exceeds 0.01. How many stay active depends on
# the data, the decoder and how long training ran; larger β switches more off.

# %%
codes = applications.embed(model, variables, test_images)
activity = latent.latent_activity(codes)
dims = latent.active_dims(codes)
num_active = int(np.sum(activity > 0.01))
print(f'codes {codes.shape}; {num_active} of {codes.shape[1]} dimensions active (variance > 0.01)')
fig, ax = plt.subplots(figsize=(7, 2.6))
ax.bar(range(len(dims)), activity[dims])
ax.axhline(0.01, color='k', ls='--', lw=0.8)
ax.set(yscale='log', xticks=range(len(dims)), xticklabels=dims, xlabel='dimension',
       ylabel='variance of E[z|x]', title='latent activity, most active first');

# %% [markdown]
# ## Interpolation: linear and spherical
#
# From the first test digit of one class to the first of another. The linear
# path cuts through the inside of the cloud of codes; slerp keeps to the
# sphere on which the prior's mass concentrates in high dimension (White
# 2016). With codes of similar norms the two look alike; the difference shows
# in the norms below.

# %%
rows = {}
for a, b in settings.class_pairs:
    z0 = codes[np.flatnonzero(test_labels == a)[0]]
    z1 = codes[np.flatnonzero(test_labels == b)[0]]
    for method in ('linear', 'slerp'):
        path = latent.interpolate(z0, z1, settings.num_steps, method=method)
        rows[f'{a} to {b}, {method}'] = latent.decode(model, variables, path, image_shape)
nbu.show_image_rows(rows, title='interpolations');

# %%
rng = np.random.default_rng(0)
pairs = rng.choice(len(codes), size=(settings.num_norm_pairs, 2))
midpoint_norms = {
    method: np.array([np.linalg.norm(latent.interpolate(codes[i], codes[j], 3, method=method)[1])
                      for i, j in pairs])
    for method in ('linear', 'slerp')}
code_norms = np.linalg.norm(codes, axis=1)
print(f'mean norm: codes {code_norms.mean():.2f}, linear midpoints '
      f"{midpoint_norms['linear'].mean():.2f}, slerp midpoints {midpoint_norms['slerp'].mean():.2f}")
fig, ax = plt.subplots(figsize=(7, 3))
bins = np.linspace(0, code_norms.max() * 1.1, 40)
ax.hist(code_norms, bins=bins, alpha=0.6, density=True, label='test codes')
for method, norms in midpoint_norms.items():
    ax.hist(norms, bins=bins, alpha=0.6, density=True, label=f'{method} midpoints')
ax.set(xlabel='|z|', title='norms of codes and of midpoints between random pairs')
ax.legend();

# %% [markdown]
# ## Latent arithmetic
#
# For a pair of classes (a, b), the attribute vector is the mean code of the
# b's minus the mean code of the a's. Adding growing multiples of it to the
# code of an a moves the decoded digit towards a b while it keeps some of its
# style (slant, thickness).

# %%
scales = settings.attribute_scales
rows = {}
for a, b in settings.class_pairs[:2]:
    pair = np.isin(test_labels, (a, b))
    vector = latent.attribute_vector(codes[pair], test_labels[pair] == b)
    for n in np.flatnonzero(test_labels == a)[1:1 + settings.num_attribute_examples // 2]:
        path = latent.apply_attribute(codes[n], vector, scales)
        rows[f'{a} + s({b} - {a}), #{n}'] = latent.decode(model, variables, path, image_shape)
nbu.show_image_rows(rows, title='z + s * attribute, s = ' + ', '.join(f'{s:g}' for s in scales));

# %% [markdown]
# ## Traversals
#
# The first test digit's code, each of its most active dimensions swept from −3 to 3 prior
# standard deviations while the others stay put. Each active dimension
# controls some mix of class and style; in a plain VAE (β = 1) they are rarely
# one interpretable factor each, which is what β-VAE (`beta_vae.py`) pushes
# towards.

# %%
values = np.linspace(-settings.traversal_range, settings.traversal_range, 9)
shown = dims[:min(settings.num_traversal_dims, max(num_active, 1))]
grid = latent.traverse(codes[0], values, dims=shown)
images = latent.decode(model, variables, grid, image_shape)
nbu.show_image_rows({f'dim {d}': row for d, row in zip(shown, images)},
                    title='traversals of the first test digit, values ' + ', '.join(f'{v:g}' for v in values));
