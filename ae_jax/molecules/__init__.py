"""Molecule generation with a sequence VAE: MOSES data, tokenizers, metrics, figures.

`tokenizer` and `data` need only numpy (and `selfies` for SELFIES); `metrics`,
`figures` and `generation`'s metrics need RDKit. Install the extra with
`pip install -e .[molecules]` and the MOSES data with `pip install --no-deps molsets`.
"""

from ae_jax.molecules import data
from ae_jax.molecules import tokenizer
from ae_jax.molecules.data import MOLECULE_DATASETS
from ae_jax.molecules.data import MolsetsNotFoundError
from ae_jax.molecules.data import open_moses_source
from ae_jax.molecules.data import read_moses
from ae_jax.molecules.data import TokenSource
from ae_jax.molecules.tokenizer import TokenizationError
from ae_jax.molecules.tokenizer import Tokenizer

__all__ = [
    'MOLECULE_DATASETS',
    'MolsetsNotFoundError',
    'TokenSource',
    'TokenizationError',
    'Tokenizer',
    'data',
    'open_moses_source',
    'read_moses',
    'tokenizer',
]
