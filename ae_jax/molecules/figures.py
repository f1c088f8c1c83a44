"""Figures of a molecule run: reconstructions, property distributions, interpolations.

Written as PNG files like `ae_jax.plotting` (bare matplotlib Figures, no
pyplot); molecule drawings come from RDKit's `Draw.MolsToGridImage`.
"""

from __future__ import annotations

import numpy as np
from matplotlib.figure import Figure

from ae_jax.molecules import metrics as metrics_lib

_PROPERTY_LABELS = {'qed': 'QED', 'logp': 'logP (Crippen)', 'weight': 'molecular weight (Da)'}


def save_reconstruction_table(inputs: list[str], outputs: list[str], path: str, *,
                              title: str = '') -> str:
  """Input SMILES and their greedy reconstructions as a text table."""
  # About 0.12 inch a line of 7-point text, plus the title.
  fig = Figure(figsize=(11, 0.14 * (len(inputs) + 1) + 0.5))
  ax = fig.subplots()
  ax.axis('off')
  lines = [f'{"input":<60} {"reconstruction":<60} same']
  for a, b in zip(inputs, outputs):
    ca, cb = metrics_lib.canonical(a), metrics_lib.canonical(b)
    mark = 'yes' if cb is not None and ca == cb else ('invalid' if cb is None else 'no')
    lines.append(f'{a[:58]:<60} {b[:58]:<60} {mark}')
  ax.text(0.0, 1.0, '\n'.join(lines), family='monospace', fontsize=7, va='top',
          transform=ax.transAxes)
  if title:
    ax.set_title(title)
  fig.savefig(path, dpi=100, bbox_inches='tight')
  return path


def save_property_histograms(generated: dict[str, np.ndarray], test: dict[str, np.ndarray],
                             path: str, *, distances: dict[str, float] | None = None,
                             title: str = '') -> str:
  """Histograms of QED, logP and weight of generated against test molecules."""
  fig = Figure(figsize=(13, 3.6))
  axes = fig.subplots(1, len(metrics_lib.PROPERTIES))
  for ax, name in zip(axes, metrics_lib.PROPERTIES):
    both = np.concatenate([generated[name], test[name]])
    bins = np.linspace(np.percentile(both, 0.5), np.percentile(both, 99.5), 40)
    ax.hist(test[name], bins=bins, density=True, alpha=0.5, label=f'MOSES test ({len(test[name])})')
    ax.hist(generated[name], bins=bins, density=True, alpha=0.5,
            label=f'generated ({len(generated[name])})')
    label = _PROPERTY_LABELS[name]
    if distances and name in distances:
      label += f'   W1 = {distances[name]:.3g}'
    ax.set_title(label)
    ax.legend(fontsize=8)
  if title:
    fig.suptitle(title)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  return path


def save_molecule_grid(smiles: list[str], path: str, *, legends: list[str] | None = None,
                       mols_per_row: int = 4) -> str:
  """RDKit drawing of molecules (an invalid SMILES is an empty cell marked 'invalid')."""
  metrics_lib._rdkit()  # pylint: disable=protected-access
  from rdkit import Chem  # pylint: disable=g-import-not-at-top
  from rdkit.Chem import Draw  # pylint: disable=g-import-not-at-top
  mols, labels = [], []
  for i, s in enumerate(smiles):
    mol = metrics_lib.to_mol(s)
    mols.append(mol if mol is not None else Chem.Mol())
    label = legends[i] if legends else s
    labels.append(label if mol is not None else f'{label} (invalid)')
  image = Draw.MolsToGridImage(mols, molsPerRow=mols_per_row, subImgSize=(260, 220),
                               legends=labels, returnPNG=False)
  image.save(path)
  return path
