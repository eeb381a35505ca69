"""WireGuard interfaces through ``wireguard-go`` and ``wg``: keys, interfaces, peers, liveness.

This machine's kernel has no WireGuard module, so interfaces are ``wireguard-go`` processes
(userspace, over ``/dev/net/tun``), configured with ``wg set`` and read with ``wg show dump``
over their control socket ``/var/run/wireguard/<ifname>.sock``. That folder is shared by
every namespace of the machine, so interface names are derived from (host, team) and are
unique per machine (``interface_name``).

Private keys are generated here with ``wg genkey``, written mode 0600 and never logged or
returned; only the public key leaves this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import logging
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psutil

from kled.agent.net import links
from kled.agent.net.command import WG_ENV, require, run
from kled.errors import InvalidInput, NotFound, TemporaryError, Unavailable
from kled.resources.netstate import Peer

log = logging.getLogger(__name__)

SOCKET_DIR = Path("/var/run/wireguard")


def interface_name(*parts: str, prefix: str = "kw-") -> str:
    """A machine-unique interface name for (host, team) or (host, device): ``kw-<hash8>``."""
    digest = hashlib.sha256("/".join(parts).encode()).hexdigest()[:8]
    return links.check_ifname(f"{prefix}{digest}")


def socket_path(ifname: str) -> Path:
    return SOCKET_DIR / f"{ifname}.sock"


# -- keys -----------------------------------------------------------------------------------


async def generate_private_key() -> str:
    return (await run(["wg", "genkey"])).strip()


async def public_key(private_key: str) -> str:
    return (await run(["wg", "pubkey"], stdin=private_key + "\n")).strip()


async def ensure_private_key(path: str | Path) -> str:
    """Create the key file (mode 0600) unless present; return the matching public key."""
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        key = await generate_private_key()
        # O_EXCL: two reconcilers racing must not both write a key and disagree on it.
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as f:
                f.write(key + "\n")
    os.chmod(path, 0o600)
    key = path.read_text().strip()
    if len(key) != 44:
        raise InvalidInput(f"{path} does not hold a WireGuard private key", field="privateKeyFile")
    return await public_key(key)


# -- the wireguard-go process ---------------------------------------------------------------


def is_alive(ifname: str) -> bool:
    """True when a wireguard-go answers on the interface's control socket."""
    path = socket_path(ifname)
    if not path.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
        except OSError:
            return False
    return True


def process_ids(ifname: str) -> list[int]:
    """The wireguard-go processes serving ``ifname`` (names are machine-unique)."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info.get("cmdline") or []
        if len(cmd) >= 2 and os.path.basename(cmd[0]) == "wireguard-go" and cmd[-1] == ifname:
            found.append(proc.pid)
    return found


async def start(ifname: str, netns: str | None) -> None:
    """Start wireguard-go for ``ifname`` in ``netns``; it creates the TUN device there.

    wireguard-go daemonizes and the UDP socket it opens stays in the namespace it runs in,
    whichever namespace the TUN device is moved to later.
    """
    require("wireguard-go")
    await stop(ifname)
    await run(["wireguard-go", ifname], netns=netns, env=WG_ENV)
    for _ in range(50):
        if is_alive(ifname):
            return
        await asyncio.sleep(0.1)
    raise TemporaryError(f"wireguard-go {ifname} did not open its control socket", delay=2.0)


async def stop(ifname: str) -> None:
    """Stop the wireguard-go serving ``ifname`` (if any) and remove a stale socket."""
    for pid in process_ids(ifname):
        with contextlib.suppress(psutil.NoSuchProcess):
            proc = psutil.Process(pid)
            proc.terminate()
            try:
                await asyncio.to_thread(proc.wait, 5)
            except psutil.TimeoutExpired:
                proc.kill()
    with contextlib.suppress(FileNotFoundError):
        if not is_alive(ifname):
            socket_path(ifname).unlink()


async def wait_gone(ifname: str, tries: int = 50) -> None:
    """Wait for wireguard-go to exit after its TUN device went away, then make sure."""
    for _ in range(tries):
        if not process_ids(ifname) and not socket_path(ifname).exists():
            return
        await asyncio.sleep(0.1)
    await stop(ifname)


# -- configuration and status ---------------------------------------------------------------


@dataclass(frozen=True)
class PeerStatus:
    public_key: str
    endpoint: str | None
    allowed_ips: tuple[str, ...]
    latest_handshake: datetime | None
    rx_bytes: int
    tx_bytes: int
    persistent_keepalive: int | None

    def alive(self, now: datetime | None = None, within: float = 180.0) -> bool:
        """A handshake within ``within`` seconds (WireGuard rekeys every 2 minutes)."""
        if self.latest_handshake is None:
            return False
        now = now or datetime.now(UTC)
        return (now - self.latest_handshake).total_seconds() <= within


@dataclass(frozen=True)
class InterfaceStatus:
    public_key: str
    listen_port: int
    peers: tuple[PeerStatus, ...]

    def peer(self, public_key: str) -> PeerStatus:
        for p in self.peers:
            if p.public_key == public_key:
                return p
        raise NotFound(f"no peer {public_key} on this interface")


def parse_dump(text: str) -> InterfaceStatus:
    """Parse ``wg show IF dump``: one interface line, then one line per peer."""
    lines = [line.split("\t") for line in text.strip().splitlines()]
    if not lines or len(lines[0]) < 4:
        raise TemporaryError("wg show dump returned nothing", delay=1.0)
    head = lines[0]
    peers = []
    for f in lines[1:]:
        if len(f) < 8:
            continue
        handshake = int(f[4])
        peers.append(
            PeerStatus(
                public_key=f[0],
                endpoint=None if f[2] == "(none)" else f[2],
                allowed_ips=tuple(a for a in f[3].split(",") if a and a != "(none)"),
                latest_handshake=datetime.fromtimestamp(handshake, UTC) if handshake else None,
                rx_bytes=int(f[5]),
                tx_bytes=int(f[6]),
                persistent_keepalive=None if f[7] == "off" else int(f[7]),
            )
        )
    return InterfaceStatus(public_key=head[1], listen_port=int(head[2]), peers=tuple(peers))


async def status(ifname: str) -> InterfaceStatus:
    if not is_alive(ifname):
        raise NotFound(f"WireGuard interface {ifname} is not running")
    return parse_dump(await run(["wg", "show", ifname, "dump"]))


@dataclass(frozen=True)
class PeerChanges:
    """What a ``sync`` changed on the interface: public keys added, removed, updated."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    updated: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.removed or self.updated)


