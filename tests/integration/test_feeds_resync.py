"""Every follower of the event log converges after the log was compacted past it (issue 15).

Each feed here is started from a revision whose events were compacted meanwhile, as a
feed that fell behind finds them: what happened in the events it can no longer read (an
app, a device, a node deleted; a Job created) must still reach it. It lists the store
again and goes on from there, as a Kubernetes informer does after ``410 Gone``.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from gitkit import Origin, app_yaml
from kled.admission.chain import AdmissionChain
from kled.admission.request import UserInfo
from kled.api.device_feed import DeviceFeeds, device_peer_id
from kled.api.gitsync import GitOps
from kled.api.hosts import HostServices
from kled.api.intercepts import InterceptServices
from kled.api.server import validate_resource
from kled.api.service import Service
from kled.bus.embedded import EmbeddedNats
from kled.control.ipam import Ipam
from kled.control.jobs import JobController
from kled.control.managed import Layout, ManagedServiceController
from kled.control.meshctl import MeshController
from kled.errors import Gone
from kled.settings import ServerSettings
from kled.store.cipher import SecretCipher
from kled.store.credentials import Credentials
from kled.store.database import Database
from kled.store.objects import Key, Store

ADMIN = UserInfo(username="admin", server_admin=True)


@pytest.fixture
async def svc(database_url: str, tmp_path: Path) -> AsyncIterator[Service]:
    db = await Database.open(database_url)
    store = Store(db, SecretCipher.from_data_dir(tmp_path))
    try:
        yield Service(store, Credentials(db), AdmissionChain(validate_resource))
    finally:
        await db.close()


def pubkey(n: int) -> str:
    return base64.b64encode(bytes([n]) * 32).decode()


async def create(svc: Service, kind: str, name: str, **fields: Any) -> None:
    meta = {"name": name, **fields.pop("meta", {})}
    await svc.create(ADMIN, {"kind": kind, "metadata": meta, **fields})


async def compact_past(store: Store, seq: int) -> None:
    """Compact the log so that the events after ``seq`` are gone (reading them is 410)."""
    await store.compact(1)
    with pytest.raises(Gone):
        await store.events_after(seq)


async def until(what: Callable[[], Awaitable[bool]], timeout: float = 30.0) -> None:
    for _ in range(int(timeout / 0.05)):
        if await what():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"never: {what.__doc__}")


async def test_the_intercept_feed_ends_and_judges_intercepts_again(svc: Service) -> None:
    store = svc.store
    await create(svc, "Team", "acme")
    await create(svc, "Environment", "dev", meta={"team": "acme"})
    env = {"team": "acme", "environment": "dev"}
    for app in ("api", "web"):
        spec = {"command": ["sleep", "60"], "ports": [{"port": 80}]}
        await create(svc, "App", app, meta=env, spec=spec)
    for n, laptop in enumerate(("laptop", "old-laptop")):
        spec = {"owner": "admin", "publicKey": pubkey(n + 1)}
        await create(svc, "Device", laptop, meta={"team": "acme"}, spec=spec)
    for name, app, laptop in (
        ("to-api", "api", "laptop"),
        ("to-old", "web", "old-laptop"),
        ("stays", "web", "laptop"),
    ):
        spec = {"app": app, "device": laptop}
        await create(svc, "Intercept", name, meta=env, spec=spec)
    behind = await store.revision()
    # While the feed is behind: the app of one intercept and the device of another go.
    await store.delete(Key("App", "acme", "dev", "api"))
    await store.delete(Key("Device", "acme", "", "old-laptop"))
    await create(svc, "Config", "filler", meta=env, data={"k": "v"})
    await compact_past(store, behind)

    feed = InterceptServices(svc)
    await feed.start(after=behind)
    try:

        async def judged() -> bool:
            """only the intercept whose app and device remain is left, and judged"""
            left = (await store.list("Intercept", "acme")).items
            return [d["metadata"]["name"] for d in left] == ["stays"] and bool(
                (left[0].get("status") or {}).get("phase")
            )

        await until(judged)
        stays = await store.get(Key("Intercept", "acme", "dev", "stays"))
        assert stays["status"]["phase"] == "Pending"  # the laptop has no mesh address yet
        assert "laptop" in stays["status"]["message"]

        # and the feed goes on with the events after the relist
        await store.delete(Key("App", "acme", "dev", "web"))

        async def ended() -> bool:
            """the last intercept ended with its app"""
            return not (await store.list("Intercept", "acme")).items

        await until(ended)
    finally:
        await feed.stop()


async def test_the_node_feed_withdraws_a_node_deleted_meanwhile(
    svc: Service, tmp_path: Path
) -> None:
    store = svc.store
    settings = ServerSettings(data_dir=tmp_path / "data")
    hosts = HostServices(settings, svc)
    hosts.embedded = EmbeddedNats(tmp_path / "nats")
    await hosts.embedded.start()
    task: asyncio.Task[None] | None = None
    try:
        for node in ("n1", "n2"):
            await create(svc, "Node", node, spec={"address": "198.18.0.1"})
            await hosts.embedded.add_node(node)
        behind = await store.revision()
        await store.delete(Key("Node", "", "", "n1"))
        await create(svc, "Team", "filler")
        await compact_past(store, behind)

        task = hosts.follow_nodes(behind)

        async def withdrawn() -> bool:
            """n1's NATS credentials are revoked"""
            assert hosts.embedded is not None
            return hosts.embedded.node_credentials("n1") is None

        await until(withdrawn)
        assert hosts.embedded.node_names() == ["n2"]

        await store.delete(Key("Node", "", "", "n2"))  # and it goes on after the relist

        async def both() -> bool:
            """n2's credentials are revoked too"""
            assert hosts.embedded is not None
            return not hosts.embedded.node_names()

        await until(both)
    finally:
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        await hosts.embedded.stop()


