"""The VQ-VAE, then (optionally) a gated PixelCNN prior over its code grids.

Stages:

  'model'  the VQ-VAE (`config.model.name` 'vqvae', `VQVAE`'s fields, the
           quantizer chosen by `quantizer_type`, see `ae_jax.quantizers`; an EMA
           codebook keeps its statistics in the state's model state) trained by
           `objectives.make_vqvae_objective` with the `loss` section's
           hyperparameters, on the config's image splits.
  'prior'  only when the config has a `prior` section with
           `num_train_steps > 0` (experiments/configs/apps/vq_prior.py adds
           one; experiments/configs/vqvae.py has none, so it trains the VQ-VAE
           alone). A `GatedPixelCNN` learns p(c) = Π_i p(c_i | c_<i) over the
           frozen VQ-VAE's code grids by cross-entropy
           (`applications.vq_prior.make_prior_objective`).

The prior's data are the code grids of the train split under the trained
VQ-VAE, encoded on first use (not in `make_stage`, which `restore` calls) and
kept for the stage's life. Its batch of step s is a function of s alone: rows
`(s - 1) mod E` of epoch `(s - 1) // E`'s order (`pipeline.epoch_order` with
`prior.seed`, E = `pipeline.steps_per_epoch`), so a resumed prior sees the
batches an uninterrupted one would. Its eval data are all test grids in
batches of `prior.eval_batch_size`, the last one padded (mask 0); the loop
averages the batches' means, so the exact test NLL over all grids comes from
`finish` (it equals the loop's when the batch size divides the test set).

The `prior` section (flat): `channels`, `num_layers`, `kernel_size` of the
PixelCNN; `learning_rate` (Adam); `batch_size`, `eval_batch_size`; the
schedule fields `num_train_steps`, `log_every_steps`, `eval_every_steps`,
`checkpoint_every_steps`, `keep_checkpoints`; `seed` (init and batch order);
`num_samples` (decoded samples per temperature) and `temperatures`.

Figures (workdir/figures): reconstructions.png, latent_map.png (the test
z_e grids flattened), training_curves.png; with the prior also
vq_code_usage.png (train codes), vq_prior_samples.png (test inputs, their
reconstructions from the code grids, decoded prior samples at each
temperature) and prior_training_curves.png, and workdir/vq_prior.json: the
prior's test NLL before and after training against the uniform (log K) and
code-frequency baselines, code usage and perplexity, the eval history.

References:
  van den Oord, Vinyals & Kavukcuoglu, "Neural Discrete Representation
  Learning", NeurIPS 2017, https://arxiv.org/abs/1711.00937;
  van den Oord et al., "Conditional Image Generation with PixelCNN Decoders",
  NeurIPS 2016, https://arxiv.org/abs/1606.05328.
"""

from __future__ import annotations

import functools
import json
import math
import os
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import models
from ae_jax.models import vqvae as vqvae_model
from ae_jax import objectives
from ae_jax import parallel
from ae_jax import train
from ae_jax.data import pipeline
from ae_jax.recipes import common
from ae_jax.recipes.base import Schedule
from ae_jax.recipes.base import Stage
from ae_jax.recipes.base import Trained

MODELS = {'vqvae': models.VQVAE}

_PRIOR_POSITIVE = ('channels', 'num_layers', 'batch_size', 'eval_batch_size', 'num_samples',
                   'log_every_steps', 'eval_every_steps', 'checkpoint_every_steps',
                   'keep_checkpoints')


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_vqvae_objective, model, config.loss)


def has_prior(config) -> bool:
  """Whether the config trains the PixelCNN prior (a `prior` section with steps)."""
  return 'prior' in config and config.prior.num_train_steps > 0


def _prior_model(config) -> models.GatedPixelCNN:
  cfg = config.prior
  return models.GatedPixelCNN(num_codes=config.model.num_codes, channels=cfg.channels,
                              num_layers=cfg.num_layers, kernel_size=cfg.kernel_size)


def _prior_optimizer(config):
  return common.build_optimizer(dict(name='adam', learning_rate=config.prior.learning_rate),
                                field='prior')


