"""``kled device join|config|list|leave|revoke``: this machine (or a phone) on the team mesh.

The private key is made here, on the device, and kept in the user's data folder
(``$XDG_DATA_HOME/kled/devices/<team>/<name>.key``, mode 0600); only its public key is
registered, in a ``Device`` owned by the current user. ``join`` (root) brings the WireGuard
interface up with the configuration the control plane serves
(``GET /teams/{team}/devices/{name}/wireguard``) and points the resolver at the team's DNS;
``config`` prints the same as a ``wg-quick`` file for any ordinary WireGuard client.
``revoke`` (an admin) deletes the device, which removes it from every peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from kled.agent.net import device as net
from kled.agent.net import liveness
from kled.cli.client import Client
from kled.cli.output import align, check_format, note, out, show, warn
from kled.cli.state import STATE, TeamOption
from kled.errors import Forbidden, InvalidInput, NotFound, Unavailable
from kled.resources.netstate import Peer

app = typer.Typer(no_args_is_help=True)

#: how long ``join``/``config`` wait for a new device's mesh address
ADDRESS_WAIT = 15.0


def key_file(team: str, name: str) -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kled" / "devices" / team / f"{name}.key"


def _path(team: str, name: str = "") -> str:
    return f"/api/v1/teams/{team}/devices" + (f"/{name}" if name else "")


def register(client: Client, team: str, name: str, kind: str) -> str:
    """Make sure the Device exists with this machine's public key; return the public key."""
    _, public = net.local_keypair(key_file(team, name))
    try:
        current: dict[str, Any] | None = client.get(_path(team, name))
    except NotFound:
        current = None
    if current is None:
        who = client.get("/api/v1/whoami")
        doc = {
            "apiVersion": "kled.io/v1",
            "kind": "Device",
            "metadata": {"name": name, "team": team},
            "spec": {"owner": who["username"], "publicKey": public, "kind": kind},
        }
        client.post(_path(team), doc)
        note(f"device/{name} registered with this machine's public key")
    elif (current.get("spec") or {}).get("publicKey") != public:
        # A new local key (another machine, or a lost key file): the old one stops working.
        current["spec"]["publicKey"] = public
        current.pop("status", None)
        client.put(_path(team, name), current)
        note(f"device/{name} now uses this machine's public key")
    return public


def mesh_config(
    client: Client, team: str, name: str, *, wait_for_peers: bool = False
) -> dict[str, Any]:
    """The device's mesh configuration, waiting briefly for a new device's address (and,
    for ``join``, for a node to peer with: an interface without peers reaches nothing)."""
    deadline = time.monotonic() + ADDRESS_WAIT
    while True:
        try:
            config: dict[str, Any] = client.get(f"{_path(team, name)}/wireguard")
        except Unavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
            continue
        # A team whose nodes have not reported their keys yet has no peers to offer.
        if config.get("peers") or not wait_for_peers or time.monotonic() > deadline:
            if not config.get("peers"):
                warn(f"team {team} has no node with a WireGuard key yet: run this again later")
            return config
        time.sleep(0.5)


def device_network(team: str, name: str, config: dict[str, Any]) -> net.DeviceNetwork:
    return net.DeviceNetwork(
        team=team,
        name=name,
        address=str(config["address"]),
        block=str(config["block"]),
        peers=tuple(
            Peer(
                public_key=p["publicKey"],
                endpoint=p.get("endpoint"),
                allowed_ips=tuple(p.get("allowedIPs") or ()),
                # The gateways judge a device offline after a silence (liveness.py):
                # an idle device must still send something to every node.
                persistent_keepalive=min(
                    p.get("persistentKeepalive") or liveness.DEVICE_KEEPALIVE,
                    liveness.DEVICE_KEEPALIVE,
                ),
            )
            for p in config.get("peers") or []
        ),
        private_key_file=str(key_file(team, name)),
        dns=config.get("dns"),
        search_domains=tuple(config.get("searchDomains") or ()),
    )


