"""Personal intercepts through the team gateways' header router, on real namespaces.

    h1: team gateway + replicas r1, r2 of app api     h2: team gateway + pod c (the caller)
    h3: device alice (100.65.0.10)                      h4: device bob (100.65.0.11)

Every process answers its own name, over HTTP/1.x and HTTP/2 with prior knowledge (and UDP).
The caller on h2 reaches the service IP through h2's gateway, where the router runs.
"""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from netlab import PROBE, Lab, make_lab

from kled.agent.net import device, gateway, nftables, pods, router_process, wireguard
from kled.agent.net.gateway import TeamGateway
from kled.agent.net.pods import PodNet
from kled.resources.netstate import (
    Intercept,
    Peer,
    PersonalIntercept,
    Service,
    ServicePort,
    TeamNetwork,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.xdist_group("netns")]

BLOCK, PORT = "100.65", 51820
SVC_IP = "100.65.1.10"
HTTP, OTHER_TCP, UDP = 80, 81, 5300
APP_HTTP, APP_UDP = 8080, 9090
DEV_HTTP, DEV_UDP = 7070, 7071
DEVICES = {"alice": ("100.65.0.10", 3), "bob": ("100.65.0.11", 4)}
REPLICAS = {"r1": "100.65.16.11", "r2": "100.65.16.12"}


def mesh_ip(host: int) -> str:
    return f"{BLOCK}.0.{host}"


def pod_subnet(host: int) -> str:
    return f"{BLOCK}.{15 + host}.0/24"


def personal(who: str) -> PersonalIntercept:
    return PersonalIntercept(
        header="X-Kled-Dev",
        value=who,
        target_ip=DEVICES[who][0],
        port_map={HTTP: DEV_HTTP, UDP: DEV_UDP},  # UDP listed, yet never routed by header
    )


def service(*who: str, icpt: Intercept | None = None) -> Service:
    return Service(
        name="api",
        env="dev",
        ip=SVC_IP,
        ports=(
            ServicePort(port=HTTP, target_port=APP_HTTP),
            ServicePort(port=OTHER_TCP, target_port=APP_HTTP),
            ServicePort(port=UDP, protocol="UDP", target_port=APP_UDP),
        ),
        backends=tuple(REPLICAS.values()),
        intercept=icpt,
        personal=tuple(personal(w) for w in who),
    )


@dataclass
class Net:
    lab: Lab
    keys: dict[str, str] = field(default_factory=dict)
    nets: dict[int, TeamNetwork] = field(default_factory=dict)
    gws: dict[int, TeamGateway] = field(default_factory=dict)
    pods: dict[str, PodNet] = field(default_factory=dict)

    def key_file(self, who: str) -> Path:
        return self.lab.state_dir / "keys" / f"{who}.key"

    def team_net(self, host: int, svc: Service) -> TeamNetwork:
        other = 2 if host == 1 else 1
        peers = [
            Peer(
                public_key=self.keys[f"n{other}"],
                endpoint=f"{Lab.underlay_ip(other)}:{PORT}",
                allowed_ips=(f"{mesh_ip(other)}/32", pod_subnet(other)),
            )
        ]
        peers += [
            Peer(public_key=self.keys[w], allowed_ips=(f"{ip}/32",))
            for w, (ip, _) in DEVICES.items()
        ]
        return TeamNetwork(
            team="a",
            block=f"{BLOCK}.0.0/16",
            mesh_ip=mesh_ip(host),
            pod_subnet=pod_subnet(host),
            listen_port=PORT,
            private_key_file=str(self.key_file(f"n{host}")),
            peers=tuple(peers),
            services=(svc,),
        )

    async def set_service(self, svc: Service) -> None:
        """What the agent does when the service map changes: every gateway of the team."""
        for host in (1, 2):
            self.nets[host] = self.nets[host].model_copy(update={"services": (svc,)})
            await gateway.update_services(self.gws[host], self.nets[host])

    async def ask(self, *specs: str, port: int = HTTP) -> list[str]:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", self.pods["c"].netns, sys.executable, PROBE, "askh",
            SVC_IP, str(port), "3", *specs, stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        answers: list[str] = json.loads(out)
        return answers

    def curl_h2(self, who: str | None) -> str:
        header = ["-H", f"x-kled-dev: {who}"] if who else []
        done = subprocess.run(
            ["ip", "netns", "exec", self.pods["c"].netns, "curl", "-s", "--max-time", "5",
             "--http2-prior-knowledge", *header, f"http://{SVC_IP}:{HTTP}/"],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return done.stdout if done.returncode == 0 else f"!curl exit {done.returncode}"


async def _build(lab: Lab) -> Net:
    net = Net(lab)
    for who in ("n1", "n2", *DEVICES):
        net.keys[who] = await wireguard.ensure_private_key(net.key_file(who))
    for host in (1, 2):
        net.nets[host] = net.team_net(host, service())
        gw = await gateway.ensure_team_gateway(
            lab.host(host), net.nets[host], state_dir=lab.state_dir
        )
        lab.ifnames.add(gw.wg_ifname)
        net.gws[host] = gw
    for name, ip in REPLICAS.items():
        net.pods[name] = await pods.ensure_pod_netns(name, "a", ip, net.gws[1])
        lab.serve(net.pods[name].netns, name, APP_HTTP, APP_UDP)
    net.pods["c"] = await pods.ensure_pod_netns("c", "a", f"{BLOCK}.17.11", net.gws[2])
    for who, (ip, host) in DEVICES.items():
        dev = device.DeviceNetwork(
            team="a",
            name=who,
            address=ip,
            block=f"{BLOCK}.0.0/16",
            peers=tuple(
                Peer(
                    public_key=net.keys[f"n{h}"],
                    endpoint=f"{Lab.underlay_ip(h)}:{PORT}",
                    allowed_ips=(f"{mesh_ip(h)}/32", pod_subnet(h)),
                    persistent_keepalive=2,
                )
                for h in (1, 2)
            ),
            private_key_file=str(net.key_file(who)),
        )
        ifname = device.device_ifname("a", who, scope=lab.host(host))
        lab.ifnames.add(ifname)
        await device.bring_up(dev, ifname=ifname, netns=lab.host(host))
        lab.serve(lab.host(host), who, DEV_HTTP, DEV_UDP, bind=ip)
    return net


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Net]:
    with make_lab(4, tmp_path_factory.mktemp("netlab")) as lab:
        built = asyncio.run(_build(lab))
        asyncio.run(built.set_service(service("alice", "bob")))
        yield built


