"""The agent's end of exec streams: a command run inside a replica, its stdio on the bus.

The control plane opens a stream with an ``open`` frame naming the replica and the
command; the agent finds the replica among its runtimes, asks that runtime how to run a
command in it (``Runtime.exec_plan``: the pod's network namespace, working dir and env for
a process replica; ``podman exec -i`` for a container) and spawns it in a process group of
its own. stdout and stderr go back as ``out``/``err`` frames, stdin comes in as ``in``
frames (``eof`` closes it), ``kill`` sends a signal to the group, and the exit code ends
the stream (128 + N for a command killed by signal N, as a shell says it). A stream whose
control plane goes quiet (``LinkLost``) or says ``close`` has its command killed.

An ``open`` with ``tty`` ({cols, rows}) runs the command on a pseudo-terminal of its own
(its controlling terminal; ``podman exec -it`` in a container): stdin goes to the
terminal, stdout and stderr come back together as ``out``, ``resize`` frames set its size
(the command gets SIGWINCH).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import logging
import os
import signal
import struct
import termios
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.msg import Msg

from kled.agent import portdial
from kled.agent.runtime.base import ExecPlan, Runtime
from kled.bus.exec_link import MAX_CHUNK, ExecLink, Frame, LinkLost, decode
from kled.bus.office import MessageOffice
from kled.errors import KledError
from kled.resources.hoststate import ReplicaSpec, ReplicaState, RuntimeKind

log = logging.getLogger(__name__)

#: most exec streams one agent runs at once
MAX_STREAMS = 64
#: seconds from SIGTERM to SIGKILL when a stream ends with its command still running
STOP_GRACE = 2.0
#: in a container: the command's pid in the file named by $0, then the command itself
_RECORD_PID = 'echo $$ 2>/dev/null >"$0"; exec "$@"'
_SIGNAL_PID = 'kill -"$1" "$(cat "$0")" 2>/dev/null; true'
_FORGET_PID = 'rm -f "$0"'
_PR_SET_PDEATHSIG = 1
# loaded before any fork: the child only calls it
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:
    _LIBC = None


class Planner(Protocol):
    """What an exec needs of a runtime: how to run a command in one of its replicas (a
    runtime, or the workspaces of the host, which answer for their containers)."""

    def exec_plan(self, spec: ReplicaSpec, command: list[str]) -> ExecPlan: ...


@dataclass(frozen=True)
class Target:
    """A running replica (or workspace), and the runtime that runs it."""

    runtime: Planner
    spec: ReplicaSpec


Finder = Callable[[str], Awaitable[Target | None]]


@dataclass(frozen=True)
class _InSidecar:
    """Plans commands in one sidecar of a replica's pod (``ContainerRuntime.exec_plan_in``)."""

    plan_in: Callable[[ReplicaSpec, str, list[str]], ExecPlan]
    container: str

    def exec_plan(self, spec: ReplicaSpec, command: list[str]) -> ExecPlan:
        return self.plan_in(spec, self.container, command)


def exit_code(returncode: int) -> int:
    """A process's exit code as a shell reports it: 128 + N for a death by signal N."""
    return 128 - returncode if returncode < 0 else returncode


def interactive(
    runtime: Planner, spec: ReplicaSpec, command: list[str], tty: bool = False
) -> list[str]:
    """The argv of ``command`` in the replica, with its stdin attached."""
    argv = list(runtime.exec_plan(spec, command).argv)
    if spec.runtime == RuntimeKind.CONTAINER:
        # the runtime's plan is a probe's (`podman exec NAME CMD`): a stream needs stdin
        where = argv.index("exec")
        argv[where + 1 : where + 1] = ["-i", "-t"] if tty else ["-i"]
    return argv