KindOption = Annotated[str, typer.Option("--kind", help="laptop, phone, workspace or server.")]


@app.command()
def join(name: str, kind: KindOption = "laptop", team: TeamOption = None) -> None:
    """Join this machine to the team mesh as device NAME (needs root)."""
    if os.geteuid() != 0:
        raise Forbidden("joining needs root (it creates a network interface): use sudo")
    chosen_team = STATE.team_for(team)
    with STATE.client() as client:
        register(client, chosen_team, name, kind)
        config = mesh_config(client, chosen_team, name, wait_for_peers=True)
    dev = device_network(chosen_team, name, config)
    ifname = net.device_ifname(chosen_team, name)
    asyncio.run(net.bring_up(dev, ifname=ifname))
    out(f"device/{name} joined team {chosen_team} as {dev.ip} on {ifname}, routing {dev.block}")
    if dev.dns and config.get("zone"):
        setup = asyncio.run(net.configure_resolver(ifname, dev.dns, [str(config["zone"])]))
        (out if setup.applied else note)(setup.message)


@app.command()
def config(name: str, kind: KindOption = "laptop", team: TeamOption = None) -> None:
    """Print a wg-quick file for device NAME (its private key stays on this machine)."""
    chosen_team = STATE.team_for(team)
    with STATE.client() as client:
        register(client, chosen_team, name, kind)
        config_doc = mesh_config(client, chosen_team, name)
    dev = device_network(chosen_team, name, config_doc)
    private, _ = net.local_keypair(key_file(chosen_team, name))
    out(net.render_wg_quick(dev, private).rstrip("\n"))


@app.command("list")
def list_devices(
    output: Annotated[str, typer.Option("--output", "-o", help="table, yaml or json.")] = "table",
    team: TeamOption = None,
) -> None:
    """The devices of the team."""
    check_format(output)
    chosen_team = STATE.team_for(team)
    with STATE.client() as client:
        docs = client.list_all(_path(chosen_team))
    if output not in ("table", "wide"):
        out(show("Device", docs, output, single=False))
        return
    if not docs:
        note(f"no devices in team {chosen_team}")
        return
    rows = [["NAME", "OWNER", "KIND", "IP", "LOCAL-KEY"]]
    for doc in docs:
        spec, status = doc.get("spec") or {}, doc.get("status") or {}
        here = key_file(chosen_team, doc["metadata"]["name"]).exists()
        rows.append(
            [
                doc["metadata"]["name"],
                str(spec.get("owner") or "-"),
                str(spec.get("kind") or "-"),
                str(status.get("ip") or "-"),
                "yes" if here else "no",
            ]
        )
    out(align(rows))


@app.command()
def leave(name: str, team: TeamOption = None) -> None:
    """Take this machine off the mesh: interface down, device deleted, local key removed."""
    chosen_team = STATE.team_for(team)
    ifname = net.device_ifname(chosen_team, name)
    if os.path.exists(f"/sys/class/net/{ifname}"):
        if os.geteuid() != 0:
            raise Forbidden(f"taking {ifname} down needs root: use sudo")
        asyncio.run(net.bring_down(ifname))
    with STATE.client() as client, contextlib.suppress(NotFound):
        client.delete(_path(chosen_team, name))
    key_file(chosen_team, name).unlink(missing_ok=True)
    out(f"device/{name} left team {chosen_team}")


@app.command()
def revoke(name: str, team: TeamOption = None) -> None:
    """Remove a device from the team (admins): every peer forgets it."""
    chosen_team = STATE.team_for(team)
    if not name:
        raise InvalidInput("a device name is required", field="NAME")
    with STATE.client() as client:
        try:
            client.delete(_path(chosen_team, name))
        except NotFound:
            raise NotFound(
                f"device/{name} not found in team {chosen_team}: see `kled device list`"
            ) from None
    out(f"device/{name} revoked: removed from every peer of team {chosen_team}")
