"""Prepares datasets for offline use, in TFDS's format, without TensorFlow.

Usage:
  python -m ae_jax.data.prepare fashion_mnist [--data_dir DIR]
  python -m ae_jax.data.prepare {mnist,fashion_mnist,cifar10} --download [--data_dir DIR]
  python -m ae_jax.data.prepare {mnist,fashion_mnist,cifar10} --manual_dir DIR_WITH_FILES

Fashion-MNIST prepares with no network from Debian's `dataset-fashion-mnist`
package (`ae_jax.data.fashion_mnist`, the default --manual_dir). MNIST,
Fashion-MNIST and CIFAR-10 prepare from their original files, given in
--manual_dir or fetched with --download from the official addresses and
checked against TFDS's registered sha256 (`ae_jax.data.offline`). For other
TFDS names this prints the command that prepares them elsewhere and exits 1.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from ae_jax.data import fashion_mnist as fashion_mnist_lib
from ae_jax.data import offline
from ae_jax.data import sources as sources_lib


def main(argv: Sequence[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m ae_jax.data.prepare', description=__doc__.splitlines()[0]
  )
  parser.add_argument('name', help=f'dataset to prepare: {", ".join(offline.DATASETS)}')
  parser.add_argument(
      '--data_dir',
      default=None,
      help='TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)',
  )
  parser.add_argument(
      '--manual_dir',
      default=None,
      help='directory with the original files (default: for fashion_mnist without'
      f' --download {fashion_mnist_lib.DEBIAN_DIR}, else DATA_DIR/downloads/manual/NAME)',
  )
  parser.add_argument(
      '--download', action='store_true',
      help='download the missing original files (checked against their sha256)')
  parser.add_argument(
      '--base_url', default=None,
      help='with --download: fetch BASE_URL/<file name> instead of the official address')
  args = parser.parse_args(argv)
  data_dir = os.path.expanduser(args.data_dir or sources_lib.default_data_dir())

  if args.name in sources_lib.IN_MEMORY_DATASETS:
    print(f'{args.name} ships inside a Python package; nothing to prepare.')
    return 0
  if args.name in offline.DATASETS and (
      args.name != 'fashion_mnist' or args.download or args.manual_dir):
    return _prepare_original(args, data_dir)
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
        data_dir, manual_dir=fashion_mnist_lib.DEBIAN_DIR
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
      f' (array_record; {splits}; from {fashion_mnist_lib.DEBIAN_DIR}; {seconds:.1f} s).\n'
      "Read it with ae_jax.data.batches('fashion_mnist', 'train',"
      f" batch_size=..., data_dir={data_dir!r}) or"
      f" tfds.data_source('fashion_mnist', data_dir={data_dir!r})."
  )
  return 0


def _prepare_original(args, data_dir: str) -> int:
  """`offline.prepare` from the original files; one line on success or failure."""
  start = time.perf_counter()
  try:
    builder = offline.prepare(args.name, data_dir, manual_dir=args.manual_dir,
                              download=args.download, base_url=args.base_url)
  except (FileNotFoundError, offline.DownloadError, ValueError) as e:
    print(' '.join(str(e).split()), file=sys.stderr)
    return 1
  splits = ', '.join(
      f'{name}: {split.num_examples:,}' for name, split in builder.info.splits.items()
  )
  print(
      f'{args.name} {builder.version} is ready in {builder.data_dir} (array_record;'
      f' {splits}; {time.perf_counter() - start:.1f} s). Read it with'
      f" --config.data.name={args.name} --config.data.data_dir={data_dir} or"
      f" tfds.data_source({args.name!r}, data_dir={data_dir!r})."
  )
  return 0


if __name__ == '__main__':
  sys.exit(main())
