"""``kled device join|register|config|list|leave|revoke``: a laptop or phone on the mesh.

The private key is made here, on the device, and kept in the user's data folder
(``$XDG_DATA_HOME/kled/devices/<team>/<name>.key``, mode 0600); only its public key is
registered, in a ``Device`` owned by the current user. ``join`` (root) brings the WireGuard
interface up with the configuration the control plane serves
(``GET /teams/{team}/devices/{name}/wireguard``) and points the resolver at the team's DNS;
``config`` prints the same as a ``wg-quick`` file for any ordinary WireGuard client, for a
device registered before (``register`` makes the key and the Device without joining);
``config`` never creates a device, so a mistyped name is an error, not a new peer.
A joined interface keeps the peers of that moment: ``sync`` (root) brings it in line with
the team's current peers, and ``join --follow`` stays in the foreground applying each
change the control plane streams (``GET .../wireguard/watch``), a whole config again after
any reconnection; both change only what differs, with one ``wg set``.
``revoke`` (an admin) deletes the device, which removes it from every peer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Annotated, Any

import typer

from kled.agent.net import device as net
from kled.agent.net import liveness, wireguard
from kled.cli.client import Client, WatchEvent
from kled.cli.output import align, check_format, note, out, show, warn
from kled.cli.state import STATE, TeamOption
from kled.errors import Forbidden, InvalidInput, NotFound, Unavailable
from kled.resources.netstate import Peer

app = typer.Typer(no_args_is_help=True)

#: how long ``join``/``config`` wait for a new device's mesh address
ADDRESS_WAIT = 15.0


def key_file(team: str, name: str, data_home: str | None = None) -> Path:
    base = data_home or os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "kled" / "devices" / team / f"{name}.key"


def interface_name(team: str, name: str, data_home: str | None = None) -> str:
    """The device's WireGuard interface on this machine, named for its key file.

    wireguard-go's control sockets live in ``/var/run/wireguard``, one folder for every
    namespace of the machine: two users (or two homes) joining a device called ``laptop``
    of a team called ``a`` must not get one name, or the second join stops the first
    one's wireguard-go."""
    return net.device_ifname(team, name, scope=str(key_file(team, name, data_home)))


def _interfaces_here(team: str, name: str) -> list[str]:
    """Where a join from here may have put the device: its name now, then the one of
    Kled before 2026-12 (named for the team and device only), so such a device can still
    be synced and taken down."""
    return [interface_name(team, name), net.device_ifname(team, name)]


def _path(team: str, name: str = "") -> str:
    return f"/api/v1/teams/{team}/devices" + (f"/{name}" if name else "")


def register(client: Client, team: str, name: str, kind: str, *, create: bool = True) -> str:
    """Make sure the Device exists with this machine's public key; return the public key.
    With ``create=False`` a device that does not exist is bad input, and nothing is made."""
    try:
        current: dict[str, Any] | None = client.get(_path(team, name))
    except NotFound:
        current = None
    if current is None and not create:
        raise InvalidInput(
            f"device/{name} not found in team {team}: register it with "
            f"`sudo kled device join {name}` (see `kled device list`)",
            field="NAME",
        )
    _, public = net.local_keypair(key_file(team, name))
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
    client: Client,
    team: str,
    name: str,
    *,
    wait_for_peers: bool = False,
    warn_no_peers: bool = True,
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
            if not config.get("peers") and warn_no_peers:
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


def _short(peer_id: str) -> str:
    """``acme/node/n1`` → ``node/n1``: the team is the device's own."""
    _, kind, rest = peer_id.split("/", 2) if peer_id.count("/") >= 2 else ("", "", "")
    return f"{kind}/{rest}" if kind in ("node", "device") else peer_id


def describe_changes(
    name: str, changes: wireguard.PeerChanges, names: dict[str, str] | None = None
) -> str:
    """``device/laptop: 1 peer added, 0 removed (+node/n2)``; ``names`` maps keys to ids."""

    def called(key: str) -> str:
        peer_id = (names or {}).get(key)
        return _short(peer_id) if peer_id else f"{key[:8]}…"

    added, removed, updated = changes.added, changes.removed, changes.updated
    line = f"device/{name}: {len(added)} peer{'' if len(added) == 1 else 's'} added"
    line += f", {len(removed)} removed"
    if updated:
        line += f", {len(updated)} updated"
    which = [
        *(f"+{called(k)}" for k in added),
        *(f"-{called(k)}" for k in removed),
        *(f"~{called(k)}" for k in updated),
    ]
    return line + (f" ({', '.join(which)})" if which else "")


def _peer_names(*peer_sets: list[dict[str, Any]]) -> dict[str, str]:
    """Public key → peer id, over the configs' peer lists (later ones win)."""
    return {
        str(p["publicKey"]): str(p["id"])
        for peers in peer_sets
        for p in peers
        if p.get("publicKey") and p.get("id")
    }


def _interface_of(team: str, name: str) -> str:
    """The device's interface here; bad input (exit 2) when it was not joined here."""
    found = [i for i in _interfaces_here(team, name) if os.path.exists(f"/sys/class/net/{i}")]
    ifname = found[0] if found else interface_name(team, name)
    if not found:
        raise InvalidInput(
            f"device/{name} of team {team} is not joined on this machine (no interface "
            f"{ifname}): run `kled device join {name}` first"
        )
    return ifname


def _apply(team: str, name: str, ifname: str, config: dict[str, Any]) -> wireguard.PeerChanges:
    dev = device_network(team, name, config)
    try:
        return asyncio.run(net.sync(dev, ifname=ifname))
    except NotFound:
        raise NotFound(
            f"device/{name}: its interface {ifname} is gone from this machine: "
            f"run `kled device join {name}` again"
        ) from None


