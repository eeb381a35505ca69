"""Checks and defaults of the served kinds, as the Kubernetes API server applies them.

Pure functions of a manifest: ``admit`` returns the object with the defaults Kubernetes
fills in (so that ``kubectl diff`` of an applied file shows nothing) or raises ``Invalid``
naming every field at fault (``details.causes[].field``). Only what the served kinds need
is checked; ``fieldValidation=Strict`` refuses unknown top-level and metadata fields.
"""

from __future__ import annotations

import base64
import binascii
import copy
import re
from typing import Any

from kled.kube.served import Served
from kled.kube.status import KubeError, invalid

_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_DATA_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")
#: kinds whose names are DNS labels (the others: DNS subdomains)
_LABEL_NAMED = ("Namespace", "Service")
_TOP_LEVEL = {"apiVersion", "kind", "metadata", "spec", "status", "data", "stringData",
              "binaryData", "type", "immutable", "secrets", "imagePullSecrets",
              "automountServiceAccountToken", "involvedObject", "reason", "message", "source",
              "firstTimestamp", "lastTimestamp", "count", "eventTime", "reportingComponent",
              "reportingInstance", "action", "related", "series"}  # fmt: skip
_METADATA = {"name", "generateName", "namespace", "labels", "annotations", "uid",
             "resourceVersion", "generation", "creationTimestamp", "deletionTimestamp",
             "deletionGracePeriodSeconds", "ownerReferences", "finalizers", "managedFields",
             "selfLink"}  # fmt: skip

Causes = list[tuple[str, str]]


def admit(served: Served, obj: dict[str, Any], *, strict: bool = False) -> dict[str, Any]:
    """The object checked and defaulted; ``Invalid`` (422) with every cause otherwise."""
    obj = copy.deepcopy(obj)
    causes: Causes = []
    meta = obj.get("metadata")
    name = str(meta.get("name") or "") if isinstance(meta, dict) else ""
    if not isinstance(meta, dict):
        raise invalid(served.kind, name, [("metadata", "Required value")], served.group)
    if strict:
        unknown = [k for k in obj if k not in _TOP_LEVEL]
        unknown += [f"metadata.{k}" for k in meta if k not in _METADATA]
        if unknown:
            fields = ", ".join(f'unknown field "{k}"' for k in unknown)
            raise KubeError(
                400,
                "BadRequest",
                f'{served.kind} in version "{served.version}" cannot be handled as a '
                f"{served.kind}: strict decoding error: {fields}",
            )
    _check_name(served, name, causes)
    _check_labels(meta, causes)
    check = _CHECKS.get(served.kind)
    if check is not None:
        check(obj, causes)
    if causes:
        raise invalid(served.kind, name, causes, served.group)
    return obj


def _check_name(served: Served, name: str, causes: Causes) -> None:
    if not name:
        causes.append(("metadata.name", "Required value: name or generateName is required"))
        return
    pattern = _LABEL if served.kind in _LABEL_NAMED else _SUBDOMAIN
    limit = 63 if served.kind in _LABEL_NAMED else 253
    if len(name) > limit or not pattern.match(name):
        causes.append(
            (
                "metadata.name",
                f'"{name}": a lowercase RFC 1123 '
                f"{'label' if limit == 63 else 'subdomain'} must consist of lower case "
                "alphanumeric characters, '-' or '.', and must start and end with an "
                "alphanumeric character",
            )
        )


def _check_labels(meta: dict[str, Any], causes: Causes) -> None:
    for field in ("labels", "annotations"):
        value = meta.get(field)
        if value is None:
            continue
        if not isinstance(value, dict):
            causes.append((f"metadata.{field}", "must be a map of strings"))
            continue
        for key, item in value.items():
            if not isinstance(item, str):
                causes.append((f"metadata.{field}.{key}", "must be a string"))


def _data(obj: dict[str, Any], causes: Causes, *, base64_values: bool) -> None:
    data = obj.get("data")
    if data is None:
        return
    if not isinstance(data, dict):
        causes.append(("data", "must be a map of strings"))
        return
    for key, value in data.items():
        if not _DATA_KEY.match(str(key)) or len(str(key)) > 253:
            causes.append((f"data[{key}]", "a valid config key must consist of alphanumeric "
                           "characters, '-', '_' or '.'"))  # fmt: skip
        if not isinstance(value, str):
            causes.append((f"data[{key}]", "must be a string"))
        elif base64_values:
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                causes.append((f"data[{key}]", "must be base64"))


def _config_map(obj: dict[str, Any], causes: Causes) -> None:
    _data(obj, causes, base64_values=False)


def _secret(obj: dict[str, Any], causes: Causes) -> None:
    string_data = obj.pop("stringData", None)
    _data(obj, causes, base64_values=True)
    if isinstance(string_data, dict):
        data = obj.setdefault("data", {})
        for key, value in string_data.items():
            data[key] = base64.b64encode(str(value).encode()).decode()
    obj.setdefault("type", "Opaque")


