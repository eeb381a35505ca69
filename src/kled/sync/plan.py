"""The sync planner: three indexes in, the operations that make two trees one out. Pure.

``plan(base, local, remote)`` compares each path's entry on both sides with ``base``, what
both sides held after the last sync:

* unchanged on one side, changed on the other → the change goes across (a delete too);
* changed on both, to the same content → nothing;
* one side deleted it, the other changed it → the change wins: deletes are propagated only
  for paths unchanged on the other side, so nothing edited is ever deleted;
* changed on both to different content → a **conflict**: the local one wins and the remote
  copy is kept as ``NAME.conflict-<time>`` on both sides. When the remote holds a directory
  and the local a file, the directory stays and the local file is the one kept aside.

With no base (the first sync of a session) a ``Strategy`` decides instead. Content is
compared by hash, so nothing is re-sent when only mtimes differ. A file that disappears from
one place and appears with the same hash in another — a renamed directory of 10,000 files —
is planned as a move on the other side, not as 10,000 uploads. A directory is deleted only if
nothing under it survives on that side; otherwise it is created on the other side instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal

from kled.sync.index import Entry, same

Side = Literal["local", "remote"]


class Strategy(StrEnum):
    """How the first sync of a session merges two trees (DevSpace's names)."""

    #: the remote becomes a copy of the local tree: missing and differing files are
    #: uploaded, remote-only ones deleted
    MIRROR_LOCAL = "mirrorLocal"
    #: the local tree becomes a copy of the remote one
    MIRROR_REMOTE = "mirrorRemote"
    #: union of both; where both hold a path with different content, the local one wins
    PREFER_LOCAL = "preferLocal"
    #: union of both; the remote one wins
    PREFER_REMOTE = "preferRemote"
    #: union of both; the one with the newer mtime wins (the local one on a tie)
    PREFER_NEWEST = "preferNewest"
    #: union of both; a difference is a conflict (the local one wins, the remote one is
    #: kept as ``NAME.conflict-<time>``): nothing on either side is lost
    KEEP_ALL = "keepAll"


@dataclass(frozen=True)
class Conflict:
    path: str
    #: where the losing copy is kept, on both sides after the plan runs
    kept_as: str
    #: the side whose copy is renamed to ``kept_as`` (then sent to the other side)
    renamed_on: Side = "remote"


@dataclass(frozen=True)
class Plan:
    """Operations per side. Each side runs them in this order: conflict renames, mkdirs,
    moves, writes (files, symlinks), mode changes, deletes (deepest first)."""

    conflicts: tuple[Conflict, ...] = ()
    mkdirs_remote: tuple[str, ...] = ()
    moves_remote: tuple[tuple[str, str], ...] = ()
    uploads: tuple[str, ...] = ()
    links_remote: tuple[tuple[str, str], ...] = ()
    chmods_remote: tuple[tuple[str, int], ...] = ()
    deletes_remote: tuple[str, ...] = ()
    mkdirs_local: tuple[str, ...] = ()
    moves_local: tuple[tuple[str, str], ...] = ()
    downloads: tuple[str, ...] = ()
    links_local: tuple[tuple[str, str], ...] = ()
    chmods_local: tuple[tuple[str, int], ...] = ()
    deletes_local: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return self == Plan()

    def paths(self) -> set[str]:
        """Every path the plan touches, on either side."""
        out: set[str] = set()
        for c in self.conflicts:
            out |= {c.path, c.kept_as}
        for pair in (*self.moves_remote, *self.moves_local):
            out |= set(pair)
        for pl in (*self.links_remote, *self.links_local):
            out.add(pl[0])
        for pm in (*self.chmods_remote, *self.chmods_local):
            out.add(pm[0])
        for seq in (
            self.mkdirs_remote,
            self.uploads,
            self.deletes_remote,
            self.mkdirs_local,
            self.downloads,
            self.deletes_local,
        ):
            out |= set(seq)
        return out


@dataclass
class _Side:
    """What is to be done to one side, while the plan is being built."""

    mkdirs: list[str] = field(default_factory=list)
    writes: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)
    chmods: list[tuple[str, int]] = field(default_factory=list)
    deletes: list[str] = field(default_factory=list)
    moves: list[tuple[str, str]] = field(default_factory=list)

    def make(self, path: str, entry: Entry | None) -> None:
        """Make ``path`` on this side what ``entry`` is (or absent)."""
        if entry is None:
            self.deletes.append(path)
        elif entry.kind == "dir":
            self.mkdirs.append(path)
        elif entry.kind == "symlink":
            self.links.append((path, entry.digest))
        else:
            self.writes.append(path)


