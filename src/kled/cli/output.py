"""How the CLI shows resources: tables, YAML, JSON, names, and ``describe`` pages.

Tables are plain aligned columns, like kubectl's, so that they read the same in a terminal
and in a pipe (Rich would wrap them to the terminal's width); the columns depend on the
kind. ``-o json`` of several resources is a ``List`` as kubectl prints it, so scripts can
rely on one shape.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import yaml
from rich.console import Console
from rich.markup import escape

from kled.errors import InvalidInput
from kled.resources.registry import API_VERSION, Scope, kind_info

if TYPE_CHECKING:
    from kled.cli.client import Client

FORMATS = ("table", "wide", "yaml", "json", "name")

Row = list[str]
Column = tuple[str, Callable[[dict[str, Any]], str]]

err_console = Console(stderr=True, highlight=False, soft_wrap=True)


def check_format(output: str) -> str:
    if output not in FORMATS:
        raise InvalidInput(
            f"unknown output format {output!r} (use {', '.join(FORMATS)})", field="--output"
        )
    return output


def out(text: str = "") -> None:
    """One line (or several) on stdout, flushed: watchers read it from pipes as it comes."""
    sys.stdout.write(text + ("\n" if not text.endswith("\n") else ""))
    sys.stdout.flush()


def warn(text: str) -> None:
    err_console.print(f"[yellow]Warning:[/yellow] {escape(text)}")


def note(text: str) -> None:
    err_console.print(escape(text), style="dim")


# ---- small pieces --------------------------------------------------------------------


def age(timestamp: str | None, now: datetime | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` since ``timestamp`` (ISO 8601)."""
    if not timestamp:
        return "-"
    try:
        then = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return "-"
    if then.tzinfo is None:
        then = then.replace(tzinfo=UTC)
    seconds = int(((now or datetime.now(UTC)) - then).total_seconds())
    seconds = max(seconds, 0)
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def ref(doc: dict[str, Any]) -> str:
    """``app/api``: how the CLI names a resource in its messages."""
    return f"{str(doc.get('kind', '')).lower()}/{(doc.get('metadata') or {}).get('name', '')}"


def _meta(doc: dict[str, Any], key: str) -> Any:
    return (doc.get("metadata") or {}).get(key)


def _spec(doc: dict[str, Any], key: str) -> Any:
    return (doc.get("spec") or {}).get(key)


def _status(doc: dict[str, Any], key: str) -> Any:
    return (doc.get("status") or {}).get(key)


def _text(value: Any) -> str:
    if value is None or value == "" or value == [] or value == {}:
        return "-" if value is None or value == "" else "<none>"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _labels(doc: dict[str, Any]) -> str:
    labels = _meta(doc, "labels") or {}
    return ",".join(f"{k}={v}" for k, v in sorted(labels.items())) or "<none>"


def _phase(doc: dict[str, Any]) -> str:
    if _meta(doc, "deletionTimestamp"):
        return "Deleting"
    return _text(_status(doc, "phase"))


def _ports(doc: dict[str, Any]) -> str:
    ports = _spec(doc, "ports") or []
    shown = []
    for p in ports:
        target = p.get("targetPort")
        text = f"{p.get('port')}" + (f":{target}" if target and target != p.get("port") else "")
        shown.append(f"{text}/{p.get('protocol', 'TCP')}")
    return ",".join(shown) or "<none>"


def _replicas(doc: dict[str, Any]) -> str:
    wanted = _spec(doc, "replicas")
    scaled = _status(doc, "autoscale")
    if _spec(doc, "autoscale") and isinstance(scaled, dict) and "desiredReplicas" in scaled:
        wanted = scaled["desiredReplicas"]  # the autoscaler's count, not the starting one
    ready = _status(doc, "readyReplicas")
    if ready is None:
        replicas = _status(doc, "replicas")
        if isinstance(replicas, list):
            ready = sum(1 for r in replicas if isinstance(r, dict) and r.get("ready"))
    return f"{ready if ready is not None else 0}/{wanted if wanted is not None else 1}"


def _node_roles(doc: dict[str, Any]) -> str:
    labels = _meta(doc, "labels") or {}
    roles = sorted(key.rsplit("/", 1)[1] for key in labels if key.startswith("node-role.kled.io/"))
    return ",".join(roles) or "<none>"


def _node_status(doc: dict[str, Any]) -> str:
    phase = _status(doc, "phase") or ("Ready" if _status(doc, "ready") else "NotReady")
    if _spec(doc, "unschedulable"):
        phase = f"{phase},SchedulingDisabled"
    return str(phase)


