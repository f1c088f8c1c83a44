"""The diffusion autoencoder: semantic encoder + conditional U-Net, then a latent DDPM.

Two stages, fitted by the one loop:

  'model'   the semantic encoder and the z_sem-conditioned DDPM U-Net
            (`models.DiffusionAutoencoder`, `objectives.make_diffusion_ae_objective`),
            trained like any model on the config's image splits;
  'latent'  a DDPM on z_sem (`models.LatentDenoiser`,
            `objectives.make_latent_ddpm_objective`) fitted on the frozen
            encoder's codes of the whole training split, normalised per
            dimension, and evaluated on the codes of the eval split. It exists
            when `config.diffusion.latent.num_train_steps > 0`.

The latent stage's data are the codes, encoded once on first use (never in
`make_stage`, which `training.restore` calls). Step s draws its batch of
`batch_size` codes with replacement from a generator seeded by
(`latent.seed`, s), so a resumed stage sees the codes an uninterrupted one
would. Every batch row also carries the training codes' mean and standard
deviation; the step normalises with them and keeps them in the state's
`model_state['latent_norm']`, so a checkpoint holds the normalisation that
sampling needs and a restored prior reads no data (step 0 holds mean 0, std 1).

Both stages keep an EMA of their weights in the optimizer state (`track_ema`,
decays `config.diffusion.ema_decay` and `config.diffusion.latent.ema_decay`):
it is checkpointed and resumed with the state, the eval steps score it, and
the latent codes, every metric, figure and sample below use it.

`finish` measures reconstruction on `config.diffusion.num_eval_examples` test
images — DDIM encode x_0 → x_T and decode back (`ddim_psnr`), and decode from
z_sem with a random x_T (`zsem_psnr`, and `zsem_psnr_untrained`: the same
for the untrained model and the same x_T, its baseline; DDIM's round trip is
exact for any noise predictor, so only z_sem shows learning), each the mean
per-image PSNR in dB of the outputs clipped to [0, 1], with the model's
`num_ddim_steps` — writes
them to workdir/diffusion_metrics.json with, when the latent stage exists,
the sample quality of `num_quality_samples` samples
(`applications.sample_quality.score`: a Fréchet distance in the features of
a small MNIST classifier cached in the workdir, its real-data floor, and the
nearest-training-image distances), and draws reconstructions.png,
interpolation.png (lerp z_sem, slerp x_T), samples.png (with the latent
stage), latent_map.png (test z_sem), training_curves.png and
latent_training_curves.png.

References:
  Preechakul et al., "Diffusion Autoencoders: Toward a Meaningful and
  Decodable Representation", CVPR 2022, https://arxiv.org/abs/2111.15640.
"""

from __future__ import annotations

import functools
import itertools
import json
import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ae_jax import data as data_lib
from ae_jax import models
from ae_jax import objectives
from ae_jax import parallel
from ae_jax import train
from ae_jax.applications import denoising
from ae_jax.applications import diffusion as diffusion_app
from ae_jax.models import diffusion
from ae_jax.recipes import common
from ae_jax.recipes.base import Schedule
from ae_jax.recipes.base import Stage

MODELS = {'diffusion_ae': models.DiffusionAutoencoder}
# The latent stage's model_state collection: the training codes' mean and std.
NORM = 'latent_norm'


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_diffusion_ae_objective, model,
                                       config.loss)