def set_size(fd: int, cols: int, rows: int) -> None:
    """The terminal's size; its foreground process group gets SIGWINCH."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def _tty_size(meta: dict[str, object]) -> tuple[int, int] | None:
    size = meta.get("tty")
    if not isinstance(size, dict):
        return None
    cols, rows = size.get("cols"), size.get("rows")
    if isinstance(cols, int) and isinstance(rows, int) and 0 < cols < 10000 and 0 < rows < 10000:
        return cols, rows
    return 80, 24


class ExecServer:
    """Serves the exec streams of one node until cancelled."""

    def __init__(self, office: MessageOffice, node: str, find: Finder) -> None:
        self.office = office
        self.node = node
        self.find = find
        self._streams: dict[str, ExecLink] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def run(self) -> None:
        subjects = self.office.subjects
        listen = subjects.exec_listen(self.node)
        prefix = listen[: -len("*.in")]

        async def on_msg(msg: Msg) -> None:
            session = msg.subject[len(prefix) :].split(".", 1)[0]
            link = self._streams.get(session)
            if link is not None:
                link.deliver(msg.data)
                return
            try:
                frame, _ = decode(msg.data)
            except LinkLost:
                return
            if frame.kind != "open":
                return  # a late frame of a stream that ended
            link = ExecLink(self.office, subjects.exec_out(self.node, session), None)
            link.deliver(msg.data)
            self._streams[session] = link
            task = asyncio.create_task(self._serve(session, link))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

        sub = None
        while sub is None:
            try:
                sub = await self.office.nc.subscribe(listen, cb=on_msg)
            except KledError as err:
                log.info("node/%s exec streams wait for NATS: %s", self.node, err)
                await asyncio.sleep(1.0)
        try:
            await asyncio.Event().wait()
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _serve(self, session: str, link: ExecLink) -> None:
        await link.open()
        try:
            first = await link.recv()
            if len(self._streams) > MAX_STREAMS:
                await link.send("error", message=f"node {self.node} runs too many exec streams")
                return
            await self._run_command(link, first)
        except LinkLost as err:
            log.info("node/%s exec %s ended: %s", self.node, session, err)
        except KledError as err:
            with contextlib.suppress(KledError):
                await link.send("error", message=str(err))
        finally:
            self._streams.pop(session, None)
            await link.close()

    async def _run_command(self, link: ExecLink, first: Frame) -> None:
        replica = first.meta.get("replica")
        command = first.meta.get("command")
        if not isinstance(replica, str) or not _is_argv(command):
            await link.send("error", message="an exec needs a replica and a command (argv)")
            return
        assert isinstance(command, list)
        target = await self.find(replica)
        if target is None:
            await link.send("error", message=f"replica {replica} is not running on {self.node}")
            return
        port = first.meta.get("connect")  # kubectl port-forward: the agent connects itself
        if isinstance(port, int) and 0 < port < 65536 and portdial.can_dial(target.spec):
            await portdial.serve(link, target.spec, port)
            return
        container = first.meta.get("container")
        if container is not None:  # a sidecar of the replica's pod
            inside = getattr(target.runtime, "exec_plan_in", None)
            names = [c.name for c in target.spec.sidecars]
            if inside is None or container not in names:
                listed = ", ".join(names) or "none"
                message = f"replica {replica} has no container {container!r} (sidecars: {listed})"
                await link.send("error", message=message)
                return
            target = Target(_InSidecar(inside, str(container)), target.spec)
        pidfile = None
        if target.spec.runtime == RuntimeKind.CONTAINER:
            pidfile = f"/tmp/.kled-exec-{uuid.uuid4().hex}.pid"
            command = ["sh", "-c", _RECORD_PID, pidfile, *command]
        plan = target.runtime.exec_plan(target.spec, command)
        size = _tty_size(first.meta)
        argv = interactive(target.runtime, target.spec, command, tty=size is not None)
        master = -1
        try:
            if size is None:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    stdin=asyncio.subprocess.PIPE,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    cwd=plan.cwd,
                    env=plan.env,
                    start_new_session=True,
                    preexec_fn=_die_with_the_agent,
                )
            else:
                master, slave = os.openpty()
                set_size(master, *size)
                env = {**(plan.env if plan.env is not None else os.environ)}
                env.setdefault("TERM", "xterm-256color")
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *argv,
                        stdin=slave,
                        stdout=slave,
                        stderr=slave,
                        cwd=plan.cwd,
                        env=env,
                        start_new_session=True,
                        preexec_fn=_on_the_terminal,
                    )
                finally:
                    os.close(slave)  # the command's alone: its end is the master's EOF
        except OSError as err:
            if master >= 0:
                os.close(master)
            await link.send("error", message=f"cannot run {command[0]!r}: {err.strerror or err}")
            return
        running = _Running(proc, target, pidfile, master)
        log.info("%s exec pid=%s argv=%s", target.spec.resource_name, proc.pid, command[:1])
        await link.send("started", pid=proc.pid)
        if master >= 0:
            pumps = [asyncio.create_task(_pump_terminal(master, link))]
        else:
            assert proc.stdout is not None and proc.stderr is not None
            pumps = [
                asyncio.create_task(_pump(proc.stdout, link, "out")),
                asyncio.create_task(_pump(proc.stderr, link, "err")),
            ]
        inbound = asyncio.create_task(_inbound(link, running))

        async def finish() -> None:
            await asyncio.gather(*pumps)
            code = exit_code(await proc.wait())
            await link.send("exit", code=code)

        done = asyncio.create_task(finish())
        try:
            # the command ends (its exit is sent), or the stream does (the command is killed)
            await asyncio.wait({done, inbound}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (inbound, done, *pumps):
                task.cancel()
            for task in (inbound, done, *pumps):
                with contextlib.suppress(asyncio.CancelledError, KledError):
                    await task
            await running.stop()
            running.close_terminal()


def _on_the_terminal() -> None:
    """In the child of a ``tty`` exec, after setsid: its stdin, a pty, becomes its
    controlling terminal (Ctrl-C, job control and SIGWINCH work as in a login)."""
    _die_with_the_agent()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def _die_with_the_agent() -> None:
    """In the child before exec: SIGKILL when the agent dies, so that an agent killed
    with -9 leaves no exec'd command behind holding a port (a graceful stop of the agent
    stops them itself). Kept across ``ip netns exec`` and ``sh -c 'exec …'``."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


