"""Kled's DNS server: authoritative for the team zones, a forwarder for everything else.

One asyncio server on UDP and TCP (the same port), at ``listen`` and at any further
addresses of this machine it is asked to answer on (``listen_also``: where remote hosts
reach a server that listens on loopback). A query for a name inside a team zone
is answered from the in-memory ``RecordIndex`` with the AA bit; any other name is passed
to the upstream resolvers (``Forwarder``), SERVFAIL when none answers, REFUSED when none is
configured. EDNS0 is honoured: the client's advertised UDP payload size bounds the reply,
and an answer that does not fit is sent with TC set and no records, so the client asks
again over TCP, where the whole answer goes.

Answers from the zones are the same bytes for the same query, so they are kept (keyed by
the query without its id) until the records change; a repeated question costs one dict
lookup, which is what lets a Python server keep up with the resolvers of a whole team.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from typing import Any, cast

from dnslib import EDNS0, OPCODE, QTYPE, RCODE, DNSError, DNSHeader, DNSRecord

from kled.dns.forward import Forwarder, Upstream, system_upstreams
from kled.dns.records import RecordIndex, RecordSource

log = logging.getLogger(__name__)

PLAIN_UDP_LIMIT = 512
#: the payload size Kled advertises (the DNS flag day 2020 value, safe from fragmentation)
SERVER_UDP_LIMIT = 1232
_CACHE_LIMIT = 65536
_TCP_IDLE = 30.0
_CLASS_IN, _CLASS_ANY = 1, 255


class DnsServer:
    def __init__(
        self,
        listen: tuple[str, int] = ("127.0.0.1", 53),
        upstreams: list[Upstream] | None = None,
        *,
        index: RecordIndex | None = None,
        ns_address: str | None = None,
        forward_timeout: float = 2.0,
    ) -> None:
        self.listen = listen
        chosen = system_upstreams() if upstreams is None else upstreams
        self.records = index or RecordIndex(ns_address=ns_address)
        self.forwarder = Forwarder(chosen, timeout=forward_timeout)
        #: (host, port) → the UDP transport and TCP server listening there; the first is
        #: ``listen``, the others were added for the hosts that reach us elsewhere
        self._listeners: dict[tuple[str, int], tuple[asyncio.DatagramTransport, asyncio.Server]]
        self._listeners = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._cache: dict[tuple[bool, bytes], bytes] = {}
        self._cache_generation = -1
        self.port = listen[1]

    # ---- records -------------------------------------------------------------------

    def apply(self, team: str, records: RecordSource | None) -> None:
        """Replace a team's records (None removes the team); the next query sees them."""
        self.records.apply(team, records)

    def remove(self, team: str) -> None:
        self.records.remove(team)

    # ---- lifetime ------------------------------------------------------------------

    async def start(self) -> None:
        self.port = await self._open(*self.listen)
        log.info(
            "dns: serving on %s:%d (udp, tcp), forwarding to %s",
            self.listen[0],
            self.port,
            ", ".join(f"{h}:{p}" for h, p in self.forwarder.upstreams) or "nobody",
        )

    async def _open(self, host: str, port: int) -> int:
        """Listen on UDP and TCP at ``host:port`` (a free port when 0); the port bound."""
        loop = asyncio.get_running_loop()
        udp_sock, tcp_sock = _bind_pair(host, port)
        bound = int(udp_sock.getsockname()[1])
        # A host whose resolver is this very server must not forward to itself.
        self.forwarder.upstreams = [u for u in self.forwarder.upstreams if u != (host, bound)]
        try:
            transport, _ = await loop.create_datagram_endpoint(
                lambda: _UdpProtocol(self), sock=udp_sock
            )
        except BaseException:
            udp_sock.close()
            tcp_sock.close()
            raise
        try:
            tcp = await asyncio.start_server(self._serve_tcp, sock=tcp_sock)
        except BaseException:
            transport.close()
            tcp_sock.close()
            raise
        self._listeners[(host, bound)] = (transport, tcp)
        return bound

    def port_on(self, host: str) -> int | None:
        """The port this server answers on at ``host`` (None: it does not listen there)."""
        if host in ("0.0.0.0", "::", "") or not self._listeners:
            return None
        for bound_host, port in self._listeners:
            if bound_host == host:
                return port
            wildcard = "::" if ":" in host else "0.0.0.0"
            if bound_host == wildcard:
                return port
        return None

    async def listen_also(self, host: str) -> int:
        """Answer at ``host`` too (an address of this machine), on the same port when it is
        free there, and return the port; a no-op when a listener already covers ``host``."""
        known = self.port_on(host)
        if known is not None:
            return known
        try:
            port = await self._open(host, self.port)
        except OSError:
            port = await self._open(host, 0)
        log.info("dns: also serving on %s:%d (udp, tcp)", host, port)
        return port

    @property
    def addresses(self) -> list[tuple[str, int]]:
        """Every (host, port) this server listens on, the first being ``listen``'s."""
        return list(self._listeners)

    async def stop(self) -> None:
        listeners, self._listeners = list(self._listeners.values()), {}
        for transport, tcp in listeners:
            transport.close()
            tcp.close()
        for _, tcp in listeners:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(tcp.wait_closed(), 2)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def __aenter__(self) -> DnsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- answering -----------------------------------------------------------------

    def answer_local(self, data: bytes, udp: bool) -> bytes | None:
        """The reply from the zones (or an error reply); None means: forward it."""
        if self._cache_generation != self.records.generation:
            self._cache.clear()
            self._cache_generation = self.records.generation
        key = (udp, data[2:])
        cached = self._cache.get(key)
        if cached is not None:
            return data[:2] + cached[2:]
        try:
            request = DNSRecord.parse(data)
        except (DNSError, struct.error, IndexError, ValueError):
            return _error_header(data, RCODE.FORMERR)
        if request.header.qr:
            return b""  # a response sent to us: never answer those
        if request.header.opcode != OPCODE.QUERY:
            return _reply_error(request, RCODE.NOTIMP)
        if len(request.questions) != 1 or request.q.qclass not in (_CLASS_IN, _CLASS_ANY):
            bad = RCODE.FORMERR if len(request.questions) != 1 else RCODE.REFUSED
            return _reply_error(request, bad)
        opt = _opt(request)
        if opt is not None and (opt.ttl >> 16) & 0xFF != 0:
            reply = request.reply(ra=1, aa=0)
            reply.header.ad = 0
            reply.add_ar(EDNS0(udp_len=SERVER_UDP_LIMIT, ext_rcode=1))  # BADVERS
            return bytes(reply.pack())
        reply = self.records.answer(request)
        if reply is None:
            if not self.forwarder.upstreams:
                return _reply_error(request, RCODE.REFUSED)
            return None
        if opt is not None:
            reply.add_ar(EDNS0(udp_len=SERVER_UDP_LIMIT))
        wire = bytes(reply.pack())
        if udp and len(wire) > _udp_limit(opt):
            wire = _fit(request, reply, opt)
        if len(self._cache) >= _CACHE_LIMIT:
            self._cache.clear()
        self._cache[key] = wire
        return wire

    async def answer(self, data: bytes, udp: bool) -> bytes | None:
        """The reply to one query, forwarding it when the zones do not hold its name."""
        local = self.answer_local(data, udp)
        if local is not None:
            return local or None
        reply = await self.forwarder.resolve(data)
        request = DNSRecord.parse(data)
        if reply is None:
            log.warning("dns: no upstream answered for %s", request.q.qname)
            return _reply_error(request, RCODE.SERVFAIL)
        if udp and len(reply) > _udp_limit(_opt(request)):
            try:
                return _truncated(request, DNSRecord.parse(reply), _opt(request))
            except DNSError:
                return _reply_error(request, RCODE.SERVFAIL)
        return reply

    def _forward_udp(self, data: bytes, addr: Any, transport: asyncio.DatagramTransport) -> None:
        task = asyncio.create_task(self._udp_reply(data, addr, transport))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _udp_reply(
        self, data: bytes, addr: Any, transport: asyncio.DatagramTransport
    ) -> None:
        # The reply leaves by the socket the query came in on, so its source is the
        # address the client asked.
        reply = await self.answer(data, udp=True)
        if reply and not transport.is_closing():
            transport.sendto(reply, addr)

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            while True:
                head = await asyncio.wait_for(reader.readexactly(2), _TCP_IDLE)
                data = await asyncio.wait_for(
                    reader.readexactly(struct.unpack("!H", head)[0]), _TCP_IDLE
                )
                reply = await self.answer(data, udp=False)
                if reply:
                    writer.write(struct.pack("!H", len(reply)) + reply)
                    await writer.drain()
        except (asyncio.IncompleteReadError, TimeoutError, ConnectionError):
            pass
        finally:
            if task is not None:
                self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class _UdpProtocol(asyncio.DatagramProtocol):
    def __init__(self, server: DnsServer) -> None:
        self.server = server
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: Any) -> None:
        # The zones answer synchronously, without a task per query; only forwarding waits.
        try:
            reply = self.server.answer_local(data, udp=True)
        except Exception:  # one bad packet must never stop the server
            log.exception("dns: failed to answer a query from %s", addr)
            return
        if reply is None:
            if self.transport is not None:
                self.server._forward_udp(data, addr, self.transport)
        elif reply and self.transport is not None:
            self.transport.sendto(reply, addr)


