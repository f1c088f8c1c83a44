"""Faults injected at a chosen step, for the tests of the loop's guarantees.

`AE_JAX_FAULT` (or `fit(..., faults=...)`) holds comma-separated entries
`[stage:]kind@step`:

  nan@k       the state's floating leaves become NaN just before step k, so
              step k's loss and gradients are NaN (the loop must stop there
              and keep the checkpoints before k);
  sigterm@k   the process sends itself SIGTERM right after step k (the loop
              must save at k and raise `Preempted`);
  sigkill@k   the process sends itself SIGKILL right after step k, once the
              asynchronous saves of earlier steps have landed (nothing is
              saved at k; a rerun resumes from the latest checkpoint before k).

Both signals wait for in-flight saves first, so the step a rerun resumes from
is fixed by the schedule, not by how fast the disk was.

An entry without `stage:` applies to every stage. Interruptions therefore
happen at a step the test names, never at a wall-clock time.
"""

from __future__ import annotations

import dataclasses
import os
import signal

import jax
import jax.numpy as jnp

ENV = 'AE_JAX_FAULT'
KINDS = ('nan', 'sigterm', 'sigkill')


@dataclasses.dataclass(frozen=True)
class Fault:
  kind: str
  step: int
  stage: str | None = None


def parse(spec: str | None) -> tuple[Fault, ...]:
  """The faults of a spec string; raises ValueError naming a malformed entry."""
  faults = []
  for entry in filter(None, (part.strip() for part in (spec or '').split(','))):
    stage, _, rest = entry.rpartition(':')
    kind, at, step = rest.partition('@')
    if kind not in KINDS or not at or not step.isdigit() or int(step) <= 0:
      raise ValueError(f'{ENV} entry {entry!r} is not [stage:]kind@step with kind in {KINDS} '
                       'and step > 0.')
    faults.append(Fault(kind, int(step), stage or None))
  return tuple(faults)


def for_stage(stage: str, spec: str | None = None) -> dict[tuple[str, int], Fault]:
  """(kind, step) -> fault for `stage`, from `spec` or else the environment."""
  spec = os.environ.get(ENV) if spec is None else spec
  return {(f.kind, f.step): f for f in parse(spec) if f.stage in (None, stage)}


def poison(state):
  """The state with every floating leaf replaced by NaN."""
  return jax.tree.map(
      lambda x: jnp.full_like(x, jnp.nan) if jnp.issubdtype(x.dtype, jnp.inexact) else x, state)


def signal_self(kind: str) -> None:
  os.kill(os.getpid(), signal.SIGKILL if kind == 'sigkill' else signal.SIGTERM)
