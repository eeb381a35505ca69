"""The jobs controller: a Job's runs, each attempt of a run an App of one replica.

A run of a Job is tried by attempts; each attempt is an App of the Job's environment
(``<job>-<run>-<attempt>``, labelled ``kled.io/job``, ``kled.io/job-run``,
``kled.io/job-attempt``) with one replica and ``restartPolicy: Never``, so the scheduler,
the agents and their runtimes run it as any replica, and ``kled logs`` reads its output for
as long as the run is kept in the history. An attempt is over when its replica is
``Succeeded`` (exit 0) or ``Failed``; a failed attempt is followed by another while the
run has had no more than ``backoffLimit`` failures, else the run is Failed
(``BackoffLimitExceeded``). A run still going ``activeDeadlineSeconds`` after it started
is stopped (its App scaled to 0) and Failed (``DeadlineExceeded``).

Runs start: once for a Job without ``schedule``; at each time of the cron ``schedule``
(``resources/cron.py``) unless ``suspend``, with ``concurrencyPolicy`` deciding what to do
beside a run still going (Allow: another; Forbid: skip this time; Replace: stop it, start
anew); and whenever the ``kled.io/run-now`` annotation takes a new value (``kled job
run-now``). Finished runs beyond ``successfulJobsHistoryLimit``/``failedJobsHistoryLimit``
go with their Apps; the newest run always stays.

Order of writes: the Job's ``status`` records a run or an attempt *before* its App is
created, and an attempt the status names but the store lacks is created on the next pass,
so a controller that dies between the two neither loses nor doubles an attempt.

:func:`plan` is pure (documents and a clock in, documents out); :class:`JobController`
only reads and writes the store.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from kled.control.owners import owner_refs
from kled.errors import Conflict, Gone, KledError, NotFound
from kled.resources import clusterservices
from kled.resources.cron import next_after
from kled.resources.cron import parse as parse_schedule
from kled.resources.kinds import validate
from kled.store.objects import Event, Key, Store

log = logging.getLogger(__name__)

JOB_LABEL = "kled.io/job"
RUN_LABEL = "kled.io/job-run"
ATTEMPT_LABEL = "kled.io/job-attempt"
#: set by ``kled job run-now``: each new value starts a run
RUN_NOW = "kled.io/run-now"
#: how often every App is looked at for attempts of a Job that is gone
ORPHAN_SCAN_SECONDS = 30.0

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"
ACTIVE = (PENDING, RUNNING)
#: the fields of an App's template a Job sets
_CLUSTER_LABELS = (clusterservices.CLUSTER_LABEL, clusterservices.NAMESPACE_LABEL)
_TEMPLATE = ("runtime", "command", "args", "workingDir", "image", "env", "fieldEnv",
             "envFrom", "resources", "nodeSelector")  # fmt: skip


def stamp(when: datetime) -> str:
    return when.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _when(text: Any) -> datetime | None:
    if not text:
        return None
    try:
        found = datetime.fromisoformat(str(text))
    except ValueError:
        return None
    return found if found.tzinfo else found.replace(tzinfo=UTC)


def attempt_name(job: str, run: int, attempt: int) -> str:
    """The App of attempt ``attempt`` of run ``run`` (a DNS label: at most 63 characters)."""
    tail = f"-{run}-{attempt}"
    return f"{job[: 63 - len(tail)].rstrip('-')}{tail}"


@dataclass
class Plan:
    """What the store should hold for one Job."""

    status: dict[str, Any]
    #: the Apps of the current attempts (created when missing)
    apps: list[dict[str, Any]] = field(default_factory=list)
    #: Apps to stop (scaled to 0): a run past its deadline or replaced
    stop: list[str] = field(default_factory=list)
    #: Apps to delete: runs gone from the history
    delete: list[str] = field(default_factory=list)


def _outcome(app: Mapping[str, Any] | None) -> tuple[str, str]:
    """(Pending|Running|Succeeded|Failed, why) of an attempt from its App's replica 0."""
    replicas = ((app or {}).get("status") or {}).get("replicas") or []
    entry = next((r for r in replicas if r.get("index") == 0), None)
    if entry is None:
        return PENDING, "waiting for a node"
    state = entry.get("state")
    if state == SUCCEEDED:
        return SUCCEEDED, "exited 0"
    if state == FAILED:
        code = entry.get("lastExitCode")
        why = f"exit code {code}" if code is not None else str(entry.get("message") or "")
        reason = entry.get("reason")
        return FAILED, f"{reason}: {why}" if reason and reason != "Error" else why
    if state == RUNNING:
        return RUNNING, f"running on node {entry.get('node')}"
    return PENDING, str(entry.get("message") or entry.get("reason") or state or "")


