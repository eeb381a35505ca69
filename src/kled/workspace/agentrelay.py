"""The laptop's SSH agent, relayed to a node for a git clone (``kled ws up git@host:repo``).

One byte stream joins the two ends (a workspace exec stream through the API: the CLI's
WebSocket, the Message Office, the node's exec server). On the node, ``python -m
kled.workspace.agentrelay SOCKET`` listens on a Unix socket (0600: root's, the agent's)
and carries each connection made to it over its stdin/stdout as frames; on the laptop,
:func:`client_relay` opens a connection to ``$SSH_AUTH_SOCK`` for each and copies the
frames' bytes to it and back. The agent protocol itself passes through untouched: the keys
never leave the laptop, the node only gets signatures for the connection it asked for, and
only while ``kled ws up`` waits (the node removes the socket once the clone is done).

A frame is ``>IBI`` (connection id, kind, length) and the payload; kinds: OPEN (a new
connection on the node), DATA, CLOSE (either end closed it).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import struct
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path

HEADER = struct.Struct(">IBI")
OPEN, DATA, CLOSE = 0, 1, 2
#: the largest payload a frame carries (agent messages are far smaller)
MAX_PAYLOAD = 256 * 1024
CHUNK = 65536

Send = Callable[[bytes], Awaitable[None]]


def frame(conn: int, kind: int, data: bytes = b"") -> bytes:
    return HEADER.pack(conn, kind, len(data)) + data


async def read_frame(reader: asyncio.StreamReader) -> tuple[int, int, bytes] | None:
    """The next frame; None at the end of the stream (or a malformed frame)."""
    try:
        head = await reader.readexactly(HEADER.size)
        conn, kind, size = HEADER.unpack(head)
        if size > MAX_PAYLOAD or kind not in (OPEN, DATA, CLOSE):
            return None
        return conn, kind, await reader.readexactly(size)
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def _pump(conn: int, reader: asyncio.StreamReader, send: Send) -> None:
    """One connection's bytes into frames, and its CLOSE at its end."""
    with contextlib.suppress(ConnectionError):
        while data := await reader.read(CHUNK):
            await send(frame(conn, DATA, data))
    with contextlib.suppress(ConnectionError):
        await send(frame(conn, CLOSE))


async def _dispatch(
    frames: asyncio.StreamReader,
    send: Send,
    conns: dict[int, asyncio.StreamWriter],
    on_open: Callable[[int], Awaitable[None]] | None,
) -> None:
    while (got := await read_frame(frames)) is not None:
        conn, kind, data = got
        if kind == OPEN and on_open is not None:
            await on_open(conn)
        elif kind == DATA and conn in conns:
            conns[conn].write(data)
            with contextlib.suppress(ConnectionError):
                await conns[conn].drain()
        elif kind == CLOSE and conn in conns:
            conns.pop(conn).close()
    for writer in conns.values():
        writer.close()


async def client_relay(frames: asyncio.StreamReader, send: Send, agent_socket: str) -> None:
    """The laptop's end: each connection the node opens becomes one to ``agent_socket``.
    Returns when the stream ends."""
    conns: dict[int, asyncio.StreamWriter] = {}
    tasks: set[asyncio.Task[None]] = set()

    async def on_open(conn: int) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(agent_socket)
        except OSError:
            await send(frame(conn, CLOSE))
            return
        conns[conn] = writer
        task = asyncio.create_task(_pump(conn, reader, send))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    try:
        await _dispatch(frames, send, conns, on_open)
    finally:
        for task in list(tasks):
            task.cancel()


async def node_relay(path: Path, frames: asyncio.StreamReader, send: Send) -> None:
    """The node's end: a Unix socket at ``path`` (0600) whose connections go over the
    stream; returns, the socket removed, when the stream ends."""
    conns: dict[int, asyncio.StreamWriter] = {}
    counter = iter(range(1, 2**32))

    async def accepted(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = next(counter)
        conns[conn] = writer
        await send(frame(conn, OPEN))
        await _pump(conn, reader, send)

    path.unlink(missing_ok=True)
    old = os.umask(0o177)
    try:
        server = await asyncio.start_unix_server(accepted, path)
    finally:
        os.umask(old)
    try:
        await _dispatch(frames, send, conns, None)
    finally:
        server.close()
        path.unlink(missing_ok=True)


async def _main(path: Path) -> None:
    loop = asyncio.get_running_loop()
    frames = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(frames), sys.stdin)
    lock = asyncio.Lock()

    async def send(data: bytes) -> None:
        async with lock:
            view = memoryview(data)
            while view:
                written = await asyncio.to_thread(os.write, 1, view)
                view = view[written:]

    await node_relay(path, frames, send)


if __name__ == "__main__":
    asyncio.run(_main(Path(sys.argv[1])))
