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
# # The classical autoencoders side by side
#
# Four ways to make an autoencoder learn something more useful than the
# identity, trained here on the same digits in the same order so that the
# differences come from the objective alone:
#
# | model | what stops it copying its input | reference |
# |---|---|---|
# | undercomplete | a 32-unit bottleneck | Hinton & Salakhutdinov 2006 |
# | sparse, L1 | λ·Σ\|z\| on a 64-unit ReLU code | (L1 activity penalty) |
# | sparse, KL | β·Σ_j KL(ρ ‖ ρ̂_j) on a 64-unit sigmoid code, ρ = 0.05 | Ng 2011 |
# | denoising | it sees x + noise and must return the clean x | Vincent et al. 2008, 2010 |
# | contractive | λ·‖∂f(x)/∂x‖²_F, the encoder's Jacobian | Rifai et al. 2011 |
#
# Every model is `ae_jax.models.MLPAutoencoder` (784-256-128-code and its
# mirror, Bernoulli decoder); each is one config in
# `experiments/configs/` of the one recipe `ae_jax/recipes/autoencoder.py`
# (`config.loss.objective` picks the objective in `ae_jax.objectives`). We then look
# at what each learned: reconstructions, robustness to noise, first-layer
# filters, the codes, and the encoder's sensitivity to its input.

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
FULL = False  # True: each config's full size, 2,000 steps of batch 128.

from experiments.configs import contractive, denoising, sparse_kl, sparse_l1, undercomplete

configs = {
    'undercomplete': undercomplete.get_config(),
    'sparse L1': sparse_l1.get_config(),
    'sparse KL': sparse_kl.get_config(),
    'denoising': denoising.get_config(),
    'contractive': contractive.get_config(),
}
for name, config in configs.items():
    config.train.log_every_steps = 5  # Train metrics for the curves below.
    config.train.progress_bar = False
    if not FULL:
        config.data.batch_size = 64
        config.train.num_train_steps = 600
    print(f'{name:13s}', config.recipe, config.model.to_dict(), config.loss.to_dict())

# %%
import json
import os
import tempfile
import time

import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ae_jax import corruption
from ae_jax import data
from ae_jax import losses
from ae_jax import notebook_utils as nbu
from ae_jax import objectives
from ae_jax import recipes
from ae_jax import training

print('JAX', jax.__version__, 'on', jax.devices())
test_images, test_labels = data.load_arrays('mnist5k', 'test')

# %% [markdown]
# ## Training
#
# The recipe turns each config into a stage (model, pure train and eval steps,
# data, schedule) and `training.fit` trains it with the library's one loop,
# into its own directory (metrics.jsonl, checkpoints). All runs share the data
# seed, so they see the same batches in the same order.

# %%
root = tempfile.mkdtemp(prefix='ae_jax_zoo_')


def fit(name, config):
    """Trains `config`'s model; returns (model, variables, train records every 5 steps)."""
    stage = recipes.get(config.recipe).make_stage(config, 'model', {})
    workdir = os.path.join(root, name.replace(' ', '_'))
    trained = training.fit(stage, workdir)
    with open(os.path.join(workdir, 'metrics.jsonl')) as f:
        records = [r for r in map(json.loads, f) if r['split'] == 'train']
    history = {k: np.array([r[k] for r in records]) for k in ('step', 'loss', 'recon')}
    return stage.model, trained.variables, history


runs = {}
for name, config in configs.items():
    start = time.time()
    runs[name] = fit(name, config)
    steps, recon = runs[name][2]['step'], runs[name][2]['recon']
    first, last = steps <= 50, steps > steps[-1] - 50
    print(f'{name:13s} train recon (nats/image): first 50 steps {recon[first].mean():6.1f}'
          f' -> last 50 steps {recon[last].mean():6.1f}   ({time.time() - start:.1f} s)')

# %% [markdown]
# The reconstruction term alone (the penalties differ in scale, so the total
# losses do not compare). The denoising model is scored on noisy inputs while
# it trains, so its curve sits higher.

# %%
fig, ax = plt.subplots(figsize=(7, 3.5))
for name, (_, _, history) in runs.items():
    smooth = np.convolve(history['recon'], np.ones(4) / 4, mode='valid')
    ax.plot(history['step'][3:], smooth, label=name)
ax.set(xlabel='step', ylabel='recon (nats/image, 20-step mean)', yscale='log',
       title='training reconstruction loss')
ax.legend();

# %% [markdown]
# ## Reconstructions, clean and noisy
#
# The same test digits through every model; then the same digits with the
# Gaussian noise (σ = 0.3, clipped to [0, 1]) that the denoising model was
# trained on. Only the denoising model has learned to remove it; the others
# try to reproduce the noise with the digit shapes they know.

