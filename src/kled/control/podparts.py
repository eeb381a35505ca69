"""An App's sidecars, init containers and volumes in the agent's terms (``ReplicaSpec``).

Resolved here like ``envFrom``, so an agent never looks anything up: each container's
environment (the Environment's variables, its ``envFrom``, its ``env``), and the files of
every ``config`` and ``secret`` volume (a Config's values as text, a Secret's decoded),
named by their keys or by ``items``, with their modes. A Config or Secret (or an item's
key) that does not exist makes the app Failed (``ConfigNotFound``, ``SecretNotFound``)
unless the volume is ``optional``, which then is an empty folder.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from kled.control.desired import BadReference, Ref, app_ref, resolve_env
from kled.resources.hoststate import (
    ContainerSpec,
    FileSpec,
    MountSpec,
    ResourceLimits,
    VolumeSpec,
)
from kled.resources.quantities import parse_cpu, parse_memory


@dataclass
class PodParts:
    sidecars: list[ContainerSpec] = field(default_factory=list)
    init_containers: list[ContainerSpec] = field(default_factory=list)
    volumes: list[VolumeSpec] = field(default_factory=list)
    mounts: list[MountSpec] = field(default_factory=list)


def mounts(listed: Any) -> list[MountSpec]:
    return [
        MountSpec(
            volume=str(m["name"]),
            path=str(m["mountPath"]),
            read_only=bool(m.get("readOnly", False)),
            sub_path=m.get("subPath"),
        )
        for m in listed or []
    ]


def _container(
    app: Mapping[str, Any],
    doc: Mapping[str, Any],
    configs: Mapping[Ref, Mapping[str, Any]],
    secrets: Mapping[Ref, Mapping[str, Any]],
    variables: Mapping[str, str],
) -> ContainerSpec | BadReference:
    env = resolve_env({"metadata": app["metadata"], "spec": doc}, configs, secrets, variables)
    if isinstance(env, BadReference):
        return env
    wanted = doc.get("resources") or {}
    return ContainerSpec(
        name=str(doc["name"]),
        image=str(doc["image"]),
        command=[str(c) for c in doc.get("command") or []],
        args=[str(a) for a in doc.get("args") or []],
        working_dir=doc.get("workingDir"),
        env=env,
        field_env={str(k): str(v) for k, v in (doc.get("fieldEnv") or {}).items()},
        resources=ResourceLimits(
            cpu_millicores=parse_cpu(wanted["cpu"]) if wanted.get("cpu") else None,
            memory_bytes=parse_memory(wanted["memory"]) if wanted.get("memory") else None,
        ),
        mounts=mounts(doc.get("volumeMounts")),
    )


def _files(
    name: str,
    kind: str,
    source: Mapping[str, Any],
    found: Mapping[str, Any] | None,
) -> list[FileSpec] | BadReference:
    """The files of one config or secret volume (base64 contents)."""
    optional = bool(source.get("optional"))
    wanted = str(source["name"])
    what = "Config" if kind == "config" else "Secret"
    if found is None:
        if optional:
            return []
        return BadReference(
            f"{what}NotFound",
            f"app {name}: {kind} {wanted!r} (a volume) does not exist; create it, or mark "
            "the volume optional",
        )
    data = {str(k): str(v) for k, v in (found.get("data") or {}).items()}
    if kind == "config":
        data = {k: base64.b64encode(v.encode()).decode() for k, v in data.items()}
    else:
        for key, value in data.items():
            try:
                base64.b64decode(value, validate=True)
            except (binascii.Error, ValueError):
                return BadReference("InvalidSecret", f"app {name}: secret {wanted!r} "
                                    f"key {key!r} is not base64")  # fmt: skip
    mode = int(source.get("defaultMode", 0o644))
    items = source.get("items") or [{"key": k, "path": k} for k in sorted(data)]
    out = []
    for item in items:
        key = str(item["key"])
        if key not in data:
            if optional:
                continue
            return BadReference(
                f"{what}NotFound",
                f"app {name}: {kind} {wanted!r} has no key {key!r} (a volume's items)",
            )
        out.append(FileSpec(path=str(item.get("path") or key), data=data[key],
                            mode=int(item.get("mode") or mode)))  # fmt: skip
    return out


def resolve(
    app: Mapping[str, Any],
    configs: Mapping[Ref, Mapping[str, Any]],
    secrets: Mapping[Ref, Mapping[str, Any]],
    variables: Mapping[str, str] | None = None,
) -> PodParts | BadReference:
    """The pod's other containers and its volumes, or the first reference that fails."""
    team, env, name = app_ref(app)
    spec = app.get("spec") or {}
    parts = PodParts(mounts=mounts(spec.get("volumeMounts")))
    for key, into in (("sidecars", parts.sidecars), ("initContainers", parts.init_containers)):
        for doc in spec.get(key) or []:
            made = _container(app, doc, configs, secrets, variables or {})
            if isinstance(made, BadReference):
                return made
            into.append(made)
    for volume in spec.get("volumes") or []:
        vname = str(volume["name"])
        if volume.get("emptyDir") is not None:
            parts.volumes.append(VolumeSpec(name=vname, kind="emptyDir"))
            continue
        kind = "config" if volume.get("config") else "secret"
        source = volume[kind]
        book = configs if kind == "config" else secrets
        files = _files(name, kind, source, book.get((team, env, str(source["name"]))))
        if isinstance(files, BadReference):
            return files
        parts.volumes.append(VolumeSpec(name=vname, kind=kind, files=files))
    return parts