def _apply_delta(peers: dict[str, dict[str, Any]], delta: dict[str, Any]) -> None:
    """A ``delta`` event on the peers by id: removed first, then added, then updated."""
    for peer_id in delta.get("removed") or []:
        peers.pop(str(peer_id), None)
    for peer in [*(delta.get("added") or []), *(delta.get("updated") or [])]:
        peers[str(peer.get("id") or peer["publicKey"])] = peer


def _device_events(
    client: Client, team: str, name: str, ifname: str, on_retry: Callable[[str], None]
) -> Iterator[WatchEvent]:
    try:
        yield from client.watch(f"{_path(team, name)}/wireguard/watch", on_retry=on_retry)
    except NotFound as e:
        raise NotFound(
            f"device/{name} is no longer in team {team} ({e}); its interface {ifname} stays"
            f" up until `kled device leave {name}`"
        ) from None


def follow(client: Client, team: str, name: str, ifname: str) -> None:
    """Apply the device's peer changes as the control plane streams them, until Ctrl-C;
    one line per change. A reconnection starts with a whole config, so nothing missed
    while away is lost. The interface stays up when this stops."""
    note(f"following device/{name}'s peers (Ctrl-C stops; the interface stays up)")
    config: dict[str, Any] | None = None
    peers: dict[str, dict[str, Any]] = {}
    lost = False

    def on_retry(why: str) -> None:
        nonlocal lost
        if not lost:
            warn(f"device/{name}: {why}; reconnecting (the interface keeps its peers)")
        lost = True

    try:
        for event in _device_events(client, team, name, ifname, on_retry):
            if lost:
                note(f"device/{name}: reconnected")
                lost = False
            before = list(peers.values())
            if event.type == "config":
                config = event.object
                peers = {str(p.get("id") or p["publicKey"]): p for p in config.get("peers") or []}
            elif event.type == "delta" and config is not None:
                _apply_delta(peers, event.object)
            else:
                continue
            current = list(peers.values())
            changes = _apply(team, name, ifname, {**config, "peers": current})
            if changes:
                out(describe_changes(name, changes, _peer_names(before, current)))
    except KeyboardInterrupt:
        note(f"device/{name}: stopped following; {ifname} stays up with its peers")


KindOption = Annotated[str, typer.Option("--kind", help="laptop, phone, workspace or server.")]
FollowOption = Annotated[
    bool,
    typer.Option(
        "--follow",
        "-f",
        help="Stay in the foreground and apply the team's peer changes as they happen "
        "(nodes joining, leaving, moving); Ctrl-C stops, the interface stays up.",
    ),
]


@app.command()
def join(
    name: str, kind: KindOption = "laptop", team: TeamOption = None, follow_: FollowOption = False
) -> None:
    """Join this machine to the team mesh as device NAME (needs root)."""
    if os.geteuid() != 0:
        raise Forbidden("joining needs root (it creates a network interface): use sudo")
    chosen_team = STATE.team_for(team)
    with STATE.client() as client:
        register(client, chosen_team, name, kind)
        # A follower hears of nodes as they come: no need to wait for one.
        config = mesh_config(
            client, chosen_team, name, wait_for_peers=not follow_, warn_no_peers=not follow_
        )
        dev = device_network(chosen_team, name, config)
        ifname = interface_name(chosen_team, name)
        asyncio.run(net.bring_up(dev, ifname=ifname))
        out(f"device/{name} joined team {chosen_team} as {dev.ip} on {ifname}, routing {dev.block}")
        if dev.dns and config.get("zone"):
            setup = asyncio.run(net.configure_resolver(ifname, dev.dns, [str(config["zone"])]))
            (out if setup.applied else note)(setup.message)
        if follow_:
            follow(client, chosen_team, name, ifname)


@app.command()
def sync(name: str, team: TeamOption = None) -> None:
    """Bring device NAME's interface up to date with the team's peers (needs root).

    The device must have been joined on this machine (`kled device join NAME`). Prints what
    changed; `kled device join NAME --follow` keeps it up to date instead.
    """
    chosen_team = STATE.team_for(team)
    ifname = _interface_of(chosen_team, name)
    if os.geteuid() != 0:
        raise Forbidden(f"changing {ifname} needs root: use sudo")
    with STATE.client() as client:
        config = mesh_config(client, chosen_team, name)
    changes = _apply(chosen_team, name, ifname, config)
    out(describe_changes(name, changes, _peer_names(config.get("peers") or [])))


@app.command("register")
def register_device(name: str, kind: KindOption = "laptop", team: TeamOption = None) -> None:
    """Register device NAME with a key made on this machine, without joining (no root): for
    a WireGuard client configured with `kled device config NAME`."""
    chosen_team = STATE.team_for(team)
    with STATE.client() as client:
        register(client, chosen_team, name, kind)
    out(f"device/{name} is registered: `kled device config {name}` prints its wg-quick file")


@app.command()
def config(name: str, team: TeamOption = None) -> None:
    """Print a wg-quick file for device NAME (its private key stays on this machine).

    NAME must be registered (`kled device register NAME` or `join`): config creates nothing.
    """
    chosen_team = STATE.team_for(team)
    with STATE.client() as client:
        register(client, chosen_team, name, "laptop", create=False)
        config_doc = mesh_config(client, chosen_team, name)
    dev = device_network(chosen_team, name, config_doc)
    private, _ = net.local_keypair(key_file(chosen_team, name))
    out(net.render_wg_quick(dev, private).rstrip("\n"))
    if dev.dns and net.dns_host_port(dev.dns)[1] != 53:
        warn(net.wg_quick_dns_note(dev.dns))


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
    for ifname in _interfaces_here(chosen_team, name):
        if not os.path.exists(f"/sys/class/net/{ifname}"):
            continue
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
