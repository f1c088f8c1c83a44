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
# # Data-parallel training: `pmap` and `jit` over a `NamedSharding` mesh
#
# `ae_jax.parallel` runs the library's one update rule (`train.train_step_fn`)
# on several devices in two ways:
#
# * **`jax.jit` with shardings** (recommended): the batch is one global array
#   split along a 1-D `'data'` mesh, the state is replicated, and XLA inserts
#   the gradient all-reduce. The program is the single-device program.
# * **`jax.pmap`** (maintenance mode in JAX, kept for older code): one copy of
#   the state per device, the batch reshaped to [devices, B / devices, ...],
#   gradients averaged with `lax.pmean`.
#
# Both apply the update that one device would apply to the whole batch. This
# notebook checks that, step by step, from the same start and the same batches,
# then trains with `ae_jax.training.fit`, the loop behind the launcher, which
# takes the `jit` path by itself on several devices.
#
# On a Colab TPU runtime it uses the TPU's cores. Anywhere else it asks XLA for
# four fake CPU devices, which must happen before JAX starts, hence the cell
# after the install cell: restart the kernel if you imported JAX before it.

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
# Devices: the TPU's if JAX has its TPU backend (libtpu), else fake CPU devices.
NUM_FAKE_DEVICES = 4
if 'jax' in sys.modules:
    print('JAX is already imported: restart the kernel for these settings to apply.')
if importlib.util.find_spec('libtpu') is None:
    os.environ['JAX_PLATFORMS'] = 'cpu'
    xla_flags = os.environ.get('XLA_FLAGS', '')
    if 'xla_force_host_platform_device_count' not in xla_flags:
        xla_flags += f' --xla_force_host_platform_device_count={NUM_FAKE_DEVICES}'
    # One thread per fake device: with fake devices sharing a few cores, an
    # asynchronously dispatched all-reduce can deadlock otherwise.
    xla_flags += ' --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1'
    os.environ['XLA_FLAGS'] = xla_flags.strip()

# %%
FULL = False  # True: a longer data-parallel run at the end (2,000 steps).

import json
import os
import tempfile

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import data
from ae_jax import notebook_utils as nbu
from ae_jax import objectives
from ae_jax import parallel
from ae_jax import recipes
from ae_jax import train
from ae_jax import training
from ae_jax.recipes import autoencoder as autoencoder_recipe
from ae_jax.recipes import common as recipe_common
from experiments.configs import denoising, undercomplete

num_devices = jax.device_count()
print('JAX', jax.__version__, f'with {num_devices} devices:', jax.devices())

# %% [markdown]
# ## One model, one start, the same batches
#
# The undercomplete MLP autoencoder of `experiments/configs/undercomplete.py`,
# its model, objective and optimizer built from the config's sections by the
# helpers the recipes use (`ae_jax.recipes.common`). The global batch must
# divide evenly over the devices. We keep the batches on the host and hand the
# same ones to each path.

# %%
config = undercomplete.get_config()
config.data.batch_size = 16 * num_devices
num_compare_steps = 5

model = recipe_common.build_model(config.model, autoencoder_recipe.MODELS)
objective = recipe_common.build_objective(objectives.make_autoencoder_objective, model,
                                          config.loss)
tx = recipe_common.build_optimizer(config.optim)
init_key, train_key = jax.random.split(jax.random.key(config.train.seed))
batch_iterator = data.batches(config.data.name, 'train', batch_size=config.data.batch_size,
                              seed=config.data.shuffle_seed)
host_batches = [next(batch_iterator) for _ in range(num_compare_steps)]
params = model.init(init_key, jnp.asarray(host_batches[0]['image'][:1]))
print('global batch', host_batches[0]['image'].shape, f'= {num_devices} devices x '
      f'{config.data.batch_size // num_devices} examples')

# %% [markdown]
# ## The three steps
#
# Each function starts from the same parameters and takes the same steps with
# the optimizer `tx` it is given.
# `donate=False` keeps the input state's buffers alive (donation would free
# `params`, which the next path reuses). We wait for every step to finish
# (`jax.block_until_ready`): on fake CPU devices this also avoids a rare
# deadlock of queued all-reduces.

# %%
def run_single_device(objective, tx, batches):
    state = train.create_train_state(params, tx)
    step = train.make_train_step(objective, tx, donate=False)
    for batch in batches:
        state, _ = step(state, jax.tree.map(jnp.asarray, batch), train_key)
        jax.block_until_ready(state)
    return state


def run_pmap(objective, tx, batches):
    state = parallel.replicate(train.create_train_state(params, tx))  # leaves [devices, ...]
    step = parallel.make_pmap_train_step(objective, tx, donate=False)
    for batch in batches:
        state, _ = step(state, parallel.split_batch(batch), train_key)  # batch [devices, B/devices, ...]
        jax.block_until_ready(state)
    return parallel.unreplicate(state)


mesh = parallel.make_mesh()