def _is_argv(value: object) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(a, str) and a for a in value)


async def _pump(stream: asyncio.StreamReader, link: ExecLink, kind: str) -> None:
    while True:
        chunk = await stream.read(MAX_CHUNK)
        if not chunk:
            return
        await link.send_data(kind, chunk)


async def _pump_terminal(master: int, link: ExecLink) -> None:
    """The terminal's output (stdout and stderr together) until every process on it is
    gone (the master then reads EIO)."""
    while True:
        try:
            chunk = await asyncio.to_thread(os.read, master, MAX_CHUNK)
        except OSError:
            return
        if not chunk:
            return
        await link.send_data("out", chunk)


async def _to_terminal(master: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = await asyncio.to_thread(os.write, master, view)
        view = view[written:]


async def _inbound(link: ExecLink, running: _Running) -> None:
    """Frames from the control plane: stdin, its end, signals; the stream's end kills."""
    if running.master >= 0:
        await _inbound_terminal(link, running)
        return
    stdin = running.proc.stdin
    assert stdin is not None
    try:
        while True:
            frame = await link.recv()
            if frame.kind == "in" and not stdin.is_closing():
                with contextlib.suppress(ConnectionError):
                    stdin.write(frame.data)
                    await stdin.drain()
                await link.consumed(len(frame.data))
            elif frame.kind == "eof":
                stdin.close()
            elif frame.kind == "kill":
                number = frame.meta.get("signal", signal.SIGTERM)
                if isinstance(number, int) and number in {s.value for s in signal.Signals}:
                    await running.signal(number)
            elif frame.kind == "close":
                break
    except LinkLost as err:
        log.info("exec pid=%s: %s; stopping it", running.proc.pid, err)
    await running.stop()


async def _inbound_terminal(link: ExecLink, running: _Running) -> None:
    """As ``_inbound``, for a command on a terminal: stdin is typed into it (the end of
    stdin means nothing to a terminal), ``resize`` sets its size."""
    try:
        while True:
            frame = await link.recv()
            if frame.kind == "in":
                with contextlib.suppress(OSError):
                    await _to_terminal(running.master, frame.data)
                await link.consumed(len(frame.data))
            elif frame.kind == "resize":
                cols, rows = frame.meta.get("cols"), frame.meta.get("rows")
                if isinstance(cols, int) and isinstance(rows, int):
                    set_size(running.master, cols, rows)
            elif frame.kind == "kill":
                number = frame.meta.get("signal", signal.SIGTERM)
                if isinstance(number, int) and number in {s.value for s in signal.Signals}:
                    await running.signal(number)
            elif frame.kind == "close":
                break
    except LinkLost as err:
        log.info("exec pid=%s: %s; stopping it", running.proc.pid, err)
    await running.stop()


class _Running:
    """The command of one stream. In a container it is reached through its pid, kept in
    ``pidfile`` inside the container: podman does not pass a signal, or the death of
    ``podman exec``, on to the command it runs, so a restarted dev command would
    otherwise keep its port."""

    def __init__(
        self,
        proc: asyncio.subprocess.Process,
        target: Target,
        pidfile: str | None,
        master: int = -1,
    ) -> None:
        self.proc = proc
        self.target = target
        self.pidfile = pidfile
        #: the pty's master of a ``tty`` exec, else -1
        self.master = master

    def close_terminal(self) -> None:
        if self.master >= 0:
            with contextlib.suppress(OSError):
                os.close(self.master)
            self.master = -1

    async def signal(self, number: int) -> None:
        if self.pidfile is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, number)
            return
        await self._inside(_SIGNAL_PID, str(number))

    async def _inside(self, script: str, *args: str) -> None:
        assert self.pidfile is not None
        command = ["sh", "-c", script, self.pidfile, *args]
        argv = self.target.runtime.exec_plan(self.target.spec, command).argv
        with contextlib.suppress(OSError, TimeoutError):
            proc = await asyncio.create_subprocess_exec(
                *argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.DEVNULL,
            )
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                proc.kill()
                await proc.wait()

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL after ``STOP_GRACE``; the pid file goes with it."""
        proc = self.proc
        try:
            if proc.returncode is not None:
                return
            await self.signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
            except TimeoutError:
                await self.signal(signal.SIGKILL)
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
        finally:
            if self.pidfile is not None:
                await self._inside(_FORGET_PID)
                self.pidfile = None


async def find_running(runtimes: dict[RuntimeKind, Runtime], replica_id: str) -> Target | None:
    """The runtime running ``replica_id`` now, and its spec; None if none does."""
    for rt in runtimes.values():
        try:
            spec = await rt.spec_of(replica_id)
            if spec is None:
                continue
            status = await rt.inspect(replica_id)
        except KledError:
            continue
        if status.state == ReplicaState.RUNNING:
            return Target(rt, spec)
    return None
