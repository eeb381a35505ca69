"""``kubectl port-forward``: the pods/portforward subresource of Kled Clusters.

kubectl speaks SPDY/3.1 to it (``kled.kube.spdy``): kubectl 1.31 and later tunnel the SPDY
session through a WebSocket (subprotocol ``SPDY/3.1+portforward.k8s.io``, every WebSocket
message a piece of the byte stream), older ones upgrade the HTTP connection itself
(``Upgrade: SPDY/3.1``, served by the HTTPS listener, ``kled.kube.upgrade``). Either way
each local connection kubectl accepts becomes two streams with the headers ``streamType``
(``error`` or ``data``), ``port`` and ``requestID``; the server pairs them by request,
connects to ``port`` inside the pod and copies the data stream both ways; a failure to
connect is a message on the error stream (kubectl prints it), and the session stays up
for the next connection. Closing either stream's data ends the connection.

The connection inside the pod rides an exec stream to the replica's agent (the Message
Office, ``ExecLink``), so it goes wherever the replica runs, on any host the agent's link
reaches. The agent connects to ``localhost:port`` in the pod's network namespace itself
(``kled.agent.portdial``: IPv4, then IPv6, as the kubelet does); where it cannot (a
container without a pod namespace) it runs the stream's ``python3`` relay in the replica
instead, the way ``kled dev``'s port forwards reach theirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, WebSocket
from starlette.websockets import WebSocketDisconnect

from kled.api.service import Service
from kled.bus.exec_link import MAX_CHUNK, ExecLink
from kled.errors import KledError
from kled.kube import spdy
from kled.kube.execs import Place, locate, open_link
from kled.kube.status import KubeError
from kled.kube.upgrade import PATH, Head, response

log = logging.getLogger(__name__)
router = APIRouter()
PROTOCOL = "portforward.k8s.io"
TUNNELED = "SPDY/3.1+" + PROTOCOL
#: seconds the agent has to start the relay
START_TIMEOUT = 15.0
#: most DATA frames from kubectl queued for one connection before the session waits
_QUEUE = 64

RELAY = r"""
import os, socket, sys, threading
port = int(sys.argv[1])
conn, failures = None, []
for family, host, net in ((socket.AF_INET, "127.0.0.1", "tcp4"), (socket.AF_INET6, "::1", "tcp6")):
    try:
        conn = socket.create_connection((host, port))
        break
    except OSError as err:
        where = host if family == socket.AF_INET else "[::1]"
        reason = (err.strerror or str(err)).lower()
        failures.append("dial %s %s:%d: connect: %s" % (net, where, port, reason))
if conn is None:
    sys.stderr.write("IPv4: %s IPv6: %s" % tuple(failures))
    sys.exit(1)
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
while True:
    data = conn.recv(65536)
    if not data:
        break
    view = memoryview(data)
    while view:
        view = view[os.write(1, view):]
