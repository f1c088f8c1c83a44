"""Prepares datasets for offline use.

Usage: `python -m ae_jax.data.prepare fashion_mnist [--data_dir DIR]`.

Only Fashion-MNIST can be prepared without network access (from Debian's
`dataset-fashion-mnist` package, see `ae_jax.data.fashion_mnist`). For other
TFDS names this prints the command that prepares them elsewhere and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from ae_jax.data import fashion_mnist as fashion_mnist_lib
from ae_jax.data import sources as sources_lib


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m ae_jax.data.prepare', description=__doc__.splitlines()[0]
  )
  parser.add_argument('name', help='dataset to prepare: fashion_mnist')
  parser.add_argument(
      '--data_dir',
      default=None,
      help='TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)',
  )
  parser.add_argument(
      '--manual_dir',
      default=fashion_mnist_lib.DEBIAN_DIR,
      help='directory with the idx .gz files (default: %(default)s)',
  )
  args = parser.parse_args(argv)
  data_dir = os.path.expanduser(args.data_dir or sources_lib.default_data_dir())

  if args.name in sources_lib.IN_MEMORY_DATASETS:
    print(f'{args.name} ships inside a Python package; nothing to prepare.')
    return 0
  if args.name != 'fashion_mnist':
    how = sources_lib.TFDS_DATASETS.get(args.name)
    if how is None:
      print(
          f'Unknown dataset {args.name!r}. Known:'
          f' {", ".join(sources_lib.known_datasets())}.',
          file=sys.stderr,
      )
    else:
      print(
          f'{args.name} cannot be prepared offline here. '
          + how.format(name=args.name, data_dir=data_dir),
          file=sys.stderr,
      )
    return 1

  if fashion_mnist_lib.OfflineFashionMNIST(data_dir=data_dir).is_prepared():
    print(
        'fashion_mnist is already prepared in'
        f' {os.path.join(data_dir, "fashion_mnist")}; nothing to do.'
    )
    return 0
  start = time.perf_counter()
  try:
    builder = fashion_mnist_lib.prepare_fashion_mnist(
        data_dir, manual_dir=args.manual_dir
    )
  except FileNotFoundError as e:
    print(str(e), file=sys.stderr)
    return 1
  seconds = time.perf_counter() - start
  splits = ', '.join(
      f'{name}: {split.num_examples:,}' for name, split in builder.info.splits.items()
  )
  print(
      f'fashion_mnist {builder.version} is ready in {builder.data_dir}'
      f' (array_record; {splits}; from {args.manual_dir}; {seconds:.1f} s).\n'
      "Read it with ae_jax.data.batches('fashion_mnist', 'train',"
      f" batch_size=..., data_dir={data_dir!r}) or"
      f" tfds.data_source('fashion_mnist', data_dir={data_dir!r})."
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
