"""The pure parts of batch/v1 Jobs on a Kled Cluster: a Kled Job's run as a Job's status
and Pods, and a delete's propagation policy as kubectl and older clients send it."""

from __future__ import annotations

from typing import Any

import pytest

from kled.kube import deletion, jobviews
from kled.kube.status import KubeError

JOB = {
    "apiVersion": "batch/v1",
    "kind": "Job",
    "metadata": {"name": "pi", "namespace": "default", "uid": "u-1"},
    "spec": {
        "template": {
            "metadata": {"labels": {"job-name": "pi"}},
            "spec": {"containers": [{"name": "pi", "image": "busybox"}]},
        }
    },
}


def _app(state: str, **entry: Any) -> dict[str, Any]:
    return {"status": {"replicas": [{"index": 0, "state": state, "node": "n1", **entry}]}}


def test_a_run_past_its_deadline_is_failed_and_its_stopped_pod_says_why() -> None:
    run = {"run": 1, "attempts": 2, "phase": "Failed", "reason": "DeadlineExceeded"}
    run |= {"startTime": "2026-01-01T00:00:00Z", "completionTime": "2026-01-01T00:01:00Z"}
    apps = {"pi-1-1": _app("Failed", lastExitCode=3), "pi-1-2": {"status": {"replicas": []}}}
    status = jobviews.job_status(JOB, run, apps, "pi")
    assert status["failed"] == 2 and "succeeded" not in status and "completionTime" not in status
    [condition] = status["conditions"]
    assert (condition["type"], condition["reason"]) == ("Failed", "DeadlineExceeded")
    assert condition["message"] == "Job was active longer than specified deadline"
    first, second = jobviews.job_pods(JOB, run, apps, "pi")
    assert first["status"]["containerStatuses"][0]["state"]["terminated"] == {
        "exitCode": 3,
        "reason": "Error",
    }
    assert second["status"]["phase"] == "Failed"
    assert second["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == (
        "DeadlineExceeded"
    )
    assert first["metadata"]["name"] != second["metadata"]["name"]
    assert first["metadata"]["annotations"] == {jobviews.APP_ANNOTATION: "pi-1-1"}


def test_a_retrying_run_is_active_and_its_new_pod_waits_for_its_image() -> None:
    run = {"run": 1, "attempts": 2, "phase": "Pending", "startTime": "2026-01-01T00:00:00Z"}
    apps = {
        "pi-1-1": _app("Failed", lastExitCode=1),
        "pi-1-2": _app("Starting", reason="ImagePullBackOff", message="image 'x' is not there"),
    }
    status = jobviews.job_status(JOB, run, apps, "pi")
    assert (status["active"], status["ready"], status["failed"]) == (1, 0, 1)
    assert "conditions" not in status
    pods = jobviews.job_pods(JOB, run, apps, "pi")
    waiting = pods[1]["status"]["containerStatuses"][0]["state"]["waiting"]
    assert waiting == {"reason": "ImagePullBackOff", "message": "image 'x' is not there"}
    assert [p["status"]["phase"] for p in pods] == ["Failed", "Pending"]


@pytest.mark.parametrize(
    ("query", "body", "chosen"),
    [
        (None, None, "Background"),
        (None, {"kind": "DeleteOptions", "propagationPolicy": "Foreground"}, "Foreground"),
        (None, {"orphanDependents": True}, "Orphan"),
        ("Orphan", {"propagationPolicy": "Foreground"}, "Orphan"),
    ],
)
def test_the_propagation_policy_of_a_delete(query: str | None, body: Any, chosen: str) -> None:
    assert deletion.policy(query, body) == chosen


def test_an_unknown_propagation_policy_is_a_bad_request() -> None:
    with pytest.raises(KubeError) as caught:
        deletion.policy("Sideways", None)
    assert caught.value.code == 400
    assert 'Unsupported value: "Sideways"' in caught.value.message
