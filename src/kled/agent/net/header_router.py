"""The header router of a team gateway: personal intercepts, one TCP connection at a time.

A personal intercept sends only the HTTP requests that carry a developer's header (e.g.
``x-kled-dev: alice``) to that developer's device, and everything else to the replicas. The
gateway's nftables rules cannot read HTTP, so for a service port with personal intercepts
they redirect the connection to this router instead (``nftables``: ``redirect to
:ROUTER_PORT``). The router runs as its own process inside the team's gateway namespace
(``python -m kled.agent.net.header_router --config FILE``, started and reloaded by
``router_process``): a separate process keeps the agent's event loop free of data-path work,
keeps traffic flowing while the agent restarts, and dies with nothing else.

For each accepted connection it asks conntrack for the original destination (the service
IP and port, ``SO_ORIGINAL_DST``), reads the first request head (HTTP/1.x, or the first
HEADERS of HTTP/2 cleartext with prior knowledge: ``httpsniff``), picks the device whose
header matches or else the next replica (round-robin), connects there, replays the bytes
it read and then splices both directions with asyncio protocols on uvloop: no per-byte
Python work, large reads, flow control through pause/resume of the other side.

The decision is per connection: later requests on a kept-alive connection follow the first
one (docs/intercept.md says why). Non-HTTP bytes, a head that cannot be read, and clients
that wait for the server to speak first (after ``SNIFF_TIMEOUT``) go to the replicas.

Scale to zero: the TCP ports of an app that may have no replica (``hold`` in its route:
``autoscale.minReplicas: 0``) always come here. The router counts their new connections and,
while such a route has no backend, holds each one (its first bytes kept) instead of
refusing it; it writes both to ``FILE.activity`` (``{"connections": {env/app: n},
"waiting": [env/app]}``), which the agent reports with its heartbeats, so the control plane
starts a replica. The reload that brings the first backend sends the held connections on;
one held longer than ``HOLD_SECONDS`` gets a 503.

SIGHUP reloads the config (existing connections keep their upstream); SIGTERM stops
accepting and lets open connections finish for up to ``DRAIN_SECONDS``. After each load the
router writes the config's digest to ``FILE.loaded``, so its supervisor knows when a change
is live.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import logging
import os
import signal
import socket
import struct
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from kled.agent.net.httpsniff import Kind, Sniffed, sniff
from kled.agent.net.nftables import ROUTER_PORT
from kled.resources.netstate import Service, ServicePort, TeamNetwork

log = logging.getLogger(__name__)

#: netfilter's getsockopt for the pre-NAT destination (linux/netfilter_ipv4.h)
SO_ORIGINAL_DST = 80
#: how long to wait for a client's first bytes before giving the connection to a replica
SNIFF_TIMEOUT = 1.0
#: a device that went offline would otherwise hold callers for the kernel's SYN retries
CONNECT_TIMEOUT = 10.0
DRAIN_SECONDS = 10.0
#: how long a connection to an app at zero replicas waits for one to become ready
HOLD_SECONDS = 120.0
#: the activity file is written at most this often
ACTIVITY_EVERY = 0.2

Address = tuple[str, int]


# ---- configuration (rendered by the gateway, read by the router) ------------------------


def render_config(team: TeamNetwork, listen_port: int = ROUTER_PORT) -> dict[str, Any] | None:
    """The router's config for the team's personal intercepts and the apps that may scale to
    zero; None when it has neither. Pure."""
    routes = []
    for svc in sorted(team.services, key=lambda s: (s.env, s.name)):
        for port in _routed_ports(svc):
            personal = [
                {
                    "header": p.header,
                    "value": p.value,
                    "target": [p.target_ip, p.port_map[port.port]],
                }
                for p in svc.personal
                if port.port in p.port_map
            ]
            routes.append(
                {
                    "service": f"app/{team.team}/{svc.name}",
                    "env": svc.env,
                    "ip": svc.ip,
                    "port": port.port,
                    "backends": [[ip, port.target_port] for ip in svc.backends],
                    "personal": personal,
                    "hold": svc.hold,
                    "key": f"{svc.env}/{svc.name}",
                }
            )
    if not routes:
        return None
    body = {"listen": listen_port, "routes": routes}
    digest = hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16]
    return {**body, "digest": digest}


def _routed_ports(svc: Service) -> list[ServicePort]:
    """The ports the gateway's rules redirect here (``nftables._service_rules``)."""
    personal = svc.personal_ports()
    ports = list(personal)
    if svc.hold:
        icpt = svc.intercept
        for sp in svc.ports:
            taken = icpt is not None and "TCP" in icpt.protocols and sp.port in icpt.port_map
            if sp.protocol == "TCP" and sp not in personal and not taken:
                ports.append(sp)
    return sorted(ports, key=lambda sp: sp.port)


