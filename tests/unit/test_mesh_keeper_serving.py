"""A replica stays "serving" while any network this host has or is applying lists it.

The agent's drain waits on ``MeshKeeper.serving`` before a replica's preStop hook: if a
pass that began with an older network (the replica a backend) ends after a newer one
came (the replica gone), the gateway routes to the replica until the next pass, and the
drain must see that. The layer here is a stand-in that blocks inside ``apply`` so the
test can look at the keeper mid-pass; the keeper's bookkeeping is what is tested.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from kled.agent.mesh import MeshKeeper
from kled.agent.net.host import HostReport
from kled.resources.netstate import HostNetwork, Service, ServicePort, TeamNetwork

POD = "100.64.0.138"


class _BlockingLayer:
    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def apply(self, network: HostNetwork) -> HostReport:
        self.entered.set()
        await self.release.wait()
        return HostReport()

    def pod_netns_path(self, team: str, replica_id: str) -> str:
        return f"/run/netns/test-{team}-{replica_id}"


def _network(*backends: str) -> HostNetwork:
    service = Service(
        name="web",
        env="dev",
        ip="100.64.0.200",
        ports=(ServicePort(port=80, target_port=8080),),
        backends=backends,
    )
    team = TeamNetwork(
        team="a",
        block="100.64.0.0/16",
        mesh_ip="100.64.0.1",
        pod_subnet="100.64.0.128/26",
        listen_port=16384,
        private_key_file=None,
        services=(service,),
    )
    return HostNetwork(teams=(team,))


def test_a_pass_applying_an_older_network_keeps_the_backend_serving(tmp_path: Path) -> None:
    async def main() -> list[bool]:
        layer = _BlockingLayer()
        keeper = MeshKeeper(layer, tmp_path / "keys", node="n1")  # type: ignore[arg-type]
        (tmp_path / "keys").mkdir(mode=0o700)
        (tmp_path / "keys" / "a.key").write_text("x\n")  # no key to make for the pass
        seen = []
        keeper.want(_network(POD))
        first = asyncio.create_task(keeper.apply_now())
        await layer.entered.wait()
        keeper.want(_network())  # the replica is planned away while that pass runs
        seen.append(keeper.serving(POD))  # the pass in flight will route to it
        layer.release.set()
        await first
        seen.append(keeper.serving(POD))  # and it did: the applied network lists it
        await keeper.apply_now()
        seen.append(keeper.serving(POD))  # the newer network applied: it is gone
        return seen

    assert asyncio.run(main()) == [True, True, False]
