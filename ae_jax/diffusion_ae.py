"""The diffusion autoencoder's run: reconstruction metrics, the latent DDPM, figures.

`runner.train_and_evaluate` trains the first stage (semantic encoder and
conditional U-Net, `objectives.make_diffusion_ae_objective`) like any other
model, then calls `finish_run`, which

  1. measures reconstruction on `config.diffusion.num_eval_examples` test
     images: DDIM encode x_0 → x_T and decode back (`ddim_psnr`), and decode
     from z_sem with a random x_T (`zsem_psnr`), both PSNR in dB on [0, 1]
     images with the model's `num_ddim_steps`;
  2. trains the second stage when `config.diffusion.latent.num_train_steps > 0`:
     a DDPM on the frozen encoder's z_sem of the whole training split,
     normalised per dimension (`make_latent_ddpm_objective`). Its checkpoints
     live in workdir/latent_checkpoints/encoder_<step>/, keyed by the step of
     the encoder they were trained on, so a rerun resumes the latent stage
     where it stopped, and a first stage trained further starts a fresh one;
  3. writes workdir/diffusion_metrics.json and latent_metrics.jsonl.

`write_figures` then draws reconstructions (inputs; DDIM encode/decode; z_sem
with random x_T), an interpolation strip in (z_sem, x_T), unconditional
samples (latent DDPM → z_sem, x_T ~ N(0, I), DDIM decode) when the latent
stage was trained, the z_sem map and the training curves.

PSNR (dB) of an image in [0, 1]: 10 log10(1 / MSE) with the reconstruction
clipped to [0, 1]; the reported value is the mean over images.

In a multi-process run every process computes the second stage identically
(same data, same seed); this path has only been run on one process.

References:
  Preechakul et al., "Diffusion Autoencoders: Toward a Meaningful and
  Decodable Representation", CVPR 2022, https://arxiv.org/abs/2111.15640.
"""

from __future__ import annotations

import json
import os
from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
from matplotlib.figure import Figure
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import tqdm

from ae_jax import data as data_lib
from ae_jax import objectives
from ae_jax import plotting
from ae_jax import runner
from ae_jax import train
from ae_jax.applications import denoising
from ae_jax.applications import latent as latent_paths
from ae_jax.models import diffusion

Array = jax.Array


def default_diffusion_config() -> ml_collections.ConfigDict:
  """The `config.diffusion` section: evaluation and the latent DDPM."""
  return ml_collections.ConfigDict(dict(
      num_eval_examples=64,
      num_interpolation_points=8,
      num_samples=16,
      latent=dict(
          num_train_steps=3000, batch_size=256, learning_rate=1e-3, hidden=256,
          num_layers=4, num_timesteps=1000, schedule='linear', num_sampling_steps=100,
          log_every_steps=100, checkpoint_every_steps=1000, seed=0),
  ))


def validate_config(config: ml_collections.ConfigDict) -> None:
  """Checks `config.diffusion` before any training.

  Raises:
    ValueError: naming the field and the value at fault.
  """
  section = config.get('diffusion')
  if section is None:
    raise ValueError('A diffusion_ae run needs a config.diffusion section; build it with '
                     'ae_jax.diffusion_ae.default_diffusion_config().')
  for field in ('num_eval_examples', 'num_interpolation_points', 'num_samples'):
    if section[field] <= 0:
      raise ValueError(f'config.diffusion.{field} must be > 0, got {section[field]}.')
  latent = section.latent
  if latent.num_train_steps < 0:
    raise ValueError(
        f'config.diffusion.latent.num_train_steps must be >= 0, got {latent.num_train_steps}.')
  for field in ('batch_size', 'learning_rate', 'hidden', 'num_layers', 'num_timesteps',
                'num_sampling_steps', 'log_every_steps', 'checkpoint_every_steps'):
    if latent[field] <= 0:
      raise ValueError(f'config.diffusion.latent.{field} must be > 0, got {latent[field]}.')
  diffusion.beta_schedule(latent.schedule, latent.num_timesteps)
  diffusion.ddim_timesteps(latent.num_timesteps, latent.num_sampling_steps)
  diffusion.ddim_timesteps(config.model.get('num_timesteps', 1000),
                           config.model.get('num_ddim_steps', 100))


