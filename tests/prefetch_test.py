"""Tests for ae_jax.training.prefetch: order, bounded look-ahead, errors, stopping.

Plain Python iterators stand in for the data: no JAX, so these run in well
under a second. `fit`'s use of it is tested in training_test.py.
"""

import threading
import time
import traceback

import pytest

from ae_jax.training import prefetch

# Generous bound for the background thread to reach a state it must reach.
WAIT_S = 5.0


def _wait_until(predicate, what):
  deadline = time.monotonic() + WAIT_S
  while not predicate():
    if time.monotonic() > deadline:
      raise AssertionError(f'timed out waiting for {what}')
    time.sleep(0.005)


class Counting:
  """An endless generator of 0, 1, 2, ... that counts what it produced and notes
  when it was closed."""

  def __init__(self, fail_at=None):
    self.produced = 0
    self.closed = False
    self.fail_at = fail_at

  def __iter__(self):
    try:
      while True:
        if self.produced == self.fail_at:
          raise KeyError(f'record {self.produced} is corrupt')
        self.produced += 1
        yield self.produced - 1
    finally:
      self.closed = True


def _prefetch_threads():
  return [t for t in threading.enumerate() if t.name == 'ae_jax-prefetch']


def test_yields_put_of_every_batch_in_order_then_stops():
  with prefetch.Prefetcher(range(7), lambda b: ('placed', b), size=2) as batches:
    assert list(batches) == [('placed', b) for b in range(7)]
    with pytest.raises(StopIteration):
      next(batches)
  assert not _prefetch_threads()


@pytest.mark.parametrize('size', [1, 2, 3])
def test_runs_ahead_by_at_most_size_batches(size):
  data = Counting()
  with prefetch.Prefetcher(iter(data), size=size) as batches:
    assert [next(batches) for _ in range(3)] == [0, 1, 2]
    # The thread fills the queue (size) and holds one more batch it cannot queue.
    _wait_until(lambda: data.produced == 3 + size + 1, 'the queue to fill')
    time.sleep(0.2)
    assert data.produced == 3 + size + 1
    assert next(batches) == 3
    _wait_until(lambda: data.produced == 4 + size + 1, 'the next batch')
  assert data.closed and not _prefetch_threads()


def test_a_data_error_is_raised_on_the_consumer_after_the_batches_before_it():
  data = Counting(fail_at=3)
  batches = prefetch.Prefetcher(iter(data), size=2)
  assert [next(batches) for _ in range(3)] == [0, 1, 2]
  with pytest.raises(KeyError, match='record 3 is corrupt') as raised:
    next(batches)
  # The traceback still shows where the data failed.
  assert '__iter__' in ''.join(traceback.format_tb(raised.value.__traceback__))
  _wait_until(lambda: not _prefetch_threads(), 'the thread to end')
  assert data.closed
  with pytest.raises(StopIteration):
    next(batches)
  batches.close()


def test_an_error_in_put_is_raised_on_the_consumer():
  def put(batch):
    if batch == 2:
      raise ValueError('batch 2 does not fit the mesh')
    return batch

  with prefetch.Prefetcher(range(5), put, size=2) as batches:
    assert [next(batches) for _ in range(2)] == [0, 1]
    with pytest.raises(ValueError, match='batch 2 does not fit the mesh'):
      next(batches)


def test_close_stops_a_thread_blocked_on_a_full_queue():
  data = Counting()
  batches = prefetch.Prefetcher(iter(data), size=2)
  _wait_until(lambda: data.produced == 3, 'the queue to fill')
  assert _prefetch_threads()
  batches.close()
  assert not _prefetch_threads() and data.closed
  batches.close()  # Closing twice is fine.
  with pytest.raises(StopIteration):
    next(batches)


def test_an_exception_in_the_consumer_stops_the_thread():
  data = Counting()
  with pytest.raises(RuntimeError, match='the step failed'):
    with prefetch.Prefetcher(iter(data), size=2) as batches:
      next(batches)
      raise RuntimeError('the step failed')
  assert not _prefetch_threads() and data.closed


def test_size_must_be_positive():
  with pytest.raises(ValueError, match='size must be >= 1'):
    prefetch.Prefetcher(range(3), size=0)