def attempt_app(job: Mapping[str, Any], run: int, attempt: int) -> dict[str, Any]:
    meta, spec = job["metadata"], job.get("spec") or {}
    template = {k: copy.deepcopy(spec[k]) for k in _TEMPLATE if k in spec}
    labels = {JOB_LABEL: meta["name"], RUN_LABEL: str(run), ATTEMPT_LABEL: str(attempt)}
    # a Kled Cluster's Job: its pods are the cluster's (its nodes, its pod network)
    labels |= {k: v for k, v in (meta.get("labels") or {}).items() if k in _CLUSTER_LABELS}
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            "name": attempt_name(meta["name"], run, attempt),
            "team": meta["team"],
            "environment": meta["environment"],
            "labels": labels,
        },
        "spec": {**template, "replicas": 1, "restartPolicy": "Never"},
    }


def _finish(run: dict[str, Any], phase: str, reason: str, message: str, now: datetime) -> None:
    run.update(phase=phase, reason=reason, message=message, completionTime=stamp(now))


def _observe(
    run: dict[str, Any], spec: Mapping[str, Any], apps: Mapping[str, Any], now: datetime, out: Plan
) -> None:
    """Move an active run on from what its current attempt's App says."""
    job_name = str(run["job"])
    attempts = int(run["attempts"])
    name = attempt_name(job_name, int(run["run"]), attempts)
    deadline = spec.get("activeDeadlineSeconds")
    started = _when(run.get("startTime")) or now
    if deadline is not None and (now - started).total_seconds() >= int(deadline):
        _finish(run, FAILED, "DeadlineExceeded",
                f"still going after activeDeadlineSeconds ({deadline}s): stopped", now)  # fmt: skip
        out.stop.append(name)
        return
    phase, why = _outcome(apps.get(name))
    if phase == SUCCEEDED:
        _finish(run, SUCCEEDED, "Completed", f"attempt {attempts} {why}", now)
    elif phase == FAILED:
        limit = int(spec.get("backoffLimit", 6))
        if attempts > limit:
            _finish(run, FAILED, "BackoffLimitExceeded",
                    f"{attempts} attempts failed (backoffLimit {limit}); the last: {why}",
                    now)  # fmt: skip
        else:
            run.update(attempts=attempts + 1, phase=PENDING, reason="BackOff",
                       message=f"attempt {attempts} failed ({why}); trying again")  # fmt: skip
    else:
        run.update(phase=phase, reason="" if phase == RUNNING else run.get("reason", ""),
                   message=f"attempt {attempts}: {why}")  # fmt: skip