def validate(config) -> None:
  """Checks every section, `config.diffusion` included, before any stage trains.

  Raises:
    ValueError: naming the field and the value at fault.
  """
  common.validate_sections(config)
  model, _ = _model_and_objective(config)
  diffusion.ddim_timesteps(model.num_timesteps, model.num_ddim_steps)
  section = config.get('diffusion')
  if section is None:
    raise ValueError('A diffusion_ae run needs a config.diffusion section (see '
                     'experiments/configs/diffusion_ae.py).')
  for field in ('num_eval_examples', 'num_samples'):
    if section[field] <= 0:
      raise ValueError(f'config.diffusion.{field} must be > 0, got {section[field]}.')
  if section.num_quality_samples < 2:
    raise ValueError('config.diffusion.num_quality_samples must be >= 2 (a covariance), got '
                     f'{section.num_quality_samples}.')
  for field, decay in (('ema_decay', section.ema_decay),
                       ('latent.ema_decay', section.latent.ema_decay)):
    if not 0.0 <= decay < 1.0:
      raise ValueError(f'config.diffusion.{field} must be in [0, 1), got {decay}.')
  if section.num_interpolation_points < 2:
    raise ValueError('config.diffusion.num_interpolation_points must be >= 2 (the two '
                     f'endpoints), got {section.num_interpolation_points}.')
  latent = section.latent
  if latent.num_train_steps < 0:
    raise ValueError(
        f'config.diffusion.latent.num_train_steps must be >= 0, got {latent.num_train_steps}.')
  for field in ('batch_size', 'learning_rate', 'hidden', 'num_layers', 'num_timesteps',
                'num_sampling_steps', 'log_every_steps', 'eval_every_steps',
                'checkpoint_every_steps'):
    if latent[field] <= 0:
      raise ValueError(f'config.diffusion.latent.{field} must be > 0, got {latent[field]}.')
  diffusion.beta_schedule(latent.schedule, latent.num_timesteps)
  diffusion.ddim_timesteps(latent.num_timesteps, latent.num_sampling_steps)
  if latent.num_train_steps:
    common.check_divisible('config.diffusion.latent.batch_size', latent.batch_size)


def stages(config) -> tuple[str, ...]:
  if config.diffusion.latent.num_train_steps > 0:
    return ('model', 'latent')
  return ('model',)


def make_stage(config, name, trained):
  if name == 'model':
    model, objective = _model_and_objective(config)
    x = common.example_images(config)
    t = jnp.zeros((x.shape[0],), jnp.int32)
    tx = with_ema(common.build_optimizer(config.optim), config.diffusion.ema_decay)
    return common.objective_stage(config, model=model, objective=objective,
                                  init_variables=lambda key: model.init(key, x, x, t), tx=tx,
                                  eval_step=_ema_eval_step(objective))
  if name == 'latent':
    return _latent_stage(config, trained['model'])
  raise ValueError(f'The diffusion_ae recipe has stages {stages(config)}, not {name!r}.')


# ----------------------------------------------------------------------------
# EMA of the weights, carried in the optimizer state.
# ----------------------------------------------------------------------------


class EmaState(NamedTuple):
  """The state of `track_ema`: updates applied so far and the running average."""
  count: jax.Array
  ema: Any


def ema_decay(decay: float, count: jax.Array, warmup: bool = True) -> jax.Array:
  """min(decay, (1 + n) / (10 + n)) after n updates with warm-up, else decay.

  The warm-up keeps a short run's average off its first, untrained weights:
  the effective window grows with the run until it reaches 1 / (1 - decay).
  """
  n = count.astype(jnp.float32)
  return jnp.minimum(decay, (1.0 + n) / (10.0 + n)) if warmup else jnp.asarray(decay)


def track_ema(decay: float, *, warmup: bool = True) -> optax.GradientTransformation:
  """An optax transformation that keeps an EMA of the parameters after each update.

  Put it last in an `optax.chain`: it sees the final `updates` and the
  parameters before them, averages p' = p + u into its state,
  ema ← d ema + (1 - d) p' with d = `ema_decay(decay, n)`, and passes the
  updates through unchanged. Living in the optimizer state, the average is
  checkpointed and restored with it, and the loop needs no change
  (`ema_params` reads it back).

  Args:
    decay: the EMA decay in [0, 1).
    warmup: shorten the window early in training (`ema_decay`).

  Returns:
    The transformation; its `update` needs `params`.

  References:
    Polyak & Juditsky, "Acceleration of Stochastic Approximation by
    Averaging", 1992; Preechakul et al. 2022, Appendix (EMA 0.9999 of the
    autoencoder and the latent DDIM, used for every result).
  """
  if not 0.0 <= decay < 1.0:
    raise ValueError(f'The EMA decay must be in [0, 1), got {decay}.')

  def init(params):
    return EmaState(count=jnp.zeros((), jnp.int32), ema=jax.tree.map(jnp.array, params))

  def update(updates, state, params=None):
    if params is None:
      raise ValueError('track_ema needs the parameters: call update(updates, state, params).')
    new_params = optax.apply_updates(params, updates)
    d = ema_decay(decay, state.count, warmup)
    ema = jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), state.ema,
                       new_params)
    return updates, EmaState(count=state.count + 1, ema=ema)

  return optax.GradientTransformation(init, update)