@dataclass(frozen=True)
class Personal:
    header: str
    value: str
    target: Address


@dataclass
class Route:
    """Where connections to one service IP:port go."""

    service: str
    backends: list[Address]
    personal: list[Personal]
    #: hold connections while there is no backend (the app may scale to zero)
    hold: bool = False
    #: ``env/app``: how the activity file names it
    key: str = ""
    _next: Iterator[int] = field(default_factory=itertools.count)

    def pick(self, head: Sniffed) -> tuple[Address | None, str]:
        """The target for a connection whose first request is ``head``, and who it is."""
        if head.kind in (Kind.HTTP1, Kind.H2):
            for p in self.personal:
                if p.value in head.get(p.header):
                    return p.target, f"{p.header}={p.value}"
        if not self.backends:
            return None, "no replicas"
        return self.backends[next(self._next) % len(self.backends)], "replica"


def load_routes(config: dict[str, Any]) -> dict[Address, Route]:
    routes = {}
    for r in config["routes"]:
        routes[(r["ip"], int(r["port"]))] = Route(
            service=f"{r['service']} env={r['env']}",
            backends=[(ip, int(port)) for ip, port in r["backends"]],
            personal=[
                Personal(p["header"], p["value"], (p["target"][0], int(p["target"][1])))
                for p in r["personal"]
            ],
            hold=bool(r.get("hold", False)),
            key=str(r.get("key", "")),
        )
    return routes


def original_dst(sock: Any) -> Address | None:
    """The service IP:port this connection was sent to, before the redirect."""
    try:
        raw = sock.getsockopt(socket.SOL_IP, SO_ORIGINAL_DST, 16)
    except OSError:
        return None
    (port,) = struct.unpack_from("!H", raw, 2)
    return socket.inet_ntoa(raw[4:8]), port


# ---- the data path ------------------------------------------------------------------


_BAD_GATEWAY = (
    b"HTTP/1.1 %d %s\r\ncontent-type: text/plain\r\ncontent-length: %d\r\n"
    b"connection: close\r\n\r\n%s"
)


def _error_response(status: int, reason: bytes, text: bytes) -> bytes:
    return _BAD_GATEWAY % (status, reason, len(text), text)


class Upstream(asyncio.Protocol):
    """The router's connection to the chosen device or replica."""

    def __init__(self, down: Downstream) -> None:
        self.down = down
        self.transport: asyncio.Transport | None = None
        # The hot path is one bound-method call per read: no attribute chains, no checks.
        assert down.transport is not None
        self.data_received = down.transport.write  # type: ignore[method-assign]

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports do not subclass asyncio's, but have the same methods.
        self.transport = cast(asyncio.Transport, transport)

    def eof_received(self) -> bool:
        self.down.half_close(from_client=False)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.down.close()

    def pause_writing(self) -> None:
        self.down.pause_reading()

    def resume_writing(self) -> None:
        self.down.resume_reading()


