"""The CLI's seam to the control plane: HTTP over TCP or the local Unix socket.

Everything the CLI asks the server goes through :class:`Client`, which turns httpx's
exceptions and the API's ``Status`` answers into Kled's own errors (a 4xx ``Invalid``,
400, 422 or 413 into :class:`InvalidInput`, so that bad input exits with 2; the rest into
the matching :class:`KledError`), and follows watches (Server-Sent Events), resuming from
the last event id when the connection drops.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from kled.errors import (
    Conflict,
    Forbidden,
    InvalidInput,
    KledError,
    NotFound,
    TooLarge,
    Unauthorized,
    Unavailable,
)
from kled.resources.registry import KindInfo, Scope

log = logging.getLogger(__name__)

LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "[::1]"})
#: longest pause between two attempts to resume a dropped watch
MAX_BACKOFF = 2.0

_BY_STATUS: dict[int, type[KledError]] = {
    400: InvalidInput,
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    413: TooLarge,
    422: InvalidInput,
    503: Unavailable,
}


@dataclass
class WatchEvent:
    """One event of a watch: its sequence number, type and the object."""

    seq: int
    type: str
    object: dict[str, Any]


def is_local(server: str) -> bool:
    """Whether ``server`` (a URL) is on this machine, where its Unix socket is reachable."""
    host = urlsplit(server if "//" in server else f"http://{server}").hostname or ""
    return host in LOCAL_HOSTS


def use_socket(server: str, socket: str | None) -> bool:
    """The CLI talks over the socket when it exists and the server is local."""
    return bool(socket) and is_local(server) and Path(str(socket)).exists()


def collection_path(info: KindInfo, team: str | None, env: str | None) -> str:
    """The URL path of a kind's collection: server-wide, a team's, or an environment's."""
    if info.scope is Scope.SERVER:
        return f"/api/v1/{info.plural}"
    if not team:
        raise InvalidInput(f"{info.plural} belong to a team: pass --team")
    if info.scope is Scope.ENVIRONMENT and env:
        return f"/api/v1/teams/{team}/environments/{env}/{info.plural}"
    return f"/api/v1/teams/{team}/{info.plural}"


def item_path(info: KindInfo, team: str | None, env: str | None, name: str) -> str:
    if info.scope is Scope.ENVIRONMENT and not env:
        raise InvalidInput(
            f"{info.plural} live in an environment: pass -e ENV "
            "(or set one with `kled context set --env ENV`)",
        )
    return f"{collection_path(info, team, env)}/{name}"


def server_urls(server: str) -> list[str]:
    """The URLs of ``--server URL1,URL2`` (the replicas of one control plane), in order."""
    urls = [u.strip().rstrip("/") for u in server.split(",") if u.strip()]
    if not urls:
        raise InvalidInput("--server: give a URL, or several separated by commas")
    return urls


#: failures that show the request never reached a server: any request may go to the next
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)
#: methods that may be sent again after a connection broke mid-request
_REPEATABLE = frozenset({"GET", "HEAD", "PUT", "DELETE"})


