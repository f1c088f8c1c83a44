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
# # VQ-VAE: a discrete code and its codebook
#
# A VQ-VAE (van den Oord et al. 2017) encodes a 28×28 digit into a 7×7 grid
# of vectors z_e and replaces each by its nearest entry in a codebook of K
# vectors, so the code is a 7×7 grid of integers in [0, K). The decoder sees
# only the chosen codebook entries. Gradients pass the non-differentiable
# lookup with the straight-through estimator; the encoder is held near its
# codes by the commitment loss β‖z_e − sg[e]‖², and the codebook follows the
# encoder outputs assigned to it, here by exponential moving averages (EMA,
# the paper's Appendix A.1).
#
# We train `ae_jax.models.VQVAE` with the config `experiments/configs/vqvae.py`
# (K = 64 codes of size 16) and look at reconstructions, at how the codebook is
# used, and at what each code stands for.

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

from experiments.configs import vqvae as vqvae_config

config = vqvae_config.get_config()
# The paper's decoder output is linear, scored by MSE against the image. Through
# a sigmoid, MSE has vanishing gradients once the decoder paints every pixel
# black (most MNIST pixels are), and the model collapses onto one code.
with config.unlocked():
    config.loss.output_activation = 'identity'
if not FULL:
    config.data.batch_size = 32
    config.train.num_train_steps = 300
print('model:', config.model.to_dict())
print('loss:', config.loss.to_dict(), ' learning rate:', config.optim.learning_rate)

# %%
import jax
import jax.numpy as jnp
import matplotlib.pyplot as plt
import numpy as np

from ae_jax import data
from ae_jax import notebook_utils as nbu
from ae_jax import objectives
from ae_jax import train
from ae_jax.recipes import common
from ae_jax.recipes import vqvae as vqvae_recipe

print('JAX', jax.__version__, 'on', jax.devices())
test_images, test_labels = data.load_arrays(config.data.name, 'test')

# %% [markdown]
# ## Model and state
#
# With the EMA codebook the codebook is not a parameter: it lives, with its
# running counts, in the `'vq_stats'` collection. The train state carries it as
# `model_state`, and the objective is *stateful*: it returns the updated
# statistics, which the step stores in the new state.

# %%
model = common.build_model(config.model, vqvae_recipe.MODELS)
objective = common.build_objective(objectives.make_vqvae_objective, model, config.loss)
tx = common.build_optimizer(config.optim)

init_key, train_key = jax.random.split(jax.random.key(config.train.seed))
variables = model.init(init_key, jnp.asarray(test_images[:1]), train=False)
state = train.create_train_state({'params': variables['params']}, tx,
                                 model_state={'vq_stats': variables['vq_stats']})
print('vq_stats:', jax.tree.map(jnp.shape, variables['vq_stats']))
print(f"{sum(p.size for p in jax.tree.leaves(variables['params'])):,} trained parameters")

# %% [markdown]
# ## Training
#
# Besides the losses the step reports two codebook statistics of each batch:
# the *perplexity* exp(H), H the entropy of the code frequencies (K if all codes
# were used equally, 1 if only one were), and the *usage*, the share of codes
# used at least once.

# %%
train_step = train.make_train_step(objective, tx)
batches = data.batches(config.data.name, 'train', batch_size=config.data.batch_size,
                       seed=config.data.shuffle_seed)
history = {'recon': [], 'commitment': [], 'perplexity': [], 'usage': []}
for _ in range(config.train.num_train_steps):
    state, metrics = train_step(state, jax.tree.map(jnp.asarray, next(batches)), train_key)
    for name in history:
        history[name].append(metrics[name])
history = {name: np.asarray(jax.device_get(values)) for name, values in history.items()}
train.check_finite_metrics(metrics, int(state.step))

window = 20
print(f"train recon (MSE per pixel): first {window} steps {history['recon'][:window].mean():.4f}"
      f" -> last {window} steps {history['recon'][-window:].mean():.4f}")
nbu.plot_curves(history, title='training (per batch)', logy=('recon', 'commitment'));

# %% [markdown]
# ## Reconstructions
#
# Everything the decoder knows about a digit is 49 integers in [0, 64):
# 49 × 6 = 294 bits, against 784 bytes for the image. The decoder's linear
# output is the image itself; we clip it to [0, 1] to draw it.

# %%
def to_images(logits):
    return jnp.clip(logits, 0.0, 1.0)


