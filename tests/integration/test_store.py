"""The store on SQLite and PostgreSQL: versions, generations, finalizers, the event log."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kled.errors import Conflict, NotFound
from kled.store.cipher import SecretCipher
from kled.store.database import Database
from kled.store.objects import Invariant, Key, Store


@pytest.fixture
async def store(database_url: str, tmp_path: Path) -> AsyncIterator[Store]:
    db = await Database.open(database_url)
    try:
        yield Store(db, SecretCipher.from_data_dir(tmp_path))
    finally:
        await db.close()


def app(name: str = "api", replicas: int = 1, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": "acme", "environment": "dev", "labels": labels},
        "spec": {"command": ["sleep", "60"], "replicas": replicas},
    }


async def test_create_stamps_system_metadata(store: Store) -> None:
    created = await store.create(app())
    meta = created["metadata"]
    assert meta["generation"] == 1
    assert meta["uid"]
    assert int(meta["resourceVersion"]) == await store.revision()
    assert meta["creationTimestamp"].endswith("Z")
    with pytest.raises(Conflict):
        await store.create(app())


async def test_generation_moves_only_with_the_spec(store: Store) -> None:
    await store.create(app())
    labelled = await store.update(app(tier="backend"))
    assert labelled.result == "configured"
    assert labelled.object["metadata"]["generation"] == 1
    scaled = await store.update(app(replicas=3, tier="backend"))
    assert scaled.object["metadata"]["generation"] == 2
    same = await store.update(app(replicas=3, tier="backend"))
    assert same.result == "unchanged"
    assert (
        same.object["metadata"]["resourceVersion"] == scaled.object["metadata"]["resourceVersion"]
    )


async def test_status_is_kept_across_spec_updates(store: Store) -> None:
    created = await store.create(app())
    key = Key.of(created)
    await store.update_status(key, {"phase": "Running"})
    updated = await store.update(app(replicas=2))
    assert updated.object["status"] == {"phase": "Running"}
    assert updated.object["metadata"]["generation"] == 2


async def test_a_stale_resource_version_is_refused(store: Store) -> None:
    created = await store.create(app())
    version = created["metadata"]["resourceVersion"]
    await store.update(app(replicas=2), expected_version=version)
    with pytest.raises(Conflict, match="stale"):
        await store.update(app(replicas=3), expected_version=version)
    assert (await store.get(Key.of(created)))["spec"]["replicas"] == 2


async def test_fifty_concurrent_updates_with_one_version_one_wins(store: Store) -> None:
    created = await store.create(app())
    version = created["metadata"]["resourceVersion"]

    async def attempt(n: int) -> str:
        try:
            await store.update(app(replicas=n + 2), expected_version=version)
            return "won"
        except Conflict:
            return "lost"

    results = await asyncio.gather(*(attempt(n) for n in range(50)))
    assert results.count("won") == 1
    assert results.count("lost") == 49


async def test_finalizers_hold_a_deletion_until_removed(store: Store) -> None:
    doc = app()
    doc["metadata"]["finalizers"] = ["kled.io/agent"]
    created = await store.create(doc)
    key = Key.of(created)
    marked = await store.delete(key)
    assert marked.result == "deleting"
    assert marked.object["metadata"]["deletionTimestamp"]
    assert await store.find(key) is not None
    doc["metadata"]["finalizers"] = []
    await store.update(doc)
    assert await store.find(key) is None
    kinds = [e.type for e in await store.events_after(0)]
    assert kinds == ["ADDED", "MODIFIED", "DELETED"]


async def test_event_log_is_gap_free_and_ordered_under_concurrency(store: Store) -> None:
    start = await store.revision()

    async def write(n: int) -> None:
        await store.create(app(f"app-{n}"))
        with contextlib.suppress(Conflict):  # a failed write must leave no hole
            await store.update(app(f"app-{n}", replicas=2), expected_version="0")
        await store.update(app(f"app-{n}", replicas=3))

    await asyncio.gather(*(write(n) for n in range(20)))
    seqs = [e.seq for e in await store.events_after(start, limit=1000)]
    assert seqs == list(range(start + 1, start + 41))


async def test_list_pages_and_selects_by_label(store: Store) -> None:
    for n in range(25):
        await store.create(app(f"app-{n:02d}", tier="backend" if n % 2 else "frontend"))
    seen: list[str] = []
    token = None
    while True:
        page = await store.list("App", "acme", "dev", limit=10, continue_token=token)
        seen += [d["metadata"]["name"] for d in page.items]
        token = page.continue_token
        if token is None:
            break
    assert seen == [f"app-{n:02d}" for n in range(25)]
    backend = await store.list(
        "App", "acme", None, matches=lambda labels: labels.get("tier") == "backend"
    )
    assert len(backend.items) == 12


async def test_secrets_are_encrypted_at_rest(store: Store, database_url: str) -> None:
    secret = {
        "apiVersion": "kled.io/v1",
        "kind": "Secret",
        "metadata": {"name": "db", "team": "acme", "environment": "dev"},
        "data": {"password": "aHVudGVyMg=="},
    }
    await store.create(secret)
    async with store.db.read() as conn:
        from sqlalchemy import select

        from kled.store.schema import events, resources

        raw = (await conn.execute(select(resources.c.doc))).scalar_one()
        logged = (await conn.execute(select(events.c.object))).scalar_one()
    assert "aHVudGVyMg==" not in str(raw)
    assert "aHVudGVyMg==" not in str(logged)
    assert (await store.get(Key.of(secret)))["data"] == {"password": "aHVudGVyMg=="}


async def test_get_of_a_missing_resource_is_not_found(store: Store) -> None:
    with pytest.raises(NotFound):
        await store.get(Key("App", "acme", "dev", "nope"))


def owner(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "User",
        "metadata": {"name": name, "team": "acme"},
        "spec": {"role": "owner"},
    }


def an_owner_remains(users: list[dict[str, Any]]) -> None:
    if not any(u["spec"]["role"] == "owner" for u in users):
        raise Conflict("the last owner stays")


async def test_an_invariant_holds_across_two_processes_writing_at_once(
    database_url: str, tmp_path: Path
) -> None:
    """Two stores on one database (two control-plane replicas): of six owners deleted or
    demoted at once, half through each, five writes pass the check and one is undone."""
    names = [f"o{n}" for n in range(6)]
    dbs = [await Database.open(database_url) for _ in range(2)]
    try:
        stores = [Store(db, SecretCipher.from_data_dir(tmp_path)) for db in dbs]
        for name in names:
            await stores[0].create(owner(name))
        rule = Invariant("User", "acme", an_owner_remains)

        async def remove(n: int) -> str:
            store, name = stores[n % 2], names[n]
            try:
                if n < 3:
                    await store.delete(Key("User", "acme", "", name), invariant=rule)
                else:
                    demoted = {**owner(name), "spec": {"role": "admin"}}
                    await store.update(demoted, invariant=rule)
            except Conflict:
                return "refused"
            return "done"

        results = await asyncio.gather(*(remove(n) for n in range(6)))
        assert sorted(results) == ["done"] * 5 + ["refused"], results
        users = (await stores[1].list("User", "acme")).items
        assert [u["spec"]["role"] for u in users].count("owner") == 1
        # the refused write was undone whole: its user is still there, still an owner
        assert len(users) == 6 - results[:3].count("done")
    finally:
        for db in dbs:
            await db.close()


async def test_many_statuses_are_written_in_one_transaction_with_a_revision_each(
    store: Store,
) -> None:
    for name in ("a", "b", "c", "gone-soon"):
        await store.create(app(name))
    await store.delete(Key("App", "acme", "dev", "gone-soon"))
    start = await store.revision()
    keys = [Key("App", "acme", "dev", n) for n in ("a", "b", "c", "missing", "gone-soon")]

    def phase(value: str | None) -> Any:
        return lambda doc: None if value is None else {**(doc.get("status") or {}), "p": value}

    written = await store.update_statuses(
        [(keys[0], phase("x")), (keys[1], phase(None)), (keys[2], phase("y")),
         (keys[3], phase("z")), (keys[4], phase("w"))]
    )  # fmt: skip
    assert sorted(k.name for k in written) == ["a", "c"]
    assert await store.revision() == start + 2
    log = await store.events_after(start)
    assert [(e.seq, e.type, e.name, e.object["status"]) for e in log] == [
        (start + 1, "MODIFIED", "a", {"p": "x"}),
        (start + 2, "MODIFIED", "c", {"p": "y"}),
    ]
    assert (await store.get(keys[2]))["metadata"]["resourceVersion"] == str(start + 2)

    # the same again changes nothing: no revision is spent, no event written
    assert await store.update_statuses([(keys[0], phase("x"))]) == {}
    assert await store.revision() == start + 2
    await store.create(app("after"))  # and the log stays without a gap
    assert [e.seq for e in await store.events_after(start)] == [start + 1, start + 2, start + 3]