def psnr(reconstructions: np.ndarray, targets: np.ndarray) -> np.ndarray:
  """Per-image PSNR in dB of [N, H, W, C] images in [0, 1], reconstructions
  clipped to [0, 1] first (`applications.denoising.psnr`)."""
  clipped = np.clip(np.asarray(reconstructions, np.float64), 0.0, 1.0)
  return denoising.psnr(np.asarray(targets), clipped)


# ----------------------------------------------------------------------------
# Reconstruction, interpolation and sampling with a trained first stage.
# ----------------------------------------------------------------------------


def reconstruct(model: diffusion.DiffusionAutoencoder, variables, x: Array, key: Array,
                *, num_steps: int | None = None) -> dict[str, Array]:
  """DDIM encode/decode and z_sem-only reconstructions of images x in [0, 1].

  Returns:
    {'z_sem': [B, Z], 'x_T': the DDIM code, 'ddim': decode(z_sem, x_T),
     'zsem_only': decode(z_sem, x_T' ~ N(0, I)), x̂_0 clipped as when
     sampling}, images in [0, 1].
  """
  steps = num_steps or model.num_ddim_steps

  @jax.jit
  def run(variables, x, key):
    z = model.apply(variables, x, method=model.encode)
    x_T = model.apply(variables, x, z, steps, method=model.encode_stochastic)
    ddim = model.apply(variables, z, x_T, steps, method=model.decode)
    random_x_T = jax.random.normal(key, x.shape)
    zsem_only = model.apply(variables, z, random_x_T, steps, method=model.decode, clip_x0=True)
    return {'z_sem': z, 'x_T': x_T, 'ddim': ddim, 'zsem_only': zsem_only}

  return run(variables, x, key)


def interpolate(model: diffusion.DiffusionAutoencoder, variables, x_a: Array, x_b: Array,
                *, num_points: int, num_steps: int | None = None) -> Array:
  """Decodes lerp(z_sem) and slerp(x_T) between the codes of x_a and x_b.

  x_T is interpolated on the sphere: a straight line between two Gaussian
  draws passes through points of atypically small norm (Song et al. 2021,
  §5.3; Preechakul et al. 2022, §5.1).

  Args:
    x_a, x_b: [B, H, W, C] image pairs in [0, 1].
    num_points: points per pair, endpoints included.

  Returns:
    [B, num_points, H, W, C] images in [0, 1].
  """
  steps = num_steps or model.num_ddim_steps

  @jax.jit
  def run(variables, x_a, x_b):
    x = jnp.concatenate([x_a, x_b])
    z = model.apply(variables, x, method=model.encode)
    x_T = model.apply(variables, x, z, steps, method=model.encode_stochastic)
    (z_a, z_b), (t_a, t_b) = jnp.split(z, 2), jnp.split(x_T, 2)
    z_path = jax.vmap(lambda a, b: latent_paths.interpolate(a, b, num_points))(z_a, z_b)
    t_path = jax.vmap(lambda a, b: latent_paths.interpolate(a, b, num_points, method='slerp'))(
        t_a, t_b)
    flat = lambda v: v.reshape((-1,) + v.shape[2:])
    images = model.apply(variables, flat(z_path), flat(t_path), steps, method=model.decode)
    return images.reshape(z_path.shape[:2] + images.shape[1:])

  return run(variables, x_a, x_b)


class LatentPrior(flax.struct.PyTreeNode):
  """A trained latent DDPM and the normalisation of z_sem it was trained on.

  Attributes:
    params: variables of the `LatentDenoiser`.
    mean: [Z] mean of the training codes.
    std: [Z] standard deviation of the training codes.
  """
  params: Any
  mean: Array
  std: Array


def _latent_denoiser(latent_config) -> diffusion.LatentDenoiser:
  return diffusion.LatentDenoiser(hidden=latent_config.hidden, num_layers=latent_config.num_layers)


