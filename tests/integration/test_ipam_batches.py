"""IPAM's batch allocation (a first start over many apps) on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from kled.control import ipam as ipam_module
from kled.control.ipam import Ipam
from kled.errors import Conflict
from kled.store.database import Database


@pytest.fixture
async def ipam(database_url: str) -> AsyncIterator[Ipam]:
    db = await Database.open(database_url)
    try:
        yield Ipam(db)
    finally:
        await db.close()


async def test_a_batch_gives_what_one_by_one_would_and_keeps_what_is_held(
    ipam: Ipam, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ipam_module, "ALLOCATE_BATCH", 7)  # several transactions
    await ipam.ensure_team_block("acme")
    early = await ipam.allocate("acme", "service", "App", "dev/early")
    owners = [("App", f"dev/a{n:02d}") for n in range(20)] + [("App", "dev/early")]
    given = await ipam.allocate_many("acme", "service", owners)
    assert given[("App", "dev/early")] == early
    assert len(set(given.values())) == len(owners)
    # Each owner's address is the one asking alone now answers, and is stored.
    for (kind, owner), address in given.items():
        assert await ipam.allocate("acme", "service", kind, owner) == address
    stored = [a.address for a in await ipam.list("acme") if a.pool == "service"]
    assert sorted(stored) == sorted(given.values())
    # Asked again: nothing new.
    assert await ipam.allocate_many("acme", "service", owners) == given


async def test_a_full_range_gives_what_fits_and_the_rest_are_refused_one_by_one(
    ipam: Ipam,
) -> None:
    layout = await ipam.ensure_team_block("tiny", "100.66.0.0/24")
    room = layout.capacity("service")
    owners = [("App", f"dev/a{n}") for n in range(room + 3)]
    given = await ipam.allocate_many("tiny", "service", owners)
    assert list(given) == owners[:room]
    with pytest.raises(Conflict, match="service range of team tiny is full"):
        await ipam.allocate("tiny", "service", *owners[room])


async def test_batches_and_single_allocations_racing_never_share_an_address(
    ipam: Ipam,
) -> None:
    await ipam.ensure_team_block("race")
    batch = [("App", f"dev/b{n}") for n in range(60)]
    singles = [("App", f"dev/s{n}") for n in range(20)]
    results = await asyncio.gather(
        ipam.allocate_many("race", "service", batch[:30]),
        ipam.allocate_many("race", "service", batch[30:]),
        *(ipam.allocate("race", "service", kind, owner) for kind, owner in singles),
    )
    addresses = [*results[0].values(), *results[1].values(), *results[2:]]
    assert len(addresses) == 80
    assert len(set(addresses)) == 80
