"""Rolling updates of an app's replicas, as pure functions of what runs and what is ready.

A *revision* is one version of what an app's replicas run: its template (the spec
without ``replicas``, ``strategy``, ``paused``, ``progressDeadlineSeconds`` and
``nodeSelector``, plus the restart nonce) and the environment resolved from its configs
and secrets. Its hash names it; every replica carries the hash of the revision it runs
(``App.status.replicas[].revision``), and ``App.status.revisions`` keeps the last
:data:`HISTORY` templates with their numbers, newest last, as ``kubectl rollout history``
shows a Deployment's ReplicaSets.

:func:`plan` is one step of the rollout, as the Deployment controller takes them: given
the replicas there are (index, revision, ready) and the revision wanted, it returns the
replicas there should be (index → revision). With ``RollingUpdate`` it adds replicas of
the new revision while no more than ``replicas + maxSurge`` exist, and removes old ones
while at least ``replicas - maxUnavailable`` stay ready, so each step waits for
readiness. ``Recreate`` gives every index the new revision at once (the agent restarts
each replica in place). A paused or stalled rollout only scales. New replicas of a
rollout take indexes above every index in use, so an index freed in this rollout (its
replica may still be draining on its node) is never reused by it.

:func:`progress` tells whether the rollout is Progressing, Complete, Paused or Stalled
(no progress for ``progressDeadlineSeconds``), for ``App.status.rollout``.

No clock and no I/O: time comes in as arguments, and the unit tests drive these
functions as state transitions.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

#: spec keys that say how many replicas run and how they are rolled, not what they run
NOT_TEMPLATE = frozenset(
    {"replicas", "strategy", "paused", "progressDeadlineSeconds", "nodeSelector", "autoscale"}
)
#: the annotation ``kled app restart`` and ``kled rollout restart`` set (see ``desired``)
RESTARTED_AT = "kled.io/restartedAt"
#: revisions kept in ``App.status.revisions``
HISTORY = 10
DEFAULT_DEADLINE = 600

PROGRESSING = "Progressing"
COMPLETE = "Complete"
PAUSED = "Paused"
STALLED = "Stalled"
DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"


@dataclass(frozen=True)
class Replica:
    """One replica as the planner sees it."""

    index: int
    revision: str
    ready: bool = False


@dataclass(frozen=True)
class Strategy:
    """The app's ``spec.strategy`` with its limits as written (ints or percentages)."""

    type: str = "RollingUpdate"
    max_surge: int | str = "25%"
    max_unavailable: int | str = "25%"


# ---- templates and revisions ----------------------------------------------------------


def template(app: Mapping[str, Any]) -> dict[str, Any]:
    """What the replicas of ``app`` run, as stored in its revision history."""
    spec = app.get("spec") or {}
    annotations = (app.get("metadata") or {}).get("annotations") or {}
    return {
        "spec": {k: copy.deepcopy(v) for k, v in sorted(spec.items()) if k not in NOT_TEMPLATE},
        "restartedAt": annotations.get(RESTARTED_AT),
    }


