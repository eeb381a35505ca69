"""The managed services controller: a ManagedService becomes a server app and a Secret.

For each ``ManagedService`` it keeps two resources of the same environment, labelled
``kled.io/managed-service: <name>`` so that they are found again after a restart:

- the credentials ``Secret`` (``spec.secretName``, default the service's name): the
  template's outputs (``host``, ``port``, ``user``, ``password``, ``database``, ``uri``) and
  the variables apps import with ``envFrom: [{managedService: …}]`` (``DATABASE_URL``…);
  the password is generated once and replaced only when ``kled service rotate`` asks;
- the server ``App`` (``ms-<name>``): one replica running ``kled.agent.servicerun serve``
  with the template's engine, a data directory on the node named for the service's uid
  (it outlives replicas and agents), the credentials through ``envFrom``, the template's
  health check as readiness probe and the ``Recreate`` strategy (a replaced server stops
  before its successor starts). Once the server has a node it is pinned there
  (``nodeSelector: {kled.io/hostname: …}``): a dead node makes the service Unavailable;
  it is never started on a second node beside the data of the first.

The workloads controller, the scheduler and the agents run that App as any other; the
mesh gives the service its own IP and DNS name, with the server app's replica as backend
(``hostnet``). What this controller writes into ``ManagedService.status``: ``phase``
(Provisioning, Ready, Degraded, Failed, Unavailable) with ``reason``/``message``, the
node, the folders, the ports, and the backups (which the backup route of ``api/managed.py``
appends to the status: this controller keeps them when it writes).

The planning (:func:`plan`) is pure: documents in, documents out; the shell only reads
and writes the store.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import copy
import json
import logging
import os
import secrets as random
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kled.control.desired import MANAGED_BY
from kled.control.owners import owner_refs
from kled.errors import Conflict, Gone, InvalidInput, KledError, NotFound
from kled.resources.kinds import validate
from kled.resources.templates import (
    BUILTIN,
    ServiceTemplateSpec,
    check_service,
    effective_parameters,
    template_spec,
)
from kled.store.objects import Event, Key, Store

log = logging.getLogger(__name__)

#: the node label every node has implicitly (``nodes.node_info``): pins a server
HOSTNAME = "kled.io/hostname"
#: set by ``kled service rotate``: a new value means a new password
ROTATE = "kled.io/rotate"
#: written by an older ``kled service backup`` (JSON list): still listed in ``status.backups``
BACKUPS = "kled.io/backups"
#: set by ``kled service restore``: the dump to load at first start, and its node
RESTORE_FROM = "kled.io/restore-from"
RESTORE_NODE = "kled.io/restore-node"
#: on the credentials Secret: the uid of the service whose password it holds
SERVICE_UID = "kled.io/service-uid"
DEFAULT_ROOT = "/var/lib/kled/services"
_KEEP_BACKUPS = 50


@dataclass(frozen=True)
class Layout:
    """Where a service's files are on its node."""

    root: str
    python: str = field(default_factory=lambda: sys.executable)

    def data_dir(self, ref: tuple[str, str, str], uid: str) -> str:
        return f"{self.root}/data/{'.'.join(ref)}-{uid[:8]}"

    def backup_dir(self, ref: tuple[str, str, str], uid: str) -> str:
        return f"{self.root}/backups/{'.'.join(ref)}-{uid[:8]}"


def server_app_name(service: str) -> str:
    return f"ms-{service}"[:63].rstrip("-")


def secret_name(ms: Mapping[str, Any]) -> str:
    spec = ms.get("spec") or {}
    return str(spec.get("secretName") or ms["metadata"]["name"])


