"""A network namespace per app replica, plugged into its team's bridge.

Each replica gets ``kp-<host>.<team>.<replica>``: a veth whose inside end is ``eth0`` with the
pod IP, a default route via the team bridge's gateway address, and a ``resolv.conf`` under
``/etc/netns/<ns>/`` that ``ip netns exec`` mounts over ``/etc/resolv.conf``, so that a
process started with ``exec_argv`` resolves names through the team gateway's DNS forwarder
and finds ``api`` through the search domain. The process runtime starts replicas with
``exec_argv``; the container runtime joins the namespace by path (``netns_path``).
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass

from kled.agent.net import links, netns
from kled.agent.net.gateway import TeamGateway, pod_netns_prefix
from kled.errors import InvalidInput

log = logging.getLogger(__name__)

POD_IFNAME = "eth0"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]")


@dataclass(frozen=True)
class PodNet:
    replica_id: str
    team: str
    netns: str
    ip: str
    host_veth: str

    @property
    def netns_path(self) -> str:
        return os.path.join(netns.NETNS_DIR, self.netns)

    def exec_argv(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the pod's namespace, with its resolv.conf."""
        return ["ip", "netns", "exec", self.netns, *argv]


def pod_netns(host_id: str, team: str, replica_id: str) -> str:
    return netns.check_name(pod_netns_prefix(host_id, team) + _SAFE.sub("_", replica_id))


def _host_veth(host_id: str, team: str, replica_id: str) -> str:
    digest = hashlib.sha256(f"{host_id}/{team}/{replica_id}".encode()).hexdigest()[:8]
    return f"kp-{digest}"


def resolv_conf(nameserver: str, search_domain: str | None) -> str:
    lines = [f"nameserver {nameserver}"]
    if search_domain:
        # <env>.<team>.<zone>, then <team>.<zone>, so `api` and `api.otherenv` both resolve.
        parts = search_domain.split(".")
        domains = [".".join(parts[i:]) for i in range(min(2, max(len(parts) - 1, 1)))]
        lines.append("search " + " ".join(domains))
    lines.append("options ndots:3")
    return "\n".join(lines) + "\n"


def _check_ip(ip: str, gateway: TeamGateway) -> str:
    subnet = ipaddress.IPv4Interface(f"{gateway.bridge_ip}/{gateway.pod_prefixlen}").network
    addr = ipaddress.IPv4Address(ip)
    if addr not in subnet or addr in (subnet.network_address, subnet.broadcast_address):
        raise InvalidInput(f"pod IP {ip} is not a host address of {subnet}", field="ip")
    if str(addr) == gateway.bridge_ip:
        raise InvalidInput(f"pod IP {ip} is the team bridge's own address", field="ip")
    return str(addr)


async def ensure_pod_netns(
    replica_id: str, team: str, ip: str, gateway: TeamGateway, environment: str | None = None
) -> PodNet:
    """Build or repair the replica's namespace; idempotent, also after the host rebooted."""
    if team != gateway.team:
        raise InvalidInput(f"gateway is team {gateway.team}'s, not {team}'s", field="team")
    ip = _check_ip(ip, gateway)
    ns = pod_netns(gateway.host_id, team, replica_id)
    veth = _host_veth(gateway.host_id, team, replica_id)
    await netns.ensure(ns)
    await links.ensure_veth(gateway.netns, veth, ns, POD_IFNAME)
    await links.set_master(gateway.netns, veth, gateway.bridge)
    await links.set_addresses(ns, POD_IFNAME, [f"{ip}/{gateway.pod_prefixlen}"])
    await links.replace_route(ns, "default", dev=POD_IFNAME, via=gateway.bridge_ip)
    if gateway.dns_server:
        etc = os.path.join(netns.ETC_NETNS_DIR, ns)
        os.makedirs(etc, exist_ok=True)
        with open(os.path.join(etc, "resolv.conf"), "w") as f:
            # The gateway's domain is the team's; a pod searches its environment first, so
            # `curl http://api` reaches the app of its own environment.
            search = gateway.search_domain
            if environment and search:
                search = f"{environment}.{search}"
            f.write(resolv_conf(gateway.bridge_ip, search))
    log.debug("replica/%s/%s network ready ns=%s ip=%s", team, replica_id, ns, ip)
    return PodNet(replica_id=replica_id, team=team, netns=ns, ip=ip, host_veth=veth)


async def delete_pod_netns(replica_id: str, team: str, gateway: TeamGateway) -> None:
    """Remove the replica's namespace (its veth goes with it); absent is fine."""
    await netns.delete(pod_netns(gateway.host_id, team, replica_id))
    await links.delete(gateway.netns, _host_veth(gateway.host_id, team, replica_id))
    log.debug("replica/%s/%s network removed", team, replica_id)
