"""A small pool of worker processes that run policy scripts.

A QuickJS run releases the GIL, but its time limit counts the CPU time of the whole
process and a crash of the C library would take the server with it; so scripts run in
worker processes (``worker.py``), started once, sized to the host, each running one
script at a time and keeping its compiled policies warm. A worker that does not answer
within a run's wall-clock budget (its CPU limit plus slack) is killed and replaced, and
so is one that dies: the run is reported as cut off, never as a server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import struct
import sys
from dataclasses import asdict
from pathlib import Path
from typing import Any

from kled.admission.policy.runtime import Limits, Outcome
from kled.admission.policy.worker import encode_frame
from kled.errors import Unavailable

log = logging.getLogger(__name__)

_HEADER = struct.Struct(">I")
#: Largest answer a worker may send (a mutated object and its warnings).
_MAX_FRAME = 64 * 1024 * 1024


def default_size() -> int:
    """Workers for this host: one per core, at least two so one runaway script never
    holds every evaluation, at most eight."""
    return max(2, min(8, os.cpu_count() or 2))


def _worker_environment() -> dict[str, str]:
    """The server's environment, with this copy of ``kled`` importable in the worker even
    when the server found it through ``sys.path`` rather than an installation."""
    env = dict(os.environ)
    here = str(Path(__file__).resolve().parents[3])
    paths = [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    if here not in paths:
        env["PYTHONPATH"] = os.pathsep.join([here, *paths])
    return env


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        assert process.stdin is not None and process.stdout is not None
        self.stdin = process.stdin
        self.stdout = process.stdout

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def send(self, message: Any) -> None:
        self.stdin.write(encode_frame(message))
        await self.stdin.drain()

    async def receive(self) -> Any:
        header = await self.stdout.readexactly(_HEADER.size)
        (size,) = _HEADER.unpack(header)
        if size > _MAX_FRAME:
            raise ValueError(f"worker answer of {size} bytes is too large")
        return json.loads(await self.stdout.readexactly(size))

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        with contextlib.suppress(Exception):
            self.stdin.close()
        await self.process.wait()


class WorkerPool:
    """Runs scripts in ``size`` worker processes; ``env`` is what ``env()`` may show."""

    def __init__(self, size: int | None = None, env: dict[str, str] | None = None) -> None:
        self.size = size or default_size()
        self._env = dict(env or {})
        self._idle: asyncio.Queue[_Worker] = asyncio.Queue()
        self._all: set[_Worker] = set()
        self._started = False
        self._closed = False
        self._lock = asyncio.Lock()
        self.restarts = 0
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        async with self._lock:
            if self._started:
                return
            if self._closed:
                raise Unavailable("the policy worker pool is closed")
            workers = await asyncio.gather(*(self._spawn() for _ in range(self.size)))
            for worker in workers:
                self._idle.put_nowait(worker)
            self._started = True

    async def _spawn(self) -> _Worker:
        try:
            process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                "from kled.admission.policy.worker import main; main()",
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                env=_worker_environment(),
            )
        except OSError as exc:
            raise Unavailable(f"cannot start a policy worker: {exc}") from exc
        worker = _Worker(process)
        await worker.send({"env": self._env})
        self._all.add(worker)
        return worker

    @property
    def pids(self) -> list[int]:
        return [w.process.pid for w in self._all if w.alive]

    async def run(
        self,
        key: str,
        source: str,
        request: dict[str, Any],
        limits: Limits,
        answers: dict[str, Any],
        timeout: float,
    ) -> Outcome:
        """One run of a script; ``timeout`` is the wall-clock budget, waiting included."""
        message = {
            "key": key,
            "source": source,
            "request": request,
            "limits": asdict(limits),
            "answers": answers,
        }
        answer = await self._exchange(message, timeout)
        return answer if isinstance(answer, Outcome) else Outcome.from_dict(answer)

    async def run_many(
        self,
        scripts: list[tuple[str, str, Limits]],
        request: dict[str, Any],
        timeout: float,
    ) -> list[Outcome] | Outcome:
        """Every ``(key, source, limits)`` on one request in one worker round trip, an
        Outcome each, in order (one with ``need`` asks for a host call: run it alone);
        or the one Outcome that befell the whole batch (no worker, time, a crash)."""
        batch = [{"key": k, "source": src, "limits": asdict(lim)} for k, src, lim in scripts]
        answer = await self._exchange({"batch": batch, "request": request}, timeout)
        if isinstance(answer, Outcome):
            return answer
        outcomes = [Outcome.from_dict(a) for a in answer.get("batch") or []]
        if len(outcomes) != len(scripts):
            return Outcome(error="the policy worker answered a batch in part")
        return outcomes

    async def _exchange(self, message: dict[str, Any], timeout: float) -> Any:
        """Send one frame to an idle worker and read its answer; an Outcome instead if
        none was free in time, it overran ``timeout`` or it died."""
        if not self._started:
            await self.start()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        worker = None
        for _ in range(self.size + 1):
            try:
                candidate = await asyncio.wait_for(self._idle.get(), deadline - loop.time())
            except TimeoutError:
                return Outcome(limit="time")
            if candidate.alive:
                try:
                    await candidate.send(message)
                    worker = candidate
                    break
                except OSError:
                    pass  # it died while idle: nothing of this run was lost, try another
            self._replace_later(candidate)
        if worker is None:
            return Outcome(error="no policy worker is available")
        replace = False
        try:
            return await asyncio.wait_for(worker.receive(), max(0.01, deadline - loop.time()))
        except TimeoutError:
            replace = True
            log.warning(
                "policy worker pid=%s overran its budget; restarting it", worker.process.pid
            )
            return Outcome(limit="time")
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            replace = True
            try:
                code = await asyncio.wait_for(worker.process.wait(), 1)
            except TimeoutError:
                code = None
            log.warning(
                "policy worker pid=%s failed (%s, exit %s); restarting it",
                worker.process.pid,
                exc,
                code,
            )
            # QuickJS has faults of its own (seen at its memory limit): the worker is
            # lost, the server is not, and the run counts as a failure of the policy.
            how = f" (signal {-code})" if code is not None and code < 0 else ""
            return Outcome(error=f"the policy runtime crashed{how}")
        except BaseException:
            # Cancelled mid-run: the worker may still be busy; do not hand it out again.
            replace = True
            raise
        finally:
            if replace or not worker.alive:
                self._replace_later(worker)
            else:
                self._idle.put_nowait(worker)

    def _replace_later(self, worker: _Worker) -> None:
        self.restarts += 1
        self._all.discard(worker)
        task = asyncio.get_running_loop().create_task(self._replace(worker))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _replace(self, worker: _Worker) -> None:
        await worker.kill()
        if self._closed:
            return
        try:
            fresh = await self._spawn()
        except Unavailable:
            log.exception("cannot restart a policy worker")
            return
        if self._closed:
            await fresh.kill()
            return
        self._idle.put_nowait(fresh)

    async def close(self) -> None:
        """Stop every worker; runs still waiting get no worker."""
        self._closed = True
        for task in list(self._tasks):
            with contextlib.suppress(BaseException):
                await task
        for worker in list(self._all):
            with contextlib.suppress(Exception):
                worker.stdin.close()
        for worker in list(self._all):
            try:
                await asyncio.wait_for(worker.process.wait(), 2)
            except TimeoutError:
                await worker.kill()
        self._all.clear()