def _capacity(doc: dict[str, Any]) -> dict[str, Any]:
    found = _status(doc, "capacity") or _spec(doc, "capacity") or {}
    return found if isinstance(found, dict) else {}


def cpu_text(millicores: Any) -> str:
    """``4`` cores, or ``500m`` when not whole."""
    if not isinstance(millicores, int):
        return "-"
    return str(millicores // 1000) if millicores % 1000 == 0 else f"{millicores}m"


def memory_text(size: Any) -> str:
    """Bytes in the largest binary unit that keeps one decimal: ``15.6Gi``."""
    if not isinstance(size, int):
        return "-"
    value = float(size)
    for unit in ("", "Ki", "Mi", "Gi", "Ti"):
        if value < 1024 or unit == "Ti":
            return f"{value:.0f}{unit}" if unit == "" or value >= 100 else f"{value:.1f}{unit}"
        value /= 1024
    return str(size)


def _node_cpu(doc: dict[str, Any]) -> str:
    cap = _capacity(doc)
    return cpu_text(cap.get("cpuMillicores", cap.get("cpu")))


def _node_memory(doc: dict[str, Any]) -> str:
    cap = _capacity(doc)
    return memory_text(cap.get("memoryBytes", cap.get("memory")))


def _node_capabilities(doc: dict[str, Any]) -> str:
    found = _status(doc, "capabilities") or []
    return ",".join(str(c) for c in found) or "<none>"


def _keys(doc: dict[str, Any]) -> str:
    return str(len(doc.get("data") or {}))


NAME: Column = ("NAME", lambda d: str(_meta(d, "name")))
ENV: Column = ("ENV", lambda d: _text(_meta(d, "environment")))
STATUS: Column = ("STATUS", _phase)
AGE: Column = ("AGE", lambda d: age(_meta(d, "creationTimestamp")))
LABELS: Column = ("LABELS", _labels)

#: kind → (columns, extra columns of ``-o wide``); AGE is always last
COLUMNS: dict[str, tuple[list[Column], list[Column]]] = {
    "Team": ([NAME], [("ZONE", lambda d: _text(_spec(d, "zone"))),
                      ("BLOCK", lambda d: _text(_spec(d, "block")))]),
    "Node": ([NAME, ("STATUS", _node_status), AGE, ("CPU", _node_cpu),
              ("MEMORY", _node_memory), ("CAPABILITIES", _node_capabilities), LABELS],
             [("ROLES", _node_roles), ("ADDRESS", lambda d: _text(_spec(d, "address")))]),
    "User": ([NAME, ("ROLE", lambda d: _text(_spec(d, "role")))],
             [("EMAIL", lambda d: _text(_spec(d, "email")))]),
    "Token": ([NAME, ("USER", lambda d: _text(_spec(d, "user"))),
               ("EXPIRES", lambda d: _text(_spec(d, "expiresAt") or "never")),
               ("REVOKED", lambda d: _text(bool(_spec(d, "revoked"))))],
              [("DESCRIPTION", lambda d: _text(_spec(d, "description")))]),
    "Environment": ([NAME, STATUS, ("CLONED-FROM", lambda d: _text(_spec(d, "clonedFrom")))],
                    [LABELS]),
    "App": ([NAME, ENV, ("RUNTIME", lambda d: _text(_spec(d, "runtime"))),
             ("READY", _replicas), ("PHASE", _phase), ("PORTS", _ports)],
            [("IP", lambda d: _text(_status(d, "ip"))),
             ("DNS", lambda d: _text(_status(d, "dns"))), LABELS]),
    "Config": ([NAME, ENV, ("DATA", _keys)], [LABELS]),
    "Secret": ([NAME, ENV, ("TYPE", lambda d: _text(d.get("type"))), ("DATA", _keys)],
               [LABELS]),
    "Device": ([NAME, ("OWNER", lambda d: _text(_spec(d, "owner"))),
                ("TYPE", lambda d: _text(_spec(d, "kind"))), STATUS],
               [("IP", lambda d: _text(_status(d, "ip"))), LABELS]),
}  # fmt: skip


def columns_for(kind: str, wide: bool) -> list[Column]:
    info = kind_info(kind)
    default: list[Column] = (
        [NAME, ENV, STATUS] if info.scope is Scope.ENVIRONMENT else [NAME, STATUS]
    )
    base, extra = COLUMNS.get(kind, (default, [LABELS]))
    tail = [] if AGE in base else [AGE]
    return [*base, *tail, *(extra if wide else [])]


def align(rows: Sequence[Row]) -> str:
    """Rows as left-aligned columns three spaces apart."""
    if not rows:
        return ""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "   ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in rows
    ]
    return "\n".join(lines)


