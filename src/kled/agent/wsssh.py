"""One SSH connection into a workspace, served on stdin/stdout (as ``sshd -i`` would).

``kled ws proxy NAME`` (OpenSSH's ProxyCommand) opens the workspace's ``ssh`` stream
through the API; the agent's exec server runs this module for it, on the node, with the
client's public key (the API checked who asked). asyncssh speaks SSH on the stream; each
session becomes a ``podman exec`` into the workspace's container, as its remoteUser, in its
workspaceFolder, with its remoteEnv (the exec argv the agent gives, ``Session``): a shell or
a command, with a PTY when the client asks for one (window size followed), and the command's
exit code. Only that one key is accepted, never a password. The image needs nothing of
Kled's. The host key is the workspace's own, made on first use beside its session file.

Beside sessions (``agent/wsenter.py`` reaches into the container for these):

- the ``sftp`` subsystem (``sftp``, and ``scp``, which speaks SFTP) runs
  ``kled.agent.wssftp`` as a child that joins the container's namespaces as remoteUser;
- agent forwarding (``ssh -A``): a socket in the container's ``/tmp`` (a folder only
  remoteUser may enter), each connection to it relayed to the client's agent, named by
  ``SSH_AUTH_SOCK`` in the sessions of that connection;
- local port forwarding (``ssh -L``, ``kled ws forward``): connections are made from the
  workspace's network namespace, so ``localhost:PORT`` is the workspace's.

Run as ``python -m kled.agent.wsssh EXEC_JSON`` with ``EXEC_JSON`` holding ``argv`` (the
``podman exec`` prefix: engine, flags, ``exec``, user, workdir, env file), ``container``,
``host_key`` (a path) and ``key`` (the client's public key, OpenSSH format) or ``keys``
(several: the allowed users' own).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import inspect
import json
import logging
import os
import signal
import socket
import struct
import sys
import termios
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncssh
from asyncssh.constants import EXTENDED_DATA_STDERR

from kled.agent import wsidle
from kled.agent.wsreach import Reach

log = logging.getLogger("kled.agent.wsssh")

#: the shell a session gets when it names no command
SHELL = "/bin/sh"


@dataclass(frozen=True)
class Plan:
    argv: list[str]
    container: str
    host_key: str
    keys: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> Plan:
        data = json.loads(text)
        keys = data["keys"] if "keys" in data else [data["key"]]
        if not isinstance(keys, list) or not keys:
            raise ValueError("no key")
        return cls(
            argv=[str(a) for a in data["argv"]],
            container=str(data["container"]),
            host_key=str(data["host_key"]),
            keys=tuple(str(k) for k in keys),
        )

    def _after(self, flag: str) -> str | None:
        argv = self.argv
        return argv[argv.index(flag) + 1] if flag in argv[:-1] else None

    @property
    def engine(self) -> list[str]:
        """The engine and its global flags (the argv before ``exec``)."""
        return self.argv[: self.argv.index("exec")] if "exec" in self.argv else self.argv[:1]

    @property
    def user(self) -> str | None:
        return self._after("--user")

    @property
    def workdir(self) -> str | None:
        return self._after("--workdir")


def host_key(path: Path) -> asyncssh.SSHKey:
    """The workspace's host key: read, or made once (ed25519, 0600)."""
    with contextlib.suppress(FileNotFoundError):
        return asyncssh.read_private_key(str(path))
    key = asyncssh.generate_private_key("ssh-ed25519")
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.export_private_key())
    try:
        os.link(tmp, path)  # the first one made wins; a racing session reads it
    except FileExistsError:
        return asyncssh.read_private_key(str(path))
    finally:
        tmp.unlink(missing_ok=True)
    return key


class _Process(asyncssh.SSHServerProcess[bytes]):
    """asyncssh's session, except that the ``sftp`` subsystem comes to us as a process
    like any other (asyncssh would serve it itself, from the node's files, as root)."""

    def subsystem_requested(self, subsystem: str) -> bool:
        return subsystem == "sftp"

    def session_started(self) -> None:
        if self._chan.get_subsystem() != "sftp":
            super().session_started()
            return
        chan = self._chan
        handler = self._start_process(
            asyncssh.SSHReader(self, chan),
            asyncssh.SSHWriter(self, chan),
            asyncssh.SSHWriter(self, chan, EXTENDED_DATA_STDERR),
        )
        assert self._conn is not None and inspect.isawaitable(handler)
        self._conn.create_task(handler)


class _Server(asyncssh.SSHServer):
    def __init__(self, plan: Plan, allowed: list[asyncssh.SSHKey], reach: Reach) -> None:
        self.plan = plan
        self.allowed = {key.public_data for key in allowed}
        self.reach = reach

    def session_requested(self) -> _Process:
        return _Process(lambda process: _session(self.plan, self.reach, process), None, 0, False)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return key.public_data in self.allowed

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """``ssh -L``: a connection from the workspace's network namespace."""
        return self.reach.tcp_handler(dest_host, dest_port)


def _exec_argv(
    plan: Plan, process: asyncssh.SSHServerProcess[bytes], tty: bool, env: dict[str, str]
) -> list[str]:
    argv = [*plan.argv, "-i"]
    for name, value in env.items():
        argv += ["--env", f"{name}={value}"]
    if tty:
        argv += ["-t", "--env", f"TERM={process.get_terminal_type() or 'xterm'}"]
    argv.append(plan.container)
    command = process.command
    if command:
        return [*argv, SHELL, "-c", command]
    return [*argv, SHELL, "-l"] if tty else [*argv, SHELL]


