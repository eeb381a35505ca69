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
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


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
    image: str | None = None
    ports: list[PortSpec] = Field(default_factory=list)
    resources: ResourceLimits = Field(default_factory=ResourceLimits)
    restart_policy: RestartPolicy = RestartPolicy.ALWAYS
    #: bumped by ``kled app restart`` (a restart nonce): a change restarts the replica
    generation: int = 0

    @property
    def id(self) -> str:
        """Stable name of the replica across hosts and restarts: team.env.app.index."""
        return replica_id(self.team, self.environment, self.app, self.index)

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

    def by_id(self) -> dict[str, ReplicaSpec]:
        return {r.id: r for r in self.replicas}


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


class NodeHeartbeat(_Model):
    node: str
    time: datetime = Field(default_factory=utcnow)
    capacity: Capacity
    allocatable: Capacity | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    capabilities: list[str] = Field(default_factory=list)
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    agent_version: str = ""


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
    stream: Literal["stdout", "stderr"] = "stdout"
    line: str
    time: datetime = Field(default_factory=utcnow)
    #: per replica, increasing across restarts of the replica (not of the agent)
    seq: int = 0
