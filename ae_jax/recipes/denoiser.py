"""The U-Net denoising autoencoder, trained across a range of Gaussian noise levels.

`config.model` holds `ae_jax.models.UNetDenoiser`'s fields (name
'unet_denoiser'); `config.loss` the noise range `sigma_min`, `sigma_max` and
the fields of `objectives.make_autoencoder_objective` (`reconstruction`,
`output_activation`). Every training image gets its own level σ ~
U[sigma_min, sigma_max] (`applications.denoising.gaussian_noise_range`) and
the loss compares sigmoid(logits) of the noisy image with the clean one, so
one model serves the whole range without being told σ.

The images are `config.data.name`'s splits, or, with `data.name = 'photos'`,
grayscale patches of scikit-image's pictures (`data.photos`):

  train  `num_train` patches of `patch_size`² at random positions of the
         `train` pictures (seeded by `data.shuffle_seed`);
  test   every patch of a non-overlapping grid of the `test` pictures.

One stage, 'model'. `finish` adds the mean PSNR of the noisy and the denoised
first eval batch at σ = (sigma_min + sigma_max) / 2 ('psnr_noisy',
'psnr_dae') and draws denoising.png (noisy and denoised rows at three levels
of the range, then the clean images) and the training curves.

References:
  Vincent et al., "Extracting and composing robust features with denoising
  autoencoders", ICML 2008; Ronneberger, Fischer & Brox, "U-Net", MICCAI 2015;
  Zhang et al., "Beyond a Gaussian Denoiser" (DnCNN), IEEE TIP 2017 (one blind
  model over a range of noise levels).
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import jax
import jax.numpy as jnp
import numpy as np

from ae_jax import data as data_lib
from ae_jax import models
from ae_jax import objectives
from ae_jax.applications import denoising
from ae_jax.recipes import common

MODELS = {'unet_denoiser': models.UNetDenoiser}
PHOTOS = 'photos'
_PHOTO_SPLITS = ('train', 'test')


def make_objective(model, *, sigma_min: float = 0.0, sigma_max: float = 0.4, **kwargs):
  """`make_autoencoder_objective(model, **kwargs)` on inputs with noise σ ~ U[sigma_min, sigma_max].

  Raises:
    ValueError: unless 0 <= sigma_min <= sigma_max.
  """
  if not 0.0 <= sigma_min <= sigma_max:
    raise ValueError(f'config.loss needs 0 <= sigma_min <= sigma_max, got sigma_min={sigma_min}, '
                     f'sigma_max={sigma_max}.')
  corruption_fn = functools.partial(denoising.gaussian_noise_range, sigma_min=sigma_min,
                                    sigma_max=sigma_max)
  return objectives.make_autoencoder_objective(model, corruption_fn=corruption_fn, **kwargs)


@functools.cache
def _photo_patches(names: tuple[str, ...], patch_size: int, num: int | None, seed: int
                   ) -> np.ndarray:
  patches = denoising.photo_patches(names, patch_size=patch_size, num=num, seed=seed)
  patches.flags.writeable = False  # Cached: shared by every caller.
  return patches


def images(config, split: str) -> np.ndarray:
  """Every image of `split` of `config.data`, float32 [N, H, W, C] in [0, 1].

  The photo patches are cached, so they come read-only.
  """
  if config.data.name != PHOTOS:
    return common.load_arrays(config, split)[0]
  photos = config.data.photos
  if split == 'train':
    return _photo_patches(tuple(photos.train), photos.patch_size, photos.num_train,
                          config.data.shuffle_seed)
  if split == 'test':
    return _photo_patches(tuple(photos.test), photos.patch_size, None, 0)
  raise ValueError(f"data.name={PHOTOS!r} has splits {_PHOTO_SPLITS}; got {split!r}.")


def _batches(config, split: str, *, batch_size: int, shuffle: bool, start_step: int = 0,
             num_epochs: int | None = None) -> Iterator[dict[str, np.ndarray]]:
  """This process's rows of the batches of `split` from `start_step` on: every
  epoch whole (shuffled, the remainder dropped), or, with `num_epochs`, that many
  in order with the last batch padded ('mask')."""
  data = config.data.name
  if data == PHOTOS:
    data = (images(config, split),)
  elif data_lib.sources.is_own_data(data):
    data = common.data_source(config, split)
  return data_lib.batches(data, split, batch_size=batch_size, seed=config.data.shuffle_seed,
                          shuffle=shuffle, drop_remainder=num_epochs is None,
                          binarize=config.data.binarize, num_epochs=num_epochs,
                          start_step=start_step, data_dir=config.data.data_dir)


def _element_shape(config) -> tuple[int, int, int]:
  if config.data.name == PHOTOS:
    return (config.data.photos.patch_size,) * 2 + (1,)
  return tuple(common.data_source(config, config.data.train_split).element_shape)


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(make_objective, model, config.loss)


def validate(config) -> None:
  common.validate_sections(config, image_data=config.data.name != PHOTOS)
  if config.data.name == PHOTOS:
    for field in ('train_split', 'eval_split'):
      if config.data[field] not in _PHOTO_SPLITS:
        raise ValueError(f'config.data.{field}={config.data[field]!r}: the photo patches have '
                         f'splits {_PHOTO_SPLITS}.')
    if config.data.photos.num_train < config.data.batch_size:
      raise ValueError(f'config.data.photos.num_train={config.data.photos.num_train} is smaller '
                       f'than config.data.batch_size={config.data.batch_size}.')
  model, _ = _model_and_objective(config)
  height, width, _ = _element_shape(config)
  factor = 2 ** model.levels
  if height % factor or width % factor:
    raise ValueError(f'config.model.levels={model.levels}: the {height}x{width} images of '
                     f'{config.data.name!r} are not divisible by 2**levels = {factor}.')


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def make_stage(config, name, trained):
  del name, trained
  model, objective = _model_and_objective(config)
  x = jnp.zeros((1, *_element_shape(config)), jnp.float32)
  return common.objective_stage(
      config, model=model, objective=objective, init_variables=lambda key: model.init(key, x),
      train_data=lambda start_step: _batches(
          config, config.data.train_split, batch_size=config.data.batch_size, shuffle=True,
          start_step=start_step),
      eval_data=lambda: _batches(config, config.data.eval_split,
                                 batch_size=config.data.eval_batch_size, shuffle=False,
                                 num_epochs=1))


def eval_images(config) -> np.ndarray:
  """The first `data.eval_batch_size` images of the eval split, whole (every process's rows)."""
  if config.data.name == PHOTOS:
    return np.asarray(images(config, config.data.eval_split)[:config.data.eval_batch_size])
  batch = common.eval_images(config, config.data.eval_batch_size)
  return batch['image'][batch['mask'] > 0]


def finish(config, trained, workdir) -> dict[str, float]:
  fitted = trained['model']
  model, variables = fitted.stage.model, fitted.variables
  clean = eval_images(config)
  lo, hi = config.loss.get('sigma_min', 0.0), config.loss.get('sigma_max', 0.4)
  # A quarter, half and three quarters into the training range; the middle one is scored.
  sigmas = [lo + (hi - lo) * q for q in (0.25, 0.5, 0.75)]
  noisy = [denoising.add_noise(clean, s, jax.random.fold_in(fitted.eval_key, i))
           for i, s in enumerate(sigmas)]
  # One call (one compilation) denoises every level.
  denoised = np.split(denoising.denoise(model, variables, np.concatenate(noisy)), len(sigmas))
  metrics = {'psnr_noisy': float(np.mean(denoising.psnr(clean, noisy[1]))),
             'psnr_dae': float(np.mean(denoising.psnr(clean, denoised[1])))}
  if jax.process_index() == 0:
    from ae_jax import plotting  # pylint: disable=g-import-not-at-top
    n = min(config.train.num_figure_examples, len(clean))
    rows, labels = [], []
    for sigma, x_noisy, x_dae in zip(sigmas, noisy, denoised):
      for row, what in ((x_noisy, 'noisy'), (x_dae, 'DAE')):
        rows.append(row[:n])
        score = np.mean(denoising.psnr(clean[:n], row[:n]))
        labels.append(f'σ={sigma:.2g} {what}\n{score:.1f} dB')
    rows.append(clean[:n])
    labels.append('clean')
    plotting.save_image_rows(rows, plotting.figure_path(workdir, 'denoising.png'),
                             row_labels=labels,
                             title=f'{common.title(config)} on {config.data.name}: eval images')
    common.training_curves(fitted, workdir)
  return metrics
