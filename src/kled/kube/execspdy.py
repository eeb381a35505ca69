"""``kubectl exec`` of kubectl 1.27 to 1.29: pods/exec over SPDY/3.1 (``v4.channel.k8s.io``).

Before 1.30 kubectl runs a command with ``POST …/pods/NAME/exec?command=…&stdin=…`` and
``Upgrade: SPDY/3.1`` (taken over by the HTTPS listener, ``kled.kube.upgrade``), then opens
one SPDY stream per channel, each named by its ``streamType`` header: ``error`` always,
``stdin``, ``stdout`` and ``stderr`` as the query asks (no ``stderr`` on a terminal), and
``resize`` with ``tty``. Once all are open the command runs in the replica through its
agent (the exec stream of ``kubectl exec`` over WebSocket and ``kled exec``): its stdout
and stderr are DATA on their streams, stdin's DATA goes to it and stdin's FIN closes it,
a resize (``{"Width": …, "Height": …}``) sizes its terminal, and at its end the ``error``
stream carries the ``Status`` (``NonZeroExitCode`` with the code), then every stream is
closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from typing import Any
from urllib.parse import parse_qs

from kled.api.exec_stream import START_TIMEOUT
from kled.bus.exec_link import MAX_CHUNK, ExecLink, LinkLost
from kled.errors import KledError
from kled.kube import containers, spdy
from kled.kube.execs import end_status, locate, open_link
from kled.kube.status import KubeError
from kled.kube.upgrade import PATH, Head, Write, response

log = logging.getLogger(__name__)
PROTOCOL = "v4.channel.k8s.io"
_TRUE = ("1", "true")


def _switched() -> bytes:
    return (
        "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        f"X-Stream-Protocol-Version: {PROTOCOL}\r\n\r\n"
    ).encode()


def expected_streams(query: dict[str, list[str]]) -> set[str]:
    """The streams kubectl opens for this query."""
    tty = (query.get("tty") or [""])[0] in _TRUE
    wanted = {"error"}
    for name in ("stdin", "stdout", "stderr"):
        if (query.get(name) or [""])[0] in _TRUE and not (name == "stderr" and tty):
            wanted.add(name)
    if tty:
        wanted.add("resize")
    return wanted


class ExecSession:
    """One exec over SPDY: the streams kubectl opens, the command in the replica."""

    def __init__(
        self, write: Write, link: ExecLink, replica: str, command: list[str], query: dict[str, Any]
    ) -> None:
        self._write = write
        self.link = link
        self.replica = replica
        self.command = command
        self.tty = (query.get("tty") or [""])[0] in _TRUE
        #: a sidecar of the pod to run it in (``-c``), checked by the caller
        self.container: str | None = None
        self.expected = expected_streams(query)
        self.codec = spdy.Codec()
        self._lock = asyncio.Lock()
        self.streams: dict[str, int] = {}
        self._kinds: dict[int, str] = {}
        self._started = asyncio.Event()

    async def send(self, frame: bytes) -> None:
        async with self._lock:
            await self._write(frame)

    async def _reply(self, stream: int) -> None:
        async with self._lock:  # header blocks share one zlib context: in order
            await self._write(self.codec.syn_reply(stream))

    async def run(self, read: Any) -> None:
        """Read kubectl's frames; run the command once its streams are all open."""
        command: asyncio.Task[None] | None = None
        try:
            while chunk := await read():
                for frame in self.codec.feed(chunk):
                    if frame.kind == spdy.SYN_STREAM:
                        await self._open(frame)
                        if command is None and self.expected <= set(self.streams):
                            command = asyncio.create_task(self._command())
                    elif frame.kind == 0:
                        await self._data(frame)
                    elif frame.kind == spdy.PING:
                        await self.send(spdy.ping(frame.stream))
                    elif frame.kind == spdy.GOAWAY:
                        return
        except spdy.ProtocolError as err:
            log.info("exec over SPDY: %s", err)
        finally:
            if command is not None:
                command.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await command

    async def _open(self, frame: spdy.Frame) -> None:
        kind = (frame.headers.get("streamtype") or [""])[0]
        if kind not in self.expected or kind in self.streams:
            await self.send(spdy.rst_stream(frame.stream, spdy.REFUSED_STREAM))
            return
        await self._reply(frame.stream)
        self.streams[kind] = frame.stream
        self._kinds[frame.stream] = kind

    async def _data(self, frame: spdy.Frame) -> None:
        kind = self._kinds.get(frame.stream)
        await self._started.wait()  # the command reads what kubectl sent before it ran
        with contextlib.suppress(KledError):
            if kind == "stdin":
                for start in range(0, len(frame.data), MAX_CHUNK):
                    await self.link.send_data("in", frame.data[start : start + MAX_CHUNK])
                if frame.fin:
                    await self.link.send("eof")
            elif kind == "resize" and frame.data:
                await self._resize(frame.data)

    async def _resize(self, data: bytes) -> None:
        # one JSON object a message; kubectl writes them whole
        for line in data.decode(errors="replace").replace("}{", "}\n{").splitlines():
            with contextlib.suppress(ValueError, AttributeError):
                size = json.loads(line)
                cols, rows = size.get("Width"), size.get("Height")
                if isinstance(cols, int) and isinstance(rows, int) and 0 < cols < 10000:
                    if 0 < rows < 10000:
                        await self.link.send("resize", cols=cols, rows=rows)

    async def _command(self) -> None:
        result: dict[str, Any] = {}
        try:
            result = await self._relay()
        finally:
            self._started.set()  # stdin that waited for the command goes nowhere now
            status = json.dumps(end_status(result)).encode()
            with contextlib.suppress(Exception):
                await self.send(spdy.data(self.streams["error"], status))
            for kind in ("stdout", "stderr", "stdin", "resize", "error"):
                if kind in self.streams:
                    with contextlib.suppress(Exception):
                        await self.send(spdy.data(self.streams[kind], b"", fin=True))

    async def _relay(self) -> dict[str, Any]:
        meta: dict[str, Any] = {"replica": self.replica, "command": self.command}
        if self.tty:
            meta["tty"] = {"cols": 80, "rows": 24}
        if self.container is not None:
            meta["container"] = self.container
        await self.link.send("open", **meta)
        try:
            first = await asyncio.wait_for(self.link.recv(), START_TIMEOUT)
        except (TimeoutError, LinkLost) as err:
            return {"error": f"the agent running {self.replica} did not answer: {err or 'timeout'}"}
        if first.kind != "started":
            return {"error": str(first.meta.get("message") or first.kind)}
        self._started.set()
        while True:
            try:
                frame = await self.link.recv()
            except LinkLost as err:
                return {"error": str(err)}
            if frame.kind in ("out", "err"):
                kind = "stdout" if frame.kind == "out" or self.tty else "stderr"
                if kind in self.streams:
                    await self.send(spdy.data(self.streams[kind], frame.data))
                await self.link.consumed(len(frame.data))
            elif frame.kind == "exit":
                return {"exitCode": frame.meta.get("code")}
            elif frame.kind == "error":
                return {"error": str(frame.meta.get("message"))}


