"""Which of this machine's addresses a client reaches us at, and what to offer it there.

The control plane tells nodes and devices where its DNS server is and where the team's
nodes are; the right answer depends on the address a client's packets arrive at (a
server on a laptop has one per network). These helpers work it out from the socket, never
from what the client claims (a Host header), so a client cannot make the server listen on
an address of its choosing.
"""

from __future__ import annotations

import ipaddress
import socket

from fastapi import Request

#: addresses that mean "every interface" when a server listens on them
WILDCARDS = frozenset({"0.0.0.0", "::", ""})


def route_source(address: str | None) -> str | None:
    """The address of this machine that packets to ``address`` leave from, which is where
    a host at ``address`` reaches us (routing on an underlay is symmetric); None for a
    name or an address we have no route to. Connecting a UDP socket sends nothing."""
    try:
        ip = ipaddress.ip_address((address or "").strip("[]"))
    except ValueError:
        return None
    family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect((str(ip), 9))
        except OSError:
            return None
        return str(probe.getsockname()[0])


def reachable_endpoint(endpoint: str | None, local: str | None) -> str | None:
    """A node that joined over loopback runs on this machine: a device that reached this
    server at ``local`` reaches that node there too (``kled up`` plus a laptop)."""
    if not endpoint or not local or is_loopback(local):
        return endpoint
    host, _, port = endpoint.rpartition(":")
    if not is_loopback(host.strip("[]")):
        return endpoint
    return f"[{local}]:{port}" if ":" in local else f"{local}:{port}"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def is_ip(host: str | None) -> bool:
    try:
        ipaddress.ip_address(host or "")
    except ValueError:
        return False
    return True


def request_addresses(request: Request) -> tuple[str | None, str | None]:
    """(the host name the client used, the address of ours it came in at)."""
    via = request.url.hostname
    if via in ("localhost", "kled"):  # the Unix socket's placeholder host
        via = "127.0.0.1"
    server = request.scope.get("server")
    local = str(server[0]) if isinstance(server, tuple) and is_ip(str(server[0])) else None
    return via, local
