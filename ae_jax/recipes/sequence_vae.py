"""GRU sequence VAE on MOSES molecules, as SMILES or SELFIES tokens.

`config.model.name` is 'sequence_vae' (`models.SequenceVAE`); `config.loss`
holds `beta` and `warmup_steps` of `objectives.make_sequence_vae_objective`
(the KL weight annealed linearly from 0). `config.data.name` is 'moses':
`representation` ('smiles' or 'selfies') and `max_length` fix the tokenizer,
`num_train_molecules` / `num_eval_molecules` and `subset_seed` the fixed
random subsets of the splits (`ae_jax.molecules.data.source_from_config`),
served as int32 rows under the batch key 'tokens'. One stage, 'model'.

Figures: reconstructions.png (test SMILES beside the greedy decoding of
their posterior means), latent_map.png (posterior means of test molecules),
training_curves.png. Sampling and MOSES's metrics are the application's
(`python -m experiments.molecules`).

RDKit, SELFIES and matplotlib are imported only when the data are first read
(RDKit checks and tokenizes every molecule) or the figures drawn.

References:
  Gómez-Bombarelli et al., "Automatic chemical design using a data-driven
  continuous representation of molecules", ACS Cent. Sci. 2018. Bowman et
  al., "Generating sentences from a continuous space", CoNLL 2016 (KL
  annealing). Polykovskiy et al., "Molecular Sets (MOSES)", Front.
  Pharmacol. 2020.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from ae_jax import data as data_lib
from ae_jax import models
from ae_jax import objectives
from ae_jax.molecules import data as molecule_data
from ae_jax.recipes import common

MODELS = {'sequence_vae': models.SequenceVAE}

# Test molecules whose posterior means the latent map draws (at least the
# figure examples).
_NUM_MAP_MOLECULES = 200


def _model_and_objective(config):
  model = common.build_model(config.model, MODELS)
  return model, common.build_objective(objectives.make_sequence_vae_objective, model,
                                       config.loss)


def _check_data(config) -> None:
  """The molecule fields of `config.data`, and the model against the tokenizer.

  An embedding lookup past the vocabulary would not fail under jit (JAX
  clips the index), so the sizes are compared up front.
  """
  data = config.data
  if data.name not in molecule_data.MOLECULE_DATASETS:
    raise ValueError(f'config.data.name={data.name!r} is not a molecule dataset; expected one '
                     f'of {molecule_data.MOLECULE_DATASETS}.')
  for field in ('train_split', 'eval_split'):
    if data[field] not in molecule_data.MOSES_SPLITS:
      raise ValueError(f'config.data.{field}={data[field]!r} is not a MOSES split '
                       f'{molecule_data.MOSES_SPLITS}.')
  if data.get('binarize'):
    raise ValueError('config.data.binarize=True applies to images; molecules are token rows.')
  for field in ('num_train_molecules', 'num_eval_molecules'):
    value = data.get(field)
    if value is not None and value <= 0:
      raise ValueError(f'config.data.{field} must be > 0 (or None for the whole split), '
                       f'got {value}.')
  if data.get('data_dir') is not None:
    raise ValueError(f'config.data.data_dir={data.data_dir!r} has no effect: the MOSES splits '
                     'come with the molsets package; leave it at None.')
  if data.get('num_train_molecules') is not None and data.batch_size > data.num_train_molecules:
    raise ValueError(f'config.data.batch_size={data.batch_size} is larger than '
                     f'config.data.num_train_molecules={data.num_train_molecules}; it must be at '
                     'most that.')
  num_eval, num_batches = data.get('num_eval_molecules'), config.train.get('num_eval_batches')
  if num_eval is not None and num_batches is not None:
    available = -(-num_eval // data.eval_batch_size)
    if num_batches > available:
      raise ValueError(
          f'config.train.num_eval_batches={num_batches} is more than the {available} batch(es) '
          f'of config.data.eval_batch_size={data.eval_batch_size} that '
          f'config.data.num_eval_molecules={num_eval} make; it must be at most {available}.')
  tok = molecule_data.tokenizer_from_config(data)
  if config.model.get('vocab_size') != tok.vocab_size:
    raise ValueError(
        f'config.model.vocab_size={config.model.get("vocab_size")} but the '
        f'{tok.representation} tokenizer has {tok.vocab_size} tokens; build the config with '
        'the representation as its argument (e.g. molecule_vae.py:default,smiles).')
  if config.model.get('max_length') != tok.max_length:
    raise ValueError(f'config.model.max_length={config.model.get("max_length")} differs from '
                     f'config.data.max_length={tok.max_length}.')
  molecule_data.moses_data_dir()  # Names the install command when molsets is missing.


def validate(config) -> None:
  common.validate_sections(config, image_data=False)
  _check_data(config)
  _model_and_objective(config)


def stages(config) -> tuple[str, ...]:
  del config
  return ('model',)


def _source(config, split: str) -> molecule_data.TokenSource:
  # Cached per arguments: each split is read, checked and tokenized once per process.
  return molecule_data.source_from_config(config.data, split)


def train_data(config):
  """`train_data(start_step)`: shuffled train token rows from that step on (this
  process's rows)."""
  return lambda start_step: data_lib.batches(
      _source(config, config.data.train_split), batch_size=config.data.batch_size,
      seed=config.data.shuffle_seed, shuffle=True, start_step=start_step)


def eval_data(config):
  """`eval_data()`: one pass over the eval rows in order, the last batch padded (mask 0)."""
  return lambda: data_lib.batches(
      _source(config, config.data.eval_split), batch_size=config.data.eval_batch_size,
      shuffle=False, drop_remainder=False, num_epochs=1)


def make_stage(config, name, trained):
  del name, trained
  model, objective = _model_and_objective(config)
  # Only the shape and dtype matter to init: no data is read here.
  tokens = jnp.zeros((1, config.data.max_length), jnp.int32)
  return common.objective_stage(
      config, model=model, objective=objective,
      init_variables=lambda key: model.init(key, tokens, key),
      train_data=train_data(config), eval_data=eval_data(config))


def finish(config, trained, workdir) -> dict[str, float]:
  fitted = trained['model']
  if jax.process_index() != 0:
    return {}
  # RDKit (through `figures` and `generation`'s metrics) and matplotlib load here.
  from ae_jax import plotting  # pylint: disable=g-import-not-at-top
  from ae_jax.molecules import figures  # pylint: disable=g-import-not-at-top
  from ae_jax.molecules import generation  # pylint: disable=g-import-not-at-top
  model, variables = fitted.stage.model, fitted.variables
  n = config.train.num_figure_examples
  source = _source(config, config.data.eval_split)
  tok = molecule_data.tokenizer_from_config(config.data)
  smiles = list(source.smiles[:n])
  # Batches of the figures' own sizes: the default of 500 rows would pad 8 to 500.
  _, decoded = generation.reconstruction_accuracy(model, variables, source.tokens[:n], smiles,
                                                  tok=tok, batch_size=len(smiles))
  figures.save_reconstruction_table(
      smiles, decoded, plotting.figure_path(workdir, 'reconstructions.png'),
      title=f'{config.recipe} ({tok.representation}): test molecules, greedy reconstructions')
  count = min(len(source), max(n, _NUM_MAP_MOLECULES))
  plotting.save_latent_map(
      generation.encode_means(model, variables, source.tokens[:count], batch_size=count), None,
      plotting.figure_path(workdir, 'latent_map.png'),
      title=f'{config.recipe} ({tok.representation}): μ of {count} test molecules')
  common.training_curves(fitted, workdir)
  return {}
