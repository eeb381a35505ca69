"""batch/v1 Jobs and CronJobs, Endpoints, and delete propagation on a Kled Cluster, with
real kubectl against a real control plane (no agent: what runs is judged in
``tests/e2e/test_kube_jobs.py``). A Job or CronJob becomes a Kled Job; the API answers as
Kubernetes does for what it refuses; Endpoints are computed from Services and Pods.
"""

from __future__ import annotations

import json
import queue
import threading
from pathlib import Path
from typing import Any

import pytest

from kled.kube import barepods
from kubekit import Kubectl, kubectl_binary, make_cluster
from servers import RunningServer

JOB = """\
apiVersion: batch/v1
kind: Job
metadata: {name: pi}
spec:
  backoffLimit: 2
  activeDeadlineSeconds: 120
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: pi
        image: localhost/kled-test:v1
        command: ["sh", "-c", "echo 3.14"]
"""
CRON_JOB = """\
apiVersion: batch/v1
kind: CronJob
metadata: {name: tick}
spec:
  schedule: "0 3 * * *"
  concurrencyPolicy: Forbid
  successfulJobsHistoryLimit: 2
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers:
          - {name: tick, image: "localhost/kled-test:v1", command: [date]}
"""
DEPLOYMENT = """\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec:
      containers:
      - {name: web, image: "localhost/kled-test:v1"}
"""


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture
def kubectl(server: RunningServer, unique_team: str, tmp_path: Path) -> Kubectl:
    binary = kubectl_binary() or pytest.skip("kubectl is not on the PATH")
    configs = make_cluster(server, unique_team, tmp_path / "kube")
    return Kubectl(binary, configs["admin"], tmp_path / "home")


def _kled(server: RunningServer, team: str, path: str) -> dict[str, Any] | None:
    with server.client() as c:
        r = c.get(f"/api/v1/teams/{team}/environments/dev-default/{path}")
    if r.status_code == 404:
        return None
    assert r.status_code == 200, r.text
    found: dict[str, Any] = r.json()
    return found


def test_a_job_and_a_cronjob_are_kled_jobs(
    server: RunningServer, unique_team: str, kubectl: Kubectl
) -> None:
    k = kubectl
    resources = k.ok("api-resources", "--api-group=batch").splitlines()
    assert {tuple(r.split()[:1]) for r in resources[1:]} == {("cronjobs",), ("jobs",)}
    assert any(r.split()[:2] == ["cronjobs", "cj"] for r in resources)

    assert "job.batch/pi created" in k.ok("apply", "-f", "-", stdin=JOB)
    job = json.loads(k.ok("get", "job", "pi", "-o", "json"))
    uid = job["spec"]["selector"]["matchLabels"]["batch.kubernetes.io/controller-uid"]
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert labels["job-name"] == "pi" and labels["controller-uid"] == uid
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (1, 1)
    # applied again: the selector drawn at creation stays, nothing changes
    assert "job.batch/pi unchanged" in k.ok("apply", "-f", "-", stdin=JOB)
    assert k("diff", "-f", "-", stdin=JOB).returncode == 0

    kled = _kled(server, unique_team, "jobs/pi")
    assert kled is not None
    spec = kled["spec"]
    assert (spec["runtime"], spec["image"], spec["command"]) == (
        "container", "localhost/kled-test:v1", ["sh", "-c", "echo 3.14"],
    )  # fmt: skip
    assert (spec["backoffLimit"], spec["activeDeadlineSeconds"]) == (2, 120)

    # the controller made the first attempt (no node here runs it): its pod is shown
    def pods() -> list[str]:
        return k.ok("get", "pods", "-l", "job-name=pi", "-o", "name").split()

    _until(lambda: len(pods()) == 1, "the attempt's pod")
    rows = k.ok("get", "jobs").splitlines()
    assert rows[0].split() == ["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"]
    described = k.ok("describe", "job", "pi")
    assert f"batch.kubernetes.io/controller-uid={uid}" in described
    assert "Backoff Limit:" in described and "1 Active" in described
    assert rows[1].split()[:3] == ["pi", "Running", "0/1"]

    assert "cronjob.batch/tick created" in k.ok("apply", "-f", "-", stdin=CRON_JOB)
    cron = _kled(server, unique_team, "jobs/cron-tick")
    assert cron is not None
    assert (cron["spec"]["schedule"], cron["spec"]["concurrencyPolicy"]) == ("0 3 * * *", "Forbid")
    assert cron["spec"]["successfulJobsHistoryLimit"] == 2
    rows = k.ok("get", "cj").splitlines()
    assert rows[0].split() == ["NAME", "SCHEDULE", "TIMEZONE", "SUSPEND", "ACTIVE",
                               "LAST", "SCHEDULE", "AGE"]  # fmt: skip
    assert rows[1].split()[:7] == ["tick", "0", "3", "*", "*", "*", "<none>"]
    k.ok("patch", "cj", "tick", "-p", '{"spec":{"suspend":true}}')
    _until(lambda: (_kled(server, unique_team, "jobs/cron-tick") or {})["spec"].get("suspend"),
           "the Kled Job suspended")  # fmt: skip

    # kubectl create job --from=cronjob: a Job of the CronJob's template, run once
    assert "job.batch/now created" in k.ok("create", "job", "now", "--from=cronjob/tick")
    assert _kled(server, unique_team, "jobs/now") is not None

    k.ok("delete", "cj", "tick")
    k.ok("delete", "job", "pi")
    assert _kled(server, unique_team, "jobs/cron-tick") is None
    assert _kled(server, unique_team, "jobs/pi") is None
    _until(lambda: not pods(), "the Job's pod gone with it")