async def _pipe_session(argv: list[str], process: asyncssh.SSHServerProcess[bytes]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None

    async def out(reader: asyncio.StreamReader, writer: asyncssh.SSHWriter[bytes]) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()

    async def into() -> None:
        stdin = proc.stdin
        assert stdin is not None
        with contextlib.suppress(ConnectionError, asyncssh.Error):
            while chunk := await process.stdin.read(65536):
                stdin.write(chunk)
                await stdin.drain()
        with contextlib.suppress(ConnectionError):
            stdin.close()

    feeder = asyncio.create_task(into())
    try:
        await asyncio.gather(out(proc.stdout, process.stdout), out(proc.stderr, process.stderr))
        return await proc.wait()
    finally:
        feeder.cancel()


def _set_size(fd: int, size: tuple[int, int, int, int]) -> None:
    cols, rows, width, height = size
    if cols and rows:
        fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, width, height))


def _controlling_tty() -> None:
    """In the child: a session of its own whose controlling terminal is the PTY (stdin),
    so that a window change reaches ``podman exec -t`` as SIGWINCH."""
    os.setsid()
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


async def _pty_session(argv: list[str], process: asyncssh.SSHServerProcess[bytes]) -> int:
    master, slave = os.openpty()
    _set_size(master, process.get_terminal_size())
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=slave,
            stdout=slave,
            stderr=slave,
            preexec_fn=_controlling_tty,
        )
    finally:
        os.close(slave)
    loop = asyncio.get_running_loop()
    output: asyncio.Queue[bytes] = asyncio.Queue()

    def readable() -> None:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: every holder of the PTY's other end is gone
            data = b""
        if not data:
            loop.remove_reader(master)
        output.put_nowait(data)

    loop.add_reader(master, readable)

    async def out() -> None:
        while chunk := await output.get():
            process.stdout.write(chunk)
            await process.stdout.drain()

    async def into() -> None:
        while True:
            try:
                chunk = await process.stdin.read(65536)
            except asyncssh.TerminalSizeChanged as change:
                _set_size(master, (change.width, change.height, change.pixwidth, change.pixheight))
                continue
            except (ConnectionError, asyncssh.Error):
                return
            if not chunk:
                return
            view = memoryview(chunk)
            while view:
                written = await asyncio.to_thread(os.write, master, view)
                view = view[written:]

    feeder = asyncio.create_task(into())
    try:
        await out()
        return await proc.wait()
    finally:
        feeder.cancel()
        loop.remove_reader(master)
        os.close(master)


def _exit_code(returncode: int) -> int:
    return 128 - returncode if returncode < 0 else returncode


async def _session(plan: Plan, reach: Reach, process: asyncssh.SSHServerProcess[bytes]) -> None:
    if process.subsystem and process.subsystem != "sftp":
        process.stderr.write(f"subsystem {process.subsystem} is not served\n".encode())
        process.exit(1)
        return
    try:
        if process.subsystem == "sftp":
            code = await _pipe_session(await reach.sftp_argv(), process)
        elif process.get_terminal_type():
            env = await reach.session_env(process)
            code = await _pty_session(_exec_argv(plan, process, True, env), process)
        else:
            env = await reach.session_env(process)
            code = await _pipe_session(_exec_argv(plan, process, False, env), process)
    except OSError as err:
        process.stderr.write(f"kled: cannot enter the workspace: {err}\n".encode())
        code = 126
    process.exit(_exit_code(code))


def _bridge(sock: socket.socket) -> None:
    """Copy stdin into ``sock`` and ``sock`` to stdout, each in a daemon thread."""

    def up() -> None:
        while chunk := os.read(0, 65536):
            sock.sendall(chunk)
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_WR)

    def down() -> None:
        while chunk := sock.recv(65536):
            view = memoryview(chunk)
            while view:
                view = view[os.write(1, view) :]
        os.close(1)

    for target in (up, down):
        threading.Thread(target=target, daemon=True).start()


async def serve(plan: Plan) -> None:
    ours, theirs = socket.socketpair()
    _bridge(theirs)
    allowed = [asyncssh.import_public_key(key) for key in plan.keys]
    reach = Reach(plan.engine, plan.container, plan.user, plan.workdir)
    options: dict[str, Any] = {
        "server_host_keys": [host_key(Path(plan.host_key))],
        "encoding": None,
        "agent_forwarding": True,
        "allow_scp": False,
        "x11_forwarding": False,
        "login_timeout": 60,
    }
    conn = await asyncssh.run_server(
        ours, server_factory=lambda: _Server(plan, allowed, reach), **options
    )
    in_use = asyncio.create_task(_mark_in_use(Path(plan.host_key).parent))
    try:
        await conn.wait_closed()
    finally:
        in_use.cancel()
        reach.close()


async def _mark_in_use(folder: Path) -> None:
    """While the connection is open the workspace is in use (``spec.idleTimeout``)."""
    while True:
        wsidle.touch(folder)
        await asyncio.sleep(wsidle.TOUCH_EVERY)


def main(argv: list[str]) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if len(argv) != 1:
        print("usage: python -m kled.agent.wsssh EXEC_JSON", file=sys.stderr)
        return 2
    try:
        plan = Plan.parse(argv[0])
        for key in plan.keys:
            asyncssh.import_public_key(key)
    except (ValueError, KeyError, TypeError, asyncssh.KeyImportError) as err:
        print(f"kled: key: not an SSH public key ({err})", file=sys.stderr)
        return 2
    with contextlib.suppress(ConnectionError, asyncssh.Error):
        asyncio.run(serve(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
