"""Orbax checkpoints of a stage's state: the package's one CheckpointManager.

Saves are atomic (a process killed during a save leaves a temporary directory
that `latest_step` ignores) and asynchronous (`wait_until_finished` before the
process exits). The saved state is the unreplicated one, so a checkpoint
written on n devices restores on any number.

Restoring fails safe (`restore_newest`): a checkpoint whose files are damaged
(truncated, emptied metadata) is reported with its step and path and the
newest older one that restores is used instead, never silently none; a
checkpoint of a different model (the config's shapes changed) is refused with
the leaves that differ, before orbax reads any array.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import jax
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
  """No checkpoint of a workdir can be restored (each is named with its reason)."""


class CheckpointMismatchError(CheckpointError, ValueError):
  """A checkpoint holds a different state (leaves, shapes or dtypes) than the run's."""


def manager(workdir: str, *, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir/checkpoints`, keeping the last `keep`."""
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(directory(workdir), options=options)


def directory(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), 'checkpoints')


def restore(mngr: ocp.CheckpointManager, like: Any, step: int | None = None) -> Any:
  """The checkpoint at `step` (default: latest) with the structure, dtypes and
  shardings of `like`.

  Raises:
    CheckpointMismatchError: the checkpoint's leaves or shapes differ from `like`'s.
  """
  step = mngr.latest_step() if step is None else step
  check_matches(mngr, step, like)
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return mngr.restore(step, args=ocp.args.StandardRestore(target))


def restore_newest(mngr: ocp.CheckpointManager, like: Any, *,
                   warn: Callable[[str], None] = print) -> tuple[Any, int, list[int]]:
  """The newest checkpoint that restores: (state, its step, the newer steps that did not).

  A checkpoint that fails to restore for any reason but a mismatch with
  `like` is reported through `warn` (its step, path and the error's first
  line) and the one before it is tried.

  Raises:
    CheckpointMismatchError: the newest readable checkpoint is of another state
      (falling back past it would silently train a different run).
    CheckpointError: no checkpoint restores; the message names each one and why.
  """
  broken: list[tuple[int, str]] = []
  for step in sorted(mngr.all_steps(), reverse=True):
    try:
      return restore(mngr, like, step), step, [s for s, _ in broken]
    except CheckpointMismatchError:
      raise
    except Exception as e:  # pylint: disable=broad-exception-caught
      reason = _first_line(e)
      broken.append((step, reason))
      warn(f'Checkpoint at step {step} ({_step_dir(mngr, step)}) does not restore: {reason}')
  listed = '; '.join(f'step {s}: {r}' for s, r in broken)
  raise CheckpointError(
      f'No checkpoint in {mngr.directory} restores ({listed}). Move the checkpoints '
      'directory away to train from step 0.')


def check_matches(mngr: ocp.CheckpointManager, step: int, like: Any) -> None:
  """Raises `CheckpointMismatchError` naming the leaves whose shape or dtype differ
  between the checkpoint at `step` and `like`, or that only one of them has.

  The comparison reads the checkpoint's metadata only; an unreadable one
  raises its own error (the checkpoint is damaged).
  """
  metadata = ocp.StandardCheckpointer().metadata(os.path.join(_step_dir(mngr, step), 'default'))
  saved_tree = getattr(metadata, 'item_metadata', metadata)
  if saved_tree is None:
    raise CheckpointError(f'The metadata of checkpoint {_step_dir(mngr, step)} is unreadable.')
  saved, wanted = _leaf_specs(saved_tree), _leaf_specs(like)
  spec = lambda s: f'{s[1]}{list(s[0])}'
  problems = [f'{name}: checkpoint {spec(saved[name])}, this run {spec(wanted[name])}'
              for name in wanted if name in saved and not _same(saved[name], wanted[name])]
  problems += [f'{name}: not in the checkpoint' for name in wanted if name not in saved]
  problems += [f'{name}: only in the checkpoint' for name in saved if name not in wanted]
  if problems:
    shown = '; '.join(problems[:4]) + (f'; and {len(problems) - 4} more' if len(problems) > 4
                                       else '')
    raise CheckpointMismatchError(
        f'The checkpoint at step {step} in {mngr.directory} is of another state than this '
        f'run builds ({len(problems)} leaves differ: {shown}). The config changed since it '
        'was written: run with the config it was trained with, or use another workdir.')


def set_aside(mngr: ocp.CheckpointManager, steps: list[int]) -> list[str]:
  """Moves the checkpoints at `steps` to <workdir>/broken_checkpoints/ (kept, for a
  post-mortem; out of the way of the saves that will write those steps again)."""
  aside = os.path.join(os.path.dirname(str(mngr.directory)), 'broken_checkpoints')
  os.makedirs(aside, exist_ok=True)
  moved = []
  for step in steps:
    target, n = os.path.join(aside, str(step)), 1
    while os.path.exists(target):
      target, n = os.path.join(aside, f'{step}.{n}'), n + 1
    os.replace(_step_dir(mngr, step), target)
    moved.append(target)
  mngr.reload()
  return moved


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def latest_step(workdir: str) -> int | None:
  """The latest complete checkpoint's step in `workdir/checkpoints`, or None."""
  if not os.path.isdir(directory(workdir)):
    return None
  mngr = manager(workdir, create=False)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()


def _step_dir(mngr: ocp.CheckpointManager, step: int) -> str:
  return os.path.join(str(mngr.directory), str(step))


def _leaf_specs(tree: Any) -> dict[str, tuple[tuple[int, ...], str]]:
  """'a/b/0/c' -> (shape, dtype) of every array leaf."""
  def name(path) -> str:
    parts = []
    for key in path:
      for attr in ('name', 'key', 'idx'):
        if hasattr(key, attr):
          parts.append(str(getattr(key, attr)))
          break
    return '/'.join(parts)
  return {name(path): (tuple(leaf.shape), str(leaf.dtype))
          for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


def _same(a: tuple[tuple[int, ...], str], b: tuple[tuple[int, ...], str]) -> bool:
  if 'key' in a[1] or 'key' in b[1]:  # Typed PRNG keys are stored as their raw data.
    return True
  return a == b


def _first_line(e: BaseException) -> str:
  text = str(e).strip().splitlines()
  line = (text[0] if text else '').split(' See full TensorStore details')[0]
  line = line if len(line) <= 200 else line[:200] + '...'
  return f'{type(e).__name__}: {line}'