Action = Literal["push", "pull", "conflict", "none"]


def _initial(le: Entry | None, re_: Entry | None, strategy: Strategy) -> Action:
    if le is None:
        return "push" if strategy is Strategy.MIRROR_LOCAL else "pull"
    if re_ is None:
        return "pull" if strategy is Strategy.MIRROR_REMOTE else "push"
    if strategy in (Strategy.MIRROR_LOCAL, Strategy.PREFER_LOCAL):
        return "push"
    if strategy in (Strategy.MIRROR_REMOTE, Strategy.PREFER_REMOTE):
        return "pull"
    if strategy is Strategy.PREFER_NEWEST:
        return "push" if le.mtime_ns >= re_.mtime_ns else "pull"
    if le.kind == "dir" and re_.kind == "dir":
        return "none"
    return "conflict"


def _three_way(b: Entry | None, le: Entry | None, re_: Entry | None) -> Action:
    if not same(re_, b):
        if same(le, b) or le is None:
            return "pull"
        if re_ is None:
            return "push"
        return "conflict"
    return "push"


def _mode_action(
    b: Entry | None, le: Entry, re_: Entry, strategy: Strategy, initial: bool
) -> Action:
    if initial:
        if strategy in (Strategy.MIRROR_REMOTE, Strategy.PREFER_REMOTE):
            return "pull"
        if strategy is Strategy.PREFER_NEWEST and re_.mtime_ns > le.mtime_ns:
            return "pull"
        return "push"
    if b is not None and le.mode == b.mode and re_.mode != b.mode:
        return "pull"
    return "push"


def conflict_name(path: str, stamp: str) -> str:
    return f"{path}.conflict-{stamp}"


def plan(
    base: Mapping[str, Entry] | None,
    local: Mapping[str, Entry],
    remote: Mapping[str, Entry],
    strategy: Strategy = Strategy.MIRROR_LOCAL,
    *,
    stamp: str = "0",
) -> Plan:
    """The operations that make ``local`` and ``remote`` one tree.

    ``base`` is what both held after the last sync, None before the first (then
    ``strategy`` decides). ``stamp`` is the time that conflict copies are named with.
    """
    initial = base is None
    b_idx: Mapping[str, Entry] = base or {}
    up, down = _Side(), _Side()
    conflicts: list[Conflict] = []
    for path in sorted(set(local) | set(remote) | set(b_idx)):
        le, re_, b = local.get(path), remote.get(path), b_idx.get(path)
        if same(le, re_):
            if le is not None and re_ is not None and le.kind != "symlink":
                if le.mode != re_.mode:
                    if _mode_action(b, le, re_, strategy, initial) == "pull":
                        down.chmods.append((path, re_.mode))
                    else:
                        up.chmods.append((path, le.mode))
            continue
        action = _initial(le, re_, strategy) if initial else _three_way(b, le, re_)
        if action == "conflict" and le is not None and re_ is not None:
            if le.kind == "dir" and re_.kind == "dir":
                continue
            kept = conflict_name(path, stamp)
            if re_.kind == "dir":
                # the directory stays; the local file is the copy kept aside
                conflicts.append(Conflict(path, kept, "local"))
                up.make(kept, le)
                down.make(path, re_)
            else:
                conflicts.append(Conflict(path, kept, "remote"))
                down.make(kept, re_)
                up.make(path, le)
        elif action == "push":
            up.make(path, le)
        elif action == "pull":
            down.make(path, re_)
    _keep_needed_dirs(up, down, local, remote)
    _keep_needed_dirs(down, up, remote, local)
    _find_moves(up, local, remote)
    _find_moves(down, remote, local)
    return Plan(
        conflicts=tuple(conflicts),
        mkdirs_remote=tuple(sorted(up.mkdirs)),
        moves_remote=tuple(sorted(up.moves)),
        uploads=tuple(sorted(up.writes)),
        links_remote=tuple(sorted(up.links)),
        chmods_remote=tuple(sorted(up.chmods)),
        deletes_remote=tuple(sorted(up.deletes, key=_deepest_first)),
        mkdirs_local=tuple(sorted(down.mkdirs)),
        moves_local=tuple(sorted(down.moves)),
        downloads=tuple(sorted(down.writes)),
        links_local=tuple(sorted(down.links)),
        chmods_local=tuple(sorted(down.chmods)),
        deletes_local=tuple(sorted(down.deletes, key=_deepest_first)),
    )


