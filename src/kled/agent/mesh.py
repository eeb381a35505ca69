"""The agent's side of the team meshes: keys, the host network, and what peers must know.

The control plane sends a node's network (``HostDesiredState.network``) with everything but
the WireGuard peers and private keys. The peers come on their own, one Message Office key
per peer (``MessageOffice.watch_peers``), so a peer joining a team of N nodes costs each
node one small message, not its whole state; ``follow_peers`` / ``peer_changed`` feed
them in, and no pass touches a team's peers before the whole set has arrived once. The
private keys must never leave the host: each team's key is generated
here, in the agent's data dir (mode 0600), and its file is named in the ``TeamNetwork``
before the network layer applies it. The public key and listen port of every ready gateway
go back in heartbeats (``NodeHeartbeat.mesh``), from which the control plane builds the
team's peer sets, with the intercepts each gateway has applied: a pass that changes those
asks for a heartbeat at once (``intercepts_changed``), since `kled intercept start|stop`
wait for it.

``MeshKeeper`` serialises every change of the host's network (two passes at once would race
to start the same wireguard-go), applies the newest desired network when it changes and
again on a timer, since the network layer is level-triggered: a namespace deleted by hand or
by a reboot is rebuilt on the next pass. It also tells the runtimes where a replica's pod
namespace is, once that namespace is ready.
"""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from kled.agent.dnsrelay import DnsRelays
from kled.agent.net import liveness, netns, wireguard
from kled.agent.net.host import HostNetworkLayer, HostReport
from kled.agent.net.router_process import read_activity
from kled.aio import wait_event
from kled.errors import KledError
from kled.resources.hoststate import ReplicaSpec, TeamMeshReport
from kled.resources.netstate import HostNetwork, PodNetwork
from kled.resources.netstate import Peer as WgPeer

log = logging.getLogger(__name__)

#: how often the routers' activity files are read for requests held at a gateway
WAITING_POLL = 0.1


@dataclass(frozen=True)
class PodPlace:
    """Where a replica's network is: its namespace's path and its pod IP."""

    netns_path: str
    ip: str


