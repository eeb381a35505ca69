"""``batch/v1`` Job and CronJob run as Kled Jobs; their status and Pods are views of it.

As a Deployment is an App, a Job is a Kled Job (``kind: Job`` of the environment
``<cluster>-<namespace>``, no ``schedule``) and a CronJob a Kled Job with the CronJob's
``schedule``, ``suspend``, ``concurrencyPolicy`` and history limits: the jobs controller
(``kled.control.jobs``) runs both, one implementation. Each run of a CronJob is shown as a
Job ``<cronjob>-<run>`` the CronJob owns; each attempt of a run (an App of one replica) as
a Pod ``<job>-<5 letters>`` labelled ``job-name`` and ``controller-uid``, which is what
``kubectl get pods -l job-name=…`` and ``kubectl logs job/NAME`` (the Job's selector) find.

What Kled's Job runs is what is mapped: ``completions`` and ``parallelism`` are 1 (one
pod at a time); ``restartPolicy: OnFailure`` is run as ``Never`` (a failed attempt is
retried in a new pod, counted against ``backoffLimit`` as Kubernetes counts restarts);
``suspend`` of a Job, ``timeZone`` other than UTC, and indexed completion are refused.
Pure functions of documents; the views of a Kled Job (a Job's status and Pods, a
CronJob's Jobs) are ``kled.kube.jobviews``, the async shell ``kled.kube.jobsync``.
"""

from __future__ import annotations

import copy
import uuid
from typing import Any

from kled.errors import InvalidInput
from kled.kube import workloads
from kled.kube.status import KubeError, invalid
from kled.kube.validation import check_pod_template
from kled.resources import cron, kinds

KIND_LABEL = "kled.io/kube-kind"
NAME_LABEL = "kled.io/kube-name"
#: on a Job shown for a CronJob's run: the run's number
RUN_ANNOTATION = "kled.io/cron-run"
#: on a Job's Pod: the App whose replica it is (for ``kubectl logs``)
APP_ANNOTATION = "kled.io/app"
CONTROLLER_UID = "batch.kubernetes.io/controller-uid"
JOB_NAME = "batch.kubernetes.io/job-name"
LEGACY_UID, LEGACY_NAME = "controller-uid", "job-name"
_POLICIES = ("Allow", "Forbid", "Replace")
_UTC = ("UTC", "Etc/UTC")

Causes = list[tuple[str, str]]


def _int_in(spec: dict[str, Any], key: str, default: int | None, low: int, high: int) -> Any:
    value = spec.setdefault(key, default) if default is not None else spec.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        return f"Invalid value: {value!r}: must be between {low} and {high}"
    return None


def check_job_spec(spec: Any, at: str, causes: Causes, *, name: str | None) -> None:
    """Defaults and checks of a JobSpec at ``at`` (``name``: the Job's, to label its pods;
    None in a CronJob's template, which Kubernetes leaves without a selector)."""
    if not isinstance(spec, dict):
        causes.append((at, "Required value"))
        return
    for key, default, low, high in (
        ("completions", 1, 1, 1),
        ("parallelism", 1, 1, 1),
        ("backoffLimit", 6, 0, 100),
        ("activeDeadlineSeconds", None, 1, 31_536_000),
    ):
        problem = _int_in(spec, key, default, low, high)
        if problem and key in ("completions", "parallelism"):
            problem = f"Unsupported value: {spec[key]!r}: only 1 pod at a time is run"
        if problem:
            causes.append((f"{at}.{key}", problem))
    if spec.setdefault("completionMode", "NonIndexed") != "NonIndexed":
        causes.append((f"{at}.completionMode", 'Unsupported value: only "NonIndexed" is run'))
    if spec.setdefault("suspend", False) is not False:
        causes.append((f"{at}.suspend", "Unsupported value: a suspended Job is not run"))
    template = spec.get("template")
    if not isinstance(template, dict):
        causes.append((f"{at}.template", "Required value"))
        return
    pod = template.setdefault("spec", {})
    policy = pod.get("restartPolicy", "Always") if isinstance(pod, dict) else None
    check_pod_template(pod, f"{at}.template.spec", causes)
    if isinstance(pod, dict) and policy not in ("Never", "OnFailure"):
        pod["restartPolicy"] = policy
        causes.append(
            (
                f"{at}.template.spec.restartPolicy",
                f'Unsupported value: "{policy}": supported values: "OnFailure", "Never"',
            )
        )
    if name is None:
        return
    meta = template.setdefault("metadata", {})
    labels = meta.setdefault("labels", {}) if isinstance(meta, dict) else {}
    selector = spec.get("selector") or {}
    uid = str((selector.get("matchLabels") or {}).get(CONTROLLER_UID) or uuid.uuid4())
    spec["selector"] = {"matchLabels": {CONTROLLER_UID: uid}}
    spec.setdefault("manualSelector", False)
    labels.update({CONTROLLER_UID: uid, LEGACY_UID: uid, JOB_NAME: name, LEGACY_NAME: name})


