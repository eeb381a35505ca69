"""Reverse ports of ``kled dev``: a laptop port that answers inside the replica.

One long-lived exec stream per ``reversePorts`` entry runs ``RELAY_BACK`` in the replica:
a ``python3`` listener on the replica's own ``127.0.0.1:REMOTE`` (its network namespace).
Every connection accepted there is multiplexed over the stream's stdin and stdout as
frames — a 9-byte header (connection id, kind, length) and the data — and the laptop
opens a connection to its own ``127.0.0.1:LOCAL`` for each. Kinds: ``OPEN`` (the replica
accepted one), ``DATA``, ``EOF`` (one direction ended: the other side shuts its writing
half), ``CLOSE`` (the laptop is done with it, or could not connect), ``LISTENING`` (the
listener is up). A stream that breaks (a cut link, an agent restart) takes its
connections with it; the listener is started again through a new stream a second later.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from collections.abc import Callable

from kled.cli.exec_client import ExecStream
from kled.cli.portforward import Opener
from kled.errors import KledError

log = logging.getLogger(__name__)

HEADER = struct.Struct(">IBI")
OPEN, DATA, EOF, CLOSE, LISTENING = 0, 1, 2, 4, 3
#: seconds before a broken reverse port's listener is started again
RETRY_SECONDS = 1.0

RELAY_BACK = r"""
import socket, struct, sys, threading
H = struct.Struct(">IBI")
lock = threading.Lock()
out = sys.stdout.buffer
def send(cid, kind, data=b""):
    with lock:
        out.write(H.pack(cid, kind, len(data)) + data)
        out.flush()
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", int(sys.argv[1])))
srv.listen(64)
conns = {}
def pump(cid, c):
    try:
        while True:
            data = c.recv(65536)
            if not data:
                break
            send(cid, 1, data)
    except OSError:
        pass
    send(cid, 2)
def accept():
    n = 0
    while True:
        c, _ = srv.accept()
        n += 1
        conns[n] = c
        send(n, 0)
        threading.Thread(target=pump, args=(n, c), daemon=True).start()
threading.Thread(target=accept, daemon=True).start()
send(0, 3)
inp = sys.stdin.buffer
def readn(k):
    b = b""
    while len(b) < k:
        d = inp.read(k - len(b))
        if not d:
            sys.exit(0)
        b += d
    return b
while True:
    cid, kind, n = H.unpack(readn(H.size))
    data = readn(n) if n else b""
    c = conns.get(cid)
    if c is None:
        continue
    try:
        if kind == 1:
            c.sendall(data)
        elif kind == 2:
            c.shutdown(socket.SHUT_WR)
        elif kind == 4:
            conns.pop(cid, None)
            c.close()
    except OSError:
        pass
"""


def frame(cid: int, kind: int, data: bytes = b"") -> bytes:
    return HEADER.pack(cid, kind, len(data)) + data


class ReverseForward:
    """``remote`` inside the replica reaching the laptop's ``127.0.0.1:local``."""

    def __init__(
        self,
        local: int,
        remote: int,
        open_stream: Opener,
        *,
        host: str = "127.0.0.1",
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.local, self.remote = local, remote
        self.open_stream = open_stream
        self.host = host
        self.on_state = on_state or (lambda _text: None)
        self.connections = 0
        self.listening = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            stream: ExecStream | None = None
            try:
                stream = await self.open_stream(["python3", "-c", RELAY_BACK, str(self.remote)])
                await _Relay(self, stream).serve()
                why = "its listener ended"
                with contextlib.suppress(KledError):
                    why = f"its listener exited with code {await stream.wait()}"
            except (KledError, ConnectionError) as err:
                why = str(err)
            finally:
                self.listening.clear()
                if stream is not None:
                    await stream.close()
            self.on_state(f"reverse port {self.remote} → 127.0.0.1:{self.local} down: {why}")
            await asyncio.sleep(RETRY_SECONDS)


class _Relay:
    """The connections of one stream."""

    def __init__(self, owner: ReverseForward, stream: ExecStream) -> None:
        self.owner, self.stream = owner, stream
        self.inbound: dict[int, asyncio.Queue[bytes | None]] = {}
        self.tasks: set[asyncio.Task[None]] = set()
        self.lock = asyncio.Lock()

    async def send(self, cid: int, kind: int, data: bytes = b"") -> None:
        async with self.lock:  # a frame's chunks never interleave with another's
            await self.stream.write(frame(cid, kind, data))

    async def serve(self) -> None:
        reader = self.stream.stdout
        try:
            while True:
                try:
                    cid, kind, size = HEADER.unpack(await reader.readexactly(HEADER.size))
                    data = await reader.readexactly(size) if size else b""
                except asyncio.IncompleteReadError:
                    return
                if kind == LISTENING:
                    self.owner.listening.set()
                    self.owner.on_state(
                        f"reverse port {self.owner.remote} → 127.0.0.1:{self.owner.local}"
                    )
                elif kind == OPEN:
                    self.owner.connections += 1
                    queue: asyncio.Queue[bytes | None] = asyncio.Queue()
                    self.inbound[cid] = queue
                    task = asyncio.create_task(self._connection(cid, queue))
                    self.tasks.add(task)
                    task.add_done_callback(self.tasks.discard)
                elif cid in self.inbound:
                    self.inbound[cid].put_nowait(data if kind == DATA else None)
        finally:
            for task in list(self.tasks):
                task.cancel()
            for task in list(self.tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _connection(self, cid: int, queue: asyncio.Queue[bytes | None]) -> None:
        try:
            reader, writer = await asyncio.open_connection(self.owner.host, self.owner.local)
        except OSError as err:
            log.info("reverse port %s: %s", self.owner.local, err)
            with contextlib.suppress(KledError):
                await self.send(cid, CLOSE)
            self.inbound.pop(cid, None)
            return

        async def down() -> None:  # the replica's bytes to the laptop's server
            while (chunk := await queue.get()) is not None:
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()

        async def up() -> None:  # the laptop server's answer to the replica
            while chunk := await reader.read(65536):
                await self.send(cid, DATA, chunk)
            await self.send(cid, EOF)

        try:
            await asyncio.gather(down(), up())
        except (KledError, ConnectionError) as err:
            log.info("reverse port %s: %s", self.owner.local, err)
        finally:
            self.inbound.pop(cid, None)
            with contextlib.suppress(KledError):
                await self.send(cid, CLOSE)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()
