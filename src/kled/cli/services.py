"""``kled service list|describe|logs|backup|restore|rotate|delete``: a team's managed services.

A ManagedService is run by the control plane (``control/managed.py``) as a server app
``ms-<name>`` on one node; these commands read its status and act through the API:
``backup`` asks the control plane, which runs the template's dump inside the server's
replica through its agent into the node's backup folder and records it in
``status.backups``; ``restore BACKUP --as NEW`` creates a new service of the same template
that loads the dump at its first start, on the node that holds it; ``rotate`` asks for a
new password (``kled.io/rotate``); ``delete`` takes a final backup first unless ``--purge``,
which instead has the server remove its data when it stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from kled.cli.exec import endpoint
from kled.cli.exec_client import open_exec
from kled.cli.logs import logs as show_logs
from kled.cli.output import align, out, to_json, to_yaml
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import Conflict, InvalidInput, KledError, NotFound, PermanentError

app = typer.Typer(no_args_is_help=True)

ROTATE = "kled.io/rotate"
RESTORE_FROM = "kled.io/restore-from"
RESTORE_NODE = "kled.io/restore-node"
PURGE_FILE = "purge-on-stop"
_TRIES = 5


def _path(team: str, env: str, name: str = "") -> str:
    base = f"/api/v1/teams/{team}/environments/{env}/managedservices"
    return f"{base}/{name}" if name else base


def _where(env: str | None, team: str | None) -> tuple[str, str]:
    return STATE.team_for(team), STATE.env_for(env)


def _get(team: str, env: str, name: str) -> dict[str, Any]:
    with STATE.client() as client:
        try:
            doc: dict[str, Any] = client.get(_path(team, env, name))
        except NotFound:
            raise NotFound(
                f"service {name!r} not found in {team}/{env}: see `kled service list`"
            ) from None
    return doc


def _annotate(team: str, env: str, name: str, key: str, value: str) -> dict[str, Any]:
    """Set one annotation of the service; retried on a conflict."""
    with STATE.client() as client:
        for attempt in range(_TRIES):
            doc = _get(team, env, name)
            doc.pop("status", None)
            doc["metadata"].setdefault("annotations", {})[key] = value
            try:
                written: dict[str, Any] = client.put(_path(team, env, name), doc)
                return written
            except Conflict:
                if attempt == _TRIES - 1:
                    raise
    raise AssertionError("unreachable")


def _run_in_server(team: str, env: str, doc: dict[str, Any], command: list[str]) -> str:
    """``command`` in the server's replica; its stdout, or PermanentError with its stderr."""
    status = doc.get("status") or {}
    server = status.get("app")
    if not server or status.get("phase") not in ("Ready", "Degraded"):
        name = doc["metadata"]["name"]
        raise PermanentError(
            f"service {name} is {status.get('phase') or 'not provisioned'}: "
            "its server must run for this (see `kled service describe`)"
        )

    async def go() -> tuple[int, bytes, bytes]:
        stream = await open_exec(endpoint(), team, env, str(server), command, replica=0)
        try:
            await stream.close_stdin()
            stdout, stderr = await asyncio.gather(stream.stdout.read(), stream.stderr.read())
            return await stream.wait(), stdout, stderr
        finally:
            await stream.close()

    code, stdout, stderr = asyncio.run(go())
    if code != 0:
        lines = stderr.decode(errors="replace").strip().splitlines() or [f"exit {code}"]
        raise PermanentError(lines[-1].removeprefix("servicerun: "))
    return stdout.decode(errors="replace")


def take_backup(team: str, env: str, name: str, label: str | None = None) -> dict[str, Any]:
    """The control plane dumps the service in its server and lists it in status.backups."""
    body = {"label": label} if label else {}
    with STATE.client() as client:
        taken: dict[str, Any] = client.post(f"{_path(team, env, name)}/backup", body)
    return taken