async def serve_upgraded(
    state: Any, head: Head, reader: asyncio.StreamReader, write: Write
) -> None:
    """A ``POST …/exec`` with ``Upgrade: SPDY/3.1``: the same checks as the WebSocket's,
    then the streams on the connection itself."""
    match = PATH.match(head.path)
    assert match is not None
    query = parse_qs(head.query)
    offered = [p.strip() for p in head.headers.get("x-stream-protocol-version", "").split(",")]
    link: ExecLink | None = None
    try:
        place = await locate(
            state.service, head.headers.get("authorization"), match["team"],
            match["cluster"], match["namespace"], match["name"],
        )  # fmt: skip
        command = query.get("command") or []
        if not command:
            raise KubeError(400, "BadRequest", "you must specify at least one command")
        if PROTOCOL not in offered:
            raise KubeError(400, "BadRequest", f"exec over SPDY needs the protocol {PROTOCOL}")
        container = containers.sidecar_of(place.pod, (query.get("container") or [""])[0])
        link = await open_link(state, place.node)
    except KubeError as err:
        await write(response(err.code, err.body()))
        return
    except KledError as err:
        await write(response(err.status, KubeError(err.status, err.reason, err.message).body()))
        return
    await write(_switched())
    log.info("kube exec (SPDY) replica=%s node=%s argv0=%s", place.replica, place.node, command[0])
    session = ExecSession(write, link, place.replica, command, query)
    session.container = container

    async def read() -> bytes:
        try:
            return await reader.read(65536)
        except ConnectionError:
            return b""

    try:
        with contextlib.suppress(ConnectionError):
            await session.run(read)
    finally:
        with contextlib.suppress(KledError):
            await link.send("close")
        await link.close()