def ema_params(opt_state) -> Any:
  """The EMA parameters held by the `track_ema` inside an optimizer state.

  Raises:
    ValueError: the state holds no `EmaState`.
  """
  found = [s for s in jax.tree.leaves(opt_state, is_leaf=lambda s: isinstance(s, EmaState))
           if isinstance(s, EmaState)]
  if len(found) != 1:
    raise ValueError(f'Expected one EmaState in the optimizer state, found {len(found)}.')
  return found[0].ema


def with_ema(tx: optax.GradientTransformation, decay: float) -> optax.GradientTransformation:
  """`tx`, then `track_ema(decay)`: the optimizer of both stages."""
  return optax.chain(tx, track_ema(decay))


def _ema_eval_step(objective):
  """The eval step of `objective` at the EMA parameters (the ones evaluated and sampled)."""
  base = train.eval_step_fn(objective)

  def eval_step(state, batch, key):
    return base(state.replace(params=ema_params(state.opt_state)), batch, key)

  return eval_step


def ema_variables(fitted) -> dict[str, Any]:
  """A fitted stage's variables with its EMA parameters (`Trained.variables`' EMA twin)."""
  state = fitted.state
  return {**ema_params(state.opt_state), **getattr(state, 'model_state', {})}


# ----------------------------------------------------------------------------
# The latent stage.
# ----------------------------------------------------------------------------


def encode_split(model, variables, config, split: str) -> np.ndarray:
  """z_sem [N, Z] of every image of `split` of `config.data`, in dataset order.

  Every process encodes the whole split, so all hold the same codes.
  """
  encode = common.jit_apply(model, 'encode')
  codes = []
  data = (common.data_source(config, split) if data_lib.sources.is_own_data(config.data.name)
          else config.data.name)
  for batch in data_lib.batches(
      data, split, batch_size=config.data.eval_batch_size, shuffle=False,
      drop_remainder=False, num_epochs=1, data_dir=config.data.data_dir,
      process_index=0, process_count=1):
    z = np.asarray(encode(variables, jnp.asarray(batch['image'])))
    codes.append(z[np.asarray(batch['mask']) > 0])
  return np.concatenate(codes)


def _with_norm(z: np.ndarray, mean: np.ndarray, std: np.ndarray) -> dict[str, np.ndarray]:
  """A batch of raw codes, each row carrying the normalisation (rows split over devices)."""
  return {'z': z, 'mean': np.broadcast_to(mean, z.shape).copy(),
          'std': np.broadcast_to(std, z.shape).copy()}


def _latent_objective(ddpm):
  """The latent DDPM's loss on normalised codes, as a stateful objective whose
  model state is the normalisation the batch carries (`NORM`)."""

  def objective(params, batch, key, model_state):
    del model_state  # Replaced by the normalisation of this batch's codes.
    norm = {'mean': batch['mean'][0], 'std': batch['std'][0]}
    codes = {'z': (batch['z'] - norm['mean']) / norm['std']}
    if 'mask' in batch:
      codes['mask'] = batch['mask']
    loss, metrics = ddpm(params, codes, key)
    return loss, (metrics, {NORM: norm})

  return objective