"""

Write = Callable[[bytes], Awaitable[None]]
Read = Callable[[], Awaitable[bytes]]
Dial = Callable[[], Awaitable[ExecLink]]


@dataclass
class _Pair:
    """The two streams of one forwarded connection."""

    port: int
    error: int = 0
    data: int = 0
    upstream: asyncio.Queue[bytes | None] = field(default_factory=lambda: asyncio.Queue(_QUEUE))
    task: asyncio.Task[None] | None = None


class Session:
    """One port-forward session: SPDY frames read from kubectl, connections to the pod."""

    def __init__(self, write: Write, dial: Dial, place: Place, pod: str) -> None:
        self._write = write
        self._dial = dial
        self.place = place
        self.pod = pod
        self.uid = str(place.pod.get("metadata", {}).get("uid") or "")
        self.codec = spdy.Codec()
        self._lock = asyncio.Lock()
        self._pairs: dict[str, _Pair] = {}
        self._by_stream: dict[int, tuple[str, str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.connections = 0

    async def send(self, frame: bytes) -> None:
        """Write one whole frame (frames of concurrent connections do not interleave)."""
        async with self._lock:
            await self._write(frame)

    async def _reply(self, stream: int) -> None:
        """SYN_REPLY, built under the lock: header blocks share one zlib context, so they
        must be written in the order they are compressed."""
        async with self._lock:
            await self._write(self.codec.syn_reply(stream))

    async def run(self, read: Read) -> None:
        """Serve until kubectl hangs up or says GOAWAY."""
        try:
            while chunk := await read():
                for frame in self.codec.feed(chunk):
                    if not await self._on(frame):
                        return
        except spdy.ProtocolError as err:
            log.info("port-forward %s: %s", self.pod, err)
            with contextlib.suppress(Exception):
                await self.send(spdy.goaway(0, 1))
        finally:
            for task in list(self._tasks):
                task.cancel()
            for task in list(self._tasks):
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    async def _on(self, frame: spdy.Frame) -> bool:
        if frame.kind == spdy.SYN_STREAM:
            await self._open(frame)
        elif frame.kind == 0:
            await self._data(frame)
        elif frame.kind == spdy.RST_STREAM:
            self._reset(frame.stream)
        elif frame.kind == spdy.PING:
            await self.send(spdy.ping(frame.stream))
        elif frame.kind == spdy.GOAWAY:
            return False
        return True  # SETTINGS, HEADERS, WINDOW_UPDATE: nothing to do

    async def _open(self, frame: spdy.Frame) -> None:
        stream = frame.stream
        kind = _header(frame, "streamtype")
        raw_port = _header(frame, "port")
        request = _header(frame, "requestid")
        if kind not in ("error", "data") or not raw_port.isdigit() or not request:
            await self.send(spdy.rst_stream(stream, spdy.REFUSED_STREAM))
            return
        await self._reply(stream)
        pair = self._pairs.setdefault(request, _Pair(int(raw_port)))
        setattr(pair, kind, stream)
        self._by_stream[stream] = (request, kind)
        if pair.error and pair.data and pair.task is None:
            self.connections += 1
            pair.task = asyncio.create_task(self._forward(request, pair))
            self._tasks.add(pair.task)
            pair.task.add_done_callback(self._tasks.discard)

    async def _data(self, frame: spdy.Frame) -> None:
        request, kind = self._by_stream.get(frame.stream, ("", ""))
        pair = self._pairs.get(request)
        if pair is None or kind != "data":
            return  # the error stream carries nothing from kubectl; late frames are dropped
        if frame.data:
            await pair.upstream.put(frame.data)
        if frame.fin:
            await pair.upstream.put(None)

    def _reset(self, stream: int) -> None:
        request, _ = self._by_stream.get(stream, ("", ""))
        pair = self._pairs.get(request)
        if pair is not None and pair.task is not None:
            pair.task.cancel()

    async def _forward(self, request: str, pair: _Pair) -> None:
        """One connection: the relay in the pod, the data stream both ways; the error
        stream says why it failed, if it did, and is closed at the end."""
        link: ExecLink | None = None
        failure = ""
        try:
            link = await self._dial()
            failure = await self._relay(link, pair)
        except (KledError, TimeoutError) as err:
            failure = str(err) or "the agent did not answer"
        finally:
            if failure:
                message = (
                    f"error forwarding port {pair.port} to pod {self.pod}, uid {self.uid}: "
                    f"{failure}"
                )
                log.info("port-forward: %s", message)
                with contextlib.suppress(Exception):
                    await self.send(spdy.data(pair.error, message.encode()))
            with contextlib.suppress(Exception):
                await self.send(spdy.data(pair.data, b"", fin=True))
            with contextlib.suppress(Exception):
                await self.send(spdy.data(pair.error, b"", fin=True))
            if link is not None:
                with contextlib.suppress(KledError):
                    await link.send("close")
                await link.close()
            self._pairs.pop(request, None)
            for stream in (pair.error, pair.data):
                self._by_stream.pop(stream, None)

    async def _relay(self, link: ExecLink, pair: _Pair) -> str:
        """Run the relay and copy until the pod's side ends; its failure, or ''."""
        command = ["python3", "-c", RELAY, str(pair.port)]
        # an agent that connects itself (kled.agent.portdial) takes ``connect``; one that
        # cannot there (a container without a pod namespace) runs the relay
        await link.send("open", replica=self.place.replica, command=command, connect=pair.port)
        first = await asyncio.wait_for(link.recv(), START_TIMEOUT)
        if first.kind != "started":
            return str(first.meta.get("message") or first.kind)
        up = asyncio.create_task(_upstream(pair, link))
        errors = bytearray()
        try:
            while True:
                frame = await link.recv()
                if frame.kind == "out":
                    chunk = frame.data
                    await self.send(spdy.data(pair.data, chunk))
                    await link.consumed(len(chunk))
                elif frame.kind == "err":
                    errors += frame.data[:4096]
                    await link.consumed(len(frame.data))
                elif frame.kind == "exit":
                    code = frame.meta.get("code")
                    if code == 0:
                        return ""
                    text = errors.decode(errors="replace").strip()
                    return f"failed to connect to localhost:{pair.port} inside the pod: " + (
                        text or f"exit status {code}"
                    )
                elif frame.kind == "error":
                    return str(frame.meta.get("message"))
        finally:
            up.cancel()
            with contextlib.suppress(asyncio.CancelledError, KledError):
                await up