def check_job(obj: dict[str, Any], causes: Causes) -> None:
    check_job_spec(obj.get("spec"), "spec", causes, name=str(obj["metadata"].get("name", "")))


def check_cron_job(obj: dict[str, Any], causes: Causes) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(("spec", "Required value"))
        return
    schedule = spec.get("schedule")
    if not isinstance(schedule, str) or not schedule:
        causes.append(("spec.schedule", "Required value"))
    else:
        try:
            cron.parse(schedule)
        except InvalidInput as e:
            causes.append(("spec.schedule", f"Invalid value: {schedule!r}: {e.message}"))
    if spec.get("timeZone") not in (None, *_UTC):
        causes.append(("spec.timeZone", "Unsupported value: schedules are run in UTC"))
    if spec.setdefault("concurrencyPolicy", "Allow") not in _POLICIES:
        causes.append(("spec.concurrencyPolicy", f"Unsupported value: supported: {_POLICIES}"))
    if not isinstance(spec.setdefault("suspend", False), bool):
        causes.append(("spec.suspend", "must be true or false"))
    for key, default in (("successfulJobsHistoryLimit", 3), ("failedJobsHistoryLimit", 1)):
        problem = _int_in(spec, key, default, 0, 100)
        if problem:
            causes.append((f"spec.{key}", problem))
    template = spec.get("jobTemplate")
    if not isinstance(template, dict):
        causes.append(("spec.jobTemplate", "Required value"))
        return
    check_job_spec(template.get("spec"), "spec.jobTemplate.spec", causes, name=None)


def keep_selector(current: dict[str, Any], obj: dict[str, Any]) -> None:
    """An update keeps the Job's selector and pod labels (immutable in Kubernetes; an
    applied manifest leaves them out and validation would draw a new uid)."""
    old, new = current.get("spec") or {}, obj.get("spec") or {}
    if "selector" in old and isinstance(new, dict):
        new["selector"] = copy.deepcopy(old["selector"])
        old_labels = ((old.get("template") or {}).get("metadata") or {}).get("labels") or {}
        labels = new.get("template", {}).get("metadata", {}).get("labels")
        if isinstance(labels, dict):
            for key in (CONTROLLER_UID, LEGACY_UID):
                if key in old_labels:
                    labels[key] = old_labels[key]


# ---- Job and CronJob → Kled Job --------------------------------------------------------


def kled_name(kind: str, name: str) -> str:
    """The Kled Job of a Job ``name``, or of a CronJob (``cron-<name>``)."""
    base = workloads.app_name(name)
    return base if kind == "Job" else f"cron-{base}"[:63]


def env_secret_name(kind: str, name: str) -> str:
    return f"{kled_name(kind, name)[:55]}-job-env"


def job_spec_of(obj: dict[str, Any]) -> dict[str, Any]:
    spec = obj.get("spec") or {}
    if obj.get("kind") == "CronJob":
        return dict((spec.get("jobTemplate") or {}).get("spec") or {})
    return dict(spec)


def _as_deployment(obj: dict[str, Any]) -> dict[str, Any]:
    """The object in a Deployment's shape (metadata, ``spec.template``), so the pod's
    variables are read as a Deployment's are."""
    return {"metadata": obj["metadata"], "spec": job_spec_of(obj)}