def sample(model: diffusion.DiffusionAutoencoder, variables, prior: LatentPrior,
           latent_config, key: Array, num: int, image_shape: tuple[int, ...]) -> Array:
  """Unconditional samples: z_sem from the latent DDPM (DDIM, η = 0), then
  x_T ~ N(0, I) and the image decoder's DDIM, x̂_0 clipped at each step.

  Returns:
    [num, *image_shape] images in [0, 1].
  """
  denoiser = _latent_denoiser(latent_config)
  latent_alpha_bars = diffusion.alpha_bars(
      diffusion.beta_schedule(latent_config.schedule, latent_config.num_timesteps))
  z_key, x_key = jax.random.split(key)

  @jax.jit
  def run(variables, prior_params, mean, std):
    z_T = jax.random.normal(z_key, (num, mean.shape[0]))
    z_n = diffusion.ddim_decode(lambda z, t: denoiser.apply(prior_params, z, t), z_T,
                                latent_alpha_bars, num_steps=latent_config.num_sampling_steps)
    z = z_n * std + mean
    x_T = jax.random.normal(x_key, (num, *image_shape))
    return model.apply(variables, z, x_T, method=model.decode, clip_x0=True)

  return run(variables, prior.params, prior.mean, prior.std)


# ----------------------------------------------------------------------------
# The second stage.
# ----------------------------------------------------------------------------


def encode_split(model: diffusion.DiffusionAutoencoder, variables, config,
                 split: str) -> np.ndarray:
  """z_sem [N, Z] of every image of `split` of `config.data`, in dataset order."""
  encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode))
  codes = []
  for batch in data_lib.batches(
      config.data.name, split, batch_size=config.data.eval_batch_size, shuffle=False,
      drop_remainder=False, num_epochs=1, data_dir=config.data.data_dir,
      process_index=0, process_count=1):
    z = np.asarray(encode(variables, jnp.asarray(batch['image'])))
    codes.append(z[np.asarray(batch['mask']) > 0])
  return np.concatenate(codes)


def _latent_manager(workdir: str, encoder_step: int) -> ocp.CheckpointManager:
  path = os.path.join(os.path.abspath(workdir), 'latent_checkpoints', f'encoder_{encoder_step}')
  return ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(max_to_keep=2,
                                                                          create=True))


def _latent_setup(latent, latent_dim: int):
  """The latent DDPM's objective, optimizer, fresh checkpoint item and train key."""
  denoiser = _latent_denoiser(latent)
  objective = objectives.make_latent_ddpm_objective(
      denoiser, num_timesteps=latent.num_timesteps, schedule=latent.schedule)
  tx = optax.adam(optax.cosine_decay_schedule(latent.learning_rate, latent.num_train_steps))
  init_key, train_key = jax.random.split(jax.random.key(latent.seed))
  params = denoiser.init(init_key, jnp.zeros((1, latent_dim)), jnp.zeros((1,), jnp.int32))
  # The normalisation travels with the weights: a restored prior needs no data.
  item = {'state': train.create_train_state(params, tx),
          'mean': jnp.zeros((latent_dim,)), 'std': jnp.ones((latent_dim,))}
  return objective, tx, item, train_key


def _restore(manager: ocp.CheckpointManager, item):
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, item)
  return manager.restore(manager.latest_step(), args=ocp.args.StandardRestore(target))


