"""Reconciling a whole host's network to its ``HostNetwork``, level-triggered.

The agent calls ``reconcile_host`` with the latest desired state on every change and on a
timer. It compares with what the host has (the named namespaces ``kt-<host>.*`` and
``kp-<host>.*``, not a remembered previous state), so it converges from anywhere: a fresh
boot with nothing, an agent restarted mid-way, or a leftover team from before a crash.
One team failing does not stop the others; its error is reported against it.

``HostNetworkLayer`` is the seam the rest of the agent sees (STYLE: one seam per outside
system); ``LinuxHostNetwork`` is its implementation on namespaces, wireguard-go and nft.
Callers serialise calls per host (the agent's reconcile loop does), since two passes at once
would race to start the same wireguard-go. ``tick()``, called every second or two in the
same serial loop, judges the intercepts' devices from WireGuard and falls back to the
replicas while a device is offline (``liveness``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from kled.agent.net import gateway, liveness, netns, pods, wireguard
from kled.agent.net.gateway import TeamGateway
from kled.agent.net.pods import PodNet
from kled.agent.net.wireguard import InterfaceStatus
from kled.errors import KledError
from kled.resources.netstate import HostNetwork, TeamNetwork

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
                pod.replica_id, pod.team, pod.ip, gw, pod.environment
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

    async def tick(self) -> dict[str, list[str]]:
        """Judge the intercepts' devices (every second or two); fall back or resume.
        Returns, per team, the intercepts now falling back (``env/app→ip``)."""
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
        offline_after: float = liveness.OFFLINE_AFTER,
    ) -> None:
        self.host_ns = host_ns
        self.offline_after = offline_after
        self.host_id = (
            gateway.check_host_id(host_id) if host_id else gateway.default_host_id(host_ns)
        )
        self.state_dir = Path(state_dir)
        self._desired = HostNetwork()
        self._gateways: dict[str, TeamGateway] = {}
        #: per team: what was last rendered, after leaving out offline devices' intercepts
        self._rendered: dict[str, TeamNetwork] = {}
        self._liveness: dict[str, liveness.PeerLiveness] = {}
        self._fallen: dict[str, list[str]] = {}

    def _judged(self, team: TeamNetwork) -> TeamNetwork:
        judge = self._liveness.setdefault(team.team, liveness.PeerLiveness(self.offline_after))
        return liveness.effective_team(team, judge.alive)

    async def apply(self, desired: HostNetwork) -> HostReport:
        self._desired = desired
        effective = desired.model_copy(
            update={"teams": tuple(self._judged(t) for t in desired.teams)}
        )
        report = await reconcile_host(
            self.host_ns, effective, host_id=self.host_id, state_dir=self.state_dir
        )
        self._gateways = dict(report.gateways)
        self._rendered = {t.team: t for t in effective.teams if t.team in report.gateways}
        for gone in set(self._liveness) - {t.team for t in desired.teams}:
            del self._liveness[gone]
        return report

    async def tick(self) -> dict[str, list[str]]:
        for team in self._desired.teams:
            gw = self._gateways.get(team.team)
            if gw is None or not any(s.intercept or s.personal for s in team.services):
                continue
            try:
                status = await wireguard.status(gw.wg_ifname)
            except KledError as exc:
                log.debug("teamgateway/%s/%s no status: %s", team.team, self.host_id, exc)
                continue
            self._liveness.setdefault(team.team, liveness.PeerLiveness(self.offline_after)).observe(
                status
            )
            effective = self._judged(team)
            if effective == self._rendered.get(team.team):
                continue
            await gateway.update_services(gw, effective)
            self._rendered[team.team] = effective
            fallen = liveness.fallen_back(team, effective)
            before = set(self._fallen.get(team.team, []))
            for item in sorted(set(fallen) - before):
                log.info("teamgateway/%s/%s intercept %s: device offline, fallback",
                         team.team, self.host_id, item)  # fmt: skip
            for item in sorted(before - set(fallen)):
                log.info("teamgateway/%s/%s intercept %s: device back, resumed",
                         team.team, self.host_id, item)  # fmt: skip
            self._fallen[team.team] = fallen
        return {t: list(f) for t, f in self._fallen.items() if f}

    async def mesh_status(self, team: str) -> InterfaceStatus:
        return await wireguard.status(wireguard.interface_name(self.host_id, team))

    def pod_argv(self, team: str, replica_id: str, argv: Sequence[str]) -> list[str]:
        return ["ip", "netns", "exec", pods.pod_netns(self.host_id, team, replica_id), *argv]

    def pod_netns_path(self, team: str, replica_id: str) -> str:
        return f"{netns.NETNS_DIR}/{pods.pod_netns(self.host_id, team, replica_id)}"
