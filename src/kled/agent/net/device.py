"""What ``kled device join`` and ``kled device config`` do on the device's own machine.

A device (a laptop, a workspace) is a WireGuard peer of its team's nodes. Its private key is
generated here, on the device, and never leaves it: only the public key is registered with
the control plane. ``bring_up`` starts the interface with ``wireguard-go`` (and a route for
the whole team block), ``sync`` brings an interface that is up in line with a newer
configuration by changing only what differs (``wireguard.plan_peers``), ``render_wg_quick`` writes
the same thing as a standard ``wg-quick`` file for any ordinary WireGuard client, and
``configure_resolver`` points the machine's resolver for the team zone at Kled's DNS —
through systemd-resolved when it runs, otherwise by returning instructions for the user.
"""

from __future__ import annotations

import base64
import ipaddress
import logging
import os
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from kled.agent.net import links, wireguard
from kled.agent.net.command import run
from kled.errors import InvalidInput, NotFound
from kled.resources.netstate import Peer

log = logging.getLogger(__name__)

RESOLVED_RUN_DIR = "/run/systemd/resolve"


@dataclass(frozen=True)
class DeviceNetwork:
    """A device's side of the team mesh."""

    team: str
    name: str
    #: the device's mesh address (a /32)
    address: str
    #: the team block, routed through the interface
    block: str
    peers: tuple[Peer, ...]
    private_key_file: str
    listen_port: int | None = None
    #: the team's DNS server, "ip" or "ip:port"
    dns: str | None = None
    search_domains: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        try:
            ipaddress.IPv4Address(self.address.split("/")[0])
            ipaddress.IPv4Network(self.block)
        except ValueError as exc:
            raise InvalidInput(str(exc), field="address") from exc

    @property
    def ip(self) -> str:
        return self.address.split("/")[0]


def local_keypair(private_key_file: str | Path) -> tuple[str, str]:
    """The device's (private, public) key, created (mode 0600) unless present.

    Done with ``cryptography``'s X25519 rather than ``wg genkey`` so that ``kled device
    config`` works on a machine without WireGuard tools (a phone's config made on a laptop).
    """
    path = Path(private_key_file)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        raw = X25519PrivateKey.generate().private_bytes(
            Encoding.Raw, PrivateFormat.Raw, NoEncryption()
        )
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another run made it first: use theirs
        else:
            with os.fdopen(fd, "w") as f:
                f.write(base64.b64encode(raw).decode() + "\n")
    private = path.read_text().strip()
    try:
        raw = base64.b64decode(private, validate=True)
        key = X25519PrivateKey.from_private_bytes(raw)
    except ValueError:
        raise InvalidInput(
            f"{path} does not hold a WireGuard private key", field="privateKeyFile"
        ) from None
    public = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return private, base64.b64encode(public).decode()


async def generate_keypair(private_key_file: str | Path) -> str:
    """Create the device's private key (mode 0600) unless present; return its public key."""
    return await wireguard.ensure_private_key(private_key_file)


def device_ifname(team: str, name: str, scope: str = "") -> str:
    """``kd-<hash8>``: unique per machine for (scope, team, device)."""
    return wireguard.interface_name(scope, team, name, prefix="kd-")


async def bring_up(dev: DeviceNetwork, *, ifname: str, netns: str | None = None) -> None:
    """Start (or repair) the device's interface: keys, peers, address, route to the block."""
    if not (wireguard.is_alive(ifname) and await links.exists(netns, ifname)):
        await links.delete(netns, ifname)
        await wireguard.start(ifname, netns)
    await wireguard.configure(
        ifname,
        private_key_file=dev.private_key_file,
        listen_port=dev.listen_port,
        peers=dev.peers,
    )
    await links.set_addresses(netns, ifname, [f"{dev.ip}/32"])
    await links.set_up(netns, ifname)
    await links.replace_route(netns, dev.block, dev=ifname, src=dev.ip)
    log.info("device/%s/%s up on %s", dev.team, dev.name, ifname)


async def bring_down(ifname: str, *, netns: str | None = None) -> None:
    """Remove the interface; wireguard-go exits with it."""
    await links.delete(netns, ifname)
    await wireguard.wait_gone(ifname)


async def set_peers(ifname: str, peers: Sequence[Peer]) -> wireguard.PeerChanges:
    """Make the interface's peers ``peers`` with one ``wg set`` holding only the
    differences: peers that stay unchanged are not touched, so their sessions and learned
    endpoints are kept (``wireguard.configure`` restates every peer instead)."""
    current = await wireguard.status(ifname)
    args, changes = wireguard.plan_peers(current.peers, peers)
    if args:
        await run(["wg", "set", ifname, *args])
    return changes


