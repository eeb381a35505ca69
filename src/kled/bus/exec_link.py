"""Exec streams over the Message Office: a byte pipe between the control plane and an agent.

An exec (``kled exec``, the sync channel of ``kled dev``) is interactive and must not be
stored, so it travels on plain NATS subjects, not JetStream: the control plane sends on
``exec.<node>.<session>.in``, the agent answers on ``exec.<node>.<session>.out`` (the
node's permissions allow just that). A frame is a compact JSON header, ``\\n``, then raw
bytes; the header carries its kind ``k`` and a sequence number ``s``. Plain NATS delivers
in order but at most once, so a gap in ``s`` (frames lost while NATS reconnected) ends the
stream with an error rather than corrupting it.

Frames are bounded (``MAX_CHUNK`` bytes of data) and each direction has a window: a sender
has at most ``WINDOW`` data bytes that the far end has not acknowledged (``ack`` frames
carry the running total it consumed), so a slow reader slows the writer instead of
filling NATS' buffers. Each end pings every ``PING`` seconds; one that hears nothing for
``LOST`` seconds takes the other for gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg
from nats.errors import Error as NatsError

from kled.bus.office import MessageOffice
from kled.errors import KledError, Unavailable

log = logging.getLogger(__name__)

#: most data bytes in one frame
MAX_CHUNK = 64 * 1024
#: most unacknowledged data bytes in flight, per direction
WINDOW = 1 << 20
#: seconds between keepalives, and of silence after which the far end is taken for gone
PING = 5.0
LOST = 20.0
#: most frames waiting in one end's inbox (a bound on memory, far above one window)
_INBOX = 4096


class LinkLost(Unavailable):
    """The far end went away, or frames were lost on the way."""


@dataclass
class Frame:
    kind: str
    meta: dict[str, Any] = field(default_factory=dict)
    data: bytes = b""


def encode(kind: str, seq: int, meta: dict[str, Any], data: bytes = b"") -> bytes:
    head = {"k": kind, "s": seq, **meta}
    return json.dumps(head, separators=(",", ":")).encode() + b"\n" + data


def decode(payload: bytes) -> tuple[Frame, int]:
    head, sep, data = payload.partition(b"\n")
    if not sep:
        raise LinkLost("an exec frame without a header")
    try:
        meta = json.loads(head)
    except ValueError as err:
        raise LinkLost(f"an exec frame with a broken header: {err}") from err
    if not isinstance(meta, dict) or not isinstance(meta.get("k"), str):
        raise LinkLost("an exec frame header that is not an object with a kind")
    kind = meta.pop("k")
    seq = meta.pop("s", 0)
    return Frame(kind, meta, data), int(seq) if isinstance(seq, int) else -1


class ExecLink:
    """One end of an exec stream: frames out on ``send_subject``, in from ``listen``.

    ``deliver`` lets an owner that listens on a wildcard (the agent) hand in the frames of
    this stream itself; otherwise ``open`` subscribes to ``listen``.
    """

    def __init__(self, office: MessageOffice, send_subject: str, listen: str | None) -> None:
        self.office = office
        self.send_subject = send_subject
        self.listen = listen
        self._inbox: asyncio.Queue[bytes] = asyncio.Queue(_INBOX)
        self._sub: Any = None
        self._seq_out = 0
        self._seq_in = 0
        self._sent = 0
        self._acked = 0
        self._consumed = 0
        self._consumed_acked = 0
        self._window_moved = asyncio.Event()
        self._pinger: asyncio.Task[None] | None = None
        self.closed = False

    async def open(self) -> ExecLink:
        if self.listen is not None:

            async def on_msg(msg: Msg) -> None:
                self.deliver(msg.data)

            try:
                self._sub = await self.office.nc.subscribe(self.listen, cb=on_msg)
            except (TimeoutError, NatsError) as err:
                raise Unavailable(f"cannot listen on {self.listen}: {err}") from err
        self._pinger = asyncio.create_task(self._pings())
        return self

    def deliver(self, payload: bytes) -> None:
        try:
            self._inbox.put_nowait(payload)
        except asyncio.QueueFull:
            log.warning("exec stream %s: inbox full, frame dropped", self.send_subject)
            self._seq_in = -1  # the gap ends the stream at the next frame

    async def close(self) -> None:
        self.closed = True
        if self._pinger is not None:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._pinger
        if self._sub is not None:
            with contextlib.suppress(NatsError, TimeoutError, Unavailable):
                await self._sub.unsubscribe()
            self._sub = None

    async def _pings(self) -> None:
        while True:
            await asyncio.sleep(PING)
            with contextlib.suppress(KledError):
                await self.send("ping")

    # -- sending ----------------------------------------------------------------------------
    async def send(self, kind: str, data: bytes = b"", **meta: Any) -> None:
        self._seq_out += 1
        payload = encode(kind, self._seq_out, meta, data)
        try:
            await self.office.nc.publish(self.send_subject, payload)
        except (TimeoutError, NatsError) as err:
            raise LinkLost(f"the exec stream cannot send: {err}") from err

    async def send_data(self, kind: str, data: bytes) -> None:
        """Send ``data`` in frames of at most ``MAX_CHUNK``, within the window."""
        for start in range(0, len(data), MAX_CHUNK):
            chunk = data[start : start + MAX_CHUNK]
            while self._sent - self._acked >= WINDOW:
                self._window_moved.clear()
                await self._window_moved.wait()
            self._sent += len(chunk)
            await self.send(kind, chunk)

    async def consumed(self, count: int) -> None:
        """Say that ``count`` more data bytes reached their reader (acks are batched)."""
        self._consumed += count
        if self._consumed - self._consumed_acked >= WINDOW // 4:
            self._consumed_acked = self._consumed
            await self.send("ack", n=self._consumed)

    # -- receiving --------------------------------------------------------------------------
    async def recv(self) -> Frame:
        """The next frame that is not a keepalive or an ack; ``LinkLost`` after ``LOST``
        seconds of silence or on a lost frame."""
        while True:
            try:
                payload = await asyncio.wait_for(self._inbox.get(), LOST)
            except TimeoutError as err:
                raise LinkLost(f"nothing heard on the exec stream for {LOST:g}s") from err
            frame, seq = decode(payload)
            if self._seq_in < 0 or seq != self._seq_in + 1:
                raise LinkLost("exec stream frames were lost (the Message Office reconnected?)")
            self._seq_in = seq
            if frame.kind == "ping":
                continue
            if frame.kind == "ack":
                n = frame.meta.get("n")
                if isinstance(n, int) and n > self._acked:
                    self._acked = n
                    self._window_moved.set()
                continue
            return frame