def _deepest_first(path: str) -> tuple[int, str]:
    return (-path.count("/"), path)


def _keep_needed_dirs(
    side: _Side, other: _Side, source: Mapping[str, Entry], target: Mapping[str, Entry]
) -> None:
    """Drop the deletes of directories on ``side`` that something under them still needs.

    ``side`` makes its tree like ``source``; a directory it would delete stays if a path
    under it remains on that side (kept, or written there), and is then created on the
    ``source`` side instead, which gave it up while the other side changed what is inside.
    """
    deleted = set(side.deletes)
    dirs = [p for p in side.deletes if (e := target.get(p)) is not None and e.kind == "dir"]
    if not dirs:
        return
    arriving = {*side.writes, *side.mkdirs, *(p for p, _ in side.links)}
    survivors = {p for p in target if p not in deleted} | arriving
    for d in dirs:
        prefix = d + "/"
        if any(p.startswith(prefix) for p in survivors):
            side.deletes.remove(d)
            if d not in source:
                other.mkdirs.append(d)


def _find_moves(side: _Side, source: Mapping[str, Entry], target: Mapping[str, Entry]) -> None:
    """Writes whose bytes ``side`` already holds at a path it is deleting become moves."""
    if not side.writes or not side.deletes:
        return
    gone: dict[tuple[int, str], list[str]] = {}
    for p in side.deletes:
        e = target.get(p)
        if e is not None and e.kind == "file":
            gone.setdefault((e.size, e.digest), []).append(p)
    if not gone:
        return
    writes: list[str] = []
    moved: set[str] = set()
    for p in side.writes:
        e = source[p]
        candidates = gone.get((e.size, e.digest))
        if candidates:
            src = candidates.pop()
            side.moves.append((src, p))
            moved.add(src)
            if target[src].mode != e.mode:
                side.chmods.append((p, e.mode))
        else:
            writes.append(p)
    side.writes = writes
    side.deletes = [p for p in side.deletes if p not in moved]


def settled(
    base: Mapping[str, Entry],
    local: Mapping[str, Entry],
    remote: Mapping[str, Entry],
    done: Plan,
    failed: set[str] = frozenset(),  # type: ignore[assignment]
) -> dict[str, Entry]:
    """The new base for the paths of ``local``/``remote``/``base`` once ``done`` has run.

    A path the plan made like the local side now holds the local entry, one made like the
    remote side the remote entry; a path whose operation ``failed`` keeps its old base
    entry, so that the next sync still sees it as changed.
    """
    pushed = {*done.uploads, *done.mkdirs_remote, *done.deletes_remote}
    pushed |= {p for p, _ in done.links_remote} | {p for p, _ in done.chmods_remote}
    pulled = {*done.downloads, *done.mkdirs_local, *done.deletes_local}
    pulled |= {p for p, _ in done.links_local} | {p for p, _ in done.chmods_local}
    for src, dst in done.moves_remote:
        pushed |= {src, dst}
    for src, dst in done.moves_local:
        pulled |= {src, dst}
    kept: dict[str, Entry | None] = {}
    for c in done.conflicts:
        if c.renamed_on == "remote":
            kept[c.kept_as] = remote.get(c.path)
            pushed.add(c.path)
        else:
            kept[c.kept_as] = local.get(c.path)
            pulled.add(c.path)
    out = dict(base)
    for p in set(local) | set(remote) | set(base) | set(kept):
        if p in failed:
            continue
        le, re_ = local.get(p), remote.get(p)
        if p in kept:
            final = kept[p]
        elif p in pushed:
            final = le
        elif p in pulled:
            final = re_
        elif same(le, re_):
            final = le
        else:
            continue
        if final is None:
            out.pop(p, None)
        else:
            out[p] = final
    return out