class Downstream(asyncio.Protocol):
    """A client's connection: sniffed, routed, then spliced to its ``Upstream``."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.transport: asyncio.Transport | None = None
        self.upstream: Upstream | None = None
        #: the upstream transport's ``write`` once it is connected (the hot path)
        self.forward: Callable[[bytes], object] | None = None
        self.buffer = bytearray()
        self.route: Route | None = None
        self.decided = False
        self.closed = False
        self.client_eof = False
        self.eofs = 0
        self.timer: asyncio.TimerHandle | None = None
        self.dest: Address | None = None

    # -- the client side

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        dest = original_dst(self.transport.get_extra_info("socket"))
        self.dest = dest
        self.route = self.router.routes.get(dest) if dest else None
        if self.route is None:
            # Not redirected here by the gateway's rules (or the route just went away).
            log.debug("router: connection to %s has no route; closed", dest)
            self.transport.abort()
            return
        self.router.connections.add(self)
        if self.route.hold:
            self.router.counted(self.route.key)
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(SNIFF_TIMEOUT, self._decide, Sniffed(Kind.OTHER))

    def data_received(self, data: bytes) -> None:
        forward = self.forward
        if forward is not None:
            forward(data)
            return
        self.buffer += data
        if not self.decided:
            head = sniff(bytes(self.buffer))
            if head.kind is not Kind.MORE:
                self._decide(head)

    def eof_received(self) -> bool:
        self.client_eof = True
        if not self.decided:
            self._decide(Sniffed(Kind.OTHER, reason="eof"))
        self.half_close(from_client=True)
        return True

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.router.connections.discard(self)
        self.router.unpark(self)
        if self.timer is not None:
            self.timer.cancel()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    def pause_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.resume_reading()

    # -- used by the upstream side

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def half_close(self, *, from_client: bool) -> None:
        """Pass an EOF on; once both directions have ended, close both."""
        if from_client:
            up = self.upstream.transport if self.upstream else None
            if up is not None and up.can_write_eof():
                up.write_eof()
        elif self.transport is not None and self.transport.can_write_eof():
            self.transport.write_eof()
        self.eofs += 1
        if self.eofs >= 2:
            self.close()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        if self.upstream is not None and self.upstream.transport is not None:
            self.upstream.transport.close()

    # -- routing

    def _decide(self, head: Sniffed) -> None:
        if self.decided or self.closed or self.route is None or self.transport is None:
            return
        self.decided = True
        if self.timer is not None:
            self.timer.cancel()
        target, who = self.route.pick(head)
        if target is None and self.route.hold:
            self.router.park(self, head)
            return
        if target is None:
            if head.kind is Kind.HTTP1:
                self.transport.write(
                    _error_response(503, b"Service Unavailable", b"no replicas are running\n")
                )
            self.transport.close()
            return
        log.debug("%s %s → %s:%d (%s)", self.route.service, head.kind.value, *target, who)
        self.transport.pause_reading()
        task = asyncio.get_running_loop().create_task(self._connect(target, head))
        self.router.tasks.add(task)
        task.add_done_callback(self.router.tasks.discard)

    def wake(self, route: Route, head: Sniffed) -> None:
        """Held until now: decide again on ``route``, which has backends."""
        if self.timer is not None:
            self.timer.cancel()
        self.route, self.decided = route, False
        self._decide(head)

    def give_up(self) -> None:
        """Held too long: no replica became ready."""
        self.router.unpark(self)
        if self.transport is not None and not self.closed:
            text = b"no replica became ready in time\n"
            self.transport.write(_error_response(503, b"Service Unavailable", text))
            self.transport.close()

    async def _connect(self, target: Address, head: Sniffed) -> None:
        assert self.transport is not None and self.route is not None
        loop = asyncio.get_running_loop()
        try:
            _, upstream = await asyncio.wait_for(
                loop.create_connection(lambda: Upstream(self), *target), CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError) as exc:
            log.warning("%s cannot reach %s:%d: %s", self.route.service, *target, exc)
            if head.kind is Kind.HTTP1 and not self.closed:
                text = f"cannot reach {target[0]}:{target[1]}\n".encode()
                self.transport.write(_error_response(502, b"Bad Gateway", text))
            self.transport.close()
            return
        if self.closed:
            if upstream.transport is not None:
                upstream.transport.close()
            return
        assert upstream.transport is not None
        upstream.transport.write(bytes(self.buffer))
        self.buffer.clear()
        self.upstream = upstream
        self.forward = upstream.transport.write
        if self.client_eof and upstream.transport.can_write_eof():
            upstream.transport.write_eof()
        self.transport.resume_reading()


# ---- the process --------------------------------------------------------------------


class Router:
    """The routing table and the listener; reloaded in place on SIGHUP."""

    def __init__(self, config_path: Path) -> None:
        self.config_path = config_path
        self.routes: dict[Address, Route] = {}
        self.connections: set[Downstream] = set()
        self.tasks: set[asyncio.Task[None]] = set()
        self.listen = ROUTER_PORT
        self.digest = ""
        #: connections held for a route without backends, with their first request
        self.held: dict[Downstream, Sniffed] = {}
        #: ``env/app`` → new connections counted (routes that hold)
        self.connection_counts: dict[str, int] = {}
        self._activity_due: asyncio.TimerHandle | None = None
        self._activity_written: str | None = None

    def load(self) -> None:
        config = json.loads(self.config_path.read_text())
        self.routes = load_routes(config)
        self.listen = int(config.get("listen", ROUTER_PORT))
        self.digest = str(config.get("digest", ""))
        log.info("router: loaded %d routes digest=%s", len(self.routes), self.digest)

    def acknowledge(self) -> None:
        """Tell the supervisor which config is live (atomically: it polls this file)."""
        ack = self.config_path.with_name(self.config_path.name + ".loaded")
        tmp = ack.with_name(ack.name + ".tmp")
        tmp.write_text(self.digest)
        os.replace(tmp, ack)

    def reload(self) -> None:
        try:
            self.load()
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("router: config %s not reloaded: %s", self.config_path, exc)
            return
        self.acknowledge()
        for down, head in list(self.held.items()):
            route = self.routes.get(down.dest) if down.dest else None
            if route is not None and route.backends:
                del self.held[down]
                log.info("router: %s has a replica now; held connection sent on", route.key)
                down.wake(route, head)
        self.activity_changed()

    # -- scale to zero

    def counted(self, key: str) -> None:
        self.connection_counts[key] = self.connection_counts.get(key, 0) + 1
        self.activity_changed()

    def park(self, down: Downstream, head: Sniffed) -> None:
        assert down.route is not None
        log.info("router: %s has no replica; connection held", down.route.key)
        self.held[down] = head
        down.timer = asyncio.get_running_loop().call_later(HOLD_SECONDS, down.give_up)
        self.activity_changed()

    def unpark(self, down: Downstream) -> None:
        if self.held.pop(down, None) is not None:
            self.activity_changed()

    def activity(self) -> dict[str, Any]:
        waiting = sorted({d.route.key for d in self.held if d.route is not None})
        return {"connections": dict(sorted(self.connection_counts.items())), "waiting": waiting}

    def activity_changed(self) -> None:
        if self._activity_due is None:
            loop = asyncio.get_running_loop()
            self._activity_due = loop.call_later(ACTIVITY_EVERY, self.write_activity)

    def write_activity(self) -> None:
        self._activity_due = None
        text = json.dumps(self.activity(), sort_keys=True)
        if text == self._activity_written:
            return
        path = self.config_path.with_name(self.config_path.name + ".activity")
        tmp = path.with_name(path.name + ".tmp")
        try:
            tmp.write_text(text)
            os.replace(tmp, path)
        except OSError as exc:
            log.warning("router: activity not written to %s: %s", path, exc)
            return
        self._activity_written = text


async def serve(config_path: Path) -> None:
    router = Router(config_path)
    router.load()
    loop = asyncio.get_running_loop()
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # A router that is still draining after its intercepts ended may hold the port while a
    # new intercept starts the next one.
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    listener.bind(("0.0.0.0", router.listen))
    listener.listen(1024)
    server = await loop.create_server(lambda: Downstream(router), sock=listener)
    router.acknowledge()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGHUP, router.reload)
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    log.info("router: listening on :%d", router.listen)
    await stop.wait()
    server.close()
    for _ in range(int(DRAIN_SECONDS * 10)):
        if not router.connections:
            break
        await asyncio.sleep(0.1)
    for conn in list(router.connections):
        conn.close()
    log.info("router: stopped")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m kled.agent.net.header_router")
    parser.add_argument("--config", required=True, type=Path, help="routes (JSON)")
    parser.add_argument("--debug", action="store_true", help="log every routing decision")
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )
    try:
        import uvloop  # a dependency already (uvicorn[standard]); about twice the packet rate

        uvloop.run(serve(args.config))
    except ImportError:
        asyncio.run(serve(args.config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
