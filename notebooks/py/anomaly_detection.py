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
# # Anomaly detection with autoencoders
#
# An autoencoder trained only on *normal* data reconstructs normal data well
# and everything else badly, so its error is an anomaly score (Sakurada &
# Yairi 2014). A VAE offers likelihood-based scores too. We follow the
# one-class protocol of Ruff et al. (2018): train on the images of one digit,
# call that digit normal and every other digit anomalous, and score the whole
# test split.
#
# Scores (`ae_jax.applications.anomaly`, higher = more anomalous):
#
# * `reconstruction_error`: mean squared error of the reconstruction (any autoencoder);
# * `negative_elbo`: −ELBO, the VAE's training loss (VAE);
# * `iwae_nll`: −log p(x) estimated with K importance samples (Burda et al. 2016) (VAE);
# * `reconstruction_probability`: −E_q[log p(x|z)], after An & Cho 2015 (VAE).

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
FULL = False  # True: 1,000 steps per model, 100 importance samples, all ten digits in the protocol.

from experiments.configs import undercomplete
from experiments.configs.apps import anomaly as anomaly_config

NORMAL_CLASS = 7
config = anomaly_config.get_config()  # The MLP VAE (784-400-20) and the protocol's settings.
ae_config = undercomplete.get_config()  # An autoencoder, for its reconstruction error.
settings = config.anomaly
if not FULL:
    config.train.num_train_steps = ae_config.train.num_train_steps = 400
    settings.iwae_samples = 20
    settings.classes = tuple(sorted({1, NORMAL_CLASS}))
ae_config.data.batch_size = config.data.batch_size
for c in (config, ae_config):
    c.train.log_every_steps = 5  # Train metrics for the curves below.
    c.train.progress_bar = False
print('VAE:', config.model.to_dict(), ' steps:', config.train.num_train_steps)
print('protocol:', {k: settings[k] for k in ('classes', 'validation_fraction', 'quantile',
                                              'iwae_samples', 'recon_samples')})

# %%
import json
import os
import tempfile

import jax
import matplotlib.pyplot as plt
import numpy as np
from sklearn import metrics as sk_metrics

from ae_jax import data
from ae_jax import notebook_utils as nbu
from ae_jax import training
from ae_jax.applications import anomaly
from experiments import anomaly as anomaly_script

# ae_jax.applications selects matplotlib's file-only backend for the launcher;
# this brings back inline figures.
# %matplotlib inline

print('JAX', jax.__version__, 'on', jax.devices())
train_images, train_labels = data.load_arrays(config.data.name, 'train')
test_images, test_labels = data.load_arrays(config.data.name, 'test')

# %% [markdown]
# ## Train on normal data only
#
# `anomaly.one_class_split` takes the train images of the normal digit and
# holds out a tenth of them: normal data the model never saw, to set the
# threshold with. `anomaly_script.class_config` (from `python -m
# experiments.anomaly`) puts those images where the config names its dataset:
# the data pipeline reads arrays as well as named datasets.
# `training.train_or_restore` trains the config's recipe into a work
# directory and returns the model and its variables.

# %%
root = tempfile.mkdtemp(prefix='ae_jax_anomaly_')


