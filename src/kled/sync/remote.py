"""The remote end of a sync session: ``python3 -m kled.sync.remote ROOT``.

It speaks the channel on its stdin/stdout (stderr is for its own log lines) and serves
one session: a ``hello`` carrying the token it was given in ``KLED_SYNC_TOKEN`` first, then
``index`` (entries of the whole tree or of some paths), ``put`` (a file written under a
temporary name) and ``commit`` (the files put so far made durable and renamed into place,
each atomically), ``get`` (a file streamed back), and ``batch`` (mkdir,
move, symlink, chmod, delete — each refused if it leaves ROOT). Its own changes are sent
back unasked as ``changed`` events: from ``watchfiles`` when the image has it, otherwise
from inotify through ctypes (``inotify.py``), and where neither works from a stat walk
every 100 ms; the hello reply says which (``watch``). The changes it made itself are not
reported. Standard library only, so it runs in any image
with ``python3`` and this package on its path.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import os
import sys
from collections.abc import AsyncIterator
from typing import Any

from kled.sync.apply import Applier, Incoming, Sig, signature
from kled.sync.channel import CHUNK, VERSION, Channel, ChannelError, Header
from kled.sync.ignore import Ignore
from kled.sync.index import Escape, Index, entry_at, remove_stale_temps, resolve, scan_paths
from kled.sync.index import scan as scan_tree
from kled.sync.inotify import Inotify

POLL_SECONDS = 0.1
#: index entries per frame (~110 bytes each before compression)
INDEX_PAGE = 5000


def _log(message: str) -> None:
    print(f"kled-sync-remote: {message}", file=sys.stderr, flush=True)


def _wire(index: Index) -> dict[str, list[Any]]:
    return {p: e.to_wire() for p, e in index.items()}


class Remote:
    def __init__(self, root: str, token: str, channel: Channel) -> None:
        self.root = os.path.realpath(root)
        self.token = token
        self.channel = channel
        self.ignore = Ignore()
        self.applier = Applier(self.root)
        self.cache: Index = {}
        self.incoming: dict[int, Incoming | str] = {}
        self.watch_mode = "poll"
        self._inotify_watch = Inotify(self.root, self.ignore)

    async def serve(self) -> None:
        rid, header, _ = await self.channel.recv()
        if header.get("op") != "hello" or not hmac.compare_digest(
            str(header.get("token", "")).encode(), self.token.encode()
        ):
            await self.channel.send(rid, {"op": "hello", "ok": False, "error": "bad token"})
            return
        if header.get("version") != VERSION:
            err = f"protocol version {header.get('version')} (this remote speaks {VERSION})"
            await self.channel.send(rid, {"op": "hello", "ok": False, "error": err})
            return
        self.ignore = Ignore([str(p) for p in header.get("exclude", [])])
        os.makedirs(self.root, exist_ok=True)
        remove_stale_temps(self.root)
        self.watch_mode = self._choose_watch()
        await self.channel.send(rid, {"op": "hello", "ok": True, "watch": self.watch_mode})
        watcher = asyncio.create_task(self._watch())
        try:
            while True:
                rid, header, data = await self.channel.recv()
                await self._handle(rid, header, data)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _handle(self, rid: int, header: Header, data: bytes) -> None:
        op = header.get("op")
        if op == "index":
            paths = header.get("paths")
            if paths is None:
                self.cache = scan_tree(self.root, self.ignore, self.cache)
                found = self.cache
            else:
                found = scan_paths(self.root, self.ignore, [str(p) for p in paths], self.cache)
                self.cache.update(found)
            # pages as ``data`` frames, so that no tree is too big for one frame
            items = list(found.items())
            pages = range(0, len(items), INDEX_PAGE)
            for start in pages:
                page = _wire(dict(items[start : start + INDEX_PAGE]))
                await self.channel.send(rid, {"op": "data"}, json.dumps(page).encode())
            await self.channel.send(rid, {"op": "index", "pages": len(pages)})
        elif op == "put":
            try:
                mode, mtime = int(header.get("mode", 0o644)), int(header.get("mtime_ns", 0))
                self.incoming[rid] = self.applier.begin(str(header["path"]), mode, mtime)
            except (OSError, Escape, KeyError, ValueError) as e:
                self.incoming[rid] = f"put {header.get('path')}: {e}"
            await self._handle(rid, {"op": "data"}, data)
            if header.get("last"):
                await self._finish_put(rid)
        elif op == "data":
            inc = self.incoming.get(rid)
            if isinstance(inc, Incoming):
                try:
                    self.applier.write(inc, data)
                except OSError as e:
                    self.applier.abort(inc)
                    self.incoming[rid] = f"put {inc.rel}: {e}"
        elif op == "end":
            await self._finish_put(rid)
        elif op == "get":
            await self._send_file(rid, str(header.get("path", "")))
        elif op == "commit":
            done, errors = self.applier.commit()
            self.cache.update(done)
            await self.channel.send(rid, {"op": "commit", "errors": errors})
        elif op == "batch":
            results = [self.applier.run(list(o)) for o in header.get("ops", [])]
            await self.channel.send(rid, {"op": "batch", "errors": results})
        else:
            await self.channel.send(rid, {"op": "error", "error": f"unknown op {op!r}"})

    async def _finish_put(self, rid: int) -> None:
        inc = self.incoming.pop(rid, None)
        if not isinstance(inc, Incoming):
            await self.channel.send(rid, {"op": "end", "ok": False, "error": inc or "no put"})
            return
        try:
            entry = self.applier.finish(inc)
        except OSError as e:
            self.applier.abort(inc)
            await self.channel.send(rid, {"op": "end", "ok": False, "error": f"{inc.rel}: {e}"})
            return
        await self.channel.send(rid, {"op": "end", "ok": True, "entry": entry.to_wire()})

    async def _send_file(self, rid: int, rel: str) -> None:
        try:
            full = resolve(self.root, rel)
            entry = entry_at(full)
            if entry is None or entry.kind != "file":
                raise FileNotFoundError("not a file")
            with open(full, "rb") as f:
                while chunk := f.read(CHUNK):
                    await self.channel.send(rid, {"op": "data"}, chunk)
        except (OSError, Escape) as e:
            await self.channel.send(rid, {"op": "end", "ok": False, "error": f"{rel}: {e}"})
            return
        await self.channel.send(rid, {"op": "end", "ok": True, "entry": entry.to_wire()})

    def _report(self, rels: set[str]) -> list[str]:
        out = []
        for rel in rels:
            if not rel or self.ignore.excluded(rel, os.path.isdir(os.path.join(self.root, rel))):
                continue
            if self.applier.is_echo(rel):
                continue
            out.append(rel)
        return sorted(out)

    def _choose_watch(self) -> str:
        """``watchfiles`` if the image has it, else inotify through ctypes, else polling.

        ``KLED_SYNC_WATCH`` (watchfiles, inotify, poll) forces one, for tests."""
        wanted = os.environ.get("KLED_SYNC_WATCH", "")
        if wanted in ("", "watchfiles"):
            try:
                import watchfiles  # noqa: F401

                return "watchfiles"
            except ImportError:
                pass
        if wanted in ("", "watchfiles", "inotify"):
            self._inotify_watch = Inotify(self.root, self.ignore)
            try:
                self._inotify_watch.open()
                return "inotify"
            except (OSError, AttributeError) as e:
                self._inotify_watch.close()
                _log(f"no inotify here ({e})")
        _log(f"polling {self.root} every {POLL_SECONDS * 1000:.0f} ms")
        return "poll"

    async def _watch(self) -> None:
        source: AsyncIterator[set[str]]
        if self.watch_mode == "watchfiles":
            source = self._watchfiles()
        elif self.watch_mode == "inotify":
            source = self._inotify_watch.batches()
        else:
            source = self._poll()
        async for rels in source:
            paths = self._report(rels)
            if paths:
                await self.channel.send(0, {"op": "changed", "paths": paths})

    async def _watchfiles(self) -> AsyncIterator[set[str]]:
        import watchfiles

        prefix = self.root + os.sep
        async for changes in watchfiles.awatch(
            self.root, watch_filter=None, debounce=400, step=10, rust_timeout=60_000
        ):
            yield {p[len(prefix) :] for _, p in changes if p.startswith(prefix)}

    def _snapshot(self) -> dict[str, Sig]:
        out: dict[str, Sig] = {}
        for dirpath, dirs, files in os.walk(self.root):
            rel_dir = os.path.relpath(dirpath, self.root)
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            keep = []
            for d in dirs:
                rel = rel_dir + d
                if not self.ignore.matches(rel, True):
                    keep.append(d)
                    out[rel] = signature(os.path.join(dirpath, d))
            dirs[:] = keep
            for name in files:
                rel = rel_dir + name
                if not self.ignore.matches(rel, False):
                    out[rel] = signature(os.path.join(dirpath, name))
        return out

    async def _poll(self) -> AsyncIterator[set[str]]:
        before = self._snapshot()
        while True:
            await asyncio.sleep(POLL_SECONDS)
            now = self._snapshot()
            changed = {p for p in before.keys() | now.keys() if before.get(p) != now.get(p)}
            before = now
            if changed:
                yield changed


async def _stdio() -> Channel:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=2**24)
    await loop.connect_read_pipe(
        lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(0, "rb", buffering=0)
    )
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(1, "wb", buffering=0)
    )
    writer = asyncio.StreamWriter(transport, protocol, reader, loop)
    return Channel(reader, writer)


async def main(root: str) -> int:
    token = os.environ.get("KLED_SYNC_TOKEN", "")
    if not token:
        _log("KLED_SYNC_TOKEN is not set; refusing to serve")
        return 2
    channel = await _stdio()
    with contextlib.suppress(ChannelError):
        await Remote(root, token, channel).serve()
    return 0


if __name__ == "__main__":
    if len(sys.argv) != 2:
        print("usage: python3 -m kled.sync.remote ROOT", file=sys.stderr)
        sys.exit(2)
    sys.exit(asyncio.run(main(sys.argv[1])))