def run_sharded(objective, tx, batches):
    state = parallel.replicate_on_mesh(train.create_train_state(params, tx), mesh)
    step = parallel.make_sharded_train_step(objective, tx, mesh, donate=False)
    for batch in batches:
        state, _ = step(state, parallel.shard_batch(batch, mesh), train_key)
        jax.block_until_ready(state)
    return state


def max_difference(a, b):
    return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
               for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))

# %% [markdown]
# How the jit path lays data out: the batch is split by rows over the mesh's
# `'data'` axis, the state is replicated on every device.

# %%
sharded_batch = parallel.shard_batch(host_batches[0], mesh)
print('mesh:', mesh)
print('batch sharding:', sharded_batch['image'].sharding)
jax.debug.visualize_array_sharding(sharded_batch['image'].reshape(config.data.batch_size, -1))
replicated = parallel.replicate_on_mesh(params, mesh)
print('first kernel sharding:', replicated['params']['encoder']['layers_0']['kernel'].sharding)

# %% [markdown]
# ## Same parameters
#
# After the steps, the largest absolute difference between the single-device
# parameters and each data-parallel path's, next to how far the parameters
# moved. Summing the gradient over devices in another order changes the last
# bits of float32, so the paths agree to rounding, not bit for bit. With SGD
# that is ~1e-8. Adam divides each gradient by its running RMS, which
# magnifies the rounding of gradients that are nearly zero (a weight whose
# gradient is ±1e-10 of rounding noise still moves by a sizeable fraction of
# the learning rate), so its differences are larger, though still small
# against the parameters' moves.

# %%
sgd = recipe_common.build_optimizer(dict(name='sgd', learning_rate=1e-4, momentum=0.9))
print(f"{'optimizer':9s} {'moved':>8s} {'|single-pmap|':>14s} {'|single-sharded|':>17s}")
for tx_name, optimizer in (('sgd', sgd), ('adam', tx)):
    single = run_single_device(objective, optimizer, host_batches)
    pmapped = run_pmap(objective, optimizer, host_batches)
    sharded = run_sharded(objective, optimizer, host_batches)
    print(f'{tx_name:9s} {max_difference(single.params, params):8.2g} '
          f'{max_difference(single.params, pmapped.params):14.2g} '
          f'{max_difference(single.params, sharded.params):17.2g}')

# %% [markdown]
# ## Randomness: where the two paths differ
#
# The denoising objective draws noise every step. Under `jit` with shardings the
# noise is drawn as one global array from the step's key, so it is the noise
# one device would draw, and the parameters match again. Under `pmap` each
# replica folds its index into the key, so each shard gets independent noise,
# and the result is a different, equally valid, sample: it does not match.

# %%
denoising_config = denoising.get_config()
denoising_objective = recipe_common.build_objective(
    objectives.make_denoising_objective,
    recipe_common.build_model(denoising_config.model, autoencoder_recipe.MODELS),
    denoising_config.loss, drop=('objective',))
single_noisy = run_single_device(denoising_objective, sgd, host_batches)
print(f'denoising, sgd: max |single - sharded| = '
      f'{max_difference(single_noisy.params, run_sharded(denoising_objective, sgd, host_batches).params):.2g}')
print(f'denoising, sgd: max |single - pmap|    = '
      f'{max_difference(single_noisy.params, run_pmap(denoising_objective, sgd, host_batches).params):.2g}'
      '  (different noise, by design)')

# %% [markdown]
# ## Training data-parallel
#
# `training.fit` trains a recipe's stage (its model, pure train and eval
# steps, data and schedule) with the one training loop. On more than one
# device it jits the step with `parallel.shard_train_step`, the path above:
# the batch split over the mesh, the state and key replicated; metrics come
# back replicated, so reading them needs no gathering. On fake CPU devices
# this is no faster than one device (they share the same cores); on a TPU
# each core takes its share.

# %%
config.train.num_train_steps = 2000 if FULL else 200
config.train.log_every_steps = 1
config.train.progress_bar = False
stage = recipes.get(config.recipe).make_stage(config, 'model', {})
workdir = tempfile.mkdtemp(prefix='ae_jax_multi_device_')
trained = training.fit(stage, workdir)
with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    losses = [r['loss'] for r in map(json.loads, f) if r['split'] == 'train']
print(f'train loss: first 20 steps {np.mean(losses[:20]):.1f} -> last 20 steps {np.mean(losses[-20:]):.1f}')
print(f"test loss after {int(trained.state.step)} steps: {trained.metrics['loss']:.1f}")
nbu.plot_curves({'loss': losses}, title=f'sharded training on {num_devices} devices', logy=('loss',));

# %% [markdown]
# ## More than one host
#
# The same code runs on several processes (a TPU pod slice): call
# `jax.distributed.initialize()` first, let each process load only its rows of
# every global batch (`parallel.process_batch_slice`, or
# `data.batches(..., process_index=jax.process_index(), process_count=jax.process_count())`),
# and `parallel.shard_batch` assembles the global array from the pieces. The
# recipes' data functions load only this process's rows, and `training.fit`
# (behind `python -m experiments.main`) checkpoints and resumes the same way on
# any number of hosts.
