"""The engine of ``kled dev``: a dev session, its syncs, and the dev command's lifecycle.

One ``DevLoop`` runs one app's session, in this order:

1. ask the control plane to swap the app for its dev replica (``POST …/dev``) and keep the
   session's lease renewed (``PUT``) at a quarter of its grace period;
2. wait until the dev replica answers an exec with the session's id (``KLED_DEV_SESSION``),
   so nothing lands in the replica being replaced;
3. start one ``SyncSession`` per ``sync`` rule, each over its own exec stream running the
   carried sync remote (``kled.sync.carry``) in the replica, and wait for the first sync;
4. run ``command`` in the first rule's remote folder through another exec stream, its
   output printed with an ``[app]`` prefix; after a batch from the laptop lands, run the
   ``onChange.exec`` commands whose glob matched and, if a ``restart`` glob matched,
   restart it (SIGTERM, SIGKILL after ``restartGraceSeconds``). A command that exits says
   its exit code and waits for the next change;
5. on the way out (Ctrl-C, SIGTERM, SIGHUP), stop everything and restore the app
   (``DELETE …/dev``). If this process dies without that, the lease lapses and the
   control plane restores the app itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from kled.cli.client import Client
from kled.cli.devconfig import DevTarget, SyncRule, matches
from kled.cli.devstatus import LastSync, Snapshot, View
from kled.cli.exec_client import Endpoint, ExecStream, open_exec
from kled.cli.portforward import Forward, parse
from kled.cli.reverseport import ReverseForward
from kled.errors import Conflict, KledError, NotFound, Unavailable
from kled.sync.carry import preamble, remote_argv
from kled.sync.channel import Link
from kled.sync.session import Batch, SyncSession, new_token

#: how long the dev replica has to come up
REPLICA_TIMEOUT = 180.0
#: seconds before the dev command is started again after its stream broke
RETRY_SECONDS = 1.0
#: seconds the dev command waits for the reverse ports' listeners before it starts anyway
REVERSE_WAIT = 10.0
_IN_FOLDER = 'cd "$1" && shift && exec "$@"'


def dev_path(team: str, env: str, app: str) -> str:
    return f"/api/v1/teams/{team}/environments/{env}/apps/{app}/dev"


class DevLoop:
    def __init__(
        self,
        client: Client,
        endpoint: Endpoint,
        place: tuple[str, str],
        app: str,
        target: DevTarget,
        base_dir: Path,
        *,
        out: TextIO | None = None,
        live: bool | None = None,
    ) -> None:
        self.client = client
        self.endpoint = endpoint
        self.team, self.env = place
        self.app = app
        #: ``ws/NAME`` targets a running workspace: no swap, no lease, nothing to restore
        self.workspace = app[3:] if app.startswith("ws/") else None
        self.target = target
        self.base_dir = base_dir
        self.out = out or sys.stdout
        self.session = ""
        self.syncs: list[SyncSession] = []
        self.restarts = 0
        self._changed = asyncio.Event()
        self._restart_wanted = False
        self._execs_wanted: list[str] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self.forwards: list[Forward] = []
        self.reverse: list[ReverseForward] = []
        #: what the session does now, for the status line
        self.phase = "starting"
        self.last_sync: LastSync | None = None
        self.view = View(self.snapshot, self.out, live=live)

    # -- output -----------------------------------------------------------------------------
    def say(self, text: str) -> None:
        self.view.line(f"[kled dev] {text}")

    def _line(self, text: str) -> None:
        self.view.line(f"[{self.app}] {text}")

    def snapshot(self) -> Snapshot:
        """The session as the status line shows it."""
        state = self.phase
        if state == "running" and any(s.state != "watching" for s in self.syncs):
            lost = any(s.state in ("connecting", "disconnected") for s in self.syncs)
            state = "reconnecting" if lost else "syncing"
        ports = [f"{f.local}→{f.remote}" for f in self.forwards]
        ports += [
            f"{'' if b.listening.is_set() else '(down) '}remote {b.remote}→{b.local}"
            for b in self.reverse
        ]
        return Snapshot(self.app, state, self.last_sync, self.restarts, tuple(ports))

    # -- the control plane ------------------------------------------------------------------
    async def _api(self, method: str, body: Any = None, **params: Any) -> Any:
        path = dev_path(self.team, self.env, self.app)
        return await asyncio.to_thread(
            self.client.request, method, path, params=params or None, body=body
        )

    async def _renew(self, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            try:
                await self._api("PUT", {"session": self.session})
            except NotFound:
                self.say("the control plane ended this dev session (the app was restored)")
                raise
            except KledError as err:
                self.say(f"could not renew the session: {err}; retrying")

    async def _exec(self, command: list[str]) -> ExecStream:
        route = None
        if self.workspace is not None:
            route = f"/api/v1/teams/{self.team}/workspaces/{self.workspace}/exec"
        return await open_exec(self.endpoint, self.team, self.env, self.app, command, route=route)

    async def _wait_replica(self) -> None:
        loop = asyncio.get_running_loop()
        until = loop.time() + REPLICA_TIMEOUT
        probe = ["sh", "-c", 'printf %s "$KLED_DEV_SESSION"']
        last = "no answer yet"
        while loop.time() < until:
            try:
                stream = await self._exec(probe)
                await stream.close_stdin()
                seen = await stream.stdout.read()
                code = await stream.wait()
                await stream.close()
                if code == 0 and seen.decode() == self.session:
                    return
                last = "the app's own replica still runs"
            except (Conflict, Unavailable) as err:
                last = str(err)
            await asyncio.sleep(0.5)
        raise Unavailable(f"the dev replica of {self.app} did not start: {last}")

    # -- syncs ------------------------------------------------------------------------------
    def _connector(self, rule: SyncRule, token: str) -> Callable[[], Any]:
        async def connect() -> Link:
            try:
                stream = await self._exec(remote_argv(rule.remote))
                await stream.write(preamble(token))
            except KledError as err:
                # no stream now (a cut link, a restarting agent): the sync tries again
                raise ConnectionError(str(err)) from err
            self._spawn(_drain_lines(stream.stderr, lambda t: self.say(f"sync: {t}")))
            return stream.link()

        return connect

    def _on_batch(self, batch: Batch) -> None:
        if batch.direction != "up" or batch.initial:
            return
        self.last_sync = LastSync(batch.files, batch.bytes, batch.ms)
        self.say(f"synced {batch.files} file(s), {batch.bytes} B in {batch.ms:.0f} ms")
        changes = self.target.on_change
        for rule in changes.exec:
            if matches([rule.glob], batch.paths) and rule.run not in self._execs_wanted:
                self._execs_wanted.append(rule.run)
        if matches(changes.restart, batch.paths):
            self._restart_wanted = True
        # any change also wakes a command that crashed: it runs again on the new tree
        self._changed.set()

    async def _start_syncs(self) -> None:
        for rule in self.target.sync:
            local = (self.base_dir / rule.local).resolve()
            if not local.is_dir():
                raise NotFound(f"sync.local: {local} is not a folder")
            token = new_token()
            session = SyncSession(
                local,
                self._connector(rule, token),
                token=token,
                strategy=rule.strategy_value(),
                exclude=rule.exclude,
                gitignore=rule.gitignore,
                on_batch=self._on_batch,
            )
            await session.start()
            self.syncs.append(session)
        for session in self.syncs:
            await session.wait_synced(timeout=REPLICA_TIMEOUT)
        files = sum(len(s.base or {}) for s in self.syncs)
        self.say(f"in sync: {files} path(s) in {len(self.syncs)} folder(s)")

    # -- the dev command --------------------------------------------------------------------
    async def _start_command(self) -> ExecStream:
        folder = self.target.sync[0].remote
        stream = await self._exec(
            ["sh", "-c", _IN_FOLDER, "kled-dev", folder, *self.target.command]
        )
        await stream.close_stdin()
        self._spawn(_drain_lines(stream.stdout, self._line))
        self._spawn(_drain_lines(stream.stderr, self._line))
        return stream

    async def _stop_command(self, stream: ExecStream) -> None:
        if not stream.done:
            with contextlib.suppress(KledError):
                await stream.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(stream.wait(), self.target.restart_grace_seconds)
            except (TimeoutError, KledError):
                with contextlib.suppress(KledError):
                    await stream.signal(signal.SIGKILL)
                with contextlib.suppress(TimeoutError, KledError):
                    await asyncio.wait_for(stream.wait(), 10)
        await stream.close()

    async def _run_execs(self) -> None:
        folder = self.target.sync[0].remote
        wanted, self._execs_wanted = self._execs_wanted, []
        for command in wanted:
            self.say(f"running: {command}")
            stream = await self._exec(
                ["sh", "-c", _IN_FOLDER, "kled-dev", folder, "sh", "-c", command]
            )
            await stream.close_stdin()
            printing = [
                asyncio.create_task(_drain_lines(stream.stdout, self._line)),
                asyncio.create_task(_drain_lines(stream.stderr, self._line)),
            ]
            code = await stream.wait()
            await asyncio.gather(*printing)
            await stream.close()
            if code != 0:
                self.say(f"{command!r} exited with code {code}")

    async def _launch(self) -> ExecStream | None:
        """The dev command started; None (and another try soon) if it could not be."""
        try:
            return await self._start_command()
        except KledError as err:
            self.say(f"could not start {self.app}: {err}; trying again")
            asyncio.get_running_loop().call_later(RETRY_SECONDS, self._changed.set)
            return None

    async def _command_loop(self) -> None:
        stream: ExecStream | None = None
        try:
            if self.target.command:
                stream = await self._launch()
            while True:
                waits: list[asyncio.Task[Any]] = [asyncio.create_task(self._changed.wait())]
                if stream is not None and not stream.done:
                    waits.append(asyncio.create_task(_exit_of(stream)))
                _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                if stream is not None and stream.done and not self._changed.is_set():
                    try:
                        code = await stream.wait()
                        self.say(f"{self.app} exited with code {code}; waiting for a change")
                    except KledError as err:
                        # the stream broke (a control plane or agent restart), not the
                        # command: start it again rather than wait for an edit
                        self.say(f"lost {self.app}'s output ({err}); starting it again")
                        asyncio.get_running_loop().call_later(RETRY_SECONDS, self._changed.set)
                    await stream.close()
                    stream = None
                    continue
                self._changed.clear()
                restart, self._restart_wanted = self._restart_wanted, False
                if self._execs_wanted:
                    try:
                        await self._run_execs()
                    except KledError as err:
                        self.say(f"onChange.exec failed: {err}")
                if (restart or stream is None) and self.target.command:
                    if stream is not None:
                        await self._stop_command(stream)
                    self.restarts += 1
                    self.say(f"restarting {self.app} (restart {self.restarts})")
                    stream = await self._launch()
        finally:
            if stream is not None:
                await self._stop_command(stream)

    # -- the whole session ------------------------------------------------------------------
    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def run(self, stop: asyncio.Event) -> None:
        self.view.start()
        try:
            await self._run(stop)
        finally:
            self.view.stop()

    async def _run(self, stop: asyncio.Event) -> None:
        if self.workspace is not None:
            await self._run_in_workspace(stop)
            return
        self.phase = "swapping"
        begun = await self._api("POST", {})
        self.session = str(begun["session"])
        grace = float(begun.get("graceSeconds") or 60)
        self.say(f"dev session {self.session[:8]} on app {self.app} (grace {grace:g}s)")
        renewer = asyncio.create_task(self._renew(max(grace / 4, 0.2)))
        work = asyncio.create_task(self._work())
        ender = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait(
                {renewer, work, ender}, return_when=asyncio.FIRST_COMPLETED
            )
            for task in done:
                if task is not ender:
                    task.result()  # an error of the session ends it, after the restore
        finally:
            for task in (work, ender, renewer):
                task.cancel()
            for task in (work, ender, renewer):
                with contextlib.suppress(asyncio.CancelledError, KledError):
                    await task
            self.phase = "restoring"
            await self._wind_down()
            await self._restore()

    async def _run_in_workspace(self, stop: asyncio.Event) -> None:
        """A workspace runs already and is the developer's own: sync into it and run the
        command there, until stopped; nothing to swap or restore."""
        self.say(f"dev session in workspace {self.workspace}")
        work = asyncio.create_task(self._work(swapped=False))
        ender = asyncio.create_task(stop.wait())
        try:
            done, _ = await asyncio.wait({work, ender}, return_when=asyncio.FIRST_COMPLETED)
            if work in done:
                work.result()
        finally:
            for task in (work, ender):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, KledError):
                    await task
            await self._wind_down()
            self.say(f"left workspace {self.workspace} as it is")

    async def _wind_down(self) -> None:
        for forward in self.forwards:
            await forward.close()
        for back in self.reverse:
            await back.close()
        for session in self.syncs:
            with contextlib.suppress(Exception):
                await session.stop()
        for task in list(self._tasks):
            task.cancel()

    async def _work(self, swapped: bool = True) -> None:
        if swapped:
            self.phase = "waiting for the dev replica"
            await self._wait_replica()
            self.say("dev replica running")
        self.phase = "first sync"
        await self._start_syncs()
        for spec in self.target.ports:
            local, remote = parse(spec)
            forward = Forward(local, remote, self._exec)
            await forward.start()
            self.forwards.append(forward)
            self.say(f"forwarding 127.0.0.1:{local} → {self.app}:{remote}")
        for spec in self.target.reverse_ports:
            local, remote = parse(spec)
            back = ReverseForward(local, remote, self._exec, on_state=self.say)
            await back.start()
            self.reverse.append(back)
        for back in self.reverse:  # the command may call the laptop as it starts
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(back.listening.wait(), REVERSE_WAIT)
        self.phase = "running"
        await self._command_loop()

    async def _restore(self) -> None:
        try:
            await self._api("DELETE", session=self.session)
            self.say(f"app {self.app} restored")
        except NotFound:
            self.say(f"app {self.app} was restored already")
        except KledError as err:
            self.say(f"could not restore {self.app} now ({err}); the control plane will")


async def _exit_of(stream: ExecStream) -> None:
    with contextlib.suppress(KledError):
        await stream.wait()


async def _drain_lines(reader: asyncio.StreamReader, emit: Callable[[str], None]) -> None:
    while True:
        try:
            raw = await reader.readline()
        except (ValueError, asyncio.LimitOverrunError):
            raw = await reader.read(65536)
        if not raw:
            return
        emit(raw.decode(errors="replace").rstrip("\n"))
