"""A direct SSH port in each running workspace: ``ssh -p 2222 ANYNAME@<its address>``.

``kled ws proxy`` reaches a workspace through the API from anywhere; a device on the team
mesh can also connect straight to the workspace's own address (its pod IP,
``<ws>.<team>.<zone>``). The agent listens on ``WS_SSH_PORT`` inside the workspace's
network namespace (a thread that joined ``/proc/PID/ns/net`` of its container makes the
socket, so it is the workspace's port, not the node's) and serves each connection with
the same one-connection server as the proxy's (``agent/wsssh.py``, its stdin and stdout
the accepted socket). That server accepts only the keys of the users allowed on the
workspace (its owner and the team's admins: ``WorkspaceOnHost.authorized_keys``, which the
control plane keeps current), read when the connection comes, so a removed key stops
working without a restart. The user name is not looked at: sessions run as remoteUser.

:class:`SshPorts` keeps one listener per running container (a new container, a new
network namespace: a new listener) and closes the others.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import threading
from collections.abc import Awaitable, Callable

from kled.agent import wsenter

log = logging.getLogger(__name__)

#: the port of a workspace's own SSH server, in its network namespace
WS_SSH_PORT = 2222

#: wid → the ``wsssh`` argv with the workspace's allowed keys (None: not served now)
Planner = Callable[[str], Awaitable["list[str] | None"]]
#: wid → its container's main process
PidOf = Callable[[str], Awaitable[int]]


def listen_inside(pid: int, port: int) -> socket.socket:
    """A listening TCP socket in the network namespace of process ``pid``."""
    result: list[socket.socket | BaseException] = []

    def run() -> None:
        try:
            wsenter.join_net(pid)
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(("0.0.0.0", port))
            sock.listen(16)
            sock.setblocking(False)
            result.append(sock)
        except BaseException as err:  # handed to the caller
            result.append(err)

    worker = threading.Thread(target=run, name="kled-ws-listen", daemon=True)
    worker.start()
    worker.join()
    if isinstance(result[0], BaseException):
        raise result[0]
    return result[0]


class SshPorts:
    def __init__(self, plan: Planner, pid_of: PidOf, port: int = WS_SSH_PORT) -> None:
        self.plan = plan
        self.pid_of = pid_of
        self.port = port
        #: wid → (the start it listens for, listening socket, accept task)
        self._open: dict[str, tuple[int, socket.socket, asyncio.Task[None]]] = {}
        self._children: set[asyncio.Task[None]] = set()
        #: wid → the start whose listener could not be made (not tried again for it)
        self._failed: dict[str, int] = {}

    async def sync(self, running: dict[str, int]) -> None:
        """Listen in exactly the workspaces of ``running``: wid → which start of its
        container it is (another number: a new container, a new listener)."""
        for wid, (start, sock, task) in list(self._open.items()):
            if running.get(wid) != start:
                task.cancel()
                sock.close()
                del self._open[wid]
        for wid, start in running.items():
            if wid in self._open or self._failed.get(wid) == start:
                continue
            try:
                pid = await self.pid_of(wid)
                sock = await asyncio.to_thread(listen_inside, pid, self.port)
            except Exception as err:  # one workspace's port must not end the runner's loop
                log.warning("workspace %s: no SSH port %s: %s", wid, self.port, err)
                self._failed[wid] = start
                continue
            task = asyncio.create_task(self._accept(wid, sock), name=f"ws-ssh {wid}")
            self._open[wid] = (start, sock, task)

    async def _accept(self, wid: str, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            conn, _ = await loop.sock_accept(sock)
            child = asyncio.create_task(self._serve(wid, conn))
            self._children.add(child)
            child.add_done_callback(self._children.discard)

    async def _serve(self, wid: str, conn: socket.socket) -> None:
        try:
            argv = await self.plan(wid)
            if argv is None:
                log.info("workspace %s: SSH connection closed: not running or no keys", wid)
                return
            conn.setblocking(True)
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=conn.fileno(), stdout=conn.fileno()
            )
        except OSError as err:
            log.warning("workspace %s: SSH connection not served: %s", wid, err)
            return
        finally:
            conn.close()  # the server holds its own copy
        await proc.wait()

    async def close(self) -> None:
        await self.sync({})
        for child in list(self._children):
            child.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await child
