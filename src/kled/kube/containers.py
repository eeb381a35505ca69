"""A pod template's containers, variables and volumes as the parts of a Kled App.

The first container is the App's own (image, command, probes…); the others are its ``sidecars`` and
``initContainers`` are its ``initContainers``, all in the replica's pod (one network
namespace). Variables resolve as Kubernetes orders them — ``envFrom`` first
(``configMapRef``/``secretRef``, with ``prefix`` and ``optional``), then ``env`` (literal,
``configMapKeyRef``, ``secretKeyRef``, ``fieldRef``) — into literal ones, ones the agent
sets where the replica runs (``fieldRef`` of ``metadata.name``, ``status.podIP``,
``spec.nodeName``: the App's ``fieldEnv``) and sealed ones: those from Secrets go to a Kled
Secret per container (``<app>-env`` for the first, ``<app>-env-<container>`` for the
others) that the container takes with ``envFrom``, never into the App document.
``configMap`` and ``secret`` volumes become Kled Configs and Secrets of the environment
(``<app>-vol-<volume>``) with the object's data, which the App's ``config``/``secret``
volumes name; ``emptyDir`` is an App ``emptyDir``. Every derived document carries the
Deployment's label, so the mirror deletes those no longer wanted.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kled.kube.status import KubeError, invalid

#: (kind, namespace, name) → the object, or None
Lookup = Callable[[str, str, str], dict[str, Any] | None]
PROBES = ("readinessProbe", "livenessProbe", "startupProbe", "lifecycle")


def derived_name(app: str, *parts: str) -> str:
    """``<app>-<parts…>``, or a digest of it where that is no DNS label of 63."""
    name = "-".join((app, *parts))
    if len(name) <= 63 and all(c.isalnum() or c == "-" for c in name):
        return name.lower()
    digest = hashlib.sha256(name.encode()).hexdigest()[:10]
    return f"{app[:52].rstrip('-')}-{digest}"


@dataclass
class Derived:
    """What a pod template needs beside its App: Kled Configs and Secrets by name."""

    configs: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)


def _fail(name: str, at: str, message: str) -> KubeError:
    return invalid("Deployment", name, [(at, message)], "apps")


#: ``fieldRef`` paths only the replica's node knows: the agent sets them (``fieldEnv``)
NODE_FIELDS = ("metadata.name", "status.podIP", "spec.nodeName")


def container_env(
    container: dict[str, Any], namespace: str, lookup: Lookup, at: str, owner: str
) -> tuple[dict[str, str], dict[str, str], dict[str, str]]:
    """The container's variables in Kubernetes' order: (literal, from Secrets — base64,
    set by the agent — name → fieldPath)."""
    merged: dict[str, tuple[str, bool]] = {}  # name → (value, sealed)
    fields: dict[str, str] = {}
    for index, source in enumerate(container.get("envFrom") or []):
        prefix = str(source.get("prefix") or "")
        for kind, key in (("ConfigMap", "configMapRef"), ("Secret", "secretRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = lookup(kind, namespace, str(ref.get("name", "")))
            if obj is None:
                if ref.get("optional"):
                    continue
                raise _fail(owner, f"{at}.envFrom[{index}].{key}",
                            f"{kind} {ref.get('name')!r} not found")  # fmt: skip
            for name, value in (obj.get("data") or {}).items():
                merged[prefix + str(name)] = (str(value), kind == "Secret")
    for index, item in enumerate(container.get("env") or []):
        name = str(item.get("name", ""))
        fields.pop(name, None)  # (a later entry of the same name wins)
        if "value" in item or "valueFrom" not in item:
            merged[name] = _expanded(str(item.get("value", "")), merged)
            continue
        source = item["valueFrom"] or {}
        where = f"{at}.env[{index}].valueFrom"
        if source.get("fieldRef") is not None:
            path = str((source["fieldRef"] or {}).get("fieldPath", ""))
            if path in NODE_FIELDS:
                merged.pop(name, None)
                fields[name] = path
                continue
            if path != "metadata.namespace":
                known = ", ".join(("metadata.namespace", *NODE_FIELDS))
                raise _fail(owner, f"{where}.fieldRef.fieldPath",
                            f"{path!r} is not supported here: only {known}")  # fmt: skip
            merged[name] = (namespace, False)
            continue
        for kind, key in (("ConfigMap", "configMapKeyRef"), ("Secret", "secretKeyRef")):
            ref = source.get(key)
            if ref is None:
                continue
            obj = lookup(kind, namespace, str(ref.get("name", "")))
            data = (obj or {}).get("data") or {}
            if ref.get("key") not in data:
                if ref.get("optional"):
                    break
                raise _fail(owner, where, f"{kind} key {ref.get('key')!r} not found")
            merged[name] = (str(data[ref["key"]]), kind == "Secret")
            break
        else:
            raise _fail(owner, where, "only configMapKeyRef, secretKeyRef and fieldRef are run")
    env = {k: v for k, (v, sealed) in merged.items() if not sealed}
    sealed = {k: v for k, (v, is_sealed) in merged.items() if is_sealed}
    return env, sealed, fields


def expand(text: str, lookup: Callable[[str], str | None]) -> tuple[str, set[str]]:
    """``text`` with each ``$(NAME)`` that ``lookup`` knows replaced, as Kubernetes expands
    a container's variables, command and args: ``$$`` is a ``$``; an unknown name, a ``$``
    followed by anything else and an unclosed ``$(`` stay as written. Also returns the
    names replaced."""
    out: list[str] = []
    used: set[str] = set()
    i = 0
    while i < len(text):
        char = text[i]
        if char != "$" or i + 1 == len(text):
            out.append(char)
            i += 1
            continue
        following = text[i + 1]
        if following == "$":
            out.append("$")
            i += 2
            continue
        end = text.find(")", i + 2) if following == "(" else -1
        if end < 0:
            out.append(char)
            i += 1
            continue
        name = text[i + 2 : end]
        value = lookup(name)
        if value is None:
            out.append(text[i : end + 1])
        else:
            out.append(value)
            used.add(name)
        i = end + 1
    return "".join(out), used


def _value(entry: tuple[str, bool] | None) -> str | None:
    """A merged variable's value as the container sees it (a sealed one is base64)."""
    if entry is None:
        return None
    value, sealed = entry
    return base64.b64decode(value).decode(errors="replace") if sealed else value


def _expanded(text: str, merged: dict[str, tuple[str, bool]]) -> tuple[str, bool]:
    """A literal variable's value with the variables before it expanded: sealed (base64,
    kept in the container's Secret) when it takes a value from a Secret."""
    value, used = expand(text, lambda name: _value(merged.get(name)))
    if any(merged[name][1] for name in used):
        return base64.b64encode(value.encode()).decode(), True
    return value, False


def argv(
    container: dict[str, Any],
    env: dict[str, str],
    sealed: dict[str, str],
    at: str,
    owner: str,
) -> tuple[list[str], list[str]]:
    """The container's ``command`` and ``args`` with its variables expanded. A reference
    to a variable from a Secret is refused: the command is part of the App document,
    which never holds a Secret's value (a shell's ``$NAME`` reads it at run time)."""

    def known(name: str) -> str | None:
        return env.get(name, sealed.get(name))

    out: list[list[str]] = []
    for key in ("command", "args"):
        words = []
        for index, word in enumerate(container.get(key) or []):
            value, used = expand(str(word), known)
            secret = sorted(used - set(env))
            if secret:
                raise _fail(owner, f"{at}.{key}[{index}]",
                            f"$({secret[0]}) is a variable from a Secret, which Kled keeps out "
                            f"of the App: read it in a shell as ${secret[0]}")  # fmt: skip
            words.append(value)
        out.append(words)
    return out[0], out[1]


def mounts(container: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for m in container.get("volumeMounts") or []:
        mount: dict[str, Any] = {"name": m.get("name"), "mountPath": m.get("mountPath")}
        if m.get("readOnly"):
            mount["readOnly"] = True
        if m.get("subPath"):
            mount["subPath"] = m["subPath"]
        out.append(mount)
    return out


def resources(container: dict[str, Any]) -> dict[str, Any]:
    """CPU and memory: the limits, else the requests."""
    limits = (container.get("resources") or {}).get("limits") or {}
    requests = (container.get("resources") or {}).get("requests") or {}
    wanted = {k: (limits.get(k) or requests.get(k)) for k in ("cpu", "memory")}
    return {k: v for k, v in wanted.items() if v}


def other_container(
    container: dict[str, Any],
    namespace: str,
    lookup: Lookup,
    at: str,
    owner: str,
    app: str,
    derived: Derived,
) -> dict[str, Any]:
    """A sidecar or init container in the App's terms."""
    for probe in PROBES:
        if container.get(probe):
            raise _fail(owner, f"{at}.{probe}", "probes and hooks are run for the first "
                        "container only")  # fmt: skip
    env, sealed, fields = container_env(container, namespace, lookup, at, owner)
    command, args = argv(container, env, sealed, at, owner)
    out: dict[str, Any] = {
        "name": container["name"],
        "image": container.get("image", ""),
        "command": command,
        "args": args,
        "env": env,
    }
    if fields:
        out["fieldEnv"] = fields
    if sealed:
        secret = derived_name(app, "env", str(container["name"]))
        derived.secrets[secret] = sealed
        out["envFrom"] = [{"secret": secret}]
    if container.get("workingDir"):
        out["workingDir"] = container["workingDir"]
    if resources(container):
        out["resources"] = resources(container)
    if mounts(container):
        out["volumeMounts"] = mounts(container)
    return out


def volumes(
    pod_spec: dict[str, Any], namespace: str, lookup: Lookup, owner: str, app: str, derived: Derived
) -> list[dict[str, Any]]:
    """The pod's volumes as the App's, their data as derived Configs and Secrets."""
    out: list[dict[str, Any]] = []
    for index, volume in enumerate(pod_spec.get("volumes") or []):
        name = str(volume.get("name", ""))
        at = f"spec.template.spec.volumes[{index}]"
        if volume.get("emptyDir") is not None:
            out.append({"name": name, "emptyDir": {}})
            continue
        for key, kind, ref_key, book in (
            ("configMap", "ConfigMap", "name", derived.configs),
            ("secret", "Secret", "secretName", derived.secrets),
        ):
            source = volume.get(key)
            if source is None:
                continue
            obj = lookup(kind, namespace, str(source.get(ref_key, "")))
            if obj is None and not source.get("optional"):
                raise _fail(owner, f"{at}.{key}.{ref_key}",
                            f"{kind} {source.get(ref_key)!r} not found")  # fmt: skip
            target = derived_name(app, "vol", name)
            files: dict[str, Any] = {"name": target}
            if obj is not None:
                data = {str(k): str(v) for k, v in (obj.get("data") or {}).items()}
                if kind == "ConfigMap":
                    binary = obj.get("binaryData") or {}
                    if binary:
                        raise _fail(owner, f"{at}.configMap", "binaryData is not run yet")
                book[target] = data
            else:
                files["optional"] = True
            for item_key in ("items", "defaultMode"):
                if source.get(item_key) is not None:
                    files[item_key] = source[item_key]
            if source.get("optional"):
                files["optional"] = True
            out.append({"name": name, "config" if kind == "ConfigMap" else "secret": files})
            break
        else:
            raise _fail(owner, at, "only emptyDir, configMap and secret volumes are run")
    return out


def sealed_doc(kind: str, name: str, data: dict[str, str], meta: dict[str, Any]) -> dict[str, Any]:
    """A derived Kled Config (plain data) or Secret (base64 data)."""
    return {
        "apiVersion": "kled.io/v1",
        "kind": kind,
        "metadata": {**meta, "name": name},
        "data": data,
    }


def sidecar_of(pod: dict[str, Any], container: str | None) -> str | None:
    """The sidecar ``kubectl exec -c`` names (None: the pod's first container)."""
    names = [str(c.get("name")) for c in (pod.get("spec") or {}).get("containers") or []]
    if container in (None, "") or (names and container == names[0]):
        return None
    if container not in names:
        pod_name = pod.get("metadata", {}).get("name", "")
        raise KubeError(400, "BadRequest", f"container {container} is not valid for pod {pod_name}")
    return container


def log_container(pod: dict[str, Any], container: str | None) -> str | None:
    """Whose lines ``kubectl logs -c`` wants: None for the first container, else the name
    of a sidecar or init container; a pod of several without ``-c`` is refused, as in
    Kubernetes."""
    spec = pod.get("spec") or {}
    names = [str(c.get("name")) for c in spec.get("containers") or []]
    inits = [str(c.get("name")) for c in spec.get("initContainers") or []]
    pod_name = pod.get("metadata", {}).get("name", "")
    if container in (None, ""):
        if len(names) > 1:
            raise KubeError(400, "BadRequest", f"a container name must be specified for pod "
                            f"{pod_name}, choose one of: [{' '.join(names)}]")  # fmt: skip
        return None
    if names and container == names[0]:
        return None
    if container not in names and container not in inits:
        raise KubeError(400, "BadRequest", f"container {container} is not valid for pod {pod_name}")
    return container