def find_template(name: str, stored: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """A stored template of that name, else the built-in one, else None."""
    if stored is not None and not (stored.get("metadata") or {}).get("deletionTimestamp"):
        return dict(stored)
    return BUILTIN.get(name)


def backup_command(ms: Mapping[str, Any], label: str) -> list[str]:
    """The server's own ``servicerun`` command line made a dump into its backup folder.
    Pure; :class:`Conflict` when the server does not run."""
    backup_dir = str((ms.get("status") or {}).get("backupDir"))
    return [*server_verb(ms, "backup"), "--to", backup_dir, "--label", label]


def server_verb(ms: Mapping[str, Any], verb: str) -> list[str]:
    """The server's own ``servicerun`` command line with ``verb`` instead of ``serve``
    (without its parameters and restore). Pure; :class:`Conflict` when it does not run."""
    status = ms.get("status") or {}
    name = ms["metadata"]["name"]
    server = [str(a) for a in status.get("serverCommand") or []]
    if "serve" not in server or status.get("phase") not in ("Ready", "Degraded"):
        raise Conflict(
            f"service {name} is {status.get('phase') or 'not provisioned'}: "
            "its server must run for this (see `kled service describe`)"
        )
    cut = server.index("serve")
    rest, skip = [], False
    for arg in server[cut + 1 :]:
        if skip or arg in ("--param", "--restore-from"):
            skip = not skip
            continue
        rest.append(arg)
    return [*server[:cut], verb, *rest]


def recorded(ms: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The service's backups: those in its status (recorded by the control plane) and
    those an older ``kled service backup`` wrote in its annotation, oldest first."""
    annotations = (ms.get("metadata") or {}).get("annotations") or {}
    found = {b["id"]: b for b in _backups(annotations.get(BACKUPS))}
    for b in (ms.get("status") or {}).get("backups") or []:
        if isinstance(b, dict) and "id" in b:
            found[str(b["id"])] = dict(b)
    ordered = sorted(found.values(), key=lambda b: (str(b.get("time") or ""), str(b["id"])))
    return ordered[-_KEEP_BACKUPS:]


#: what a clone of a service never takes from its source (``kled env clone``)
_NOT_CLONED = (BACKUPS, RESTORE_FROM, RESTORE_NODE, ROTATE)


def clone_annotations(ms: Mapping[str, Any], *, with_data: bool) -> dict[str, str]:
    """The annotations of a clone of ``ms`` in another environment. Pure.

    The source's backups, rotation and restore instructions stay behind (a clone of a
    restored service is not restored from the same dump); ``with_data`` makes the clone
    load the source's latest backup at its first start, on the node that holds it. A
    service with no backup cannot be cloned with data (:class:`InvalidInput`)."""
    meta = ms.get("metadata") or {}
    kept = {str(k): str(v) for k, v in (meta.get("annotations") or {}).items()
            if k not in _NOT_CLONED}  # fmt: skip
    if not with_data:
        return kept
    backups = recorded(ms)
    if not backups:
        raise InvalidInput(
            f"withData: managed service {meta.get('name')!r} has no backup to clone from "
            f"(run `kled service backup {meta.get('name')}` first)",
            field="withData",
        )
    latest = max(backups, key=lambda b: (str(b.get("time") or ""), str(b.get("id") or "")))
    kept[RESTORE_FROM] = str(latest["path"])
    if latest.get("node"):
        kept[RESTORE_NODE] = str(latest["node"])
    return kept


@dataclass
class Plan:
    """What the store should hold for one service."""

    status: dict[str, Any]
    secret: dict[str, Any] | None = None
    app: dict[str, Any] | None = None


def _b64(value: str) -> str:
    return base64.b64encode(value.encode()).decode()


def _unb64(value: Any) -> str:
    try:
        return base64.b64decode(str(value)).decode()
    except ValueError:
        return ""


def _runner(
    layout: Layout, verb: str, tmpl: ServiceTemplateSpec, port: int, data: str
) -> list[str]:
    return [layout.python, "-m", "kled.agent.servicerun", verb, "--engine", tmpl.engine,
            "--bin-dir", tmpl.bin_dir, "--data", data, "--port", str(port)]  # fmt: skip


def _phase(
    app: Mapping[str, Any] | None, node: str | None, nodes: Mapping[str, str], was: str | None
) -> tuple[str, str, str]:
    """(phase, reason, message) from the server app's replica and its node."""
    if node is not None and nodes.get(node, "Ready") != "Ready":
        return "Unavailable", "NodeNotReady", f"node {node}, which holds the data, is not ready"
    replicas = ((app or {}).get("status") or {}).get("replicas") or []
    entry = next((r for r in replicas if r.get("index") == 0), None)
    if entry is None:
        return "Provisioning", "Scheduling", "the server is being placed on a node"
    state, ready = entry.get("state"), entry.get("ready")
    if state == "Running" and ready is True:
        return "Ready", "HealthCheckPassed", f"serving on node {entry.get('node')}"
    message = str(entry.get("message") or entry.get("reason") or state or "")
    if state in ("Failed", "CrashLoopBackOff") or entry.get("reason") in (
        "CommandNotFound",
        "StartError",
        "InvalidSpec",
    ):
        return "Failed", str(entry.get("reason") or state), message
    if was in ("Ready", "Degraded"):
        return "Degraded", "HealthCheckFailing", message or "the health check fails"
    return "Provisioning", "Starting", message or "the server is starting"


def plan(
    ms: Mapping[str, Any],
    template: Mapping[str, Any] | None,
    secret: Mapping[str, Any] | None,
    app: Mapping[str, Any] | None,
    nodes: Mapping[str, str],
    layout: Layout,
    *,
    new_password: str = "",
) -> Plan:
    """The Secret, server App and status that ``ms`` should have. Pure.

    ``nodes`` maps each node to its phase; ``new_password`` is used when the service has
    none yet or a rotation is asked for."""
    meta = ms["metadata"]
    ref = (str(meta["team"]), str(meta.get("environment") or ""), str(meta["name"]))
    spec = ms.get("spec") or {}
    annotations = meta.get("annotations") or {}
    status = copy.deepcopy(ms.get("status") or {})
    try:
        tmpl = template_spec(template) if template is not None else None
        check_service(spec, tmpl)
    except InvalidInput as e:
        status.update(phase="Failed", reason="InvalidTemplate", message=e.message)
        return Plan(status)
    assert tmpl is not None
    uid = str(meta.get("uid") or "")
    data, backups = layout.data_dir(ref, uid), layout.backup_dir(ref, uid)
    status.update(
        template=str(spec["template"]),
        engine=tmpl.engine,
        version=str(spec.get("version") or tmpl.versions[0]),
        app=server_app_name(ref[2]),
        secret=secret_name(ms),
        ports=[tmpl.port],
        dataDir=data,
        backupDir=backups,
    )
    listed = recorded(ms)
    if listed:
        status["backups"] = listed
    host = status.get("dns")
    if not host:
        status.update(phase="Provisioning", reason="WaitingForAddress",
                      message="waiting for the service's IP and DNS name")  # fmt: skip
        return Plan(status)
    old = {str(k): _unb64(v) for k, v in ((secret or {}).get("data") or {}).items()}
    # Only this service's own password is kept: a Secret made for another service of the
    # same name (a copy, an earlier service) gets a new one.
    held = ((secret or {}).get("metadata") or {}).get("annotations") or {}
    own = held.get(SERVICE_UID) == uid
    password = (old.get("password") if own else None) or new_password
    rotation = annotations.get(ROTATE)
    if rotation and rotation != status.get("rotation"):
        password = new_password
        status["rotation"] = rotation
    values = {
        "host": str(host),
        "port": str(tmpl.port),
        "user": tmpl.user,
        "password": password,
        "database": tmpl.database or "",
    }
    values["uri"] = tmpl.uri.format(**values)
    entries = {**values, **{env: values[out] for env, out in tmpl.env.items()}}
    secret_doc = {
        "apiVersion": "kled.io/v1",
        "kind": "Secret",
        "metadata": {"name": secret_name(ms), "team": ref[0], "environment": ref[1],
                     "labels": {MANAGED_BY: ref[2]}, "annotations": {SERVICE_UID: uid}},
        "data": {k: _b64(v) for k, v in sorted(entries.items())},
    }  # fmt: skip
    node = status.get("node") or annotations.get(RESTORE_NODE)
    if not node:
        placed = [r for r in ((app or {}).get("status") or {}).get("replicas") or []
                  if r.get("index") == 0 and r.get("node")]  # fmt: skip
        node = placed[0]["node"] if placed else None
    if node:
        status["node"] = node
    command = _runner(layout, "serve", tmpl, tmpl.port, data)
    for name, value in effective_parameters(spec, tmpl).items():
        command += ["--param", f"{name}={value}"]
    if annotations.get(RESTORE_FROM):
        command += ["--restore-from", str(annotations[RESTORE_FROM])]
    status["serverCommand"] = command
    app_spec: dict[str, Any] = {
        "runtime": "process",
        "command": command,
        "replicas": 1,
        "envFrom": [{"secret": secret_name(ms)}],
        "ports": [{"name": tmpl.engine, "port": tmpl.port}],
        "readinessProbe": {
            "exec": {"command": _runner(layout, "health", tmpl, tmpl.port, data)},
            "periodSeconds": 2,
            "timeoutSeconds": 10,
            "failureThreshold": 2,
        },
        "strategy": {"type": "Recreate"},
        "terminationGracePeriodSeconds": 30,
    }
    if spec.get("resources"):
        app_spec["resources"] = spec["resources"]
    if node:
        app_spec["nodeSelector"] = {HOSTNAME: node}
    app_doc = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": server_app_name(ref[2]), "team": ref[0], "environment": ref[1],
                     "labels": {MANAGED_BY: ref[2]}},
        "spec": app_spec,
    }  # fmt: skip
    phase, reason, message = _phase(app, node, nodes, status.get("phase"))
    status.update(phase=phase, reason=reason, message=message, host=host, port=tmpl.port)
    return Plan(status, secret_doc, app_doc)


