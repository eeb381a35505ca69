"""What a GitSource's commit means for the store: the pure part of GitOps (issue 18).

``render`` turns a commit's files into the documents the source wants, each placed in the
source's team (and its environment, if it names one) and annotated with the source and
commit; ``content`` and ``digest`` say when a stored resource already is what git says
(so an unchanged sync writes nothing) and when it was changed by hand since the last sync
(drift); ``prunable`` picks what this source created and no longer wants; ``diff`` shows
stored against git as a unified diff. No I/O here: the controller (``api/gitsync.py``)
reads the store and writes through the service layer, so that every write of a sync passes
the same admission as ``kled apply``.
"""

from __future__ import annotations

import copy
import difflib
import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from kled.errors import InvalidInput, KledError
from kled.resources.loading import dump_yaml, load_documents
from kled.resources.registry import Scope, kind_info
from kled.store.objects import Key, desired_part

#: the source that manages a resource (its name; the team is the resource's own)
SOURCE = "kled.io/gitsource"
#: the commit that last changed the resource
COMMIT = "kled.io/gitcommit"
#: ``ignore``: changes by hand are kept (reported as drift, never reverted)
MODE = "kled.io/gitops"
IGNORE = "ignore"
#: kinds a repository may not hold: server-wide ones, and tokens (whose secret is shown once)
UNMANAGED = frozenset({"Token"})


@dataclass(frozen=True)
class Item:
    """One line of a sync's report: what happened to one resource (or one file)."""

    ref: str  # app/dev/api, or the file for a document that has no kind or name
    result: str  # created | configured | unchanged | pruned | denied | invalid | clash | ignored
    message: str = ""
    drift: bool = False

    def as_status(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ref": self.ref, "result": self.result}
        if self.message:
            out["message"] = self.message
        if self.drift:
            out["drift"] = True
        return out


FAILED = frozenset({"denied", "invalid", "clash"})
#: the documents one source may hold: its status lists them, and a status has a size bound
MAX_DOCUMENTS = 2000
#: past this many resources, a status lists only those that did not stay unchanged
LISTED_UNCHANGED = 500


def listed(items: list[Item]) -> list[dict[str, Any]]:
    """The ``status.resources`` of a sync: every item, or past ``LISTED_UNCHANGED``
    items only those that changed or failed (the message counts the rest)."""
    if len(items) > LISTED_UNCHANGED:
        items = [i for i in items if i.result != "unchanged" or i.drift]
    return [i.as_status() for i in items]


@dataclass
class Rendered:
    """The documents of a commit by key, and the problems of those that could not be."""

    docs: dict[Key, dict[str, Any]] = field(default_factory=dict)
    problems: list[Item] = field(default_factory=list)


def ref_of(key: Key) -> str:
    """``app/dev/api`` (``policy/deny`` for a team-wide kind)."""
    parts = [key.kind.lower(), key.environment, key.name]
    return "/".join(p for p in parts if p)


def render(
    files: Mapping[str, str],
    *,
    team: str,
    source: str,
    commit: str,
    environment: str | None = None,
) -> Rendered:
    """The documents of ``files`` (path → text), ready to apply, in path order."""
    out = Rendered()
    total = 0
    for path in sorted(files):
        try:
            loaded = load_documents(files[path], source=path)
        except KledError as exc:
            out.problems.append(Item(path, "invalid", str(exc)))
            continue
        total += len(loaded)
        if total > MAX_DOCUMENTS:
            message = f"over {MAX_DOCUMENTS} documents: the limit of documents a source may hold"
            out.problems.append(Item(path, "invalid", f"{path}: {message}"))
            return out
        for number, doc in enumerate(loaded, start=1):
            where = f"{path}: document {number}"
            try:
                placed = place(doc, team=team, source=source, commit=commit, env=environment)
                key = Key.of(placed)
            except KledError as exc:
                field_text = f"{exc.field}: " if exc.field else ""
                out.problems.append(Item(where, "invalid", f"{where}: {field_text}{exc.message}"))
                continue
            if key in out.docs:
                out.problems.append(
                    Item(ref_of(key), "invalid", f"{where}: {ref_of(key)} is defined twice")
                )
                continue
            out.docs[key] = placed
    return out


def place(
    doc: dict[str, Any], *, team: str, source: str, commit: str, env: str | None
) -> dict[str, Any]:
    """``doc`` in the source's team (and environment), with the source's annotations."""
    kind = str(doc.get("kind"))
    info = kind_info(kind)
    if info.scope is Scope.SERVER or kind in UNMANAGED:
        raise InvalidInput(f"a {kind} cannot be kept in a GitSource", field="kind")
    out = {k: copy.deepcopy(v) for k, v in doc.items() if k != "status"}
    meta = out["metadata"] = dict(out.get("metadata") or {})
    given = meta.get("team")
    if given and given != team:
        raise InvalidInput(
            f"must be {team!r}, the GitSource's team (or left out)", field="metadata.team"
        )
    meta["team"] = team
    if info.scope is Scope.ENVIRONMENT:
        if env:
            meta["environment"] = env
        elif not meta.get("environment"):
            raise InvalidInput(
                "required (or set the GitSource's spec.environment)",
                field="metadata.environment",
            )
    for system in ("uid", "resourceVersion", "generation", "creationTimestamp"):
        meta.pop(system, None)
    annotations = dict(meta.get("annotations") or {})
    annotations[SOURCE] = source
    annotations[COMMIT] = commit
    meta["annotations"] = annotations
    return out


def owner(doc: Mapping[str, Any] | None) -> str | None:
    """The GitSource that manages ``doc``, if any."""
    if doc is None:
        return None
    value = ((doc.get("metadata") or {}).get("annotations") or {}).get(SOURCE)
    return str(value) if value else None


def ignored(doc: Mapping[str, Any]) -> bool:
    return ((doc.get("metadata") or {}).get("annotations") or {}).get(MODE) == IGNORE


def content(doc: Mapping[str, Any]) -> dict[str, Any]:
    """What a sync compares: desired part, labels, annotations but the commit."""
    meta = doc.get("metadata") or {}
    annotations = {
        k: v for k, v in (meta.get("annotations") or {}).items() if k not in (COMMIT, MODE)
    }
    return {
        "desired": desired_part(dict(doc)),
        "labels": dict(meta.get("labels") or {}),
        "annotations": annotations,
    }


def digest(doc: Mapping[str, Any]) -> str:
    """A short fingerprint of ``content``: recorded at a sync, compared at the next."""
    text = json.dumps(content(doc), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def same(stored: Mapping[str, Any], wanted: Mapping[str, Any]) -> bool:
    return content(stored) == content(wanted)


def with_commit(doc: dict[str, Any], commit: str | None) -> dict[str, Any]:
    """``doc`` annotated with ``commit`` instead (None: without a commit annotation)."""
    out = copy.deepcopy(doc)
    annotations = out["metadata"].setdefault("annotations", {})
    if commit is None:
        annotations.pop(COMMIT, None)
    else:
        annotations[COMMIT] = commit
    return out


def commit_of(doc: Mapping[str, Any] | None) -> str | None:
    if doc is None:
        return None
    value = ((doc.get("metadata") or {}).get("annotations") or {}).get(COMMIT)
    return str(value) if value else None


def prunable(owned: Iterable[Key], wanted: Iterable[Key]) -> list[Key]:
    """What this source created and its commit no longer holds, environments last.

    Deleting an environment deletes what it holds, so environments go after their content
    (a pruned app is reported as pruned, not swept away unseen).
    """
    keep = set(wanted)
    gone = [key for key in owned if key not in keep]
    return sorted(gone, key=lambda k: (k.kind == "Environment", k.kind, k.environment, k.name))


def drifted(stored: Mapping[str, Any], recorded: str | None) -> bool:
    """Whether ``stored`` changed since the sync that recorded ``recorded``."""
    return recorded is not None and digest(stored) != recorded


def _shown(doc: Mapping[str, Any] | None) -> list[str]:
    if doc is None:
        return []
    meta = doc.get("metadata") or {}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k != COMMIT}
    shown: dict[str, Any] = {
        "kind": doc.get("kind"),
        "metadata": {
            "name": meta.get("name"),
            **({"environment": meta["environment"]} if meta.get("environment") else {}),
            **({"labels": meta["labels"]} if meta.get("labels") else {}),
            **({"annotations": annotations} if annotations else {}),
        },
        **desired_part(dict(doc)),
    }
    return dump_yaml([shown]).splitlines(keepends=True)


def _hidden(
    stored: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any] | None, Mapping[str, Any] | None]:
    """A Secret's values replaced by words: a diff says which entries differ, never what
    they hold (a viewer may read a diff, and only admins may read a secret)."""
    old = dict((stored or {}).get("data") or {})
    new = dict((wanted or {}).get("data") or {})

    def word(k: str, v: Any) -> str:
        if k not in old:
            return "(hidden, new)"
        return "(hidden)" if old[k] == v else "(hidden, changed)"

    shown_old = None if stored is None else {**stored, "data": dict.fromkeys(old, "(hidden)")}
    shown_new = (
        None if wanted is None else {**wanted, "data": {k: word(k, v) for k, v in new.items()}}
    )
    return shown_old, shown_new