def template_hash(tmpl: Mapping[str, Any], env: Mapping[str, str]) -> str:
    """The revision's name: a hash of its template and its resolved environment."""
    text = json.dumps([tmpl, sorted(env.items())], sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def spec_inputs(app: Mapping[str, Any], env: Mapping[str, str]) -> tuple[Any, ...] | None:
    """What an app's replicas are made of, as a key to remember them by: its uid, its
    generation (the store bumps it on every change of the spec), its restart stamp and
    its resolved environment. None for a document without a generation (not from the
    store): nothing made from it may be remembered."""
    meta = app.get("metadata") or {}
    generation = meta.get("generation")
    if generation is None:
        return None
    stamp = (meta.get("annotations") or {}).get(RESTARTED_AT)
    return (meta.get("uid"), generation, stamp, sorted(env.items()))


class Templates:
    """Each app's template and revision hash, kept while what they are made of stays: the
    app's uid, its generation (the store bumps it on every change of the spec), its restart
    stamp and its resolved environment.

    A round of scheduling asks for every app's; building and hashing them anew (a deep
    copy and a JSON dump of each spec) was most of a round at 1,000 apps. A document
    without a generation (not from the store) is never taken from here. The template is
    shared between calls: nobody may change it."""

    def __init__(self) -> None:
        self._held: dict[Any, tuple[tuple[Any, ...] | None, dict[str, Any], str]] = {}

    def of(
        self, ref: Any, app: Mapping[str, Any], env: Mapping[str, str]
    ) -> tuple[dict[str, Any], str]:
        key = spec_inputs(app, env)
        held = self._held.get(ref)
        if key is not None and held is not None and held[0] == key:
            return held[1], held[2]
        tmpl = template(app)
        digest = template_hash(tmpl, env)
        self._held[ref] = (key, tmpl, digest)
        return tmpl, digest

    def forget(self, ref: Any) -> None:
        self._held.pop(ref, None)


def with_template(app: Mapping[str, Any], tmpl: Mapping[str, Any]) -> dict[str, Any]:
    """``app`` as it was at the revision of ``tmpl``: its template keys from ``tmpl``, the
    rest (replicas, strategy, nodeSelector) as now."""
    out = copy.deepcopy(dict(app))
    spec = {k: v for k, v in (out.get("spec") or {}).items() if k in NOT_TEMPLATE}
    spec.update(copy.deepcopy(dict(tmpl.get("spec") or {})))
    out["spec"] = spec
    meta = out.setdefault("metadata", {})
    annotations = dict(meta.get("annotations") or {})
    if tmpl.get("restartedAt") is None:
        annotations.pop(RESTARTED_AT, None)
    else:
        annotations[RESTARTED_AT] = tmpl["restartedAt"]
    meta["annotations"] = annotations
    return out


def record(
    history: Sequence[Mapping[str, Any]], revision: str, tmpl: Mapping[str, Any], now: str
) -> tuple[list[dict[str, Any]], int]:
    """The history with ``revision`` as its newest entry, and that entry's number.

    The newest entry already being ``revision`` changes nothing. An older entry with the
    same hash (an undo) moves to the end with a new number, as Kubernetes renumbers the
    ReplicaSet it rolls back to; only the last :data:`HISTORY` entries are kept."""
    entries = [dict(e) for e in history if isinstance(e, Mapping)]
    if entries and entries[-1].get("hash") == revision:
        return entries, int(entries[-1].get("revision") or 0)
    number = max((int(e.get("revision") or 0) for e in entries), default=0) + 1
    entries = [e for e in entries if e.get("hash") != revision]
    entries.append({"revision": number, "hash": revision, "createdAt": now, "template": dict(tmpl)})
    return entries[-HISTORY:], number


def find(history: Sequence[Mapping[str, Any]], number: int) -> Mapping[str, Any] | None:
    return next((e for e in history if int(e.get("revision") or 0) == number), None)


# ---- the strategy ---------------------------------------------------------------------------


def strategy_of(spec: Mapping[str, Any]) -> Strategy:
    """``spec.strategy`` (flat or with ``rollingUpdate``) with the defaults filled in."""
    doc = spec.get("strategy") or {}
    nested = doc.get("rollingUpdate") or {}
    surge = doc.get("maxSurge", nested.get("maxSurge", "25%"))
    unavailable = doc.get("maxUnavailable", nested.get("maxUnavailable", "25%"))
    return Strategy(
        type=str(doc.get("type") or "RollingUpdate"),
        max_surge="25%" if surge is None else surge,
        max_unavailable="25%" if unavailable is None else unavailable,
    )


def scaled(value: int | str, replicas: int, *, round_up: bool) -> int:
    """A limit as a number of replicas: a percentage of ``replicas``, rounded up for
    maxSurge and down for maxUnavailable, as Kubernetes does."""
    if isinstance(value, int):
        return value
    share = int(str(value).rstrip("%")) * replicas / 100
    return math.ceil(share) if round_up else math.floor(share)


def limits(strategy: Strategy, replicas: int) -> tuple[int, int]:
    """(surge, unavailable) in replicas; never both 0, or no step could be taken."""
    surge = scaled(strategy.max_surge, replicas, round_up=True)
    unavailable = scaled(strategy.max_unavailable, replicas, round_up=False)
    if surge == 0 and unavailable == 0:
        unavailable = 1
    return surge, unavailable


# ---- one step --------------------------------------------------------------------------------


def plan(
    replicas: int,
    target: str,
    current: Sequence[Replica],
    strategy: Strategy,
    *,
    hold: bool = False,
) -> dict[int, str]:
    """The replicas there should be after one step towards ``replicas`` of ``target``.

    ``hold`` (a paused or stalled rollout) keeps every revision as it is and only scales.
    """
    have = {r.index: r for r in current}
    old = [r for r in current if r.revision != target]
    if not old:
        return _scale(have, replicas, target)
    if strategy.type == "Recreate" and not hold:
        out = _scale(have, replicas, target)
        return {index: target for index in out}
    surge, unavailable = limits(strategy, replicas)
    if hold:
        return _hold(have, replicas, replicas + surge, _newest(current, target))
    out = {r.index: r.revision for r in current}
    ready = {r.index for r in current if r.ready}
    new = sorted((r for r in current if r.revision == target), key=_removal_order)
    # Fewer replicas wanted than new ones exist (a scale-down mid-rollout).
    while len(new) > replicas:
        del out[new.pop(0).index]
    top = max(have, default=-1)

    def up() -> None:
        # New replicas while the total stays within replicas + surge.
        nonlocal top
        room = min(replicas - sum(1 for rev in out.values() if rev == target),
                   replicas + surge - len(out))  # fmt: skip
        for _ in range(max(0, room)):
            top += 1
            out[top] = target

    up()
    # Down: old replicas while enough stay ready; unready old ones go first.
    minimum = replicas - unavailable
    new_unready = sum(1 for i, rev in out.items() if rev == target and i not in ready)
    budget = len(out) - minimum - new_unready
    for r in sorted(old, key=_removal_order):
        if budget <= 0:
            break
        if r.ready and sum(1 for i in out if i in ready) - 1 < minimum:
            continue
        del out[r.index]
        budget -= 1
    up()  # into the room the old ones left
    return out


def _hold(have: Mapping[int, Replica], low: int, high: int, revision: str) -> dict[int, str]:
    """A held rollout: no replica changes revision; below ``low`` replicas, add some of
    ``revision``; above ``high``, remove (unready first)."""
    out = {i: r.revision for i, r in have.items()}
    for r in sorted(have.values(), key=_removal_order)[: max(0, len(out) - high)]:
        del out[r.index]
    top = max(have, default=-1)
    while len(out) < low:
        top += 1
        out[top] = revision
    return out


def _removal_order(r: Replica) -> tuple[bool, int]:
    """Unready replicas first, then the highest index."""
    return (r.ready, -r.index)


def _newest(current: Sequence[Replica], target: str) -> str:
    """The revision a held rollout scales up with: that of the most replicas, the
    highest index breaking a tie."""
    counts: dict[str, tuple[int, int]] = {}
    for r in current:
        n, top = counts.get(r.revision, (0, -1))
        counts[r.revision] = (n + 1, max(top, r.index))
    return max(counts, key=lambda rev: counts[rev]) if counts else target


def _scale(have: Mapping[int, Replica], replicas: int, revision: str) -> dict[int, str]:
    """Scale without a rollout: remove the highest indexes, add the lowest free ones."""
    out = {i: r.revision for i, r in have.items()}
    for index in sorted(out, reverse=True)[: max(0, len(out) - replicas)]:
        del out[index]
    index = 0
    while len(out) < replicas:
        if index not in out:
            out[index] = revision
        index += 1
    return out


# ---- how far it got ----------------------------------------------------------------------


@dataclass(frozen=True)
class Progress:
    """``App.status.rollout``, as data."""

    revision: int
    phase: str
    updated: int
    ready_updated: int
    old: int
    #: when the counts last changed (ISO time); the deadline runs from there
    since: str
    reason: str | None = None
    message: str | None = None

    def counts(self) -> tuple[int, int, int]:
        return (self.updated, self.ready_updated, self.old)

    def to_status(self) -> dict[str, Any]:
        return {
            "revision": self.revision,
            "phase": self.phase,
            "updatedReplicas": self.updated,
            "readyUpdatedReplicas": self.ready_updated,
            "oldReplicas": self.old,
            "lastProgressTime": self.since,
            "reason": self.reason,
            "message": self.message,
        }


def progress(
    previous: Mapping[str, Any] | None,
    *,
    revision: int,
    replicas: int,
    target: str,
    current: Sequence[Replica],
    paused: bool,
    deadline_seconds: int,
    now: datetime,
) -> Progress:
    """Where the rollout to ``target`` (number ``revision``) stands now.

    ``previous`` is the last ``status.rollout``: its ``lastProgressTime`` carries over while
    the counts stay the same. A stalled rollout stays stalled until its counts change (a
    new replica got ready after all) or another revision is wanted."""
    new = [r for r in current if r.revision == target]
    counts = (len(new), sum(1 for r in new if r.ready), len(current) - len(new))
    prev = dict(previous or {})
    same_target = int(prev.get("revision") or 0) == revision
    prev_counts = (
        int(prev.get("updatedReplicas") or 0),
        int(prev.get("readyUpdatedReplicas") or 0),
        int(prev.get("oldReplicas") or 0),
    )
    since = str(prev.get("lastProgressTime") or "")
    if not same_target or prev_counts != counts or not since or prev.get("phase") == PAUSED:
        since = now.isoformat().replace("+00:00", "Z")
    done = counts == (replicas, replicas, 0)

    def made(phase: str, reason: str | None = None, message: str | None = None) -> Progress:
        return Progress(revision, phase, counts[0], counts[1], counts[2], since, reason, message)

    if done:
        return made(COMPLETE, "NewReplicasAvailable", f"revision {revision} is rolled out")
    if same_target and prev.get("phase") == STALLED and prev_counts == counts:
        return made(STALLED, prev.get("reason"), prev.get("message"))
    if paused:
        return made(PAUSED, "DeploymentPaused", "the rollout is paused: `kled rollout resume`")
    started = datetime.fromisoformat(since.replace("Z", "+00:00"))
    if (now - started).total_seconds() > deadline_seconds:
        return made(
            STALLED,
            DEADLINE_EXCEEDED,
            f"revision {revision} made no progress for {deadline_seconds}s "
            f"({counts[1]} of {replicas} updated replicas ready); the old replicas keep "
            "serving: fix the app, or `kled rollout undo`",
        )
    return made(
        PROGRESSING,
        "ReplicaSetUpdated",
        f"{counts[1]} of {replicas} updated replicas ready, {counts[2]} old replicas left",
    )


def holds(phase: str) -> bool:
    """Whether a rollout in this phase takes no more steps (it only scales)."""
    return phase in (PAUSED, STALLED)


@dataclass(frozen=True)
class Target:
    """What the workloads controller decided for one app this round, for its status."""

    revision: str
    number: int
    history: list[dict[str, Any]]
    paused: bool
    deadline_seconds: int
    now: datetime


def changes(previous: Mapping[str, Any] | None, now: Progress) -> list[tuple[str, str, str]]:
    """(type, reason, message) of the events a move from ``previous`` to ``now`` deserves."""
    prev = dict(previous or {})
    out: list[tuple[str, str, str]] = []
    if int(prev.get("revision") or 0) != now.revision and now.phase != COMPLETE:
        out.append(("Normal", "RolloutStarted", f"rolling out revision {now.revision}"))
    if prev.get("phase") == now.phase and int(prev.get("revision") or 0) == now.revision:
        return out
    if now.phase == STALLED:
        out.append(("Warning", DEADLINE_EXCEEDED, now.message or ""))
    elif now.phase == COMPLETE and prev:
        out.append(("Normal", "RolloutComplete", now.message or ""))
    elif now.phase == PAUSED:
        out.append(("Normal", "RolloutPaused", now.message or ""))
    return out
