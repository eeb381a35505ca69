"""Interfaces, addresses and routes inside network namespaces, through ``ip -j``.

Why ``ip`` (iproute2) rather than pyroute2: the agent is asyncio and pyroute2's namespace
support forks helper processes and blocks; ``ip -n NS`` enters a namespace per call with no
state to leak, its JSON output is stable, and every step can be replayed by hand when a
host misbehaves. Each function is idempotent so a reconciler can call it on every pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from kled.agent.net.command import run
from kled.errors import Conflict, InvalidInput, NotFound

log = logging.getLogger(__name__)

#: Linux's limit on interface names (IFNAMSIZ - 1)
MAX_IFNAME = 15


def check_ifname(name: str) -> str:
    if not name or len(name) > MAX_IFNAME or "/" in name or " " in name:
        raise InvalidInput(f"{name!r} is not a valid interface name (1-15 chars)", field="ifname")
    return name


def _ns(netns: str | None) -> list[str]:
    return ["ip", "-n", netns] if netns else ["ip"]


async def link(netns: str | None, name: str) -> dict[str, Any] | None:
    """The interface as ``ip -j link show`` reports it, or None when absent."""
    check_ifname(name)
    try:
        out = await run([*_ns(netns), "-j", "link", "show", "dev", name])
    except NotFound:
        return None
    entries: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return entries[0] if entries else None


async def exists(netns: str | None, name: str) -> bool:
    return await link(netns, name) is not None


async def set_up(netns: str | None, name: str) -> None:
    await run([*_ns(netns), "link", "set", "dev", name, "up"])


async def delete(netns: str | None, name: str) -> None:
    try:
        await run([*_ns(netns), "link", "delete", "dev", name])
    except NotFound:
        return


async def ensure_bridge(netns: str | None, name: str) -> None:
    check_ifname(name)
    if not await exists(netns, name):
        with contextlib.suppress(Conflict):
            await run([*_ns(netns), "link", "add", "name", name, "type", "bridge"])
    await set_up(netns, name)


async def ensure_veth(netns: str | None, name: str, peer_netns: str | None, peer_name: str) -> bool:
    """A veth pair ``name`` (in ``netns``) ↔ ``peer_name`` (in ``peer_netns``), both up.

    True when created now. A half-present pair (one end lost with its namespace) is removed
    and recreated, since a veth end never exists alone.
    """
    check_ifname(name)
    check_ifname(peer_name)
    here = await exists(netns, name)
    there = await exists(peer_netns, peer_name)
    created = False
    if not (here and there):
        if here:
            await delete(netns, name)
        if there:
            await delete(peer_netns, peer_name)
        argv = [*_ns(netns), "link", "add", "name", name, "type", "veth", "peer", "name"]
        argv.append(peer_name)
        if peer_netns:
            argv += ["netns", peer_netns]
        await run(argv)
        created = True
    await set_up(netns, name)
    await set_up(peer_netns, peer_name)
    return created


async def set_master(netns: str | None, name: str, bridge: str) -> None:
    await run([*_ns(netns), "link", "set", "dev", name, "master", bridge])


async def move(netns: str | None, name: str, to_netns: str) -> None:
    await run([*_ns(netns), "link", "set", "dev", name, "netns", to_netns])


async def rename(netns: str | None, name: str, new_name: str) -> None:
    check_ifname(new_name)
    await run([*_ns(netns), "link", "set", "dev", name, "down"])
    await run([*_ns(netns), "link", "set", "dev", name, "name", new_name])


async def addresses(netns: str | None, name: str) -> list[str]:
    """The IPv4 addresses of an interface as CIDR strings."""
    out = await run([*_ns(netns), "-j", "-4", "addr", "show", "dev", name])
    entries: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return [
        f"{a['local']}/{a['prefixlen']}"
        for e in entries
        for a in e.get("addr_info", [])
        if a.get("family") == "inet"
    ]


async def set_addresses(netns: str | None, name: str, wanted: list[str]) -> None:
    """Make ``wanted`` the interface's exact set of IPv4 addresses."""
    have = await addresses(netns, name)
    for cidr in have:
        if cidr not in wanted:
            await run([*_ns(netns), "addr", "del", cidr, "dev", name])
    for cidr in wanted:
        if cidr not in have:
            await run([*_ns(netns), "addr", "replace", cidr, "dev", name])


async def replace_route(
    netns: str | None, dst: str, *, dev: str, via: str | None = None, src: str | None = None
) -> None:
    argv = [*_ns(netns), "route", "replace", dst]
    if via:
        argv += ["via", via]
    argv += ["dev", dev]
    if src:
        argv += ["src", src]
    await run(argv)


async def routes(netns: str | None) -> list[dict[str, Any]]:
    out = await run([*_ns(netns), "-j", "-4", "route", "show"])
    parsed: list[dict[str, Any]] = json.loads(out) if out.strip() else []
    return parsed
