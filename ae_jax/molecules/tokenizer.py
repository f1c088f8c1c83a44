"""SMILES and SELFIES tokenizers with start, end and padding tokens.

A `Tokenizer` maps a molecule string to a fixed-length int32 row

    [<bos>, t_1, ..., t_n, <eos>, <pad>, ..., <pad>]     (length `max_length`)

and back. Ids 0, 1, 2 are <pad>, <bos>, <eos>; the representation's tokens
follow in the order of its vocabulary. Padding is id 0 so that a zero row
(the padding rows the batch iterator adds) is all <pad>.

Representations:
  'smiles'   regular-expression SMILES tokens: a bracket atom ('[nH]'), a
             two-letter halogen ('Cl', 'Br'), a one-letter atom, a bond, a
             branch parenthesis or a ring-closure digit ('%NN' for rings >= 10).
             The vocabulary is every token of the MOSES train, test and
             scaffold-test sets (24 tokens, counted over all 1.94M molecules
             with `vocabulary_of`; MOSES keeps only C, N, S, O, F, Cl, Br, H,
             uncharged, without stereochemistry).
  'selfies'  SELFIES symbols (`selfies.split_selfies`); the input is SMILES,
             encoded with `selfies.encoder`. The vocabulary is every symbol of
             the SELFIES of all MOSES molecules (counted the same way). Every
             sequence of these symbols decodes to a valid molecule.

A string that cannot be tokenized (an unknown character or token, a SMILES
that SELFIES cannot parse, a molecule longer than `max_length`) raises a
`TokenizationError` naming the string and the problem; `encode_many` counts
such strings by reason and skips them.

References:
  Weininger, "SMILES, a chemical language and information system", J. Chem.
  Inf. Comput. Sci. 1988. Krenn et al., "Self-referencing embedded strings
  (SELFIES): a 100% robust molecular string representation", Mach. Learn.:
  Sci. Technol. 2020. Schwaller et al., "Molecular transformer", ACS Cent.
  Sci. 2019 (the regular expression for SMILES tokens).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Iterable, Sequence

import numpy as np

PAD, BOS, EOS = '<pad>', '<bos>', '<eos>'
SPECIAL_TOKENS = (PAD, BOS, EOS)
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2

REPRESENTATIONS = ('smiles', 'selfies')

# One SMILES token: bracket atom | two-letter organic-subset atom | one-letter
# atom (aromatic in lower case) | bond, branch, dot, charge, stereo mark | a
# two-digit ring closure | a one-digit ring closure.
_SMILES_TOKEN = re.compile(
    r'\[[^\[\]]+\]|Br|Cl|[BCNOPSFI]|[bcnops]|[()=#\-+\\/:~.@*$]|%\d{2}|\d')

# The order of these tuples fixes the token ids of trained checkpoints: append, never reorder.
MOSES_SMILES_TOKENS = (
    '#', '(', ')', '-', '1', '2', '3', '4', '5', '6', '=', 'Br', 'C', 'Cl', 'F', 'N', 'O',
    'S', '[H]', '[nH]', 'c', 'n', 'o', 's')
"""Every regex SMILES token of MOSES train + test + test_scaffolds."""

MOSES_SELFIES_TOKENS = (
    '[#Branch1]', '[#Branch2]', '[#C]', '[#N]', '[=Branch1]', '[=Branch2]', '[=C]', '[=N]',
    '[=O]', '[=Ring1]', '[=Ring2]', '[=S]', '[Br]', '[Branch1]', '[Branch2]', '[C]', '[Cl]',
    '[F]', '[H]', '[N]', '[NH1]', '[O]', '[P]', '[Ring1]', '[Ring2]', '[S]')
"""Every SELFIES symbol of the SELFIES of MOSES train + test + test_scaffolds."""

DEFAULT_VOCABULARIES = {'smiles': MOSES_SMILES_TOKENS, 'selfies': MOSES_SELFIES_TOKENS}


class TokenizationError(ValueError):
  """A molecule string the tokenizer cannot turn into tokens (says why)."""

  def __init__(self, string: str, reason: str, message: str):
    super().__init__(message)
    self.string = string
    self.reason = reason


def split_smiles(smiles: str) -> list[str]:
  """Regex SMILES tokens of `smiles`, whose concatenation is `smiles`.

  Raises:
    TokenizationError: a character no token pattern matches (reason 'syntax').
  """
  tokens = _SMILES_TOKEN.findall(smiles)
  if ''.join(tokens) != smiles:
    position = 0
    for token in _SMILES_TOKEN.finditer(smiles):
      if token.start() != position:
        break
      position = token.end()
    raise TokenizationError(
        smiles, 'syntax',
        f'SMILES {smiles!r} cannot be tokenized: no SMILES token starts at character '
        f'{position} ({smiles[position:position + 8]!r}).')
  return tokens


def split_selfies(selfies_string: str) -> list[str]:
  """The symbols of a SELFIES string ('[C][=O]' -> ['[C]', '[=O]'])."""
  import selfies  # pylint: disable=g-import-not-at-top
  try:
    return list(selfies.split_selfies(selfies_string))
  except Exception as e:  # selfies raises bare ValueErrors for unbalanced brackets.
    raise TokenizationError(
        selfies_string, 'syntax', f'SELFIES {selfies_string!r} cannot be split: {e}') from None


def smiles_to_selfies(smiles: str) -> str:
  """SELFIES of a SMILES string.

  Raises:
    TokenizationError: SELFIES cannot parse `smiles` (reason 'parse').
  """
  import selfies  # pylint: disable=g-import-not-at-top
  try:
    return selfies.encoder(smiles)
  except selfies.EncoderError as e:
    raise TokenizationError(
        smiles, 'parse',
        f'SMILES {smiles!r} cannot be parsed into SELFIES: {str(e).splitlines()[0]}') from None


def selfies_to_smiles(selfies_string: str) -> str:
  """SMILES of a SELFIES string ('' for a string without atoms)."""
  import selfies  # pylint: disable=g-import-not-at-top
  return selfies.decoder(selfies_string)


def vocabulary_of(strings: Iterable[str], representation: str) -> tuple[str, ...]:
  """Sorted tokens occurring in SMILES `strings` under `representation`.

  This is how `MOSES_SMILES_TOKENS` and `MOSES_SELFIES_TOKENS` were made
  (strings SELFIES cannot parse are left out).
  """
  _check_representation(representation)
  tokens = set()
  for smiles in strings:
    if representation == 'smiles':
      tokens.update(split_smiles(smiles))
    else:
      try:
        tokens.update(split_selfies(smiles_to_selfies(smiles)))
      except TokenizationError:
        continue
  return tuple(sorted(tokens))


def _check_representation(representation: str) -> None:
  if representation not in REPRESENTATIONS:
    raise ValueError(
        f'Unknown molecule representation {representation!r}; expected one of '
        f'{REPRESENTATIONS}.')


class Tokenizer:
  """Fixed-length integer encoding of SMILES or SELFIES (see module docstring).

  >>> tok = Tokenizer('smiles', max_length=12)
  >>> ids = tok.encode('c1ccsc1Cl')
  >>> ids.shape, int(ids[0]) == BOS_ID
  ((12,), True)
  >>> tok.decode(ids)
  'c1ccsc1Cl'
  >>> try:
  ...   tok.encode('CC[Si]C')
  ... except TokenizationError as e:
  ...   print(e.reason, '|', e)
  unknown_token | SMILES 'CC[Si]C' has tokens outside the smiles vocabulary: ['[Si]'].

  Attributes:
    representation: 'smiles' or 'selfies'.
    max_length: L, the length of an encoded row including <bos> and <eos>;
      a molecule may have at most L - 2 tokens.
    tokens: all tokens, index = id (the three special tokens first).
  """

  def __init__(self, representation: str, *, max_length: int,
               vocabulary: Sequence[str] | None = None):
    _check_representation(representation)
    if max_length < 3:
      raise ValueError(f'max_length must be >= 3 (<bos>, a token, <eos>), got {max_length}.')
    vocabulary = tuple(DEFAULT_VOCABULARIES[representation] if vocabulary is None
                       else vocabulary)
    duplicates = sorted(t for t, n in collections.Counter(vocabulary).items() if n > 1)
    if duplicates or set(vocabulary) & set(SPECIAL_TOKENS):
      raise ValueError(
          f'The vocabulary must hold distinct tokens and no special token; duplicates '
          f'{duplicates}, specials {sorted(set(vocabulary) & set(SPECIAL_TOKENS))}.')
    self.representation = representation
    self.max_length = int(max_length)
    self.tokens = SPECIAL_TOKENS + vocabulary
    self._ids = {t: i for i, t in enumerate(self.tokens)}

  @property
  def vocab_size(self) -> int:
    """V: number of token ids, the three special tokens included."""
    return len(self.tokens)

  def first_token_mask(self) -> np.ndarray:
    """bool [V]: the tokens a molecule string may start with (atoms).

    SMILES and SELFIES both start with an atom; SELFIES branch and ring
    symbols at the start would be skipped by the decoder and could leave an
    empty string. Special tokens are excluded.
    """
    mask = np.zeros((self.vocab_size,), bool)
    for i, token in enumerate(self.tokens):
      if token in SPECIAL_TOKENS:
        continue
      if self.representation == 'smiles':
        mask[i] = bool(re.fullmatch(r'\[[^\]]+\]|Br|Cl|[BCNOPSFI]|[bcnops]', token))
      else:
        mask[i] = 'Branch' not in token and 'Ring' not in token
    return mask

  def tokenize(self, smiles: str) -> list[str]:
    """The representation's tokens of a SMILES string (SELFIES symbols for 'selfies').

    Raises:
      TokenizationError: naming the string and the problem.
    """
    if not isinstance(smiles, str) or not smiles:
      raise TokenizationError(str(smiles), 'empty', f'Expected a non-empty SMILES string, got '
                              f'{smiles!r}.')
    if self.representation == 'smiles':
      tokens = split_smiles(smiles)
    else:
      tokens = split_selfies(smiles_to_selfies(smiles))
    unknown = sorted({t for t in tokens if t not in self._ids or t in SPECIAL_TOKENS})
    if unknown:
      raise TokenizationError(
          smiles, 'unknown_token',
          f'SMILES {smiles!r} has tokens outside the {self.representation} vocabulary: '
          f'{unknown}.')
    if len(tokens) > self.max_length - 2:
      raise TokenizationError(
          smiles, 'too_long',
          f'SMILES {smiles!r} has {len(tokens)} {self.representation} tokens; at most '
          f'max_length - 2 = {self.max_length - 2} fit.')
    return tokens

  def encode(self, smiles: str) -> np.ndarray:
    """int32 [L]: <bos>, the tokens of `smiles`, <eos>, then <pad>.

    Raises:
      TokenizationError: naming the string and the problem.
    """
    ids = [self._ids[t] for t in self.tokenize(smiles)]
    row = np.full((self.max_length,), PAD_ID, np.int32)
    row[0] = BOS_ID
    row[1:len(ids) + 1] = ids
    row[len(ids) + 1] = EOS_ID
    return row

  def encode_many(self, smiles: Iterable[str]) -> tuple[np.ndarray, list[int], collections.Counter]:
    """Encodes what it can; counts and skips the rest.

    Returns:
      (int32 [N_ok, L] rows, the input positions of those rows, a Counter of
      the skipped strings by reason: 'syntax', 'parse', 'unknown_token',
      'too_long', 'empty').
    """
    rows, kept, skipped = [], [], collections.Counter()
    for i, s in enumerate(smiles):
      try:
        rows.append(self.encode(s))
      except TokenizationError as e:
        skipped[e.reason] += 1
        continue
      kept.append(i)
    array = np.stack(rows) if rows else np.zeros((0, self.max_length), np.int32)
    return array, kept, skipped

  def decode(self, ids: Sequence[int] | np.ndarray) -> str:
    """The string of a row of ids: tokens after <bos> up to the first <eos>.

    <pad> and a second <bos> are dropped. Returns SMILES for 'smiles' and a
    SELFIES string for 'selfies' (see `to_smiles`).

    Raises:
      ValueError: an id outside [0, V).
    """
    ids = np.asarray(ids).reshape(-1)
    if ids.size and (ids.min() < 0 or ids.max() >= self.vocab_size):
      raise ValueError(f'Token ids must lie in [0, {self.vocab_size}); got '
                       f'[{ids.min()}, {ids.max()}].')
    out = []
    for i in ids.tolist():
      if i == EOS_ID:
        break
      if i in (PAD_ID, BOS_ID):
        continue
      out.append(self.tokens[i])
    return ''.join(out)

  def to_smiles(self, string: str) -> str:
    """SMILES of a decoded string (the identity for 'smiles')."""
    if self.representation == 'selfies':
      return selfies_to_smiles(string)
    return string

  def decode_smiles(self, ids_NxL: np.ndarray) -> list[str]:
    """SMILES of every row of ids [N, L]."""
    return [self.to_smiles(self.decode(row)) for row in np.asarray(ids_NxL)]