def _prior_schedule(config) -> Schedule:
  return Schedule.from_config(config.prior, progress_bar=config.train.progress_bar)


def _validate_prior(config) -> None:
  cfg = config.prior
  kind = common.build_model(config.model, MODELS).quantizer_kind
  if kind in ('residual', 'grouped'):
    raise ValueError(f"config.model.quantizer_type={kind!r} gives several indices per grid "
                     'position; the PixelCNN prior models one: use vq, vq_ema, fsq or lfq.')
  for field in _PRIOR_POSITIVE:
    if cfg[field] <= 0:
      raise ValueError(f'config.prior.{field} must be > 0, got {cfg[field]}.')
  if cfg.kernel_size < 3 or cfg.kernel_size % 2 == 0:
    raise ValueError(f'config.prior.kernel_size must be odd and >= 3, got {cfg.kernel_size}.')
  if not cfg.temperatures or min(cfg.temperatures) <= 0:
    raise ValueError(f'config.prior.temperatures must be > 0, got {tuple(cfg.temperatures)}.')
  for field in ('batch_size', 'eval_batch_size'):
    common.check_divisible(f'config.prior.{field}', cfg[field])
  _prior_optimizer(config)
  num_train = len(common.data_source(config, config.data.train_split))
  if cfg.batch_size > num_train:
    raise ValueError(f'config.prior.batch_size={cfg.batch_size} exceeds the {num_train} '
                     f'training grids of {config.data.name!r}.')


# The quantizer fields of config.model each quantizer reads (besides
# num_codes and code_dim, which all check); `validate` rejects the others
# unless they keep VQVAE's defaults.
_EMA_FIELDS = ('decay', 'epsilon', 'dead_code_threshold', 'kmeans_init', 'kmeans_iters')
_QUANTIZER_FIELDS = {
    'vq': ('gradient', 'cosine'),
    'vq_ema': ('gradient', 'cosine') + _EMA_FIELDS,
    'fsq': ('levels',),
    'lfq': ('entropy_weight', 'diversity_weight', 'entropy_temperature'),
    'residual': ('num_quantizers', 'quantizer_dropout', 'gradient') + _EMA_FIELDS,
    'grouped': ('num_groups', 'gradient', 'cosine') + _EMA_FIELDS,
}


def _check_quantizer_fields(config, model) -> None:
  """Every quantizer field of config.model is read by its quantizer (or keeps its default)."""
  kind = vqvae_model.check_quantizer(model)
  reads = set(_QUANTIZER_FIELDS[kind])
  if not vqvae_model.uses_ema(model):
    reads -= set(_EMA_FIELDS)
  every = sorted({f for fields in _QUANTIZER_FIELDS.values() for f in fields})
  defaults = {k: models.VQVAE.__dataclass_fields__[k].default for k in every}
  ema_why = ("only the EMA codebook (config.model.ema=True, or quantizer_type='vq_ema') reads "
             f'it (quantizer {kind!r})')
  why = f'quantizer {kind!r} reads only {sorted(reads)} of the quantizer fields'
  common.check_unused(
      config, {f'model.{f}': ema_why if f in _EMA_FIELDS and kind not in ('fsq', 'lfq') else why
               for f in every if f not in reads}, defaults)


def validate(config) -> None:
  common.validate_sections(config)
  model, _ = _model_and_objective(config)
  _check_quantizer_fields(config, model)
  if 'prior' in config:
    if config.prior.num_train_steps < 0:
      raise ValueError(f'config.prior.num_train_steps must be >= 0 (0: no prior), got '
                       f'{config.prior.num_train_steps}.')
    if has_prior(config):
      _validate_prior(config)


def stages(config) -> tuple[str, ...]:
  return ('model', 'prior') if has_prior(config) else ('model',)


def make_stage(config, name, trained):
  if name == 'prior':
    return _prior_stage(config, trained['model'])
  model, objective = _model_and_objective(config)
  x = common.example_images(config)
  return common.objective_stage(config, model=model, objective=objective,
                                init_variables=lambda key: model.init(key, x, train=False))


