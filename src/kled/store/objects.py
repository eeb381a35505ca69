"""The resource store: create, read, list, update, delete — each one transaction with its event.

Resources are dicts in their API form (``kled.resources``); the store owns the system part
of ``metadata`` (uid, resourceVersion, generation, timestamps) and enforces optimistic
concurrency: an update that names a ``resourceVersion`` other than the stored one is a
``Conflict``. ``resourceVersion`` is the revision of the transaction that last wrote the
resource, the same number as that change's event sequence. Deletion is graceful: while
``metadata.finalizers`` is not empty a delete only sets ``deletionTimestamp``; removing the
last finalizer then deletes the record.

Every document written keeps the bounds of ``kled.resources.bounds`` (size, depth, UTF-8),
whoever writes it. One stored before those bounds existed is skipped by every reader,
listed in ``problems`` (for ``/readyz`` and ``kled server doctor``), and can be deleted.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, bindparam, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from kled.errors import Conflict, Gone, InvalidInput, NotFound, Unreadable
from kled.resources import bounds
from kled.resources.registry import API_VERSION, Scope, kind_info
from kled.store.cipher import SecretCipher, redact
from kled.store.database import Database
from kled.store.schema import events, resources, revision
from kled.store.watchcache import WatchCache

log = logging.getLogger(__name__)

LabelMatcher = Callable[[dict[str, str]], bool]
METADATA_DEFAULTS: tuple[tuple[str, Any], ...] = (
    ("labels", {}),
    ("annotations", {}),
    ("finalizers", []),
)
SYSTEM_METADATA = ("uid", "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp")


@dataclass(frozen=True)
class Key:
    """Where a resource lives: kind, team ("" if server-wide), environment ("" if none)."""

    kind: str
    team: str
    environment: str
    name: str

    def __str__(self) -> str:
        parts = [self.kind.lower(), self.team, self.environment, self.name]
        return "/".join(p for p in parts if p)

    @classmethod
    def of(cls, doc: dict[str, Any]) -> Key:
        meta = doc.get("metadata") or {}
        info = kind_info(str(doc.get("kind")))
        team = meta.get("team") or ""
        env = meta.get("environment") or ""
        if info.scope is Scope.SERVER:
            team, env = "", ""
        elif not team:
            raise InvalidInput(f"a {info.kind} needs a team", field="metadata.team")
        if info.scope is Scope.TEAM:
            env = ""
        elif info.scope is Scope.ENVIRONMENT and not env:
            raise InvalidInput(f"a {info.kind} needs an environment", field="metadata.environment")
        name = meta.get("name")
        if not name:
            raise InvalidInput("a name is required", field="metadata.name")
        return cls(info.kind, team, env, str(name))


@dataclass
class Event:
    seq: int
    type: str  # ADDED | MODIFIED | DELETED
    kind: str
    team: str
    environment: str
    name: str
    object: dict[str, Any]


class TextEvent(Event):
    """An event whose object is decoded from its JSON text when first read (the watch
    cache's): a follower that skips other kinds never pays for decoding them."""

    def __init__(
        self, seq: int, type: str, kind: str, team: str, environment: str, name: str, text: str
    ) -> None:
        self.seq, self.type, self.kind = seq, type, kind
        self.team, self.environment, self.name = team, environment, name
        self._text: str | None = text
        self._object: dict[str, Any] | None = None

    @property  # type: ignore[override]
    def object(self) -> dict[str, Any]:
        if self._object is None:
            self._object = json.loads(self._text or "null")
            self._text = None
        return self._object

    @object.setter
    def object(self, value: dict[str, Any]) -> None:
        self._object, self._text = value, None


@dataclass
class Page:
    items: Docs
    continue_token: str | None
    revision: int
    #: the items as JSON text instead (``list(..., as_text=True)`` from the cache)
    texts: list[str] | None = None


@dataclass
class Written:
    object: dict[str, Any]
    result: str  # created | configured | unchanged | deleted | deleting


@dataclass(frozen=True)
class Invariant:
    """A rule over a team's documents of one kind that a write must leave true.

    ``check`` sees them as they are after the write, inside its transaction, and raises to
    undo it. Every write transaction takes the revision row first, so writes run one at a
    time, across processes too: none can slip in between the check and the commit.
    """

    kind: str
    team: str
    check: Callable[[list[dict[str, Any]]], None]


@dataclass
class _Changes:
    waiters: set[asyncio.Event] = field(default_factory=set)


Docs = list[dict[str, Any]]
Events = list["Event"]


def desired_part(doc: dict[str, Any]) -> dict[str, Any]:
    """Everything the user owns except metadata: spec, or data for Config and Secret."""
    return {k: v for k, v in doc.items() if k not in ("apiVersion", "kind", "metadata", "status")}


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(ts: datetime) -> str:
    return ts.isoformat().replace("+00:00", "Z")


def _parse_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class Store:
    def __init__(self, db: Database, cipher: SecretCipher) -> None:
        self.db = db
        self._cipher = cipher
        self._changes = _Changes()
        #: stored documents that break the bounds, by key, with what is wrong: skipped
        self.problems: dict[str, str] = {}
        #: reads are answered from memory while it runs (``open_cache``)
        self.cache: WatchCache | None = None
        #: the last revision this process committed: a read waits for the cache to hold it
        self.written = 0
        self._staged: dict[int, Event] = {}
        db.after_write = self._after_write

    @property
    def cipher(self) -> SecretCipher:
        """The key that seals Secret values (Kled Clusters seal their Secrets with it too)."""
        return self._cipher

    async def open_cache(self) -> WatchCache:
        """Load every resource into memory and keep it current; reads come from it."""
        cache = WatchCache(self)
        await cache.start()
        self.cache = cache
        return cache

    async def close_cache(self) -> None:
        if self.cache is not None:
            cache, self.cache = self.cache, None
            await cache.stop()

    async def _from_cache(self, kind: str) -> WatchCache | None:
        """The cache, when it serves ``kind`` and holds this process's last write."""
        cache = self.cache
        if cache is None or not cache.serves(kind) or not await cache.reach(self.written):
            return None
        return cache

    # ---- reading -------------------------------------------------------------------

    async def find(self, key: Key) -> dict[str, Any] | None:
        cache = await self._from_cache(key.kind)
        if cache is not None:
            entry = cache.find(key.kind, (key.team, key.environment, key.name))
            return None if entry is None or entry.text is None else entry.doc()
        async with self.db.read() as conn:
            row = await self._row(conn, key)
        return None if row is None else self._readable(row.doc, key)

    async def get(self, key: Key) -> dict[str, Any]:
        doc = await self.find(key)
        if doc is None:
            raise NotFound(f"{key} not found")
        return doc

    async def list(
        self,
        kind: str,
        team: str | None = None,
        environment: str | None = None,
        *,
        matches: LabelMatcher | None = None,
        limit: int = 0,
        continue_token: str | None = None,
        as_text: bool = False,
    ) -> Page:
        """Resources of a kind, ordered by (team, environment, name), a page at a time.

        ``as_text``: when the cache answers, the items come as their JSON text, in
        ``texts`` (an API answers with them as they are); otherwise as documents.
        """
        after = _decode_continue(continue_token) if continue_token else None
        cache = await self._from_cache(kind)
        if cache is not None:
            at = cache.revision
            page = cache.page(
                kind, team, environment, matches=matches, limit=limit, after=after, text=as_text
            )
            token = _encode_continue(page.after) if page.after is not None else None
            if as_text:
                return Page([], token, at, texts=page.items)
            return Page(page.items, token, at)
        items: Docs = []
        batch = max(limit, 200) if limit else 1000
        async with self.db.read() as conn:
            revision = await self._revision(conn)
            while True:
                query = select(
                    resources.c.team,
                    resources.c.environment,
                    resources.c.name,
                    resources.c.labels,
                    resources.c.doc,
                ).where(resources.c.kind == kind)
                if team is not None:
                    query = query.where(resources.c.team == team)
                if environment is not None:
                    query = query.where(resources.c.environment == environment)
                if after is not None:
                    t, e, n = after
                    query = query.where(
                        (resources.c.team > t)
                        | and_(resources.c.team == t, resources.c.environment > e)
                        | and_(
                            resources.c.team == t,
                            resources.c.environment == e,
                            resources.c.name > n,
                        )
                    )
                query = query.order_by(
                    resources.c.team, resources.c.environment, resources.c.name
                ).limit(batch)
                rows = (await conn.execute(query)).all()
                for row in rows:
                    after = (row.team, row.environment, row.name)
                    if matches is None or matches(row.labels or {}):
                        doc = self._readable(
                            row.doc, Key(kind, row.team, row.environment, row.name)
                        )
                        if doc is None:
                            continue
                        items.append(doc)
                        if limit and len(items) >= limit:
                            more = await self._has_more(conn, kind, team, environment, after)
                            token = _encode_continue(after) if more else None
                            return Page(items, token, revision)
                if len(rows) < batch:
                    return Page(items, None, revision)

    async def _has_more(
        self,
        conn: AsyncConnection,
        kind: str,
        team: str | None,
        environment: str | None,
        after: tuple[str, str, str],
    ) -> bool:
        t, e, n = after
        query = select(resources.c.id).where(resources.c.kind == kind)
        if team is not None:
            query = query.where(resources.c.team == team)
        if environment is not None:
            query = query.where(resources.c.environment == environment)
        query = query.where(
            (resources.c.team > t)
            | and_(resources.c.team == t, resources.c.environment > e)
            | and_(resources.c.team == t, resources.c.environment == e, resources.c.name > n)
        ).limit(1)
        return (await conn.execute(query)).first() is not None

    # ---- writing -------------------------------------------------------------------

    async def create(self, doc: dict[str, Any], *, dry_run: bool = False) -> dict[str, Any]:
        key = Key.of(doc)
        if dry_run:
            if await self.find(key) is not None:
                raise Conflict(f"{key} already exists")
            return self._stamp_new(doc, uuid.uuid4().hex, 0, _now())
        async with self.db.write() as (conn, rev):
            new = self._stamp_new(doc, str(uuid.uuid4()), rev, _now())
            try:  # the identity's unique constraint says whether it exists: no SELECT first
                await conn.execute(insert(resources).values(**self._columns(key, new)))
            except IntegrityError as e:
                raise Conflict(f"{key} already exists") from e
            await self._event(conn, rev, "ADDED", key, new)
        self._notify()
        return new

    async def update(
        self,
        doc: dict[str, Any],
        *,
        expected_version: str | None = None,
        dry_run: bool = False,
        invariant: Invariant | None = None,
    ) -> Written:
        """Replace the desired part, labels, annotations and finalizers; keep status."""
        key = Key.of(doc)
        if dry_run:
            current = await self.get(key)
            self._check_version(key, current, expected_version)
            merged, changed = _merge_desired(
                current, doc, int(current["metadata"]["resourceVersion"])
            )
            return Written(merged, "configured" if changed else "unchanged")
        seen = await self.find(key) if self.cache is not None else None
        if seen is not None and expected_version in (None, "", seen["metadata"]["resourceVersion"]):
            _, changed = _merge_desired(seen, doc, 0)
            if not changed:
                return Written(seen, "unchanged")  # as read: no transaction, no write
        try:
            async with self.db.write() as (conn, rev):
                written = None
                if seen is not None and expected_version in (None, "", _version_of(seen)):
                    # One statement instead of two: the cache's copy, if the row is still
                    # at its version (else read the row, as below).
                    written = await self._store_if_at(conn, rev, key, seen, doc)
                if written is None:
                    row = await self._row(conn, key)
                    if row is None:
                        raise NotFound(f"{key} not found")
                    current = self._load(row.doc, key)
                    self._check_version(key, current, expected_version)
                    merged, changed = _merge_desired(current, doc, rev)
                    if not changed:
                        raise _Unchanged(current)
                    written = await self._store_change(conn, rev, key, merged)
                await self._hold(conn, invariant)
        except _Unchanged as same:
            return Written(same.current, "unchanged")
        self._notify()
        return Written(written, "configured")

    async def update_status(
        self, key: Key, status: dict[str, Any], *, expected_version: str | None = None
    ) -> dict[str, Any]:
        try:
            async with self.db.write() as (conn, rev):
                row = await self._row(conn, key)
                if row is None:
                    raise NotFound(f"{key} not found")
                current = self._load(row.doc, key)
                self._check_version(key, current, expected_version)
                if current.get("status") == status:
                    raise _Unchanged(current)
                new = copy.deepcopy(current)
                new["status"] = status
                new["metadata"]["resourceVersion"] = str(rev)
                written = await self._store_change(conn, rev, key, new)
        except _Unchanged as same:
            return same.current
        self._notify()
        return written

    async def update_statuses(
        self, changes: Sequence[tuple[Key, Callable[[dict[str, Any]], dict[str, Any] | None]]]
    ) -> dict[Key, dict[str, Any]]:
        """Write many statuses in one transaction, each computed by its ``change`` from the
        stored document (None: leave it); one revision and event per document changed.

        The documents are read inside the transaction, which holds the revision row (every
        write takes it first), so nobody writes between the read and the write: no
        version to check, no retry. Gone or deleting documents are left alone. Returns
        the written documents by key."""
        written: dict[Key, dict[str, Any]] = {}
        if not changes:
            return written
        async with self.db.write_batch() as revs:
            for key, change in changes:
                row = await self._row(revs.conn, key)
                if row is None:
                    continue
                current = self._load(row.doc, key)
                if current["metadata"].get("deletionTimestamp"):
                    continue
                status = change(current)
                if status is None or current.get("status") == status:
                    continue
                rev = await revs.take()
                new = copy.deepcopy(current)
                new["status"] = status
                new["metadata"]["resourceVersion"] = str(rev)
                written[key] = await self._store_change(revs.conn, rev, key, new)
        if written:
            self._notify()
        return written

    async def delete(
        self,
        key: Key,
        *,
        expected_version: str | None = None,
        dry_run: bool = False,
        invariant: Invariant | None = None,
    ) -> Written:
        """Delete now, or mark for deletion while finalizers remain."""
        if dry_run:
            current = await self.get(key)
            self._check_version(key, current, expected_version)
            return Written(current, "deleted")
        try:
            async with self.db.write() as (conn, rev):
                row = await self._row(conn, key)
                if row is None:
                    raise NotFound(f"{key} not found")
                try:
                    current = self._load(row.doc, key)
                except Unreadable:
                    return await self._purge(conn, rev, key)
                self._check_version(key, current, expected_version)
                new = copy.deepcopy(current)
                new["metadata"]["resourceVersion"] = str(rev)
                if current["metadata"].get("finalizers"):
                    if current["metadata"].get("deletionTimestamp"):
                        raise _Unchanged(current)
                    new["metadata"]["deletionTimestamp"] = _iso(_now())
                    result = "deleting"
                else:
                    new["metadata"]["deletionTimestamp"] = _iso(_now())
                    result = "deleted"
                written = await self._store_change(conn, rev, key, new)
                await self._hold(conn, invariant)
        except _Unchanged as same:
            return Written(same.current, "deleting")
        self._notify()
        return Written(written, result)

    # ---- unreadable documents ------------------------------------------------------

    async def scan(self) -> dict[str, str]:
        """Check every stored resource; those that break the bounds, by key, with why."""
        for key, doc in await self._all_rows():
            self._readable(doc, key)
        return dict(self.problems)

    async def purge_unreadable(self) -> int:
        """Delete every resource :meth:`scan` found unreadable; how many went."""
        gone = 0
        for key, doc in await self._all_rows():
            if self._readable(doc, key) is None:
                await self.delete(key)
                gone += 1
        return gone

    async def _all_rows(self) -> Sequence[tuple[Key, Any]]:
        columns = (resources.c.kind, resources.c.team, resources.c.environment, resources.c.name)
        async with self.db.read() as conn:
            rows = (await conn.execute(select(*columns, resources.c.doc))).all()
        return [(Key(r.kind, r.team, r.environment, r.name), r.doc) for r in rows]

    # ---- the event log -------------------------------------------------------------

    async def events_after(self, seq: int, limit: int = 500) -> Events:
        """The events after ``seq``, in order; ``Gone`` if some were compacted away."""
        cache = self.cache
        if cache is not None and await cache.reach(self.written):
            kept = cache.events_after(seq, limit)
            if kept is not None:
                return kept
        out: Events = []
        for event in await self.raw_events_after(seq, limit):
            if bounds.problem(event.object, max_bytes=_NO_SIZE_CHECK) is not None:
                self.problems.setdefault(
                    f"event {event.seq}",
                    f"{event.kind.lower()}/{event.team}/{event.name}: skipped",
                )
                continue  # written by an older version: its followers never see it
            out.append(event)
        return out

    async def raw_events_after(self, seq: int, limit: int = 500) -> Events:
        """As ``events_after``, without the bounds check (the cache checks once itself)."""
        async with self.db.read() as conn:
            rows = (await conn.execute(_EVENTS_AFTER, {"after": seq, "limit": limit})).all()
        # The log is gap-free (one event per revision), so a first event later than the
        # next one means the ones between were compacted: a reader would miss them.
        if rows and rows[0].seq > seq + 1:
            raise Gone(
                f"the events after revision {seq} were compacted; the oldest kept is "
                f"{rows[0].seq}: list again and watch from the list's resourceVersion",
                oldest=int(rows[0].seq),
            )
        return [Event(r.seq, r.type, r.kind, r.team, r.environment, r.name, r.object) for r in rows]

    async def check_since(self, seq: int) -> None:
        """Raise ``Gone`` if a watch from ``seq`` would miss compacted events."""
        await self.raw_events_after(seq, 1)

    async def compact(self, keep: int) -> int:
        """Delete all but the last ``keep`` events (at least one stays); how many went."""
        through = await self.revision() - max(keep, 1)
        if through <= 0:
            return 0
        async with self.db.maintain() as conn:
            result = await conn.execute(delete(events).where(events.c.seq <= through))
        return int(result.rowcount or 0)

    async def revision(self) -> int:
        async with self.db.read() as conn:
            return await self._revision(conn)

    async def wait_for_change(self, timeout: float) -> None:
        """Return when this process writes, or after ``timeout`` (other replicas' writes)."""
        waiter = asyncio.Event()
        self._changes.waiters.add(waiter)
        try:
            # not wait_for: on 3.11 it can swallow a cancel that meets a wake-up
            async with asyncio.timeout(timeout):
                await waiter.wait()
        except TimeoutError:
            pass
        finally:
            self._changes.waiters.discard(waiter)

    # ---- internals -----------------------------------------------------------------

    def _notify(self) -> None:
        for waiter in self._changes.waiters:
            waiter.set()

    def _after_write(self, rev: int, committed: bool) -> None:
        event = self._staged.pop(rev, None)
        if not committed:
            return
        self.written = max(self.written, rev)
        if event is not None and self.cache is not None:
            self.cache.offer(event)

    def note_unreadable(self, kind: str, ident: tuple[str, str, str], doc: Any) -> None:
        """Record (log, ``problems``) a stored document the cache found outside the bounds."""
        self._readable(doc, Key(kind, *ident))

    async def raw_rows(self) -> Sequence[tuple[str, str, str, str, int, Any]]:
        """Every stored resource as stored: kind, team, environment, name, version, doc."""
        columns = (
            resources.c.kind,
            resources.c.team,
            resources.c.environment,
            resources.c.name,
            resources.c.resource_version,
            resources.c.doc,
        )
        async with self.db.read() as conn:
            rows = (await conn.execute(select(*columns))).all()
        return [
            (r.kind, r.team, r.environment, r.name, int(r.resource_version), r.doc) for r in rows
        ]

    async def _store_change(
        self, conn: AsyncConnection, rev: int, key: Key, new: dict[str, Any]
    ) -> dict[str, Any]:
        meta = new["metadata"]
        if meta.get("deletionTimestamp") and not meta.get("finalizers"):
            await conn.execute(delete(resources).where(_key_clause(key)))
            await self._event(conn, rev, "DELETED", key, new)
        else:
            values = self._columns(key, new)
            values.pop("uid")
            values.pop("created_at")
            await conn.execute(update(resources).where(_key_clause(key)).values(**values))
            await self._event(conn, rev, "MODIFIED", key, new)
        return new

    async def _store_if_at(
        self, conn: AsyncConnection, rev: int, key: Key, seen: dict[str, Any], doc: dict[str, Any]
    ) -> dict[str, Any] | None:
        """Write ``doc`` merged into ``seen`` if the stored row is still at ``seen``'s
        version (one UPDATE with the version in its WHERE); None if it is not, or if the
        change is one this does not do (a deletion's last finalizer going)."""
        merged, changed = _merge_desired(seen, doc, rev)
        meta = merged["metadata"]
        if not changed or (meta.get("deletionTimestamp") and not meta.get("finalizers")):
            return None
        values = self._columns(key, merged)
        values.pop("uid")
        values.pop("created_at")
        result = await conn.execute(
            update(resources)
            .where(_key_clause(key), resources.c.resource_version == int(_version_of(seen)))
            .values(**values)
        )
        if result.rowcount != 1:
            return None
        await self._event(conn, rev, "MODIFIED", key, merged)
        return merged

    async def _event(
        self, conn: AsyncConnection, rev: int, kind: str, key: Key, doc: dict[str, Any]
    ) -> None:
        obj = redact(doc) if key.kind == "Secret" else doc
        self._staged[rev] = Event(rev, kind, key.kind, key.team, key.environment, key.name, obj)
        await conn.execute(
            insert(events).values(
                seq=rev,
                type=kind,
                kind=key.kind,
                team=key.team,
                environment=key.environment,
                name=key.name,
                object=obj,
                created_at=_now(),
            )
        )

    async def _hold(self, conn: AsyncConnection, invariant: Invariant | None) -> None:
        if invariant is None:
            return
        query = select(resources.c.environment, resources.c.name, resources.c.doc).where(
            resources.c.kind == invariant.kind, resources.c.team == invariant.team
        )
        docs = []
        for row in (await conn.execute(query)).all():
            key = Key(invariant.kind, invariant.team, row.environment, row.name)
            doc = self._readable(row.doc, key)
            if doc is not None:
                docs.append(doc)
        invariant.check(docs)

    async def _row(self, conn: AsyncConnection, key: Key) -> Any:
        params = {"kind": key.kind, "team": key.team, "env": key.environment, "name": key.name}
        return (await conn.execute(_ROW, params)).first()

    async def _revision(self, conn: AsyncConnection) -> int:
        return int((await conn.execute(select(revision.c.value))).scalar_one())

    def _columns(self, key: Key, doc: dict[str, Any]) -> dict[str, Any]:
        bounds.check(doc)
        meta = doc["metadata"]
        stored = self._cipher.seal(doc) if key.kind == "Secret" else doc
        deleted = meta.get("deletionTimestamp")
        return {
            "uid": meta["uid"],
            "kind": key.kind,
            "team": key.team,
            "environment": key.environment,
            "name": key.name,
            "resource_version": int(meta["resourceVersion"]),
            "generation": int(meta["generation"]),
            "created_at": datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00")),
            "deleted_at": datetime.fromisoformat(deleted.replace("Z", "+00:00"))
            if deleted
            else None,
            "labels": meta.get("labels") or {},
            "doc": stored,
        }

    def _load(self, stored: Any, key: Key) -> dict[str, Any]:
        """The stored document, opened; Unreadable if it breaks the bounds."""
        found = bounds.problem(stored, max_bytes=_NO_SIZE_CHECK)
        if found is None and not isinstance(stored, dict):
            found = ("", "must be a mapping")
        elif found is None and not isinstance(stored.get("metadata"), dict):
            found = ("metadata", "must be a mapping")
        if found is not None:
            where = str(key)
            field, message = found
            reason = f"{field}: {message}" if field else message
            if where not in self.problems:
                log.error("store: %s is unreadable and skipped: %s", where, reason)
            self.problems[where] = reason
            raise Unreadable(
                f"{where} is stored outside the bounds ({reason}); it can only be deleted"
            )
        return self._cipher.open(stored) if stored.get("kind") == "Secret" else stored

    def _readable(self, stored: Any, key: Key) -> dict[str, Any] | None:
        """The stored document, or None (noted in ``problems``) where it is unreadable."""
        try:
            return self._load(stored, key)
        except Unreadable:
            return None

    async def _purge(self, conn: AsyncConnection, rev: int, key: Key) -> Written:
        """Remove an unreadable record outright; its event names it and no more."""
        stub = {
            "apiVersion": API_VERSION,
            "kind": key.kind,
            "metadata": {
                "name": key.name,
                "team": key.team or None,
                "environment": key.environment or None,
                "resourceVersion": str(rev),
                "deletionTimestamp": _iso(_now()),
            },
        }
        await conn.execute(delete(resources).where(_key_clause(key)))
        await self._event(conn, rev, "DELETED", key, stub)
        self.problems.pop(str(key), None)
        return Written(stub, "deleted")

    @staticmethod
    def _stamp_new(doc: dict[str, Any], uid: str, rev: int, now: datetime) -> dict[str, Any]:
        new = copy.deepcopy(doc)
        new.setdefault("apiVersion", API_VERSION)
        meta = new.setdefault("metadata", {})
        meta["uid"] = uid
        meta["resourceVersion"] = str(rev)
        meta["generation"] = 1
        meta["creationTimestamp"] = _iso(now)
        meta.pop("deletionTimestamp", None)
        for field_name, empty in METADATA_DEFAULTS:
            meta[field_name] = meta.get(field_name) or copy.deepcopy(empty)
        new.setdefault("status", {})
        return new

    @staticmethod
    def _check_version(key: Key, current: dict[str, Any], expected: str | None) -> None:
        if expected in (None, ""):
            return
        now = current["metadata"]["resourceVersion"]
        if str(expected) != str(now):
            raise Conflict(
                f"{key} was changed by someone else: resourceVersion {expected} is stale "
                f"(now {now}); get it again and retry"
            )


#: stored documents were measured when written; reading them checks only shape and text
_NO_SIZE_CHECK = None
#: built once: the statements of every request
_ROW = select(resources).where(
    resources.c.kind == bindparam("kind"),
    resources.c.team == bindparam("team"),
    resources.c.environment == bindparam("env"),
    resources.c.name == bindparam("name"),
)
_EVENTS_AFTER = (
    select(events)
    .where(events.c.seq > bindparam("after"))
    .order_by(events.c.seq)
    .limit(bindparam("limit"))
)


class _Unchanged(Exception):
    def __init__(self, current: dict[str, Any]) -> None:
        self.current = current


def _merge_desired(
    current: dict[str, Any], doc: dict[str, Any], rev: int
) -> tuple[dict[str, Any], bool]:
    new = copy.deepcopy(current)
    for k in list(desired_part(new)):
        del new[k]
    new.update(copy.deepcopy(desired_part(doc)))
    meta_in = doc.get("metadata") or {}
    meta = new["metadata"]
    for field_name, empty in METADATA_DEFAULTS:
        if field_name in meta_in:
            meta[field_name] = copy.deepcopy(meta_in[field_name]) or copy.deepcopy(empty)
    spec_changed = desired_part(new) != desired_part(current)
    changed = spec_changed or _normal(meta) != _normal(current["metadata"])
    if changed:
        meta["resourceVersion"] = str(rev)
        if spec_changed:
            meta["generation"] = int(meta.get("generation", 1)) + 1
    return new, changed


def _normal(meta: dict[str, Any]) -> dict[str, Any]:
    """Metadata with absent and empty labels, annotations and finalizers made the same."""
    out = dict(meta)
    for field_name, empty in METADATA_DEFAULTS:
        out[field_name] = out.get(field_name) or empty
    return out


def _version_of(doc: dict[str, Any]) -> str:
    return str(doc["metadata"]["resourceVersion"])


def _key_clause(key: Key) -> Any:
    return and_(
        resources.c.kind == key.kind,
        resources.c.team == key.team,
        resources.c.environment == key.environment,
        resources.c.name == key.name,
    )


def _encode_continue(after: tuple[str, str, str]) -> str:
    return base64.urlsafe_b64encode(json.dumps(list(after)).encode()).decode()


def _decode_continue(token: str) -> tuple[str, str, str]:
    try:
        t, e, n = json.loads(base64.urlsafe_b64decode(token.encode()))
        return str(t), str(e), str(n)
    except (ValueError, TypeError) as e:
        raise InvalidInput("not a continue token from this server", field="continue") from e
