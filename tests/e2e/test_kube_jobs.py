"""batch/v1 Jobs and CronJobs of a Kled Cluster run by a real agent, seen with kubectl.

The control plane runs inside a lab host (``agentlab``), one agent on another; kubectl
(1.32 on the PATH, and 1.27 and 1.33 for one flow each) runs in a third host. A Job runs
to ``Complete`` (``kubectl wait --for=condition=complete``), its output read with
``kubectl logs job/NAME`` and its pod found by ``job-name``; a failing Job ends ``Failed``
after ``backoffLimit`` retries, one pod per attempt; a CronJob with a seconds schedule
makes Jobs that complete; deleting with ``--cascade=foreground`` takes its Jobs and Pods.
A Deployment whose image is built only after it was applied shows ``ImagePullBackOff``
and comes up once the image is there, with no restart asked for; the Endpoints of a
Service picking it list its pod IP; deleted with ``--cascade=orphan`` its pod runs on, and
the Deployment applied again adopts it.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from typing import Any

import pytest
from agentlab import MARKER_VAR, Mesh, eventually, lab_mesh
from kubelab import cluster_kubectl, pods

from imagekit import busybox_image, podman
from kubekit import Kubectl, kubectl_binary

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]
CLUSTER = {"kind": "Cluster", "metadata": {"name": "c1"}}


def _job(name: str, marker: str, code: str, backoff: int = 6) -> str:
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "annotations": {"kled.io/runtime": "process"}},
        "spec": {
            "backoffLimit": backoff,
            "template": {
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": "main",
                            "image": "python:3",
                            "command": [sys.executable, "-c", code],
                            "env": [{"name": MARKER_VAR, "value": marker}],
                        }
                    ],
                }
            },
        },
    }
    return json.dumps(job)


def _cron_job(marker: str) -> str:
    job = json.loads(_job("x", marker, "print('tick')"))
    cron = {
        "apiVersion": "batch/v1",
        "kind": "CronJob",
        "metadata": {"name": "tick", "annotations": {"kled.io/runtime": "process"}},
        "spec": {
            "schedule": "*/3 * * * * *",  # Kled's cron takes a leading seconds field
            "concurrencyPolicy": "Forbid",
            "successfulJobsHistoryLimit": 2,
            "jobTemplate": {"spec": job["spec"]},
        },
    }
    return json.dumps(cron)


def _kubectl(mesh: Mesh, tmp_path: Path, version: str | None) -> Kubectl:
    return cluster_kubectl(mesh, tmp_path / f"home-{version}", version=version)


def _pods(k: Kubectl, selector: str) -> list[dict[str, Any]]:
    return pods(k, "-l", selector)


def test_jobs_and_cronjobs_run_to_completion(tmp_path: Path) -> None:
    with lab_mesh(tmp_path, 1, "kubejobs") as mesh:
        try:
            mesh.start_agent(1)
            mesh.team("a", "100.97.0.0/16")
            mesh.api("POST", "/api/v1/teams/a/clusters", CLUSTER)
            _jobs(mesh, tmp_path)
        except BaseException:
            print(mesh.dump_logs())
            raise


def _complete(k: Kubectl, name: str, marker: str) -> None:
    assert f"job.batch/{name} created" in k.ok(
        "apply", "-f", "-", stdin=_job(name, marker, "print('3.14')")
    )
    k.ok("wait", "--for=condition=complete", f"job/{name}", "--timeout=90s")
    row = k.ok("get", "job", name).splitlines()[1].split()
    assert row[:3] == [name, "Complete", "1/1"], row
    [pod] = _pods(k, f"job-name={name}")
    assert pod["status"]["phase"] == "Succeeded"
    assert pod["spec"]["nodeName"] == "node1"
    rows = k.ok("get", "pods", "-l", f"job-name={name}").splitlines()
    assert rows[1].split()[1:3] == ["0/1", "Completed"]
    eventually(lambda: k.ok("logs", f"job/{name}") == "3.14\n", "the Job's output")


def _jobs(mesh: Mesh, tmp_path: Path) -> None:
    k = _kubectl(mesh, tmp_path, None)
    _complete(k, "pi", mesh.marker)
    job = json.loads(k.ok("get", "job", "pi", "-o", "json"))
    assert job["status"]["succeeded"] == 1 and "failed" not in job["status"]
    assert job["status"]["completionTime"] >= job["status"]["startTime"]

    # a Job that fails: a new pod per attempt, Failed after backoffLimit retries
    k.ok("apply", "-f", "-", stdin=_job("bad", mesh.marker, "raise SystemExit(3)", backoff=1))
    k.ok("wait", "--for=condition=failed", "job/bad", "--timeout=90s")
    status = json.loads(k.ok("get", "job", "bad", "-o", "json"))["status"]
    assert status["failed"] == 2 and "succeeded" not in status
    [condition] = status["conditions"]
    assert (condition["type"], condition["reason"]) == ("Failed", "BackoffLimitExceeded")
    pods = _pods(k, "job-name=bad")
    assert len(pods) == 2
    assert [p["status"]["containerStatuses"][0]["state"]["terminated"]["exitCode"]
            for p in pods] == [3, 3]  # fmt: skip
    assert k.ok("get", "job", "bad").splitlines()[1].split()[:3] == ["bad", "Failed", "0/1"]

    # a CronJob: each run a Job it owns, completed, its pods found by job-name
    k.ok("apply", "-f", "-", stdin=_cron_job(mesh.marker))

    def completed_runs() -> list[str]:
        jobs = json.loads(k.ok("get", "jobs", "-o", "json"))["items"]
        return [
            j["metadata"]["name"]
            for j in jobs
            if (j["metadata"].get("ownerReferences") or [{}])[0].get("name") == "tick"
            and j["status"].get("succeeded") == 1
        ]

    # successfulJobsHistoryLimit 2: once runs 2 and 3 succeeded, run 1's Job is gone
    def trimmed() -> bool:
        done = completed_runs()
        return "tick-1" not in done and len(done) == 2

    eventually(trimmed, "two completed Jobs of the CronJob kept, the first gone")
    k.ok("patch", "cj", "tick", "-p", '{"spec":{"suspend":true}}')  # no more runs
    newest = max(completed_runs(), key=lambda name: int(name.rsplit("-", 1)[1]))
    eventually(lambda: k.ok("logs", f"job/{newest}") == "tick\n", "the run's output")
    cron = k.ok("get", "cj", "tick").splitlines()[1].split()
    assert (cron[0], cron[-4]) == ("tick", "True")  # SUSPEND
    assert cron[-2] != "<none>"  # LAST SCHEDULE
    assert 'cronjob.batch "tick" deleted' in k.ok("delete", "cj", "tick", "--cascade=foreground")
    assert not [j for j in k.ok("get", "jobs", "-o", "name").split() if "tick" in j]
    left = {p["metadata"]["labels"]["job-name"] for p in _pods(k, "job-name")}
    assert left == {"pi", "bad"}, left

    # Background (kubectl's default): the Job and its pods go
    k.ok("delete", "job", "bad")
    eventually(lambda: not _pods(k, "job-name=bad"), "the failed Job's pods gone")

    # the same flow with the oldest and newest kubectl these machines ship
    for version, name in (("1.27", "old"), ("1.33", "new")):
        if kubectl_binary(version) is not None:
            _complete(_kubectl(mesh, tmp_path, version), name, mesh.marker)


def test_a_deployment_whose_image_comes_later_starts_without_a_restart(tmp_path: Path) -> None:
    later = f"localhost/kled-later-{random.randint(10**6, 10**7)}:1"
    with lab_mesh(tmp_path, 1, "kubeimage") as mesh:
        try:
            mesh.start_agent(1)
            mesh.team("a", "100.97.0.0/16")
            mesh.api("POST", "/api/v1/teams/a/clusters", CLUSTER)
            _image_later(mesh, tmp_path, later)
        except BaseException:
            print(mesh.dump_logs())
            raise
        finally:
            try:
                mesh.api("DELETE", "/api/v1/teams/a/clusters/c1")
                eventually(lambda: not _containers(later), "the replica's container removed")
            finally:
                podman("rmi", "-f", later)  # and any container of it still there


def _containers(image: str) -> list[str]:
    """The containers of ``image`` (its name is this test's alone)."""
    found = podman("ps", "-a", "--filter", f"ancestor={image}", "--format", "{{.Names}}")
    return found.stdout.split()


def _image_later(mesh: Mesh, tmp_path: Path, later: str) -> None:
    k = _kubectl(mesh, tmp_path, None)
    deployment = {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "late"},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": {"app": "late"}},
            "template": {
                "metadata": {"labels": {"app": "late"}},
                "spec": {
                    "terminationGracePeriodSeconds": 1,  # sleep as pid 1 ignores SIGTERM
                    "containers": [
                        {
                            "name": "late",
                            "image": later,
                            "command": ["sleep", "100000"],
                            "env": [{"name": MARKER_VAR, "value": mesh.marker}],
                        }
                    ],
                },
            },
        },
    }
    k.ok("apply", "-f", "-", stdin=json.dumps(deployment))

    def waiting() -> bool:
        rows = k.ok("get", "pods", "-l", "app=late").splitlines()[1:]
        return len(rows) == 1 and rows[0].split()[2] == "ImagePullBackOff"

    eventually(waiting, "the pod waiting for its image")
    warned = k.ok("get", "events", "--field-selector", "reason=BackOff")
    assert f'Back-off pulling image "{later}"' in warned and "Warning" in warned
    busybox_image(tmp_path / "image", later, ("sh", "sleep"))
    k.ok("wait", "--for=condition=Available", "deployment/late", "--timeout=120s")
    [pod] = _pods(k, "app=late")
    assert pod["status"]["phase"] == "Running"
    assert pod["status"]["containerStatuses"][0]["restartCount"] == 0
    # nobody asked for a restart: neither the pod template nor the App carries a stamp
    deployment_now = json.loads(k.ok("get", "deploy", "late", "-o", "json"))
    assert "restartedAt" not in json.dumps(deployment_now["spec"]["template"])
    app = mesh.api("GET", "/api/v1/teams/a/environments/c1-default/apps/late")
    assert "restartedAt" not in json.dumps(app["metadata"].get("annotations") or {})

    # the Endpoints of a Service that picks it: the running pod's IP
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "late"},
        "spec": {"selector": {"app": "late"}, "ports": [{"port": 80, "targetPort": 8080}]},
    }
    k.ok("apply", "-f", "-", stdin=json.dumps(service))
    row = k.ok("get", "endpoints", "late").splitlines()[1].split()
    assert row[:2] == ["late", f"{pod['status']['podIP']}:8080"], row

    # orphaned: the Deployment goes, its pod stays (disowned) and keeps running; the same
    # Deployment applied again adopts it, with no restart
    k.ok("delete", "deploy", "late", "--cascade=orphan")
    [kept] = _pods(k, "app=late")
    assert kept["metadata"]["name"] == pod["metadata"]["name"]
    assert "ownerReferences" not in kept["metadata"]
    assert _containers(later), "the replica still runs"
    k.ok("apply", "-f", "-", stdin=json.dumps(deployment))
    eventually(lambda: _pods(k, "app=late")[0]["metadata"].get("ownerReferences"), "adopted")
    [again] = _pods(k, "app=late")
    assert again["metadata"]["uid"] == pod["metadata"]["uid"]
    assert again["status"]["containerStatuses"][0]["restartCount"] == 0
    assert again["status"]["phase"] == "Running"
