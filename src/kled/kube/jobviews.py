"""Kled Job → the Kubernetes views of it: a Job's ``status`` and Pods, a CronJob's Jobs.

A Job's ``status`` is its Kled Job's run (``active``, ``ready``, ``succeeded``, ``failed``
attempts, times, the ``Complete`` or ``Failed`` condition); each attempt of the run (an App
of one replica) is one Pod ``<job>-<5 letters>``, labelled with the Job's selector and
``job-name``, whose phase and container state are what the jobs controller decided of the
attempt (and, while it goes on, what its replica does). Each run a CronJob's Kled Job keeps
is a Job ``<cronjob>-<run>`` the CronJob owns. Pure functions; ``jobsync`` writes them.
"""

from __future__ import annotations

import copy
import hashlib
import uuid
from typing import Any

from kled.control.jobs import ACTIVE, FAILED, SUCCEEDED, attempt_name
from kled.kube.jobs import (
    APP_ANNOTATION,
    CONTROLLER_UID,
    JOB_NAME,
    LEGACY_NAME,
    LEGACY_UID,
    RUN_ANNOTATION,
)


def run_job_name(cron_job: str, run: int) -> str:
    return f"{cron_job[:52]}-{run}"


def cron_run_job(cron_job: dict[str, Any], run: dict[str, Any]) -> dict[str, Any]:
    """The Job shown for run ``run`` of ``cron_job``, as the CronJob controller makes it."""
    meta = cron_job["metadata"]
    template = copy.deepcopy(cron_job["spec"]["jobTemplate"])
    name = run_job_name(meta["name"], int(run["run"]))
    job_meta = template.get("metadata") or {}
    annotations = {**(job_meta.get("annotations") or {}), RUN_ANNOTATION: str(run["run"])}
    if run.get("scheduledTime"):
        annotations["batch.kubernetes.io/cronjob-scheduled-timestamp"] = run["scheduledTime"]
    spec = template["spec"]
    uid = hashlib.sha256(f"{meta.get('uid')}/{run['run']}".encode()).hexdigest()
    uid = str(uuid.UUID(uid[:32]))
    spec["selector"] = {"matchLabels": {CONTROLLER_UID: uid}}
    labels = spec["template"].setdefault("metadata", {}).setdefault("labels", {})
    labels.update({CONTROLLER_UID: uid, LEGACY_UID: uid, JOB_NAME: name, LEGACY_NAME: name})
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": name,
            "namespace": meta.get("namespace", "default"),
            "labels": dict(job_meta.get("labels") or {}),
            "annotations": annotations,
            "ownerReferences": [_owner("CronJob", cron_job)],
        },
        "spec": spec,
    }


def _owner(kind: str, obj: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1",
        "kind": kind,
        "name": obj["metadata"]["name"],
        "uid": obj["metadata"].get("uid", ""),
        "controller": True,
        "blockOwnerDeletion": True,
    }


def _entry(app: dict[str, Any] | None) -> dict[str, Any] | None:
    replicas = ((app or {}).get("status") or {}).get("replicas") or []
    return next((r for r in replicas if int(r.get("index", 0)) == 0), None)


def job_status(job: dict[str, Any], run: dict[str, Any] | None, apps: dict[str, Any],
               kled: str) -> dict[str, Any]:  # fmt: skip
    """A Job's ``status`` from its Kled Job's run (None: not started yet)."""
    if run is None:
        return {}
    attempts = int(run.get("attempts", 1))
    phase = run.get("phase")
    current = _entry(apps.get(attempt_name(kled, int(run["run"]), attempts)))
    status: dict[str, Any] = {"startTime": run.get("startTime"), "uncountedTerminatedPods": {}}
    if phase in ACTIVE:
        status["active"] = 1
        running = (current or {}).get("state") == "Running"
        status["ready"] = 1 if running and (current or {}).get("ready") is not False else 0
        failed = attempts - 1
    else:
        status["ready"] = 0
        failed = attempts if phase == FAILED else attempts - 1
    if failed:
        status["failed"] = failed
    when = run.get("completionTime")
    if phase == SUCCEEDED:
        status["succeeded"] = 1
        status["completionTime"] = when
        status["conditions"] = [_condition("Complete", when, None, None)]
    elif phase == FAILED:
        reason = str(run.get("reason") or "BackoffLimitExceeded")
        message = {
            "BackoffLimitExceeded": "Job has reached the specified backoff limit",
            "DeadlineExceeded": "Job was active longer than specified deadline",
        }.get(reason, str(run.get("message") or reason))
        status["conditions"] = [_condition("Failed", when, reason, message)]
    return {k: v for k, v in status.items() if v is not None}


def _condition(kind: str, when: Any, reason: str | None, message: str | None) -> dict[str, Any]:
    found = {"type": kind, "status": "True", "lastProbeTime": when, "lastTransitionTime": when}
    if reason:
        found.update(reason=reason, message=message)
    return found


