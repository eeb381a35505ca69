"""The CLI's end of an exec stream: a WebSocket to the control plane, as byte streams.

``open_exec`` connects (over the local Unix socket when the CLI uses it, else TCP) and
returns an ``ExecStream``: ``write``/``close_stdin``/``signal`` toward the command,
``stdout``/``stderr`` as ``asyncio.StreamReader``s, and ``wait()`` for its exit code. A
refusal before the upgrade (401/403/404/409/422/503) is raised as Kled's error with the
server's message, as for any other request. ``link()`` turns a stream into the
``kled.sync.channel.Link`` a ``SyncSession`` runs over, which is how ``kled dev`` syncs
into a replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urlsplit

import websockets
from websockets.asyncio.client import ClientConnection, connect, unix_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus, WebSocketException

from kled.cli.client import _BY_STATUS
from kled.errors import KledError, Unavailable
from kled.sync.channel import MAX_FRAME, Link

STDIN, STDOUT, STDERR, END, SIGNAL, CLOSE = 0, 1, 2, 3, 4, 255
#: most bytes of stdin in one message (the server cuts further for the bus)
_CHUNK = 64 * 1024
#: a WebSocket ping every PING_SECONDS; no pong within PONG_SECONDS: the link is taken for
#: cut, the stream ends with an error and ``kled dev`` reconnects (≤ 15 s after a cut)
PING_SECONDS = 5.0
PONG_SECONDS = 10.0


@dataclass(frozen=True)
class Endpoint:
    """Where and as whom to open streams: the server URL, token and local socket."""

    server: str
    token: str
    socket: str | None = None


def exec_path(team: str, env: str, app: str) -> str:
    return f"/api/v1/teams/{team}/environments/{env}/apps/{app}/exec"


class ExecStream:
    """A running command inside a replica."""

    def __init__(self, ws: ClientConnection) -> None:
        self.ws = ws
        self.stdout = asyncio.StreamReader(limit=MAX_FRAME * 2)
        self.stderr = asyncio.StreamReader(limit=MAX_FRAME * 2)
        self._result: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._reader = asyncio.create_task(self._read())
        self._send_lock = asyncio.Lock()

    async def _read(self) -> None:
        result: dict[str, Any] = {"error": "the server closed the stream without an exit code"}
        try:
            async for message in self.ws:
                if isinstance(message, str) or not message:
                    continue
                channel, body = message[0], message[1:]
                if channel == STDOUT:
                    self.stdout.feed_data(body)
                elif channel == STDERR:
                    self.stderr.feed_data(body)
                elif channel == END:
                    with contextlib.suppress(ValueError):
                        result = json.loads(body)
                    break
        except (ConnectionClosed, OSError) as err:
            result = {"error": f"lost the exec stream: {err}"}
        finally:
            self.stdout.feed_eof()
            self.stderr.feed_eof()
            if not self._result.done():
                self._result.set_result(result)

    async def _send(self, data: bytes) -> None:
        async with self._send_lock:
            try:
                await self.ws.send(data)
            except (ConnectionClosed, OSError) as err:
                raise Unavailable(f"lost the exec stream: {err}") from err

    async def write(self, data: bytes) -> None:
        for start in range(0, len(data), _CHUNK):
            await self._send(bytes([STDIN]) + data[start : start + _CHUNK])

    async def close_stdin(self) -> None:
        await self._send(bytes([CLOSE, STDIN]))

    async def signal(self, number: int) -> None:
        await self._send(bytes([SIGNAL]) + json.dumps({"signal": number}).encode())

    async def resize(self, cols: int, rows: int) -> None:
        """The size of the command's terminal (a ``tty`` stream)."""
        size = {"resize": {"cols": cols, "rows": rows}}
        await self._send(bytes([SIGNAL]) + json.dumps(size).encode())

    async def wait(self) -> int:
        """The command's exit code; Unavailable if the stream ended without one."""
        result = await asyncio.shield(self._result)
        code = result.get("exitCode")
        if isinstance(code, int):
            return code
        raise Unavailable(str(result.get("error") or "the exec ended without an exit code"))

    @property
    def done(self) -> bool:
        return self._result.done()

    async def close(self) -> None:
        with contextlib.suppress(WebSocketException, OSError):
            await self.ws.close()
        self._reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._reader

    def link(self) -> Link:
        """This stream as a sync ``Link`` (stdout in, stdin out)."""
        return Link(self.stdout, _StdinWriter(self), self.close)


class _StdinWriter:
    """The ``Writer`` a sync channel writes frames to: each drained as one send."""

    def __init__(self, stream: ExecStream) -> None:
        self.stream = stream
        self._pending: list[bytes] = []

    def write(self, data: bytes) -> None:
        self._pending.append(data)

    async def drain(self) -> None:
        data, self._pending = b"".join(self._pending), []
        if data:
            try:
                await self.stream.write(data)
            except Unavailable as err:
                raise ConnectionError(str(err)) from err

    def close(self) -> None:
        self._pending.clear()


async def open_exec(
    endpoint: Endpoint,
    team: str,
    env: str,
    app: str,
    command: list[str],
    *,
    replica: int | None = None,
    route: str | None = None,
    tty: tuple[int, int] | None = None,
) -> ExecStream:
    """Start ``command`` in a replica of ``app`` (or at ``route``, another exec route such
    as a workspace's), on a terminal of ``tty`` (cols, rows) if given; errors before the
    start as Kled's."""
    query: list[tuple[str, Any]] = [("command", arg) for arg in command]
    if replica is not None:
        query.append(("replica", replica))
    if tty is not None:
        query += [("tty", 1), ("cols", tty[0]), ("rows", tty[1])]
    path = f"{route or exec_path(team, env, app)}?{urlencode(query)}"
    headers = {"Authorization": f"Bearer {endpoint.token}"} if endpoint.token else {}
    parts = urlsplit(endpoint.server if "//" in endpoint.server else f"http://{endpoint.server}")
    scheme = "wss" if parts.scheme == "https" else "ws"
    options: dict[str, Any] = {
        "additional_headers": headers,
        "max_size": MAX_FRAME * 2,
        "open_timeout": 30,
        "ping_interval": PING_SECONDS,
        "ping_timeout": PONG_SECONDS,
        "compression": None,
    }
    try:
        if endpoint.socket:
            ws = await unix_connect(endpoint.socket, f"ws://localhost{path}", **options)
        else:
            ws = await connect(f"{scheme}://{parts.netloc}{path}", **options)
    except InvalidStatus as err:
        raise _refusal(err) from None
    except (OSError, TimeoutError, WebSocketException) as err:
        raise Unavailable(f"cannot open an exec stream at {endpoint.server}: {err}") from err
    return ExecStream(ws)


def _refusal(err: InvalidStatus) -> KledError:
    response = err.response
    message = f"the server refused the exec with {response.status_code}"
    with contextlib.suppress(ValueError, AttributeError):
        body = json.loads(response.body or b"{}")
        message = str(body.get("message") or message)
    return _BY_STATUS.get(response.status_code, KledError)(message)


__all__ = ["Endpoint", "ExecStream", "exec_path", "open_exec", "websockets"]
