"""The pods' resolver: a DNS relay, UDP and TCP, from each team's bridge to the control plane's DNS.

A team's namespace has no link to the host and routes only the team's block, so the
control plane's DNS server is out of its reach unless that server sits on the mesh. The
agent bridges the gap without a process per team: it opens a UDP and a listening TCP socket
*inside* each team namespace, on the bridge address port 53 (where the pods' ``resolv.conf``
points), and relays every query from the agent's own namespace, the host's, which reaches
the control plane over the underlay. Sockets keep the namespace they were created in, so
only the creation needs to enter it (``setns`` in a short-lived thread of its own); the
connections accepted on the TCP socket live there too, and are served by the agent's loop.

UDP is the common case: one datagram in, one upstream socket, one datagram back. An answer
too big for UDP comes back truncated (TC), and the resolver asks again over TCP (RFC 1035
4.2.2: each message behind a 2-byte length). Each TCP client gets a TCP connection of its
own to the upstream, over which its messages pass both ways as they come, so pipelined
queries are answered, in the upstream's order. A client that ends its side has it ended
upstream too and still gets the answers owed; the upstream ending its side, or failing,
closes the client's connection (the resolver tries again). A connection with no message
either way for ``_TCP_IDLE`` seconds is closed, and a team has at most ``_TCP_CLIENTS``
open at once, so that its pods cannot take the agent's file descriptors.

The network layer is told the relay is the team's DNS server (``bridge_ip:53``), so its
DNAT of port 53 leaves the queries where they are. When a team's namespace is rebuilt the
relay notices (the namespace's inode changed) and opens new sockets there.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Callable

from kled.agent.net import netns
from kled.errors import Unavailable

log = logging.getLogger(__name__)

_MAX_DNS = 4096
_TCP_IDLE = 10.0
_TCP_CLIENTS = 128


def sockets_in(netns_path: str, address: tuple[str, int]) -> tuple[socket.socket, socket.socket]:
    """A UDP socket and a listening TCP socket, both non-blocking, bound to ``address``
    inside the namespace ``netns_path``."""

    def bind() -> tuple[socket.socket, socket.socket]:
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            for sock in (udp, tcp):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.setblocking(False)
            tcp.listen(64)
        except BaseException:
            udp.close()
            tcp.close()
            raise
        return udp, tcp

    try:
        return netns.made_in(netns_path, bind)
    except OSError as e:
        raise Unavailable(f"DNS relay cannot listen in {netns_path}: {e}") from e


def _inode(path: str) -> int | None:
    try:
        return os.stat(path).st_ino
    except OSError:
        return None


class _Relay:
    def __init__(self, team: str, netns_path: str, listen: tuple[str, int], upstream: str):
        self.team = team
        self.netns_path = netns_path
        self.listen = listen
        host, _, port = upstream.rpartition(":")
        self.upstream = (host.strip("[]"), int(port))
        self.inode = _inode(netns_path)
        self.sock, self.tcp = sockets_in(netns_path, listen)
        self._connections: set[asyncio.Task[None]] = set()
        self.tasks = (
            asyncio.create_task(self._serve(), name=f"dns-relay-{team}"),
            asyncio.create_task(self._serve_tcp(), name=f"dns-relay-tcp-{team}"),
        )

    def same(self, netns_path: str, listen: tuple[str, int], upstream: str) -> bool:
        host, _, port = upstream.rpartition(":")
        return (
            self.netns_path == netns_path
            and self.listen == listen
            and self.upstream == (host.strip("[]"), int(port))
            and self.inode is not None
            and self.inode == _inode(netns_path)
            and not any(task.done() for task in self.tasks)
        )

    async def _serve(self) -> None:
        loop = asyncio.get_running_loop()
        pending: set[asyncio.Task[None]] = set()
        try:
            while True:
                query, client = await loop.sock_recvfrom(self.sock, _MAX_DNS)
                task = asyncio.create_task(self._answer(query, client))
                pending.add(task)
                task.add_done_callback(pending.discard)
        finally:
            for task in pending:
                task.cancel()

    async def _answer(self, query: bytes, client: tuple[str, int]) -> None:
        loop = asyncio.get_running_loop()
        # One upstream socket per query: the reply is matched to its client by the socket.
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as up:
            up.setblocking(False)
            try:
                await loop.sock_connect(up, self.upstream)
                await loop.sock_sendall(up, query)
                reply = await asyncio.wait_for(loop.sock_recv(up, _MAX_DNS), 5.0)
            except (OSError, TimeoutError) as err:
                log.debug("teamgateway/%s DNS query not answered: %s", self.team, err)
                return
        with contextlib.suppress(OSError):
            await loop.sock_sendto(self.sock, reply, client)

    async def _serve_tcp(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(self.tcp)
            except OSError as err:  # out of descriptors, or a client gone before accept
                log.info("teamgateway/%s DNS over TCP cannot accept: %s", self.team, err)
                await asyncio.sleep(0.5)
                continue
            if len(self._connections) >= _TCP_CLIENTS:
                conn.close()  # the resolver tries again
                continue
            task = asyncio.create_task(self._relay_tcp(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _relay_tcp(self, conn: socket.socket) -> None:
        """One client's connection, joined message by message to one of the upstream."""
        loop = asyncio.get_running_loop()
        try:
            client_reader, client_writer = await asyncio.open_connection(sock=conn)
        except BaseException:
            conn.close()
            raise
        upstream_writer: asyncio.StreamWriter | None = None
        pumps: list[asyncio.Task[None]] = []
        abort = False  # drop what is unsent: the relay is closing, or the connection idled
        try:
            async with asyncio.timeout(_TCP_IDLE) as idle:

                def busy() -> None:
                    idle.reschedule(loop.time() + _TCP_IDLE)

                upstream_reader, upstream_writer = await asyncio.open_connection(*self.upstream)
                queries = asyncio.create_task(_pass(client_reader, upstream_writer, busy))
                answers = asyncio.create_task(_pass(upstream_reader, client_writer, busy))
                pumps = [queries, answers]
                await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
                if not answers.done() and queries.exception() is None:
                    # The client has no more questions; the upstream ends once it has
                    # answered the ones asked.
                    if upstream_writer.can_write_eof():
                        upstream_writer.write_eof()
                    await answers
                for pump in pumps:
                    if pump.done():
                        pump.result()
        except (OSError, asyncio.IncompleteReadError, TimeoutError) as err:
            abort = isinstance(err, TimeoutError)
            log.debug(
                "teamgateway/%s DNS over TCP to %s:%d ended: %s",
                self.team,
                *self.upstream,
                err or type(err).__name__,
            )
        except asyncio.CancelledError:
            abort = True
            raise
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_writer, upstream_writer):
                if writer is None:
                    continue
                if abort:
                    writer.transport.abort()
                else:
                    # The last answers are flushed first, unless the peer stops reading.
                    writer.close()
                    loop.call_later(_TCP_IDLE, writer.transport.abort)

    async def close(self) -> None:
        for task in (*self.tasks, *self._connections):
            task.cancel()
        await asyncio.gather(*self.tasks, *self._connections, return_exceptions=True)
        self.sock.close()
        self.tcp.close()


