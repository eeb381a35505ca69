"""One SSH connection into a workspace, served on stdin/stdout (as ``sshd -i`` would).

``kled ws proxy NAME`` (OpenSSH's ProxyCommand) opens the workspace's ``ssh`` stream
through the API; the agent's exec server runs this module for it, on the node, with the
client's public key (the API checked who asked). asyncssh speaks SSH on the stream; each
session becomes a ``podman exec`` into the workspace's container, as its remoteUser, in its
workspaceFolder, with its remoteEnv (the exec argv the agent gives, ``Session``): a shell or
a command, with a PTY when the client asks for one (window size followed), and the command's
exit code. Only that one key is accepted, never a password. The image needs nothing of
Kled's. The host key is the workspace's own, made on first use beside its session file.

Run as ``python -m kled.agent.wsssh EXEC_JSON`` with ``EXEC_JSON`` holding ``argv`` (the
``podman exec`` prefix: engine, flags, ``exec``, user, workdir, env file), ``container``,
``host_key`` (a path) and ``key`` (the client's public key, OpenSSH format).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
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

log = logging.getLogger("kled.agent.wsssh")

#: the shell a session gets when it names no command
SHELL = "/bin/sh"


@dataclass(frozen=True)
class Plan:
    argv: list[str]
    container: str
    host_key: str
    key: str

    @classmethod
    def parse(cls, text: str) -> Plan:
        data = json.loads(text)
        return cls(
            argv=[str(a) for a in data["argv"]],
            container=str(data["container"]),
            host_key=str(data["host_key"]),
            key=str(data["key"]),
        )


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


class _Server(asyncssh.SSHServer):
    def __init__(self, allowed: asyncssh.SSHKey) -> None:
        self.allowed = allowed.public_data

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return bool(key.public_data == self.allowed)


def _exec_argv(plan: Plan, process: asyncssh.SSHServerProcess[bytes], tty: bool) -> list[str]:
    argv = [*plan.argv, "-i"]
    if tty:
        argv += ["-t", "--env", f"TERM={process.get_terminal_type() or 'xterm'}"]
    argv.append(plan.container)
    command = process.command
    if command:
        return [*argv, SHELL, "-c", command]
    return [*argv, SHELL, "-l"] if tty else [*argv, SHELL]


async def _pipe_session(plan: Plan, process: asyncssh.SSHServerProcess[bytes]) -> int:
    proc = await asyncio.create_subprocess_exec(
        *_exec_argv(plan, process, tty=False),
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


async def _pty_session(plan: Plan, process: asyncssh.SSHServerProcess[bytes]) -> int:
    master, slave = os.openpty()
    _set_size(master, process.get_terminal_size())
    try:
        proc = await asyncio.create_subprocess_exec(
            *_exec_argv(plan, process, tty=True),
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


async def _session(plan: Plan, process: asyncssh.SSHServerProcess[bytes]) -> None:
    if process.subsystem:
        process.stderr.write(f"subsystem {process.subsystem} is not served\n".encode())
        process.exit(1)
        return
    try:
        if process.get_terminal_type():
            code = await _pty_session(plan, process)
        else:
            code = await _pipe_session(plan, process)
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
    allowed = asyncssh.import_public_key(plan.key)
    options: dict[str, Any] = {
        "server_host_keys": [host_key(Path(plan.host_key))],
        "process_factory": lambda process: _session(plan, process),
        "encoding": None,
        "agent_forwarding": False,
        "allow_scp": False,
        "x11_forwarding": False,
        "login_timeout": 60,
    }
    conn = await asyncssh.run_server(ours, server_factory=lambda: _Server(allowed), **options)
    await conn.wait_closed()


def main(argv: list[str]) -> int:
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    if len(argv) != 1:
        print("usage: python -m kled.agent.wsssh EXEC_JSON", file=sys.stderr)
        return 2
    try:
        plan = Plan.parse(argv[0])
        asyncssh.import_public_key(plan.key)
    except (ValueError, KeyError, TypeError, asyncssh.KeyImportError) as err:
        print(f"kled: key: not an SSH public key ({err})", file=sys.stderr)
        return 2
    with contextlib.suppress(ConnectionError, asyncssh.Error):
        asyncio.run(serve(plan))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
