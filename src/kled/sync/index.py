"""What a synced tree holds: path → kind, size, mtime, mode and content hash.

An ``Index`` maps a ``/``-separated path relative to the root to an ``Entry``. Content is
compared by hash, never by mtime: two files with the same bytes are the same file whatever
their mtimes say (DevSpace re-uploads those, devspace #1177). Hashes are costly, so a scan
is given the previous index and reuses an entry's hash when size and mtime are unchanged.
Standard library only: the remote side scans with the same code.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from kled.sync.ignore import INTERNAL_PREFIX, Ignore

Kind = Literal["file", "dir", "symlink"]


@dataclass(frozen=True)
class Entry:
    kind: Kind
    size: int = 0
    mtime_ns: int = 0
    mode: int = 0
    #: sha256 of a file's bytes; a symlink's target for a symlink; "" for a directory
    digest: str = ""

    def same_content(self, other: Entry | None) -> bool:
        if other is None or other.kind != self.kind:
            return False
        if self.kind == "file":
            return self.size == other.size and self.digest == other.digest
        return self.digest == other.digest

    def to_wire(self) -> list[Any]:
        return [self.kind, self.size, self.mtime_ns, self.mode, self.digest]

    @classmethod
    def from_wire(cls, raw: list[Any]) -> Entry:
        kind, size, mtime_ns, mode, digest = raw
        if kind not in ("file", "dir", "symlink"):
            raise ValueError(f"unknown entry kind {kind!r}")
        return cls(kind, int(size), int(mtime_ns), int(mode), str(digest))


Index = dict[str, Entry]


def same(a: Entry | None, b: Entry | None) -> bool:
    """Same content (both absent counts as the same); modes are compared separately."""
    if a is None or b is None:
        return a is None and b is None
    return a.same_content(b)


def hash_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def entry_at(full: str, previous: Entry | None = None) -> Entry | None:
    """The entry for one path on disk (not following a final symlink), or None if absent."""
    try:
        st = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        return None
    mode = stat.S_IMODE(st.st_mode)
    if stat.S_ISLNK(st.st_mode):
        return Entry("symlink", 0, st.st_mtime_ns, 0, os.readlink(full))
    if stat.S_ISDIR(st.st_mode):
        return Entry("dir", 0, 0, mode)
    if not stat.S_ISREG(st.st_mode):
        return None
    if (
        previous is not None
        and previous.kind == "file"
        and previous.size == st.st_size
        and previous.mtime_ns == st.st_mtime_ns
    ):
        return replace(previous, mode=mode)
    try:
        digest = hash_file(full)
    except FileNotFoundError:
        return None
    return Entry("file", st.st_size, st.st_mtime_ns, mode, digest)


def scan(
    root: str,
    ignore: Ignore,
    previous: Mapping[str, Entry] | None = None,
    under: str = "",
) -> Index:
    """Every path under ``root`` (or under its subpath ``under``) that is not excluded."""
    prev = previous or {}
    out: Index = {}
    stack = [under]
    while stack:
        rel_dir = stack.pop()
        full_dir = os.path.join(root, rel_dir) if rel_dir else root
        try:
            it = os.scandir(full_dir)
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        with it:
            for de in it:
                rel = f"{rel_dir}/{de.name}" if rel_dir else de.name
                try:
                    is_dir = de.is_dir(follow_symlinks=False)
                except OSError:
                    continue
                if ignore.matches(rel, is_dir):
                    continue
                try:
                    entry = entry_at(de.path, prev.get(rel))
                except PermissionError:
                    continue
                if entry is None:
                    continue
                out[rel] = entry
                if entry.kind == "dir":
                    stack.append(rel)
    return out


def scan_paths(
    root: str, ignore: Ignore, paths: Iterable[str], previous: Mapping[str, Entry]
) -> Index:
    """The current entries of ``paths`` and, for directories, everything under them."""
    out: Index = {}
    for rel in sorted(set(paths)):
        if rel in out or not valid_rel(rel) or ignore.excluded(rel):
            continue
        entry = entry_at(os.path.join(root, rel), previous.get(rel))
        if entry is None:
            continue
        if entry.kind == "dir" and ignore.excluded(rel, True):
            continue
        out[rel] = entry
        if entry.kind == "dir":
            out.update(scan(root, ignore, previous, under=rel))
    return out


def under(index: Mapping[str, Entry], paths: Iterable[str]) -> Index:
    """The entries of ``index`` at ``paths`` or below them."""
    wanted = set(paths)
    out: Index = {}
    for rel, entry in index.items():
        if rel in wanted or any(p in wanted for p in _parents(rel)):
            out[rel] = entry
    return out


def _parents(rel: str) -> Iterable[str]:
    parts = rel.split("/")
    for k in range(1, len(parts)):
        yield "/".join(parts[:k])


def valid_rel(rel: str) -> bool:
    """A relative path with no empty, ``.`` or ``..`` part and no engine-internal name."""
    if not rel or rel.startswith("/") or "\\" in rel or "\0" in rel:
        return False
    parts = rel.split("/")
    return all(p not in ("", ".", "..") and not p.startswith(INTERNAL_PREFIX) for p in parts)


class Escape(ValueError):
    """A path or symlink that would leave the synced root."""


def resolve(root: str, rel: str) -> str:
    """``root/rel`` after checking that neither ``rel`` nor a symlinked parent leaves root."""
    if not valid_rel(rel):
        raise Escape(f"{rel!r}: not a plain relative path")
    full = os.path.join(root, rel)
    parent = os.path.realpath(os.path.dirname(full))
    real_root = os.path.realpath(root)
    if parent != real_root and not parent.startswith(real_root + os.sep):
        raise Escape(f"{rel!r}: a parent is a symlink out of the root")
    return full


def link_escapes(root: str, rel: str, target: str) -> bool:
    """A symlink at ``rel`` pointing at ``target`` would point outside ``root``."""
    real_root = os.path.realpath(root)
    if os.path.isabs(target):
        dest = os.path.normpath(target)
    else:
        dest = os.path.normpath(os.path.join(real_root, os.path.dirname(rel), target))
    return dest != real_root and not dest.startswith(real_root + os.sep)


def remove_stale_temps(root: str) -> int:
    """Temporary files left by a writer that died mid-file; returns how many went."""
    gone = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            if name.startswith(INTERNAL_PREFIX):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(dirpath, name))
                    gone += 1
    return gone