def table(kind: str, docs: Sequence[dict[str, Any]], wide: bool = False) -> str:
    cols = columns_for(kind, wide)
    rows: list[Row] = [[title for title, _ in cols]]
    rows.extend([fn(doc) for _, fn in cols] for doc in docs)
    return align(rows)


def as_list(docs: Sequence[dict[str, Any]]) -> dict[str, Any]:
    return {"apiVersion": API_VERSION, "kind": "List", "items": list(docs)}


def to_json(value: Any) -> str:
    return json.dumps(value, indent=2, ensure_ascii=False)


def to_yaml(value: Any) -> str:
    from kled.resources.loading import dump_yaml

    return dump_yaml([value]) if isinstance(value, dict) else yaml.safe_dump(value)


def show(kind: str, docs: Sequence[dict[str, Any]], output: str, single: bool) -> str:
    """``docs`` in the chosen format; ``single`` shows one object rather than a List."""
    if output == "json":
        return to_json(docs[0] if single else as_list(docs))
    if output == "yaml":
        return to_yaml(docs[0] if single else as_list(docs))
    if output == "name":
        return "\n".join(ref(d) for d in docs)
    if not docs:
        return ""
    return table(kind, docs, wide=output == "wide")


# ---- describe ------------------------------------------------------------------------


def _block(title: str, value: Any) -> list[str]:
    if value in (None, {}, []):
        return [f"{title}:  <none>"]
    text = yaml.safe_dump(value, sort_keys=False, default_flow_style=False).rstrip()
    return [f"{title}:", *("  " + line for line in text.splitlines())]


def describe(doc: dict[str, Any]) -> str:
    """A readable page about one resource: metadata, desired state, observed state."""
    meta = doc.get("metadata") or {}
    lines = [
        f"Name:          {meta.get('name')}",
        f"Kind:          {doc.get('kind')}",
    ]
    if meta.get("team"):
        lines.append(f"Team:          {meta['team']}")
    if meta.get("environment"):
        lines.append(f"Environment:   {meta['environment']}")
    lines += [
        f"Labels:        {_labels(doc)}",
        f"Annotations:   {_text(meta.get('annotations') or None)}",
        f"UID:           {meta.get('uid', '-')}",
        f"Version:       {meta.get('resourceVersion', '-')}"
        f" (generation {meta.get('generation', '-')})",
        f"Created:       {meta.get('creationTimestamp', '-')}"
        f" ({age(meta.get('creationTimestamp'))} ago)",
    ]
    if meta.get("deletionTimestamp"):
        lines.append(f"Deleting since: {meta['deletionTimestamp']}")
    if meta.get("finalizers"):
        lines.append(f"Finalizers:    {', '.join(meta['finalizers'])}")
    if "data" in doc:
        data = doc.get("data") or {}
        lines.append("Data:" if data else "Data:  <none>")
        secret = doc.get("kind") == "Secret"
        for key, value in data.items():
            shown = (
                f"{len(value)} bytes (base64)"
                if secret and value
                else ("<hidden>" if secret else str(value))
            )
            lines.append(f"  {key}: {shown}")
    else:
        lines += _block("Spec", doc.get("spec"))
    status = dict(doc.get("status") or {})
    replicas = status.pop("replicas", None)
    events = status.pop("events", None)
    lines += _block("Status", status)
    if isinstance(replicas, list) and replicas:
        lines.append("Replicas:")
        lines += ["  " + line for line in replica_table(doc, replicas).splitlines()]
    lines += _events(events)
    return "\n".join(lines)


def replica_table(doc: dict[str, Any], replicas: Sequence[Any]) -> str:
    """An app's replicas: where each runs, its state, restarts, last exit and why."""
    name = str(_meta(doc, "name"))
    rows: list[Row] = [["REPLICA", "NODE", "STATE", "RESTARTS", "LAST-EXIT", "STARTED", "REASON"]]
    for r in replicas:
        if not isinstance(r, dict):
            continue
        reason = r.get("reason") or ""
        if r.get("message"):
            reason = f"{reason}: {r['message']}" if reason else str(r["message"])
        rows.append(
            [
                str(r.get("name") or f"{name}-{r.get('index')}"),
                _text(r.get("node")),
                _text(r.get("state") or r.get("phase")),
                str(r.get("restarts") or 0),
                _text(r.get("lastExitCode")),
                age(r.get("startedAt")) if r.get("startedAt") else "-",
                reason or "-",
            ]
        )
    return align(rows)


