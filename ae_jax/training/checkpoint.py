"""Orbax checkpoints of a stage's state: the package's one CheckpointManager.

Saves are atomic (a process killed during a save leaves a temporary directory
that `latest_step` ignores) and asynchronous (`wait_until_finished` before the
process exits). The saved state is the unreplicated one, so a checkpoint
written on n devices restores on any number.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp


def manager(workdir: str, *, keep: int = 3, create: bool = True) -> ocp.CheckpointManager:
  """The CheckpointManager of `workdir/checkpoints`, keeping the last `keep`."""
  directory = os.path.join(os.path.abspath(workdir), 'checkpoints')
  options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=create)
  return ocp.CheckpointManager(directory, options=options)


def restore(mngr: ocp.CheckpointManager, like: Any, step: int | None = None) -> Any:
  """The checkpoint at `step` (default: latest) with the structure, dtypes and
  shardings of `like`."""
  step = mngr.latest_step() if step is None else step
  target = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
  return mngr.restore(step, args=ocp.args.StandardRestore(target))


def save(mngr: ocp.CheckpointManager, step: int, state: Any, *, force: bool = False) -> None:
  mngr.save(step, args=ocp.args.StandardSave(state), force=force)


def latest_step(workdir: str) -> int | None:
  """The latest complete checkpoint's step in `workdir/checkpoints`, or None."""
  if not os.path.isdir(os.path.join(os.path.abspath(workdir), 'checkpoints')):
    return None
  mngr = manager(workdir, create=False)
  try:
    return mngr.latest_step()
  finally:
    mngr.close()
