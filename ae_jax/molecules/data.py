"""MOSES molecules as token arrays the batch iterator can serve.

The MOSES benchmark's splits ship inside the `molsets` wheel as
`moses/dataset/data/{train,test,test_scaffolds}.csv.gz` (one 'SMILES' column;
1,584,663 / 176,074 / 176,225 molecules). They are read from the installed
files without importing the `moses` package, whose own dependencies are old:
install it with `pip install --no-deps molsets`.

`open_moses_source` takes a fixed random subset of a split (the first
`num_molecules` of a permutation drawn from numpy's PCG64 with `seed`),
tokenizes it once, and returns a `TokenSource`: a source in the sense of
`ae_jax.data.sources` whose examples are int32 token rows [L] served under the
batch key 'tokens'. Strings that cannot be tokenized or parsed are counted by
reason and skipped before training starts, so no bad string can stop an epoch.

References:
  Polykovskiy et al., "Molecular Sets (MOSES): a benchmarking platform for
  molecular generation models", Front. Pharmacol. 2020,
  https://github.com/molecularsets/moses.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import gzip
import importlib.util
import os
from typing import Any

import numpy as np

from ae_jax.data import sources
from ae_jax.molecules import tokenizer as tokenizer_lib

MOSES_SPLITS = ('train', 'test', 'test_scaffolds')
MOLECULE_DATASETS = ('moses',)
"""Values of `config.data.name` served as token arrays (`ae_jax.recipes.sequence_vae`)."""

INSTALL_HINT = '`pip install --no-deps molsets` (or `pip install -e .[molecules]` then that)'


class MolsetsNotFoundError(sources.DatasetNotFoundError):
  """The MOSES csv files are not installed; says how to install them."""


def moses_data_dir() -> str:
  """Directory of the installed MOSES csv files, found without importing `moses`.

  Raises:
    MolsetsNotFoundError: `molsets` is not installed or lacks its data files.
  """
  spec = importlib.util.find_spec('moses')
  if spec is None or not spec.submodule_search_locations:
    raise MolsetsNotFoundError(
        'The MOSES data ships with the PyPI package molsets, which is not installed: '
        f'{INSTALL_HINT}.')
  for root in spec.submodule_search_locations:
    directory = os.path.join(root, 'dataset', 'data')
    if os.path.isfile(os.path.join(directory, 'train.csv.gz')):
      return directory
  raise MolsetsNotFoundError(
      'A package named moses is installed but has no dataset/data/train.csv.gz; install '
      f'the molsets wheel: {INSTALL_HINT}.')


@functools.cache
def read_moses(split: str) -> tuple[str, ...]:
  """All SMILES of a MOSES split ('train', 'test' or 'test_scaffolds'), in file order."""
  if split not in MOSES_SPLITS:
    raise ValueError(f'MOSES has splits {MOSES_SPLITS}; got {split!r}.')
  path = os.path.join(moses_data_dir(), f'{split}.csv.gz')
  with gzip.open(path, 'rt') as f:
    lines = f.read().split('\n')
  if lines[0].strip() != 'SMILES':
    raise ValueError(f'{path}: expected the header SMILES, got {lines[0][:40]!r}.')
  return tuple(line.strip() for line in lines[1:] if line.strip())


def moses_subset(split: str, num_molecules: int | None, *, seed: int = 0) -> list[str]:
  """A fixed random subset of a split: all of it when `num_molecules` is None."""
  smiles = read_moses(split)
  if num_molecules is None or num_molecules >= len(smiles):
    return list(smiles)
  if num_molecules <= 0:
    raise ValueError(f'num_molecules must be > 0, got {num_molecules}.')
  order = np.random.Generator(np.random.PCG64(seed)).permutation(len(smiles))
  return [smiles[i] for i in order[:num_molecules]]


def rdkit_parses(smiles: str) -> bool:
  """True iff RDKit parses and sanitizes `smiles` (and it is not empty)."""
  from ae_jax.molecules import metrics  # pylint: disable=g-import-not-at-top
  return metrics.to_mol(smiles) is not None


@dataclasses.dataclass(frozen=True, eq=False)
class TokenSource:
  """Tokenized molecules, served by `ae_jax.data.batches` under the key 'tokens'.

  Attributes:
    name: e.g. 'moses:train'.
    tokens: int32 [N, L] rows (see `tokenizer.Tokenizer.encode`).
    smiles: the N SMILES the rows encode.
    skipped: how many strings of the requested subset were skipped, by reason.
  """

  name: str
  tokens: np.ndarray
  smiles: tuple[str, ...]
  skipped: collections.Counter
  dtype = np.int32
  input_key = 'tokens'

  @property
  def element_shape(self) -> tuple[int, ...]:
    return tuple(self.tokens.shape[1:])

  def __len__(self) -> int:
    return len(self.tokens)

  def get(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return self.tokens[indices], np.full((len(indices),), -1, np.int32)


def encode_molecules(smiles: list[str], tok: tokenizer_lib.Tokenizer, *, name: str,
                     check_rdkit: bool = True) -> TokenSource:
  """Tokenizes `smiles`; counts and skips what cannot be tokenized or parsed.

  Args:
    smiles: SMILES strings.
    tok: the tokenizer.
    name: the source's name, for messages.
    check_rdkit: also skip strings RDKit cannot parse (reason 'rdkit').

  Raises:
    ValueError: no string survived, with the counts by reason.
  """
  skipped = collections.Counter()
  num_given = len(smiles)
  if check_rdkit:
    parsed = [s for s in smiles if isinstance(s, str) and s and rdkit_parses(s)]
    skipped['rdkit'] = len(smiles) - len(parsed)
    smiles = parsed
  rows, kept, token_skipped = tok.encode_many(smiles)
  skipped.update(token_skipped)
  skipped = collections.Counter({k: v for k, v in skipped.items() if v})
  if not len(rows):
    raise ValueError(f'{name}: none of the {num_given} strings could be tokenized as '
                     f'{tok.representation}; skipped by reason: {dict(skipped)}.')
  return TokenSource(name=name, tokens=rows, smiles=tuple(smiles[i] for i in kept),
                     skipped=skipped)


@functools.lru_cache(maxsize=16)
def open_moses_source(split: str, *, representation: str, max_length: int,
                      num_molecules: int | None, seed: int = 0) -> TokenSource:
  """A tokenized random subset of a MOSES split (cached per arguments).

  Args:
    split: 'train', 'test' or 'test_scaffolds'.
    representation: 'smiles' or 'selfies'.
    max_length: L of the tokenizer (longer molecules are skipped, reason 'too_long').
    num_molecules: size of the subset; None for the whole split.
    seed: seed of the subset.

  Returns:
    The source; `source.skipped` says what was left out.
  """
  tok = tokenizer_lib.Tokenizer(representation, max_length=max_length)
  smiles = moses_subset(split, num_molecules, seed=seed)
  return encode_molecules(smiles, tok, name=f'moses:{split}')


def tokenizer_from_config(data_config: Any) -> tokenizer_lib.Tokenizer:
  """The tokenizer a run's `config.data` describes."""
  return tokenizer_lib.Tokenizer(data_config.representation, max_length=data_config.max_length)


def source_from_config(data_config: Any, split: str) -> TokenSource:
  """The source of `split` for a run's `config.data` (name 'moses').

  The train split takes `data_config.num_train_molecules`, the others
  `num_eval_molecules`; `subset_seed` fixes the subsets.
  """
  if data_config.name not in MOLECULE_DATASETS:
    raise ValueError(f'{data_config.name!r} is not a molecule dataset {MOLECULE_DATASETS}.')
  num = (data_config.num_train_molecules if split == 'train'
         else data_config.num_eval_molecules)
  return open_moses_source(split, representation=data_config.representation,
                           max_length=data_config.max_length, num_molecules=num,
                           seed=data_config.subset_seed)