def _latent_stage(config, encoder) -> Stage:
  latent = config.diffusion.latent
  # The codes come from the autoencoder's EMA weights, the ones evaluated and sampled.
  model, variables = encoder.stage.model, ema_variables(encoder)
  denoiser = models.LatentDenoiser(hidden=latent.hidden, num_layers=latent.num_layers)
  objective = _latent_objective(objectives.make_latent_ddpm_objective(
      denoiser, num_timesteps=latent.num_timesteps, schedule=latent.schedule))
  tx = with_ema(optax.adam(optax.cosine_decay_schedule(latent.learning_rate,
                                                        latent.num_train_steps)),
                 latent.ema_decay)
  dim = model.latent_dim

  def init(key):
    params = denoiser.init(key, jnp.zeros((1, dim)), jnp.zeros((1,), jnp.int32))
    norm = {'mean': jnp.zeros((dim,)), 'std': jnp.ones((dim,))}
    return train.create_train_state(params, tx, {NORM: norm})

  @functools.cache
  def train_codes():
    z = encode_split(model, variables, config, config.data.train_split)
    return z, z.mean(0).astype(np.float32), (z.std(0) + 1e-6).astype(np.float32)

  @functools.cache
  def eval_codes():
    return encode_split(model, variables, config, config.data.eval_split)

  def train_data(start_step):
    z, mean, std = train_codes()
    rows = parallel.process_batch_slice(latent.batch_size)
    for step in itertools.count(start_step + 1):
      index = np.random.default_rng([latent.seed, step]).integers(0, len(z), latent.batch_size)
      yield _with_norm(z[index[rows]], mean, std)

  def eval_data():
    _, mean, std = train_codes()
    z = eval_codes()
    size = config.data.eval_batch_size
    rows = parallel.process_batch_slice(size)
    for start in range(0, len(z), size):
      chunk = z[start:start + size]
      mask = np.zeros((size,), np.float32)
      mask[:len(chunk)] = 1.0
      chunk = np.concatenate([chunk, np.zeros((size - len(chunk), z.shape[1]), z.dtype)])
      yield {**_with_norm(chunk[rows], mean, std), 'mask': mask[rows]}

  schedule = Schedule(
      num_train_steps=latent.num_train_steps, log_every_steps=latent.log_every_steps,
      eval_every_steps=latent.eval_every_steps,
      checkpoint_every_steps=latent.checkpoint_every_steps,
      keep_checkpoints=config.train.keep_checkpoints, num_eval_batches=None,
      progress_bar=config.train.progress_bar)
  return Stage(name='latent', init=init, train_step=train.train_step_fn(objective, tx),
               eval_step=_ema_eval_step(objective), train_data=train_data,
               eval_data=eval_data, schedule=schedule, seed=latent.seed, model=denoiser)


def latent_prior(config, trained) -> diffusion_app.LatentPrior:
  """The fitted latent stage as a `LatentPrior` for `applications.diffusion.sample`."""
  latent = config.diffusion.latent
  state = trained.state
  return diffusion_app.LatentPrior(
      denoiser=trained.stage.model, variables=ema_params(state.opt_state),
      mean=jnp.asarray(state.model_state[NORM]['mean']),
      std=jnp.asarray(state.model_state[NORM]['std']),
      alpha_bars=diffusion.alpha_bars(diffusion.beta_schedule(latent.schedule,
                                                              latent.num_timesteps)),
      num_sampling_steps=latent.num_sampling_steps)


# ----------------------------------------------------------------------------
# Metrics and figures.
# ----------------------------------------------------------------------------


def _psnr(reconstructions, x) -> np.ndarray:
  return denoising.psnr(np.asarray(x), np.clip(np.asarray(reconstructions), 0.0, 1.0))


def sample_quality_of(config, samples: np.ndarray, workdir: str) -> dict[str, float]:
  """`applications.sample_quality.score` of samples against the eval split.

  The feature classifier trains once on the config's train split and is
  cached in workdir/sample_quality_classifier.msgpack (copy it into another
  run's workdir to score that run with the same network).
  """
  from ae_jax.applications import sample_quality  # pylint: disable=g-import-not-at-top
  train_x, train_y = common.load_arrays(config, config.data.train_split)
  test_x, _ = common.load_arrays(config, config.data.eval_split)
  classifier = sample_quality.load_or_train_classifier(
      os.path.join(workdir, sample_quality.CLASSIFIER_FILE), train_x, train_y,
      key=jax.random.key(config.train.seed))
  return sample_quality.score(classifier, samples, test_x, train_x)


