"""Reconciling a whole host's network to its ``HostNetwork``, level-triggered.

The agent calls ``reconcile_host`` with the latest desired state on every change and on a
timer. It compares with what the host has (the named namespaces ``kt-<host>.*`` and
``kp-<host>.*``, not a remembered previous state), so it converges from anywhere: a fresh
boot with nothing, an agent restarted mid-way, or a leftover team from before a crash.
One team failing does not stop the others; its error is reported against it.

``HostNetworkLayer`` is the seam the rest of the agent sees (STYLE: one seam per outside
system); ``LinuxHostNetwork`` is its implementation on namespaces, wireguard-go and nft.
Callers serialise calls per host (the agent's reconcile loop does), since two passes at once
would race to start the same wireguard-go.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kled.agent.net import gateway, netns, pods, wireguard
from kled.agent.net.gateway import TeamGateway
from kled.agent.net.pods import PodNet
from kled.agent.net.wireguard import InterfaceStatus
from kled.errors import KledError
from kled.resources.netstate import HostNetwork

log = logging.getLogger(__name__)


@dataclass
class HostReport:
    """What a pass achieved: ready gateways and pods, and errors by resource name."""

    gateways: dict[str, TeamGateway] = field(default_factory=dict)
    pods: dict[str, PodNet] = field(default_factory=dict)
    errors: dict[str, KledError] = field(default_factory=dict)
    removed: list[str] = field(default_factory=list)


async def reconcile_host(
    host_ns: str | None,
    desired: HostNetwork,
    *,
    host_id: str | None = None,
    state_dir: str | Path = gateway.DEFAULT_STATE_DIR,
) -> HostReport:
    """Make the host's team gateways and pod namespaces exactly ``desired``."""
    host_id = gateway.check_host_id(host_id) if host_id else gateway.default_host_id(host_ns)
    report = HostReport()
    for team in desired.teams:
        name = f"teamgateway/{team.team}/{host_id}"
        try:
            report.gateways[team.team] = await gateway.ensure_team_gateway(
                host_ns, team, host_id=host_id, state_dir=state_dir
            )
        except KledError as exc:
            log.warning("%s not ready: %s", name, exc)
            report.errors[name] = exc
    for pod in desired.pods:
        gw = report.gateways.get(pod.team)
        if gw is None:
            continue  # its gateway failed and is reported already
        name = f"replica/{pod.team}/{pod.replica_id}"
        try:
            report.pods[pod.replica_id] = await pods.ensure_pod_netns(
                pod.replica_id, pod.team, pod.ip, gw
            )
        except KledError as exc:
            log.warning("%s network not ready: %s", name, exc)
            report.errors[name] = exc

    wanted_pods = {pods.pod_netns(host_id, p.team, p.replica_id) for p in desired.pods}
    for ns in await netns.names(f"kp-{host_id}."):
        if ns not in wanted_pods:
            await netns.delete(ns)
            report.removed.append(ns)
    wanted_teams = {t.team for t in desired.teams}
    for ns in await netns.names(f"kt-{host_id}."):
        team_name = ns.split(".", 1)[1]
        if team_name not in wanted_teams:
            await gateway.teardown_team_gateway(
                host_ns, team_name, host_id=host_id, state_dir=state_dir
            )
            report.removed.append(ns)
    if report.removed:
        log.info("host/%s network removed %s", host_id, ", ".join(sorted(report.removed)))
    return report


class HostNetworkLayer(Protocol):
    """What the agent needs of the host's network."""

    async def apply(self, desired: HostNetwork) -> HostReport:
        """Converge the host to ``desired`` (teams, peers, services, pods)."""
        ...

    async def mesh_status(self, team: str) -> InterfaceStatus:
        """The team's WireGuard peers with their last handshakes (liveness of devices)."""
        ...

    def pod_argv(self, team: str, replica_id: str, argv: Sequence[str]) -> list[str]:
        """``argv`` wrapped to run inside the replica's network namespace."""
        ...

    def pod_netns_path(self, team: str, replica_id: str) -> str:
        """The replica's namespace as a path, for container engines (``--network ns:PATH``)."""
        ...


class LinuxHostNetwork:
    """``HostNetworkLayer`` on Linux network namespaces, wireguard-go and nftables."""

    def __init__(
        self,
        host_ns: str | None = None,
        *,
        host_id: str | None = None,
        state_dir: str | Path = gateway.DEFAULT_STATE_DIR,
    ) -> None:
        self.host_ns = host_ns
        self.host_id = (
            gateway.check_host_id(host_id) if host_id else gateway.default_host_id(host_ns)
        )
        self.state_dir = Path(state_dir)

    async def apply(self, desired: HostNetwork) -> HostReport:
        return await reconcile_host(
            self.host_ns, desired, host_id=self.host_id, state_dir=self.state_dir
        )

    async def mesh_status(self, team: str) -> InterfaceStatus:
        return await wireguard.status(wireguard.interface_name(self.host_id, team))

    def pod_argv(self, team: str, replica_id: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", pods.pod_netns(self.host_id, team, replica_id), *argv]

    def pod_netns_path(self, team: str, replica_id: str) -> str:
        return f"{netns.NETNS_DIR}/{pods.pod_netns(self.host_id, team, replica_id)}"
