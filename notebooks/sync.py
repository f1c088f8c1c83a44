"""Writes each notebooks/<name>.ipynb from its reviewed source notebooks/py/<name>.py.

The percent-format `.py` files (jupytext) are what reviewers read and edit; the
notebooks are generated from them with no outputs, no execution counts and
stable cell ids, so a regenerated notebook differs from the committed one only
where the source did.

  python notebooks/sync.py           # regenerate every notebook
  python notebooks/sync.py --check   # exit 1 if a notebook is out of date

Editing a notebook in Jupyter with the jupytext extension keeps the pair in sync
too (notebooks/jupytext.toml pairs them); run this script before committing so
the outputs are stripped.
"""

import argparse
import pathlib
import sys

import jupytext
import nbformat

HERE = pathlib.Path(__file__).resolve().parent
METADATA = {
    'kernelspec': {'display_name': 'Python 3', 'language': 'python', 'name': 'python3'},
    'language_info': {'name': 'python'},
}
# Colab opens these on a TPU runtime (the others run on any runtime).
TPU_NOTEBOOKS = ('multi_device',)


def notebook_from_py(path: pathlib.Path) -> nbformat.NotebookNode:
  """The stripped notebook for the percent-format source `path`."""
  text = jupytext.read(path, fmt='py:percent')
  cells = []
  for i, cell in enumerate(text.cells):
    cell_id = f'{path.stem}-{i:02d}'
    if cell.cell_type == 'markdown':
      cells.append(nbformat.v4.new_markdown_cell(cell.source, id=cell_id))
    elif cell.cell_type == 'code':
      cells.append(nbformat.v4.new_code_cell(cell.source, id=cell_id))
    else:
      raise ValueError(f'{path}: unexpected {cell.cell_type} cell {i}.')
  metadata = dict(METADATA)
  if path.stem in TPU_NOTEBOOKS:
    metadata['accelerator'] = 'TPU'
  notebook = nbformat.v4.new_notebook(cells=cells, metadata=metadata)
  nbformat.validate(notebook)
  return notebook


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--check', action='store_true', help='only report stale notebooks')
  args = parser.parse_args()
  stale = []
  for source in sorted((HERE / 'py').glob('*.py')):
    target = HERE / f'{source.stem}.ipynb'
    text = nbformat.writes(notebook_from_py(source)) + '\n'
    if target.exists() and target.read_text() == text:
      continue
    stale.append(target.name)
    if not args.check:
      target.write_text(text)
  if stale:
    print(('stale: ' if args.check else 'wrote: ') + ', '.join(stale))
  return 1 if args.check and stale else 0


if __name__ == '__main__':
  sys.exit(main())