def cron_status(
    cron_job: dict[str, Any], kled_status: dict[str, Any], jobs: list[dict[str, Any]]
) -> dict[str, Any]:
    """A CronJob's ``status``: its active Jobs, last scheduled and last successful times."""
    runs = kled_status.get("runs") or []
    names = {int(r["run"]): run_job_name(cron_job["metadata"]["name"], int(r["run"])) for r in runs}
    by_name = {j["metadata"]["name"]: j for j in jobs}
    active = []
    for run in runs:
        job = by_name.get(names[int(run["run"])])
        if run.get("phase") in ACTIVE and job is not None:
            active.append(
                {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "name": job["metadata"]["name"],
                    "namespace": job["metadata"].get("namespace"),
                    "uid": job["metadata"].get("uid"),
                    "resourceVersion": job["metadata"].get("resourceVersion"),
                }
            )
    status: dict[str, Any] = {}
    if active:
        status["active"] = active
    if kled_status.get("lastScheduleTime"):
        status["lastScheduleTime"] = kled_status["lastScheduleTime"]
    done = [r for r in runs if r.get("phase") == SUCCEEDED and r.get("completionTime")]
    if done:
        status["lastSuccessfulTime"] = max(str(r["completionTime"]) for r in done)
    return status


def pod_name(job: str, attempt: int, uid: str) -> str:
    digest = hashlib.sha256(f"{uid}/{attempt}".encode()).hexdigest()
    letters = "".join(c for c in digest if c in "bcdfghjklmnpqrstvwxz2456789")[:5]
    return f"{job[:57]}-{letters.ljust(5, 'b')}"


def _container_state(entry: dict[str, Any] | None, outcome: str) -> tuple[str, dict[str, Any]]:
    """(pod phase, container state) of one attempt's replica; ``outcome`` is what the
    jobs controller decided of the attempt (Pending or Running while it goes on), which
    a finished attempt shows whatever its App's replica did since."""
    state = (entry or {}).get("state")
    if outcome in ACTIVE:
        if state == "Running":
            return "Running", {"running": {"startedAt": (entry or {}).get("startedAt")}}
        waiting = {"reason": (entry or {}).get("reason") or "ContainerCreating"}
        if (entry or {}).get("message"):
            waiting["message"] = (entry or {})["message"]
        return "Pending", {"waiting": waiting}
    ok = outcome == SUCCEEDED
    code = (entry or {}).get("lastExitCode")
    reason = "Completed" if ok else ("Error" if code is not None else "DeadlineExceeded")
    finished = {
        "exitCode": 0 if ok else (code if code is not None else 137),
        "reason": reason,
        "startedAt": (entry or {}).get("startedAt"),
    }
    return outcome, {"terminated": {k: v for k, v in finished.items() if v is not None}}


def job_pods(job: dict[str, Any], run: dict[str, Any] | None, apps: dict[str, Any],
             kled: str) -> list[dict[str, Any]]:  # fmt: skip
    """One Pod per attempt of the Job's run whose App exists."""
    if run is None:
        return []
    meta = job["metadata"]
    template = job["spec"]["template"]
    container = template["spec"]["containers"][0]
    out = []
    for attempt in range(1, int(run.get("attempts", 1)) + 1):
        app_name = attempt_name(kled, int(run["run"]), attempt)
        if app_name not in apps:
            continue
        found = _entry(apps[app_name])
        entry = found or {}
        current = attempt == int(run.get("attempts", 1))
        phase, state = _container_state(found, str(run.get("phase")) if current else FAILED)
        ready = phase == "Running" and entry.get("ready") is not False
        status: dict[str, Any] = {
            "phase": phase,
            "conditions": [
                {"type": "Ready", "status": "True" if ready else "False"},
                {"type": "ContainersReady", "status": "True" if ready else "False"},
                {"type": "PodScheduled", "status": "True" if entry.get("node") else "False"},
            ],
            "containerStatuses": [
                {
                    "name": container["name"],
                    "image": container.get("image", ""),
                    "ready": ready,
                    "started": phase == "Running",
                    "restartCount": int(entry.get("restarts", 0)),
                    "state": state,
                }
            ],
            "qosClass": "BestEffort",
        }
        if entry.get("podIP"):
            status["podIP"] = entry["podIP"]
            status["podIPs"] = [{"ip": entry["podIP"]}]
        if entry.get("startedAt"):
            status["startTime"] = entry["startedAt"]
        spec = copy.deepcopy(template["spec"])
        if entry.get("node"):
            spec["nodeName"] = entry["node"]
        out.append(
            {
                "apiVersion": "v1",
                "kind": "Pod",
                "metadata": {
                    "name": pod_name(meta["name"], attempt, str(meta.get("uid", ""))),
                    "namespace": meta.get("namespace", "default"),
                    "labels": dict((template.get("metadata") or {}).get("labels") or {}),
                    "annotations": {APP_ANNOTATION: app_name},
                    "ownerReferences": [_owner("Job", job)],
                },
                "spec": spec,
                "status": status,
            }
        )
    return out
