"""Recursive inotify through ``ctypes``, for a remote whose image has no ``watchfiles``.

Linux only, standard library only. One watch per directory (excluded ones are never
watched); a directory that appears is watched at once and everything already inside it is
reported, since files created before the watch was added raise no event. Events are
gathered until ``step`` seconds pass without one (at most ``debounce`` after the first),
then yielded as a set of relative paths. A queue overflow reports the root's entries, which
makes the session re-read the whole tree. ``Inotify.open`` raises OSError where inotify is
missing or out of watches; the remote then polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import struct
from collections.abc import AsyncIterator

from kled.sync.ignore import Ignore

IN_MODIFY = 0x2
IN_ATTRIB = 0x4
IN_CLOSE_WRITE = 0x8
IN_MOVED_FROM = 0x40
IN_MOVED_TO = 0x80
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ONLYDIR = 0x1000000
IN_DONT_FOLLOW = 0x2000000
IN_ISDIR = 0x40000000
MASK = (
    IN_MODIFY
    | IN_ATTRIB
    | IN_CLOSE_WRITE
    | IN_MOVED_FROM
    | IN_MOVED_TO
    | IN_CREATE
    | IN_DELETE
    | IN_DELETE_SELF
    | IN_MOVE_SELF
)
_EVENT = struct.Struct("iIII")


class Inotify:
    def __init__(self, root: str, ignore: Ignore) -> None:
        self.root, self.ignore = root, ignore
        self.fd = -1
        self.dirs: dict[int, str] = {}
        self._libc = ctypes.CDLL(None, use_errno=True)

    def open(self) -> None:
        self.fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1 failed")
        self._add_tree("")

    def close(self) -> None:
        if self.fd >= 0:
            with contextlib.suppress(OSError):
                os.close(self.fd)
            self.fd = -1

    def _add(self, rel: str) -> bool:
        full = os.path.join(self.root, rel) if rel else self.root
        wd = self._libc.inotify_add_watch(
            self.fd, os.fsencode(full), MASK | IN_ONLYDIR | IN_DONT_FOLLOW
        )
        if wd < 0:
            errno = ctypes.get_errno()
            if errno in (28, 24):  # ENOSPC, EMFILE: out of watches
                raise OSError(errno, f"inotify_add_watch {full}: {os.strerror(errno)}")
            return False
        self.dirs[wd] = rel
        return True

    def _add_tree(self, rel: str) -> set[str]:
        """Watch ``rel`` and the directories below it; returns every path found inside."""
        found: set[str] = set()
        if not self._add(rel):
            return found
        stack = [rel]
        while stack:
            here = stack.pop()
            full = os.path.join(self.root, here) if here else self.root
            try:
                entries = list(os.scandir(full))
            except OSError:
                continue
            for de in entries:
                child = f"{here}/{de.name}" if here else de.name
                is_dir = de.is_dir(follow_symlinks=False)
                if self.ignore.matches(child, is_dir):
                    continue
                found.add(child)
                if is_dir and self._add(child):
                    stack.append(child)
        return found

    def _parse(self, data: bytes) -> set[str]:
        out: set[str] = set()
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            offset += _EVENT.size
            name = (
                data[offset : offset + length].split(b"\0", 1)[0].decode(errors="surrogateescape")
            )
            offset += length
            if mask & IN_Q_OVERFLOW:
                with contextlib.suppress(OSError):
                    out |= set(os.listdir(self.root))
                continue
            if mask & IN_IGNORED:
                self.dirs.pop(wd, None)
                continue
            base = self.dirs.get(wd)
            if base is None or not name:
                continue
            rel = f"{base}/{name}" if base else name
            if self.ignore.excluded(rel, bool(mask & IN_ISDIR)):
                continue
            out.add(rel)
            if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                out |= self._add_tree(rel)
        return out

    async def batches(self, step: float = 0.01, debounce: float = 0.3) -> AsyncIterator[set[str]]:
        loop = asyncio.get_running_loop()
        ready = asyncio.Event()
        loop.add_reader(self.fd, ready.set)
        try:
            while True:
                await ready.wait()
                pending: set[str] = set()
                first = loop.time()
                while True:
                    ready.clear()
                    try:
                        while True:
                            pending |= self._parse(os.read(self.fd, 65536))
                    except BlockingIOError:
                        pass
                    left = min(step, first + debounce - loop.time())
                    if left <= 0:
                        break
                    try:
                        await asyncio.wait_for(ready.wait(), left)
                    except TimeoutError:
                        break
                if pending:
                    yield pending
        finally:
            loop.remove_reader(self.fd)
            self.close()
