"""The mesh controller on a real store (SQLite): statuses, records, peers, restarts."""

from __future__ import annotations

import asyncio
import base64
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kled.control.ipam import Ipam
from kled.control.meshctl import MeshController, RecordSet
from kled.control.netmap import Deltas
from kled.dns.server import DnsServer
from kled.resources.kinds import validate
from kled.store.cipher import SecretCipher
from kled.store.database import Database
from kled.store.objects import Key, Store


def key(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


def team(name: str, **spec: Any) -> dict[str, Any]:
    return validate({"kind": "Team", "metadata": {"name": name}, "spec": spec})


def node(name: str, address: str) -> dict[str, Any]:
    return validate({"kind": "Node", "metadata": {"name": name}, "spec": {"address": address}})


def device(name: str, team: str = "acme", public_key: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"owner": "ada"}
    if public_key:
        spec["publicKey"] = public_key
    return validate({"kind": "Device", "metadata": {"name": name, "team": team}, "spec": spec})


def app(
    name: str, env: str = "dev", team: str = "acme", ports: list[Any] | None = None
) -> dict[str, Any]:
    return validate(
        {
            "kind": "App",
            "metadata": {"name": name, "team": team, "environment": env},
            "spec": {"command": ["sleep", "1"], "ports": ports or []},
        }
    )


class Recorder:
    """The callbacks a control plane would wire to the DNS server and the bus."""

    def __init__(self) -> None:
        self.records: dict[str, RecordSet | None] = {}
        self.deltas: list[Deltas] = []

    def on_records(self, team: str, records: RecordSet | None) -> None:
        self.records[team] = records

    async def on_netmap(self, deltas: Deltas) -> None:
        self.deltas.append(deltas)


class World:
    def __init__(self, store: Store, ipam: Ipam, db_url: str) -> None:
        self.store, self.ipam, self.db_url = store, ipam, db_url
        self.seen = Recorder()
        self.ctl = self.controller()

    def controller(self) -> MeshController:
        return MeshController(
            self.store, self.ipam, on_records=self.seen.on_records, on_netmap=self.seen.on_netmap
        )

    async def settle(self, ctl: MeshController | None = None) -> None:
        """Let the controller handle every event there is (its own status writes too)."""
        ctl = ctl or self.ctl
        while await ctl.step():
            pass

    async def status(self, kind: str, name: str, team: str = "", env: str = "") -> dict[str, Any]:
        doc = await self.store.get(Key(kind, team, env, name))
        return dict(doc.get("status") or {})


@pytest.fixture
async def world(tmp_path: Path) -> AsyncIterator[World]:
    url = f"sqlite:///{tmp_path / 'kled.db'}"
    db = await Database.open(url)
    store = Store(db, SecretCipher.from_data_dir(tmp_path))
    try:
        w = World(store, Ipam(db), url)
        await w.ctl.rebuild()
        yield w
    finally:
        await db.close()


async def test_resources_get_addresses_names_and_records(world: World) -> None:
    s = world.store
    await s.create(team("acme"))
    await s.create(node("n1", "198.18.0.1"))
    await s.create(device("laptop", public_key=key(1)))
    await s.create(app("api", ports=[{"name": "http", "port": 80}, {"port": 9000}]))
    await world.settle()

    assert (await world.status("Team", "acme"))["block"] == "100.64.0.0/16"
    api = await world.status("App", "api", "acme", "dev")
    assert api == {"ip": "100.64.4.1", "dns": "api.dev.acme.kled.internal"}
    laptop = await world.status("Device", "laptop", "acme")
    assert laptop == {"ip": "100.64.0.2", "dns": "laptop.acme.kled.internal"}
    n1 = await world.status("Node", "n1")
    assert n1["mesh"]["acme"] == {
        "ip": "100.64.0.1",
        "podSubnet": "100.64.8.0/24",
        "dns": "n1.nodes.acme.kled.internal",
    }

    records = world.seen.records["acme"]
    assert records is not None
    assert records.apps[("dev", "api")].ip == "100.64.4.1"
    assert [p.name for p in records.apps[("dev", "api")].ports] == ["http"]  # named only
    assert records.devices == {"laptop": "100.64.0.2"}
    assert records.nodes == {"n1": "100.64.0.1"}


async def test_peers_join_when_keys_are_known_and_endpoints_propagate(world: World) -> None:
    s = world.store
    await s.create(team("acme"))
    await s.create(node("n1", "198.18.0.1"))
    await s.create(node("n2", "198.18.0.2"))
    await s.create(device("laptop", public_key=key(1)))
    await world.settle()
    # Until the agents report their keys only the device is a peer (with nobody to see).
    assert [p.id for p in world.ctl.netmap.peers("acme")] == ["acme/device/laptop"]

    for i, name in enumerate(("n1", "n2"), start=2):
        doc = await s.get(Key("Node", "", "", name))
        status = doc["status"]
        status["mesh"]["acme"].update(publicKey=key(i), listenPort=51820)
        await s.update_status(Key("Node", "", "", name), status)
    world.seen.deltas.clear()
    await world.settle()
    laptop_map = world.ctl.netmap.full_map("acme/device/laptop")
    assert {p.id for p in laptop_map} == {"acme/node/n1", "acme/node/n2"}
    n1 = world.ctl.netmap.get("acme/node/n1")
    assert n1 is not None
    assert n1.endpoint == "198.18.0.1:51820"
    assert n1.allowed_ips == ("100.64.0.1/32", "100.64.8.0/24")
    # The laptop reaches the service IPs through n1, the team's first node.
    seen = {p.id: p.allowed_ips for p in laptop_map}
    assert seen["acme/node/n1"] == ("100.64.0.1/32", "100.64.8.0/24", "100.64.4.0/22")
    assert seen["acme/node/n2"] == ("100.64.0.2/32", "100.64.9.0/24")
    # The laptop heard of both nodes, one delta at a time; n2 got n1 and the laptop.
    heard = [p.id for d in world.seen.deltas for p in d.get("acme/device/laptop", _none()).added]
    assert heard == ["acme/node/n1", "acme/node/n2"]

    # The node moves: every holder gets the new endpoint, the node itself nothing.
    doc = await s.get(Key("Node", "", "", "n1"))
    doc["spec"]["address"] = "198.18.7.7"
    await s.update(doc)
    world.seen.deltas.clear()
    await world.settle()
    (delta,) = world.seen.deltas
    assert set(delta) == {"acme/node/n2", "acme/device/laptop"}
    assert delta["acme/device/laptop"].updated[0].endpoint == "198.18.7.7:51820"

    # A deleted device leaves every map.
    await s.delete(Key("Device", "acme", "", "laptop"))
    world.seen.deltas.clear()
    await world.settle()
    assert world.seen.deltas[0] == {
        "acme/node/n1": _removed("acme/device/laptop"),
        "acme/node/n2": _removed("acme/device/laptop"),
    }


def _none() -> Any:
    from kled.control.netmap import PeerDelta

    return PeerDelta()


def _removed(peer_id: str) -> Any:
    from kled.control.netmap import PeerDelta

    return PeerDelta(removed=[peer_id])


async def test_delete_releases_and_the_address_is_reused(world: World) -> None:
    s = world.store
    await s.create(team("acme"))
    await s.create(app("api"))
    await s.create(app("web"))
    await world.settle()
    assert (await world.status("App", "api", "acme", "dev"))["ip"] == "100.64.4.1"
    await s.delete(Key("App", "acme", "dev", "api"))
    await world.settle()
    records = world.seen.records["acme"]
    assert records is not None and ("dev", "api") not in records.apps
    owners = {a.owner_name for a in await world.ipam.list("acme") if a.pool == "service"}
    assert owners == {"dev/web"}
    await s.create(app("cache", env="prod"))
    await world.settle()
    assert (await world.status("App", "cache", "acme", "prod"))["ip"] == "100.64.4.1"


async def test_a_restart_changes_no_address_and_frees_what_vanished(world: World) -> None:
    s = world.store
    await s.create(team("acme"))
    await s.create(team("beta", block="100.70.0.0/16"))
    await s.create(node("n1", "198.18.0.1"))
    for name in ("api", "web", "db"):
        await s.create(app(name))
    await s.create(device("phone", team="beta"))
    await world.settle()
    before = {(a.team, a.pool, a.owner_name): a.address for a in await world.ipam.list()}

    # The control plane is down while an app goes away.
    await s.delete(Key("App", "acme", "dev", "web"))
    restarted = World(world.store, Ipam(world.store.db), world.db_url)
    await restarted.ctl.rebuild()
    await restarted.settle()
    after = {(a.team, a.pool, a.owner_name): a.address for a in await restarted.ipam.list()}
    expected = {k: v for k, v in before.items() if k != ("acme", "service", "dev/web")}
    assert after == expected
    assert (await restarted.status("Device", "phone", "beta"))["ip"] == "100.70.0.2"
    beta = restarted.seen.records["beta"]
    assert beta is not None and beta.devices == {"phone": "100.70.0.2"}
    assert beta.nodes == {"n1": "100.70.0.1"}

    # Restarted again with everything in place: not one status is written.
    revision = await s.revision()
    again = World(world.store, Ipam(world.store.db), world.db_url)
    await again.ctl.rebuild()
    await again.settle()
    assert await s.revision() == revision
    # An address freed at start is free: a new app may take it, and the app that had it,
    # back again, gets another (never the same address twice).
    await s.create(app("fresh"))
    await restarted.settle()
    fresh = (await restarted.status("App", "fresh", "acme", "dev"))["ip"]
    assert fresh not in after.values()
    await s.create(app("web"))
    await restarted.settle()
    assert (await restarted.status("App", "web", "acme", "dev"))["ip"] not in (
        fresh,
        *after.values(),
    )


async def test_bad_blocks_and_full_ranges_are_reported_in_status(world: World) -> None:
    s = world.store
    await s.create(team("acme", block="100.64.0.0/15"))
    await s.create(team("clash", block="100.65.0.0/16"))
    await s.create(team("tiny", block="100.66.0.0/24"))
    await world.settle()
    clash = await world.status("Team", "clash")
    assert clash["error"].startswith("spec.block: block 100.65.0.0/16 overlaps 100.64.0.0/15")
    for name in ("a", "b", "c"):
        await s.create(app(name, team="tiny"))
    await world.settle()
    assert (await world.status("App", "c", "tiny", "dev"))["error"] == (
        "service range of team tiny is full (2 addresses)"
    )
    assert "ip" not in await world.status("App", "c", "tiny", "dev")
    # Another app in the full range is refused too; once one is deleted, the next takes
    # the freed address.
    await s.create(app("d", team="tiny"))
    await world.settle()
    assert "ip" not in await world.status("App", "d", "tiny", "dev")
    freed = (await world.status("App", "a", "tiny", "dev"))["ip"]
    await s.delete(Key("App", "tiny", "dev", "a"))
    await world.settle()
    await s.create(app("e", team="tiny"))
    await world.settle()
    assert (await world.status("App", "e", "tiny", "dev"))["ip"] == freed


async def test_team_deleted_frees_its_block(world: World) -> None:
    s = world.store
    await s.create(team("acme"))
    await s.create(node("n1", "198.18.0.1"))
    await s.create(app("api"))
    await world.settle()
    await s.delete(Key("App", "acme", "dev", "api"))
    await s.delete(Key("Team", "", "", "acme"))
    await world.settle()
    assert await world.ipam.list("acme") == []
    assert world.seen.records["acme"] is None
    assert "acme" not in (await world.status("Node", "n1")).get("mesh", {})


@pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")
async def test_wired_to_the_dns_server_names_follow_the_store(world: World) -> None:
    dns = DnsServer(("127.0.0.1", 0), upstreams=[])
    ctl = MeshController(world.store, world.ipam, on_records=dns.apply, poll=0.2)
    async with dns:
        await ctl.start()
        try:
            await world.store.create(team("acme"))
            await world.store.create(app("api"))

            async def resolve(name: str) -> str:
                proc = await asyncio.create_subprocess_exec(
                    "dig",
                    "@127.0.0.1",
                    "-p",
                    str(dns.port),
                    "+short",
                    "+time=2",
                    "+tries=1",
                    name,
                    stdout=asyncio.subprocess.PIPE,
                )
                out, _ = await proc.communicate()
                return out.decode().strip()

            async def answered(name: str, want: str) -> None:
                while await resolve(name) != want:
                    await asyncio.sleep(0.05)

            await asyncio.wait_for(answered("api.dev.acme.kled.internal", "100.64.4.1"), 30)
            await world.store.delete(Key("App", "acme", "dev", "api"))
            await asyncio.wait_for(answered("api.dev.acme.kled.internal", ""), 30)
        finally:
            await ctl.stop()


async def test_a_restart_survives_refused_blocks_and_full_ranges(world: World) -> None:
    s = world.store
    await s.create(team("acme", block="100.64.0.0/15"))
    await s.create(team("clash", block="100.65.0.0/16"))
    await s.create(team("tiny", block="100.66.0.0/24"))
    for name in ("a", "b", "c"):
        await s.create(app(name, team="tiny"))
    await s.create(app("api"))
    await world.settle()
    restarted = World(world.store, Ipam(world.store.db), world.db_url)
    await restarted.ctl.rebuild()  # the refused team and the full range do not stop it
    await restarted.settle()
    assert (await restarted.status("App", "api", "acme", "dev"))[
        "ip"
    ] == "100.64.8.1"  # service range of a /15
    assert (await restarted.status("App", "b", "tiny", "dev"))["ip"] == "100.66.0.6"
    assert "error" in await restarted.status("App", "c", "tiny", "dev")


async def test_apps_added_together_get_their_addresses_together(world: World) -> None:
    """A batch of new apps is allocated in one IPAM transaction per team; an app
    deleted in the same batch gives its address back."""
    s = world.store
    await s.create(team("acme"))
    await world.settle()
    for n in range(5):
        await s.create(app(f"a{n}"))
    await s.delete(Key("App", "acme", "dev", "a4"))
    await world.settle()
    ips = [(await world.status("App", f"a{n}", "acme", "dev")).get("ip") for n in range(4)]
    assert ips == [f"100.64.4.{n}" for n in range(1, 5)]
    held = {a.owner_name for a in await world.ipam.list() if a.pool == "service"}
    assert held == {f"dev/a{n}" for n in range(4)}
