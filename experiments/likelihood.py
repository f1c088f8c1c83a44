"""Importance-weighted test log-likelihood of a trained run (Burda et al. 2016).

  python -m experiments.likelihood --config=experiments/configs/ladder_vae.py \
      --workdir=runs/ladder_vae --num_samples=1000
  python -m experiments.likelihood --config=experiments/configs/vae.py \
      --config.data.name=fashion_mnist --config.data.binarize=True \
      --workdir=runs/vae --num_samples=5000 --num_examples=1000

--config must be the config the run in --workdir was trained with (the same
overrides); the latest checkpoint of its first stage (--workdir/model/) is
restored. The test images are the config's eval split, the first
--num_examples of them (0: all). With `data.binarize` they are binarized once,
x ~ Bernoulli(pixels) from numpy's default_rng(--binarize_seed), so two runs
scored with the same seed see the same binary test set. For every image the K = --num_samples
importance-weighted bound L_K is computed (`ae_jax.likelihood`), together
with the K-sample ELBO estimate (the mean of the same K log weights), and the
active units of each stochastic layer. Prints nats and bits per dimension and
writes them to --workdir/likelihood_k<K>_n<N>.json (or --output), and the
per-example L_K beside it (<json name>_per_example.npy).

MLP VAEs (vae, beta_vae, iwae), conv VAEs and ladder VAEs (recipes 'vae' and
'ladder') are supported.
"""

from __future__ import annotations

import os
import time

from absl import flags
import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import data as data_lib
from ae_jax import likelihood
from ae_jax import training
from ae_jax.applications import common
from ae_jax.recipes import common as recipe_common
from experiments import cli


def test_images(config, *, num_examples: int = 0, binarize_seed: int = 0) -> np.ndarray:
  """The eval split's images (the first `num_examples`, 0 for all), binarized if the
  config trains on binarized data."""
  if num_examples < 0:
    raise ValueError(f'num_examples must be >= 0, got {num_examples}.')
  images, _ = data_lib.load_arrays(config.data.name, config.data.eval_split,
                                   data_dir=config.data.get('data_dir'))
  if num_examples:
    images = images[:num_examples]
  images = np.asarray(images, np.float32)
  if config.data.binarize:
    noise = np.random.default_rng(binarize_seed).random(images.shape, dtype=np.float32)
    images = (noise < images).astype(np.float32)
  return images


def posterior_means(model, variables, images: np.ndarray, *, batch_size: int = 500
                    ) -> list[np.ndarray]:
  """E_q[z | x] per stochastic layer (one for a one-layer VAE), each [N, Z_i]."""
  if hasattr(model, 'posterior_means'):  # A hierarchy (the ladder VAE): every layer's.
    fn = jax.jit(lambda x: model.apply(variables, x, method='posterior_means'))
  else:
    fn = jax.jit(lambda x: (model.apply(variables, x, method='encode')[0],))
  parts = [fn(jnp.asarray(images[i:i + batch_size])) for i in range(0, len(images), batch_size)]
  return [np.concatenate([np.asarray(p[layer]) for p in parts]) for layer in range(len(parts[0]))]


def run(config, workdir: str, *, num_samples: int = 1000, num_examples: int = 0,
        chunk_size: int = 100, batch_size: int = 50, seed: int = 0, binarize_seed: int = 0,
        output: str | None = None) -> dict:
  """Scores the run in `workdir`; returns what it writes to the json file."""
  model, variables = training.restore_variables(config, workdir)
  if not likelihood.supports(model):
    raise ValueError(f'config.model.name={config.model.name!r}: the importance-weighted '
                     'likelihood needs a mlp_vae, conv_vae or ladder_vae.')
  images = test_images(config, num_examples=num_examples, binarize_seed=binarize_seed)
  print(f'{recipe_common.title(config)} from {workdir}: L_K with K={num_samples} on '
        f'{len(images)} {config.data.name} {config.data.eval_split} images'
        + (' (binarized)' if config.data.binarize else ''), flush=True)
  start = time.time()
  last = [start]

  def progress(done, total):
    if time.time() - last[0] > 30 or done == total:
      last[0] = time.time()
      print(f'  {done}/{total} images, {time.time() - start:.0f} s', flush=True)

  result = likelihood.evaluate_log_likelihood(
      model, variables, images, jax.random.key(seed), num_samples=num_samples,
      chunk_size=chunk_size, batch_size=batch_size, progress=progress)
  seconds = time.time() - start
  means = posterior_means(model, variables, images)
  summary = {
      'workdir': os.path.abspath(workdir), 'recipe': config.recipe,
      'model': config.model.to_dict(), 'loss': config.loss.to_dict(),
      'dataset': config.data.name, 'split': config.data.eval_split,
      'binarized': bool(config.data.binarize), 'binarize_seed': binarize_seed, 'seed': seed,
      'num_samples': num_samples, 'num_examples': result['num_examples'],
      'num_dims': result['num_dims'],
      'log_likelihood_nats': result['nats'], 'nll_nats': result['nll_nats'],
      'stderr_nats': result['stderr_nats'], 'nll_bits_per_dim': result['bits_per_dim'],
      'elbo_nats': result['elbo_nats'],
      'elbo_bits_per_dim': float(likelihood.bits_per_dim(result['elbo_nats'],
                                                         result['num_dims'])),
      'active_units_per_layer': [likelihood.active_units(m) for m in means],
      'units_per_layer': [int(m.shape[1]) for m in means],
      'seconds': seconds,
  }
  path = output or os.path.join(workdir, f'likelihood_k{num_samples}_n{len(images)}.json')
  common.write_json(path, summary)
  # Per-example L_K, for paired comparisons of two runs scored on the same images.
  np.save(os.path.splitext(path)[0] + '_per_example.npy', result['log_likelihood'])
  print(f'IWAE (K={num_samples}) test NLL: {summary["nll_nats"]:.2f} ± '
        f'{summary["stderr_nats"]:.2f} nats = {summary["nll_bits_per_dim"]:.4f} bits/dim; '
        f'-ELBO: {-summary["elbo_nats"]:.2f} nats; active units per layer: '
        f'{summary["active_units_per_layer"]} of {summary["units_per_layer"]}; '
        f'{seconds:.0f} s. Wrote {path}', flush=True)
  return summary


if __name__ == '__main__':
  _NUM_SAMPLES = flags.DEFINE_integer('num_samples', 1000, 'K, importance samples per image.')
  _NUM_EXAMPLES = flags.DEFINE_integer('num_examples', 0, 'Test images scored (0: all).')
  _CHUNK = flags.DEFINE_integer('chunk_size', 100, 'Samples evaluated at once per image.')
  _BATCH = flags.DEFINE_integer('batch_size', 50, 'Images per jitted call.')
  _SEED = flags.DEFINE_integer('seed', 0, 'Seed of the importance samples.')
  _BIN_SEED = flags.DEFINE_integer('binarize_seed', 0, 'Seed of the test-set binarization.')
  _OUTPUT = flags.DEFINE_string('output', None, 'JSON path (default: in --workdir).')
  cli.run_app(
      lambda config, workdir: run(
          config, workdir, num_samples=_NUM_SAMPLES.value, num_examples=_NUM_EXAMPLES.value,
          chunk_size=_CHUNK.value, batch_size=_BATCH.value, seed=_SEED.value,
          binarize_seed=_BIN_SEED.value, output=_OUTPUT.value),
      config_help='The config the run in --workdir was trained with.')
