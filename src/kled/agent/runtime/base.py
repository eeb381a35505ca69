"""The one seam between the agent and whatever runs a replica.

A runtime starts, stops and inspects replicas by their stable id (team.env.app.index),
lists the ones it started (so an agent that restarts adopts them instead of starting
duplicates) and hands the agent what it observes through two callbacks: a replica's new
status, and each captured log line. ``detach`` lets the agent exit while the replicas go
on running; ``stop`` ends a replica for good.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

from kled.resources.hoststate import LogLine, ReplicaSpec, ReplicaStatus, RuntimeKind

StatusSink = Callable[[ReplicaStatus], None]
LogSink = Callable[[LogLine], None]


def _ignore_status(_: ReplicaStatus) -> None:
    return None


def _ignore_log(_: LogLine) -> None:
    return None


IGNORE_STATUS: StatusSink = _ignore_status
IGNORE_LOG: LogSink = _ignore_log


@dataclass(frozen=True)
class ExecPlan:
    """How to run a command inside a replica (an exec probe, a preStop hook): the argv,
    and for a process replica its working dir and environment."""

    argv: list[str]
    cwd: str | None = None
    env: dict[str, str] | None = field(default=None, repr=False)


def grace_of(spec: ReplicaSpec, default: float) -> float:
    """Seconds from SIGTERM to SIGKILL for ``spec``'s replica: its
    ``terminationGracePeriodSeconds``, else the runtime's ``default``."""
    wanted = spec.termination_grace_period_seconds
    return default if wanted is None else float(wanted)


@runtime_checkable
class Runtime(Protocol):
    """What the reconciler needs of a runtime; every method is idempotent."""

    kind: RuntimeKind
    #: set by the agent: where status changes and captured lines go
    on_status: StatusSink
    on_log: LogSink

    async def start(self, spec: ReplicaSpec) -> ReplicaStatus:
        """Start (or, if it already runs with this spec, keep) the replica."""
        ...

    async def stop(self, replica_id: str) -> None:
        """Stop the replica and forget it; no error if it is unknown."""
        ...

    async def inspect(self, replica_id: str) -> ReplicaStatus:
        """The replica's observed status; NotFound if this runtime does not know it."""
        ...

    async def list(self) -> list[str]:
        """Ids of every replica this runtime knows, running or ended."""
        ...

    async def spec_of(self, replica_id: str) -> ReplicaSpec | None:
        """The spec the replica was started with, to tell whether it must be replaced."""
        ...

    async def logs(self, replica_id: str, *, tail: int = 100) -> builtins.list[str]:
        """The last ``tail`` captured lines of stdout, then of stderr."""
        ...

    async def adopt(self) -> builtins.list[str]:
        """Re-attach to the replicas started before an agent restart; returns their ids."""
        ...

    def exec_plan(self, spec: ReplicaSpec, command: builtins.list[str]) -> ExecPlan:
        """How to run ``command`` inside the replica of ``spec``."""
        ...

    async def detach(self) -> None:
        """Stop supervising without stopping the replicas (the agent is exiting)."""
        ...