async def _pass(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, busy: Callable[[], None]
) -> None:
    """Pass length-prefixed DNS messages from ``reader`` to ``writer`` until ``reader``
    ends cleanly; a message cut short raises ``IncompleteReadError``."""
    while True:
        try:
            head = await reader.readexactly(2)
        except asyncio.IncompleteReadError as err:
            if err.partial:
                raise
            return
        (size,) = struct.unpack("!H", head)
        message = await reader.readexactly(size)
        writer.write(head + message)
        await writer.drain()
        busy()


class DnsRelays:
    """One relay per team gateway on this host, kept in step with the gateways."""

    def __init__(self) -> None:
        self._relays: dict[str, _Relay] = {}

    async def ensure(self, team: str, netns_path: str, listen_ip: str, upstream: str) -> None:
        listen = (listen_ip, 53)
        current = self._relays.get(team)
        if current is not None and current.same(netns_path, listen, upstream):
            return
        if current is not None:
            await current.close()
            del self._relays[team]
        self._relays[team] = _Relay(team, netns_path, listen, upstream)
        log.info("teamgateway/%s DNS relay %s:53 → %s", team, listen_ip, upstream)

    async def keep_only(self, teams: set[str]) -> None:
        for team in sorted(set(self._relays) - teams):
            await self._relays.pop(team).close()
            log.info("teamgateway/%s DNS relay stopped", team)

    async def close(self) -> None:
        await self.keep_only(set())
