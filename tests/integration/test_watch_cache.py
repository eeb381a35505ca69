"""The watch cache answers as the database does, on SQLite and PostgreSQL.

Two stores share one database, as two control-plane replicas would: ``cached`` answers
reads from memory, ``direct`` reads the database every time. Every answer of the first is
compared with the second's — items, order, continue tokens, revisions, errors — and a
write through ``cached`` is seen by its very next read.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from kled.errors import InvalidInput, NotFound
from kled.resources.selectors import parse_selector
from kled.store.cipher import SecretCipher
from kled.store.database import Database
from kled.store.objects import Key, Page, Store


@dataclass
class Pair:
    cached: Store
    direct: Store


@pytest.fixture
async def pair(database_url: str, tmp_path: Path) -> AsyncIterator[Pair]:
    cipher = SecretCipher.from_data_dir(tmp_path)
    db_direct = await Database.open(database_url)
    db_cached = await Database.open(database_url)
    direct = Store(db_direct, cipher)
    cached = Store(db_cached, cipher)
    try:
        await seed(direct)
        await cached.open_cache()
        yield Pair(cached, direct)
    finally:
        await cached.close_cache()
        await db_cached.close()
        await db_direct.close()


def app(team: str, env: str, name: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": "App",
        "metadata": {"name": name, "team": team, "environment": env, "labels": labels},
        "spec": {"runtime": "process", "command": ["sleep", "1"], "replicas": 1},
    }


async def seed(store: Store) -> None:
    for team in ("blue", "green"):
        await store.create({"kind": "Team", "metadata": {"name": team}, "spec": {}})
        for env in ("dev", "prod"):
            env_doc = {"kind": "Environment", "metadata": {"name": env, "team": team}}
            await store.create({**env_doc, "spec": {}})
            for n in range(7):
                tier = "web" if n % 2 else "db"
                await store.create(app(team, env, f"a-{n}", tier=tier, n=str(n)))
    secret = {"kind": "Secret", "metadata": {"name": "s", "team": "blue", "environment": "dev"}}
    await store.create({**secret, "data": {"k": "v"}})


def shown(page: Page) -> Any:
    return ([d["metadata"]["name"] for d in page.items], page.continue_token, page.items)


async def all_pages(store: Store, **kwargs: Any) -> list[Any]:
    pages, token = [], None
    while True:
        page = await store.list("App", continue_token=token, **kwargs)
        pages.append(shown(page))
        token = page.continue_token
        if not token:
            return pages


SELECTORS = [None, "tier=web", "tier!=web", "n in (1,2,6)", "tier=none"]
SCOPES = [(None, None), ("blue", None), ("blue", "prod"), ("green", "dev"), ("red", None)]


async def test_lists_pages_and_selectors_answer_as_the_database(pair: Pair) -> None:
    for team, env in SCOPES:
        for selector in SELECTORS:
            matches = parse_selector(selector).matches if selector else None
            for limit in (0, 1, 3, 7, 100):
                kwargs = {"team": team, "environment": env, "matches": matches, "limit": limit}
                assert await all_pages(pair.cached, **kwargs) == await all_pages(
                    pair.direct, **kwargs
                ), (team, env, selector, limit)


async def test_gets_answer_as_the_database_and_secrets_keep_their_values(pair: Pair) -> None:
    for key in (
        Key("App", "blue", "dev", "a-3"),
        Key("Team", "", "", "green"),
        Key("Environment", "green", "", "prod"),
        Key("Secret", "blue", "dev", "s"),
        Key("App", "blue", "dev", "nope"),
        Key("App", "red", "dev", "a-3"),
    ):
        assert await pair.cached.find(key) == await pair.direct.find(key), key
    secret = await pair.cached.get(Key("Secret", "blue", "dev", "s"))
    assert secret["data"] == {"k": "v"}
    with pytest.raises(NotFound, match="app/blue/dev/nope not found"):
        await pair.cached.get(Key("App", "blue", "dev", "nope"))


async def test_a_bad_continue_token_is_refused_the_same_way(pair: Pair) -> None:
    for store in (pair.cached, pair.direct):
        with pytest.raises(InvalidInput, match="continue"):
            await store.list("App", "blue", continue_token="not-a-token")


async def test_a_read_right_after_a_write_sees_it(pair: Pair) -> None:
    store = pair.cached
    for n in range(30):
        created = await store.create(app("blue", "dev", f"new-{n}", fresh="yes"))
        got = await store.get(Key("App", "blue", "dev", f"new-{n}"))
        assert got["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]
        changed = app("blue", "dev", f"new-{n}", fresh="again")
        written = await store.update(changed)
        page = await store.list("App", "blue", "dev", matches=parse_selector("fresh=again").matches)
        assert f"new-{n}" in [d["metadata"]["name"] for d in page.items]
        assert page.revision >= int(written.object["metadata"]["resourceVersion"])
        if n:
            await store.delete(Key("App", "blue", "dev", f"new-{n - 1}"))
            assert await store.find(Key("App", "blue", "dev", f"new-{n - 1}")) is None


async def test_another_replicas_writes_reach_the_cache(pair: Pair) -> None:
    await pair.direct.create(app("green", "prod", "elsewhere", by="other"))
    await pair.direct.delete(Key("App", "green", "prod", "a-0"))
    key = Key("App", "green", "prod", "elsewhere")
    for _ in range(100):  # the cache polls the log every second for other writers
        if await pair.cached.find(key) is not None:
            break
        await asyncio.sleep(0.1)
    assert (await pair.cached.get(key))["metadata"]["labels"] == {"by": "other"}
    assert await pair.cached.find(Key("App", "green", "prod", "a-0")) is None
    assert await all_pages(pair.cached, team="green") == await all_pages(pair.direct, team="green")


async def test_a_reader_cannot_change_what_the_cache_holds(pair: Pair) -> None:
    key = Key("App", "blue", "dev", "a-1")
    doc = await pair.cached.get(key)
    doc["spec"]["replicas"] = 99
    doc["metadata"]["labels"]["tier"] = "changed"
    assert (await pair.cached.get(key))["spec"]["replicas"] == 1
    page = await pair.cached.list("App", "blue", "dev", matches=parse_selector("tier=web").matches)
    assert "a-1" in [d["metadata"]["name"] for d in page.items]


async def test_applying_an_unchanged_document_writes_nothing(pair: Pair) -> None:
    before = await pair.direct.revision()
    same = app("blue", "dev", "a-2", tier="db", n="2")
    written = await pair.cached.update(same)
    assert written.result == "unchanged"
    assert await pair.direct.revision() == before
    changed = await pair.cached.update(app("blue", "dev", "a-2", tier="db", n="two"))
    assert changed.result == "configured"
    assert await pair.direct.revision() == before + 1


async def test_a_document_outside_the_bounds_is_skipped_as_by_the_database(
    pair: Pair, database_url: str
) -> None:
    """One stored by an older version (written here behind the store's back)."""
    from sqlalchemy import update

    from kled.store.schema import resources

    deep: Any = "x"
    for _ in range(80):
        deep = [deep]
    doc = await pair.direct.get(Key("App", "green", "dev", "a-4"))
    doc["spec"]["deep"] = deep
    async with pair.direct.db.engine.begin() as conn:
        await conn.execute(
            update(resources)
            .where(resources.c.uid == doc["metadata"]["uid"])
            .values(doc=json.loads(json.dumps(doc)))
        )
    await pair.cached.close_cache()
    await pair.cached.open_cache()  # a restart: the document is loaded, checked once
    key = Key("App", "green", "dev", "a-4")
    assert await pair.cached.find(key) is None
    assert await pair.direct.find(key) is None
    assert "app/green/dev/a-4" in pair.cached.problems
    for limit in (0, 4):
        kwargs = {"team": "green", "environment": "dev", "limit": limit}
        assert await all_pages(pair.cached, **kwargs) == await all_pages(pair.direct, **kwargs)


async def test_followers_read_the_same_events_from_memory(pair: Pair) -> None:
    start = await pair.direct.revision()
    for n in range(12):
        await pair.cached.create(app("blue", "prod", f"ev-{n}", n=str(n)))
        await pair.cached.update(app("blue", "prod", f"ev-{n}", n="changed"))
    await pair.cached.delete(Key("App", "blue", "prod", "ev-3"))
    for after, limit in ((start, 500), (start + 5, 500), (start + 3, 4)):
        kept = await pair.cached.events_after(after, limit)
        logged = await pair.direct.events_after(after, limit)
        assert [(e.seq, e.type, e.name, e.object) for e in kept] == [
            (e.seq, e.type, e.name, e.object) for e in logged
        ]
        assert kept
    kept = await pair.cached.events_after(start)
    kept[0].object["spec"]["replicas"] = 99  # a follower's copy is its own
    assert (await pair.cached.events_after(start))[0].object["spec"]["replicas"] == 1


async def test_a_feed_behind_the_compacted_log_lists_again_and_goes_on(pair: Pair) -> None:
    from kled.errors import Gone
    from kled.store.follow import follow_events

    store = pair.direct  # no cache: the log itself answers
    start = await store.revision()
    for n in range(5):
        await store.create(app("green", "dev", f"old-{n}"))
    assert await store.compact(2) == start + 3
    with pytest.raises(Gone) as gone:
        await store.events_after(start)
    assert gone.value.oldest == start + 4
    assert "the oldest kept is" in str(gone.value)

    seen: list[str] = []
    relisted: list[int] = []

    async def handle(event: Any) -> None:
        seen.append(event.name)

    async def resync() -> int:
        relisted.append(await store.revision())
        return relisted[-1]

    feed = asyncio.create_task(follow_events(store, start, handle, what="t", resync=resync))
    try:
        for _ in range(100):
            if relisted:
                break
            await asyncio.sleep(0.05)
        await store.create(app("green", "dev", "after"))
        for _ in range(100):
            if "after" in seen:
                break
            await asyncio.sleep(0.05)
    finally:
        feed.cancel()
    assert relisted and seen == ["after"]