def _containers(spec: Any, at: str, causes: Causes) -> None:
    if not isinstance(spec, dict):
        causes.append((at, "Required value"))
        return
    containers = spec.get("containers")
    if not isinstance(containers, list) or not containers:
        causes.append((f"{at}.containers", "Required value"))
        return
    seen: set[str] = set()
    for index, container in enumerate(containers):
        where = f"{at}.containers[{index}]"
        if not isinstance(container, dict):
            causes.append((where, "must be an object"))
            continue
        name = container.get("name")
        if not isinstance(name, str) or not _LABEL.match(name):
            causes.append((f"{where}.name", "Required value: a DNS label"))
        elif name in seen:
            causes.append((f"{where}.name", f'Duplicate value: "{name}"'))
        else:
            seen.add(name)
        if not isinstance(container.get("image"), str) or not container.get("image"):
            causes.append((f"{where}.image", "Required value"))
        for p_index, port in enumerate(container.get("ports") or []):
            number = port.get("containerPort") if isinstance(port, dict) else None
            if not isinstance(number, int) or not 0 < number < 65536:
                causes.append(
                    (f"{where}.ports[{p_index}].containerPort", "must be between 1 and 65535")
                )
            elif isinstance(port, dict):
                port.setdefault("protocol", "TCP")
        container.setdefault("imagePullPolicy", "IfNotPresent")
        container.setdefault("terminationMessagePath", "/dev/termination-log")
        container.setdefault("terminationMessagePolicy", "File")
        container.setdefault("resources", {})
    spec.setdefault("restartPolicy", "Always")
    spec.setdefault("dnsPolicy", "ClusterFirst")
    spec.setdefault("schedulerName", "default-scheduler")
    spec.setdefault("securityContext", {})
    spec.setdefault("terminationGracePeriodSeconds", 30)


#: the pod checks and defaults, for the kinds with a pod template
check_pod_template = _containers


def _job(obj: dict[str, Any], causes: Causes) -> None:
    from kled.kube import jobs  # which checks its pod template with this module

    jobs.check_job(obj, causes)


def _cron_job(obj: dict[str, Any], causes: Causes) -> None:
    from kled.kube import jobs

    jobs.check_cron_job(obj, causes)


def _pod(obj: dict[str, Any], causes: Causes) -> None:
    _containers(obj.get("spec"), "spec", causes)


def _deployment(obj: dict[str, Any], causes: Causes) -> None:
    spec = obj.get("spec")
    if not isinstance(spec, dict):
        causes.append(("spec", "Required value"))
        return
    replicas = spec.setdefault("replicas", 1)
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        causes.append(("spec.replicas", f"{replicas!r}: must be greater than or equal to 0"))
    selector = spec.get("selector")
    labels = ((spec.get("template") or {}).get("metadata") or {}).get("labels") or {}
    wanted = selector.get("matchLabels") if isinstance(selector, dict) else None
    if not isinstance(wanted, dict) or not wanted:
        causes.append(("spec.selector", "Required value"))
    elif any(labels.get(k) != v for k, v in wanted.items()):
        causes.append(
            ("spec.template.metadata.labels", "`selector` does not match template `labels`")
        )
    _containers((spec.get("template") or {}).get("spec"), "spec.template.spec", causes)
    spec.setdefault(
        "strategy",
        {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "25%", "maxSurge": "25%"}},
    )
    spec.setdefault("revisionHistoryLimit", 10)
    spec.setdefault("progressDeadlineSeconds", 600)


def _service(obj: dict[str, Any], causes: Causes) -> None:
    spec = obj.setdefault("spec", {})
    if not isinstance(spec, dict):
        causes.append(("spec", "must be an object"))
        return
    kind = spec.setdefault("type", "ClusterIP")
    if kind not in ("ClusterIP", "NodePort", "LoadBalancer", "ExternalName"):
        causes.append(("spec.type", f'Unsupported value: "{kind}"'))
    ports = spec.get("ports") or []
    if not isinstance(ports, list):
        causes.append(("spec.ports", "must be a list"))
        return
    if not ports and kind != "ExternalName":
        causes.append(("spec.ports", "Required value"))
    for index, port in enumerate(ports):
        number = port.get("port") if isinstance(port, dict) else None
        if not isinstance(number, int) or not 0 < number < 65536:
            causes.append((f"spec.ports[{index}].port", "must be between 1 and 65535"))
            continue
        assert isinstance(port, dict)
        port.setdefault("protocol", "TCP")
        port.setdefault("targetPort", number)
        if len(ports) > 1 and not port.get("name"):
            causes.append((f"spec.ports[{index}].name", "Required value"))
    spec.setdefault("sessionAffinity", "None")


_CHECKS = {
    "ConfigMap": _config_map,
    "Secret": _secret,
    "Pod": _pod,
    "Deployment": _deployment,
    "Service": _service,
    "Job": _job,
    "CronJob": _cron_job,
}
