"""Batches built ahead of the step: a background thread and a bounded queue.

`Prefetcher(batches, put)` iterates over `put(batch)` for each batch of
`batches`, in order, while a daemon thread builds (and, with the loop's `put`,
places on the devices) the next `size` of them. The training thread then
spends no time on the data: with `size=2`, batch t + 1 is ready, on device,
when step t is dispatched. The batches are the iterator's, unchanged; only
when they are computed moves, so a data pipeline that is a function of the
step (as `ae_jax.data.batches` is) gives the same run with or without it.

An exception raised by `batches` or `put` in the thread is raised again, with
its traceback, by the `next` call that would have returned that batch; the
batches before it are delivered first. `close()` (or leaving the `with`
block) stops the thread and waits for it: call it on every exit path. The
thread then finishes the batch it is building, drops what is queued and
closes `batches` if it is a generator.

The idea is the one of flax's `prefetch_to_device` and big_vision's threaded
prefetch; the code is our own.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable, Iterable, Iterator
from typing import Any

# How often a thread blocked on a full queue looks at the stop flag, in seconds.
_POLL_S = 0.05
# Queue entries: (kind, value).
_BATCH, _END, _ERROR = 'batch', 'end', 'error'


class Prefetcher(Iterator[Any]):
  """An iterator over `put(b) for b in batches`, computed `size` items ahead.

  Args:
    batches: the iterable of host batches; iterated by the background thread only.
    put: applied to each batch in the thread, e.g. the loop's device placement.
    size: how many placed batches may wait in the queue (>= 1).
  """

  def __init__(self, batches: Iterable[Any], put: Callable[[Any], Any] = lambda b: b, *,
               size: int = 2):
    if size < 1:
      raise ValueError(f'Prefetcher size must be >= 1, got {size}.')
    self._queue: queue.Queue = queue.Queue(maxsize=size)
    self._stop = threading.Event()
    self._done = False
    self._thread = threading.Thread(target=self._fill, args=(iter(batches), put),
                                    name='ae_jax-prefetch', daemon=True)
    self._thread.start()

  def _offer(self, entry: tuple[str, Any]) -> bool:
    """Puts `entry` on the queue unless stopped first; says whether it went in."""
    while not self._stop.is_set():
      try:
        self._queue.put(entry, timeout=_POLL_S)
        return True
      except queue.Full:
        pass
    return False

  def _fill(self, batches: Iterator[Any], put: Callable[[Any], Any]) -> None:
    try:
      for batch in batches:
        if self._stop.is_set() or not self._offer((_BATCH, put(batch))):
          return
      self._offer((_END, None))
    except BaseException as e:  # pylint: disable=broad-exception-caught
      # Every error goes to the training thread, which raises it.
      self._offer((_ERROR, e))
    finally:
      close = getattr(batches, 'close', None)
      if close is not None:
        close()

  def __iter__(self) -> 'Prefetcher':
    return self

  def __next__(self) -> Any:
    if self._done:
      raise StopIteration
    kind, value = self._queue.get()
    if kind == _BATCH:
      return value
    self._done = True
    if kind == _ERROR:
      raise value
    raise StopIteration

  def close(self) -> None:
    """Stops the thread and waits for it (it finishes the batch in hand)."""
    self._done = True
    self._stop.set()
    self._drain()
    self._thread.join()
    self._drain()

  def _drain(self) -> None:
    """Drops what is queued (a put blocked on a full queue then returns)."""
    try:
      while True:
        self._queue.get_nowait()
    except queue.Empty:
      pass

  def __enter__(self) -> 'Prefetcher':
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