def fit(config, images, digit):
    """Trains `config`'s model on `images` of `digit`; returns (model, variables,
    the train loss every 5 steps)."""
    workdir = os.path.join(root, f'{config.recipe}_{digit}')
    model, variables = training.train_or_restore(
        anomaly_script.class_config(config, images, digit), workdir)
    with open(os.path.join(workdir, 'model', 'metrics.jsonl')) as f:
        losses = [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']
    return model, variables, np.array(losses)


normal_train, normal_val = anomaly.one_class_split(
    train_images, train_labels, NORMAL_CLASS,
    validation_fraction=settings.validation_fraction, seed=settings.seed)
print(f'digit {NORMAL_CLASS}: {len(normal_train)} train, {len(normal_val)} validation images')
vae, vae_variables, vae_losses = fit(config, normal_train, NORMAL_CLASS)
ae, ae_variables, ae_losses = fit(ae_config, normal_train, NORMAL_CLASS)
for name, losses in (('VAE', vae_losses), ('AE', ae_losses)):
    print(f'{name} train loss: first 20 steps {losses[:4].mean():.1f} -> last 20 steps {losses[-4:].mean():.1f}')

# %% [markdown]
# ## Score the test split
#
# `anomaly.anomaly_scores` returns every score the model supports. The VAE
# scores share their posterior samples; example n draws them from
# `fold_in(key, n)`, so a score does not depend on the batch it was computed in.

# %%
key = jax.random.key(settings.seed)
score_kwargs = dict(iwae_samples=settings.iwae_samples, recon_samples=settings.recon_samples,
                    chunk_size=settings.chunk_size, batch_size=settings.batch_size)
test_scores = anomaly.anomaly_scores(vae, vae_variables, test_images, key, **score_kwargs)
val_scores = anomaly.anomaly_scores(vae, vae_variables, normal_val, key, **score_kwargs)
test_scores['AE reconstruction_error'] = anomaly.anomaly_scores(
    ae, ae_variables, test_images, key, scores=['reconstruction_error'])['reconstruction_error']
val_scores['AE reconstruction_error'] = anomaly.anomaly_scores(
    ae, ae_variables, normal_val, key, scores=['reconstruction_error'])['reconstruction_error']
is_anomaly = test_labels != NORMAL_CLASS
print(f'test split: {np.sum(~is_anomaly)} normal, {np.sum(is_anomaly)} anomalous')

# %% [markdown]
# ## How well each score separates the classes
#
# ROC-AUC and PR-AUC (average precision) need no threshold. For a decision we
# flag a test image when its score exceeds the 95th percentile of the scores
# of the held-out normal images, so about 5% of normal data is flagged by
# design (the false positive rate).

# %%
results = anomaly.evaluate_scores(val_scores, test_scores, is_anomaly, quantile=settings.quantile)
print(f"{'score':27s} {'ROC-AUC':>8s} {'PR-AUC':>7s} {'precision':>9s} {'recall':>7s} {'FPR':>6s}")
for name, r in results.items():
    print(f"{name:27s} {r['roc_auc']:8.3f} {r['pr_auc']:7.3f} {r['precision']:9.3f} "
          f"{r['recall']:7.3f} {r['false_positive_rate']:6.3f}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
score_name = 'iwae_nll'
bins = np.linspace(*np.percentile(test_scores[score_name], [0, 99]), 60)
axes[0].hist(test_scores[score_name][~is_anomaly], bins=bins, alpha=0.7, density=True,
             label=f'normal (digit {NORMAL_CLASS})')
axes[0].hist(test_scores[score_name][is_anomaly], bins=bins, alpha=0.7, density=True,
             label='anomalous (other digits)')
axes[0].axvline(results[score_name]['threshold'], color='k', ls='--', label='threshold')
axes[0].set(xlabel=f'{score_name} (nats)', title='score distributions')
axes[0].legend()
for name, scores in test_scores.items():
    fpr, tpr, _ = sk_metrics.roc_curve(is_anomaly, scores)
    axes[1].plot(fpr, tpr, label=f"{name} ({results[name]['roc_auc']:.3f})")
axes[1].plot([0, 1], [0, 1], color='grey', lw=0.5)
axes[1].set(xlabel='false positive rate', ylabel='true positive rate', title='ROC curves')
axes[1].legend(fontsize=8)
fig.tight_layout()

# %% [markdown]
# ## What the model finds normal and strange
#
# The test images with the lowest and the highest scores, and the mean score
# of each digit: the digits that share strokes with the normal one are the
# hardest to tell apart.

# %%
order = np.argsort(test_scores[score_name])
nbu.show_image_rows({'least anomalous': test_images[order[:10]],
                     'most anomalous': test_images[order[::-1][:10]]},
                    title=f'test images ranked by {score_name}');

fig, ax = plt.subplots(figsize=(7, 2.8))
means = [test_scores[score_name][test_labels == d].mean() for d in range(10)]
ax.bar(range(10), means, color=['tab:green' if d == NORMAL_CLASS else 'tab:red' for d in range(10)])
ax.set(xticks=range(10), xlabel='digit', ylabel=f'mean {score_name}', title='mean score per digit');

# %% [markdown]
# ## The one-class protocol
#
# Each digit in turn is the normal class (here the digits in
# `settings.classes`; all ten with `FULL = True`, as in Ruff et al.), and the
# ROC-AUC of each score is averaged over them. `python -m experiments.anomaly`
# runs the same protocol from a shell, with checkpoints and figures.

# %%
per_class = {}
for digit in settings.classes:
    digit_train, digit_val = anomaly.one_class_split(
        train_images, train_labels, digit,
        validation_fraction=settings.validation_fraction, seed=settings.seed)
    if digit == NORMAL_CLASS:  # Trained above, on the same split.
        model, variables = vae, vae_variables
    else:
        model, variables, _ = fit(config, digit_train, digit)
    per_class[digit] = anomaly.evaluate_scores(
        anomaly.anomaly_scores(model, variables, digit_val, key, **score_kwargs),
        anomaly.anomaly_scores(model, variables, test_images, key, **score_kwargs),
        test_labels != digit, quantile=settings.quantile)
print(anomaly.format_table(per_class, metric='roc_auc'))

# %% [markdown]
# Do not expect the likelihood scores to win. In one `FULL = True` run of this
# notebook (all ten digits, 1,000 steps, K = 100), the mean ROC-AUC was 0.957
# for the reconstruction error and 0.917 for the IWAE estimate of −log p(x);
# the gap was widest when 8 or 2 was the normal digit. A likelihood rewards
# images that are easy to encode, and a 1, with few ink pixels, is easy for
# almost any model of digits: generative models can assign higher likelihood
# to inputs unlike their training data (Nalisnick et al. 2019, "Do deep
# generative models know what they don't know?").