def train_latent_prior(config, model: diffusion.DiffusionAutoencoder, variables, workdir: str,
                       *, encoder_step: int, write: bool = True) -> tuple[LatentPrior, float]:
  """Trains (or resumes) the latent DDPM on the frozen encoder's codes.

  Args:
    config: the run's config; reads `data` and `diffusion.latent`.
    model: the first stage.
    variables: its trained variables (`{'params': ...}`).
    workdir: the run's directory.
    encoder_step: the first stage's step; names the checkpoint directory.
    write: append to workdir/latent_metrics.jsonl (process 0).

  Returns:
    (the prior, its last logged training loss).

  Raises:
    FloatingPointError: the latent loss became NaN or Inf.
  """
  latent = config.diffusion.latent
  z = encode_split(model, variables, config, config.data.train_split)
  objective, tx, item, train_key = _latent_setup(latent, z.shape[1])
  item['mean'] = jnp.asarray(z.mean(0), jnp.float32)
  item['std'] = jnp.asarray(z.std(0) + 1e-6, jnp.float32)
  manager = _latent_manager(workdir, encoder_step)
  if manager.latest_step() is not None:
    item = _restore(manager, item)
  state = item['state']
  z_n = (jnp.asarray(z, jnp.float32) - item['mean']) / item['std']
  start = int(state.step)
  log_path = os.path.join(workdir, 'latent_metrics.jsonl')
  if write:
    runner.drop_records_after(log_path, start)
  step_fn = train.make_train_step(objective, tx)
  # Batches are a function of the step alone, so a resumed stage sees the same data.
  batch_fn = jax.jit(lambda step: {'z': z_n[jax.random.randint(
      jax.random.fold_in(jax.random.key(latent.seed + 1), step), (latent.batch_size,), 0,
      z_n.shape[0])]})
  last_loss = float('nan')
  progress = tqdm.tqdm(total=latent.num_train_steps, initial=start, unit='step',
                       desc='latent DDPM', dynamic_ncols=True,
                       disable=not (config.train.progress_bar and write))
  try:
    for step in range(start + 1, latent.num_train_steps + 1):
      state, metrics = step_fn(state, batch_fn(step), train_key)
      last = step == latent.num_train_steps
      if step % latent.log_every_steps == 0 or last:
        host = {k: float(v) for k, v in jax.device_get(metrics).items()}
        train.check_finite_metrics(host, step)
        last_loss = host['loss']
        progress.update(step - progress.n)
        progress.set_postfix(loss=f'{last_loss:.4g}', refresh=False)
        if write:
          with open(log_path, 'a') as f:
            f.write(json.dumps({'step': step, 'split': 'latent_train', **host}) + '\n')
      if step % latent.checkpoint_every_steps == 0 or last:
        manager.save(step, args=ocp.args.StandardSave({**item, 'state': state}))
  finally:
    progress.close()
    manager.wait_until_finished()
    manager.close()
  if start >= latent.num_train_steps and os.path.exists(log_path):
    with open(log_path) as f:
      records = [json.loads(line) for line in f]
    if records:
      last_loss = records[-1]['loss']
  prior = LatentPrior(params=state.params, mean=item['mean'], std=item['std'])
  return prior, last_loss


def load_latent_prior(config, model: diffusion.DiffusionAutoencoder, workdir: str,
                      encoder_step: int) -> LatentPrior | None:
  """The finished latent DDPM of `workdir` for the encoder of `encoder_step`, or None."""
  latent = config.diffusion.latent
  path = os.path.join(os.path.abspath(workdir), 'latent_checkpoints', f'encoder_{encoder_step}')
  if latent.num_train_steps == 0 or not os.path.isdir(path):
    return None
  manager = _latent_manager(workdir, encoder_step)
  try:
    if manager.latest_step() != latent.num_train_steps:
      return None
    item = _restore(manager, _latent_setup(latent, model.latent_dim)[2])
  finally:
    manager.close()
  return LatentPrior(params=item['state'].params, mean=item['mean'], std=item['std'])


def _eval_images(config, num: int) -> dict[str, np.ndarray]:
  batch = next(data_lib.batches(
      config.data.name, config.data.eval_split, batch_size=num, shuffle=False,
      drop_remainder=False, data_dir=config.data.data_dir, process_index=0, process_count=1))
  keep = np.asarray(batch['mask']) > 0
  return {k: np.asarray(v)[keep] for k, v in batch.items()}


def finish_run(config, model: diffusion.DiffusionAutoencoder, state: train.TrainState,
               workdir: str, key: Array, *, is_main: bool = True) -> dict[str, float]:
  """Reconstruction metrics and the second stage after the first stage trained.

  Returns:
    {'ddim_psnr', 'zsem_psnr'} (dB, mean over test images) and, when the
    latent stage ran, 'latent_loss'.
  """
  variables = jax.device_get({**state.params, **state.model_state})
  x = _eval_images(config, config.diffusion.num_eval_examples)['image']
  if is_main and config.train.progress_bar:
    print(f'DDIM encode -> decode of {len(x)} test images, {model.num_ddim_steps} steps each way',
          flush=True)
  out = jax.device_get(reconstruct(model, variables, jnp.asarray(x), key))
  metrics = {'ddim_psnr': float(psnr(out['ddim'], x).mean()),
             'zsem_psnr': float(psnr(out['zsem_only'], x).mean())}
  if config.diffusion.latent.num_train_steps > 0:
    _, metrics['latent_loss'] = train_latent_prior(
        config, model, variables, workdir, encoder_step=int(state.step), write=is_main)
  if is_main:
    record = {**metrics, 'step': int(state.step), 'num_eval_examples': int(len(x)),
              'num_ddim_steps': model.num_ddim_steps}
    with open(os.path.join(workdir, 'diffusion_metrics.json'), 'w') as f:
      json.dump(record, f, indent=1)
  return metrics