async def _upstream(pair: _Pair, link: ExecLink) -> None:
    """kubectl's bytes to the relay's stdin; its FIN closes stdin (the relay half-closes)."""
    while (chunk := await pair.upstream.get()) is not None:
        for start in range(0, len(chunk), MAX_CHUNK):
            await link.send_data("in", chunk[start : start + MAX_CHUNK])
    await link.send("eof")


def _header(frame: spdy.Frame, name: str) -> str:
    values = frame.headers.get(name) or [""]
    return values[0]


def dialer(state: Any, place: Place) -> Dial:
    async def dial() -> ExecLink:
        return await open_link(state, place.node)

    return dial


_SWITCHED = (
    "HTTP/1.1 101 Switching Protocols\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
    f"X-Stream-Protocol-Version: {PROTOCOL}\r\n\r\n"
).encode()


async def serve_upgraded(
    state: Any, head: Head, reader: asyncio.StreamReader, write: Write
) -> None:
    """A ``POST …/portforward`` with ``Upgrade: SPDY/3.1`` (``kled.kube.upgrade``): the
    same checks as the WebSocket's, ``101``, then the session on the connection itself."""
    match = PATH.match(head.path)
    assert match is not None
    name = match["name"]
    offered = [p.strip() for p in head.headers.get("x-stream-protocol-version", "").split(",")]
    try:
        place = await locate(
            state.service, head.headers.get("authorization"), match["team"],
            match["cluster"], match["namespace"], name, "portforward",
        )  # fmt: skip
        if PROTOCOL not in offered:
            raise KubeError(400, "BadRequest", f"port-forward needs the protocol {PROTOCOL}")
    except KubeError as err:
        await write(response(err.code, err.body()))
        return
    except KledError as err:
        await write(response(err.status, KubeError(err.status, err.reason, err.message).body()))
        return
    await write(_SWITCHED)
    session = Session(write, dialer(state, place), place, name)
    log.info("kube port-forward (SPDY upgrade) pod=%s replica=%s", name, place.replica)

    async def read() -> bytes:
        try:
            return await reader.read(65536)
        except ConnectionError:
            return b""

    with contextlib.suppress(ConnectionError):
        await session.run(read)


async def _refuse(ws: WebSocket, err: KubeError) -> None:
    from fastapi.responses import JSONResponse

    with contextlib.suppress(RuntimeError):
        await ws.send_denial_response(JSONResponse(err.body(), err.code))


@router.websocket("/k8s/{team}/{cluster}/api/v1/namespaces/{namespace}/pods/{name}/portforward")
async def pod_portforward(
    ws: WebSocket, team: str, cluster: str, namespace: str, name: str
) -> None:
    svc: Service = ws.app.state.service
    offered = [p.strip() for p in (ws.headers.get("sec-websocket-protocol") or "").split(",")]
    try:
        auth = ws.headers.get("authorization")
        place = await locate(svc, auth, team, cluster, namespace, name, "portforward")
        if TUNNELED not in offered:
            raise KubeError(
                400, "BadRequest", f"port-forward over WebSocket needs the subprotocol {TUNNELED}"
            )
    except KubeError as err:
        await _refuse(ws, err)
        return
    except KledError as err:
        await _refuse(ws, KubeError(err.status, err.reason, err.message))
        return
    await ws.accept(subprotocol=TUNNELED)
    session = Session(ws.send_bytes, dialer(ws.app.state, place), place, name)
    log.info("kube port-forward pod=%s/%s replica=%s", namespace, name, place.replica)

    async def read() -> bytes:
        while True:
            try:
                message = await ws.receive()
            except (WebSocketDisconnect, RuntimeError):
                return b""
            if message["type"] == "websocket.disconnect":
                return b""
            data = message.get("bytes")
            if data:
                return bytes(data)

    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await session.run(read)
    with contextlib.suppress(Exception):
        await ws.close(1000)
