"""Sequence VAE on MOSES molecules (SELFIES by default), judged by MOSES's metrics.

  python -m experiments.molecules --config=experiments/configs/molecule_vae.py --workdir=runs/mol
  python -m experiments.molecules --config=experiments/configs/molecule_vae.py:default,smiles \
      --workdir=runs/mol_smiles
  python -m experiments.main --config=experiments/configs/molecule_vae.py:smoke --workdir=/tmp/m

The argument is a preset ('default', 'smoke', 'colab_tpu') and optionally the
representation ('selfies' or 'smiles'), comma-separated. The recipe is
`ae_jax.recipes.sequence_vae`: `experiments.main` trains it (into
<workdir>/model/, figures in <workdir>/figures/); `experiments.molecules`
trains it the same way, then samples `molecules.num_samples` molecules and
computes the metrics.

Default (CPU, 2 cores, under 30 minutes): GRU 256 encoder and decoder, Z = 64,
a 200k-molecule subset of MOSES train, 3,000 steps of 128 (about 2 epochs of
the subset), KL weight annealed linearly from 0 to 0.1 over the first 1,500
steps (MOSES's VAE anneals to 0.05).
"""

import ml_collections

from ae_jax.molecules import tokenizer
from experiments.configs import common

# The arguments get_config takes, for the launcher's --help (comma-separated combinations too).
ARGS = common.PRESETS + tuple(tokenizer.REPRESENTATIONS)

# Longest molecule of MOSES train + test + test_scaffolds, in tokens, plus
# <bos> and <eos> (counted with ae_jax.molecules.tokenizer).
MAX_LENGTH = {'smiles': 56, 'selfies': 57}


def get_config(arg=None):
  preset, representation = 'default', 'selfies'
  for part in filter(None, (arg or '').split(',')):
    if part in tokenizer.REPRESENTATIONS:
      representation = part
    elif part in common.PRESETS:
      preset = part
    else:
      raise ValueError(f'Unknown config argument {part!r}: expected a preset from '
                       f'{common.PRESETS} and/or a representation from '
                       f'{tokenizer.REPRESENTATIONS}.')
  vocab_size = tokenizer.Tokenizer(representation, max_length=3).vocab_size
  max_length = MAX_LENGTH[representation]

  config = common.base_config()
  config.recipe = 'sequence_vae'
  config.model = dict(name='sequence_vae', vocab_size=vocab_size, max_length=max_length,
                      embed_dim=64, encoder_hidden=256, decoder_hidden=256, latent_dim=64)
  config.loss = dict(beta=0.1, warmup_steps=1500)
  config.optim.learning_rate = 1e-3
  config.optim.grad_clip_norm = 50.0
  config.data.name = 'moses'
  config.data.representation = representation
  config.data.max_length = max_length
  config.data.num_train_molecules = 200_000
  config.data.num_eval_molecules = 2000
  config.data.subset_seed = 0
  config.data.batch_size = 128
  config.data.eval_batch_size = 500
  config.train.num_train_steps = 3000
  config.train.eval_every_steps = 500
  config.train.checkpoint_every_steps = 500
  config.train.log_every_steps = 100
  config.train.num_eval_batches = 4
  config.molecules = ml_collections.ConfigDict(dict(
      num_samples=10_000, temperature=1.0, num_reconstruction=1000, interpolation_steps=8,
      generation_batch_size=500, intdiv_max=10_000, num_test_properties=10_000))

  if preset == 'smoke':
    config.model.update(embed_dim=16, encoder_hidden=32, decoder_hidden=32, latent_dim=8)
    config.loss.warmup_steps = 4
    config.data.num_train_molecules = 300
    config.data.num_eval_molecules = 64
    config.molecules.update(num_samples=200, num_reconstruction=32, interpolation_steps=4,
                            generation_batch_size=100, num_test_properties=200)
  config = common.with_preset(config, preset)
  if preset == 'colab_tpu':
    # common's colab_tpu preset switches to images; keep the molecules.
    config.data.name = 'moses'
    config.data.num_train_molecules = 2_000_000  # More than MOSES train has: all of it.
    config.data.eval_batch_size = 1000
    config.train.num_eval_batches = 2  # All 2,000 eval molecules.
    config.model.update(encoder_hidden=512, decoder_hidden=512, latent_dim=128)
    config.loss.warmup_steps = 20_000
    config.molecules.num_samples = 30_000
  return config