async def _reaches(net: Net, spec: str, want: set[str]) -> None:
    answers = await net.ask(*[spec] * 6)
    assert set(answers) <= want and answers, answers


async def test_each_header_reaches_its_device_and_the_rest_the_replicas(net: Net) -> None:
    # The first WireGuard handshakes take a moment; after that nothing is retried.
    for spec, want in (("alice", {"alice"}), ("bob", {"bob"}), ("-", {"r1", "r2"})):
        await net.lab.eventually(lambda s=spec, w=want: _reaches(net, s, w))  # type: ignore[misc]
    assert set(await net.ask(*["-"] * 20)) == {"r1", "r2"}  # round-robin over both replicas
    answers = await net.ask("alice", "bob", "-")
    assert answers[:2] == ["alice", "bob"] and answers[2] in REPLICAS, answers
    # A value nobody intercepts, and bytes that are not HTTP, go to the replicas.
    assert set(await net.ask("carol", "ALICE", "!raw", "!raw")) <= {"r1", "r2"}


def _landed(answer: str) -> str:
    """A device's name, ``-`` for any replica, or the error."""
    return "-" if answer in REPLICAS else answer


async def test_sixty_mixed_requests_at_once_land_where_their_header_says(net: Net) -> None:
    specs = ["alice"] * 20 + ["bob"] * 20 + ["-"] * 20
    random.Random(5).shuffle(specs)
    answers = await net.ask(*specs)
    assert [_landed(a) for a in answers] == [_landed(s) for s in specs]
    counts = Counter(_landed(a) for a in answers)
    assert counts == {"alice": 20, "bob": 20, "-": 20}
    assert {a for a in answers if a in REPLICAS} == {"r1", "r2"}


async def test_http2_prior_knowledge_is_routed_by_its_first_headers(net: Net) -> None:
    assert net.curl_h2("alice") == "alice"
    assert net.curl_h2("bob") == "bob"
    assert {net.curl_h2(None) for _ in range(8)} == {"r1", "r2"}


async def test_udp_other_ports_and_the_router_port_itself_are_untouched(net: Net) -> None:
    rules = await nftables.list_table(net.gws[2].netns)
    comments = {r["rule"].get("comment", "") for r in rules if "rule" in r}
    assert "app/dev/api personal intercepts" in comments
    # Port 81 is not in any personal intercept: a header there means nothing.
    assert set(await net.ask("alice", "bob", "alice", "bob", port=OTHER_TCP)) <= {"r1", "r2"}
    udp = await net.lab.ask(net.pods["c"].netns, "udp", SVC_IP, UDP, 10)
    assert set(udp) <= {"r1", "r2"} and udp
    # Nobody reaches the router except through the gateway's redirect.
    direct = await net.lab.ask(net.pods["c"].netns, "tcp", mesh_ip(2), nftables.ROUTER_PORT, 1, 1.0)
    assert direct[0].startswith("!"), direct


async def test_removing_a_personal_intercept_returns_its_traffic_to_the_replicas(
    net: Net,
) -> None:
    folder = net.lab.state_dir / net.gws[2].host_id
    files = router_process.RouterFiles(folder, "a")
    pid = router_process.running_pid(files)
    assert pid is not None
    try:
        await net.set_service(service("bob"))
        assert router_process.running_pid(files) == pid  # reloaded, not restarted
        assert set(await net.ask("alice", "alice", "alice", "alice")) <= {"r1", "r2"}
        assert await net.ask("bob", "bob") == ["bob", "bob"]

        await net.set_service(service())
        assert router_process.running_pid(files) is None and not files.config.exists()
        rules = await nftables.list_table(net.gws[2].netns)
        assert not any("personal" in r.get("rule", {}).get("comment", "") for r in rules)
        assert set(await net.ask("alice", "bob", "-", "alice")) <= {"r1", "r2"}
    finally:
        await net.set_service(service("alice", "bob"))
    assert await net.ask("alice", "bob") == ["alice", "bob"]


async def test_a_global_intercept_wins_over_personal_ones(net: Net) -> None:
    to_alice = Intercept(target_ip=DEVICES["alice"][0], port_map={HTTP: DEV_HTTP})
    try:
        await net.set_service(service("alice", "bob", icpt=to_alice))
        assert await net.ask("bob", "-", "alice") == ["alice"] * 3
    finally:
        await net.set_service(service("alice", "bob"))
    assert await net.ask("bob") == ["bob"]
