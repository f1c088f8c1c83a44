"""Overcomplete MLP autoencoder, 784 -> 1024 -> 784, unconstrained or regularised.

The code (1,024 units) is wider than the input (784 pixels), one dense layer
each way: unconstrained, it can learn the identity (Goodfellow et al. 2016,
§14.1). The argument picks a variant and, comma-separated, a preset of
`common.PRESETS`:

  (none) / default  unconstrained: reconstruction only, linear code;
  unconstrained_sigmoid  the same with a sigmoid code (the control for the
                    constrained variants' nonlinear codes);
  sparse_l1         + λ·Σ|z| on a ReLU code;
  sparse_kl         + β·Σ_j KL(ρ‖ρ̂_j) on a sigmoid code;
  denoising         half the pixels zeroed (masking noise), clean target;
  contractive       + λ·‖J_f(x)‖²_F on a sigmoid code, estimated with random
                    probes (the exact modes form a 1024x1024 Jacobian per image).

  python -m experiments.main --config=experiments/configs/overcomplete.py --workdir=runs/overcomplete_plain
  python -m experiments.main --config=experiments/configs/overcomplete.py:denoising --workdir=runs/overcomplete_dae
  python -m experiments.main --config=experiments/configs/overcomplete.py:contractive,smoke --workdir=/tmp/oc

`python -m experiments.overcomplete` trains every variant of
`config.overcomplete.variants` and measures which ones copy.
"""

import ml_collections

from experiments.configs import common

UNCONSTRAINED = 'unconstrained'
CODE_WIDTH = 1024

# Every variant reconstructs with a linear decoder and the mean squared error
# (`RECONSTRUCTION`): through a sigmoid output with the Bernoulli loss of the
# other configs the decoder saturates on the digits' black background, which
# already keeps any model from copying what it is given there (the README's
# table shows it). Per variant: the code's activation and the loss fields; the
# weights are for this per-pixel-mean MSE (see the README for what was tried).
RECONSTRUCTION = dict(reconstruction='mse', output_activation='identity')
VARIANTS = {
    UNCONSTRAINED: (None, {}),
    'unconstrained_sigmoid': ('sigmoid', {}),
    'sparse_l1': ('relu', dict(l1_weight=3e-5)),
    'sparse_kl': ('sigmoid', dict(kl_sparsity_weight=1e-4, rho=0.05)),
    # Masking: Gaussian noise clipped to [0, 1] brightens the black background in training,
    # and the model then reconstructs clean digits poorly (σ 0.5 kept -0.44 of their variance).
    'denoising': ('sigmoid', dict(objective='denoising', noise='masking', noise_level=0.5)),
    'contractive': ('sigmoid', dict(objective='contractive', weight=3e-5, mode='estimate',
                                    num_probes=4)),
}

# The arguments get_config takes, for the launcher's --help (comma-separated combinations too).
ARGS = common.PRESETS + tuple(VARIANTS)


def parse_arg(arg: str | None) -> tuple[str, str]:
  """(variant, preset) from 'variant', 'preset' or 'variant,preset'."""
  variant, preset = UNCONSTRAINED, 'default'
  for part in filter(None, (arg or '').split(',')):
    if part in VARIANTS:
      variant = part
    elif part in common.PRESETS:
      preset = part
    else:
      raise ValueError(f'Unknown config argument {part!r}: expected a variant from '
                       f'{sorted(VARIANTS)} and/or a preset from {common.PRESETS}.')
  return variant, preset


def set_variant(config: ml_collections.ConfigDict, variant: str) -> ml_collections.ConfigDict:
  """Gives `config` (locked or not) the code activation and loss section of `variant`."""
  if variant not in VARIANTS:
    raise ValueError(f'config.overcomplete.variants: unknown variant {variant!r}; expected '
                     f'one of {sorted(VARIANTS)}.')
  activation, loss = VARIANTS[variant]
  with config.unlocked():
    config.model.latent_activation = activation
    config.loss = ml_collections.ConfigDict({**loss, **RECONSTRUCTION})
    config.overcomplete.variant = variant
  return config


def get_config(arg=None):
  variant, preset = parse_arg(arg)
  config = common.base_config()
  config.recipe = 'autoencoder'
  config.model = dict(name='mlp_ae', hidden=(), latent_dim=CODE_WIDTH, activation='relu',
                      latent_activation=None)
  config.train.num_train_steps = 2000
  config.train.eval_every_steps = 1000
  config.train.checkpoint_every_steps = 1000
  smoke = preset == 'smoke'
  # Read by `python -m experiments.overcomplete`; the launcher ignores it.
  config.overcomplete = dict(
      variant=variant,
      # The smoke preset runs two, to keep the script's end-to-end test short.
      variants=(UNCONSTRAINED, 'denoising') if smoke else tuple(VARIANTS),
      noise_seed=0,                       # the uniform-noise test images
      probe_inverse_regularization=1.0,   # C of the logistic-regression probe
      probe_max_iter=100 if smoke else 1000,
      num_probe_train=200 if smoke else 0,  # train images the probe fits on (0: all)
      num_figure_examples=4 if smoke else 8,
      batch_size=256,                     # examples per jitted inference call
  )
  set_variant(config, variant)
  return common.with_preset(config, preset)