# %%
x = jnp.asarray(test_images)
noisy = corruption.gaussian_noise(x, jax.random.key(7), sigma=0.3)
outputs = {name: model.apply(variables, x) for name, (model, variables, _) in runs.items()}
outputs_noisy = {name: model.apply(variables, noisy) for name, (model, variables, _) in runs.items()}

show = slice(0, 10)
nbu.show_image_rows({'input': x[show], **{n: jax.nn.sigmoid(o.logits[show]) for n, o in outputs.items()}},
                    title='clean test digits');
nbu.show_image_rows({'noisy input': noisy[show],
                     **{n: jax.nn.sigmoid(o.logits[show]) for n, o in outputs_noisy.items()},
                     'clean target': x[show]}, title='noisy test digits');

# %% [markdown]
# ## First-layer filters
#
# Unit k of the first layer computes relu(x · W[:, k] + b_k), so column k of
# the kernel, drawn as a 28×28 image (each scaled to its own range), is the
# pattern the unit responds to. Regularised models tend to learn smoother,
# more localised stroke detectors than the plain bottleneck; the longer
# `FULL = True` run makes the difference clearer.

# %%
nbu.show_image_rows(
    {name: nbu.filters_as_images(model.first_kernel(variables), (28, 28, 1), num=16)
     for name, (model, variables, _) in runs.items()},
    title='first 16 first-layer filters');

# %% [markdown]
# ## The codes
#
# What each code looks like on the test digits. The plain bottleneck's linear
# code spreads over both signs; L1 on a ReLU code makes most entries exactly
# zero (and can switch whole units off); the KL penalty holds each sigmoid
# unit's mean activation near ρ = 0.05; the contractive model's sigmoid units
# saturate (here mostly at 1), where their derivative, and so the Jacobian, is
# small.

# %%
fig, axes = plt.subplots(1, len(outputs), figsize=(3.2 * len(outputs), 2.8))
for ax, (name, out) in zip(axes, outputs.items()):
    ax.hist(np.asarray(out.z).ravel(), bins=60, color='tab:blue')
    ax.set(title=f'{name} ({out.z.shape[1]} units)', yscale='log', xlabel='code value')
fig.tight_layout()

z_kl = np.asarray(outputs['sparse KL'].z)
print(f"sparse KL: mean activation per unit {z_kl.mean(0).mean():.3f} "
      f"(target rho = {configs['sparse KL'].loss.rho}), "
      f"range {z_kl.mean(0).min():.3f}..{z_kl.mean(0).max():.3f}")
z_l1 = np.asarray(outputs['sparse L1'].z)
print(f'sparse L1: {np.mean(z_l1 == 0):.0%} of code entries are exactly 0, '
      f'{np.mean(np.all(z_l1 == 0, axis=0)):.0%} of units never fire')

# %% [markdown]
# ## Summary
#
# Test reconstruction loss (Bernoulli negative log-likelihood, nats per image)
# from clean and from noisy inputs, against the clean digit; the mean squared
# Frobenius norm of the encoder's Jacobian ‖∂z/∂x‖²_F, which the contractive
# model minimises (computed with `ae_jax.losses.contractive_penalty`; it
# compares fairly only between codes on the same scale, such as the two
# sigmoid codes); and the share of code entries with |z| < 0.05.
#
# Expect the denoising model to be best from noisy inputs by a wide margin,
# and (at the default size) worse from clean ones than from noisy ones: it has
# only ever seen noisy digits, whose background is grey rather than black. The
# contractive model's Jacobian is the smallest of the sigmoid codes, bought
# with some reconstruction error: the weight λ trades one for the other.

# %%
num_jacobian = 200
print(f"{'model':13s} {'recon clean':>11s} {'recon noisy':>11s} {'|J|_F^2':>9s} {'|z|<0.05':>9s}")
for name, (model, variables, _) in runs.items():
    recon_clean = objectives.reconstruction_loss(outputs[name].logits, x, kind='bernoulli').mean()
    recon_noisy = objectives.reconstruction_loss(outputs_noisy[name].logits, x, kind='bernoulli').mean()
    encode_one = lambda x_D, model=model, variables=variables: model.apply(
        variables, x_D[None], method=model.encode)[0]
    jacobian = losses.contractive_penalty(encode_one, x[:num_jacobian].reshape(num_jacobian, -1)).mean()
    near_zero = jnp.mean(jnp.abs(outputs[name].z) < 0.05)
    print(f'{name:13s} {recon_clean:11.1f} {recon_noisy:11.1f} {jacobian:9.3g} {near_zero:9.0%}')