def diff(key: Key, stored: Mapping[str, Any] | None, wanted: Mapping[str, Any] | None) -> str:
    """A unified diff of the stored resource (``a/``) against git's document (``b/``)."""
    if key.kind == "Secret":
        stored, wanted = _hidden(stored, wanted)
    ref = ref_of(key)
    lines = difflib.unified_diff(
        _shown(stored),
        _shown(wanted),
        fromfile=f"stored/{ref}" if stored is not None else "/dev/null",
        tofile=f"git/{ref}" if wanted is not None else "/dev/null",
    )
    return "".join(lines)


def key_of_ref(ref: str, team: str) -> Key | None:
    """The key a status ``ref`` names (the inverse of :func:`ref_of`), None for a file."""
    parts = ref.split("/")
    try:
        info = kind_info(_KIND_BY_LOWER.get(parts[0], ""))
    except KledError:
        return None
    if info.scope is Scope.ENVIRONMENT and len(parts) == 3:
        return Key(info.kind, team, parts[1], parts[2])
    if info.scope is Scope.TEAM and len(parts) == 2:
        return Key(info.kind, team, "", parts[1])
    return None


def _kinds_by_lower() -> dict[str, str]:
    from kled.resources.registry import KINDS

    return {k.kind.lower(): k.kind for k in KINDS}


_KIND_BY_LOWER = _kinds_by_lower()
