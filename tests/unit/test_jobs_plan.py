"""The jobs controller's pure core: runs, attempts, back-off, deadlines, schedules, history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from kled.control.jobs import RUN_NOW, attempt_name, plan

T0 = datetime(2026, 12, 7, 3, 0, 0, tzinfo=UTC)


def job(status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "kind": "Job",
        "metadata": {"name": "migrate", "team": "acme", "environment": "dev",
                     "creationTimestamp": "2026-12-07T03:00:00Z", "annotations": {}},
        "spec": {"command": ["sh", "-c", "true"], **spec},
        "status": status or {},
    }  # fmt: skip


def app(run: int, attempt: int, state: str | None, code: int | None = None) -> dict[str, Any]:
    replicas = [] if state is None else [{"index": 0, "state": state, "lastExitCode": code}]
    return {
        "metadata": {"name": attempt_name("migrate", run, attempt),
                     "labels": {"kled.io/job": "migrate", "kled.io/job-run": str(run)}},
        "status": {"replicas": replicas},
    }  # fmt: skip


def step(doc: dict[str, Any], apps: list[dict[str, Any]], now: datetime = T0) -> Any:
    out = plan(doc, {a["metadata"]["name"]: a for a in apps}, now)
    doc["status"] = out.status
    return out


def test_a_job_runs_once_and_retries_until_it_passes() -> None:
    doc = job()
    out = step(doc, [])
    assert [a["metadata"]["name"] for a in out.apps] == ["migrate-1-1"]
    assert out.apps[0]["spec"]["restartPolicy"] == "Never"
    assert doc["status"]["phase"] == "Pending" and doc["status"]["attempts"] == 1
    step(doc, [app(1, 1, "Running")])
    assert doc["status"]["phase"] == "Running"
    out = step(doc, [app(1, 1, "Failed", 3)])
    assert [a["metadata"]["name"] for a in out.apps] == ["migrate-1-2"]
    assert doc["status"]["attempts"] == 2 and "exit code 3" in doc["status"]["message"]
    out = step(doc, [app(1, 1, "Failed", 3), app(1, 2, "Failed", 3)])
    assert [a["metadata"]["name"] for a in out.apps] == ["migrate-1-3"]
    out = step(doc, [app(1, 1, "Failed", 3), app(1, 2, "Failed", 3), app(1, 3, "Succeeded", 0)],
               T0 + timedelta(seconds=9))  # fmt: skip
    assert out.apps == [] and out.delete == []
    status = doc["status"]
    assert (status["phase"], status["reason"], status["attempts"]) == ("Succeeded", "Completed", 3)
    assert status["completionTime"] == "2026-12-07T03:00:09Z"
    assert status["succeeded"] == 1 and status["active"] == 0
    again = step(doc, [app(1, 3, "Succeeded", 0)])  # nothing more happens
    assert again.apps == [] and doc["status"]["runs"] == status["runs"]


def test_backoff_limit_exceeded() -> None:
    doc = job(backoffLimit=1)
    step(doc, [])
    step(doc, [app(1, 1, "Failed", 1)])
    out = step(doc, [app(1, 1, "Failed", 1), app(1, 2, "Failed", 1)])
    assert out.apps == []
    assert (doc["status"]["phase"], doc["status"]["reason"]) == ("Failed", "BackoffLimitExceeded")


def test_a_run_past_its_deadline_is_stopped() -> None:
    doc = job(activeDeadlineSeconds=30)
    step(doc, [])
    out = step(doc, [app(1, 1, "Running")], T0 + timedelta(seconds=31))
    assert out.stop == ["migrate-1-1"]
    assert (doc["status"]["phase"], doc["status"]["reason"]) == ("Failed", "DeadlineExceeded")


def test_a_schedule_starts_runs_and_keeps_the_history_limit() -> None:
    doc = job(schedule="*/10 * * * * *", successfulJobsHistoryLimit=1)
    out = step(doc, [])
    assert out.apps == [] and doc["status"]["nextScheduleTime"] == "2026-12-07T03:00:10Z"
    assert doc["status"]["reason"] == "Scheduled"
    out = step(doc, [], T0 + timedelta(seconds=10))
    assert [a["metadata"]["name"] for a in out.apps] == ["migrate-1-1"]
    assert doc["status"]["nextScheduleTime"] == "2026-12-07T03:00:20Z"
    step(doc, [app(1, 1, "Succeeded", 0)], T0 + timedelta(seconds=12))
    out = step(doc, [app(1, 1, "Succeeded", 0)], T0 + timedelta(seconds=21))
    assert [a["metadata"]["name"] for a in out.apps] == ["migrate-2-1"]
    out = step(doc, [app(1, 1, "Succeeded", 0), app(2, 1, "Succeeded", 0)],
               T0 + timedelta(seconds=22))  # fmt: skip
    assert out.delete == ["migrate-1-1"]  # one successful run kept
    assert [r["run"] for r in doc["status"]["runs"]] == [2]
    assert doc["status"]["succeeded"] == 2


def test_forbid_skips_and_replace_stops_the_going_run() -> None:
    doc = job(schedule="*/10 * * * * *", concurrencyPolicy="Forbid")
    step(doc, [], T0 + timedelta(seconds=10))
    out = step(doc, [app(1, 1, "Running")], T0 + timedelta(seconds=20))
    assert out.apps[0]["metadata"]["name"] == "migrate-1-1" and len(out.apps) == 1
    assert doc["status"]["lastSkippedTime"] == "2026-12-07T03:00:20Z"
    doc = job(schedule="*/10 * * * * *", concurrencyPolicy="Replace")
    step(doc, [], T0 + timedelta(seconds=10))
    out = step(doc, [app(1, 1, "Running")], T0 + timedelta(seconds=20))
    assert out.stop == ["migrate-1-1"]
    assert [a["metadata"]["name"] for a in out.apps] == ["migrate-2-1"]
    assert doc["status"]["runs"][0]["reason"] == "Replaced"


def test_suspend_and_run_now() -> None:
    doc = job(schedule="@daily", suspend=True)
    out = step(doc, [], T0 + timedelta(days=2))
    assert out.apps == [] and doc["status"]["reason"] == "Suspended"
    doc["metadata"]["annotations"][RUN_NOW] = "2026-12-09T03:00:00Z"
    out = step(doc, [], T0 + timedelta(days=2))
    assert [a["metadata"]["name"] for a in out.apps] == ["migrate-1-1"]
    out = step(doc, [app(1, 1, "Running")], T0 + timedelta(days=2))  # the same value: no new run
    assert len(doc["status"]["runs"]) == 1


def test_attempt_names_are_dns_labels() -> None:
    assert attempt_name("x" * 63, 12, 3) == "x" * 58 + "-12-3"
