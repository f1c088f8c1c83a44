"""Scores a finished run's samples: Fréchet distance in a small classifier's features
and the nearest-training-image check (`ae_jax.applications.sample_quality`).

Restores the run in --model_workdir (trained with the same --config), draws
samples from its prior and writes <workdir>/sample_quality_<recipe>.json. The
feature classifier is trained on the config's train split once and cached in
<workdir>/sample_quality_classifier.msgpack, so runs scored into the same
--workdir share one network and their numbers compare:

  python -m experiments.sample_quality --config=experiments/configs/conv_vae.py \
      --model_workdir=runs/conv_vae --workdir=runs/sample_quality
  python -m experiments.sample_quality --config=experiments/configs/diffusion_ae.py \
      --model_workdir=runs/diffusion_ae --workdir=runs/sample_quality

Recipes: 'vae' (decoded N(0, I) codes, Bernoulli means) and 'diffusion_ae'
(latent-DDPM z_sem, DDIM-decoded with the EMA weights).
"""

import json
import os

import jax
import numpy as np

from ae_jax import training
from ae_jax.applications import diffusion as diffusion_app
from ae_jax.applications import sample_quality
from ae_jax.recipes import common
from ae_jax.recipes import diffusion_ae
from experiments import cli

NUM_SAMPLES = 128  # As the diffusion config's num_quality_samples: the distance depends on it.


def draw(config, trained, key: jax.Array, num: int) -> np.ndarray:
  """num samples [num, H, W, C] in [0, 1] from a restored run's prior."""
  shape = common.example_images(config).shape[1:]
  if config.recipe == 'vae':
    model = trained['model'].stage.model
    encode = common.jit_apply(model, 'encode')
    decode = common.jit_apply(model, 'decode')
    variables = trained['model'].variables
    mean, _ = encode(variables, common.example_images(config))
    logits = decode(variables, jax.random.normal(key, (num,) + mean.shape[1:]))
    return common.decode_pixels(np.asarray(logits), config).reshape((num, *shape))
  if config.recipe == 'diffusion_ae':
    fitted = trained['model']
    prior = diffusion_ae.latent_prior(config, trained['latent'])
    return np.asarray(diffusion_app.sample(fitted.stage.model, diffusion_ae.ema_variables(fitted),
                                           prior, key, num, shape))
  raise ValueError(f"Scoring samples needs recipe 'vae' or 'diffusion_ae', got {config.recipe!r}.")


def run(config, workdir: str, model_workdir: str | None = None) -> dict[str, float]:
  if model_workdir is None:
    raise ValueError('--model_workdir must name the finished run to score.')
  trained = training.restore(config, model_workdir)
  samples = draw(config, trained, jax.random.key(config.train.seed), NUM_SAMPLES)
  train_x, train_y = common.load_arrays(config, config.data.train_split)
  test_x, _ = common.load_arrays(config, config.data.eval_split)
  os.makedirs(workdir, exist_ok=True)
  classifier = sample_quality.load_or_train_classifier(
      os.path.join(workdir, sample_quality.CLASSIFIER_FILE), train_x, train_y,
      key=jax.random.key(0))
  result = {'run': os.path.abspath(model_workdir), 'recipe': config.recipe,
            **sample_quality.score(classifier, samples, test_x, train_x)}
  with open(os.path.join(workdir, f'sample_quality_{config.recipe}.json'), 'w') as f:
    json.dump(result, f, indent=1)
  print(json.dumps(result, indent=1), flush=True)
  return result


if __name__ == '__main__':
  cli.run_app(run, config_help='The scored run\'s config, e.g. experiments/configs/conv_vae.py.',
              model_workdir_help='The finished run whose samples are scored.')
