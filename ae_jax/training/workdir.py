"""A stage's workdir belongs to one run: its lock, and its metrics file repaired on resume.

`lock(workdir)` holds an exclusive `flock` on <workdir>/.lock while a run
trains there; a second run on the same workdir stops at once with
`WorkdirInUseError`, naming the holder's PID, host and start time. The lock
is the kernel's, so a process killed with SIGKILL releases it.

`read_records(path)` reads a JSON-lines metrics file; a torn last line (the
process was killed while writing it) is dropped with a warning, a damaged
line before the last is an error naming the file and the line.

`WorkdirWriteError` is the one error for a failed write into the workdir
(disk full, unwritable directory): it names the path and what the OS said.
"""

from __future__ import annotations

import contextlib
import errno as errno_lib
import fcntl
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

LOCK_FILE = '.lock'


class WorkdirInUseError(RuntimeError):
  """Another live process trains in this workdir."""


class WorkdirWriteError(OSError):
  """A write into the workdir failed (disk full, unwritable directory); `errno` says why."""

  def __str__(self) -> str:
    return str(self.strerror)


@contextlib.contextmanager
def lock(workdir: str) -> Iterator[None]:
  """Holds <workdir>/.lock for the block; raises `WorkdirInUseError` if another process does."""
  path = os.path.join(workdir, LOCK_FILE)
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  except OSError as e:
    raise as_write_error(e, path) from e
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise WorkdirInUseError(
          f'{os.path.abspath(workdir)} is in use by {_holder(fd)}: two runs never share a '
          'workdir. Wait for that run to finish (or stop it), or pass another --workdir.'
      ) from None
    holder = {'pid': os.getpid(), 'host': socket.gethostname(),
              'started': time.strftime('%Y-%m-%d %H:%M:%S')}
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(holder).encode(), 0)
    yield
  finally:
    os.close(fd)  # Releases the flock.


@contextlib.contextmanager
def held(workdir: str, *, is_main: bool) -> Iterator[None]:
  """Creates `workdir` (a failure is a `WorkdirWriteError`) and, on the main process,
  holds its `lock` for the block; every process of one run shares the workdir."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise as_write_error(e, workdir) from e
  with lock(workdir) if is_main else contextlib.nullcontext():
    yield


def _holder(fd: int) -> str:
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode() or '{}')
    return f"PID {info['pid']} on host {info['host']} (since {info['started']})"
  except (ValueError, KeyError, OSError):
    return 'another process'


def read_records(path: str, *, warn: Callable[[str], None] = print) -> list[dict[str, Any]]:
  """The records of the JSON-lines file `path` (none if it does not exist)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().split('\n')
  if lines and not lines[-1]:
    lines.pop()  # The newline ending the last record.
  records = []
  for i, line in enumerate(lines):
    try:
      record = json.loads(line)
      if not isinstance(record, dict) or not isinstance(record.get('step'), int):
        raise ValueError('not a record with an integer "step"')
    except ValueError as e:
      if i == len(lines) - 1:
        warn(f'{path}: dropped a torn last line (a run stopped while writing it): '
             f'{line[:80]!r}')
        break
      raise ValueError(f'{path} line {i + 1} is not a metrics record ({e}): {line[:80]!r}. '
                       'Fix or remove that line to resume.') from None
    records.append(record)
  return records


def write_records(path: str, records: list[dict[str, Any]]) -> None:
  """Replaces the JSON-lines file `path` with `records`, atomically."""
  tmp = f'{path}.tmp'
  try:
    with open(tmp, 'w') as f:
      f.writelines(json.dumps(r) + '\n' for r in records)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except OSError as e:
    raise as_write_error(e, path) from e


def as_write_error(e: BaseException, path: str) -> BaseException:
  """`WorkdirWriteError` for a failed write of `path` in `e` or its causes, else `e`.

  A failed write is an OSError, or (from the checkpoint library's TensorStore
  writes) an error whose text names the OS's reason (`_WRITE_FAILURES`).
  """
  cause = find_os_error(e)
  if cause is not None:
    what = cause.strerror or errno_lib.errorcode.get(cause.errno or 0, str(cause))
    code, where = cause.errno, cause.filename or path
  else:
    found = _find_text(e)
    if found is None:
      return e
    code, what, where = found, _WRITE_FAILURES[found], path
  return WorkdirWriteError(code, f'Cannot write {where}: {what}. The run stopped; the '
                           'checkpoints written before this are kept and a rerun resumes '
                           'from the newest one.')


# errno -> the text that names it in a TensorStore error.
_WRITE_FAILURES = {
    errno_lib.ENOSPC: 'No space left on device',
    errno_lib.EDQUOT: 'Disk quota exceeded',
    errno_lib.EACCES: 'Permission denied',
    errno_lib.EROFS: 'Read-only file system',
}


def _chain(e: BaseException | None) -> Iterator[BaseException]:
  """`e`, its causes and contexts, and the exceptions grouped in any of them."""
  seen = set()
  todo = [e]
  while todo:
    e = todo.pop()
    if e is None or id(e) in seen:
      continue
    seen.add(id(e))
    yield e
    todo.extend(getattr(e, 'exceptions', ()))
    todo.extend((e.__cause__, e.__context__))


def find_os_error(e: BaseException | None) -> OSError | None:
  """The first OSError with an errno among `e`, its causes and contexts."""
  for inner in _chain(e):
    if isinstance(inner, OSError) and inner.errno is not None:
      return inner
  return None


def _find_text(e: BaseException | None) -> int | None:
  for inner in _chain(e):
    text = str(inner)
    for code, name in _WRITE_FAILURES.items():
      if name in text:
        return code
    if 'RESOURCE_EXHAUSTED' in text:
      return errno_lib.ENOSPC
  return None
