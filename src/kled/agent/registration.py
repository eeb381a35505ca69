"""Joining a node to a Kled server, once, and remembering it.

The only HTTP call the agent makes: ``POST {server}/api/v1/nodes/register`` with a join
token, the node's name, labels, capacity and capabilities. The answer carries the NATS
URL and the per-node credentials; it is saved in the data dir (mode 0600) so a restarted
agent reuses it instead of registering again. ``kled agent`` registers with
:func:`register_waiting`: a server it cannot reach yet is tried again, a refusal is final.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from pathlib import Path

import httpx
from pydantic import BaseModel

from kled.errors import Forbidden, InvalidInput, KledError, Unauthorized, Unavailable
from kled.resources.hoststate import Capacity

_FILE = "registration.json"

log = logging.getLogger(__name__)


class Registration(BaseModel):
    node: str
    nats_url: str
    nats_user: str
    nats_password: str
    server_url: str = ""


def load_registration(data_dir: str | Path) -> Registration | None:
    path = Path(data_dir) / _FILE
    if not path.exists():
        return None
    return Registration.model_validate_json(path.read_text())


def save_registration(data_dir: str | Path, reg: Registration) -> None:
    path = Path(data_dir) / _FILE
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(reg.model_dump_json(indent=2))
    os.replace(tmp, path)


async def register(
    server_url: str,
    join_token: str,
    name: str,
    labels: dict[str, str],
    *,
    capacity: Capacity,
    capabilities: list[str],
    data_dir: str | Path | None = None,
    timeout: float = 10.0,
) -> Registration:
    """Register this host as node ``name``; reuses a saved registration for that name."""
    if data_dir is not None:
        saved = load_registration(data_dir)
        if saved is not None and saved.node == name:
            return saved
    body = {
        "token": join_token,
        "name": name,
        "labels": labels,
        "capacity": capacity.model_dump(),
        "capabilities": capabilities,
    }
    url = server_url.rstrip("/") + "/api/v1/nodes/register"
    try:
        async with httpx.AsyncClient(timeout=timeout) as client:
            resp = await client.post(url, json=body)
    except httpx.HTTPError as err:
        raise Unavailable(f"cannot reach the Kled server at {server_url}: {err}") from err
    if resp.status_code >= 400:
        raise _error(resp)
    reg = Registration.model_validate({**resp.json(), "server_url": server_url})
    if data_dir is not None:
        save_registration(data_dir, reg)
    return reg


async def register_waiting(
    server_url: str,
    join_token: str,
    name: str,
    labels: dict[str, str],
    *,
    capacity: Capacity,
    capabilities: list[str],
    data_dir: str | Path | None = None,
    first_delay: float = 1.0,
    max_delay: float = 30.0,
) -> Registration:
    """:func:`register`, again and again while the server cannot answer (down, restarting,
    or too busy to answer in time), as a kubelet waits to register, each wait twice the
    last up to ``max_delay``; a refusal (bad token, bad name) is raised at once."""
    delay = first_delay
    while True:
        try:
            return await register(
                server_url, join_token, name, labels,
                capacity=capacity, capabilities=capabilities, data_dir=data_dir,
            )  # fmt: skip
        except Unavailable as err:
            log.warning("node/%s: %s; registering again in %.0fs", name, err, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, max_delay)


def _error(resp: httpx.Response) -> KledError:
    try:
        detail = json.loads(resp.text).get("message") or resp.text
    except (ValueError, AttributeError):
        detail = resp.text
    text = f"registration refused ({resp.status_code}): {detail}"
    if resp.status_code == 401:
        return Unauthorized(f"{text}; create a new token with `kled node token create`")
    if resp.status_code == 403:
        return Forbidden(text)
    if resp.status_code in (400, 409, 422):
        return InvalidInput(text, field="name" if resp.status_code == 409 else None)
    return Unavailable(text)