# ----------------------------------------------------------------------------
# Figures.
# ----------------------------------------------------------------------------


def _save_rows(rows: list[tuple[str, np.ndarray]], path: str, *, title: str, ncols: int) -> str:
  """Image rows stacked vertically, each with its own caption."""
  n = len(rows[0][1])
  fig = Figure(figsize=(1.2 * min(n, ncols), 1.5 * len(rows) * -(-n // ncols) + 0.5))
  axes = fig.subplots(len(rows), 1, squeeze=False)[:, 0]
  for ax, (caption, images) in zip(axes, rows):
    plotting.show(ax, plotting.tile(np.asarray(images), ncols))
    ax.set_title(caption, fontsize=9)
  fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def write_figures(config, model: diffusion.DiffusionAutoencoder, state: train.TrainState,
                  workdir: str, key: Array) -> list[str]:
  """reconstructions.png, interpolation.png, samples.png (with a latent DDPM),
  latent_map.png and training_curves.png under workdir/figures."""
  n = config.train.num_figure_examples
  num_codes = max(n, min(config.data.eval_batch_size, 500))
  batch = _eval_images(config, num_codes)
  variables = jax.device_get({**state.params, **state.model_state})
  x = jnp.asarray(batch['image'][:n])
  recon_key, sample_key = jax.random.split(key)
  out = jax.device_get(reconstruct(model, variables, x, recon_key))
  steps = model.num_ddim_steps
  paths = [_save_rows(
      [('inputs', x),
       (f'DDIM encode -> decode, {steps} steps: {psnr(out["ddim"], x).mean():.1f} dB',
        out['ddim']),
       (f'z_sem with random x_T: {psnr(out["zsem_only"], x).mean():.1f} dB', out['zsem_only'])],
      plotting.figure_path(workdir, 'reconstructions.png'), ncols=min(n, 8),
      title='diffusion AE: test inputs and reconstructions')]

  pairs = min(4, n // 2)
  frames = jax.device_get(interpolate(
      model, variables, x[:pairs], x[pairs:2 * pairs],
      num_points=config.diffusion.num_interpolation_points))
  num_points = frames.shape[1]
  paths.append(_save_rows(
      [(f'pair {i + 1}', frames[i]) for i in range(pairs)],
      plotting.figure_path(workdir, 'interpolation.png'), ncols=num_points,
      title='interpolation: lerp z_sem, slerp x_T'))

  prior = load_latent_prior(config, model, workdir, int(state.step))
  if prior is not None:
    samples = jax.device_get(sample(model, variables, prior, config.diffusion.latent,
                                    sample_key, config.diffusion.num_samples, x.shape[1:]))
    paths.append(plotting.save_image_grid(
        np.asarray(samples), plotting.figure_path(workdir, 'samples.png'),
        title='samples: latent DDPM z_sem, random x_T'))

  encode = jax.jit(lambda v, x: model.apply(v, x, method=model.encode))
  codes = np.asarray(encode(variables, jnp.asarray(batch['image'])))
  paths.append(plotting.save_latent_map(
      codes, batch.get('label'), plotting.figure_path(workdir, 'latent_map.png'),
      title='diffusion AE: test z_sem'))
  metrics_path = os.path.join(workdir, 'metrics.jsonl')
  if os.path.exists(metrics_path):
    paths.append(plotting.save_training_curves(
        metrics_path, plotting.figure_path(workdir, 'training_curves.png')))
  return paths
