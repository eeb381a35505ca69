"""What the console's pages show, as plain data: rows of apps and nodes, recent events,
YAML in and out.

Pure functions of documents the service layer returned, so they are tested without a
server; the routes hand their results to the templates.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from kled.control.devswap import DEV_ANNOTATION, session_of
from kled.errors import InvalidInput, KledError
from kled.resources.registry import Scope, kind_info

#: apply order of a pasted bundle: containers before what they hold (as ``kled apply``)
FIRST = ("Team", "Environment", "User", "Config", "Secret", "Policy")
MAX_DOCUMENTS = 200


def to_yaml(doc: Mapping[str, Any]) -> str:
    return yaml.safe_dump(dict(doc), sort_keys=False, allow_unicode=True, width=100)


def parse_documents(text: str) -> list[dict[str, Any]]:
    """The resources of a pasted YAML stream; bad input names the document at fault."""
    if not text.strip():
        raise InvalidInput("paste at least one resource", field="yaml")
    try:
        loaded = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(e, "problem", None) or "not YAML"
        raise InvalidInput(f"{problem}{where}", field="yaml") from None
    if not loaded:
        raise InvalidInput("paste at least one resource", field="yaml")
    if len(loaded) > MAX_DOCUMENTS:
        raise InvalidInput(f"at most {MAX_DOCUMENTS} resources at once", field="yaml")
    for index, doc in enumerate(loaded, 1):
        if not isinstance(doc, dict):
            raise InvalidInput(f"document {index} is not a mapping", field="yaml")
        if not doc.get("kind"):
            raise InvalidInput(f"document {index} has no kind", field="kind")
    return sorted(loaded, key=_rank)


def _rank(doc: Mapping[str, Any]) -> int:
    kind = str(doc.get("kind"))
    return FIRST.index(kind) if kind in FIRST else len(FIRST)


def place(doc: dict[str, Any], team: str, env: str | None) -> dict[str, Any]:
    """``doc`` in the page's team (and ``env`` when it names none), refusing another team."""
    info = kind_info(str(doc["kind"]))
    meta = doc.setdefault("metadata", {})
    if not isinstance(meta, dict):
        raise InvalidInput("must be a mapping", field="metadata")
    name = meta.get("name") or "?"
    if info.scope is Scope.SERVER:
        return doc
    if meta.get("team") not in (None, "", team):
        raise InvalidInput(
            f"{info.singular}/{name} is in team {meta['team']!r}, this page is team {team!r}",
            field="metadata.team",
        )
    meta["team"] = team
    if info.scope is Scope.ENVIRONMENT and not meta.get("environment"):
        if not env:
            raise InvalidInput(
                f"{info.singular}/{name} needs an environment: set metadata.environment "
                "or choose one above",
                field="metadata.environment",
            )
        meta["environment"] = env
    return doc


def ref(doc: Mapping[str, Any]) -> str:
    meta = doc.get("metadata") or {}
    kind = str(doc.get("kind") or "?")
    try:
        singular = kind_info(kind).singular
    except Exception:  # an unknown kind is reported by the service; here it is only a name
        singular = kind.lower()
    return f"{singular}/{meta.get('name') or '?'}"


def _meta(doc: Mapping[str, Any]) -> Mapping[str, Any]:
    return doc.get("metadata") or {}


