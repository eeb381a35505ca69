"""``kled server doctor``: what in a server's store cannot be read, and how to clear it.

A document stored by an older version outside today's bounds (too deep, text that is not
UTF-8, too large) is skipped by the running server rather than crash it, and named in
``/readyz``; this command finds every one of them with the server stopped or running, and
``--purge`` deletes them (nothing else is touched).
"""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer

from kled.cli.output import note, out
from kled.cli.server import DatabaseUrl, DataDir, settings_from


def doctor(
    data_dir: DataDir = None,
    database: DatabaseUrl = None,
    purge: Annotated[
        bool, typer.Option("--purge", help="Delete the unreadable documents found.")
    ] = False,
) -> None:
    """Check every stored document; name those the server skips (exit 1 if any)."""
    settings = settings_from(data_dir, None, None, database, False)
    found = asyncio.run(_scan(settings, purge))
    if not found:
        out("no problems: every stored document is readable")
        return
    for where, reason in sorted(found.items()):
        out(f"{where}: {reason}")
    if purge:
        note(f"deleted {len(found)} unreadable document(s)")
        return
    note(f"{len(found)} unreadable document(s); delete them with: kled server doctor --purge")
    raise typer.Exit(1)


async def _scan(settings: Any, purge: bool) -> dict[str, str]:
    from kled.store.cipher import SecretCipher
    from kled.store.database import Database
    from kled.store.objects import Store

    db = await Database.open(settings.database_url())
    try:
        store = Store(db, SecretCipher.from_data_dir(settings.data_dir, settings.secret_key))
        found = await store.scan()
        if purge:
            await store.purge_unreadable()
        return found
    finally:
        await db.close()
