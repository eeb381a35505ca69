"""The parts of an App that make its replica a pod of several containers.

A replica of the container runtime is a pod: its own container (the App's ``image``,
``command``…) and, in the same network namespace, the App's ``sidecars`` (each reaches
the others on ``localhost``), after its ``initContainers`` ran to completion in order.
``volumes`` are folders of the pod that its containers mount (``volumeMounts``): an empty
one (``emptyDir``, gone with the replica) or the entries of a Config or a Secret of the
environment as files (a Secret's only in memory on the node). One App, one rollout: a
change to any container or volume replaces the replicas as a change of ``image`` does.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, Strict, field_validator, model_validator

from kled.resources.fields import Cpu, Memory
from kled.resources.meta import (
    Bool,
    DnsLabel,
    EnvVars,
    FieldEnv,
    KledModel,
    NonEmptyStr,
    in_range,
    problem,
    range_schema,
)

Mode = Annotated[int, Strict(), in_range(0, 0o777), range_schema(0, 0o777)]


def _relative(value: str) -> str:
    parts = value.split("/")
    if value.startswith("/") or ".." in parts or "\x00" in value or not value:
        raise problem("must be a relative path without '..'")
    return value


class ContainerResources(KledModel):
    cpu: Cpu | None = None
    memory: Memory | None = None


class ContainerEnvFrom(KledModel):
    """All entries of a Config or a Secret of the environment as variables."""

    config: DnsLabel | None = None
    secret: DnsLabel | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> ContainerEnvFrom:
        if [self.config, self.secret].count(None) != 1:
            raise problem("must name exactly one of config or secret")
        return self


class VolumeMount(KledModel):
    name: DnsLabel
    """A volume of ``spec.volumes``."""
    mount_path: NonEmptyStr
    read_only: Bool = False
    sub_path: str | None = None
    """Mount this folder or file of the volume instead of all of it."""

    @field_validator("mount_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/") or "\x00" in value or ":" in value:
            raise problem("must be an absolute path like /etc/app (no ':')")
        return value

    @field_validator("sub_path")
    @classmethod
    def _sub(cls, value: str | None) -> str | None:
        return None if value is None else _relative(value)


class Container(KledModel):
    """A sidecar or init container: its own image and command in the replica's pod."""

    name: DnsLabel
    image: NonEmptyStr
    command: list[str] = []
    args: list[str] = []
    working_dir: str | None = None
    env: EnvVars = {}
    field_env: FieldEnv = {}
    """Variables the agent sets where the replica runs (as ``AppSpec.field_env``)."""
    env_from: list[ContainerEnvFrom] = []
    resources: ContainerResources = Field(default_factory=ContainerResources)
    volume_mounts: list[VolumeMount] = []


class KeyToPath(KledModel):
    key: NonEmptyStr
    path: NonEmptyStr
    """The file's path in the volume (default: the key)."""
    mode: Mode | None = None

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        return _relative(value)


class FileSource(KledModel):
    """The entries of a Config or Secret as files: all of them named by their keys, or
    those ``items`` lists at the paths it gives."""

    name: DnsLabel
    items: list[KeyToPath] = []
    default_mode: Mode = 0o644
    optional: Bool = False
    """When the Config or Secret (or a key of ``items``) is missing: an empty folder."""


class Volume(KledModel):
    name: DnsLabel
    empty_dir: dict[str, Any] | None = None
    """``{}``: an empty folder the pod's containers share, gone with the replica."""
    config: FileSource | None = None
    secret: FileSource | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Volume:
        if [self.empty_dir, self.config, self.secret].count(None) != 2:
            raise problem("must set exactly one of emptyDir, config or secret")
        return self


def check_pod(
    runtime: str,
    sidecars: list[Container],
    init_containers: list[Container],
    volumes: list[Volume],
    mounts: list[VolumeMount],
) -> None:
    """The pod's parts agree: the container runtime, unique names, mounts of known volumes."""
    parts = (("sidecars", sidecars), ("initContainers", init_containers))
    if runtime != "container":
        for at, value in (*parts, ("volumes", volumes), ("volumeMounts", mounts)):
            if value:
                raise problem("needs the container runtime (spec.runtime: container)", at=(at,))
    names: set[str] = set()
    for at, containers in parts:
        for index, container in enumerate(containers):
            if container.name in names:
                raise problem(f"duplicate container name {container.name!r}",
                              at=(at, index, "name"))  # fmt: skip
            names.add(container.name)
    known = {v.name for v in volumes}
    if len(known) != len(volumes):
        raise problem("duplicate volume name", at=("volumes",))
    where: list[tuple[tuple[str | int, ...], list[VolumeMount]]] = [(("volumeMounts",), mounts)]
    for at, containers in parts:
        where += [((at, i, "volumeMounts"), c.volume_mounts) for i, c in enumerate(containers)]
    for prefix, listed in where:
        for index, mount in enumerate(listed):
            if mount.name not in known:
                raise problem(f"no volume {mount.name!r} in spec.volumes",
                              at=(*prefix, index, "name"))  # fmt: skip
