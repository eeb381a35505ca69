"""The pods' resolver: a UDP DNS relay from each team's bridge to the control plane's DNS.

A team's namespace has no link to the host and routes only the team's block, so the
control plane's DNS server is out of its reach unless that server sits on the mesh. The
agent bridges the gap without a process per team: it opens one UDP socket *inside* each
team namespace, on the bridge address port 53 (where the pods' ``resolv.conf`` points), and
relays every query from the agent's own namespace, the host's, which reaches the control
plane over the underlay. Sockets keep the namespace they were created in, so only the
creation needs to enter it (``setns`` in a short-lived thread of its own).

The network layer is told the relay is the team's DNS server (``bridge_ip:53``), so its
DNAT of port 53 leaves the queries where they are. When a team's namespace is rebuilt the
relay notices (the namespace's inode changed) and opens a new socket there.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import threading

from kled.errors import Unavailable

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_MAX_DNS = 4096


def udp_socket_in(netns_path: str, address: tuple[str, int]) -> socket.socket:
    """A non-blocking UDP socket bound to ``address`` inside the namespace ``netns_path``."""
    result: list[socket.socket | BaseException] = []

    def enter_and_bind() -> None:
        # This thread alone enters the namespace and ends right after, so no other code
        # of the agent ever runs in it.
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            fd = os.open(netns_path, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns {netns_path}: {os.strerror(err)}")
            finally:
                os.close(fd)
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind(address)
                sock.setblocking(False)
            except BaseException:
                sock.close()
                raise
            result.append(sock)
        except BaseException as e:  # handed to the caller's thread
            result.append(e)

    thread = threading.Thread(target=enter_and_bind, name="netns-socket", daemon=True)
    thread.start()
    thread.join()
    got = result[0] if result else Unavailable(f"no socket made in {netns_path}")
    if isinstance(got, BaseException):
        raise Unavailable(f"DNS relay cannot listen in {netns_path}: {got}") from got
    return got


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
        self.sock = udp_socket_in(netns_path, listen)
        self.task = asyncio.create_task(self._serve(), name=f"dns-relay-{team}")

    def same(self, netns_path: str, listen: tuple[str, int], upstream: str) -> bool:
        host, _, port = upstream.rpartition(":")
        return (
            self.netns_path == netns_path
            and self.listen == listen
            and self.upstream == (host.strip("[]"), int(port))
            and self.inode is not None
            and self.inode == _inode(netns_path)
            and not self.task.done()
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

    async def close(self) -> None:
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        self.sock.close()


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
