"""IP address management for the team meshes: blocks, mesh IPs, service IPs, pod subnets.

Every team owns one block of 100.64.0.0/10 (a /16 unless ``Team.spec.block`` asks for
another). A block of prefix ``/p`` is split, in this order, into

- the **mesh** range, the first ``/(p+6)`` (a /22 of a /16): one address per node, device
  and workspace;
- the **service** range, the next ``/(p+6)``: one address per app or managed service;
- the **pod** range, the rest, cut into subnets of ``/max(24, p+6)`` (at most /30): one per
  node of the team.

The first and the last address of the mesh and service ranges are never handed out, so a
range of a /16 holds 1022 addresses.

Allocations live in the ``ip_allocations`` table, one row per (team, pool, owner), so they
survive restarts and are shared by every control-plane replica. Each allocation is one
short transaction that first takes a lock for its team (a PostgreSQL advisory lock; on
SQLite the database's single writer lock, taken by a first write), then reads, picks the
lowest free address and inserts; the unique constraints on the address and on the owner
are the last line of defence, and a violation is retried. Asking twice for one owner
returns the same address; releasing removes the rows; nothing is left half-written.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import zlib
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal, TypeVar

from sqlalchemy import delete, insert, select, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection

from kled.errors import Conflict, InvalidInput, NotFound, Unavailable
from kled.store.database import Database
from kled.store.schema import ip_allocations

log = logging.getLogger(__name__)

TEAM_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
DEFAULT_PREFIX = 16
Pool = Literal["mesh", "service", "pods"]
POOLS: tuple[Pool, ...] = ("mesh", "service", "pods")
_BLOCK = "block"
_ATTEMPTS = 20
#: owners given addresses in one transaction by ``allocate_many``
ALLOCATE_BATCH = 500
# Advisory lock namespaces (PostgreSQL): one for the table of blocks, one per team.
_LOCK_BLOCKS = 7081
_LOCK_TEAM = 7082
T = TypeVar("T")


@dataclass(frozen=True)
class Allocation:
    team: str
    pool: str  # block | mesh | service | pods
    address: str  # an address for mesh/service, a CIDR for block/pods
    owner_kind: str
    owner_name: str
    created_at: datetime | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "team": self.team,
            "pool": self.pool,
            "address": self.address,
            "owner": f"{self.owner_kind}/{self.owner_name}",
            "created": self.created_at.isoformat() if self.created_at else None,
        }


@dataclass(frozen=True)
class BlockLayout:
    """How one team block is split; pure arithmetic, no I/O."""

    block: ipaddress.IPv4Network

    @property
    def range_prefix(self) -> int:
        return self.block.prefixlen + 6

    @property
    def mesh(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network((int(self.block.network_address), self.range_prefix))

    @property
    def service(self) -> ipaddress.IPv4Network:
        start = int(self.block.network_address) + self.mesh.num_addresses
        return ipaddress.IPv4Network((start, self.range_prefix))

    @property
    def pod_prefix(self) -> int:
        return min(30, max(24, self.range_prefix))

    @property
    def pods_start(self) -> int:
        return int(self.block.network_address) + 2 * self.mesh.num_addresses

    def capacity(self, pool: Pool) -> int:
        if pool == "pods":
            free = int(self.block.broadcast_address) + 1 - self.pods_start
            return free // (1 << (32 - self.pod_prefix))
        return self.mesh.num_addresses - 2

    def candidate(self, pool: Pool, index: int) -> str:
        """The ``index``-th address (or subnet) the pool can hand out, from zero."""
        if pool == "pods":
            size = 1 << (32 - self.pod_prefix)
            return str(ipaddress.IPv4Network((self.pods_start + index * size, self.pod_prefix)))
        base = self.mesh if pool == "mesh" else self.service
        return str(base.network_address + 1 + index)

    def index_of(self, pool: Pool, address: str) -> int:
        if pool == "pods":
            size = 1 << (32 - self.pod_prefix)
            net = ipaddress.IPv4Network(address)
            return (int(net.network_address) - self.pods_start) // size
        base = self.mesh if pool == "mesh" else self.service
        return int(ipaddress.IPv4Address(address)) - int(base.network_address) - 1

    def describe(self) -> dict[str, Any]:
        return {
            "block": str(self.block),
            "mesh": str(self.mesh),
            "service": str(self.service),
            "pods": f"{ipaddress.IPv4Address(self.pods_start)}-{self.block.broadcast_address}"
            f" in /{self.pod_prefix} subnets",
            "capacity": {p: self.capacity(p) for p in POOLS},
        }


def parse_block(value: str) -> ipaddress.IPv4Network:
    """A requested team block, checked: a CIDR inside 100.64.0.0/10, prefix /10 to /24."""
    try:
        block = ipaddress.IPv4Network(value, strict=True)
    except ValueError as e:
        raise InvalidInput(
            f"block {value!r} is not a CIDR like 100.66.0.0/16 ({e})", field="spec.block"
        ) from e
    if not block.subnet_of(TEAM_SPACE):
        raise InvalidInput(f"block {block} is not inside {TEAM_SPACE}", field="spec.block")
    if not 8 <= block.prefixlen <= 24:
        raise InvalidInput(
            f"block {block} must have a prefix from /8 to /24 (inside {TEAM_SPACE})",
            field="spec.block",
        )
    return block


class Ipam:
    """The team blocks and the addresses inside them, persistent in the database."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # One writer at a time inside this process; across processes the database lock.
        self._local = asyncio.Lock()

    # ---- blocks --------------------------------------------------------------------

    async def ensure_team_block(self, team: str, requested: str | None = None) -> BlockLayout:
        """The team's block: the one it has, else ``requested``, else the lowest free /16."""
        wanted = parse_block(requested) if requested else None
        existing = await self.team_block(team)
        if existing is not None:
            self._check_same(team, existing.block, wanted)
            return existing

        async def attempt(conn: AsyncConnection) -> BlockLayout:
            await self._lock(conn, _LOCK_BLOCKS, "")
            rows = (
                await conn.execute(
                    select(ip_allocations.c.team, ip_allocations.c.address).where(
                        ip_allocations.c.pool == _BLOCK
                    )
                )
            ).all()
            taken = {r.team: ipaddress.IPv4Network(r.address) for r in rows}
            if team in taken:  # another replica was quicker
                self._check_same(team, taken[team], wanted)
                return BlockLayout(taken[team])
            block = wanted or _first_free(taken.values())
            for other, net in taken.items():
                if net.overlaps(block):
                    raise InvalidInput(
                        f"block {block} overlaps {net} of team {other}", field="spec.block"
                    )
            await self._insert(conn, team, _BLOCK, str(block), "Team", team)
            log.info("ipam: team/%s/%s gets block %s", team, team, block)
            return BlockLayout(block)

        return await self._transact(attempt)

    async def check_team_block(self, team: str, requested: str | None) -> None:
        """Raise ``InvalidInput`` (field ``spec.block``) unless ``ensure_team_block`` would
        accept ``requested`` for ``team`` now; allocates nothing (the admission check).

        Two teams created at the same instant with overlapping blocks can both pass; the
        allocation itself stays the arbiter and refuses the second (in its status)."""
        wanted = parse_block(requested) if requested else None
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(ip_allocations.c.team, ip_allocations.c.address).where(
                        ip_allocations.c.pool == _BLOCK
                    )
                )
            ).all()
        taken = {str(r.team): ipaddress.IPv4Network(r.address) for r in rows}
        if team in taken:
            self._check_same(team, taken[team], wanted)
            return
        if wanted is None:
            _first_free(taken.values())  # Conflict when the space is exhausted
            return
        for other, net in sorted(taken.items()):
            if net.overlaps(wanted):
                raise InvalidInput(
                    f"block {wanted} overlaps {net} of team {other}", field="spec.block"
                )

    async def team_block(self, team: str) -> BlockLayout | None:
        async with self.db.read() as conn:
            address = (
                await conn.execute(
                    select(ip_allocations.c.address).where(
                        ip_allocations.c.team == team, ip_allocations.c.pool == _BLOCK
                    )
                )
            ).scalar_one_or_none()
        return None if address is None else BlockLayout(ipaddress.IPv4Network(address))

    @staticmethod
    def _check_same(
        team: str, have: ipaddress.IPv4Network, wanted: ipaddress.IPv4Network | None
    ) -> None:
        if wanted is not None and wanted != have:
            raise InvalidInput(
                f"team {team} already has block {have}; a block cannot change while the team"
                " exists",
                field="spec.block",
            )

    # ---- addresses -----------------------------------------------------------------

    async def allocate(self, team: str, pool: Pool, owner_kind: str, owner_name: str) -> str:
        """The owner's address in ``pool`` (a CIDR for ``pods``), the same on every call."""
        if pool not in POOLS:
            raise InvalidInput(f"unknown pool {pool!r} (known: {', '.join(POOLS)})", field="pool")
        existing = await self._owned(team, pool, owner_kind, owner_name)
        if existing is not None:
            return existing
        layout = await self.team_block(team)
        if layout is None:
            raise NotFound(f"team {team} has no address block yet")

        async def attempt(conn: AsyncConnection) -> str:
            await self._lock(conn, _LOCK_TEAM, team)
            rows = (
                await conn.execute(
                    select(
                        ip_allocations.c.address,
                        ip_allocations.c.owner_kind,
                        ip_allocations.c.owner_name,
                    ).where(ip_allocations.c.team == team, ip_allocations.c.pool == pool)
                )
            ).all()
            used: set[int] = set()
            for r in rows:
                if r.owner_kind == owner_kind and r.owner_name == owner_name:
                    return str(r.address)
                used.add(layout.index_of(pool, r.address))
            capacity = layout.capacity(pool)
            index = _lowest_free(used, capacity)
            if index is None:
                raise Conflict(
                    f"{_POOL_NAMES[pool]} range of team {team} is full ({capacity} {_UNITS[pool]})"
                )
            address = layout.candidate(pool, index)
            await self._insert(conn, team, pool, address, owner_kind, owner_name)
            log.info(
                "ipam: %s/%s/%s gets %s %s",
                owner_kind.lower(),
                team,
                owner_name,
                pool,
                address,
            )
            return address

        return await self._transact(attempt)

    async def allocate_many(
        self, team: str, pool: Pool, owners: Sequence[tuple[str, str]]
    ) -> dict[tuple[str, str], str]:
        """Addresses for many ``(owner_kind, owner_name)`` of one team at once.

        As ``allocate`` each, but one transaction (one lock, one read, one insert) per
        ``ALLOCATE_BATCH`` owners: a first start over 10,000 apps is some tens of
        transactions, not 10,000. Owners that already hold an address keep it; owners
        left over when the range is full are left out of the answer (``allocate`` then
        says why, for each)."""
        if pool not in POOLS:
            raise InvalidInput(f"unknown pool {pool!r} (known: {', '.join(POOLS)})", field="pool")
        layout = await self.team_block(team)
        if layout is None:
            raise NotFound(f"team {team} has no address block yet")
        given: dict[tuple[str, str], str] = {}
        wanted = list(dict.fromkeys(owners))
        for start in range(0, len(wanted), ALLOCATE_BATCH):
            chunk = wanted[start : start + ALLOCATE_BATCH]

            async def attempt(
                conn: AsyncConnection, chunk: list[tuple[str, str]] = chunk
            ) -> dict[tuple[str, str], str]:
                await self._lock(conn, _LOCK_TEAM, team)
                rows = (
                    await conn.execute(
                        select(
                            ip_allocations.c.address,
                            ip_allocations.c.owner_kind,
                            ip_allocations.c.owner_name,
                        ).where(ip_allocations.c.team == team, ip_allocations.c.pool == pool)
                    )
                ).all()
                held = {(r.owner_kind, r.owner_name): str(r.address) for r in rows}
                used = {layout.index_of(pool, r.address) for r in rows}
                out = {owner: held[owner] for owner in chunk if owner in held}
                capacity, index, new = layout.capacity(pool), 0, []
                for owner in chunk:
                    if owner in out:
                        continue
                    while index < capacity and index in used:
                        index += 1
                    if index >= capacity:
                        break  # full: the rest are told so one by one by allocate()
                    used.add(index)
                    out[owner] = layout.candidate(pool, index)
                    new.append(
                        {
                            "team": team,
                            "pool": pool,
                            "address": out[owner],
                            "owner_kind": owner[0],
                            "owner_name": owner[1],
                            "created_at": datetime.now(UTC),
                        }
                    )
                if new:
                    await conn.execute(insert(ip_allocations), new)
                    log.info("ipam: team %s: %d %s allocations at once", team, len(new), pool)
                return out

            given.update(await self._transact(attempt))
        return given

    async def release(self, team: str, owner_kind: str, owner_name: str) -> list[Allocation]:
        """Free every address the owner holds in the team; returns what was freed."""

        async def attempt(conn: AsyncConnection) -> list[Allocation]:
            where = (
                (ip_allocations.c.team == team)
                & (ip_allocations.c.owner_kind == owner_kind)
                & (ip_allocations.c.owner_name == owner_name)
                & (ip_allocations.c.pool != _BLOCK)
            )
            rows = (await conn.execute(select(ip_allocations).where(where))).all()
            if rows:
                await conn.execute(delete(ip_allocations).where(where))
            return [_allocation(r) for r in rows]

        freed = await self._transact(attempt)
        for a in freed:
            log.info("ipam: %s/%s/%s frees %s", owner_kind.lower(), team, owner_name, a.address)
        return freed

    async def release_team(self, team: str) -> int:
        """Free the team's block and every address in it; returns how many rows went."""

        async def attempt(conn: AsyncConnection) -> int:
            result = await conn.execute(delete(ip_allocations).where(ip_allocations.c.team == team))
            return int(result.rowcount or 0)

        count = await self._transact(attempt)
        if count:
            log.info("ipam: team/%s/%s frees its block (%d allocations)", team, team, count)
        return count

    async def list(self, team: str | None = None) -> list[Allocation]:
        query = select(ip_allocations)
        if team is not None:
            query = query.where(ip_allocations.c.team == team)
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        found = [_allocation(r) for r in rows]
        found.sort(key=lambda a: (a.team, _POOL_ORDER[a.pool], _address_key(a.address)))
        return found

    async def owned(self, team: str, owner_kind: str, owner_name: str) -> dict[str, str]:
        """The owner's addresses by pool, without allocating."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(ip_allocations.c.pool, ip_allocations.c.address).where(
                        ip_allocations.c.team == team,
                        ip_allocations.c.owner_kind == owner_kind,
                        ip_allocations.c.owner_name == owner_name,
                    )
                )
            ).all()
        return {str(r.pool): str(r.address) for r in rows}

    # ---- internals -----------------------------------------------------------------

    async def _owned(self, team: str, pool: str, owner_kind: str, owner_name: str) -> str | None:
        async with self.db.read() as conn:
            found = (
                await conn.execute(
                    select(ip_allocations.c.address).where(
                        ip_allocations.c.team == team,
                        ip_allocations.c.pool == pool,
                        ip_allocations.c.owner_kind == owner_kind,
                        ip_allocations.c.owner_name == owner_name,
                    )
                )
            ).scalar_one_or_none()
        return None if found is None else str(found)

    async def _insert(
        self,
        conn: AsyncConnection,
        team: str,
        pool: str,
        address: str,
        owner_kind: str,
        owner_name: str,
    ) -> None:
        await conn.execute(
            insert(ip_allocations).values(
                team=team,
                pool=pool,
                address=address,
                owner_kind=owner_kind,
                owner_name=owner_name,
                created_at=datetime.now(UTC),
            )
        )

    async def _lock(self, conn: AsyncConnection, space: int, name: str) -> None:
        if self.db.is_sqlite:
            # A first write takes SQLite's single writer lock for the whole transaction,
            # so the read that follows cannot be overtaken by another process's insert.
            await conn.execute(delete(ip_allocations).where(ip_allocations.c.id == -1))
        else:
            key = zlib.crc32(name.encode()) - (1 << 31)  # a signed 32-bit int
            await conn.execute(
                text("SELECT pg_advisory_xact_lock(:space, :key)"), {"space": space, "key": key}
            )

    async def _transact(self, attempt: Callable[[AsyncConnection], Awaitable[T]]) -> T:
        """Run ``attempt`` in its own transaction, again if another writer got in the way."""
        for tries in range(1, _ATTEMPTS + 1):
            try:
                async with self._local, self.db.engine.begin() as conn:
                    return await attempt(conn)
            except IntegrityError as e:
                # The unique constraints caught a race the lock should have prevented
                # (e.g. a replica of an older version): the next attempt sees its row.
                log.debug("ipam: allocation raced (%s), retrying", e.orig)
            except (OperationalError, DBAPIError) as e:
                if not _transient(e) or tries == _ATTEMPTS:
                    raise Unavailable(f"database: {e.orig or e}") from e
                log.debug("ipam: database busy (%s), retrying", e.orig)
            await asyncio.sleep(min(0.5, 0.01 * tries))
        raise Unavailable(f"ipam: gave up after {_ATTEMPTS} conflicting attempts")


def _first_free(taken: Iterable[ipaddress.IPv4Network]) -> ipaddress.IPv4Network:
    nets = list(taken)
    for candidate in TEAM_SPACE.subnets(new_prefix=DEFAULT_PREFIX):
        if not any(candidate.overlaps(n) for n in nets):
            return candidate
    raise Conflict(f"no free /{DEFAULT_PREFIX} left in {TEAM_SPACE} for another team")


def _lowest_free(used: set[int], capacity: int) -> int | None:
    for index in range(capacity):
        if index not in used:
            return index
    return None


def _allocation(row: Any) -> Allocation:
    created = row.created_at
    if created is not None and created.tzinfo is None:
        created = created.replace(tzinfo=UTC)
    return Allocation(
        team=row.team,
        pool=row.pool,
        address=row.address,
        owner_kind=row.owner_kind,
        owner_name=row.owner_name,
        created_at=created,
    )


def _address_key(address: str) -> int:
    return int(ipaddress.IPv4Network(address, strict=False).network_address)


_POOL_ORDER = {"block": 0, "mesh": 1, "service": 2, "pods": 3}
_POOL_NAMES = {"mesh": "mesh", "service": "service", "pods": "pod subnet"}
_UNITS = {"mesh": "addresses", "service": "addresses", "pods": "subnets"}


def _transient(e: DBAPIError) -> bool:
    """Lock contention or a serialisation failure: worth another try."""
    message = str(e.orig or e).lower()
    return any(
        word in message
        for word in ("locked", "busy", "deadlock", "could not serialize", "serialization")
    )
