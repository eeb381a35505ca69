"""An intercept's device goes offline → its gateways fall back to the replicas; it comes
back → the intercept resumes (issue 5 §4), with ``LinuxHostNetwork.apply`` and ``tick``.

    h1: node 1, team gateway + replica pod r1      h2: node 2, team gateway + caller pod c1
    h3: the developer's laptop (a Kled device), serving on its mesh address
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from netlab import Lab, make_lab

from kled.agent.net import device, host, wireguard
from kled.resources.netstate import (
    HostNetwork,
    Intercept,
    Peer,
    PodNetwork,
    Service,
    ServicePort,
    TeamNetwork,
)

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.xdist_group("netns")]

PORT = 51830
HTTP, UDP = 80, 5300
APP_HTTP, APP_UDP = 8080, 9090
DEV_HTTP, DEV_UDP = 7070, 7071
SERVICE_IP, LAPTOP_IP = "100.67.1.10", "100.67.0.10"
#: short, so that the test does not wait 15 s; the logic is the same
OFFLINE_AFTER = 3.0


def mesh_ip(h: int) -> str:
    return f"100.67.0.{h}"


def pod_subnet(h: int) -> str:
    return f"100.67.{15 + h}.0/24"


def pod_ip(h: int) -> str:
    return f"100.67.{15 + h}.10"


@dataclass
class Offline:
    lab: Lab
    layers: dict[int, host.LinuxHostNetwork]
    keys: dict[str, str]
    laptop: device.DeviceNetwork
    laptop_if: str

    def desired(self, h: int, service: Service) -> HostNetwork:
        other = 2 if h == 1 else 1
        peers: tuple[Peer, ...] = ()
        if f"n{other}" in self.keys:  # known after the first pass
            peers = (
                Peer(
                    public_key=self.keys[f"n{other}"],
                    endpoint=f"{Lab.underlay_ip(other)}:{PORT}",
                    allowed_ips=(f"{mesh_ip(other)}/32", pod_subnet(other)),
                ),
                Peer(public_key=self.keys["laptop"], allowed_ips=(f"{LAPTOP_IP}/32",)),
            )
        team = TeamNetwork(
            team="off",
            block="100.67.0.0/16",
            mesh_ip=mesh_ip(h),
            pod_subnet=pod_subnet(h),
            listen_port=PORT,
            peers=peers,
            services=(service,),
        )
        pod = PodNetwork(replica_id="r1" if h == 1 else "c1", team="off", ip=pod_ip(h))
        return HostNetwork(teams=(team,), pods=(pod,))

    async def apply(self, service: Service) -> None:
        for h, layer in self.layers.items():
            report = await layer.apply(self.desired(h, service))
            assert not report.errors, report.errors
            gw = report.gateways["off"]
            self.lab.ifnames.add(gw.wg_ifname)
            self.keys[f"n{h}"] = gw.public_key

    async def answers(self, proto: str, count: int = 3) -> set[str]:
        caller = self.layers[2].pod_netns_path("off", "c1").rsplit("/", 1)[1]
        port = HTTP if proto == "tcp" else UDP
        return set(await self.lab.ask(caller, proto, SERVICE_IP, port, count, 1.5))


def service(icpt: Intercept | None = None) -> Service:
    return Service(
        name="api",
        env="dev",
        ip=SERVICE_IP,
        ports=(
            ServicePort(port=HTTP, protocol="TCP", target_port=APP_HTTP),
            ServicePort(port=UDP, protocol="UDP", target_port=APP_UDP),
        ),
        backends=(pod_ip(1),),
        intercept=icpt,
    )


@pytest.fixture
async def offline(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Offline]:
    with make_lab(3, tmp_path_factory.mktemp("netlab")) as lab:
        layers = {
            h: host.LinuxHostNetwork(
                lab.host(h), state_dir=lab.state_dir, offline_after=OFFLINE_AFTER
            )
            for h in (1, 2)
        }
        key_file = lab.state_dir / "keys" / "laptop.key"
        keys = {"laptop": await wireguard.ensure_private_key(key_file)}
        laptop = device.DeviceNetwork(
            team="off", name="laptop", address=LAPTOP_IP, block="100.67.0.0/16",
            peers=(), private_key_file=str(key_file),
        )  # fmt: skip
        lab_off = Offline(
            lab, layers, keys, laptop, device.device_ifname("off", "laptop", lab.host(3))
        )
        await lab_off.apply(service())
        await lab_off.apply(service())  # now with each other's keys as peers
        peers = tuple(
            Peer(
                public_key=keys[f"n{h}"],
                endpoint=f"{Lab.underlay_ip(h)}:{PORT}",
                allowed_ips=(f"{mesh_ip(h)}/32", pod_subnet(h), "100.67.1.0/24")
                if h == 1
                else (f"{mesh_ip(h)}/32", pod_subnet(h)),
                persistent_keepalive=1,
            )
            for h in (1, 2)
        )
        lab_off.laptop = device.DeviceNetwork(
            team="off", name="laptop", address=LAPTOP_IP, block="100.67.0.0/16",
            peers=peers, private_key_file=str(key_file),
        )  # fmt: skip
        lab.ifnames.add(lab_off.laptop_if)
        await device.bring_up(lab_off.laptop, ifname=lab_off.laptop_if, netns=lab.host(3))
        lab.serve(
            layers[1].pod_netns_path("off", "r1").rsplit("/", 1)[1], "replica", APP_HTTP, APP_UDP
        )
        lab.serve(lab.host(3), "laptop", DEV_HTTP, DEV_UDP, bind=LAPTOP_IP)
        yield lab_off


@contextlib.asynccontextmanager
async def ticking(layers: dict[int, host.LinuxHostNetwork]) -> AsyncIterator[None]:
    """The agent's loop: every gateway judges its devices twice a second."""

    async def loop() -> None:
        while True:
            for layer in layers.values():
                await layer.tick()
            await asyncio.sleep(0.5)

    task = asyncio.create_task(loop())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_offline_device_falls_back_and_resumes(offline: Offline) -> None:
    lab = offline.lab
    icpt = Intercept(target_ip=LAPTOP_IP, port_map={HTTP: DEV_HTTP, UDP: DEV_UDP})
    kept = icpt.model_copy(update={"on_device_offline": "keep"})
    async with ticking(offline.layers):
        await offline.apply(service(icpt))

        async def on(where: str) -> None:
            assert await offline.answers("tcp") == {where}
            assert await offline.answers("udp") == {where}

        await lab.eventually(lambda: on("laptop"), attempts=60)

        # The laptop goes away: no keepalives reach the gateways any more.
        await device.bring_down(offline.laptop_if, netns=lab.host(3))
        await lab.eventually(lambda: on("replica"), attempts=60)
        fallen = await offline.layers[2].tick()
        assert fallen == {"off": [f"dev/api→{LAPTOP_IP}"]}

        # Back: the first keepalive resumes the intercept.
        await device.bring_up(offline.laptop, ifname=offline.laptop_if, netns=lab.host(3))
        await lab.eventually(lambda: on("laptop"), attempts=60)
        assert await offline.layers[2].tick() == {}

        # ``keep``: the intercept stays pointed at the device while it is away.
        await offline.apply(service(kept))
        await device.bring_down(offline.laptop_if, netns=lab.host(3))
        await asyncio.sleep(OFFLINE_AFTER * 2)
        assert await offline.layers[2].tick() == {}
        assert all(a.startswith("!") for a in await offline.answers("tcp"))