def test_what_a_kled_job_cannot_run_is_refused(kubectl: Kubectl) -> None:
    k = kubectl
    always = JOB.replace("restartPolicy: Never", "restartPolicy: Always")
    done = k("apply", "-f", "-", stdin=always)
    assert done.returncode == 1
    assert (
        'The Job "pi" is invalid: spec.template.spec.restartPolicy: Unsupported value: '
        '"Always": supported values: "OnFailure", "Never"'
    ) in done.stderr
    parallel = JOB.replace("  backoffLimit: 2\n", "  backoffLimit: 2\n  completions: 3\n")
    done = k("apply", "-f", "-", stdin=parallel)
    assert done.returncode == 1 and "spec.completions: Unsupported value: 3" in done.stderr
    bad = CRON_JOB.replace('"0 3 * * *"', '"61 * * * *"')
    done = k("apply", "-f", "-", stdin=bad)
    assert done.returncode == 1 and "spec.schedule: Invalid value" in done.stderr
    assert "No resources found" in k("get", "jobs,cronjobs").stderr


SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: db}
spec:
  selector: {app: db}
  ports: [{name: sql, port: 5432, targetPort: sql}]
"""


def _pod(name: str) -> str:
    """A Pod another controller owns (so no App runs it here): its status is the test's to
    write, as that controller's kubelet would."""
    return f"""\
apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: db}}
  ownerReferences: [{{apiVersion: v1, kind: ReplicationController, name: db, uid: u-{name}}}]
spec:
  containers:
  - name: db
    image: localhost/kled-test:v1
    ports: [{{name: sql, containerPort: 6000}}]
"""


def _status(ip: str, ready: bool) -> str:
    condition = {"type": "Ready", "status": "True" if ready else "False"}
    return json.dumps({"status": {"phase": "Running", "podIP": ip, "conditions": [condition]}})


@pytest.mark.parametrize("version", [None, "1.33"])
def test_endpoints_list_the_pods_a_service_picks(
    server: RunningServer, unique_team: str, tmp_path: Path, version: str | None
) -> None:
    binary = kubectl_binary(version)
    if binary is None:
        pytest.skip(f"kubectl {version or ''} is not installed beside the one on the PATH")
    k = Kubectl(binary, make_cluster(server, unique_team, tmp_path / "kube")["admin"],
                tmp_path / "home")  # fmt: skip
    k.ok("apply", "-f", "-", stdin=SERVICE + "---\n" + _pod("db-0") + "---\n" + _pod("db-1"))
    for name, ip, ready in (("db-0", "100.64.9.1", True), ("db-1", "100.64.9.2", False)):
        k.ok("patch", "pod", name, "--subresource=status", "--type=merge", "-p", _status(ip, ready))

    rows = k.ok("get", "endpoints").splitlines()
    assert rows[0].split() == ["NAME", "ENDPOINTS", "AGE"]
    assert rows[1].split()[:2] == ["db", "100.64.9.1:6000"]
    ep = json.loads(k.ok("get", "ep", "db", "-o", "json"))
    [subset] = ep["subsets"]
    assert [a["ip"] for a in subset["addresses"]] == ["100.64.9.1"]
    assert [a["targetRef"]["name"] for a in subset["notReadyAddresses"]] == ["db-1"]
    assert subset["ports"] == [{"name": "sql", "port": 6000, "protocol": "TCP"}]
    described = k.ok("describe", "svc", "db")
    assert "100.64.9.1:6000" in described
    slices = json.loads(
        k.ok("get", "endpointslices", "-l", "kubernetes.io/service-name=db", "-o", "json")
    )["items"]
    assert [[e["addresses"], e["conditions"]["ready"]] for e in slices[0]["endpoints"]] == [
        [["100.64.9.1"], True],
        [["100.64.9.2"], False],
    ]
    k.ok("delete", "pod", "db-0")
    assert "<none>" in k.ok("get", "endpoints", "db")
    done = k("delete", "endpoints", "db")
    assert done.returncode == 1 and "not supported" in done.stderr


