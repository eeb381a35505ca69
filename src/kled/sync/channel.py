"""One long-lived framed channel over any pair of byte streams, and the RPC on top of it.

A frame is ``>IIB`` — payload length, request id, flags — then the payload: a compact JSON
header, ``\\n``, and optional bytes. Payloads over 128 bytes are zlib-compressed (flag bit
1) when that makes them smaller. Frames are bounded (``MAX_FRAME``); a file travels as a
``put``/``get`` header, ``data`` frames of ``CHUNK`` bytes and an ``end``, so no file is ever
whole in memory. Every frame is written and drained before the next: a slow peer stops
reading, its pipe fills, and the writer waits (backpressure). Request id 0 carries events
the remote sends unasked (its own changes).

The streams can be anything asyncio reads and writes: a subprocess's stdin/stdout
(``podman exec -i CONTAINER python3 -m kled.sync.remote DIR``, or a local
``python -m kled.sync.remote DIR``), a TCP connection, a relay. The first frame is a
``hello`` carrying the session's shared token; the remote answers nothing else first.
Standard library only: the remote side imports this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

HEADER = struct.Struct(">IIB")
CHUNK = 256 * 1024
MAX_FRAME = 4 * 1024 * 1024
VERSION = 1
_COMPRESSED = 1


class ChannelError(Exception):
    """The channel broke, was closed, or the peer spoke out of turn."""


Header = dict[str, Any]
Frame = tuple[int, Header, bytes]


def encode(rid: int, header: Header, data: bytes = b"") -> bytes:
    payload = json.dumps(header, separators=(",", ":")).encode() + b"\n" + data
    flags = 0
    if len(payload) > 128:
        packed = zlib.compress(payload, 1)
        if len(packed) < len(payload):
            payload, flags = packed, _COMPRESSED
    if len(payload) > MAX_FRAME:
        raise ChannelError(f"frame of {len(payload)} bytes is over the limit")
    return HEADER.pack(len(payload), rid, flags) + payload


def decode(flags: int, payload: bytes) -> tuple[Header, bytes]:
    if flags & _COMPRESSED:
        d = zlib.decompressobj()
        payload = d.decompress(payload, MAX_FRAME + 1)
        if d.unconsumed_tail or len(payload) > MAX_FRAME:
            raise ChannelError("a compressed frame inflates over the limit")
    head, sep, data = payload.partition(b"\n")
    if not sep:
        raise ChannelError("a frame without a header")
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ChannelError("a frame header that is not an object")
    return header, data


class Writer(Protocol):
    def write(self, data: bytes) -> None: ...
    async def drain(self) -> None: ...
    def close(self) -> None: ...


class Channel:
    """Frames in, frames out; one writer at a time, each frame drained."""

    def __init__(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        self.reader = reader
        self.writer = writer
        self._lock = asyncio.Lock()
        self.sent_bytes = 0
        self.received_bytes = 0

    async def send(self, rid: int, header: Header, data: bytes = b"") -> None:
        frame = encode(rid, header, data)
        async with self._lock:
            try:
                self.writer.write(frame)
                await self.writer.drain()
            except (ConnectionError, RuntimeError, OSError) as e:
                raise ChannelError(f"send failed: {e}") from e
        self.sent_bytes += len(frame)

    async def recv(self) -> Frame:
        try:
            raw = await self.reader.readexactly(HEADER.size)
            length, rid, flags = HEADER.unpack(raw)
            if length > MAX_FRAME:
                raise ChannelError(f"frame of {length} bytes is over the limit")
            payload = await self.reader.readexactly(length)
        except asyncio.IncompleteReadError as e:
            raise ChannelError("the peer closed the channel") from e
        except (ConnectionError, OSError) as e:
            raise ChannelError(f"receive failed: {e}") from e
        self.received_bytes += HEADER.size + length
        header, data = decode(flags, payload)
        return rid, header, data

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.writer.close()


class Sink(Protocol):
    """Where the ``data`` frames of one ``get`` go."""

    def write(self, data: bytes) -> None: ...


class _Collected:
    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.parts.append(data)


@dataclass
class _Pending:
    future: asyncio.Future[Header]
    sink: Sink | None = None


class Client:
    """The session's end: requests with ids, replies matched to them, events to a callback."""

    def __init__(self, channel: Channel, on_event: Callable[[Header], None]) -> None:
        self.channel = channel
        self.on_event = on_event
        self._next = 1
        self._pending: dict[int, _Pending] = {}
        self._reader: asyncio.Task[None] | None = None
        self.closed = asyncio.Event()
        self.error: str | None = None

    def start(self) -> None:
        self._reader = asyncio.create_task(self._read(), name="sync-channel-reader")

    async def _read(self) -> None:
        try:
            while True:
                rid, header, data = await self.channel.recv()
                if rid == 0:
                    self.on_event(header)
                    continue
                pending = self._pending.get(rid)
                if pending is None:
                    continue
                if header.get("op") == "data":
                    if pending.sink is not None:
                        pending.sink.write(data)
                    continue
                del self._pending[rid]
                if not pending.future.done():
                    pending.future.set_result(header)
        except ChannelError as e:
            self.error = str(e)
        except Exception as e:  # a malformed frame: the channel is no longer trusted
            self.error = f"bad frame: {e}"
        finally:
            self._fail_all()
            self.closed.set()

    def _fail_all(self) -> None:
        for pending in self._pending.values():
            if not pending.future.done():
                pending.future.set_exception(ChannelError(self.error or "channel closed"))
        self._pending.clear()

    def _new(self, sink: Sink | None = None) -> tuple[int, asyncio.Future[Header]]:
        if self.closed.is_set():
            raise ChannelError(self.error or "channel closed")
        rid = self._next
        self._next = self._next + 1 if self._next < 2**32 - 1 else 1
        fut: asyncio.Future[Header] = asyncio.get_running_loop().create_future()
        self._pending[rid] = _Pending(fut, sink)
        return rid, fut

    async def request(self, header: Header, data: bytes = b"") -> Awaitable[Header]:
        """Send a request; returns the awaitable reply, so that requests can be pipelined."""
        rid, fut = self._new()
        await self.channel.send(rid, header, data)
        return fut

    async def call(self, header: Header, data: bytes = b"") -> Header:
        return await (await self.request(header, data))

    async def collect(self, header: Header) -> tuple[Header, list[bytes]]:
        """A request answered by ``data`` frames and a final reply: both, once all came."""
        sink = _Collected()
        rid, fut = self._new(sink)
        await self.channel.send(rid, header)
        return await fut, sink.parts

    async def put_file(self, header: Header, path: str) -> Awaitable[Header]:
        """Stream a local file as ``put`` + ``data``… + ``end`` (a small one as one ``put``
        frame with ``last``); returns the awaitable reply."""
        rid, fut = self._new()
        try:
            with open(path, "rb") as f:
                first = f.read(CHUNK)
                if len(first) < CHUNK:
                    # a small file is one frame: header, bytes, done
                    await self.channel.send(rid, {**header, "op": "put", "last": True}, first)
                    return fut
                await self.channel.send(rid, {**header, "op": "put"}, first)
                while chunk := f.read(CHUNK):
                    await self.channel.send(rid, {"op": "data"}, chunk)
        except OSError:
            self._pending.pop(rid, None)
            raise
        await self.channel.send(rid, {"op": "end"})
        return fut

    async def get_file(self, header: Header, sink: Sink) -> Awaitable[Header]:
        rid, fut = self._new(sink)
        await self.channel.send(rid, {**header, "op": "get"})
        return fut

    async def close(self) -> None:
        self.channel.close()
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._reader
        self._fail_all()
        self.closed.set()


async def hello(client: Client, token: str, exclude: list[str]) -> Header:
    """The first exchange; raises ChannelError when the remote refuses us."""
    reply = await asyncio.wait_for(
        client.call({"op": "hello", "version": VERSION, "token": token, "exclude": exclude}),
        timeout=30,
    )
    if not reply.get("ok"):
        raise ChannelError(f"the remote refused the session: {reply.get('error')}")
    return reply


@dataclass
class Link:
    """A pair of streams to a remote, and how to end it."""

    reader: asyncio.StreamReader
    writer: Writer
    close: Callable[[], Awaitable[None]]
    pid: int | None = None


async def open_process(argv: list[str], env: dict[str, str] | None = None) -> Link:
    """Run the remote as a child (``podman exec -i …`` or ``python -m kled.sync.remote``)."""
    proc = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        env={**os.environ, **(env or {})},
        limit=MAX_FRAME * 2,
    )
    assert proc.stdin is not None and proc.stdout is not None

    async def close() -> None:
        with contextlib.suppress(Exception):
            proc.stdin.close()  # type: ignore[union-attr]
        try:
            await asyncio.wait_for(proc.wait(), 2)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await proc.wait()

    return Link(proc.stdout, proc.stdin, close, proc.pid)
