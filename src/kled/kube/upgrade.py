"""HTTP ``Upgrade: SPDY/3.1`` on the cluster API's HTTPS listener (kubectl before 1.31).

Served: ``pods/NAME/portforward`` (``kled.kube.portforward``) and, for kubectl before 1.30,
``pods/NAME/exec`` (``kled.kube.execspdy``).

kubectl 1.27 to 1.30 (and 1.31+ when the WebSocket is refused) start ``port-forward`` with
``POST …/pods/NAME/portforward``, ``Connection: Upgrade``, ``Upgrade: SPDY/3.1`` and expect
``101 Switching Protocols``, after which the TCP connection itself carries SPDY. ASGI has
no way to hand a connection over for anything but a WebSocket, and uvicorn answers such a
request as plain HTTP (``Unsupported upgrade request``). So the listener's protocol is
uvicorn's own with a look at the head of each connection's first request: an SPDY upgrade
of one of those paths is taken over here (the rest of the connection is the SPDY
session); anything else goes to uvicorn unchanged. kubectl dials
a fresh connection for each upgrade, so only a first request can be one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

log = logging.getLogger(__name__)

#: the most bytes of a request head looked at (longer heads go to uvicorn as they are)
MAX_HEAD = 64 * 1024
PATH = re.compile(
    r"^/k8s/(?P<team>[^/]+)/(?P<cluster>[^/]+)/api/v1/namespaces/(?P<namespace>[^/]+)"
    r"/pods/(?P<name>[^/]+)/(?P<subresource>portforward|exec)$"
)
Write = Callable[[bytes], Awaitable[None]]
_REASONS = {400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}


@dataclass(frozen=True)
class Head:
    """The head of an HTTP request: method, path, query and lowercased headers."""

    method: str
    path: str
    headers: dict[str, str]
    query: str = ""

    def upgrade_to_spdy(self) -> bool:
        connection = {t.strip().lower() for t in self.headers.get("connection", "").split(",")}
        return "upgrade" in connection and self.headers.get("upgrade", "").lower().startswith(
            "spdy/"
        )


def parse_head(raw: bytes) -> Head | None:
    """The request line and headers before the blank line; None if they do not parse."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        return None
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            return None
        key = name.strip().lower()
        headers[key] = f"{headers[key]}, {value.strip()}" if key in headers else value.strip()
    path, _, query = parts[1].partition("?")
    return Head(parts[0], path, headers, query)


def response(code: int, body: dict[str, Any]) -> bytes:
    """An HTTP/1.1 answer with a JSON body, closing the connection."""
    data = json.dumps(body).encode()
    head = (
        f"HTTP/1.1 {code} {_REASONS.get(code, 'Error')}\r\n"
        "Content-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode() + data


def state_of(app: Any) -> Any:
    """The application state (``service``, ``hosts``) under an ASGI app's middleware."""
    while not hasattr(app, "state") and hasattr(app, "app"):
        app = app.app
    return app.state


def protocol_for(state: Any) -> type[HttpToolsProtocol]:
    """uvicorn's HTTP protocol that hands SPDY upgrades to ``kled.kube.portforward``
    (``state``: the application's, for its service and its agents' links)."""

    class SpdyUpgrading(HttpToolsProtocol):
        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._head = bytearray()
            self._sniffing = True
            self._reader: asyncio.StreamReader | None = None
            self._task: asyncio.Task[None] | None = None

        def data_received(self, data: bytes) -> None:
            if self._reader is not None:
                self._reader.feed_data(data)
                return
            if not self._sniffing:
                super().data_received(data)
                return
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0 and len(self._head) < MAX_HEAD:
                return
            self._sniffing = False
            head = parse_head(bytes(self._head[:end])) if end >= 0 else None
            if head is None or not head.upgrade_to_spdy() or PATH.match(head.path) is None:
                buffered, self._head = bytes(self._head), bytearray()
                super().data_received(buffered)
                return
            rest = bytes(self._head[end + 4 :])
            self._head = bytearray()
            self._take_over(head, rest)

        def _take_over(self, head: Head, rest: bytes) -> None:
            from kled.kube import execspdy, portforward

            reader = asyncio.StreamReader(limit=1 << 20)
            reader.set_transport(self.transport)
            if rest:
                reader.feed_data(rest)
            self._reader = reader
            transport, flow = self.transport, self.flow

            async def write(frame: bytes) -> None:
                if transport.is_closing():
                    raise ConnectionResetError("kubectl hung up")
                transport.write(frame)
                await flow.drain()

            match = PATH.match(head.path)
            exec_ = match is not None and match["subresource"] == "exec"
            serving = execspdy.serve_upgraded if exec_ else portforward.serve_upgraded

            async def serve() -> None:
                try:
                    await serving(state, head, reader, write)
                except Exception:
                    log.exception("SPDY upgrade of %s", head.path)
                finally:
                    transport.close()

            self._task = asyncio.create_task(serve())

        def connection_lost(self, exc: Exception | None) -> None:
            if self._reader is not None:
                self._reader.feed_eof()
            super().connection_lost(exc)

        def eof_received(self) -> None:
            if self._reader is not None:
                self._reader.feed_eof()

        def shutdown(self) -> None:
            if self._reader is None:
                super().shutdown()
                return
            with contextlib.suppress(RuntimeError):
                self.transport.close()

    return SpdyUpgrading
