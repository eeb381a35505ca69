"""Every resource in memory at the latest revision, fed by the event log: the watch cache.

Reads are most of an API's work, and each used to cost a database round trip (a thread
hop on SQLite, a network one on PostgreSQL) and a bounds check of the stored document.
As Kubernetes' API server does with etcd, the control plane keeps a copy of every
resource in memory instead: loaded once at start, then kept current by following the
event log in sequence order — fed at once by this process's own writes, and from the log
for the writes of other replicas. The store answers ``find`` and ``list`` from here.

Each document is bounds-checked once, when it enters, and kept as its JSON text, so a
reader always gets a fresh copy it may change (``json.loads`` is the cheapest deep copy)
and the cache holds about as much memory as the database's rows. Per kind, a sorted list
of ``(team, environment, name)`` keeps the store's order, so a page of a list starts by
bisection and pagination gives the same answers, continue tokens included.

Secrets are not cached: the event log holds them without their values, and their reads
are rare; they are read from the database as before.

The latest events are kept too (``RECENT``, as their JSON text), so that the followers of
the log in this process — watches, feeds, controllers — read them from here rather than
each polling the database after every write; one older than those is read from the log.
"""

from __future__ import annotations

import asyncio
import bisect
import json
import logging
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from itertools import islice
from typing import TYPE_CHECKING, Any

from kled.errors import Gone
from kled.resources import bounds

if TYPE_CHECKING:
    from kled.store.objects import Event, LabelMatcher, Store

log = logging.getLogger(__name__)

#: kinds read from the database, not the cache (see the module's docstring)
UNCACHED = frozenset({"Secret"})
BATCH = 1000
#: events kept in memory for followers
RECENT = 10_000
#: how long a read waits for the cache to reach this process's last write
CATCH_UP_SECONDS = 5.0

Ident = tuple[str, str, str]  # team, environment, name
#: the JSON the API answers with (Starlette's JSONResponse): compact, UTF-8
COMPACT = (",", ":")


@dataclass(frozen=True)
class Entry:
    version: int
    labels: dict[str, str]
    text: str | None  # None: stored outside the bounds, skipped by readers

    def doc(self) -> dict[str, Any]:
        assert self.text is not None
        loaded: dict[str, Any] = json.loads(self.text)
        return loaded


def entry_of(doc: Any, version: int, checked: bool) -> Entry:
    """A cache entry for a document; ``checked`` when the store has just measured it."""
    if not checked and bounds.problem(doc, max_bytes=None) is not None:
        return Entry(version, {}, None)
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        return Entry(version, {}, None)
    labels = doc["metadata"].get("labels") or {}
    return Entry(version, dict(labels), json.dumps(doc, separators=COMPACT, ensure_ascii=False))


class KindIndex:
    """The entries of one kind, by identity and in the store's list order."""

    def __init__(self) -> None:
        self.entries: dict[Ident, Entry] = {}
        self.order: list[Ident] = []

    def put(self, ident: Ident, entry: Entry) -> None:
        if ident not in self.entries:
            bisect.insort(self.order, ident)
        self.entries[ident] = entry

    def drop(self, ident: Ident) -> None:
        if self.entries.pop(ident, None) is not None:
            at = bisect.bisect_left(self.order, ident)
            if at < len(self.order) and self.order[at] == ident:
                del self.order[at]

    def span(self, team: str | None, environment: str | None, after: Ident | None) -> range:
        """Positions in ``order`` that a list of (team, environment) after ``after`` covers."""
        start, end = 0, len(self.order)
        if team is not None:
            low: tuple[str, ...] = (team,) if environment is None else (team, environment)
            start = bisect.bisect_left(self.order, low)
            end = bisect.bisect_left(self.order, (*low[:-1], low[-1] + "\0"))
        if after is not None:
            start = max(start, bisect.bisect_right(self.order, after))
        return range(start, end)


@dataclass
class CachedPage:
    items: list[Any]  # documents, or their JSON text when asked for text
    after: Ident | None  # where the next page starts, when there is one