def _backups(text: Any) -> list[dict[str, Any]]:
    if not text:
        return []
    try:
        items = json.loads(str(text))
    except ValueError:
        return []
    if not isinstance(items, list):
        return []
    keep = ("id", "path", "bytes", "time", "node")
    out = [{k: i[k] for k in keep if k in i} for i in items if isinstance(i, dict) and "id" in i]
    return out[-_KEEP_BACKUPS:]


# ---- the shell ------------------------------------------------------------------------------


class ManagedServiceController:
    """Follows the store and keeps every ManagedService's Secret, server App and status."""

    def __init__(self, store: Store, layout: Layout | None = None, *, tick: float = 5.0) -> None:
        self.store = store
        root = os.environ.get("KLED_SERVICES_ROOT") or DEFAULT_ROOT
        self.layout = layout or Layout(root)
        self._tick = tick
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    async def start(self, after: int | None = None) -> None:
        """Follow the log from ``after`` (default: now) and the clock."""
        self._task = asyncio.create_task(self._run(after), name="managed-services")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self, after: int | None) -> None:
        seq = await self.store.revision() if after is None else after
        loop = asyncio.get_running_loop()
        last_all = -self._tick
        relist = False
        while True:
            try:
                if relist:  # from now on, after everything as it is now
                    seq, relist, last_all = await self.store.revision(), False, -self._tick
                if loop.time() - last_all >= self._tick:
                    # Every service now and then: node phases, replica reports, lost events.
                    last_all = loop.time()
                    await self._all()
                batch = await self.store.events_after(seq, 500)
                refs: set[tuple[str, str, str]] = set()
                for ev in batch:
                    seq = ev.seq
                    ref, everything = _affected(ev)
                    if everything:
                        last_all = -self._tick
                    if ref is not None:
                        refs.add(ref)
                for ref in sorted(refs):
                    await self._guarded(ref)
                if not batch:
                    await self.store.wait_for_change(self._tick)
            except asyncio.CancelledError:
                raise
            except Gone:  # fell behind the compacted event log: look at everything again
                log.warning("managed services: events were compacted unread; listing again")
                relist = True
            except Exception:
                log.exception("managed services: a round failed; retrying")
                await asyncio.sleep(1.0)

    async def _all(self) -> None:
        found = {_ref(d) for d in (await self.store.list("ManagedService")).items}
        found |= owner_refs((await self.store.list("App")).items, MANAGED_BY)
        for ref in sorted(found):
            await self._guarded(ref)

    async def _guarded(self, ref: tuple[str, str, str]) -> None:
        try:
            await self.reconcile(ref)
        except KledError as e:
            log.warning("managedservice/%s/%s.%s: %s; retrying", ref[0], ref[1], ref[2], e)

    async def reconcile(self, ref: tuple[str, str, str]) -> None:
        async with self._lock:
            await self._reconcile(ref)

    async def _reconcile(self, ref: tuple[str, str, str]) -> None:
        team, env, name = ref
        ms = await self.store.find(Key("ManagedService", team, env, name))
        app_key = Key("App", team, env, server_app_name(name))
        app = await self.store.find(app_key)
        if ms is None or (ms.get("metadata") or {}).get("deletionTimestamp"):
            await self._remove(ref, app)
            return
        spec = ms.get("spec") or {}
        stored = await self.store.find(Key("ServiceTemplate", "", "", str(spec.get("template"))))
        template = find_template(str(spec.get("template")), stored)
        secret = await self.store.find(Key("Secret", team, env, secret_name(ms)))
        if secret is not None and _owner(secret) != name:
            await self._status(ms, {**(ms.get("status") or {}), "phase": "Failed",
                                    "reason": "SecretTaken",
                                    "message": f"secret {secret_name(ms)!r} exists and is not "
                                    "this service's: set spec.secretName"})  # fmt: skip
            return
        if app is not None and _owner(app) != name:
            await self._status(ms, {**(ms.get("status") or {}), "phase": "Failed",
                                    "reason": "AppNameTaken",
                                    "message": f"app {server_app_name(name)!r} exists and is "
                                    "not this service's server"})  # fmt: skip
            return
        nodes = {
            d["metadata"]["name"]: str((d.get("status") or {}).get("phase") or "")
            for d in (await self.store.list("Node")).items
        }
        out = plan(ms, template, secret, app, nodes, self.layout,
                   new_password=random.token_hex(16))  # fmt: skip
        if out.secret is not None:
            await self._put(out.secret, secret)
        if out.app is not None:
            await self._put(out.app, app)
        await self._status(ms, out.status)

    async def _put(self, doc: dict[str, Any], current: dict[str, Any] | None) -> None:
        wanted = validate(doc)
        wanted.pop("status", None)
        if current is None:
            try:
                await self.store.create(wanted)
                log.info("%s/%s: created for its managed service", doc["kind"].lower(),
                         doc["metadata"]["name"])  # fmt: skip
            except Conflict:
                pass  # created meanwhile: the next round compares it
            return
        # the Secret's annotations are ours; an App's may be a user's (kled app restart)
        compared = ("labels", "annotations") if doc["kind"] == "Secret" else ("labels",)
        same_labels = all(
            (current["metadata"].get(k) or {}) == (wanted["metadata"].get(k) or {})
            for k in compared
        )
        part = "data" if doc["kind"] == "Secret" else "spec"
        if current.get(part) == wanted.get(part) and same_labels:
            return
        wanted["metadata"]["resourceVersion"] = current["metadata"]["resourceVersion"]
        with contextlib.suppress(Conflict):
            await self.store.update(wanted, expected_version=current["metadata"]["resourceVersion"])

    async def _status(self, ms: dict[str, Any], status: dict[str, Any]) -> None:
        key = Key.of(ms)
        for _ in range(5):
            current = await self.store.find(key)
            if current is None:
                return
            merged = {**(current.get("status") or {}), **status}
            # the backup route appends to status.backups: keep what it recorded meanwhile
            both = [*((current.get("status") or {}).get("backups") or []),
                    *(status.get("backups") or [])]  # fmt: skip
            listed = recorded({"metadata": current["metadata"], "status": {"backups": both}})
            if listed:
                merged["backups"] = listed
            # meshctl owns ip/dns: keep what it wrote meanwhile
            for field_name in ("ip", "dns"):
                if field_name in (current.get("status") or {}):
                    merged[field_name] = current["status"][field_name]
            if merged == current.get("status"):
                return
            try:
                await self.store.update_status(
                    key, merged, expected_version=current["metadata"]["resourceVersion"]
                )
                return
            except Conflict:
                continue
            except NotFound:
                return

    async def _remove(self, ref: tuple[str, str, str], app: dict[str, Any] | None) -> None:
        team, env, name = ref
        if app is not None and _owner(app) == name:
            with contextlib.suppress(NotFound):
                await self.store.delete(Key.of(app))
                log.info("app/%s/%s.%s: deleted with its managed service", team, env,
                         app["metadata"]["name"])  # fmt: skip
        for doc in (await self.store.list("Secret", team=team)).items:
            m = doc["metadata"]
            if (m.get("environment") or "") == env and _owner(doc) == name:
                with contextlib.suppress(NotFound):
                    await self.store.delete(Key.of(doc))


def _owner(doc: Mapping[str, Any]) -> str | None:
    labels = (doc.get("metadata") or {}).get("labels") or {}
    value = labels.get(MANAGED_BY)
    return str(value) if value else None


def _ref(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    m = doc["metadata"]
    return (str(m["team"]), str(m.get("environment") or ""), str(m["name"]))


def _affected(ev: Event) -> tuple[tuple[str, str, str] | None, bool]:
    """The service an event concerns, or whether every service must be looked at."""
    if ev.kind == "ServiceTemplate":
        return None, True
    if ev.kind == "ManagedService":
        return (ev.team, ev.environment, ev.name), False
    if ev.kind in ("App", "Secret"):
        owner = _owner(ev.object or {})
        if owner:
            return (ev.team, ev.environment, owner), False
    return None, False