def test_kubectl_watches_endpoints_follow_their_pods(
    server: RunningServer, unique_team: str, kubectl: Kubectl
) -> None:
    k = kubectl
    k.ok("apply", "-f", "-", stdin=SERVICE + "---\n" + _pod("db-0") + "---\n" + _pod("db-1"))
    k.ok("patch", "pod", "db-0", "--subresource=status", "--type=merge",
         "-p", _status("100.64.9.1", True))  # fmt: skip
    template = '{.metadata.name}={.subsets[*].addresses[*].ip}{"\\n"}'
    process = k.popen("get", "endpoints", "db", "--watch", "-o", f"jsonpath={template}")
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert process.stdout is not None
        for line in process.stdout:
            lines.put(line.strip())

    def next_line() -> str:
        try:
            return lines.get(timeout=30)
        except queue.Empty:
            assert process.stderr is not None
            process.kill()
            raise AssertionError(f"kubectl printed nothing more: {process.stderr.read()}") from None

    threading.Thread(target=pump, daemon=True).start()
    try:
        assert next_line() == "db=100.64.9.1"  # the list
        # a pod getting ready, as its kubelet would say: one event with both addresses
        k.ok("patch", "pod", "db-1", "--subresource=status", "--type=merge",
             "-p", _status("100.64.9.2", True))  # fmt: skip
        assert next_line() == "db=100.64.9.1 100.64.9.2"
        k.ok("delete", "pod", "db-0")
        assert next_line() == "db=100.64.9.2"
    finally:
        process.kill()
        process.wait()


def test_delete_propagation_policies(
    server: RunningServer, unique_team: str, kubectl: Kubectl
) -> None:
    k = kubectl
    k.ok("apply", "-f", "-", stdin=DEPLOYMENT)
    app = _kled(server, unique_team, "apps/web")
    assert app is not None
    # Orphan: the Deployment goes, its App (what runs) and ReplicaSet stay, disowned
    assert 'deployment.apps "web" deleted' in k.ok("delete", "deploy", "web", "--cascade=orphan")
    kept = _kled(server, unique_team, "apps/web")
    assert kept is not None and kept["metadata"]["uid"] == app["metadata"]["uid"]
    [rs] = json.loads(k.ok("get", "rs", "-o", "json"))["items"]
    assert "ownerReferences" not in rs["metadata"]
    # applied again, the Deployment takes the same App on: nothing was restarted
    k.ok("apply", "-f", "-", stdin=DEPLOYMENT)
    again = _kled(server, unique_team, "apps/web")
    assert again is not None and again["metadata"]["uid"] == app["metadata"]["uid"]
    # Foreground: what it made goes first, then the Deployment
    k.ok("delete", "deploy", "web", "--cascade=foreground")
    assert _kled(server, unique_team, "apps/web") is None
    assert "No resources found" in k("get", "deploy,pods").stderr

    # a Job orphaned: its attempt's App is no longer the Kled Job's, and is not stopped
    k.ok("apply", "-f", "-", stdin=JOB)
    _until(lambda: k.ok("get", "pods", "-l", "job-name=pi", "-o", "name"), "the Job's pod")
    k.ok("delete", "job", "pi", "--cascade=orphan")
    assert _kled(server, unique_team, "jobs/pi") is None
    attempt = _kled(server, unique_team, "apps/pi-1-1")
    assert attempt is not None
    assert attempt["metadata"]["labels"]["kled.io/orphaned-job"] == "pi"
    [pod] = json.loads(k.ok("get", "pods", "-l", "job-name=pi", "-o", "json"))["items"]
    assert "ownerReferences" not in pod["metadata"]
    assert pod["metadata"]["annotations"]["kled.io/orphaned-from"] == "Job/pi"
    # still the attempt's replica: written to, it is not run again as a bare Pod
    name = pod["metadata"]["name"]
    k.ok("label", "pod", name, "seen=yes")
    assert _kled(server, unique_team, f"apps/{barepods.app_name(name)}") is None

    # a policy Kubernetes does not know: 400, nothing deleted
    k.ok("apply", "-f", "-", stdin=DEPLOYMENT)
    with server.client() as c:
        base = f"/k8s/{unique_team}/dev/apis/apps/v1/namespaces/default/deployments/web"
        r = c.delete(f"{base}?propagationPolicy=Sideways")
    assert r.status_code == 400, r.text
    assert 'propagationPolicy: Unsupported value: "Sideways"' in r.json()["message"]
    assert _kled(server, unique_team, "apps/web") is not None


def _until(check: Any, what: str, rounds: int = 300) -> None:
    import time

    for _ in range(rounds):
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"never happened: {what}")


def test_a_protobuf_body_is_refused_as_an_unsupported_media_type(
    server: RunningServer, unique_team: str, kubectl: Kubectl
) -> None:
    # kubectl 1.32+ sends `kubectl create deployment` (a typed client) in protobuf
    body = b"k8s\x00\n\x0e\n\x07apps/v1\x12\nDeployment"
    with server.client() as c:
        r = c.post(
            f"/k8s/{unique_team}/dev/apis/apps/v1/namespaces/default/deployments",
            content=body,
            headers={"Content-Type": "application/vnd.kubernetes.protobuf"},
        )
    assert r.status_code == 415, r.text
    status = r.json()
    assert (status["kind"], status["reason"]) == ("Status", "UnsupportedMediaType")
    assert "application/json" in status["message"]
    assert "No resources found" in kubectl("get", "deploy").stderr  # nothing made