@app.command("list")
def list_services(
    env: EnvOption = None,
    team: TeamOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """The environment's managed services: template, phase, address, node."""
    t, e = _where(env, team)
    with STATE.client() as client:
        items = client.get(_path(t, e)).get("items") or []
    if output == "json":
        out(to_json(items))
        return
    rows = [["NAME", "TEMPLATE", "PHASE", "ADDRESS", "NODE", "BACKUPS"]]
    for doc in items:
        s = doc.get("status") or {}
        address = f"{s['dns']}:{s['port']}" if s.get("dns") and s.get("port") else "-"
        rows.append([doc["metadata"]["name"], str(doc["spec"].get("template")),
                     str(s.get("phase") or "Pending"), address, str(s.get("node") or "-"),
                     str(len(s.get("backups") or []))])  # fmt: skip
    out(align(rows) if items else f"No managed services in {t}/{e}.")


@app.command()
def describe(
    name: str,
    env: EnvOption = None,
    team: TeamOption = None,
    output: Annotated[str, typer.Option("--output", "-o", help="text, json or yaml.")] = "text",
) -> None:
    """One service: its phase and why, address, credentials Secret, node, backups."""
    t, e = _where(env, team)
    doc = _get(t, e, name)
    if output in ("json", "yaml"):
        out(to_json(doc) if output == "json" else to_yaml(doc))
        return
    s, spec = doc.get("status") or {}, doc.get("spec") or {}
    lines = [
        f"Name:       {name}  ({t}/{e})",
        f"Template:   {spec.get('template')} {s.get('version') or spec.get('version') or ''}",
        f"Phase:      {s.get('phase') or 'Pending'}"
        + (f" ({s.get('reason')}: {s.get('message')})" if s.get("reason") else ""),
        f"Address:    {s.get('dns') or '-'}:{s.get('port') or '-'}  (service IP {s.get('ip')})",
        f"Secret:     {s.get('secret') or '-'}  (apps: envFrom: [{{managedService: {name}}}])",
        f"Node:       {s.get('node') or '-'}",
        f"Data:       {s.get('dataDir') or '-'}{_data_usage(t, e, name, doc)}",
        f"Parameters: {json.dumps(spec.get('parameters') or {})}",
        "Backups:",
    ]
    backups = s.get("backups") or []
    lines += [f"  {b['id']}  {b.get('bytes', '?')} bytes  {b.get('time', '')}" for b in backups]
    if not backups:
        lines.append("  none (`kled service backup NAME`)")
    out("\n".join(lines))


def _data_usage(team: str, env: str, name: str, doc: dict[str, Any]) -> str:
    """`` (12.3 MiB of 1Gi)``: measured now when the server runs, else as last measured."""
    size = ((doc.get("spec") or {}).get("storage") or {}).get("size") or "no storage.size"
    held = (doc.get("status") or {}).get("dataBytes")
    if (doc.get("status") or {}).get("phase") in ("Ready", "Degraded"):
        with STATE.client() as client, contextlib.suppress(KledError):
            held = client.get(f"{_path(team, env, name)}/usage")["dataBytes"]
    if not isinstance(held, int):
        return ""
    return f"  ({held / (1 << 20):.1f} MiB of {size})"


@app.command("logs")
def service_logs(
    name: str,
    env: EnvOption = None,
    team: TeamOption = None,
    follow: Annotated[bool, typer.Option("--follow", "-f", help="Keep showing new lines.")] = False,
    since: Annotated[
        str | None, typer.Option("--since", help="Only lines newer than this: 30s, 5m, 2h.")
    ] = None,
) -> None:
    """The server's log lines (its server app's replica, as `kled logs ms-NAME`)."""
    t, e = _where(env, team)
    doc = _get(t, e, name)
    server = (doc.get("status") or {}).get("app")
    if not server:
        raise PermanentError(f"service {name} has no server yet (see `kled service describe`)")
    show_logs(str(server), env=e, team=t, follow=follow, replica=None, since=since)


@app.command()
def backup(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """Dump the service (pg_dump, Redis RDB, mariadb-dump) into its node's backup folder."""
    t, e = _where(env, team)
    taken = take_backup(t, e, name)
    out(f"backup {taken['id']} ({taken['bytes']} bytes) of service {name} on node "
        f"{taken.get('node')}: {taken['path']}")  # fmt: skip


@app.command()
def restore(
    backup_id: Annotated[str, typer.Argument(metavar="BACKUP", help="A backup id or path.")],
    as_name: Annotated[str, typer.Option("--as", help="The new service's name.")],
    source: Annotated[
        str | None, typer.Option("--from", help="The service the backup belongs to.")
    ] = None,
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Create service NEW of the same template, loaded from BACKUP at its first start."""
    t, e = _where(env, team)
    with STATE.client() as client:
        items = client.get(_path(t, e)).get("items") or []
    found: tuple[dict[str, Any], dict[str, Any]] | None = None
    for doc in items:
        if source is not None and doc["metadata"]["name"] != source:
            continue
        for b in (doc.get("status") or {}).get("backups") or []:
            if backup_id in (b.get("id"), b.get("path")):
                found = (doc, b)
    if found is None:
        raise InvalidInput(
            f"BACKUP: no backup {backup_id!r} listed on the services of {t}/{e} "
            "(see `kled service describe NAME`)",
            field="BACKUP",
        )
    doc, taken = found
    spec = {k: v for k, v in doc["spec"].items() if k != "secretName"}
    annotations = {RESTORE_FROM: str(taken["path"])}
    if taken.get("node"):
        annotations[RESTORE_NODE] = str(taken["node"])
    new = {
        "apiVersion": "kled.io/v1",
        "kind": "ManagedService",
        "metadata": {"name": as_name, "annotations": annotations},
        "spec": spec,
    }
    with STATE.client() as client:
        try:
            client.post(_path(t, e), new)
        except Conflict:
            raise InvalidInput(f"--as: service {as_name!r} exists already in {t}/{e}",
                               field="--as") from None  # fmt: skip
    out(f"service {as_name} created from backup {taken['id']} (`kled service describe {as_name}`)")


@app.command()
def rotate(name: str, env: EnvOption = None, team: TeamOption = None) -> None:
    """A new password: the server and the apps that import the service restart with it."""
    t, e = _where(env, team)
    stamp = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    _annotate(t, e, name, ROTATE, stamp)
    out(f"service {name}: password rotation asked ({stamp})")


@app.command()
def delete(
    name: str,
    purge: Annotated[
        bool, typer.Option("--purge", help="No final backup; remove the data on the node.")
    ] = False,
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Delete the service; a final backup is kept unless --purge."""
    t, e = _where(env, team)
    doc = _get(t, e, name)
    status = doc.get("status") or {}
    if purge:
        if status.get("phase") in ("Ready", "Degraded"):
            marker = f"{status.get('dataDir')}/{PURGE_FILE}"
            _run_in_server(t, e, doc, ["touch", marker])
    else:
        taken = take_backup(t, e, name, label=f"{name}-final")
        out(f"final backup {taken['id']}: {taken['path']} on node {taken.get('node')}")
    with STATE.client() as client:
        client.delete(_path(t, e, name))
    out(f"service {name} deleted" + (" with its data" if purge else ""))
