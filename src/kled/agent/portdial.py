"""A TCP connection to a port inside a replica's pod, made by the agent itself.

``kubectl port-forward`` (``kled.kube.portforward``) opens an exec stream whose ``open``
frame names a port (``connect``) besides a relay command. When the replica runs in a pod
network namespace (``ReplicaSpec.pod_netns``, either runtime) or is a process in the
agent's own namespace, the agent connects to ``localhost:port`` there itself — IPv4, then
IPv6, as the kubelet does — instead of starting the relay: no process per connection and
nothing needed in the image. The stream then speaks as the relay's would: ``started``,
the connection's bytes as ``out`` frames, ``in`` frames written to it, ``eof`` half-closes
it, and ``exit`` 0 when the pod's side has closed; a connection that cannot be made is
``err`` (Go's words, ``dial tcp4 127.0.0.1:9: connect: connection refused``) and ``exit`` 1.

A socket belongs to the network namespace it was created in, whatever thread later uses
it; so a short-lived thread of its own enters the pod's namespace (``setns``), creates the
sockets and ends, and the event loop connects them.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import socket
import threading

from kled.bus.exec_link import MAX_CHUNK, ExecLink, LinkLost
from kled.errors import KledError
from kled.resources.hoststate import ReplicaSpec, RuntimeKind

log = logging.getLogger(__name__)

CLONE_NEWNET = 0x40000000
_ADDRESSES = ((socket.AF_INET, "127.0.0.1", "tcp4"), (socket.AF_INET6, "::1", "tcp6"))
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - every Linux has a libc
    _LIBC = None


class DialFailed(Exception):
    """No connection to the port (each address's reason, in Go's words)."""


def can_dial(spec: ReplicaSpec) -> bool:
    """Whether the agent reaches the replica's localhost itself."""
    return bool(spec.pod_netns) or spec.runtime == RuntimeKind.PROCESS


def sockets_in(netns: str | None) -> list[socket.socket]:
    """An IPv4 and an IPv6 TCP socket of the network namespace at ``netns`` (a path under
    /run/netns), or of the agent's own for None."""
    if netns is None:
        return [socket.socket(family, socket.SOCK_STREAM) for family, _, _ in _ADDRESSES]
    made: list[socket.socket] = []
    failure: list[BaseException] = []

    def inside() -> None:  # this thread's namespace only; the thread ends with it
        try:
            if _LIBC is None:
                raise OSError("no libc to call setns with")
            fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if _LIBC.setns(fd, CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")
            finally:
                os.close(fd)
            for family, _, _ in _ADDRESSES:
                made.append(socket.socket(family, socket.SOCK_STREAM))
        except BaseException as err:  # handed to the caller's thread
            failure.append(err)

    thread = threading.Thread(target=inside, name="kled-portdial", daemon=True)
    thread.start()
    thread.join()
    if failure:
        for sock in made:
            sock.close()
        raise failure[0]
    return made


async def connect(netns: str | None, port: int) -> socket.socket:
    """A connected socket to ``localhost:port`` in ``netns``; ``DialFailed`` if none."""
    loop = asyncio.get_running_loop()
    try:
        candidates = await asyncio.to_thread(sockets_in, netns)
    except OSError as err:
        raise DialFailed(f"cannot enter the pod's network namespace: {err}") from err
    reasons = []
    for sock, (_, host, net) in zip(candidates, _ADDRESSES, strict=True):
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, (host, port))
        except OSError as err:
            sock.close()
            where = host if ":" not in host else f"[{host}]"
            reason = (os.strerror(err.errno) if err.errno else str(err)).lower()
            reasons.append(f"dial {net} {where}:{port}: connect: {reason}")
            continue
        for other in candidates:
            if other is not sock:
                other.close()
        return sock
    raise DialFailed(f"IPv4: {reasons[0]} IPv6: {reasons[1]}")


async def serve(link: ExecLink, spec: ReplicaSpec, port: int) -> None:
    """One port-forward stream: the connection to ``port`` in the replica, both ways."""
    try:
        sock = await connect(spec.pod_netns, port)
    except DialFailed as err:
        await link.send("started", pid=0)
        await link.send_data("err", str(err).encode())
        await link.send("exit", code=1)
        return
    reader, writer = await asyncio.open_connection(sock=sock)
    log.info("%s port-forward to localhost:%d", spec.resource_name, port)
    await link.send("started", pid=0)

    ended = False

    async def down() -> None:
        nonlocal ended
        while chunk := await reader.read(MAX_CHUNK):
            await link.send_data("out", chunk)
        ended = True
        await link.send("exit", code=0)

    async def up() -> None:
        while True:
            frame = await link.recv()
            if frame.kind == "in":
                writer.write(frame.data)
                await writer.drain()
                await link.consumed(len(frame.data))
            elif frame.kind == "eof" and writer.can_write_eof():
                writer.write_eof()
            elif frame.kind in ("close", "kill"):
                return

    tasks = [asyncio.create_task(down()), asyncio.create_task(up())]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            if task.done() and not task.cancelled():
                with contextlib.suppress(LinkLost, KledError, ConnectionError):
                    task.result()
    finally:
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, KledError, ConnectionError):
                await task
        if not ended:  # the connection broke, or the control plane hung up: say so
            with contextlib.suppress(KledError):
                await link.send("exit", code=0)
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
