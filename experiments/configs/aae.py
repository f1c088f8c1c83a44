"""Adversarial autoencoder (Makhzani et al. 2015): 784-512-256-2 MLP encoder, its
mirror as decoder, and a 2-256-256-1 discriminator on the codes.

The argument picks a preset and the variant, comma-separated:
  gaussian (the default)  N(0, I);
  mixture                 10 Gaussians on a circle (one per digit class);
  conditional             the mixture, with a discriminator that also sees the
                          one-hot label, so each class fills its own component
                          (the paper's label-regularised picture);
  semisupervised          the semi-supervised AAE of the paper's section 5
                          (recipe 'ssaae'): a 10-way categorical code and a
                          10-d style, 784-1000-1000 networks, with
                          `data.num_labels` (100) labelled training examples;
  supervised              its baseline: the same trunk and class head trained
                          by cross-entropy on the same labelled examples alone;
and, for the last two, `fashion` for Fashion-MNIST (60k/10k) instead of the
MNIST 5k subset (4k/1k).

  python -m experiments.main --config=experiments/configs/aae.py --workdir=runs/aae
  python -m experiments.main --config=experiments/configs/aae.py:mixture --workdir=runs/aae_mix
  python -m experiments.main --config=experiments/configs/aae.py:conditional --workdir=runs/aae_cond
  python -m experiments.main --config=experiments/configs/aae.py:smoke,mixture --workdir=/tmp/aae
  python -m experiments.main --config=experiments/configs/aae.py:semisupervised \
      --config.data.num_labels=1000 --workdir=runs/ssaae_1000
  python -m experiments.main --config=experiments/configs/aae.py:supervised \
      --config.data.num_labels=1000 --workdir=runs/ssaae_sup_1000

`config.optim` trains encoder and decoder on the reconstruction;
`config.disc_optim` the discriminator; `config.gen_optim` the encoder as the
generator. Eval metrics: recon, disc_loss, gen_loss, disc_accuracy and mmd
(unbiased MMD², IMQ kernel, between test codes and prior samples).
The semi-supervised variant adds `config.semi_optim` (the cross-entropy phase)
and reports the test classification error `error` over the whole test split;
the supervised baseline trains with `config.optim` alone.
"""

import ml_collections

from experiments.configs import common

PRIOR_CHOICES = ('gaussian', 'mixture', 'conditional')
LABEL_CHOICES = ('semisupervised', 'supervised')
DATA_CHOICES = ('fashion',)
# The arguments get_config takes, for the launcher's --help (comma-separated combinations too).
ARGS = (common.PRESETS + PRIOR_CHOICES + LABEL_CHOICES
        + tuple(f'{c},{d}' for c in LABEL_CHOICES for d in DATA_CHOICES))


def _parse(arg):
  preset, prior, fashion = None, 'gaussian', False
  for part in filter(None, (arg or '').split(',')):
    if part in PRIOR_CHOICES + LABEL_CHOICES:
      prior = part
    elif part in DATA_CHOICES:
      fashion = True
    elif part in common.PRESETS:
      preset = part
    else:
      raise ValueError(f'Unknown config argument {part!r}: expected a preset from '
                       f'{common.PRESETS}, a variant from {PRIOR_CHOICES + LABEL_CHOICES} '
                       f'and/or {DATA_CHOICES}.')
  if fashion and prior not in LABEL_CHOICES:
    raise ValueError(f"Config argument 'fashion' goes with {LABEL_CHOICES}, not {prior!r}.")
  return preset, prior, fashion


def _semisupervised(preset, supervised, fashion):
  """The semi-supervised AAE (recipe 'ssaae') or its supervised baseline."""
  config = common.base_config()
  config.recipe = 'ssaae'
  config.model = dict(name='ssaae', input_dim=784, hidden=(512, 512), latent_dim=10,
                      num_classes=10, disc_hidden=(256, 256))
  config.loss = dict(reconstruction='bernoulli', supervised_only=supervised)
  # Both variants train the classifier with the same Adam settings: config.optim
  # for the baseline, config.semi_optim beside the other three phases here.
  classifier = dict(name='adam', learning_rate=1e-3)
  if supervised:
    config.optim = ml_collections.ConfigDict(classifier)
  else:
    config.optim.learning_rate = 1e-3
    # The adversarial phases at the reconstruction's rate, as in the AAE above: at
    # 1e-4 the style discriminator won (loss 0.40), the style carried the digit and
    # the class code was ignored (100 labels: 26.0% test error after 1,000 steps,
    # against 16.6% after 250 at 1e-3).
    config.disc_optim = ml_collections.ConfigDict(dict(name='adam', learning_rate=1e-3))
    config.gen_optim = ml_collections.ConfigDict(dict(name='adam', learning_rate=1e-3))
    config.semi_optim = ml_collections.ConfigDict(classifier)
  config.data.num_labels = 100
  config.data.label_seed = 0
  config.data.batch_size = 100
  # 25 epochs of the 4,000 MNIST 5k training digits: minutes on 2 CPU cores.
  config.train.num_train_steps = 1000
  config.train.eval_every_steps = 250
  config.train.checkpoint_every_steps = 250
  config.train.log_every_steps = 50
  config.train.num_eval_batches = None  # The whole test split.
  config.train.num_figure_examples = 16
  config.data.eval_batch_size = 500
  if fashion:
    config.data.name = 'fashion_mnist'
    config.data.eval_batch_size = 1000
  config = common.with_preset(config, preset)
  if preset == 'smoke':
    config.model.hidden = (32,)
    config.model.disc_hidden = (16,)
    config.data.num_labels = 20
  elif preset == 'colab_tpu':
    config.data.name = 'fashion_mnist'
    config.data.batch_size = 100  # At most num_labels: every step draws a labelled batch.
  return config


def get_config(arg=None):
  preset, prior, fashion = _parse(arg)
  if prior in LABEL_CHOICES:
    return _semisupervised(preset, prior == 'supervised', fashion)
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
