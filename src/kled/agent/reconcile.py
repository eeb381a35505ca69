"""Desired versus observed, turned into actions, and the queue that carries them out.

``plan`` is a pure function: given a host's desired state and what its runtimes report,
it returns the actions that close the gap. It does not look at restart policies: a
replica that crashed is restarted by its runtime, and a replica that ended for good
(Succeeded, or Failed under ``Never``) stays ended until its spec changes (``kled app
restart`` bumps the spec's generation). ``Reconciler`` runs the actions: one serial queue
per replica, replicas in parallel, a bounded number at once; a ``TemporaryError`` is
retried after its delay, a ``PermanentError`` is reported and dropped; a newer action for a
replica replaces one that has not started yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum

from kled.aio import wait_event
from kled.errors import KledError, PermanentError, TemporaryError
from kled.resources.hoststate import HostDesiredState, ReplicaSpec, ReplicaStatus, RuntimeKind

log = logging.getLogger(__name__)


class ActionKind(StrEnum):
    START = "start"
    STOP = "stop"
    RESTART = "restart"


@dataclass(frozen=True)
class Observed:
    """One replica as a runtime knows it: the spec it was started with, and its status."""

    spec: ReplicaSpec
    status: ReplicaStatus

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def runtime(self) -> RuntimeKind:
        return self.spec.runtime


@dataclass(frozen=True)
class Action:
    kind: ActionKind
    replica_id: str
    reason: str
    #: what to start (START, RESTART)
    spec: ReplicaSpec | None = None
    #: what runs now (STOP, RESTART)
    current: ReplicaSpec | None = None


_ORDER = {ActionKind.STOP: 0, ActionKind.RESTART: 1, ActionKind.START: 2}


def plan(desired: HostDesiredState, observed: Mapping[str, Observed]) -> list[Action]:
    """The actions that bring ``observed`` to ``desired``; stops first, then the rest."""
    actions: list[Action] = []
    wanted = desired.by_id()
    for rid, spec in wanted.items():
        obs = observed.get(rid)
        if obs is None:
            actions.append(Action(ActionKind.START, rid, "not running", spec=spec))
        elif obs.spec != spec:
            actions.append(
                Action(ActionKind.RESTART, rid, _why_replace(obs.spec, spec), spec, obs.spec)
            )
    for rid, obs in observed.items():
        if rid not in wanted:
            actions.append(Action(ActionKind.STOP, rid, "no longer desired", current=obs.spec))
    actions.sort(key=lambda a: (_ORDER[a.kind], a.replica_id))
    return actions


def _why_replace(old: ReplicaSpec, new: ReplicaSpec) -> str:
    changed = sorted(k for k, v in new.model_dump().items() if old.model_dump().get(k) != v)
    if changed == ["generation"]:
        return "restart requested"
    return f"spec changed: {', '.join(changed)}"


Executor = Callable[[Action], Awaitable[None]]
ErrorSink = Callable[[Action, KledError], None]


def _log_error(action: Action, err: KledError) -> None:
    log.error("replica/%s %s failed: %s", action.replica_id, action.kind, err)


class Reconciler:
    """Runs actions with one serial queue per replica and at most ``workers`` at once."""

    def __init__(
        self,
        execute: Executor,
        *,
        workers: int = 8,
        on_permanent: ErrorSink = _log_error,
        unexpected_delay: float = 1.0,
    ) -> None:
        self._execute = execute
        self._slots = asyncio.Semaphore(workers)
        self._on_permanent = on_permanent
        self._unexpected_delay = unexpected_delay
        #: the next action of each replica not yet started (newer replaces older)
        self._pending: dict[str, Action] = {}
        self._wake: dict[str, asyncio.Event] = {}
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._closed = False

    def submit(self, actions: Iterable[Action]) -> None:
        for action in actions:
            if self._closed:
                return
            rid = action.replica_id
            self._pending[rid] = action
            if rid not in self._tasks or self._tasks[rid].done():
                self._wake[rid] = asyncio.Event()
                self._tasks[rid] = asyncio.create_task(self._worker(rid))
            self._wake[rid].set()

    def busy(self, replica_id: str) -> bool:
        task = self._tasks.get(replica_id)
        return replica_id in self._pending or (task is not None and not task.done())

    async def idle(self) -> None:
        """Wait until every queued action has been carried out (or dropped)."""
        while True:
            tasks = [t for t in self._tasks.values() if not t.done()]
            if not tasks:
                return
            await asyncio.wait(tasks)

    async def close(self) -> None:
        self._closed = True
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _worker(self, rid: str) -> None:
        # One task per replica, ending when its queue is empty: serial for one replica.
        while (action := self._pending.pop(rid, None)) is not None:
            try:
                async with self._slots:
                    await self._execute(action)
            except TemporaryError as err:
                log.info("replica/%s %s retried in %.1fs: %s", rid, action.kind, err.delay, err)
                await self._retry_later(rid, action, err.delay)
            except PermanentError as err:
                self._on_permanent(action, err)
            except KledError as err:
                log.warning("replica/%s %s failed, retrying: %s", rid, action.kind, err)
                await self._retry_later(rid, action, self._unexpected_delay)
            except Exception:
                log.exception("replica/%s %s failed unexpectedly; retrying", rid, action.kind)
                await self._retry_later(rid, action, self._unexpected_delay)

    async def _retry_later(self, rid: str, action: Action, delay: float) -> None:
        if rid in self._pending:
            return  # a newer action arrived while this one ran; it replaces the retry
        wake = self._wake[rid]
        wake.clear()
        # a newer action for this replica cuts the wait short and replaces the retry
        await wait_event(wake, delay)
        self._pending.setdefault(rid, action)