def code_grids(config, fitted: Trained, split: str) -> np.ndarray:
  """Code indices int32 [N, h, w] of the whole `split` under the fitted VQ-VAE."""
  from ae_jax.applications import vq_prior  # pylint: disable=g-import-not-at-top
  images, _ = common.load_arrays(config, split)
  return vq_prior.encode_indices(fitted.stage.model, fitted.variables, images)


def _grid_shape(config, fitted: Trained) -> tuple[int, int]:
  """(h, w) of the VQ-VAE's code grid, from shapes alone (nothing is encoded)."""
  vqvae = fitted.stage.model
  indices = jax.eval_shape(lambda v, x: vqvae.apply(v, x, train=False).indices,
                           fitted.variables, common.example_images(config))
  return tuple(indices.shape[1:])


def _prior_stage(config, fitted: Trained) -> Stage:
  # The applications package is imported here, not at the top: `import
  # ae_jax.recipes.vqvae` must not load it (it pulls in heavy modules).
  from ae_jax.applications import vq_prior  # pylint: disable=g-import-not-at-top
  cfg = config.prior
  prior = _prior_model(config)
  tx = _prior_optimizer(config)
  objective = vq_prior.make_prior_objective(prior)
  grid = _grid_shape(config, fitted)

  @functools.cache
  def grids(split: str) -> np.ndarray:
    return code_grids(config, fitted, split)

  def init(key):
    params = prior.init(key, jnp.zeros((1, *grid), jnp.int32))
    return train.create_train_state({'params': params['params']}, tx)

  def train_data(start_step: int) -> Iterator[dict[str, np.ndarray]]:
    codes = grids(config.data.train_split)
    size = cfg.batch_size
    per_epoch = pipeline.steps_per_epoch(len(codes), size)
    mine = parallel.process_batch_slice(size)
    epoch, order = None, None
    step = start_step
    while True:
      step += 1
      batch_epoch, position = divmod(step - 1, per_epoch)
      if batch_epoch != epoch:
        epoch = batch_epoch
        order = pipeline.epoch_order(len(codes), seed=cfg.seed, epoch=epoch)
      rows = order[position * size:(position + 1) * size]
      yield {'codes': codes[rows[mine]]}

  def eval_data() -> Iterator[dict[str, np.ndarray]]:
    codes = grids(config.data.eval_split)
    size = cfg.eval_batch_size
    mine = parallel.process_batch_slice(size)
    for start in range(0, len(codes), size):
      chunk = codes[start:start + size]
      pad = size - len(chunk)
      mask = np.concatenate([np.ones(len(chunk), np.float32), np.zeros(pad, np.float32)])
      chunk = np.concatenate([chunk, np.zeros((pad, *chunk.shape[1:]), chunk.dtype)])
      yield {'codes': chunk[mine], 'mask': mask[mine]}

  return Stage(name='prior', init=init, train_step=train.train_step_fn(objective, tx),
               eval_step=train.eval_step_fn(objective), train_data=train_data,
               eval_data=eval_data, schedule=_prior_schedule(config), seed=cfg.seed,
               model=prior)


def finish(config, trained, workdir) -> dict[str, float]:
  fitted = trained['model']
  apply = common.jit_apply(fitted.stage.model, train=False)
  common.write_figures(config, fitted, workdir, reconstruct=lambda v, x: apply(v, x).logits,
                       encode=lambda v, x: apply(v, x).z_e)
  if 'prior' not in trained:
    return {}
  return _finish_prior(config, fitted, trained['prior'], workdir)


def _output_activation(config) -> str:
  return config.loss.get('output_activation', 'sigmoid')