class WatchCache:
    """The resources of a store at ``revision``; see the module's docstring."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.revision = 0
        self.kinds: dict[str, KindIndex] = {}
        self._pending: dict[int, tuple[Event, Entry]] = {}
        #: (seq, type, kind, team, environment, name, object as JSON), in sequence order
        self.recent: deque[tuple[int, str, str, str, str, str, str]] = deque(maxlen=RECENT)
        self._moved = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.ready = False

    # ---- lifetime --------------------------------------------------------------------

    async def start(self) -> None:
        await self._load()
        self._task = asyncio.create_task(self._follow(), name="watch cache")

    async def stop(self) -> None:
        self.ready = False
        task, self._task = self._task, None
        while task is not None and not task.done():
            task.cancel()  # again if a cancel was lost meeting a wake-up
            await asyncio.wait([task], timeout=0.5)

    async def _load(self) -> None:
        """Every resource, then the revision they are at (events after it are replayed)."""
        revision = await self.store.revision()
        kinds: dict[str, KindIndex] = {}
        for kind, team, env, name, version, doc in await self.store.raw_rows():
            if kind in UNCACHED:
                continue
            index = kinds.setdefault(kind, KindIndex())
            entry = entry_of(doc, version, checked=False)
            if entry.text is None:
                self.store.note_unreadable(kind, (team, env, name), doc)
            index.entries[(team, env, name)] = entry
        for index in kinds.values():
            index.order = sorted(index.entries)
        self.kinds = kinds
        self.revision = revision
        self._pending.clear()
        self.recent.clear()
        self.ready = True
        log.info("watch cache: %d resources at revision %d", self.size, revision)

    @property
    def size(self) -> int:
        return sum(len(index.entries) for index in self.kinds.values())

    # ---- following the log -----------------------------------------------------------

    def offer(self, event: Event) -> None:
        """An event this process just committed: applied now if it is the next one."""
        if event.seq <= self.revision:
            return
        # encoded now: the writer goes on to hand its document to a caller who may change it
        self._pending[event.seq] = (event, entry_of(event.object, event.seq, checked=True))
        self._drain()

    def _drain(self) -> None:
        moved = False
        while self.revision + 1 in self._pending:
            self._apply(*self._pending.pop(self.revision + 1))
            moved = True
        if moved:
            self._wake()

    def _wake(self) -> None:
        self._moved.set()
        self._moved = asyncio.Event()

    def _apply(self, event: Event, entry: Entry | None = None) -> None:
        self.revision = max(self.revision, event.seq)
        if event.kind in UNCACHED:
            self._remember(event, json.dumps(event.object, separators=(",", ":")))
            return
        entry = entry or entry_of(event.object, event.seq, checked=False)
        if entry.text is not None:
            self._remember(event, entry.text)
        index = self.kinds.setdefault(event.kind, KindIndex())
        ident = (event.team, event.environment, event.name)
        known = index.entries.get(ident)
        if known is not None and known.version >= event.seq:
            return  # loaded at a later version than this event (the load raced it)
        if event.type == "DELETED":
            index.drop(ident)
        else:
            index.put(ident, entry)

    async def _follow(self) -> None:
        while True:
            try:
                batch = await self.store.raw_events_after(self.revision, BATCH)
            except asyncio.CancelledError:
                raise
            except Gone:
                log.warning("watch cache: fell behind the compacted log; loading again")
                await self._reload()
                continue
            except Exception:
                log.exception("watch cache: reading the event log failed; retrying")
                await asyncio.sleep(1)
                continue
            for event in batch:
                if event.seq == self.revision + 1:
                    self._apply(event)
            self._pending = {s: e for s, e in self._pending.items() if s > self.revision}
            self._drain()
            if batch:
                self._wake()
            if len(batch) < BATCH:
                await self.store.wait_for_change(1.0)

    async def _reload(self) -> None:
        try:
            await self._load()
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("watch cache: loading failed; retrying")
            self.ready = False
            await asyncio.sleep(1)

    async def reach(self, revision: int) -> bool:
        """Wait until the cache holds ``revision``; False if it did not in time."""
        if self.revision >= revision:
            return self.ready
        try:
            async with asyncio.timeout(CATCH_UP_SECONDS):
                while self.revision < revision:
                    await self._moved.wait()
        except TimeoutError:
            log.warning(
                "watch cache: at %d, not yet %d; reading the database", self.revision, revision
            )
            return False
        return self.ready

    def _remember(self, event: Event, text: str) -> None:
        e = event
        self.recent.append((e.seq, e.type, e.kind, e.team, e.environment, e.name, text))

    def events_after(self, seq: int, limit: int) -> list[Event] | None:
        """The events after ``seq`` from memory, each object a fresh copy; None when the
        ones kept do not reach back that far (the log has them, or says they are gone)."""
        from kled.store.objects import TextEvent

        recent = self.recent
        if not self.ready or seq > self.revision:
            return None
        if seq == self.revision:
            return []
        if not recent or recent[0][0] > seq + 1:
            return None
        at = bisect.bisect_right(recent, seq, key=lambda r: r[0])
        return [
            TextEvent(s, change, kind, team, env, name, text)
            for s, change, kind, team, env, name, text in islice(recent, at, at + limit)
        ]

    # ---- reading ---------------------------------------------------------------------

    def serves(self, kind: str) -> bool:
        return self.ready and kind not in UNCACHED

    def find(self, kind: str, ident: Ident) -> Entry | None:
        index = self.kinds.get(kind)
        return None if index is None else index.entries.get(ident)

    def page(
        self,
        kind: str,
        team: str | None,
        environment: str | None,
        *,
        matches: LabelMatcher | None,
        limit: int,
        after: Ident | None,
        text: bool = False,
    ) -> CachedPage:
        """As ``Store.list`` pages: matching items in order; ``after`` set if more follow."""
        index = self.kinds.get(kind)
        if index is None:
            return CachedPage([], None)
        span = index.span(team, environment, after)
        items: list[Any] = []
        for at in span:
            ident = index.order[at]
            if environment is not None and team is None and ident[1] != environment:
                continue
            entry = index.entries[ident]
            if entry.text is None or (matches is not None and not matches(entry.labels)):
                continue
            items.append(entry.text if text else entry.doc())
            if limit and len(items) >= limit:
                more = at + 1 < span.stop
                return CachedPage(items, ident if more else None)
        return CachedPage(items, None)

    def unreadable(self) -> Iterable[tuple[str, Ident]]:
        for kind, index in self.kinds.items():
            for ident, entry in index.entries.items():
                if entry.text is None:
                    yield kind, ident