class Client:
    """A connection to one control plane, with one token.

    ``server`` may name several replicas of one control plane (``URL1,URL2``): a request
    that cannot reach one goes to the next (a request that may be sent twice, also when
    the connection broke under it); an answer, even 4xx or 5xx, is the answer.
    """

    def __init__(
        self,
        server: str,
        token: str,
        *,
        socket: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        self.servers = server_urls(server)
        self.server = self.servers[0]
        self.via_socket = use_socket(self.server, socket)
        #: kept for streams that are not HTTP requests (``kled exec``'s WebSocket)
        self.token = token
        self.socket = str(socket) if self.via_socket else None
        self.where = self.server
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._timeout = timeout
        transport: httpx.HTTPTransport | None = None
        base = self.server
        if self.via_socket:
            transport = httpx.HTTPTransport(uds=str(socket))
            base = "http://localhost"
            self.where = f"{self.server} (socket {socket})"
        self._http = httpx.Client(
            base_url=base, headers=self._headers, timeout=timeout, transport=transport
        )

    def _fail_over(self) -> bool:
        """Talk to the next replica from now on; False when there is only one."""
        if len(self.servers) < 2:
            return False
        at = self.servers.index(self.server) if self.server in self.servers else -1
        self.server = self.servers[(at + 1) % len(self.servers)]
        self._http.close()
        self.via_socket, self.socket, self.where = False, None, self.server
        self._http = httpx.Client(
            base_url=self.server, headers=self._headers, timeout=self._timeout
        )
        log.info("failing over to the Kled server at %s", self.server)
        return True

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # ---- plain requests --------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, Any] | None = None,
        body: Any = None,
    ) -> Any:
        """The answer's JSON; raises the KledError the server's Status stands for."""
        clean = {k: v for k, v in (params or {}).items() if v is not None}
        tries = len(self.servers)
        while True:
            try:
                response = self._http.request(
                    method, path, params=clean, json=body if body is not None else None
                )
                break
            except httpx.HTTPError as e:
                tries -= 1
                resend = isinstance(e, _NOT_SENT) or (
                    isinstance(e, httpx.TransportError) and method in _REPEATABLE
                )
                if not (resend and tries > 0 and self._fail_over()):
                    raise self._unreachable(e) from e
        if response.status_code >= 400:
            raise error_from(response)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as e:
            raise Unavailable(f"the server at {self.where} answered with something not JSON") from e

    def get(self, path: str, **params: Any) -> Any:
        return self.request("GET", path, params=params)

    def post(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("POST", path, params=params, body=body)

    def put(self, path: str, body: Any, **params: Any) -> Any:
        return self.request("PUT", path, params=params, body=body)

    def delete(self, path: str, **params: Any) -> Any:
        return self.request("DELETE", path, params=params)

    def list_all(self, path: str, **params: Any) -> list[dict[str, Any]]:
        """Every item of a collection, following ``continue`` tokens page by page."""
        items: list[dict[str, Any]] = []
        token: str | None = None
        while True:
            page = self.get(path, limit=500, **{"continue": token}, **params)
            items.extend(page.get("items") or [])
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return items

    # ---- watching --------------------------------------------------------------------

    def watch(
        self,
        path: str,
        *,
        since: int | None = None,
        params: dict[str, Any] | None = None,
        on_retry: Callable[[str], None] | None = None,
    ) -> Iterator[WatchEvent]:
        """Events of a collection, forever; a dropped connection resumes after the last id.

        Errors the server answers (401, 404...) are raised; only a lost connection or an
        unavailable server is retried, with a growing pause. When the events after the
        last id were compacted away (410 Gone, before the stream or as an ``ERROR`` event
        in it), the watch lists again: it starts over without an id, so the server sends
        every object as ``ADDED`` and then the changes after that list.
        """
        last = since
        backoff = 0.2
        while True:
            query = {k: v for k, v in (params or {}).items() if v is not None}
            query["watch"] = "true"
            headers = {"Last-Event-ID": str(last)} if last is not None else {}
            try:
                with self._http.stream(
                    "GET", path, params=query, headers=headers, timeout=httpx.Timeout(30, read=None)
                ) as response:
                    if response.status_code == 410:
                        response.read()
                        raise _Relist(error_from(response))
                    if response.status_code >= 400:
                        response.read()
                        raise error_from(response)
                    backoff = 0.2
                    for event in _sse_events(response.iter_lines()):
                        if event.type == "ERROR":
                            raise _Relist(_stream_error(event))
                        last = event.seq
                        yield event
            except _Relist as relist:
                log.debug("watch of %s: %s; listing again", path, relist.why)
                if on_retry is not None:
                    on_retry(f"{relist.why}; listing again")
                last = None
                continue
            except (httpx.TransportError, Unavailable) as e:
                why = str(self._unreachable(e)) if isinstance(e, httpx.HTTPError) else str(e)
                if on_retry is not None:
                    on_retry(why)
                log.debug("watch of %s dropped (%s); resuming after %s", path, why, last)
                self._fail_over()  # resume on the next replica, if there is one
            time.sleep(backoff)
            backoff = min(backoff * 2, MAX_BACKOFF)

    def _unreachable(self, e: httpx.HTTPError) -> Unavailable:
        text = str(e) or e.__class__.__name__
        if isinstance(e, httpx.TimeoutException):
            why = "timed out"
        elif "refused" in text.lower():
            why = "connection refused"
        elif "No such file" in text:
            why = "no such socket"
        else:
            why = text
        return Unavailable(
            f"cannot reach the Kled server at {self.where}: {why} — is `kled server` running?"
        )


class _Relist(Exception):
    """The watch's events were compacted (410): start over with a list."""

    def __init__(self, why: KledError) -> None:
        super().__init__(str(why))
        self.why = why


def _stream_error(event: WatchEvent) -> KledError:
    """The error an ``ERROR`` event reports; a 410 relists, anything else is raised."""
    status = event.object
    if status.get("code") != 410:
        raise KledError(f"the watch failed: {status.get('message') or status}")
    return KledError(str(status.get("message") or "compacted"))


def error_from(response: httpx.Response) -> KledError:
    """The KledError for an error answer, with the server's message."""
    try:
        body = response.json()
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    message = str(body.get("message") or response.reason_phrase or "request failed")
    reason = body.get("reason")
    cls = _BY_STATUS.get(response.status_code, KledError)
    if reason == "Invalid" or cls is TooLarge:
        # Every kind of bad input exits with 2, an oversized body included.
        cls = InvalidInput
    if cls is KledError:
        message = f"the server answered {response.status_code}: {message}"
    error = cls(message)
    error.field = body.get("field") if isinstance(body.get("field"), str) else None
    return error


def _sse_events(lines: Iterator[str]) -> Iterator[WatchEvent]:
    """Events of a Server-Sent Events stream (comments and keep-alives skipped)."""
    seq: int | None = None
    kind = ""
    data: list[str] = []
    for line in lines:
        if not line:
            if data and seq is not None:
                payload = json.loads("\n".join(data))
                yield WatchEvent(seq, payload.get("type") or kind, payload.get("object") or {})
            seq, kind, data = None, "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        value = value[1:] if value.startswith(" ") else value
        if name == "id" and value.isdigit():
            seq = int(value)
        elif name == "event":
            kind = value
        elif name == "data":
            data.append(value)