async def test_the_jobs_controller_lists_again_and_runs_new_jobs(svc: Service) -> None:
    store = svc.store
    await create(svc, "Team", "acme")
    await create(svc, "Environment", "dev", meta={"team": "acme"})
    behind = await store.revision()
    await create(svc, "Config", "filler", meta={"team": "acme", "environment": "dev"})
    await create(svc, "Team", "filler")
    await compact_past(store, behind)

    # Its clock is an hour: only the event of the Job can make it start the first attempt.
    jobs = JobController(store, tick=3600)
    await jobs.start(after=behind)
    try:
        await asyncio.sleep(0.5)  # it met the compacted log and listed again
        spec = {"command": ["sh", "-c", "true"]}
        await create(svc, "Job", "migrate", meta={"team": "acme", "environment": "dev"}, spec=spec)

        async def attempted() -> bool:
            """the Job's first attempt (an App) exists"""
            return bool((await store.list("App", "acme", "dev")).items)

        await until(attempted)
    finally:
        await jobs.stop()


async def test_the_managed_services_controller_lists_again_and_takes_new_ones(
    svc: Service, tmp_path: Path
) -> None:
    store = svc.store
    await create(svc, "Team", "acme")
    await create(svc, "Environment", "dev", meta={"team": "acme"})
    behind = await store.revision()
    await create(svc, "Team", "filler")
    await create(svc, "Team", "filler-2")
    await compact_past(store, behind)

    # Its clock is an hour: only the event of the service can make it take the service.
    managed = ManagedServiceController(store, Layout(str(tmp_path / "services")), tick=3600)
    await managed.start(after=behind)
    try:
        await asyncio.sleep(0.5)  # it met the compacted log and listed again
        meta = {"team": "acme", "environment": "dev"}
        await create(svc, "ManagedService", "db", meta=meta, spec={"template": "postgres"})

        async def served() -> bool:
            """the controller took the new service (it waits for its address: no mesh)"""
            ms = await store.get(Key("ManagedService", "acme", "dev", "db"))
            return (ms.get("status") or {}).get("phase") == "Provisioning"

        await until(served)
    finally:
        await managed.stop()


async def test_device_followers_get_a_whole_config_after_the_mesh_rebuilds(
    svc: Service,
) -> None:
    store = svc.store
    feeds = DeviceFeeds()
    rebuilt: list[int] = []

    async def on_rebuilt() -> None:
        rebuilt.append(ctl.seq)
        feeds.resync_all()

    ctl = MeshController(store, Ipam(store.db), on_netmap=feeds.publish, on_rebuilt=on_rebuilt)
    await create(svc, "Team", "acme")
    spec = {"owner": "admin", "publicKey": pubkey(1)}
    await create(svc, "Device", "laptop", meta={"team": "acme"}, spec=spec)
    await ctl.start()
    follower = feeds.follow("acme", "laptop")
    try:
        while await ctl.step():
            pass
        follower.take()  # what it had before: nothing owed
        await ctl.stop()
        # While the controller is away a node of the team joins, then the log is compacted.
        behind = ctl.seq
        await create(svc, "Node", "n1", spec={"address": "198.18.0.1"})
        await create(svc, "Team", "filler")
        await compact_past(store, behind)
        ctl.resume()

        async def resynced() -> bool:
            """the controller rebuilt after meeting the compacted log"""
            return bool(rebuilt)

        await until(resynced)
        whole, deltas = follower.take()
        assert whole and deltas == []  # the device is sent its whole config again
        assert device_peer_id("acme", "laptop") in ctl.netmap
    finally:
        feeds.unfollow(follower)
        await ctl.stop()


async def test_the_gitops_feed_syncs_a_source_changed_meanwhile(
    svc: Service, tmp_path: Path
) -> None:
    store = svc.store
    origin = Origin(tmp_path / "repo")
    origin.commit({"one/a.yaml": app_yaml("a"), "two/b.yaml": app_yaml("b")})
    await create(svc, "Team", "acme")
    await create(svc, "Environment", "dev", meta={"team": "acme"})
    spec = {"url": origin.url, "path": "one", "interval": "1h"}
    await create(svc, "GitSource", "site", meta={"team": "acme"}, spec=spec)

    async def applied(name: str) -> bool:
        return await store.find(Key("App", "acme", "dev", name)) is not None

    gitops = GitOps(svc, tmp_path / "gitops")
    await gitops.start()
    try:

        async def first() -> bool:
            """the first sync applied app a"""
            return await applied("a")

        await until(first)
        await gitops.stop()
        # Away: its spec changes (the next sync would be in an hour), and the log is compacted.
        behind = await store.revision()
        source = await store.get(Key("GitSource", "acme", "", "site"))
        source["spec"]["path"] = "two"
        await svc.apply(ADMIN, source)
        await create(svc, "Team", "filler")
        await compact_past(store, behind)

        await gitops.start(after=behind)

        async def second() -> bool:
            """the changed source was synced at once: app b applied"""
            return await applied("b")

        await until(second)
    finally:
        await gitops.stop()
