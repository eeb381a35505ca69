"""``kled ws up git@host:repo.git``: the laptop's SSH agent forwarded for the node's clone.

While ``up`` waits, a thread waits for the workspace to be placed, then opens its
``agent`` stream through the API and relays each connection the node's clone makes to
``$SSH_AUTH_SOCK`` (``workspace/agentrelay.py``). It ends when ``up`` stops waiting; the
node stops using it once the clone is done. Without ``$SSH_AUTH_SOCK`` nothing is
forwarded (a public repository needs none).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import threading
from collections.abc import Callable

from kled.cli.output import warn
from kled.cli.state import STATE
from kled.errors import KledError
from kled.workspace import agentrelay

_SSH_URL = ("ssh://",)


def wanted(source: str) -> bool:
    """An SSH git URL (``ssh://…`` or scp-like ``user@host:path``) and an agent here."""
    ssh = source.startswith(_SSH_URL) or ("@" in source.split(":", 1)[0] and "://" not in source)
    sock = os.environ.get("SSH_AUTH_SOCK") or ""
    return ssh and bool(sock) and os.path.exists(sock)


def forward(team: str, name: str) -> Callable[[], None]:
    """Start forwarding; returns what stops it."""
    stop = threading.Event()
    sock = os.environ["SSH_AUTH_SOCK"]

    def run() -> None:
        try:
            asyncio.run(_relay(team, name, sock, stop))
        except (KledError, OSError) as e:
            if not stop.is_set():
                warn(f"the SSH agent could not be forwarded for the clone: {e}")

    thread = threading.Thread(target=run, name="ws-ssh-agent", daemon=True)
    thread.start()

    def end() -> None:
        stop.set()
        thread.join(3.0)

    return end


async def _placed(team: str, name: str, stop: threading.Event) -> bool:
    path = f"/api/v1/teams/{team}/workspaces/{name}"
    with STATE.client() as client:
        while not stop.is_set():
            doc = await asyncio.to_thread(client.get, path)
            if (doc.get("status") or {}).get("node"):
                return True
            await asyncio.sleep(0.3)
    return False


async def _relay(team: str, name: str, sock: str, stop: threading.Event) -> None:
    from kled.cli.exec import endpoint
    from kled.cli.exec_client import open_exec

    if not await _placed(team, name, stop):
        return
    route = f"/api/v1/teams/{team}/workspaces/{name}/agent"
    stream = await open_exec(endpoint(), team, "", name, ["ssh-agent"], route=route)
    relay = asyncio.create_task(agentrelay.client_relay(stream.stdout, stream.write, sock))
    try:
        while not stop.is_set() and not relay.done():
            await asyncio.sleep(0.2)
    finally:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError, KledError, OSError):
            await relay
        with contextlib.suppress(KledError, OSError):
            await stream.close()