def finish(config, trained, workdir) -> dict[str, float]:
  """ddim_psnr and zsem_psnr (dB, mean over the test images); figures on process 0."""
  fitted = trained['model']
  model, variables = fitted.stage.model, ema_variables(fitted)
  section = config.diffusion
  n = config.train.num_figure_examples
  num = section.num_eval_examples
  batch = common.eval_images(config, max(num, n, min(config.data.eval_batch_size, 500)))
  keep = np.asarray(batch['mask']) > 0
  images = np.asarray(batch['image'])[keep]
  labels = np.asarray(batch['label'])[keep]
  x = jnp.asarray(images[:max(num, n)])
  recon_key, sample_key = jax.random.split(fitted.eval_key)
  is_main = jax.process_index() == 0
  if is_main and config.train.progress_bar:
    print(f'DDIM encode -> decode of {len(x)} test images, {model.num_ddim_steps} steps each '
          'way', flush=True)
  out = jax.device_get(diffusion_app.reconstruct(model, variables, x, recon_key))
  ddim, zsem = _psnr(out['ddim'], x), _psnr(out['zsem_only'], x)
  # What z_sem alone gives is the measure of learning; DDIM's round trip is exact
  # for any noise predictor (the untrained one, ε ≡ 0, too). Its baselines: the
  # untrained model, decoded from the same x_T.
  initial = fitted.stage.init(jax.random.key(config.train.seed))
  initial_variables = {**initial.params, **getattr(initial, 'model_state', {})}
  untrained = jax.device_get(diffusion_app.reconstruct(model, initial_variables, x, recon_key))
  metrics = {'ddim_psnr': float(ddim[:num].mean()), 'zsem_psnr': float(zsem[:num].mean()),
             'zsem_psnr_untrained': float(_psnr(untrained['zsem_only'], x[:num]).mean())}
  if not is_main:
    return metrics
  record = {**metrics, 'step': int(fitted.state.step), 'num_eval_examples': min(num, len(x)),
            'num_ddim_steps': model.num_ddim_steps}
  if 'latent' in trained:
    record.update({f'latent/{k}': v for k, v in trained['latent'].metrics.items()})
    samples = np.asarray(diffusion_app.sample(
        model, variables, latent_prior(config, trained['latent']), sample_key,
        max(section.num_quality_samples, section.num_samples), images.shape[1:]))
    quality = sample_quality_of(config, samples[:section.num_quality_samples], workdir)
    record.update({f'samples/{k}': v for k, v in quality.items()})
    metrics['samples/frechet_distance'] = quality['frechet_distance']
  with open(os.path.join(workdir, 'diffusion_metrics.json'), 'w') as f:
    json.dump(record, f, indent=1)

  from ae_jax import plotting  # pylint: disable=g-import-not-at-top
  head = 'diffusion AE'
  steps = model.num_ddim_steps
  shown = np.asarray(x[:n])
  plotting.save_captioned_rows(
      [('inputs', shown),
       (f'DDIM encode -> decode, {steps} steps: {ddim[:n].mean():.1f} dB', out['ddim'][:n]),
       (f'z_sem with random x_T: {zsem[:n].mean():.1f} dB', out['zsem_only'][:n])],
      plotting.figure_path(workdir, 'reconstructions.png'), ncols=min(n, 8),
      title=f'{head}: test inputs and reconstructions')
  pairs = min(4, len(shown) // 2)
  if pairs:
    frames = jax.device_get(diffusion_app.interpolate(
        model, variables, shown[:pairs], shown[pairs:2 * pairs],
        num_points=section.num_interpolation_points))
    plotting.save_captioned_rows(
        [(f'pair {i + 1}', frames[i]) for i in range(pairs)],
        plotting.figure_path(workdir, 'interpolation.png'), ncols=frames.shape[1],
        title=f'{head}: lerp z_sem, slerp x_T')
  if 'latent' in trained:
    plotting.save_image_grid(
        samples[:section.num_samples], plotting.figure_path(workdir, 'samples.png'),
        title=f'{head}: latent DDPM samples')
    common.training_curves(trained['latent'], workdir, 'latent_training_curves.png')
  codes = np.asarray(common.jit_apply(model, 'encode')(variables, jnp.asarray(images)))
  plotting.save_latent_map(codes, labels, plotting.figure_path(workdir, 'latent_map.png'),
                           title=f'{head}: test z_sem')
  common.training_curves(fitted, workdir)
  return metrics