def plan_peers(
    current: Sequence[PeerStatus], wanted: Sequence[Peer]
) -> tuple[list[str], PeerChanges]:
    """The ``wg set`` arguments (after the interface name) that turn the ``current`` peers
    into ``wanted``, holding only the differences, and what they change.

    A peer listed without an endpoint keeps the one the interface learned from it
    (WireGuard roaming); allowed IPs are compared as sets of networks.
    """
    keys = [p.public_key for p in wanted]
    if len(keys) != len(set(keys)):
        raise InvalidInput("a peer public key appears twice", field="peers")
    have = {p.public_key: p for p in current}
    args: list[str] = []
    removed = tuple(key for key in have if key not in keys)
    for key in removed:
        args += ["peer", key, "remove"]
    added: list[str] = []
    updated: list[str] = []
    for peer in wanted:
        old = have.get(peer.public_key)
        if old is not None and _same_peer(old, peer):
            continue
        (added if old is None else updated).append(peer.public_key)
        args += _peer_args(peer)
    return args, PeerChanges(tuple(added), removed, tuple(updated))


def _peer_args(peer: Peer) -> list[str]:
    args = ["peer", peer.public_key]
    if peer.endpoint:
        args += ["endpoint", peer.endpoint]
    args += ["allowed-ips", ",".join(peer.allowed_ips)]
    keepalive = peer.persistent_keepalive
    return [*args, "persistent-keepalive", str(keepalive) if keepalive else "off"]


def _same_peer(have: PeerStatus, want: Peer) -> bool:
    if want.endpoint and _endpoint(want.endpoint) != _endpoint(have.endpoint):
        return False
    if _networks(want.allowed_ips) != _networks(have.allowed_ips):
        return False
    return (want.persistent_keepalive or None) == (have.persistent_keepalive or None)


def _endpoint(text: str | None) -> tuple[str, str] | str | None:
    """``host:port`` as (address, port), so that ``[::1]:5`` and wg's spelling compare."""
    if text is None:
        return None
    host, _, port = text.rpartition(":")
    try:
        return str(ipaddress.ip_address(host.strip("[]"))), port
    except ValueError:
        return text


def _networks(cidrs: Sequence[str]) -> set[str]:
    return {str(ipaddress.ip_network(c, strict=False)) for c in cidrs}


async def configure(
    ifname: str,
    *,
    private_key_file: str | Path | None = None,
    listen_port: int | None = None,
    peers: tuple[Peer, ...] | list[Peer] = (),
) -> None:
    """Make the interface's keys, port and peer set exactly these, in one ``wg set``.

    Peers not listed are removed; listed peers get their endpoint, allowed IPs (replaced,
    not appended) and keepalive set. Only what differs from the interface is sent, so a
    change of one peer among thousands is a short command.
    """
    if not is_alive(ifname):
        raise Unavailable(f"WireGuard interface {ifname} is not running")
    current = await status(ifname)
    args = ["wg", "set", ifname]
    if listen_port is not None and listen_port != current.listen_port:
        args += ["listen-port", str(listen_port)]
    if private_key_file is not None:
        args += ["private-key", str(private_key_file)]
    args += plan_peers(current.peers, peers)[0]
    if len(args) > 3:
        await run(args)
