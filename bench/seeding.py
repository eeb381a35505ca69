"""Many stored documents fast, for benchmarks: rows and events written as the store
writes them (one revision each), but a thousand to a statement, so that 10,000 apps take
seconds, not minutes."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any


async def write_documents(data_dir: Path, database: str, docs: list[dict[str, Any]]) -> int:
    """Store ``docs`` (validated by the caller's shapes, stamped here) and return the
    revision they leave."""
    from sqlalchemy import insert, update

    from kled.store.cipher import SecretCipher
    from kled.store.database import Database
    from kled.store.objects import Key, Store
    from kled.store.schema import events, resources, revision

    db = await Database.open(database)
    store = Store(db, SecretCipher.from_data_dir(data_dir))
    rev = await db.current_revision()
    now = datetime.now(UTC)
    for start in range(0, len(docs), 1000):
        rows, logged = [], []
        for doc in docs[start : start + 1000]:
            rev += 1
            key = Key.of(doc)
            new = store._stamp_new(doc, f"{rev:08d}-0000-0000-0000-000000000000", rev, now)
            rows.append(store._columns(key, new))
            logged.append(
                {
                    "seq": rev,
                    "type": "ADDED",
                    "kind": key.kind,
                    "team": key.team,
                    "environment": key.environment,
                    "name": key.name,
                    "object": new,
                    "created_at": now,
                }
            )
        async with db.engine.begin() as conn:
            await conn.execute(insert(resources), rows)
            await conn.execute(insert(events), logged)
            await conn.execute(update(revision).where(revision.c.id == 1).values(value=rev))
    await db.close()
    return rev
