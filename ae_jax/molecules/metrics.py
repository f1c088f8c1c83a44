"""MOSES metrics of generated molecules, computed with RDKit.

Definitions (Polykovskiy et al. 2020, and the `moses.metrics` code):
  validity      fraction of generated strings RDKit parses and sanitizes; the
                empty string is invalid.
  unique@k      among the first k VALID generated molecules, the number of
                distinct canonical SMILES divided by k (by the number there
                are when fewer than k are valid).
  novelty       among the distinct canonical valid molecules, the fraction not
                in the training set (canonical SMILES; MOSES stores its
                splits canonical).
  IntDiv_p      1 - 1/|A| Σ_{y ∈ A} (1/|A| Σ_{x ∈ A} T(x, y)^p)^(1/p) over the
                valid molecules A (duplicates kept, the pairs x = y included),
                T the Tanimoto similarity of Morgan fingerprints of radius 2
                and 1,024 bits; IntDiv is p = 1. This is MOSES's code
                (`moses/metrics/utils.py`, `average_agg_tanimoto(agg='mean',
                p=p)`): the power mean is taken per molecule, then averaged.
                The paper's formula, 1 - (1/|A|^2 Σ T^p)^(1/p), agrees for
                p = 1 and is slightly lower for p = 2.
  properties    QED, Crippen logP and molecular weight (RDKit), compared with
                the test set by the Wasserstein-1 distance.
  SNN           similarity to the nearest neighbour: the mean over the valid
                generated molecules (duplicates kept) of the largest Tanimoto
                similarity to a reference molecule, on the same Morgan
                fingerprints (MOSES's `SNNMetric`).
  Frag          cosine similarity of the fragment counts of the generated and
                the reference molecules, a molecule's fragments being the
                pieces RDKit's `FragmentOnBRICSBonds` cuts it into, as
                canonical SMILES with the BRICS dummy atoms (`FragMetric`).
  Scaf          cosine similarity of the Bemis-Murcko scaffold counts
                (`MurckoScaffold.GetScaffoldForMol`, canonical SMILES), where
                molecules whose scaffold has fewer than 2 rings count for none
                (`ScafMetric`, `compute_scaffolds(min_rings=2)`).
  FCD           Fréchet ChemNet distance (Preuer et al. 2018): the Fréchet
                distance between Gaussians fitted to ChemNet's penultimate
                activations of the generated and the reference molecules.
                ChemNet and its weights are those of the fcd_torch package that
                MOSES itself calls (an optional dependency, `pip install
                fcd_torch`, which pulls PyTorch); without it FCD is not reported.
  The counts of SNN, Frag, Scaf and FCD are those of `moses/metrics/metrics.py`'s
  `get_all_metrics`: over the valid generated molecules against the test set.
  MOSES ships the test set's fingerprints and counts, computed by its own code
  (`moses/dataset/data/test_stats.npz`); `moses_test_statistics` reads them,
  and tests/molecules_test.py checks that the functions here give the same.

References:
  Polykovskiy et al., "Molecular Sets (MOSES): a benchmarking platform for
  molecular generation models", Front. Pharmacol. 2020. Rogers & Hahn,
  "Extended-connectivity fingerprints", J. Chem. Inf. Model. 2010 (Morgan
  fingerprints). Bickerton et al., "Quantifying the chemical beauty of drugs",
  Nat. Chem. 2012 (QED). Wildman & Crippen, J. Chem. Inf. Comput. Sci. 1999
  (logP). Degen et al., "On the art of compiling and using 'drug-like'
  chemical fragment spaces", ChemMedChem 2008 (BRICS). Bemis & Murcko, "The
  properties of known drugs. 1. Molecular frameworks", J. Med. Chem. 1996.
  Preuer et al., "Fréchet ChemNet Distance: a metric for generative models for
  molecules in drug discovery", J. Chem. Inf. Model. 2018.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping, Sequence
import importlib.util
import os

import numpy as np

PROPERTIES = ('qed', 'logp', 'weight')
MORGAN_RADIUS = 2
MORGAN_BITS = 1024
SCAFFOLD_MIN_RINGS = 2


def _rdkit():
  try:
    from rdkit import Chem  # pylint: disable=g-import-not-at-top
    from rdkit import RDLogger  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError(
        'Molecule metrics need RDKit: `pip install rdkit selfies` '
        '(or `pip install -e .[molecules]`).') from None
  RDLogger.DisableLog('rdApp.*')  # Parse errors of generated strings are expected.
  return Chem


def to_mol(smiles: str):
  """The RDKit molecule of `smiles`, or None if it is empty or does not parse."""
  Chem = _rdkit()  # pylint: disable=invalid-name
  if not isinstance(smiles, str) or not smiles:
    return None
  mol = Chem.MolFromSmiles(smiles)  # Sanitizes: valence and aromaticity checks.
  if mol is None or mol.GetNumAtoms() == 0:
    return None
  return mol


def canonical(smiles: str) -> str | None:
  """RDKit canonical SMILES of `smiles`, or None if it is invalid."""
  mol = to_mol(smiles)
  if mol is None:
    return None
  return _rdkit().MolToSmiles(mol)


def canonical_all(smiles: Iterable[str]) -> list[str | None]:
  """`canonical` of each string."""
  return [canonical(s) for s in smiles]


def validity(smiles: Sequence[str]) -> float:
  """Fraction of `smiles` RDKit parses."""
  if not len(smiles):
    raise ValueError('validity of an empty list is undefined.')
  return sum(to_mol(s) is not None for s in smiles) / len(smiles)


def valid_canonical(smiles: Iterable[str]) -> list[str]:
  """Canonical SMILES of the valid strings, in order, duplicates kept."""
  return [c for c in canonical_all(smiles) if c is not None]


def unique_at(valid_canonical_smiles: Sequence[str], k: int) -> float:
  """unique@k of canonical valid SMILES (see module docstring)."""
  if k <= 0:
    raise ValueError(f'k must be > 0, got {k}.')
  first = list(valid_canonical_smiles[:k])
  if not first:
    raise ValueError('unique@k needs at least one valid molecule.')
  return len(set(first)) / len(first)


def novelty(valid_canonical_smiles: Iterable[str], train_canonical: set[str] | frozenset[str]
            ) -> float:
  """Fraction of the distinct molecules not in `train_canonical`."""
  distinct = set(valid_canonical_smiles)
  if not distinct:
    raise ValueError('novelty needs at least one valid molecule.')
  return len(distinct - set(train_canonical)) / len(distinct)


def morgan_fingerprints(smiles: Sequence[str], *, radius: int = MORGAN_RADIUS,
                        num_bits: int = MORGAN_BITS) -> np.ndarray:
  """uint8 [N, num_bits] Morgan bit vectors of valid SMILES.

  Raises:
    ValueError: naming an invalid string.
  """
  _rdkit()
  from rdkit.Chem import rdFingerprintGenerator  # pylint: disable=g-import-not-at-top
  generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=num_bits)
  out = np.zeros((len(smiles), num_bits), np.uint8)
  for i, s in enumerate(smiles):
    mol = to_mol(s)
    if mol is None:
      raise ValueError(f'Fingerprint of an invalid molecule {s!r} (item {i}).')
    out[i] = generator.GetFingerprintAsNumPy(mol)
  return out


def tanimoto_matrix(a_NxF: np.ndarray, b_MxF: np.ndarray) -> np.ndarray:
  """T[i, j] = |a_i ∧ b_j| / |a_i ∨ b_j| of bit vectors; 1 where both are empty."""
  a = np.asarray(a_NxF, np.float32)
  b = np.asarray(b_MxF, np.float32)
  both = a @ b.T
  either = a.sum(1)[:, None] + b.sum(1)[None, :] - both
  with np.errstate(invalid='ignore', divide='ignore'):
    t = both / either
  return np.where(either == 0, 1.0, t)


def internal_diversity(smiles: Sequence[str], *, p: int = 1, chunk: int = 2000) -> float:
  """IntDiv_p of valid SMILES as MOSES's code computes it (see the module
  docstring), in chunks of rows."""
  fps = morgan_fingerprints(smiles)
  if not len(fps):
    raise ValueError('internal diversity needs at least one valid molecule.')
  power_means = np.zeros(len(fps))
  for start in range(0, len(fps), chunk):
    rows = tanimoto_matrix(fps[start:start + chunk], fps).astype(np.float64)
    power_means[start:start + chunk] = np.mean(rows ** p, axis=1) ** (1.0 / p)
  return 1.0 - float(np.mean(power_means))


def properties(smiles: Sequence[str]) -> dict[str, np.ndarray]:
  """{'qed', 'logp', 'weight'}: float64 [N] of valid SMILES."""
  _rdkit()
  from rdkit.Chem import Crippen  # pylint: disable=g-import-not-at-top
  from rdkit.Chem import Descriptors  # pylint: disable=g-import-not-at-top
  from rdkit.Chem import QED  # pylint: disable=g-import-not-at-top
  values = {name: np.zeros((len(smiles),)) for name in PROPERTIES}
  for i, s in enumerate(smiles):
    mol = to_mol(s)
    if mol is None:
      raise ValueError(f'Properties of an invalid molecule {s!r} (item {i}).')
    values['qed'][i] = QED.qed(mol)
    values['logp'][i] = Crippen.MolLogP(mol)
    values['weight'][i] = Descriptors.MolWt(mol)
  return values


def wasserstein_1d(u: np.ndarray, v: np.ndarray) -> float:
  """Wasserstein-1 distance of two empirical 1-D distributions: ∫ |F_u − F_v| dx."""
  u, v = np.sort(np.asarray(u, np.float64)), np.sort(np.asarray(v, np.float64))
  if not len(u) or not len(v):
    raise ValueError('Wasserstein distance of an empty sample.')
  grid = np.concatenate([u, v])
  grid.sort()
  cdf_u = np.searchsorted(u, grid[:-1], side='right') / len(u)
  cdf_v = np.searchsorted(v, grid[:-1], side='right') / len(v)
  return float(np.sum(np.abs(cdf_u - cdf_v) * np.diff(grid)))


def nearest_neighbour_similarity(fps_NxF: np.ndarray, reference_MxF: np.ndarray, *,
                                 chunk: int = 5000) -> float:
  """SNN: mean over the rows of `fps_NxF` of their largest Tanimoto similarity
  to a row of `reference_MxF` (bit vectors; see the module docstring)."""
  fps = np.asarray(fps_NxF)
  if not len(fps) or not len(reference_MxF):
    raise ValueError('SNN needs at least one molecule on each side, got '
                     f'{len(fps)} and {len(reference_MxF)}.')
  best = np.zeros((len(fps),))
  for start in range(0, len(reference_MxF), chunk):
    t = tanimoto_matrix(fps, reference_MxF[start:start + chunk])
    best = np.maximum(best, t.max(axis=1))
  return float(np.mean(best))


def brics_fragments(smiles: Iterable[str]) -> collections.Counter:
  """Counts of the BRICS fragments of valid SMILES (see the module docstring)."""
  Chem = _rdkit()  # pylint: disable=invalid-name
  counts = collections.Counter()
  for i, s in enumerate(smiles):
    mol = to_mol(s)
    if mol is None:
      raise ValueError(f'Fragments of an invalid molecule {s!r} (item {i}).')
    counts.update(Chem.MolToSmiles(Chem.FragmentOnBRICSBonds(mol)).split('.'))
  return counts


def scaffolds(smiles: Iterable[str], *, min_rings: int = SCAFFOLD_MIN_RINGS
              ) -> collections.Counter:
  """Counts of the Bemis-Murcko scaffolds with at least `min_rings` rings."""
  Chem = _rdkit()  # pylint: disable=invalid-name
  from rdkit.Chem.Scaffolds import MurckoScaffold  # pylint: disable=g-import-not-at-top
  counts = collections.Counter()
  for i, s in enumerate(smiles):
    mol = to_mol(s)
    if mol is None:
      raise ValueError(f'Scaffold of an invalid molecule {s!r} (item {i}).')
    scaffold = MurckoScaffold.GetScaffoldForMol(mol)
    text = Chem.MolToSmiles(scaffold)
    if text and scaffold.GetRingInfo().NumRings() >= min_rings:
      counts[text] += 1
  return counts


def cosine_similarity(a: Mapping[str, int], b: Mapping[str, int]) -> float:
  """<a, b> / (|a| |b|) of two count vectors indexed by name (absent = 0); NaN
  when either is empty, as MOSES returns."""
  if not a or not b:
    return float('nan')
  dot = sum(count * b.get(name, 0) for name, count in a.items())
  norm_a = np.sqrt(sum(float(c) ** 2 for c in a.values()))
  norm_b = np.sqrt(sum(float(c) ** 2 for c in b.values()))
  return float(dot / (norm_a * norm_b))


def reference_statistics(smiles: Sequence[str]) -> dict:
  """{'fps', 'frag', 'scaf'} of reference SMILES: what SNN, Frag and Scaf compare
  generated molecules with."""
  return {'fps': morgan_fingerprints(smiles), 'frag': brics_fragments(smiles),
          'scaf': scaffolds(smiles)}


def has_fcd() -> bool:
  """Whether fcd_torch (ChemNet with its weights) is installed."""
  return importlib.util.find_spec('fcd_torch') is not None


def frechet_chemnet_distance(smiles: Sequence[str], reference: Mapping[str, np.ndarray]) -> float:
  """FCD of valid SMILES against reference statistics {'mu', 'sigma'} (see the
  module docstring); computed by fcd_torch, as MOSES computes it."""
  if not has_fcd():
    raise ImportError('FCD needs fcd_torch (ChemNet and its weights; it pulls PyTorch): '
                      '`pip install fcd_torch`.')
  if len(smiles) < 2:
    raise ValueError(f'FCD needs at least 2 molecules, got {len(smiles)}.')
  from fcd_torch import FCD  # pylint: disable=g-import-not-at-top
  fcd = FCD(device='cpu', n_jobs=1)
  return float(fcd.metric(dict(reference), fcd.precalc(list(smiles))))


def moses_test_statistics(data_dir: str) -> dict:
  """MOSES's own `reference_statistics` of its test set (176,074 molecules).

  Read from `test_stats.npz` in the installed MOSES data directory
  (`ae_jax.molecules.data.moses_data_dir()`): fingerprints uint8 [176074, 1024]
  the fragment and scaffold counts, and ChemNet's activation mean and covariance
  ('fcd': {'mu', 'sigma'}), written by MOSES's code (a pickle inside the
  installed package, as MOSES itself loads it).
  """
  path = os.path.join(data_dir, 'test_stats.npz')
  if not os.path.exists(path):
    raise FileNotFoundError(f'MOSES test statistics not found at {path}; install molsets.')
  with np.load(path, allow_pickle=True) as f:
    stats = f['stats'].item()
  return {'fps': stats['SNN']['fps'], 'frag': stats['Frag']['frag'],
          'scaf': stats['Scaf']['scaf'], 'fcd': stats['FCD']}


def generation_metrics(generated_smiles: Sequence[str], *, train_canonical: frozenset[str],
                       test_properties: dict[str, np.ndarray] | None = None,
                       reference: Mapping[str, object] | None = None,
                       ks: Sequence[int] = (1000, 10000),
                       max_intdiv: int | None = None) -> dict[str, float]:
  """MOSES metrics of generated SMILES (see module docstring).

  Args:
    generated_smiles: the samples, invalid ones included.
    train_canonical: canonical SMILES of the training set.
    test_properties: `properties` of the test set; adds '<prop>_w1' distances.
    reference: `reference_statistics` (or `moses_test_statistics`) of the test
      set; adds 'snn', 'frag' and 'scaf' over all valid molecules, and 'fcd'
      when the reference has ChemNet statistics and fcd_torch is installed.
    ks: the k of unique@k.
    max_intdiv: compute IntDiv on the first this many valid molecules (None: all).

  Returns:
    {'valid', 'unique@k'..., 'novelty', 'intdiv', 'intdiv2', 'num_samples',
     'num_valid', '<prop>_w1', '<prop>_mean' for each property, and 'snn',
     'frag', 'scaf' with a reference}.
  """
  canon = valid_canonical(generated_smiles)
  result = {'num_samples': len(generated_smiles), 'num_valid': len(canon),
            'valid': len(canon) / len(generated_smiles)}
  if not canon:
    return result
  for k in ks:
    result[f'unique@{k}'] = unique_at(canon, k)
  result['novelty'] = novelty(canon, train_canonical)
  sample = canon if max_intdiv is None else canon[:max_intdiv]
  result['intdiv'] = internal_diversity(sample, p=1)
  result['intdiv2'] = internal_diversity(sample, p=2)
  props = properties(canon)
  for name in PROPERTIES:
    result[f'{name}_mean'] = float(np.mean(props[name]))
    if test_properties is not None:
      result[f'{name}_w1'] = wasserstein_1d(props[name], test_properties[name])
  if reference is not None:
    result['snn'] = nearest_neighbour_similarity(morgan_fingerprints(canon), reference['fps'])
    result['frag'] = cosine_similarity(brics_fragments(canon), reference['frag'])
    result['scaf'] = cosine_similarity(scaffolds(canon), reference['scaf'])
    if 'fcd' in reference and has_fcd() and len(canon) >= 2:
      result['fcd'] = frechet_chemnet_distance(canon, reference['fcd'])
  return result