def _bind_pair(host: str, port: int) -> tuple[socket.socket, socket.socket]:
    """A UDP and a TCP socket on one port (a free one, when ``port`` is 0)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    for _ in range(50):
        udp = socket.socket(family, socket.SOCK_DGRAM)
        tcp = socket.socket(family, socket.SOCK_STREAM)
        try:
            udp.bind((host, port))
            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            tcp.bind((host, udp.getsockname()[1]))
            tcp.listen(128)
            udp.setblocking(False)
            tcp.setblocking(False)
            return udp, tcp
        except OSError:
            udp.close()
            tcp.close()
            if port != 0:
                raise
    raise OSError(f"no port free for both UDP and TCP on {host}")


def _opt(request: DNSRecord) -> Any:
    for rr in request.ar:
        if rr.rtype == QTYPE.OPT:
            return rr
    return None


def _udp_limit(opt: Any) -> int:
    if opt is None:
        return PLAIN_UDP_LIMIT
    return max(PLAIN_UDP_LIMIT, min(int(opt.rclass), 65535))


def _fit(request: DNSRecord, reply: DNSRecord, opt: Any) -> bytes:
    """The reply within the client's UDP limit: without extra records if that is enough
    (they are optional, RFC 2181 §9), else truncated."""
    if any(rr.rtype != QTYPE.OPT for rr in reply.ar):
        slim = DNSRecord(reply.header, q=request.q, rr=list(reply.rr), auth=list(reply.auth))
        if opt is not None:
            slim.add_ar(EDNS0(udp_len=SERVER_UDP_LIMIT))
        wire = bytes(slim.pack())
        if len(wire) <= _udp_limit(opt):
            return wire
    return _truncated(request, reply, opt)


def _truncated(request: DNSRecord, reply: DNSRecord, opt: Any) -> bytes:
    """Header and question only, with TC: the client asks again over TCP."""
    header = DNSHeader(id=reply.header.id, bitmap=reply.header.bitmap)
    header.tc = 1
    short = DNSRecord(header, q=request.q)
    if opt is not None:
        short.add_ar(EDNS0(udp_len=SERVER_UDP_LIMIT))
    return bytes(short.pack())


def _reply_error(request: DNSRecord, rcode: int) -> bytes:
    reply = request.reply(ra=1, aa=0)
    reply.header.ad = 0
    reply.header.rcode = rcode
    if _opt(request) is not None:
        reply.add_ar(EDNS0(udp_len=SERVER_UDP_LIMIT))
    return bytes(reply.pack())


def _error_header(data: bytes, rcode: int) -> bytes:
    """A bare reply to a query we could not parse (nothing at all for a runt)."""
    if len(data) < 12:
        return b""
    flags = struct.unpack("!H", data[2:4])[0]
    if flags & 0x8000:
        return b""
    flags = 0x8000 | (flags & 0x7900) | rcode
    return data[:2] + struct.pack("!HHHHH", flags, 0, 0, 0, 0)
