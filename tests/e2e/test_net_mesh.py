"""The team mesh on real namespaces: two hosts, two teams, a Kled device and a plain-wg one.

Built once for the module with the network library alone (no control plane):

    h1: team A gateway + pods a1, a2 (the replicas of app api)   team B gateway + pod b1
    h2: team A gateway + pod a3 (the caller)                      team B gateway + pod b2
    h3: a Kled device of team A (intercept target), h4: a device brought up with plain wg
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netlab import PROBE, Lab, make_lab, sh

from kled.agent.net import device, gateway, nftables, pods, wireguard
from kled.agent.net.gateway import TeamGateway
from kled.agent.net.pods import PodNet
from kled.resources.netstate import Intercept, Peer, Service, ServicePort, TeamNetwork

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.xdist_group("netns")]

BLOCKS = {"a": "100.65", "b": "100.66"}
PORTS = {"a": 51820, "b": 51821}
HTTP, UDP = 80, 5300
APP_HTTP, APP_UDP = 8080, 9090
DEV_HTTP, DEV_UDP = 7070, 7071
LAPTOP_IP, PHONE_IP = "100.65.0.10", "100.65.0.11"


def mesh_ip(team: str, host: int) -> str:
    return f"{BLOCKS[team]}.0.{host}"


def pod_subnet(team: str, host: int) -> str:
    return f"{BLOCKS[team]}.{15 + host}.0/24"


def pod_ip(team: str, host: int, n: int) -> str:
    return f"{BLOCKS[team]}.{15 + host}.{10 + n}"


def service_ip(team: str) -> str:
    return f"{BLOCKS[team]}.1.10"


@dataclass
class Mesh:
    lab: Lab
    keys: dict[str, str] = field(default_factory=dict)  # node/device → public key
    nets: dict[tuple[int, str], TeamNetwork] = field(default_factory=dict)
    gws: dict[tuple[int, str], TeamGateway] = field(default_factory=dict)
    pods: dict[str, PodNet] = field(default_factory=dict)
    laptop: device.DeviceNetwork | None = None
    laptop_if: str = ""

    def service(self, team: str, backends: list[str], icpt: Intercept | None = None) -> Service:
        return Service(
            name="api",
            env="dev",
            ip=service_ip(team),
            ports=(
                ServicePort(port=HTTP, protocol="TCP", target_port=APP_HTTP),
                ServicePort(port=UDP, protocol="UDP", target_port=APP_UDP),
            ),
            backends=tuple(backends),
            intercept=icpt,
        )

    def team_net(self, team: str, host: int, services: tuple[Service, ...]) -> TeamNetwork:
        other = 2 if host == 1 else 1
        peers = [
            Peer(
                public_key=self.keys[f"{team}{other}"],
                endpoint=f"{Lab.underlay_ip(other)}:{PORTS[team]}",
                allowed_ips=(f"{mesh_ip(team, other)}/32", pod_subnet(team, other)),
            )
        ]
        if team == "a":
            peers += [
                Peer(public_key=self.keys["laptop"], allowed_ips=(f"{LAPTOP_IP}/32",)),
                Peer(public_key=self.keys["phone"], allowed_ips=(f"{PHONE_IP}/32",)),
            ]
        return TeamNetwork(
            team=team,
            block=f"{BLOCKS[team]}.0.0/16",
            mesh_ip=mesh_ip(team, host),
            pod_subnet=pod_subnet(team, host),
            listen_port=PORTS[team],
            private_key_file=str(self.key_file(f"{team}{host}")),
            peers=tuple(peers),
            services=services,
            dns_server=f"{mesh_ip(team, 1)}:53",
            search_domain=f"dev.{team}.kled.internal",
        )

    def key_file(self, who: str) -> Path:
        return self.lab.state_dir / "keys" / f"{who}.key"

    def device_peers(self) -> tuple[Peer, ...]:
        """Node 1 carries the service range for devices; node 2 only its own addresses."""
        return (
            Peer(
                public_key=self.keys["a1"],
                endpoint=f"{Lab.underlay_ip(1)}:{PORTS['a']}",
                allowed_ips=(f"{mesh_ip('a', 1)}/32", pod_subnet("a", 1), "100.65.1.0/24"),
                persistent_keepalive=2,
            ),
            Peer(
                public_key=self.keys["a2"],
                endpoint=f"{Lab.underlay_ip(2)}:{PORTS['a']}",
                allowed_ips=(f"{mesh_ip('a', 2)}/32", pod_subnet("a", 2)),
                persistent_keepalive=2,
            ),
        )

    async def set_services(self, team: str, services: tuple[Service, ...]) -> None:
        """What the agent does when the service map changes: every gateway of the team."""
        for host in (1, 2):
            net = self.nets[(host, team)].model_copy(update={"services": services})
            self.nets[(host, team)] = net
            await gateway.update_services(self.gws[(host, team)], net)

    async def ensure_all(self) -> None:
        lab = self.lab
        for host in (1, 2):
            for team in ("a", "b"):
                gw = await gateway.ensure_team_gateway(
                    lab.host(host), self.nets[(host, team)], state_dir=lab.state_dir
                )
                lab.ifnames.add(gw.wg_ifname)
                self.gws[(host, team)] = gw
        for name, (team, host, n) in PODS.items():
            self.pods[name] = await pods.ensure_pod_netns(
                name, team, pod_ip(team, host, n), self.gws[(host, team)]
            )

    def start_servers(self) -> None:
        for name in ("a1", "a2", "b1"):
            self.lab.serve(self.pods[name].netns, name, APP_HTTP, APP_UDP)


#: pod name → (team, host, n)
PODS = {"a1": ("a", 1, 1), "a2": ("a", 1, 2), "a3": ("a", 2, 1), "b1": ("b", 1, 1),
        "b2": ("b", 2, 1)}  # fmt: skip


async def _build(lab: Lab) -> Mesh:
    mesh = Mesh(lab)
    for who in ("a1", "a2", "b1", "b2", "laptop", "phone"):
        mesh.keys[who] = await wireguard.ensure_private_key(mesh.key_file(who))
    replicas = [pod_ip("a", 1, 1), pod_ip("a", 1, 2)]
    for host in (1, 2):
        mesh.nets[(host, "a")] = mesh.team_net("a", host, (mesh.service("a", replicas),))
        mesh.nets[(host, "b")] = mesh.team_net("b", host, (mesh.service("b", [pod_ip("b", 1, 1)]),))
    await mesh.ensure_all()
    mesh.start_servers()

    # A stand-in for Kled's DNS server, on node 1's mesh address (the team's dns_server).
    lab.spawn(
        mesh.gws[(1, "a")].netns, sys.executable, PROBE, "dns", mesh_ip("a", 1),
        f"api.dev.a.kled.internal={service_ip('a')}", ready="ready",
    )  # fmt: skip
    mesh.laptop = device.DeviceNetwork(
        team="a",
        name="laptop",
        address=LAPTOP_IP,
        block="100.65.0.0/16",
        peers=mesh.device_peers(),
        private_key_file=str(mesh.key_file("laptop")),
        dns=f"{mesh_ip('a', 1)}:53",
        search_domains=("a.kled.internal",),
    )
    mesh.laptop_if = device.device_ifname("a", "laptop", scope=lab.host(3))
    lab.ifnames.add(mesh.laptop_if)
    await device.bring_up(mesh.laptop, ifname=mesh.laptop_if, netns=lab.host(3))
    # The developer's process on the laptop, listening on its mesh address.
    lab.serve(lab.host(3), "laptop", DEV_HTTP, DEV_UDP, bind=LAPTOP_IP)
    return mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with make_lab(4, tmp_path_factory.mktemp("netlab")) as lab:
        yield asyncio.run(_build(lab))


async def spread(mesh: Mesh, proto: str, count: int = 20) -> Counter[str]:
    port = HTTP if proto == "tcp" else UDP
    answers = await mesh.lab.ask(mesh.pods["a3"].netns, proto, service_ip("a"), port, count)
    return Counter(answers)


async def test_service_ip_spreads_over_both_replicas_tcp_and_udp(mesh: Mesh) -> None:
    async def both(proto: str) -> None:
        seen = await spread(mesh, proto)
        assert set(seen) == {"a1", "a2"}, seen

    await mesh.lab.eventually(lambda: both("tcp"))
    await mesh.lab.eventually(lambda: both("udp"))


async def pinned_udp_port(mesh: Mesh, replica: str) -> int:
    """A client source port whose UDP flow the gateway has pinned to ``replica``."""
    ns = mesh.pods["a3"].netns
    for sport in range(41000, 41064):
        answer = await mesh.lab.ask(ns, "udp", service_ip("a"), UDP, 1, 1.0, sport)
        if answer == [replica]:
            return sport
    raise AssertionError(f"no UDP flow landed on {replica}")


async def test_removed_backend_stops_answering(mesh: Mesh) -> None:
    both = [pod_ip("a", 1, 1), pod_ip("a", 1, 2)]
    a3 = mesh.pods["a3"].netns
    sport = await pinned_udp_port(mesh, "a1")
    await mesh.set_services("a", (mesh.service("a", [pod_ip("a", 1, 2)]),))
    try:
        assert set(await spread(mesh, "tcp")) == {"a2"}
        assert set(await spread(mesh, "udp")) == {"a2"}
        # The same UDP flow (a client that keeps its socket) moves off the removed replica.
        assert await mesh.lab.ask(a3, "udp", service_ip("a"), UDP, 3, 1.0, sport) == ["a2"] * 3
        await mesh.set_services("a", (mesh.service("a", []),))
        refused = await mesh.lab.ask(a3, "tcp", service_ip("a"), HTTP)
        assert refused == ["!ConnectionRefusedError"]
    finally:
        await mesh.set_services("a", (mesh.service("a", both),))
    assert set(await spread(mesh, "tcp")) == {"a1", "a2"}


async def test_intercept_sends_traffic_to_the_device_and_back(mesh: Mesh) -> None:
    replicas = [pod_ip("a", 1, 1), pod_ip("a", 1, 2)]
    a3 = mesh.pods["a3"].netns
    sport = await pinned_udp_port(mesh, "a2")
    icpt = Intercept(target_ip=LAPTOP_IP, port_map={HTTP: DEV_HTTP, UDP: DEV_UDP})
    await mesh.set_services("a", (mesh.service("a", replicas, icpt),))
    try:

        async def on_laptop() -> None:
            assert set(await spread(mesh, "tcp", 5)) == {"laptop"}
            assert set(await spread(mesh, "udp", 5)) == {"laptop"}

        await mesh.lab.eventually(on_laptop)
        assert await mesh.lab.ask(a3, "udp", service_ip("a"), UDP, 1, 1.0, sport) == ["laptop"]
        rules = await nftables.list_table(mesh.gws[(2, "a")].netns)
        assert any("intercepted" in r.get("rule", {}).get("comment", "") for r in rules)
    finally:
        await mesh.set_services("a", (mesh.service("a", replicas),))
    assert set(await spread(mesh, "tcp")) == {"a1", "a2"}
    assert set(await spread(mesh, "udp")) == {"a1", "a2"}
    assert (await mesh.lab.ask(a3, "udp", service_ip("a"), UDP, 1, 1.0, sport))[0] in {"a1", "a2"}


async def test_teams_on_one_host_cannot_reach_each_other(mesh: Mesh) -> None:
    lab = mesh.lab
    # Team B itself works, so a failure below is isolation and not a broken team B.
    await lab.eventually(
        lambda: _expect(lab.ask(mesh.pods["b2"].netns, "tcp", service_ip("b"), HTTP), ["b1"])
    )
    await lab.eventually(
        lambda: _expect(lab.ask(mesh.pods["a3"].netns, "tcp", service_ip("a"), HTTP), None)
    )
    for src, targets in {
        "b2": [service_ip("a"), pod_ip("a", 1, 1)],
        "b1": [pod_ip("a", 1, 1), service_ip("a")],
        "a3": [service_ip("b"), pod_ip("b", 1, 1)],
        "a1": [pod_ip("b", 1, 1), service_ip("b")],
    }.items():
        for ip in targets:
            port = HTTP if ip.endswith(".1.10") else APP_HTTP
            answers = await lab.ask(mesh.pods[src].netns, "tcp", ip, port, 1, 1.0)
            assert answers[0].startswith("!"), f"{src} reached {ip}: {answers}"
            uport = UDP if ip.endswith(".1.10") else APP_UDP
            answers = await lab.ask(mesh.pods[src].netns, "udp", ip, uport, 1, 1.0)
            assert answers[0].startswith("!"), f"{src} reached {ip} over UDP: {answers}"


async def _expect(answers_coro: object, want: list[str] | None) -> None:
    answers = await answers_coro  # type: ignore[misc]
    if want is None:
        assert not answers[0].startswith("!"), answers
    else:
        assert answers == want, answers


async def test_kled_device_reaches_service_and_reports_handshakes(mesh: Mesh) -> None:
    lab = mesh.lab
    await lab.eventually(lambda: _expect(lab.ask(lab.host(3), "tcp", service_ip("a"), HTTP), None))
    answers = await lab.ask(lab.host(3), "tcp", service_ip("a"), HTTP, 20)
    assert set(answers) == {"a1", "a2"}
    status = await wireguard.status(mesh.gws[(1, "a")].wg_ifname)
    assert status.peer(mesh.keys["laptop"]).alive()
    key = mesh.key_file("laptop")
    assert key.stat().st_mode & 0o777 == 0o600


async def test_plain_wg_device_from_rendered_config_reaches_service(mesh: Mesh) -> None:
    lab = mesh.lab
    phone = device.DeviceNetwork(
        team="a",
        name="phone",
        address=PHONE_IP,
        block="100.65.0.0/16",
        peers=mesh.device_peers(),
        private_key_file=str(mesh.key_file("phone")),
        dns=f"{mesh_ip('a', 1)}:53",
        search_domains=("dev.a.kled.internal",),
    )
    text = device.render_wg_quick(phone, mesh.key_file("phone").read_text().strip())
    assert "[Interface]" in text and f"Address = {PHONE_IP}/32" in text
    assert "DNS = 100.65.0.1, dev.a.kled.internal" in text
    conf = lab.state_dir / "phone.conf"
    conf.write_text(text)
    # What a user without Kled does: wg-quick's own parser strips Address/DNS for `wg`.
    stripped = lab.state_dir / "phone.wg"
    stripped.write_text(_strip_wg_quick(text))
    ifname = wireguard.interface_name(lab.host(4), "phone")
    lab.ifnames.add(ifname)
    host = lab.host(4)
    env = {"WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1", "PATH": "/usr/sbin:/usr/bin"}
    subprocess.run(["ip", "netns", "exec", host, "wireguard-go", ifname], env=env, check=True)
    sh("wg", "setconf", ifname, str(stripped))
    sh("ip", "-n", host, "addr", "add", f"{PHONE_IP}/32", "dev", ifname)
    sh("ip", "-n", host, "link", "set", ifname, "up")
    sh("ip", "-n", host, "route", "add", "100.65.0.0/16", "dev", ifname)
    await lab.eventually(lambda: _expect(lab.ask(host, "tcp", service_ip("a"), HTTP), None))
    assert set(await lab.ask(host, "udp", service_ip("a"), UDP, 20)) == {"a1", "a2"}


def _strip_wg_quick(text: str) -> str:
    """Drop the wg-quick-only keys, as `wg-quick strip` does."""
    drop = (
        "Address",
        "DNS",
        "MTU",
        "Table",
        "PreUp",
        "PostUp",
        "PreDown",
        "PostDown",
        "SaveConfig",
    )
    keep = [line for line in text.splitlines() if line.split("=")[0].strip() not in drop]
    return "\n".join(keep) + "\n"


async def test_pods_reach_the_app_by_short_name_through_the_gateway_dns(mesh: Mesh) -> None:
    pod = mesh.pods["a3"]
    conf = sh("ip", "netns", "exec", pod.netns, "cat", "/etc/resolv.conf")
    assert f"nameserver {mesh.gws[(2, 'a')].bridge_ip}" in conf
    assert "search dev.a.kled.internal a.kled.internal" in conf
    # `api` → api.dev.a.kled.internal through the search list → the service IP, from a pod
    # on node 2 whose gateway forwards DNS over the mesh to node 1.
    answers = await mesh.lab.ask(pod.netns, "tcp", "api", HTTP, 20)
    assert set(answers) == {"a1", "a2"}
    missing = await mesh.lab.ask(pod.netns, "tcp", "nothere", HTTP)
    assert missing == ["!gaierror"]
    digged = sh("ip", "netns", "exec", pod.netns, "dig", "+short", "+search", "api")
    assert digged.split() == [service_ip("a")]


async def test_revoked_device_loses_access_and_others_keep_it(mesh: Mesh) -> None:
    lab = mesh.lab
    laptop = lab.host(3)
    await lab.eventually(lambda: _expect(lab.ask(laptop, "tcp", service_ip("a"), HTTP), None))
    nets = {k: n for k, n in mesh.nets.items() if k[1] == "a"}
    try:
        for key, net in nets.items():
            peers = tuple(p for p in net.peers if p.public_key != mesh.keys["laptop"])
            await gateway.update_peers(mesh.gws[key], net.model_copy(update={"peers": peers}))
        assert (await lab.ask(laptop, "tcp", service_ip("a"), HTTP, 1, 1.0))[0].startswith("!")
        assert (await lab.ask(laptop, "udp", service_ip("a"), UDP, 1, 1.0))[0].startswith("!")
        assert set(await spread(mesh, "tcp")) == {"a1", "a2"}
    finally:
        for key, net in nets.items():
            await gateway.update_peers(mesh.gws[key], net)
    # The laptop re-handshakes once its old session times out (WireGuard: ~15 s).
    await lab.eventually(
        lambda: _expect(lab.ask(laptop, "tcp", service_ip("a"), HTTP), None), attempts=120
    )


async def test_everything_rebuilds_after_namespaces_are_deleted(mesh: Mesh) -> None:
    lab = mesh.lab
    for proc in list(lab.procs):
        argv = proc.args if isinstance(proc.args, list) else []
        if argv[3] != lab.host(3):  # the servers in pods, not the laptop's
            lab.stop(proc)
            lab.procs.remove(proc)
    # A reboot: the gateways' and pods' namespaces vanish, wireguard-go with them.
    for ns in sh("ip", "netns", "list").split():
        if ns.startswith(("kt-kx-", "kp-kx-")) and lab.owns(ns):
            sh("ip", "netns", "delete", ns)
    for gw in mesh.gws.values():
        await wireguard.wait_gone(gw.wg_ifname)
        assert not wireguard.is_alive(gw.wg_ifname)
    await mesh.ensure_all()
    mesh.start_servers()

    async def works() -> None:
        assert set(await spread(mesh, "tcp")) == {"a1", "a2"}
        assert set(await spread(mesh, "udp")) == {"a1", "a2"}

    await lab.eventually(works)
    # And a second ensure on a healthy host changes nothing and keeps it working.
    before = {k: wireguard.process_ids(g.wg_ifname) for k, g in mesh.gws.items()}
    await mesh.ensure_all()
    assert before == {k: wireguard.process_ids(g.wg_ifname) for k, g in mesh.gws.items()}
    assert set(await spread(mesh, "tcp")) == {"a1", "a2"}
