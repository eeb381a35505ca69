"""A team's gateway on one host: its namespace, WireGuard interface, pod bridge and rules.

Layout (docs/network.md has the picture)::

    host (or host namespace)           team namespace kt-<host>.<team>
    ─────────────────────────          ──────────────────────────────────────
    wireguard-go kw-<hash8>   ──TUN──▶ kw-<hash8>  mesh_ip/32, route block
      UDP socket :listen_port          kbr0        bridge_ip/pod prefix
      on the underlay                  nft table ip kled, ip_forward=1
                                       ▲ veths of the team's pods

wireguard-go runs in the host namespace, so that its UDP socket sits on the underlay, and
the TUN device it creates is then moved into the team's namespace: packets of the mesh enter
and leave only there, and the team shares no interface, route or rule with the host or any
other team. When the team namespace is deleted (a reboot, or by hand), the TUN device goes
with it and wireguard-go exits; ``ensure_team_gateway`` notices and rebuilds everything.
"""

from __future__ import annotations

import json
import logging
import re
import socket
from dataclasses import dataclass
from pathlib import Path

from kled.agent.net import conntrack, links, netns, nftables, router_process, wireguard
from kled.agent.net.header_router import render_config
from kled.errors import InvalidInput
from kled.resources.netstate import TeamNetwork

log = logging.getLogger(__name__)

#: the pods' bridge inside every team namespace (names there are private to the team)
BRIDGE = "kbr0"
DEFAULT_STATE_DIR = Path("/var/lib/kled/net")
_HOST_ID = re.compile(r"^[a-z0-9]([a-z0-9-]{0,30}[a-z0-9])?\Z")


def default_host_id(host_ns: str | None) -> str:
    """Namespaces and interfaces are named after the host, so that hosts simulated as
    namespaces on one machine never collide."""
    raw = host_ns or socket.gethostname().split(".")[0]
    cleaned = re.sub(r"[^a-z0-9-]", "-", raw.lower()).strip("-")[:32] or "host"
    return check_host_id(cleaned)


def check_host_id(host_id: str) -> str:
    if not _HOST_ID.match(host_id):
        raise InvalidInput(f"{host_id!r} is not a valid host id ([a-z0-9-], ≤32)", field="host")
    return host_id


def team_netns(host_id: str, team: str) -> str:
    # "." cannot occur in host ids or team names, so prefixes never match another team.
    return f"kt-{host_id}.{team}"


def pod_netns_prefix(host_id: str, team: str) -> str:
    return f"kp-{host_id}.{team}."


@dataclass(frozen=True)
class TeamGateway:
    """Where a team lives on a host: what pods and callers need to know of its gateway."""

    host_ns: str | None
    host_id: str
    team: str
    netns: str
    wg_ifname: str
    bridge: str
    bridge_ip: str
    pod_prefixlen: int
    public_key: str
    listen_port: int
    dns_server: str | None
    search_domain: str | None
    state_dir: str

    @property
    def resource(self) -> str:
        return f"teamgateway/{self.team}/{self.host_id}"


def _key_file(team: TeamNetwork, state_dir: Path, host_id: str) -> Path:
    if team.private_key_file:
        return Path(team.private_key_file)
    return state_dir / host_id / f"{team.team}.key"


async def _ensure_wireguard(
    host_ns: str | None, team: TeamNetwork, ns: str, ifname: str, key_file: Path
) -> None:
    """The team's WireGuard interface, alive and inside the team namespace."""
    in_team = await links.exists(ns, ifname)
    if in_team and wireguard.is_alive(ifname):
        current = await wireguard.status(ifname)
        if current.listen_port == team.listen_port:
            return
        # A new port means a new UDP socket, which only a fresh wireguard-go opens on the
        # underlay (the TUN device no longer lives beside it): rebuild the interface.
        log.info(
            "teamgateway/%s listen port %s → %s", team.team, current.listen_port, team.listen_port
        )
    await links.delete(ns, ifname)
    await links.delete(host_ns, ifname)
    await wireguard.stop(ifname)
    await wireguard.start(ifname, host_ns)
    # Up before configuring, so wireguard-go opens its UDP socket in the host namespace.
    await links.set_up(host_ns, ifname)
    await wireguard.configure(ifname, private_key_file=key_file, listen_port=team.listen_port)
    await links.move(host_ns, ifname, ns)
    log.info("teamgateway/%s wireguard %s started port=%s", team.team, ifname, team.listen_port)


