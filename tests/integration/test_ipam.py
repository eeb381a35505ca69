"""IPAM on a real database (SQLite and PostgreSQL): blocks, pools, reuse, limits, races."""

from __future__ import annotations

import asyncio
import ipaddress
import re
from collections.abc import AsyncIterator

import pytest

from kled.control.ipam import Ipam
from kled.errors import Conflict, InvalidInput, NotFound
from kled.store.database import Database
from servers import postgres_available, postgres_database


@pytest.fixture
async def ipam(database_url: str) -> AsyncIterator[Ipam]:
    db = await Database.open(database_url)
    try:
        yield Ipam(db)
    finally:
        await db.close()


async def test_teams_get_distinct_default_blocks_split_as_documented(ipam: Ipam) -> None:
    acme = await ipam.ensure_team_block("acme")
    beta = await ipam.ensure_team_block("beta")
    assert str(acme.block) == "100.64.0.0/16"
    assert str(beta.block) == "100.65.0.0/16"
    assert str(acme.mesh) == "100.64.0.0/22"
    assert str(acme.service) == "100.64.4.0/22"
    assert acme.pod_prefix == 24
    assert acme.capacity("mesh") == 1022
    assert acme.capacity("pods") == 248
    # Asking again changes nothing.
    assert (await ipam.ensure_team_block("acme")).block == acme.block


async def test_requested_block_is_honoured_and_checked(ipam: Ipam) -> None:
    wide = await ipam.ensure_team_block("wide", "100.66.0.0/15")
    assert str(wide.block) == "100.66.0.0/15"
    # The next default block skips the ones taken by the /15.
    assert str((await ipam.ensure_team_block("next")).block) == "100.64.0.0/16"
    assert str((await ipam.ensure_team_block("after")).block) == "100.65.0.0/16"
    assert str((await ipam.ensure_team_block("later")).block) == "100.68.0.0/16"

    with pytest.raises(
        InvalidInput, match=re.escape("overlaps 100.66.0.0/15 of team wide")
    ) as overlap:
        await ipam.ensure_team_block("clash", "100.67.128.0/17")
    assert overlap.value.field == "spec.block"
    with pytest.raises(InvalidInput, match=re.escape("not inside 100.64.0.0/10")) as outside:
        await ipam.ensure_team_block("clash", "10.0.0.0/16")
    assert outside.value.field == "spec.block"
    with pytest.raises(InvalidInput, match="not a CIDR") as bad:
        await ipam.ensure_team_block("clash", "100.70.0.1/16")
    assert bad.value.field == "spec.block"
    with pytest.raises(InvalidInput, match="prefix from /8 to /24"):
        await ipam.ensure_team_block("clash", "100.70.0.0/28")
    with pytest.raises(InvalidInput, match=re.escape("already has block 100.66.0.0/15")):
        await ipam.ensure_team_block("wide", "100.80.0.0/16")
    # Nothing was written for the refused team.
    assert [a for a in await ipam.list("clash")] == []


async def test_checking_a_block_allocates_nothing(ipam: Ipam) -> None:
    await ipam.ensure_team_block("acme", "100.70.0.0/16")
    await ipam.check_team_block("beta", "100.71.0.0/16")
    await ipam.check_team_block("beta", None)
    await ipam.check_team_block("acme", "100.70.0.0/16")  # its own block, restated
    with pytest.raises(
        InvalidInput, match=re.escape("overlaps 100.70.0.0/16 of team acme")
    ) as clash:
        await ipam.check_team_block("beta", "100.70.64.0/18")
    assert clash.value.field == "spec.block"
    with pytest.raises(InvalidInput, match="cannot change") as moved:
        await ipam.check_team_block("acme", "100.72.0.0/16")
    assert moved.value.field == "spec.block"
    with pytest.raises(InvalidInput, match="not inside"):
        await ipam.check_team_block("beta", "10.0.0.0/16")
    assert [(a.team, a.address) for a in await ipam.list()] == [("acme", "100.70.0.0/16")]


