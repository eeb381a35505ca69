"""What one workspace SSH connection reaches beside ``podman exec``: SFTP, the client's
ssh-agent, TCP in the workspace (``agent/wsssh.py`` calls it; ``agent/wsenter.py`` does the
entering).

One :class:`Reach` per SSH connection. It finds the container's main process once, and
makes the agent socket once (on the first session that asked for agent forwarding), in a
fresh folder of the container's ``/tmp`` owned by remoteUser (mode 0700, the socket 0600):
only that user, and root, can talk to the client's agent through it. It is removed when the
connection ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import shutil
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncssh

from kled.agent import wsenter

log = logging.getLogger(__name__)

#: where the forwarded agent's socket is made, inside the container
AGENT_DIR = "/tmp"

StreamHandler = Callable[[asyncssh.SSHReader[bytes], asyncssh.SSHWriter[bytes]], Awaitable[None]]


async def _copy(reader: Any, writer: Any) -> None:
    """Bytes from ``reader`` to ``writer`` until EOF, then EOF on ``writer``."""
    with contextlib.suppress(ConnectionError, OSError, asyncssh.Error):
        while chunk := await reader.read(65536):
            writer.write(chunk)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()


async def splice(a_reader: Any, a_writer: Any, b_reader: Any, b_writer: Any) -> None:
    try:
        await asyncio.gather(_copy(a_reader, b_writer), _copy(b_reader, a_writer))
    finally:
        for writer in (a_writer, b_writer):
            with contextlib.suppress(Exception):
                writer.close()


class Reach:
    def __init__(self, engine: list[str], container: str, user: str | None, workdir: str | None):
        self.engine = engine
        self.container = container
        self.user = user
        self.workdir = workdir
        self._pid: int | None = None
        self._agent: tuple[str, Path, asyncio.AbstractServer] | None = None
        self._agent_lock = asyncio.Lock()

    async def pid(self) -> int:
        if self._pid is None:
            self._pid = await asyncio.to_thread(wsenter.container_pid, self.engine, self.container)
        return self._pid

    async def sftp_argv(self) -> list[str]:
        """The child that serves SFTP as remoteUser inside the container."""
        plan = {"pid": await self.pid(), "user": self.user, "workdir": self.workdir}
        return [sys.executable, "-m", "kled.agent.wssftp", json.dumps(plan)]

    async def session_env(self, process: asyncssh.SSHServerProcess[bytes]) -> dict[str, str]:
        """Variables a session gets from Kled: ``SSH_AUTH_SOCK`` if the client forwards its
        agent (and the socket could be made; else a line on the session's stderr)."""
        if process.channel.get_agent_path() is None:
            return {}
        conn = process.channel.get_connection()
        assert isinstance(conn, asyncssh.SSHServerConnection)
        try:
            return {"SSH_AUTH_SOCK": await self._agent_socket(conn)}
        except OSError as err:
            process.stderr.write(f"kled: no agent forwarding: {err}\n".encode())
            return {}

    async def _agent_socket(self, conn: asyncssh.SSHServerConnection) -> str:
        async with self._agent_lock:
            if self._agent is not None:
                return self._agent[0]
            pid = await self.pid()
            root = Path(f"/proc/{pid}/root")
            who = wsenter.account(root, self.user)
            inside = f"{AGENT_DIR}/kled-ssh-{secrets.token_hex(6)}"
            folder = root / inside.lstrip("/")
            folder.mkdir(mode=0o700)
            os.chown(folder, who.uid, who.gid)

            async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
                try:
                    up_reader, up_writer = await conn.open_agent_connection()
                except (OSError, asyncssh.Error):
                    writer.close()
                    return
                await splice(reader, writer, up_reader, up_writer)

            server = await asyncio.start_unix_server(relay, path=str(folder / "agent"))
            os.chown(folder / "agent", who.uid, who.gid)
            os.chmod(folder / "agent", 0o600)
            self._agent = (f"{inside}/agent", folder, server)
            return self._agent[0]

    def tcp_handler(self, host: str, port: int) -> StreamHandler:
        """``ssh -L``'s channel: a connection to ``host:port`` from inside the workspace."""

        async def handler(
            reader: asyncssh.SSHReader[bytes], writer: asyncssh.SSHWriter[bytes]
        ) -> None:
            try:
                pid = await self.pid()
                sock = await asyncio.to_thread(wsenter.connect_inside, pid, host, port)
                in_reader, in_writer = await asyncio.open_connection(sock=sock)
            except OSError as err:
                log.info("forward to %s:%s in %s refused: %s", host, port, self.container, err)
                writer.close()
                return
            await splice(reader, writer, in_reader, in_writer)

        return handler

    def close(self) -> None:
        if self._agent is not None:
            _, folder, server = self._agent
            server.close()
            shutil.rmtree(folder, ignore_errors=True)
            self._agent = None
