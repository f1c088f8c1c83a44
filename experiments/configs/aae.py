"""Adversarial autoencoder (Makhzani et al. 2015): 784-512-256-2 MLP encoder, its
mirror as decoder, and a 2-256-256-1 discriminator on the codes.

The argument picks a preset and the prior, comma-separated:
  gaussian (the default)  N(0, I);
  mixture                 10 Gaussians on a circle (one per digit class);
  conditional             the mixture, with a discriminator that also sees the
                          one-hot label, so each class fills its own component
                          (the paper's label-regularised picture).

  python -m experiments.main --config=experiments/configs/aae.py --workdir=runs/aae
  python -m experiments.main --config=experiments/configs/aae.py:mixture --workdir=runs/aae_mix
  python -m experiments.main --config=experiments/configs/aae.py:conditional --workdir=runs/aae_cond
  python -m experiments.main --config=experiments/configs/aae.py:smoke,mixture --workdir=/tmp/aae

`config.optim` trains encoder and decoder on the reconstruction;
`config.disc_optim` the discriminator; `config.gen_optim` the encoder as the
generator. Eval metrics: recon, disc_loss, gen_loss, disc_accuracy and mmd
(unbiased MMD², IMQ kernel, between test codes and prior samples).
"""

import ml_collections

from experiments.configs import common

PRIOR_CHOICES = ('gaussian', 'mixture', 'conditional')


def _parse(arg):
  preset, prior = None, 'gaussian'
  for part in filter(None, (arg or '').split(',')):
    if part in PRIOR_CHOICES:
      prior = part
    elif part in common.PRESETS:
      preset = part
    else:
      raise ValueError(f'Unknown config argument {part!r}: expected a preset from '
                       f'{common.PRESETS} and/or a prior from {PRIOR_CHOICES}.')
  return preset, prior


def get_config(arg=None):
  preset, prior = _parse(arg)
  config = common.base_config()
  config.recipe = 'aae'
  config.model = dict(name='aae', input_dim=784, hidden=(512, 256), latent_dim=2,
                      disc_hidden=(256, 256), num_classes=10 if prior == 'conditional' else 0)
  config.loss = dict(
      prior='gaussian' if prior == 'gaussian' else 'mixture', num_components=10,
      prior_radius=4.0, prior_radial_std=1.0, prior_tangential_std=0.25,
      reconstruction='bernoulli', mmd_kernel='imq', mmd_bandwidths=(1.0,))
  config.optim.learning_rate = 1e-3
  # The adversarial phases at the reconstruction's rate: at 2e-4 the labelled
  # (conditional) run left most classes off their own components.
  config.disc_optim = ml_collections.ConfigDict(dict(name='adam', learning_rate=1e-3))
  config.gen_optim = ml_collections.ConfigDict(dict(name='adam', learning_rate=1e-3))
  config.train.num_train_steps = 3000
  config.train.eval_every_steps = 500
  config.train.checkpoint_every_steps = 500
  config.train.log_every_steps = 50
  config.train.num_figure_examples = 16
  config.data.eval_batch_size = 500
  return common.with_preset(config, preset)