async def sync(
    dev: DeviceNetwork, *, ifname: str, netns: str | None = None
) -> wireguard.PeerChanges:
    """Bring the device's interface, which must be up, in line with ``dev``: its peers (only
    the differences), its address and the route to the team block."""
    if not (wireguard.is_alive(ifname) and await links.exists(netns, ifname)):
        raise NotFound(f"device/{dev.team}/{dev.name} has no interface {ifname} on this machine")
    changes = await set_peers(ifname, dev.peers)
    await links.set_addresses(netns, ifname, [f"{dev.ip}/32"])
    await links.set_up(netns, ifname)
    await links.replace_route(netns, dev.block, dev=ifname, src=dev.ip)
    if changes:
        log.info(
            "device/%s/%s: peers +%d -%d ~%d on %s",
            dev.team,
            dev.name,
            len(changes.added),
            len(changes.removed),
            len(changes.updated),
            ifname,
        )
    return changes


def dns_host_port(dns: str) -> tuple[str, int]:
    """``ip:port`` (``[v6]:port``) or a bare address (port 53) as (address, port)."""
    host, sep, port = dns.rpartition(":")
    if not sep or not port.isdigit() or (":" in host and not host.startswith("[")):
        return dns.strip("[]"), 53
    return host.strip("[]"), int(port)


def wg_quick_dns_note(dns: str) -> str:
    """Why a wg-quick file has no ``DNS =`` line when the team's DNS is not on port 53."""
    return (
        f"no DNS line: the team's DNS server is at {dns} and wg-quick can only use port 53;"
        " run the server with --dns-listen ADDRESS:53 to have one"
    )


def render_wg_quick(dev: DeviceNetwork, private_key: str) -> str:
    """The device as a standard ``wg-quick`` file (``kled device config``)."""
    lines = ["[Interface]", f"PrivateKey = {private_key}", f"Address = {dev.ip}/32"]
    if dev.listen_port:
        lines.append(f"ListenPort = {dev.listen_port}")
    if dev.dns:
        # wg-quick takes plain addresses and search domains here; a port cannot be given,
        # and a resolver that does not answer on 53 would break every name while up.
        host, port = dns_host_port(dev.dns)
        if port == 53:
            lines.append("DNS = " + ", ".join([host, *dev.search_domains]))
        else:
            lines.append(f"# {wg_quick_dns_note(dev.dns)}")
    for peer in dev.peers:
        lines += ["", "[Peer]", f"PublicKey = {peer.public_key}"]
        if peer.endpoint:
            lines.append(f"Endpoint = {peer.endpoint}")
        lines.append(f"AllowedIPs = {', '.join(peer.allowed_ips)}")
        if peer.persistent_keepalive:
            lines.append(f"PersistentKeepalive = {peer.persistent_keepalive}")
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class ResolverSetup:
    """The outcome of ``configure_resolver``: applied, or what the user should do."""

    applied: bool
    message: str


def _resolved_running() -> bool:
    return shutil.which("resolvectl") is not None and os.path.isdir(RESOLVED_RUN_DIR)


async def configure_resolver(
    ifname: str, dns: str, zones: Sequence[str], *, netns: str | None = None
) -> ResolverSetup:
    """Send queries for the team's zones to Kled's DNS, for this interface only."""
    if not zones:
        raise InvalidInput("at least one zone is needed", field="zones")
    if _resolved_running() and netns is None:
        await run(["resolvectl", "dns", ifname, dns])
        await run(["resolvectl", "domain", ifname, *[f"~{z}" for z in zones]])
        return ResolverSetup(True, f"systemd-resolved sends {', '.join(zones)} to {dns}")
    host, _, port = dns.rpartition(":") if dns.count(":") == 1 else (dns, "", "")
    server = host or dns
    lines = [
        "systemd-resolved is not running here; point your resolver at Kled's DNS by hand:",
        f"  dnsmasq:  server=/{zones[0]}/{server}" + (f"#{port}" if port else ""),
        f"  or add to /etc/resolv.conf:  nameserver {server}  and  search {' '.join(zones)}",
    ]
    if port and port != "53":
        lines.append(f"  (the server listens on port {port}; /etc/resolv.conf needs port 53)")
    return ResolverSetup(False, "\n".join(lines))
