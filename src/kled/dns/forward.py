"""Forwarding of the names Kled is not authoritative for, to the host's resolvers.

Pods and devices use Kled's DNS server as their only resolver, so every other name must
still resolve: the query goes, unchanged, to the upstream resolvers in turn (by default
the ``nameserver`` lines of ``/etc/resolv.conf``) over UDP; an answer with TC set is asked
again over TCP. When no upstream answers, the caller replies SERVFAIL.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import struct
from pathlib import Path

log = logging.getLogger(__name__)

Upstream = tuple[str, int]
_TC = 0x0200


def system_upstreams(path: Path = Path("/etc/resolv.conf")) -> list[Upstream]:
    """The nameservers the host itself uses."""
    found: list[Upstream] = []
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        parts = line.split()
        if len(parts) >= 2 and parts[0] == "nameserver":
            found.append((parts[1].split("%")[0], 53))
    return found


def parse_upstream(text: str) -> Upstream:
    """``1.2.3.4``, ``1.2.3.4:5353`` or ``[::1]:53``."""
    if text.startswith("["):
        host, _, port = text[1:].partition("]:")
        return host.rstrip("]"), int(port or 53)
    if text.count(":") == 1:
        host, _, port = text.partition(":")
        return host, int(port)
    return text, 53


class _Exchange(asyncio.DatagramProtocol):
    def __init__(self, query_id: bytes) -> None:
        self.query_id = query_id
        self.reply: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: object) -> None:
        # Only the answer to our query (same id) counts; stray packets are dropped.
        if data[:2] == self.query_id and not self.reply.done():
            self.reply.set_result(data)

    def error_received(self, exc: Exception) -> None:
        if not self.reply.done():
            self.reply.set_exception(exc)


class Forwarder:
    def __init__(self, upstreams: list[Upstream], timeout: float = 2.0) -> None:
        self.upstreams = list(upstreams)
        self.timeout = timeout

    async def resolve(self, query: bytes) -> bytes | None:
        """The first upstream's answer to ``query`` (wire format), or None if none answers."""
        for upstream in self.upstreams:
            try:
                reply = await self._udp(upstream, query)
                if len(reply) >= 4 and struct.unpack("!H", reply[2:4])[0] & _TC:
                    reply = await self._tcp(upstream, query)
                return reply
            except (OSError, TimeoutError, asyncio.IncompleteReadError) as e:
                log.warning(
                    "dns: upstream %s:%d failed: %s", upstream[0], upstream[1], e or "timeout"
                )
        return None

    async def _udp(self, upstream: Upstream, query: bytes) -> bytes:
        loop = asyncio.get_running_loop()
        transport, protocol = await loop.create_datagram_endpoint(
            lambda: _Exchange(query[:2]), remote_addr=upstream
        )
        try:
            transport.sendto(query)
            return await asyncio.wait_for(protocol.reply, self.timeout)
        finally:
            transport.close()

    async def _tcp(self, upstream: Upstream, query: bytes) -> bytes:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(upstream[0], upstream[1]), self.timeout
        )
        try:
            writer.write(struct.pack("!H", len(query)) + query)
            await writer.drain()
            size = struct.unpack("!H", await asyncio.wait_for(reader.readexactly(2), self.timeout))
            return await asyncio.wait_for(reader.readexactly(size[0]), self.timeout)
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