def _eval_history(fitted: Trained) -> list[dict]:
  path = os.path.join(fitted.workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return []
  with open(path) as f:
    records = [json.loads(line) for line in f]
  return [r for r in records if r['split'] == 'eval']


def _finish_prior(config, fitted: Trained, prior_fit: Trained, workdir: str
                  ) -> dict[str, float]:
  """The prior's exact test NLL against its baselines; its figures and vq_prior.json."""
  from ae_jax.applications import vq_prior  # pylint: disable=g-import-not-at-top
  cfg = config.prior
  vqvae, variables = fitted.stage.model, fitted.variables
  prior, params = prior_fit.stage.model, prior_fit.state.params
  num_codes = vqvae.num_codes
  train_codes = code_grids(config, fitted, config.data.train_split)
  test_codes = code_grids(config, fitted, config.data.eval_split)
  grid = tuple(test_codes.shape[1:])
  # The untrained prior: the state `fit` started from (its init key).
  init_key = jax.random.split(jax.random.key(prior_fit.stage.seed), 3)[0]
  initial = vq_prior.evaluate_prior(prior, jax.jit(prior_fit.stage.init)(init_key).params,
                                    test_codes)
  final = vq_prior.evaluate_prior(prior, params, test_codes)
  counts = np.bincount(train_codes.ravel(), minlength=num_codes)
  freq = counts[counts > 0] / counts.sum()
  metrics = {
      'prior/nats_per_code': final['nats_per_code'],
      'prior/bits_per_image': final['bits_per_image'],
      'prior/initial_nats_per_code': initial['nats_per_code'],
      'prior/uniform_nats_per_code': math.log(num_codes),
      'prior/unigram_nats_per_code': vq_prior.unigram_nats_per_code(train_codes, test_codes,
                                                                     num_codes),
      'prior/codes_used': float(np.sum(counts > 0)),
      'prior/code_perplexity': float(np.exp(-np.sum(freq * np.log(freq)))),
  }
  if jax.process_index() != 0:
    return metrics

  from ae_jax import plotting  # pylint: disable=g-import-not-at-top
  activation = _output_activation(config)
  n = cfg.num_samples
  test_x = common.eval_images(config, n)['image'][:n]
  rows = [test_x, vq_prior.decode_indices(vqvae, variables, test_codes[:n],
                                          output_activation=activation)]
  labels = ['test inputs', 'reconstructions']
  for t in cfg.temperatures:
    # One key for every temperature: the rows differ by the temperature alone.
    codes = vq_prior.sample_codes(prior, params, prior_fit.eval_key, n, grid, temperature=t)
    images = vq_prior.decode_indices(vqvae, variables, np.asarray(codes),
                                     output_activation=activation)
    if not np.all(np.isfinite(images)):
      raise FloatingPointError(f'Decoded prior samples at temperature {t} are not finite.')
    rows.append(images)
    labels.append(f'prior T={t:g}')
  plotting.save_code_usage(train_codes, num_codes,
                           plotting.figure_path(workdir, 'vq_code_usage.png'),
                           title=f'{config.data.name} train codes')
  plotting.save_image_rows(rows, plotting.figure_path(workdir, 'vq_prior_samples.png'),
                           row_labels=labels,
                           title=f'{config.data.name}: VQ-VAE reconstructions and gated '
                                 'PixelCNN prior samples')
  common.training_curves(prior_fit, workdir, 'prior_training_curves.png')
  summary = {
      'dataset': config.data.name, 'grid': list(grid), 'num_codes': num_codes,
      'codes_used': int(np.sum(counts > 0)),
      'code_perplexity': metrics['prior/code_perplexity'],
      'uniform_nats_per_code': metrics['prior/uniform_nats_per_code'],
      'unigram_nats_per_code': metrics['prior/unigram_nats_per_code'],
      'prior_initial_nats_per_code': initial['nats_per_code'],
      'prior_nats_per_code': final['nats_per_code'],
      'prior_bits_per_image': final['bits_per_image'],
      'prior_history': _eval_history(prior_fit),
  }
  with open(os.path.join(workdir, 'vq_prior.json'), 'w') as f:
    json.dump(summary, f, indent=2, sort_keys=True)
    f.write('\n')
  print(f"Prior test NLL: {initial['nats_per_code']:.4f} -> {final['nats_per_code']:.4f} "
        f"nats/code ({final['bits_per_image']:.1f} bits/image); baselines: uniform "
        f"{metrics['prior/uniform_nats_per_code']:.4f}, code frequencies "
        f"{metrics['prior/unigram_nats_per_code']:.4f} nats/code.", flush=True)
  return metrics
