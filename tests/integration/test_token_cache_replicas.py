"""A token revoked through one replica is refused by another from its revocation's event on.

Two services on one SQLite database, each with its own watch cache (two replicas). Each
remembers the tokens it verified; here for an hour, so that only the revocation's event
reaching the other replica can make it refuse the token.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kled.admission.chain import AdmissionChain
from kled.admission.request import UserInfo
from kled.api import service as service_module
from kled.api.server import validate_resource
from kled.api.service import Service
from kled.store.cipher import SecretCipher
from kled.store.credentials import Credentials
from kled.store.database import Database
from kled.store.objects import Store

ADMIN = UserInfo(username="admin", server_admin=True)


async def replica(url: str, data: Path) -> Service:
    db = await Database.open(url)
    store = Store(db, SecretCipher.from_data_dir(data))
    await store.open_cache()
    return Service(store, Credentials(db), AdmissionChain(validate_resource))


@pytest.fixture
async def replicas(tmp_path: Path) -> AsyncIterator[tuple[Service, Service]]:
    url = f"sqlite:///{tmp_path / 'kled.db'}"
    first = await replica(url, tmp_path)
    second = await replica(url, tmp_path)
    try:
        yield first, second
    finally:
        for svc in (first, second):
            await svc.store.close_cache()
            await svc.store.db.close()


async def test_a_revocation_elsewhere_is_seen_at_its_event(
    replicas: tuple[Service, Service], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(service_module, "AUTH_CACHE_SECONDS", 3600.0)
    a, b = replicas
    await b.create(ADMIN, {"kind": "Team", "metadata": {"name": "t"}})
    user = {"kind": "User", "metadata": {"name": "u", "team": "t"}, "spec": {"role": "viewer"}}
    await b.create(ADMIN, user)
    token = {"kind": "Token", "metadata": {"name": "u-token", "team": "t"}, "spec": {"user": "u"}}
    secret = (await b.create(ADMIN, token)).token
    assert secret
    for _ in range(200):  # until a's cache holds b's writes (it follows the log)
        if a.store.cache is not None and b.store.cache is not None:
            if a.store.cache.revision >= b.store.cache.revision:
                break
        await asyncio.sleep(0.05)
    seen = await a.authenticate(secret)
    assert seen is not None and seen.username == "u"  # remembered from now on
    # another, unrelated write moves the revision without touching credentials
    await b.create(ADMIN, {"kind": "Team", "metadata": {"name": "other"}})
    revoked = {**token, "spec": {"user": "u", "revoked": True}}
    await b.update(ADMIN, revoked)
    assert await b.authenticate(secret) is None
    target = b.store.cache.revision if b.store.cache else 0
    for _ in range(200):
        if a.store.cache is not None and a.store.cache.revision >= target:
            break
        await asyncio.sleep(0.05)
    assert await a.authenticate(secret) is None