class MeshKeeper:
    """Keeps the host's network at the newest desired value; one pass at a time."""

    def __init__(
        self,
        layer: HostNetworkLayer,
        key_dir: str | Path,
        *,
        node: str,
        recheck_interval: float = 5.0,
        tick_interval: float = 1.5,
    ) -> None:
        self.layer = layer
        self.key_dir = Path(key_dir)
        self.node = node
        self.recheck_interval = recheck_interval
        self.tick_interval = tick_interval
        self._fallen: dict[str, list[str]] = {}
        self._desired: HostNetwork | None = None
        self._report: HostReport | None = None
        self._applied: HostNetwork | None = None
        #: the network a pass is applying now (an older one than ``_desired`` may be)
        self._applying: HostNetwork | None = None
        self._lock = asyncio.Lock()
        self._changed = asyncio.Event()
        self.relays = DnsRelays()
        #: team → the control plane's DNS server, which the team's relay forwards to
        self._upstreams: dict[str, str] = {}
        #: team → peer name → peer, from the Message Office; None: the peers come inside
        #: the desired network (hosts driven without an office, as in the layer's tests)
        self._peers: dict[str, dict[str, WgPeer]] | None = None
        self._peers_known = False
        #: team → the intercepts its gateway applied in the last pass (``intercepts_of``)
        self._intercepts: dict[str, list[str]] = {}
        #: set when those change, so that the agent reports them at once rather than at
        #: its next heartbeat: `kled intercept start` waits for that report
        self.intercepts_changed = asyncio.Event()
        #: pods of replicas no longer desired but still stopping: kept (without being
        #: backends) until their replica has ended, so its last requests can finish
        self._held: dict[str, PodNetwork] = {}

    # -- peers ----------------------------------------------------------------------------
    def follow_peers(self) -> None:
        """Peers will come from ``peer_changed``; no pass runs before ``peers_known``."""
        if self._peers is None:
            self._peers = {}

    def peer_changed(self, team: str, name: str, peer: WgPeer | None) -> None:
        assert self._peers is not None, "follow_peers() first"
        peers = self._peers.setdefault(team, {})
        if peer is None:
            if peers.pop(name, None) is None:
                return
        elif peers.get(name) == peer:
            return
        else:
            peers[name] = peer
        if self._peers_known:
            self._changed.set()

    def peers_known(self) -> None:
        """The whole peer set has arrived (and, after that, a batch of changes has)."""
        if not self._peers_known:
            self._peers_known = True
            self._changed.set()

    def peer_count(self, team: str) -> int:
        return len((self._peers or {}).get(team, {}))

    # -- keys ---------------------------------------------------------------------------
    def key_file(self, team: str) -> Path:
        return self.key_dir / f"{team}.key"

    async def _for_host(self, network: HostNetwork) -> HostNetwork:
        """The network with this host's key files, and the team's relay as its DNS server
        (the pods' queries stay in the team namespace, where the relay listens)."""
        teams = []
        self._upstreams = {}
        for team in network.teams:
            path = self.key_file(team.team)
            if not path.exists():
                self.key_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
                os.chmod(self.key_dir, 0o700)
                await wireguard.ensure_private_key(path)
                log.info("teamgateway/%s/%s WireGuard key created", team.team, self.node)
            update: dict[str, object] = {"private_key_file": str(path)}
            if self._peers is not None:
                peers = self._peers.get(team.team, {})
                update["peers"] = tuple(sorted(peers.values(), key=lambda p: p.public_key))
            if team.dns_server:
                self._upstreams[team.team] = team.dns_server
                update["dns_server"] = f"{team.bridge_ip}:53"
            teams.append(team.model_copy(update=update))
        used = {p.ip for p in network.pods} | {p.replica_id for p in network.pods}
        names = {t.team for t in network.teams}
        held = tuple(
            p for p in self._held.values()
            if p.replica_id not in used and p.ip not in used and p.team in names
        )  # fmt: skip
        return network.model_copy(update={"teams": tuple(teams), "pods": network.pods + held})

    # -- stopping replicas ----------------------------------------------------------------
    def hold(self, replica_ids: set[str]) -> None:
        """Keep the pods of these replicas (desired until now) while they stop."""
        desired = self._desired
        for pod in desired.pods if desired is not None else ():
            if pod.replica_id in replica_ids:
                self._held[pod.replica_id] = pod

    def held(self) -> set[str]:
        return set(self._held)

    def release(self, replica_ids: set[str]) -> None:
        """Let go of the pods of these replicas (they have ended)."""
        gone = [rid for rid in replica_ids if self._held.pop(rid, None) is not None]
        if gone:
            self._changed.set()

    def serving(self, ip: str | None) -> bool:
        """Whether ``ip`` is a service backend in the desired network, the applied one or
        the one a pass is applying: a pass that began before a newer network came makes
        the gateway route to what the older one lists when it ends."""
        for network in (self._desired, self._applying, self._applied):
            for team in network.teams if network is not None else ():
                if any(ip in service.backends for service in team.services):
                    return True
        return False

    def applied(self) -> bool:
        """Whether the newest desired network has been applied."""
        return self._desired is not None and self._applied == self._desired

    # -- applying -----------------------------------------------------------------------
    def want(self, network: HostNetwork | None) -> None:
        """The newest desired network (None: leave the host's network alone)."""
        if network is None or network == self._desired:
            return
        self._desired = network
        self._changed.set()

    async def apply_now(self) -> HostReport | None:
        """One pass with the newest desired network; None if none is known yet."""
        async with self._lock:
            desired = self._desired
            if desired is None or (self._peers is not None and not self._peers_known):
                return None
            self._applying = desired
            try:
                network = await self._for_host(desired)
                report = await self.layer.apply(network)
            finally:
                self._applying = None
            await self._relay_dns(report)
            if self._applied != desired or report.errors:
                log.info(
                    "node/%s network applied teams=%d pods=%d errors=%s",
                    self.node,
                    len(report.gateways),
                    len(report.pods),
                    sorted(report.errors) or "none",
                )
            self._report = report
            self._applied = desired
            applied = {
                t.team: liveness.intercepts_of(t)
                for t in desired.teams
                if t.team in report.gateways
            }
            if applied != self._intercepts:
                self._intercepts = applied
                self.intercepts_changed.set()
            return report

    async def _relay_dns(self, report: HostReport) -> None:
        relayed = set()
        for team, gw in report.gateways.items():
            upstream = self._upstreams.get(team)
            if upstream is None:
                continue
            try:
                path = f"{netns.NETNS_DIR}/{gw.netns}"
                await self.relays.ensure(team, path, gw.bridge_ip, upstream)
            except KledError as err:
                log.warning("teamgateway/%s/%s no DNS relay: %s", team, self.node, err)
                continue
            relayed.add(team)
        await self.relays.keep_only(relayed)

    async def close(self) -> None:
        await self.relays.close()

    async def tick_now(self) -> None:
        """Let the layer judge the intercepts' devices (falling back while one is offline)."""
        async with self._lock:
            if self._applied is None:
                return
            fallen = await self.layer.tick()
        if fallen != self._fallen:
            log.info("node/%s intercepts falling back to replicas: %s", self.node, fallen or "none")
            self._fallen = fallen

    async def _watch_waiting(self) -> None:
        """A request held at a gateway for an app at zero replicas is reported at once, not
        at the next heartbeat: the heartbeat waits on ``intercepts_changed``."""
        reported: set[tuple[str, str]] = set()
        while True:
            await asyncio.sleep(WAITING_POLL)
            report = self._report
            waiting: set[tuple[str, str]] = set()
            for team, gw in (report.gateways if report is not None else {}).items():
                _, keys = read_activity(Path(gw.state_dir) / gw.host_id, team)
                waiting.update((team, key) for key in keys)
            if waiting - reported:
                self.intercepts_changed.set()
            reported = waiting

    async def run(self) -> None:
        """Apply on every change and every ``recheck_interval`` seconds; tick in between."""
        watcher = asyncio.create_task(self._watch_waiting(), name="mesh-waiting")
        try:
            await self._run()
        finally:
            watcher.cancel()

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        due = loop.time()
        while True:
            await wait_event(self._changed, self.tick_interval)
            try:
                if self._changed.is_set() or loop.time() >= due:
                    self._changed.clear()
                    due = loop.time() + self.recheck_interval
                    await self.apply_now()
                else:
                    await self.tick_now()
            except KledError as err:
                log.warning("node/%s network pass failed: %s", self.node, err)
            except Exception:
                log.exception("node/%s network pass failed unexpectedly", self.node)

    # -- what the rest of the agent asks ----------------------------------------------------
    def place(self, spec: ReplicaSpec) -> ReplicaSpec:
        """``spec`` with its pod namespace and IP, if the desired network gives it a pod."""
        desired = self._desired
        if desired is None:
            return spec
        pod = next((p for p in desired.pods if p.replica_id == spec.id), None)
        if pod is None or pod.team != spec.team:
            return spec
        path = self.layer.pod_netns_path(pod.team, pod.replica_id)
        return spec.model_copy(update={"pod_netns": path, "pod_ip": pod.ip})

    def pod_of(self, team: str, pod_id: str) -> tuple[str, str, bool] | None:
        """A pod the desired network gives ``pod_id`` (a workspace's): its namespace path,
        its IP, and whether the last pass built it so. None: no pod for it."""
        pods = () if self._desired is None else self._desired.pods
        pod = next((p for p in pods if p.replica_id == pod_id and p.team == team), None)
        if pod is None:
            return None
        path = self.layer.pod_netns_path(team, pod_id)
        built = None if self._report is None else self._report.pods.get(pod_id)
        ready = built is not None and built.ip == pod.ip and os.path.exists(path)
        return path, pod.ip, ready

    def pod_ready(self, spec: ReplicaSpec) -> bool:
        """Whether the replica's pod namespace was built (in the last pass) as ``spec`` says."""
        report = self._report
        if report is None or spec.pod_netns is None:
            return spec.pod_netns is None
        pod = report.pods.get(spec.id)
        return pod is not None and pod.ip == spec.pod_ip and os.path.exists(spec.pod_netns)

    async def reports(self) -> dict[str, TeamMeshReport]:
        """Key and port of each ready gateway, with its peers' latest handshakes and the
        intercepts it is falling back on."""
        report = self._report
        if report is None:
            return {}
        out: dict[str, TeamMeshReport] = {}
        for team, gw in sorted(report.gateways.items()):
            handshakes = {}
            try:
                status = await self.layer.mesh_status(team)
            except KledError as err:
                log.debug("teamgateway/%s/%s no status: %s", team, self.node, err)
            else:
                handshakes = {
                    p.public_key: p.latest_handshake
                    for p in status.peers
                    if p.latest_handshake is not None
                }
            connections, waiting = read_activity(Path(gw.state_dir) / gw.host_id, team)
            out[team] = TeamMeshReport(
                public_key=gw.public_key,
                listen_port=gw.listen_port,
                handshakes=handshakes,
                fallback=sorted(self._fallen.get(team, [])),
                intercepts=self._intercepts.get(team, []),
                connections=connections,
                waiting=waiting,
            )
        return out