async def test_allocations_are_stable_distinct_and_reclaimed(ipam: Ipam) -> None:
    await ipam.ensure_team_block("acme")
    n1 = await ipam.allocate("acme", "mesh", "Node", "n1")
    laptop = await ipam.allocate("acme", "mesh", "Device", "laptop")
    pods = await ipam.allocate("acme", "pods", "Node", "n1")
    api = await ipam.allocate("acme", "service", "App", "dev/api")
    assert (n1, laptop, pods, api) == ("100.64.0.1", "100.64.0.2", "100.64.8.0/24", "100.64.4.1")
    assert await ipam.allocate("acme", "mesh", "Device", "laptop") == laptop
    assert await ipam.owned("acme", "Node", "n1") == {"mesh": n1, "pods": pods}

    freed = await ipam.release("acme", "Node", "n1")
    assert sorted(a.address for a in freed) == sorted([n1, pods])
    listed = [(a.pool, a.address, a.owner_kind, a.owner_name) for a in await ipam.list("acme")]
    assert listed == [
        ("block", "100.64.0.0/16", "Team", "acme"),
        ("mesh", laptop, "Device", "laptop"),
        ("service", api, "App", "dev/api"),
    ]
    # The freed address goes to the next owner.
    assert await ipam.allocate("acme", "mesh", "Node", "n2") == n1

    assert await ipam.release_team("acme") == 4
    assert await ipam.list("acme") == []
    with pytest.raises(NotFound, match="team acme has no address block"):
        await ipam.allocate("acme", "mesh", "Node", "n1")


async def test_a_full_range_is_a_clear_error_and_allocates_nothing(ipam: Ipam) -> None:
    tiny = await ipam.ensure_team_block("tiny", "100.64.9.0/24")
    assert tiny.capacity("service") == 2
    await ipam.allocate("tiny", "service", "App", "dev/a")
    await ipam.allocate("tiny", "service", "App", "dev/b")
    before = await ipam.list("tiny")
    with pytest.raises(Conflict, match=r"service range of team tiny is full \(2 addresses\)"):
        await ipam.allocate("tiny", "service", "App", "dev/c")
    assert await ipam.list("tiny") == before
    pods = [
        await ipam.allocate("tiny", "pods", "Node", f"n{i}") for i in range(tiny.capacity("pods"))
    ]
    assert all(ipaddress.IPv4Network(p).subnet_of(tiny.block) for p in pods)
    with pytest.raises(Conflict, match=r"pod subnet range of team tiny is full"):
        await ipam.allocate("tiny", "pods", "Node", "one-too-many")


async def test_allocations_survive_a_restart(database_url: str) -> None:
    db = await Database.open(database_url)
    first = Ipam(db)
    await first.ensure_team_block("acme")
    ip = await first.allocate("acme", "service", "App", "dev/api")
    await db.close()
    db = await Database.open(database_url)
    try:
        again = Ipam(db)
        assert await again.allocate("acme", "service", "App", "dev/api") == ip
        assert await again.allocate("acme", "service", "App", "dev/web") != ip
    finally:
        await db.close()


async def test_two_replicas_on_one_postgres_never_hand_out_an_address_twice() -> None:
    why = postgres_available()
    if why:
        pytest.skip(why)
    with postgres_database() as url:
        one, two = await Database.open(url), await Database.open(url)
        try:
            a, b = Ipam(one), Ipam(two)
            # Both replicas race for the blocks of the same teams too.
            blocks = await asyncio.gather(
                *(ipam.ensure_team_block(t) for t in ("acme", "beta") for ipam in (a, b))
            )
            assert len({str(x.block) for x in blocks}) == 2

            owners = [f"dev{i}" for i in range(60)]
            results = await asyncio.gather(
                *(
                    ipam.allocate("acme", "mesh", "Device", owner)
                    for owner in owners
                    for ipam in (a, b)  # each owner asked for by both replicas at once
                ),
                *(a.allocate("beta", "service", "App", f"dev/app{i}") for i in range(40)),
                *(b.allocate("beta", "service", "App", f"prod/app{i}") for i in range(40)),
            )
            mesh = results[: 2 * len(owners)]
            # Idempotent across replicas: both got the same address for each owner...
            assert all(mesh[i] == mesh[i + 1] for i in range(0, len(mesh), 2))
            # ...and no two owners share one.
            assert len(set(mesh)) == len(owners)
            services = results[2 * len(owners) :]
            assert len(set(services)) == 80
            rows = await a.list()
            addresses = [r.address for r in rows]
            assert len(addresses) == len(set(addresses)) == 2 + len(owners) + 80
        finally:
            await one.close()
            await two.close()
