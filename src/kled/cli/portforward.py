"""Port forwards of ``kled dev``: a laptop port that reaches a port inside the replica.

Each connection accepted on the laptop's port opens its own exec stream into the replica,
running a ``python3`` one-liner (``RELAY``) that connects to the port on the replica's
own ``127.0.0.1`` (its network namespace) and copies bytes both ways. A forward thus
needs nothing but the exec channel, goes wherever it goes (relayed through the API), and
"reconnects" by construction: a broken connection costs only itself, the next one opens
a new stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from kled.cli.exec_client import ExecStream
from kled.errors import InvalidInput, KledError

log = logging.getLogger(__name__)

RELAY = r"""
import os, socket, sys, threading
conn = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            break
        conn.sendall(data)
    try:
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
threading.Thread(target=upstream, daemon=True).start()
out = sys.stdout.buffer
while True:
    data = conn.recv(65536)
    if not data:
        break
    out.write(data)
    out.flush()
"""

Opener = Callable[[list[str]], Awaitable[ExecStream]]


def parse(spec: str) -> tuple[int, int]:
    """``LOCAL:REMOTE`` as two ports."""
    local, sep, remote = spec.partition(":")
    if not sep or not local.isdigit() or not remote.isdigit():
        raise InvalidInput(f"{spec!r} is not LOCAL:REMOTE", field="ports")
    return int(local), int(remote)


class Forward:
    """One laptop port, forwarded to ``remote`` in the replica while it runs."""

    def __init__(self, local: int, remote: int, open_stream: Opener, host: str = "127.0.0.1"):
        self.local = local
        self.remote = remote
        self.open_stream = open_stream
        self.host = host
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(self._serve, self.host, self.local)
        except OSError as err:
            raise InvalidInput(
                f"cannot listen on {self.host}:{self.local}: {err.strerror or err}",
                field="ports",
            ) from err

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        self.connections += 1
        stream: ExecStream | None = None
        try:
            stream = await self.open_stream(["python3", "-c", RELAY, str(self.remote)])
            up = asyncio.create_task(_up(reader, stream))
            try:
                await _down(stream, writer)  # the replica's side closing ends the connection
            finally:
                up.cancel()
                with contextlib.suppress(asyncio.CancelledError, KledError, ConnectionError):
                    await up
        except (KledError, ConnectionError) as err:
            log.info("forward %s → %s: %s", self.local, self.remote, err)
        finally:
            if stream is not None:
                await stream.close()
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
            if task is not None:
                self._tasks.discard(task)


async def _up(reader: asyncio.StreamReader, stream: ExecStream) -> None:
    while chunk := await reader.read(65536):
        await stream.write(chunk)
    await stream.close_stdin()


async def _down(stream: ExecStream, writer: asyncio.StreamWriter) -> None:
    while chunk := await stream.stdout.read(65536):
        writer.write(chunk)
        await writer.drain()
    if writer.can_write_eof():
        writer.write_eof()
