"""The async shell around the planner: one sync session between a local folder and a remote.

``SyncSession`` connects (``connect`` returns a ``channel.Link``; the session does not care
whether it is a child process, ``podman exec -i`` or a relay), says hello with its token and
excludes, and makes both trees one: the first time by its ``Strategy``, after a reconnect
by a three-way plan against ``base`` — what both sides held after the last sync — so that
what changed on either side while the channel was down is neither lost nor sent twice.
Then it watches: ``watchfiles`` (inotify) here, the remote's ``changed`` events there; every
batch of changed paths is re-read on both sides, planned and run, and ``base`` is updated
for the paths that made it. Changes the session applied itself are recorded by its
``Applier`` and dropped when the watcher reports them, so nothing bounces back.

``on_batch`` is told of every batch that landed (direction, files, bytes, ms); ``kled dev``
will show it and restart the dev process from it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Literal

import watchfiles

from kled.sync.apply import Applier, Incoming
from kled.sync.channel import Channel, ChannelError, Client, Header, Link, hello
from kled.sync.ignore import Ignore
from kled.sync.index import (
    Entry,
    Escape,
    Index,
    remove_stale_temps,
    scan,
    scan_paths,
    under,
    valid_rel,
)
from kled.sync.plan import Plan, Strategy, plan, settled

log = logging.getLogger(__name__)

#: how long the local watcher waits for more changes once one arrived (ms), and at most
STEP_MS = 10
DEBOUNCE_MS = 300
MAX_FILE_SIZE = 1 << 30
#: metadata operations per frame, and changed paths above which a batch re-reads both trees
BATCH_OPS = 2000
MANY_PATHS = 5000


@dataclass(frozen=True)
class Batch:
    """One batch of changes that landed on the other side."""

    #: "up": local → remote; "down": remote → local
    direction: Literal["up", "down"]
    files: int
    bytes: int
    #: from the moment the change was seen (or the sync started) to the remote's answer
    ms: float
    paths: tuple[str, ...]
    initial: bool = False


class _Download:
    """The sink of one ``get``: chunks straight into a temporary file beside the target."""

    def __init__(self, applier: Applier, inc: Incoming) -> None:
        self.applier, self.inc = applier, inc
        self.error: str | None = None

    def write(self, data: bytes) -> None:
        if self.error is None:
            try:
                self.applier.write(self.inc, data)
            except OSError as e:
                self.error = str(e)


def stamp() -> str:
    return time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())


class SyncSession:
    def __init__(
        self,
        local_root: str | os.PathLike[str],
        connect: Callable[[], Awaitable[Link]],
        *,
        token: str,
        strategy: Strategy = Strategy.MIRROR_LOCAL,
        exclude: Iterable[str] = (),
        gitignore: bool = True,
        on_batch: Callable[[Batch], None] | None = None,
        step_ms: int = STEP_MS,
        debounce_ms: int = DEBOUNCE_MS,
        max_file_size: int = MAX_FILE_SIZE,
    ) -> None:
        self.root = os.path.realpath(local_root)
        self.connect = connect
        self.token = token
        self.strategy = strategy
        self.ignore = Ignore.for_root(self.root, exclude, gitignore=gitignore)
        self.on_batch = on_batch
        self.step_ms, self.debounce_ms = step_ms, debounce_ms
        self.max_file_size = max_file_size
        self.applier = Applier(self.root)
        self.base: Index | None = None
        self.local_cache: Index = {}
        self.state = "new"
        self.remote_watch = ""
        self.syncs = 0
        self.connects = 0
        #: one line per path that was refused or skipped (too large, unreadable, escaping)
        self.problems: list[str] = []
        self._dirty: set[str] = set()
        self._seen_at: float | None = None
        self._wake = asyncio.Event()
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._busy = False
        self._client: Client | None = None

    # --- lifetime ---------------------------------------------------------------------

    async def start(self) -> None:
        remove_stale_temps(self.root)
        self._tasks = [
            asyncio.create_task(self._watch_local(), name="sync-watch-local"),
            asyncio.create_task(self._supervise(), name="sync-supervisor"),
        ]

    async def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._client is not None:
            await self._client.close()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await asyncio.wait_for(t, 5)
        self.state = "stopped"

    async def __aenter__(self) -> SyncSession:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    @property
    def idle(self) -> bool:
        """Connected, synced, nothing pending."""
        return self.state == "watching" and not self._dirty and not self._busy

    async def wait_synced(self, timeout: float = 60, after: int = 0) -> None:
        """Until a full sync numbered above ``after`` has completed and nothing is pending."""
        deadline = time.monotonic() + timeout
        while not (self.syncs > after and self.idle):
            if time.monotonic() > deadline:
                raise TimeoutError(f"sync session not idle after {timeout}s ({self.state})")
            await asyncio.sleep(0.02)

    # --- the two sources of changes ---------------------------------------------------

    def _mark(self, paths: Iterable[str]) -> None:
        fresh = set(paths)
        if not fresh:
            return
        if self._seen_at is None:
            self._seen_at = time.monotonic()
        self._dirty |= fresh
        self._wake.set()

    def _on_remote_event(self, header: Header) -> None:
        if header.get("op") == "changed":
            self._mark(str(p) for p in header.get("paths", []) if valid_rel(str(p)))

    def _keep(self, _change: watchfiles.Change, path: str) -> bool:
        rel = os.path.relpath(path, self.root)
        return valid_rel(rel) and not self.ignore.excluded(rel, os.path.isdir(path))

    async def _watch_local(self) -> None:
        prefix = self.root + os.sep
        async for changes in watchfiles.awatch(
            self.root,
            watch_filter=self._keep,
            debounce=self.debounce_ms,
            step=self.step_ms,
            stop_event=self._stop,
            rust_timeout=60_000,
        ):
            rels = {p[len(prefix) :] for _, p in changes if p.startswith(prefix)}
            self._mark(r for r in rels if not self.applier.is_echo(r))

    # --- connection -------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            self.state = "connecting"
            link: Link | None = None
            try:
                link = await self.connect()
                self._client = Client(Channel(link.reader, link.writer), self._on_remote_event)
                self._client.start()
                reply = await hello(self._client, self.token, self.ignore.patterns)
                self.connects += 1
                self.remote_watch = str(reply.get("watch", ""))
                await self._full_sync(self._client)
                delay = 0.1
                self.state = "watching"
                await self._follow(self._client)
            except (ChannelError, OSError, TimeoutError) as e:
                if not self._stop.is_set():
                    log.warning("sync channel lost: %s; reconnecting in %.1fs", e, delay)
            finally:
                self._busy = False
                if self._client is not None:
                    await self._client.close()
                if link is not None:
                    await link.close()
            if self._stop.is_set():
                return
            self.state = "disconnected"
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), delay)
            delay = min(delay * 2, 2.0)

    async def _follow(self, client: Client) -> None:
        closed = asyncio.create_task(client.closed.wait())
        try:
            while not self._stop.is_set():
                wake = asyncio.create_task(self._wake.wait())
                await asyncio.wait({wake, closed}, return_when=asyncio.FIRST_COMPLETED)
                wake.cancel()
                if client.closed.is_set():
                    raise ChannelError(client.error or "channel closed")
                self._wake.clear()
                paths, seen_at = self._dirty, self._seen_at
                self._dirty, self._seen_at = set(), None
                if paths:
                    self._busy = True
                    try:
                        await self._sync_paths(client, paths, seen_at or time.monotonic())
                    finally:
                        self._busy = False
        finally:
            closed.cancel()

    # --- syncing ----------------------------------------------------------------------

    async def _remote_index(self, client: Client, paths: list[str] | None) -> Index:
        reply, pages = await client.collect({"op": "index", "paths": paths})
        if reply.get("op") != "index" or reply.get("pages") != len(pages):
            raise ChannelError(f"a broken index reply: {reply}")
        out: Index = {}
        for page in pages:
            entries: dict[str, Any] = json.loads(page)
            out.update((p, Entry.from_wire(w)) for p, w in entries.items() if valid_rel(p))
        return out

    async def _full_sync(self, client: Client) -> None:
        self.state = "syncing"
        self._busy = True
        self._dirty, self._seen_at = set(), None
        started = time.monotonic()
        local = scan(self.root, self.ignore, self.local_cache)
        self.local_cache = local
        remote = await self._remote_index(client, None)
        initial = self.base is None
        done = plan(self.base, local, remote, self.strategy, stamp=stamp())
        failed = await self._run(client, done, local, remote, started, initial)
        self.base = settled(self.base or {}, local, remote, done, failed)
        self.syncs += 1
        self._busy = False

    async def _sync_paths(self, client: Client, paths: set[str], seen_at: float) -> None:
        assert self.base is not None
        if len(paths) > MANY_PATHS:
            # cheaper than naming them all, and no request grows past the frame limit
            await self._full_sync(client)
            self.state = "watching"
            return
        local = scan_paths(self.root, self.ignore, paths, self.local_cache)
        for gone in set(under(self.local_cache, paths)) - set(local):
            del self.local_cache[gone]
        self.local_cache.update(local)
        remote = await self._remote_index(client, sorted(paths))
        base = under(self.base, paths)
        done = plan(base, local, remote, stamp=stamp())
        if done.empty:
            self.base.update(settled(base, local, remote, done))
            return
        failed = await self._run(client, done, local, remote, seen_at, False)
        for p in base:
            self.base.pop(p, None)
        self.base.update(settled(base, local, remote, done, failed))

    async def _run(
        self,
        client: Client,
        done: Plan,
        local: Index,
        remote: Index,
        started: float,
        initial: bool,
    ) -> set[str]:
        """Carry out a plan on both sides; returns the paths that did not make it."""
        failed: set[str] = set()
        source_local = dict(local)
        source_remote = dict(remote)
        pre: list[list[Any]] = []
        for c in done.conflicts:
            if c.renamed_on == "remote":
                pre.append(["move", c.path, c.kept_as])
                source_remote[c.kept_as] = remote[c.path]
            else:
                self._local(failed, c.path, partial(self.applier.move, c.path, c.kept_as))
                source_local[c.kept_as] = local[c.path]
        pre += [["mkdir", p, local[p].mode] for p in done.mkdirs_remote]
        pre += [["move", s, d] for s, d in done.moves_remote]
        for p in done.mkdirs_local:
            self._local(failed, p, partial(self.applier.mkdir, p, remote[p].mode))
        for s, d in done.moves_local:
            self._local(failed, d, partial(self.applier.move, s, d))
        pending: list[tuple[list[str], Awaitable[Header], _Download | None]] = []
        if pre:
            for ops in _pieces(pre):
                pending.append(([str(o[1]) for o in ops], await client.request(_batch(ops)), None))
        sent = 0
        for p in done.uploads:
            e = source_local[p]
            if e.size > self.max_file_size:
                self._problem(failed, p, f"skipped: {e.size} bytes is over the limit")
                continue
            try:
                header = {"path": p, "mode": e.mode, "mtime_ns": e.mtime_ns}
                fut = await client.put_file(header, os.path.join(self.root, p))
            except OSError as err:
                self._problem(failed, p, f"skipped: unreadable ({err.strerror})")
                continue
            sent += e.size
            pending.append(([p], fut, None))
        if done.uploads:
            pending.append((["*commit*"], await client.request({"op": "commit"}), None))
        received = 0
        for p in done.downloads:
            e = source_remote[p]
            try:
                dl = _Download(self.applier, self.applier.begin(p, e.mode, e.mtime_ns))
            except (OSError, Escape) as err:
                self._problem(failed, p, f"refused: {err}")
                continue
            pending.append(([p], await client.get_file({"path": p}, dl), dl))
            received += e.size
        post: list[list[Any]] = [["symlink", p, t] for p, t in done.links_remote]
        post += [["chmod", p, m] for p, m in done.chmods_remote]
        post += [["delete", p] for p in done.deletes_remote]
        if post:
            for ops in _pieces(post):
                pending.append(([str(o[1]) for o in ops], await client.request(_batch(ops)), None))
        for paths, fut, sink in pending:
            reply = await fut
            if sink is not None:
                if reply.get("ok") and sink.error is None:
                    try:
                        self.applier.finish(sink.inc)
                    except OSError as err:
                        self._problem(failed, paths[0], f"not written: {err}")
                else:
                    self.applier.abort(sink.inc)
                    self._problem(failed, paths[0], str(reply.get("error") or sink.error))
            elif reply.get("op") == "commit":
                for p, why in reply.get("errors", []):
                    self._problem(failed, str(p), f"not put in place by the remote: {why}")
            elif reply.get("op") == "batch":
                for p, why in zip(paths, reply.get("errors", []), strict=False):
                    if why:
                        self._problem(failed, p, f"refused by the remote: {why}")
            elif not reply.get("ok"):
                self._problem(failed, paths[0], f"refused by the remote: {reply.get('error')}")
        placed, errors = self.applier.commit()
        self.local_cache.update(placed)
        for p, why in errors:
            self._problem(failed, p, f"not put in place: {why}")
        for p, t in done.links_local:
            self._local(failed, p, partial(self.applier.symlink, p, t))
        for p, m in done.chmods_local:
            self._local(failed, p, partial(self.applier.chmod, p, m))
        for p in done.deletes_local:
            self._local(failed, p, partial(self.applier.delete, p))
        ms = (time.monotonic() - started) * 1000
        self._report(done, failed, sent, received, ms, initial)
        return failed

    def _report(
        self, done: Plan, failed: set[str], sent: int, received: int, ms: float, initial: bool
    ) -> None:
        up = [
            *done.uploads,
            *done.mkdirs_remote,
            *(d for _, d in done.moves_remote),
            *(p for p, _ in done.links_remote),
            *(p for p, _ in done.chmods_remote),
            *done.deletes_remote,
        ]
        down = [
            *done.downloads,
            *done.mkdirs_local,
            *(d for _, d in done.moves_local),
            *(p for p, _ in done.links_local),
            *(p for p, _ in done.chmods_local),
            *done.deletes_local,
        ]
        for direction, paths, size in (("up", up, sent), ("down", down, received)):
            landed = tuple(p for p in paths if p not in failed)
            if landed and self.on_batch is not None:
                batch = Batch(direction, len(landed), size, ms, landed, initial)  # type: ignore[arg-type]
                self.on_batch(batch)

    def _local(self, failed: set[str], path: str, op: Callable[[], None]) -> None:
        try:
            op()
        except (OSError, Escape) as err:
            self._problem(failed, path, f"refused here: {err}")

    def _problem(self, failed: set[str], path: str, message: str) -> None:
        failed.add(path)
        line = f"{path}: {message}"
        self.problems.append(line)
        log.warning("sync: %s", line)


def _batch(ops: list[list[Any]]) -> Header:
    return {"op": "batch", "ops": ops}


def _pieces(ops: list[list[Any]], size: int = BATCH_OPS) -> list[list[list[Any]]]:
    """Operations in frames of ``size``, so that a rename of 100,000 files fits the limit."""
    return [ops[i : i + size] for i in range(0, len(ops), size)]


def new_token() -> str:
    return secrets.token_urlsafe(24)