async def ensure_team_gateway(
    host_ns: str | None,
    team: TeamNetwork,
    *,
    host_id: str | None = None,
    state_dir: str | Path = DEFAULT_STATE_DIR,
) -> TeamGateway:
    """Build or repair the team's gateway so that it matches ``team``; idempotent.

    ``host_ns`` is the namespace that stands for the host (None: the real host), where the
    WireGuard UDP socket lives. Every call re-checks each piece, so a call after the
    namespaces were lost rebuilds them, and a call with new peers or services only updates
    those (peers with one ``wg set``, rules with one atomic nft transaction).
    """
    host_id = check_host_id(host_id) if host_id else default_host_id(host_ns)
    state = Path(state_dir)
    ns = team_netns(host_id, team.team)
    ifname = wireguard.interface_name(host_id, team.team)
    key_file = _key_file(team, state, host_id)
    public_key = await wireguard.ensure_private_key(key_file)

    if await netns.ensure(ns):
        log.info("teamgateway/%s/%s namespace %s created", team.team, host_id, ns)
    await netns.sysctl(ns, "net.ipv4.ip_forward", "1")

    await _ensure_wireguard(host_ns, team, ns, ifname, key_file)
    await links.set_addresses(ns, ifname, [f"{team.mesh_ip}/32"])
    await links.set_up(ns, ifname)
    await links.replace_route(ns, team.block, dev=ifname, src=team.mesh_ip)

    await links.ensure_bridge(ns, BRIDGE)
    await links.set_addresses(ns, BRIDGE, [f"{team.bridge_ip}/{team.pod_prefixlen}"])

    await wireguard.configure(ifname, private_key_file=key_file, peers=team.peers)
    await _apply_rules(ns, team, ifname, state / host_id)
    log.debug(
        "teamgateway/%s/%s ready peers=%d services=%d",
        team.team,
        host_id,
        len(team.peers),
        len(team.services),
    )
    return TeamGateway(
        host_ns=host_ns,
        host_id=host_id,
        team=team.team,
        netns=ns,
        wg_ifname=ifname,
        bridge=BRIDGE,
        bridge_ip=team.bridge_ip,
        pod_prefixlen=team.pod_prefixlen,
        public_key=public_key,
        listen_port=team.listen_port,
        dns_server=team.dns_server,
        search_domain=team.search_domain,
        state_dir=str(state),
    )


async def update_services(gateway: TeamGateway, team: TeamNetwork) -> None:
    """Only the service and intercept rules, in one atomic transaction (the hot path)."""
    folder = Path(gateway.state_dir) / gateway.host_id
    await _apply_rules(gateway.netns, team, gateway.wg_ifname, folder)


def _service_digest(team: TeamNetwork) -> dict[str, str]:
    return {s.ip: s.model_dump_json() for s in team.services}


async def _apply_rules(ns: str, team: TeamNetwork, wg_ifname: str, folder: Path) -> None:
    """Replace the team's table, then unpin the UDP flows of services whose targets moved.

    What was applied last is kept beside the key, so that only changed services lose their
    UDP conntrack entries (see ``conntrack``), also across agent restarts. The header router
    (personal intercepts) is made ready before rules redirect to it, and stopped only after
    rules stopped redirecting to it.
    """
    wants_router = render_config(team) is not None
    if wants_router:
        await router_process.ensure_router(ns, team, folder)
    record = folder / f"{team.team}.services.json"
    try:
        before: dict[str, str] = json.loads(record.read_text())
    except (OSError, ValueError):
        before = {}
    await nftables.apply(ns, nftables.render_ruleset(team, wg_ifname=wg_ifname, bridge=BRIDGE))
    if not wants_router:
        router_process.stop_router(folder, team.team)
    after = _service_digest(team)
    changed = {ip for ip in before if before[ip] != after.get(ip)}
    if changed:
        deleted = await conntrack.forget_udp_flows(ns, changed)
        log.debug("teamgateway/%s UDP flows forgotten=%d services=%s", team.team, deleted,
                  sorted(changed))  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    record.write_text(json.dumps(after))


async def update_peers(gateway: TeamGateway, team: TeamNetwork) -> None:
    """Only the WireGuard peer set (a netmap delta)."""
    await wireguard.configure(gateway.wg_ifname, peers=team.peers)


async def teardown_team_gateway(
    host_ns: str | None,
    team: str,
    *,
    host_id: str | None = None,
    state_dir: str | Path = DEFAULT_STATE_DIR,
    forget_key: bool = False,
) -> None:
    """Remove the team from the host: its pods' namespaces, its namespace, its wireguard-go.

    The private key is kept unless ``forget_key``, so that the node keeps its identity in
    the team's mesh if the team comes back.
    """
    host_id = check_host_id(host_id) if host_id else default_host_id(host_ns)
    ns = team_netns(host_id, team)
    ifname = wireguard.interface_name(host_id, team)
    for pod_ns in await netns.names(pod_netns_prefix(host_id, team)):
        await netns.delete(pod_ns)
    # The router would otherwise keep the deleted namespace alive.
    router_process.stop_router(Path(state_dir) / host_id, team, drain=False)
    await netns.delete(ns)
    # The TUN device died with the namespace; wireguard-go exits on its own, or is stopped.
    await links.delete(host_ns, ifname)
    await wireguard.wait_gone(ifname)
    (Path(state_dir) / host_id / f"{team}.services.json").unlink(missing_ok=True)
    if forget_key:
        (Path(state_dir) / host_id / f"{team}.key").unlink(missing_ok=True)
    log.info("teamgateway/%s/%s removed", team, host_id)