def app_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    """An app as its page shows it: phase, ready count, service address, its replicas."""
    spec, status = doc.get("spec") or {}, doc.get("status") or {}
    replicas = [
        {
            "index": r.get("index"),
            "node": r.get("node") or "—",
            "state": r.get("state") or "Pending",
            "podIP": r.get("podIP") or "—",
            "restarts": r.get("restarts") or 0,
            "lastExit": "—" if r.get("lastExitCode") is None else str(r["lastExitCode"]),
            "ready": r.get("ready"),
        }
        for r in status.get("replicas") or []
    ]
    return {
        "name": _meta(doc).get("name"),
        "environment": _meta(doc).get("environment"),
        "labels": dict(_meta(doc).get("labels") or {}),
        # the dev session's annotation is shown as the session (dev_session), not as JSON
        "annotations": {
            k: v for k, v in (_meta(doc).get("annotations") or {}).items() if k != DEV_ANNOTATION
        },
        "phase": status.get("phase") or "Pending",
        "wanted": int(spec.get("replicas", 1)),
        "ready": int(status.get("readyReplicas") or 0),
        "ip": status.get("ip") or "—",
        "dns": status.get("dns") or "—",
        "runtime": spec.get("runtime") or "process",
        "ports": [
            f"{p.get('port')}→{p.get('targetPort') or p.get('port')}"
            for p in spec.get("ports") or []
        ],
        "references": _references(spec),
        "reason": status.get("message") or status.get("reason") or "",
        "replicas": replicas,
        "events": list(reversed(status.get("events") or []))[:20],
        "deleting": bool(_meta(doc).get("deletionTimestamp")),
    }


def dev_session(doc: Mapping[str, Any]) -> str | None:
    """``"olga since 2026-12-07T03:00:00Z"`` when the app is in a ``kled dev`` session."""
    try:
        found = session_of(dict(doc))
    except KledError:
        return None
    return f"{found.user} since {found.since}" if found is not None else None


def _references(spec: Mapping[str, Any]) -> list[str]:
    """Names of the configs and secrets an app reads (never their values)."""
    refs = []
    for item in spec.get("envFrom") or []:
        for kind in ("config", "secret"):
            if isinstance(item, Mapping) and item.get(kind):
                refs.append(f"{kind}/{item[kind]}")
    return refs


def node_row(doc: Mapping[str, Any]) -> dict[str, Any]:
    status = doc.get("status") or {}
    capacity = status.get("capacity") or {}
    conditions = status.get("conditions") or []
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)
    return {
        "name": _meta(doc).get("name"),
        "labels": dict(_meta(doc).get("labels") or {}),
        "phase": status.get("phase") or "Unknown",
        "ready": ready,
        "cpu": millicores(capacity.get("cpuMillicores")),
        "memory": human_bytes(capacity.get("memoryBytes")),
        "agentVersion": status.get("agentVersion") or "—",
        "lastHeartbeat": status.get("lastHeartbeat") or "never",
        "unschedulable": bool((doc.get("spec") or {}).get("unschedulable")),
    }


def millicores(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    return f"{value / 1000:g} CPU"


def human_bytes(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} TiB"


def recent_events(apps: Iterable[Mapping[str, Any]], limit: int = 20) -> list[dict[str, Any]]:
    """The newest events of a team's apps, newest first, each naming its app."""
    rows = []
    for doc in apps:
        meta = _meta(doc)
        for ev in (doc.get("status") or {}).get("events") or []:
            rows.append(
                {
                    "time": str(ev.get("time") or ""),
                    "type": ev.get("type") or "Normal",
                    "reason": ev.get("reason") or "",
                    "message": ev.get("message") or "",
                    "object": f"{meta.get('environment')}/{meta.get('name')}",
                }
            )
    rows.sort(key=lambda r: r["time"], reverse=True)
    return rows[:limit]


def secret_entries(doc: Mapping[str, Any], revealed: bool) -> list[tuple[str, str]]:
    """A secret's keys, with their values decoded when ``revealed`` (else none at all)."""
    rows = []
    for key, value in sorted((doc.get("data") or {}).items()):
        shown = ""
        if revealed:
            try:
                shown = base64.b64decode(str(value), validate=True).decode("utf-8")
            except (ValueError, UnicodeDecodeError):
                shown = str(value)  # binary or not base64: shown as stored
        rows.append((str(key), shown))
    return rows


def counts(pages: Mapping[str, list[Any]]) -> dict[str, int]:
    return {name: len(items) for name, items in pages.items()}
