"""The ``kled`` CLI logged in inside a workspace: its owner's token, asked for by the agent.

When the agent makes a workspace's container (or sandbox) it asks the control plane for a
new token of the workspace's owner (``api/wstokens.py``) and puts it in the container's
environment with the URL the agent itself reached the API at and the team:
``KLED_SERVER``, ``KLED_TEAM``, ``KLED_TOKEN``, which the CLI reads. The values travel as
``containerEnv`` does: in an env file (0600) removed once the container is created, never
on a command line; the engine keeps them in its own storage, and ``podman exec`` sessions
and hooks inherit them. A workspace without an owner gets the server and team only.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from kled.resources.workspacestate import WorkspaceOnHost

#: the names the CLI reads (``cli/main.py``'s envvars)
SERVER = "KLED_SERVER"
TEAM = "KLED_TEAM"
TOKEN = "KLED_TOKEN"


async def login_env(
    server_url: str,
    node: str,
    auth: tuple[str, str],
    ws: WorkspaceOnHost,
    say: Callable[[str], None],
) -> dict[str, str]:
    """``KLED_SERVER``, ``KLED_TEAM`` and (with an owner) ``KLED_TOKEN`` for ``ws``. A
    token the control plane does not give (an older server, an external NATS: no node
    login) is said and left out: the workspace runs without it."""
    if not server_url:
        return {}
    base = server_url.rstrip("/")
    env = {SERVER: base, TEAM: ws.team}
    url = f"{base}/api/v1/nodes/{node}/workspace-tokens/{ws.team}/{ws.name}"
    try:
        async with httpx.AsyncClient(timeout=30) as client:
            response = await client.post(url, auth=auth)
    except httpx.HTTPError as e:
        say(f"no token for the kled CLI inside: {e}")
        return env
    if response.status_code != 200:
        say(f"no token for the kled CLI inside ({response.status_code}): {response.text[:200]}")
        return env
    token = response.json().get("token")
    if token:
        env[TOKEN] = str(token)
    return env


def without_token(env: dict[str, str]) -> dict[str, str]:
    """``env`` without ``KLED_TOKEN`` (a session's env file, kept on disk, must not hold it:
    sessions get it from the container's own environment)."""
    return {k: v for k, v in env.items() if k != TOKEN}