def _trim(runs: list[dict[str, Any]], spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The runs the history keeps: every active one, the newest, and the limits' worth."""
    keep_ok = int(spec.get("successfulJobsHistoryLimit", 3))
    keep_failed = int(spec.get("failedJobsHistoryLimit", 1))
    kept: list[dict[str, Any]] = []
    for position, run in enumerate(reversed(runs)):
        if run["phase"] == SUCCEEDED:
            keep_ok -= 1
            if keep_ok < 0 and position > 0:
                continue
        elif run["phase"] == FAILED:
            keep_failed -= 1
            if keep_failed < 0 and position > 0:
                continue
        kept.append(run)
    kept.reverse()
    return kept


def plan(job: Mapping[str, Any], apps: Mapping[str, Mapping[str, Any]], now: datetime) -> Plan:
    """The next status of ``job`` and the Apps it needs, from its owned ``apps`` by name."""
    meta, spec = job["metadata"], job.get("spec") or {}
    status = copy.deepcopy(dict(job.get("status") or {}))
    runs: list[dict[str, Any]] = [dict(r) for r in status.get("runs") or []]
    out = Plan(status=status)
    for run in runs:
        run["job"] = meta["name"]
        if run.get("phase") in ACTIVE:
            _observe(run, spec, apps, now, out)
            if run["phase"] == SUCCEEDED:
                status["succeeded"] = int(status.get("succeeded") or 0) + 1
            elif run["phase"] == FAILED:
                status["failed"] = int(status.get("failed") or 0) + 1

    def start(why: str, scheduled: datetime | None = None) -> None:
        number = int(status.get("nextRun") or 1)
        status["nextRun"] = number + 1
        run: dict[str, Any] = {"job": meta["name"], "run": number, "phase": PENDING,
                               "reason": why, "message": "attempt 1: waiting for a node",
                               "attempts": 1, "startTime": stamp(now)}  # fmt: skip
        if scheduled is not None:
            run["scheduledTime"] = stamp(scheduled)
        runs.append(run)

    wanted_now = (meta.get("annotations") or {}).get(RUN_NOW)
    if wanted_now and wanted_now != status.get("runNow"):
        status["runNow"] = wanted_now
        start("RunNow")
    schedule_text = spec.get("schedule")
    if schedule_text:
        schedule = parse_schedule(str(schedule_text))
        created = _when(meta.get("creationTimestamp")) or now
        due = _when(status.get("nextScheduleTime")) or next_after(schedule, created)
        if due is not None and now >= due and not spec.get("suspend"):
            active = [r for r in runs if r["phase"] in ACTIVE]
            policy = spec.get("concurrencyPolicy", "Allow")
            if active and policy == "Forbid":
                status["lastSkippedTime"] = stamp(due)
            else:
                for run in active if policy == "Replace" else []:
                    _finish(run, FAILED, "Replaced",
                            f"replaced by the run scheduled at {stamp(due)}", now)  # fmt: skip
                    status["failed"] = int(status.get("failed") or 0) + 1
                    out.stop.append(attempt_name(meta["name"], run["run"], run["attempts"]))
                start("Scheduled", due)
            status["lastScheduleTime"] = stamp(due)
        if due is not None and now >= due:
            due = next_after(schedule, now)
        if due is None:
            status.pop("nextScheduleTime", None)
        else:
            status["nextScheduleTime"] = stamp(due)
    elif not status.get("nextRun"):
        start("Created")

    kept = _trim(runs, spec)
    kept_numbers = {int(r["run"]) for r in kept}
    for name, app in sorted(apps.items()):
        labels = (app.get("metadata") or {}).get("labels") or {}
        if not str(labels.get(RUN_LABEL, "")).isdigit():
            continue
        if int(labels[RUN_LABEL]) not in kept_numbers:
            out.delete.append(name)
    for run in kept:
        run.pop("job", None)
        if run["phase"] in ACTIVE:
            out.apps.append(attempt_app(job, int(run["run"]), int(run["attempts"])))
    status["runs"] = kept
    status["active"] = sum(1 for r in kept if r["phase"] in ACTIVE)
    _summarize(status, kept, spec)
    return out


def _summarize(status: dict[str, Any], runs: list[dict[str, Any]], spec: Mapping[str, Any]) -> None:
    """The Job's own phase and times: those of its newest run."""
    for key in ("reason", "message", "attempts", "startTime", "completionTime"):
        status.pop(key, None)
    if runs:
        last = runs[-1]
        status["phase"] = last["phase"]
        for key in ("reason", "message", "attempts", "startTime", "completionTime"):
            if last.get(key) not in (None, ""):
                status[key] = last[key]
        return
    status["phase"] = PENDING
    if spec.get("suspend"):
        status.update(reason="Suspended", message="no scheduled run while spec.suspend is true")
    elif status.get("nextScheduleTime"):
        status.update(reason="Scheduled", message=f"first run at {status['nextScheduleTime']}")


class JobController:
    """Follows the event log and a clock; each pass plans the Jobs it concerns."""

    def __init__(
        self,
        store: Store,
        *,
        tick: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.clock = clock
        self._tick = tick
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._orphans_at = -ORPHAN_SCAN_SECONDS

    async def start(self, after: int | None = None) -> None:
        """Follow the log from ``after`` (default: now) and the clock."""
        self._task = asyncio.create_task(self._run(after), name="jobs-controller")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
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
                if loop.time() - last_all >= self._tick:  # schedules and deadlines
                    last_all = loop.time()
                    await self.reconcile_all()
                batch = await self.store.events_after(seq, 500)
                refs: set[tuple[str, str, str]] = set()
                for ev in batch:
                    seq = ev.seq
                    ref = _affected(ev)
                    if ref is not None:
                        refs.add(ref)
                for ref in sorted(refs):
                    await self._guarded(ref)
                if not batch:
                    await self.store.wait_for_change(self._tick)
            except asyncio.CancelledError:
                raise
            except Gone:  # fell behind the compacted event log: look at everything again
                log.warning("jobs: events were compacted before being read; listing again")
                relist = True
            except Exception:
                log.exception("jobs: a round failed; retrying")
                await asyncio.sleep(1.0)

    async def reconcile_all(self) -> None:
        """Every Job (schedules and deadlines), and now and then every App a Job owns, so
        that the attempts of a Job deleted while the controller was away go too."""
        found = {_ref(d) for d in (await self.store.list("Job")).items}
        now = asyncio.get_running_loop().time()
        apps = []
        if now - self._orphans_at >= ORPHAN_SCAN_SECONDS:
            self._orphans_at = now
            apps = (await self.store.list("App")).items
        found |= owner_refs(apps, JOB_LABEL)
        for ref in sorted(found):
            await self._guarded(ref)

    async def _guarded(self, ref: tuple[str, str, str]) -> None:
        try:
            await self.reconcile(ref)
        except KledError as e:
            log.warning("job/%s/%s.%s: %s; retrying", ref[0], ref[1], ref[2], e)

    async def reconcile(self, ref: tuple[str, str, str]) -> None:
        async with self._lock:
            await self._reconcile(ref)

    async def _reconcile(self, ref: tuple[str, str, str]) -> None:
        team, env, name = ref
        job = await self.store.find(Key("Job", team, env, name))
        owned = {
            a["metadata"]["name"]: a
            for a in (await self.store.list("App", team=team, environment=env)).items
            if ((a["metadata"].get("labels") or {}).get(JOB_LABEL)) == name
        }
        if job is None or (job.get("metadata") or {}).get("deletionTimestamp"):
            for app_name in sorted(owned):
                with contextlib.suppress(NotFound):
                    await self.store.delete(Key("App", team, env, app_name))
            return
        out = plan(job, owned, self.clock())
        if out.status != (job.get("status") or {}):
            try:
                await self.store.update_status(
                    Key.of(job), out.status, expected_version=job["metadata"]["resourceVersion"]
                )
            except (Conflict, NotFound):
                return  # changed meanwhile: its event brings it back
        for doc in out.apps:
            if doc["metadata"]["name"] in owned:
                continue
            wanted = validate(doc)
            wanted.pop("status", None)
            with contextlib.suppress(Conflict):
                await self.store.create(wanted)
                log.info("app/%s/%s.%s: created for job/%s", team, env,
                         doc["metadata"]["name"], name)  # fmt: skip
        for app_name in out.stop:
            app = owned.get(app_name)
            if app is None or (app.get("spec") or {}).get("replicas") == 0:
                continue
            changed = {**app, "spec": {**app["spec"], "replicas": 0}}
            changed.pop("status", None)
            with contextlib.suppress(Conflict, NotFound):
                await self.store.update(
                    changed, expected_version=app["metadata"]["resourceVersion"]
                )
        for app_name in out.delete:
            with contextlib.suppress(NotFound):
                await self.store.delete(Key("App", team, env, app_name))


def _ref(doc: Mapping[str, Any]) -> tuple[str, str, str]:
    m = doc["metadata"]
    return (str(m["team"]), str(m.get("environment") or ""), str(m["name"]))


def _affected(ev: Event) -> tuple[str, str, str] | None:
    if ev.kind == "Job":
        return (ev.team, ev.environment, ev.name)
    if ev.kind == "App":
        owner = ((ev.object or {}).get("metadata") or {}).get("labels", {}).get(JOB_LABEL)
        if owner:
            return (ev.team, ev.environment, str(owner))
    return None
