"""Issue 10, item 7: the embedded NATS keeps the desired states (Secrets resolved) encrypted."""

from __future__ import annotations

import json
import random
import stat
from pathlib import Path

import nats
import pytest
from nats.js import api

from kled.bus.embedded import EmbeddedNats


def files_holding(root: Path, needle: bytes) -> list[Path]:
    return [p for p in root.rglob("*") if p.is_file() and needle in p.read_bytes()]


async def put(server: EmbeddedNats, value: bytes) -> None:
    nc = await nats.connect(server.url, user=server.control_user, password=server.control_password)
    try:
        kv = await nc.jetstream().create_key_value(api.KeyValueConfig(bucket="probe", history=5))
        await kv.put("node-1", value)
        assert (await kv.get("node-1")).value == value
    finally:
        await nc.close()


async def read(server: EmbeddedNats) -> bytes | None:
    nc = await nats.connect(server.url, user=server.control_user, password=server.control_password)
    try:
        kv = await nc.jetstream().key_value("probe")
        return (await kv.get("node-1")).value
    finally:
        await nc.close()


async def test_the_jetstream_store_holds_no_secret_in_clear(tmp_path: Path) -> None:
    secret = f"desired-{random.randint(10**12, 10**13)}".encode()
    async with EmbeddedNats(tmp_path / "nats") as server:
        await put(server, json.dumps({"env": {"DB_PASSWORD": secret.decode()}}).encode())
    assert files_holding(tmp_path, secret) == []
    key = tmp_path / "nats" / "jetstream.key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "nats").stat().st_mode) == 0o700

    async with EmbeddedNats(tmp_path / "nats") as again:  # and it reads back after a restart
        assert secret in (await read(again) or b"")


async def test_a_store_an_older_version_left_in_clear_is_encrypted_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret = f"older-{random.randint(10**12, 10**13)}".encode()
    folder = tmp_path / "nats"
    with monkeypatch.context() as older:  # an older version: no key, the store in clear
        older.setattr(EmbeddedNats, "_encryption", lambda self: {})
        async with EmbeddedNats(folder) as server:
            await put(server, secret)
    assert files_holding(folder / "jetstream", secret) != []

    async with EmbeddedNats(folder) as server:
        assert await read(server) == secret
    assert files_holding(folder / "jetstream", secret) == []