variables = {**state.params, **state.model_state}
x = jnp.asarray(test_images)
out = model.apply(variables, x, train=False)
test_mse = float(jnp.mean((out.logits - x) ** 2))
print(f'test MSE per pixel: {test_mse:.4f};  code grid {out.indices.shape[1:]} of '
      f'{config.model.num_codes} codes')
nbu.show_image_rows({'input': x[:12], 'reconstruction': to_images(out.logits[:12])});

# %% [markdown]
# ## Codebook usage
#
# How often each code is chosen over the test set. A VQ-VAE can collapse onto
# a few codes ("codebook collapse"); the EMA update and the commitment loss
# make that less likely, and `dead_code_threshold` (an option of the model)
# restarts codes that go unused.

# %%
num_codes = config.model.num_codes
counts = np.bincount(np.asarray(out.indices).ravel(), minlength=num_codes)
frequencies = counts / counts.sum()
used = frequencies > 0
perplexity = np.exp(-np.sum(frequencies[used] * np.log(frequencies[used])))
print(f'test set: {used.sum()} of {num_codes} codes used, perplexity {perplexity:.1f}')

order = np.argsort(-counts)
fig, ax = plt.subplots(figsize=(9, 2.8))
ax.bar(np.arange(num_codes), frequencies[order])
ax.set(xlabel='codes, most used first', ylabel='share of positions', yscale='log',
       title='code frequencies on the test set');

# %% [markdown]
# ## The code of a digit
#
# Each digit's 7×7 grid of indices, one colour per code.

# %%
fig, axes = plt.subplots(2, 8, figsize=(12, 3.3))
for i in range(8):
    axes[0, i].imshow(test_images[i, ..., 0], cmap='gray')
    axes[1, i].imshow(np.asarray(out.indices[i]), cmap='nipy_spectral', vmin=0, vmax=num_codes - 1)
    for ax in axes[:, i]:
        ax.set_xticks([])
        ax.set_yticks([])
axes[0, 0].set_ylabel('digit')
axes[1, 0].set_ylabel('code indices')
fig.tight_layout()

# %% [markdown]
# ## What each code stands for
#
# Grid position (i, j) sits over the 4×4 pixel patch at rows 4i..4i+3 and
# columns 4j..4j+3 (the encoder's receptive field is wider, but this patch is
# what the position mostly describes). Averaging, for each code, the patches
# it was chosen for shows what it stands for: blank background, stroke edges
# at various angles, solid ink. Several codes share the background (and the
# border positions, which the encoder tells apart by their zero padding), so
# the grids above vary even where the digit is blank.

# %%
h, w = out.indices.shape[1:]
patches = test_images[..., 0].reshape(len(test_images), h, 28 // h, w, 28 // w).transpose(0, 1, 3, 2, 4)
patches = patches.reshape(-1, 28 // h, 28 // w)
flat_indices = np.asarray(out.indices).ravel()
used_codes = [int(k) for k in order if counts[k] > 0]
mean_patches = np.stack([patches[flat_indices == k].mean(0) for k in used_codes])[..., None]
background_codes = int(np.sum(mean_patches.mean(axis=(1, 2, 3)) < 0.05))
print(f'{background_codes} of the {len(used_codes)} used codes stand for (nearly) blank patches')
nbu.show_images(mean_patches, ncols=16, scale=0.5, title='mean 4x4 patch per code, most used first');

# %% [markdown]
# ## Why a VQ-VAE needs a prior
#
# Grids drawn position by position from the code frequencies above decode to
# scraps, not digits: the positions of a real code depend on each other. The
# paper fits an autoregressive prior (PixelCNN) over the grids to sample;
# `python -m experiments.main --config=experiments/configs/apps/vq_prior.py`
# trains one (a gated PixelCNN, the `prior` stage of the `vqvae` recipe) on
# the frozen VQ-VAE's grids and decodes its samples.

# %%
rng = np.random.default_rng(0)
random_grids = rng.choice(num_codes, size=(8, *out.indices.shape[1:]), p=frequencies)
scraps = to_images(model.apply(variables, jnp.asarray(random_grids), method=model.decode_indices))
nbu.show_images(scraps, ncols=8, title='independent codes from their frequencies');

# %% [markdown]
# To compare with a codebook trained by gradient (the codebook loss
# ‖sg[z_e] − e‖² instead of the EMA), set `config.model.ema = False` above
# and run again.