def _events(events: Any) -> list[str]:
    lines: list[str] = []
    if isinstance(events, list) and events:
        lines.append("Events:")
        rows = [["TYPE", "REASON", "AGE", "MESSAGE"]]
        for e in events:
            if isinstance(e, dict):
                rows.append(
                    [
                        _text(e.get("type")),
                        _text(e.get("reason")),
                        age(e.get("time") or e.get("timestamp")),
                        _text(e.get("message")),
                    ]
                )
        lines += ["  " + line for line in align(rows).splitlines()]
    return lines


def intercepts_section(app: str, intercepts: Sequence[dict[str, Any]]) -> str:
    """The ``Intercepts:`` part of ``kled describe app``: who takes the app's traffic, where
    to, for which ports and header, and whether it flows there now (``Fallback``: the
    device is silent and the replicas answer)."""
    rows: list[Row] = [["NAME", "DEVICE", "PORTS", "HEADER", "PHASE"]]
    for doc in sorted(intercepts, key=lambda d: str(_meta(d, "name"))):
        spec = doc.get("spec") or {}
        if spec.get("app") != app or (doc.get("metadata") or {}).get("deletionTimestamp"):
            continue
        ports = ",".join(
            f"{p.get('port')}:{p.get('localPort') or p.get('port')}"
            for p in spec.get("ports") or []
            if isinstance(p, dict)
        )
        header = spec.get("header") or {}
        rows.append(
            [
                str(_meta(doc, "name")),
                _text(spec.get("device")),
                ports or "all",
                f"{header.get('name')}={header.get('value')}" if header else "-",
                _text((doc.get("status") or {}).get("phase")),
            ]
        )
    if len(rows) == 1:
        return "Intercepts:  <none>"
    return "\n".join(["Intercepts:", *("  " + line for line in align(rows).splitlines())])


def app_intercepts_section(client: Client, doc: dict[str, Any]) -> str:
    """``intercepts_section`` for an App document, read from its environment."""
    meta = doc.get("metadata") or {}
    path = f"/api/v1/teams/{meta.get('team')}/environments/{meta.get('environment')}/intercepts"
    return intercepts_section(str(meta.get("name")), client.list_all(path))


def describe_node(doc: dict[str, Any], placed: Sequence[dict[str, Any]]) -> str:
    """``kled node describe``: status, capacity, conditions and the replicas placed there."""
    meta = doc.get("metadata") or {}
    status = doc.get("status") or {}
    cap = _capacity(doc)
    alloc = status.get("allocatable") or {}
    lines = [
        f"Name:           {meta.get('name')}",
        f"Status:         {_node_status(doc)}",
        f"Labels:         {_labels(doc)}",
        f"Address:        {_text(_spec(doc, 'address'))}",
        f"Created:        {meta.get('creationTimestamp', '-')}"
        f" ({age(meta.get('creationTimestamp'))} ago)",
        f"Last heartbeat: {_text(status.get('lastHeartbeat'))}"
        + (f" ({age(status.get('lastHeartbeat'))} ago)" if status.get("lastHeartbeat") else ""),
        f"Agent version:  {_text(status.get('agentVersion'))}",
        f"Capacity:       cpu {cpu_text(cap.get('cpuMillicores'))}, "
        f"memory {memory_text(cap.get('memoryBytes'))}",
        f"Allocatable:    cpu {cpu_text(alloc.get('cpuMillicores'))}, "
        f"memory {memory_text(alloc.get('memoryBytes'))}",
        f"Capabilities:   {_node_capabilities(doc)}",
    ]
    conditions = status.get("conditions") or []
    if conditions:
        lines.append("Conditions:")
        rows: list[Row] = [["TYPE", "STATUS", "REASON", "SINCE", "MESSAGE"]]
        for c in conditions:
            if isinstance(c, dict):
                rows.append(
                    [
                        _text(c.get("type")),
                        _text(c.get("status")),
                        _text(c.get("reason")),
                        _text(c.get("lastTransitionTime")),
                        _text(c.get("message")),
                    ]
                )
        lines += ["  " + line for line in align(rows).splitlines()]
    else:
        lines.append("Conditions:     <none>")
    if placed:
        lines.append(f"Replicas ({len(placed)}):")
        rows = [["APP", "REPLICA", "STATE", "RESTARTS", "LAST-EXIT"]]
        for r in placed:
            rows.append(
                [
                    str(r.get("app")),
                    str(r.get("index")),
                    _text(r.get("state")),
                    str(r.get("restarts") or 0),
                    _text(r.get("lastExitCode")),
                ]
            )
        lines += ["  " + line for line in align(rows).splitlines()]
    else:
        lines.append("Replicas:       <none>")
    lines += _events(status.get("events"))
    return "\n".join(lines)