def kled_job(
    team: str, cluster: str, obj: dict[str, Any], lookup: workloads.Lookup
) -> dict[str, Any]:
    """The Kled Job that runs Job or CronJob ``obj``; ``Invalid`` for what it cannot run."""
    kind, meta = str(obj.get("kind", "Job")), obj["metadata"]
    namespace = str(meta.get("namespace") or "default")
    job_spec = job_spec_of(obj)
    at = ("spec.jobTemplate." if kind == "CronJob" else "") + "spec.template.spec.containers"
    containers = (job_spec.get("template") or {}).get("spec", {}).get("containers") or []
    if len(containers) != 1:
        raise invalid(kind, meta["name"], [(at, "one container per pod is run")], "batch")
    container = containers[0]
    runtime = (meta.get("annotations") or {}).get(workloads.RUNTIME_ANNOTATION, "container")
    if runtime not in ("container", "process"):
        where = f"metadata.annotations[{workloads.RUNTIME_ANNOTATION}]"
        raise invalid(kind, meta["name"], [(where, "must be container or process")], "batch")
    shaped = _as_deployment(obj)
    sealed = workloads.env_secret_doc(team, cluster, shaped, lookup)
    app = workloads.app_doc(team, cluster, {**shaped, "spec": {**shaped["spec"], "replicas": 1}},
                            lookup)["spec"]  # fmt: skip
    spec: dict[str, Any] = {
        "runtime": runtime,
        "command": app["command"],  # with the container's variables expanded
        "args": app["args"],
        "env": app["env"],
        "backoffLimit": int(job_spec.get("backoffLimit", 6)),
    }
    fields = app.get("fieldEnv") or {}
    for var, path in fields.items():
        if path == "metadata.name":  # each attempt's pod has a name of its own
            where = f"{at}[0].env[name={var}].valueFrom.fieldRef.fieldPath"
            raise invalid(kind, meta["name"], [(where, "metadata.name is not run in a Job's "
                                                "pod: status.podIP and spec.nodeName are")],
                          "batch")  # fmt: skip
    if fields:
        spec["fieldEnv"] = fields
    if sealed is not None:
        spec["envFrom"] = [{"secret": env_secret_name(kind, meta["name"])}]
    if runtime == "container":
        spec["image"] = container["image"]
    if container.get("workingDir"):
        spec["workingDir"] = container["workingDir"]
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    wanted = {k: (limits.get(k) or requests.get(k)) for k in ("cpu", "memory")}
    if any(wanted.values()):
        spec["resources"] = {k: v for k, v in wanted.items() if v}
    selector = (job_spec.get("template") or {}).get("spec", {}).get("nodeSelector")
    if selector:
        spec["nodeSelector"] = dict(selector)
    if job_spec.get("activeDeadlineSeconds") is not None:
        spec["activeDeadlineSeconds"] = int(job_spec["activeDeadlineSeconds"])
    if kind == "CronJob":
        cron_spec = obj["spec"]
        spec["schedule"] = cron_spec["schedule"]
        for key in ("suspend", "concurrencyPolicy", "successfulJobsHistoryLimit",
                    "failedJobsHistoryLimit"):  # fmt: skip
            if key in cron_spec:
                spec[key] = cron_spec[key]
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Job",
        "metadata": {
            "name": kled_name(kind, meta["name"]),
            "team": team,
            "environment": workloads.environment_name(cluster, namespace),
            "labels": {
                workloads.CLUSTER_LABEL: cluster,
                workloads.NAMESPACE_LABEL: namespace,
                KIND_LABEL: kind,
                NAME_LABEL: meta["name"],
            },
        },
        "spec": spec,
    }


def env_secret(
    team: str, cluster: str, obj: dict[str, Any], lookup: workloads.Lookup
) -> dict[str, Any] | None:
    """The Kled Secret of the pod's variables from Secret keys (None: it has none)."""
    found = workloads.env_secret_doc(team, cluster, _as_deployment(obj), lookup)
    if found is not None:
        found["metadata"]["name"] = env_secret_name(str(obj.get("kind")), obj["metadata"]["name"])
    return found


def check_runnable(obj: dict[str, Any]) -> None:
    """Refuse at admission what :func:`kled_job` could not run (nothing half-written)."""
    kind = str(obj.get("kind", "Job"))
    try:
        doc = kled_job("t", "c", obj, lambda kind, ns, name: {"data": {}})
    except KubeError as e:
        if "not found" in e.message:
            return  # references are resolved when it runs
        raise
    try:
        kinds.validate(doc)
    except InvalidInput as e:
        at = ("spec.jobTemplate." if kind == "CronJob" else "") + "spec.template.spec"
        field = e.field or ""
        if field.startswith("metadata"):
            at = "metadata.name"
        elif field.startswith("spec.schedule"):
            at = "spec.schedule"
        else:
            at += ".containers[0]"
        raise invalid(kind, obj["metadata"].get("name", ""), [(at, e.message)], "batch") from None
