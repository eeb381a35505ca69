"""Swapping an app for a dev replica and back, and the leases that bound a dev session.

``kled dev APP`` turns the app into its own dev replica: the same document — env,
``envFrom`` configs and secrets, ports (so the same service IP and DNS name, and the
service's traffic), resources, runtime, image, working dir, node selector — with one
replica whose command only holds the replica open (``HOLDER``); the developer's command
then runs inside it through exec streams, from the synced tree. Probes and lifecycle hooks
go (the dev command is restarted at will and may not answer yet), and
``KLED_DEV_SESSION`` tells the replica apart from the app's own.

The app's original spec is kept in the app itself, in the ``kled.io/dev-session``
annotation, so the swap and its undo are each one write, survive a control plane restart,
and the restore puts back exactly what was there (the spec compares equal to the one
before). ``lapsed`` is the pure clock of the sessions: a session renewed within its grace
period lives on; one that is not (a laptop that vanished) is due for a restore. The
renewals themselves are kept where every control plane replica sees them
(``kled.bus.dev_leases``).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from kled.errors import Conflict, InvalidInput

DEV_ANNOTATION = "kled.io/dev-session"
SESSION_ENV = "KLED_DEV_SESSION"
#: keeps a dev replica alive and ends at once on SIGTERM, in any image with a POSIX shell
HOLDER = ["sh", "-c", "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait $!; done"]
#: spec fields a dev replica does without
_DROPPED = ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle", "args")


@dataclass(frozen=True)
class DevSession:
    """What the annotation holds: who, since when, and the spec to put back."""

    session: str
    user: str
    since: str
    spec: dict[str, Any]

    def to_annotation(self) -> str:
        return json.dumps(
            {"session": self.session, "user": self.user, "since": self.since, "spec": self.spec},
            separators=(",", ":"),
            sort_keys=True,
        )


def session_of(doc: dict[str, Any]) -> DevSession | None:
    """The dev session an app document is in, or None."""
    raw = ((doc.get("metadata") or {}).get("annotations") or {}).get(DEV_ANNOTATION)
    if not raw:
        return None
    try:
        data = json.loads(raw)
        return DevSession(
            str(data["session"]), str(data["user"]), str(data["since"]), dict(data["spec"])
        )
    except (ValueError, KeyError, TypeError) as err:
        raise InvalidInput(
            f"the {DEV_ANNOTATION} annotation is not Kled's: {err}", field="metadata.annotations"
        ) from err


def dev_spec(spec: dict[str, Any], session: str) -> dict[str, Any]:
    """The spec of the app's dev replica."""
    out = {k: copy.deepcopy(v) for k, v in spec.items() if k not in _DROPPED}
    out["replicas"] = 1
    out["command"] = list(HOLDER)
    out["env"] = {**(spec.get("env") or {}), SESSION_ENV: session}
    out["terminationGracePeriodSeconds"] = 2
    out["paused"] = False
    return out


def swapped_in(doc: dict[str, Any], session: DevSession) -> dict[str, Any]:
    """The app document with its dev replica in, and the original spec kept aside."""
    current = session_of(doc)
    if current is not None:
        raise Conflict(
            f"app {doc['metadata']['name']} is in the dev session of {current.user} since "
            f"{current.since}: end it first (kled dev stop {doc['metadata']['name']})"
        )
    out = copy.deepcopy(doc)
    out.pop("status", None)
    meta = out.setdefault("metadata", {})
    meta["annotations"] = {**(meta.get("annotations") or {}), DEV_ANNOTATION: ""}
    kept = DevSession(session.session, session.user, session.since, copy.deepcopy(doc["spec"]))
    meta["annotations"][DEV_ANNOTATION] = kept.to_annotation()
    out["spec"] = dev_spec(doc.get("spec") or {}, session.session)
    return out


def restored(doc: dict[str, Any]) -> dict[str, Any] | None:
    """The app document as it was before its dev session; None if it is in none."""
    session = session_of(doc)
    if session is None:
        return None
    out = copy.deepcopy(doc)
    out.pop("status", None)
    meta = out["metadata"]
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items()}
    annotations.pop(DEV_ANNOTATION, None)
    if annotations:
        meta["annotations"] = annotations
    else:
        meta.pop("annotations", None)
    out["spec"] = copy.deepcopy(session.spec)
    return out


def lapsed(
    leases: Mapping[str, tuple[str, float]], now: float, grace: float
) -> list[tuple[str, str]]:
    """(app, session) of every lease not renewed within ``grace`` seconds of ``now``;
    a lease is (session, last renewal), both times in the same clock."""
    return [(app, session) for app, (session, at) in sorted(leases.items()) if now - at > grace]
