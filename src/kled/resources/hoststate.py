"""The desired and observed state of one host, as typed data.

The control plane computes a ``HostDesiredState`` per node and writes it, whole, to the
node's key in the Message Office; the agent reconciles its host to it and reports back
``ReplicaStatus`` values (alone, and inside ``NodeHeartbeat``), ``AgentEvent`` values and
``LogLine`` values. These models are the wire contract between the two sides, so they live
in ``kled.resources``, which both ``kled.bus`` and ``kled.agent`` may import.

Merge rule: a desired state is replaced, never patched; the newest revision wins.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SerializerFunctionWrapHandler, model_serializer

from kled.resources.netstate import HostNetwork
from kled.resources.workspacestate import WorkspaceOnHost


def utcnow() -> datetime:
    """Timezone-aware now, the only clock used in these messages."""
    return datetime.now(UTC)


class _Model(BaseModel):
    # Unknown fields are kept out so that a typo on either side fails loudly in tests.
    model_config = ConfigDict(extra="forbid")


class RuntimeKind(StrEnum):
    PROCESS = "process"
    CONTAINER = "container"


class RestartPolicy(StrEnum):
    ALWAYS = "Always"
    ON_FAILURE = "OnFailure"
    NEVER = "Never"


class ReplicaState(StrEnum):
    PENDING = "Pending"
    STARTING = "Starting"
    RUNNING = "Running"
    FAILED = "Failed"
    STOPPED = "Stopped"
    SUCCEEDED = "Succeeded"


class PortSpec(_Model):
    name: str | None = None
    port: int = Field(ge=1, le=65535)
    target_port: int | None = Field(default=None, ge=1, le=65535)
    protocol: Literal["TCP", "UDP"] = "TCP"


class ResourceLimits(_Model):
    """Limits as numbers: the control plane parses ``500m`` / ``256Mi`` before sending."""

    cpu_millicores: int | None = Field(default=None, ge=1)
    memory_bytes: int | None = Field(default=None, ge=1)


class Handler(_Model):
    """A probe's or hook's action, resolved: the port is the number the replica listens on."""

    kind: Literal["httpGet", "tcpSocket", "exec"]
    port: int | None = Field(default=None, ge=1, le=65535)
    path: str = "/"
    headers: list[tuple[str, str]] = Field(default_factory=list)
    command: list[str] = Field(default_factory=list)


class ProbeSpec(Handler):
    """A probe as the agent runs it (Kubernetes' defaults)."""

    initial_delay_seconds: float = Field(default=0, ge=0)
    period_seconds: float = Field(default=10, gt=0)
    timeout_seconds: float = Field(default=1, gt=0)
    success_threshold: int = Field(default=1, ge=1)
    failure_threshold: int = Field(default=3, ge=1)


_LIFECYCLE_FIELDS = (
    "readiness_probe", "liveness_probe", "startup_probe", "pre_stop",
    "termination_grace_period_seconds",
)  # fmt: skip
#: left out when empty, so a replica with one container sends what it sent before
_POD_FIELDS = ("sidecars", "init_containers", "volumes", "mounts", "field_env", "name_prefix")


class FileSpec(_Model):
    """One file of a config or secret volume: its path in the volume, its bytes (base64)."""

    path: str
    data: str = Field(repr=False)
    mode: int = Field(default=0o644, ge=0, le=0o777)


class VolumeSpec(_Model):
    """A volume of the replica's pod: an empty folder, or files from a Config or Secret.
    Secret files are written to memory only (a tmpfs), never to the node's disk."""

    name: str
    kind: Literal["emptyDir", "config", "secret"]
    files: list[FileSpec] = Field(default_factory=list, repr=False)


class MountSpec(_Model):
    volume: str
    path: str
    read_only: bool = False
    sub_path: str | None = None


class ContainerSpec(_Model):
    """Another container of the replica's pod (a sidecar, or an init container that runs
    to completion first): same network namespace and volumes, its own image and command."""

    name: str
    image: str
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    env: dict[str, str] = Field(default_factory=dict, repr=False)
    #: variables the agent sets where the replica runs (``ReplicaSpec.field_env``)
    field_env: dict[str, str] = Field(default_factory=dict)
    resources: ResourceLimits = Field(default_factory=ResourceLimits)
    mounts: list[MountSpec] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_no_field_env(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)  # (an older agent refuses keys it does not know)
        if not data.get("field_env"):
            data.pop("field_env", None)
        return data


class ReplicaSpec(_Model):
    """One replica of an app that should run on this host."""

    team: str
    environment: str
    app: str
    app_uid: str = ""
    index: int = Field(ge=0)
    runtime: RuntimeKind = RuntimeKind.PROCESS
    command: list[str] = Field(default_factory=list)
    args: list[str] = Field(default_factory=list)
    working_dir: str | None = None
    #: already resolved: the control plane expands ``envFrom`` before sending
    env: dict[str, str] = Field(default_factory=dict)
    #: variables the agent sets where it runs the replica, by what they are
    #: (``FIELD_PATHS``: its name, pod IP, node); see ``fields.with_fields``
    field_env: dict[str, str] = Field(default_factory=dict)
    #: a replica's name is ``<name_prefix>-<index>``; None: the app's name
    name_prefix: str | None = None
    image: str | None = None
    ports: list[PortSpec] = Field(default_factory=list)
    resources: ResourceLimits = Field(default_factory=ResourceLimits)
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    #: bumped by ``kled app restart`` (a restart nonce): a change restarts the replica
    generation: int = 0
    readiness_probe: ProbeSpec | None = None
    liveness_probe: ProbeSpec | None = None
    startup_probe: ProbeSpec | None = None
    #: run before SIGTERM, once the replica has left the gateways' backends
    pre_stop: Handler | None = None
    #: seconds from SIGTERM to SIGKILL; None: the runtime's own (30 s by default)
    termination_grace_period_seconds: int | None = Field(default=None, ge=0)
    #: Filled by the agent, never by the control plane: the network namespace (a path
    #: under /run/netns) the replica runs in and its pod IP, taken from the desired
    #: state's ``network.pods``. Keeping them in the spec a runtime records means a replica
    #: whose pod network changed is restarted into the new one.
    pod_netns: str | None = None
    pod_ip: str | None = None
    #: the pod's other containers (container runtime only), started after the replica's
    #: own; init containers run to completion, in order, before it
    sidecars: list[ContainerSpec] = Field(default_factory=list)
    init_containers: list[ContainerSpec] = Field(default_factory=list)
    volumes: list[VolumeSpec] = Field(default_factory=list)
    #: where the replica's own container mounts the volumes
    mounts: list[MountSpec] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_unset_lifecycle(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # An agent older than probes refuses keys it does not know: an app without probes
        # or hooks sends exactly what it sent before, so agents can be upgraded after the
        # control plane.
        data: dict[str, Any] = handler(self)
        for key in _LIFECYCLE_FIELDS:
            if data.get(key) is None:
                data.pop(key, None)
        for key in _POD_FIELDS:
            if not data.get(key):
                data.pop(key, None)
        return data

    @property
    def id(self) -> str:
        """Stable name of the replica across hosts and restarts: team.env.app.index."""
        return replica_id(self.team, self.environment, self.app, self.index)

    @property
    def name(self) -> str:
        """The replica's name as its app lists it (a Kled Cluster's pod name)."""
        return f"{self.name_prefix or self.app}-{self.index}"

    @property
    def resource_name(self) -> str:
        """How log lines name this replica: kind/team/name."""
        return f"replica/{self.team}/{self.environment}.{self.app}.{self.index}"


def replica_id(team: str, environment: str, app: str, index: int) -> str:
    return f"{team}.{environment}.{app}.{index}"


class HostDesiredState(_Model):
    """Everything one node should run; written whole by the control plane."""

    node: str
    #: the control plane's own counter, for logs and for ordering across rewrites
    generation: int = 0
    #: the Message Office's revision of the key this value was read from (0 if unknown)
    revision: int = 0
    replicas: list[ReplicaSpec] = Field(default_factory=list)
    #: the host's team gateways and pod namespaces; None means "leave the network alone"
    #: (an older control plane, or a node without the mesh), not "tear it down". A replica
    #: listed in ``network.pods`` runs inside its pod namespace.
    network: HostNetwork | None = None
    #: the workspaces this node runs (``workspacestate``); None means "leave them alone"
    #: (a control plane older than workspaces), and is left out of the message
    workspaces: list[WorkspaceOnHost] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_workspaces(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("workspaces") is None:
            data.pop("workspaces", None)
        return data

    def by_id(self) -> dict[str, ReplicaSpec]:
        return {r.id: r for r in self.replicas}


class ContainerStatus(_Model):
    """A sidecar of a replica, as its runtime sees it."""

    running: bool = False
    restarts: int = 0
    last_exit_code: int | None = None


class ReplicaStatus(_Model):
    """What the agent observes of one replica."""

    id: str
    state: ReplicaState = ReplicaState.PENDING
    pid: int | None = None
    restarts: int = 0
    last_exit_code: int | None = None
    reason: str | None = None
    message: str | None = None
    started_at: datetime | None = None
    #: the spec generation this status is about, so stale reports can be told apart
    generation: int = 0
    #: the replica's address in its team's mesh, when it runs in a pod namespace
    pod_ip: str | None = None
    #: whether it may serve: Running, started, its readiness probe passing, not stopping.
    #: None (an older agent) means "as Running says".
    ready: bool | None = None
    #: why the agent last restarted it itself (a failed liveness or startup probe)
    last_restart_reason: str | None = None
    #: the pod's sidecars by name: whether each runs, and its restarts
    containers: dict[str, ContainerStatus] = Field(default_factory=dict)

    @model_serializer(mode="wrap")
    def _omit_no_containers(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if not data.get("containers"):
            data.pop("containers", None)  # what an agent sent before sidecars
        return data

    def same_as(self, other: ReplicaStatus | None) -> bool:
        return other is not None and self.model_dump() == other.model_dump()


class ReplicaStatusReport(_Model):
    """A change of one replica's status, as published on ``kled.status.<node>``."""

    node: str
    time: datetime = Field(default_factory=utcnow)
    replica: ReplicaStatus


class Capacity(_Model):
    cpu_millicores: int
    memory_bytes: int


class TeamMeshReport(_Model):
    """This node's WireGuard interface in one team, as peers must know it.

    Only the public key leaves the host; the private key stays in the agent's data dir.
    """

    public_key: str = Field(min_length=44, max_length=44)
    listen_port: int = Field(ge=1, le=65535)
    #: peer public key → its latest handshake, for peers that ever completed one
    handshakes: dict[str, datetime] = Field(default_factory=dict)
    #: intercepts this gateway sends to the replicas because their device is silent, as
    #: ``env/app→ip`` (global) or ``env/app[header=value]→ip`` (personal); the control
    #: plane shows them as the Intercepts' ``Fallback`` phase
    fallback: list[str] = Field(default_factory=list)
    #: every intercept this gateway has applied, named the same way (those it falls back
    #: on included): ``kled intercept start|stop`` wait until every gateway of the team
    #: lists theirs, or no longer does
    intercepts: list[str] = Field(default_factory=list)
    #: apps that may scale to zero (``env/app``) → new connections the gateway's router
    #: counted since it started; any change is activity (the router's restart resets it)
    connections: dict[str, int] = Field(default_factory=dict)
    #: apps (``env/app``) with a request held at this gateway, waiting for a replica
    waiting: list[str] = Field(default_factory=list)

    @model_serializer(mode="wrap")
    def _omit_no_activity(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        # A control plane older than scale to zero refuses keys it does not know.
        data: dict[str, Any] = handler(self)
        for key in ("connections", "waiting"):
            if not data.get(key):
                data.pop(key, None)
        return data


class ReplicaUsage(_Model):
    """What one replica uses, measured by the agent (cgroup v2, else ``/proc``)."""

    #: CPU time since the replica (its cgroup, or its process tree) started
    cpu_seconds: float = Field(ge=0)
    #: CPU rate over the last sampling interval; None on the first sample
    cpu_millicores: int | None = Field(default=None, ge=0)
    memory_bytes: int = Field(ge=0)
    #: bytes through its pod namespace's interfaces (loopback excepted); None outside a pod
    rx_bytes: int | None = Field(default=None, ge=0)
    tx_bytes: int | None = Field(default=None, ge=0)
    rx_bytes_per_second: float | None = Field(default=None, ge=0)
    tx_bytes_per_second: float | None = Field(default=None, ge=0)
    #: where the numbers come from: ``cgroup`` (the replica's own) or ``proc`` (its processes)
    source: Literal["cgroup", "proc"] = "proc"


class NodeUsage(_Model):
    """What the whole host uses (``/proc/stat``, ``/proc/meminfo``)."""

    cpu_seconds: float = Field(ge=0)
    cpu_millicores: int | None = Field(default=None, ge=0)
    memory_bytes: int = Field(ge=0)


_USAGE_FIELDS = ("usage", "node_usage")


class NodeHeartbeat(_Model):
    node: str
    time: datetime = Field(default_factory=utcnow)
    capacity: Capacity
    allocatable: Capacity | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    #: uids of the apps with a replica on this node, one still stopping included
    #: (``kled delete app --wait`` waits until its app's uid has left every node)
    apps: list[str] = Field(default_factory=list)
    agent_version: str = ""
    #: team → this node's WireGuard key and port there (teams whose gateway is up)
    mesh: dict[str, TeamMeshReport] = Field(default_factory=dict)
    #: replica id → its usage; sent at most every usage interval (10 s), None between.
    #: Left out of the message when None, so that a control plane older than usage
    #: reporting (its model refuses unknown keys) still takes this agent's heartbeats.
    usage: dict[str, ReplicaUsage] | None = None
    node_usage: NodeUsage | None = None

    @model_serializer(mode="wrap")
    def _omit_unset_usage(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        for key in _USAGE_FIELDS:
            if data.get(key) is None:
                data.pop(key, None)
        return data


class EventType(StrEnum):
    NORMAL = "Normal"
    WARNING = "Warning"


class AgentEvent(_Model):
    node: str
    replica_id: str | None = None
    type: EventType = EventType.NORMAL
    reason: str
    message: str
    time: datetime = Field(default_factory=utcnow)


class LogLine(_Model):
    replica_id: str
    #: the sidecar or init container that printed it; None: the replica's own container
    container: str | None = None
    stream: Literal["stdout", "stderr"] = "stdout"
    line: str
    time: datetime = Field(default_factory=utcnow)
    #: per replica, increasing across restarts of the replica (not of the agent)
    seq: int = 0

    @model_serializer(mode="wrap")
    def _omit_no_container(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("container") is None:
            data.pop("container", None)  # a line as an agent sent it before sidecars
        return data
