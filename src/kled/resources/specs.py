"""The ``spec`` of every kind: the desired state a user writes.

One model per kind, with the parts only one kind uses (ports, taints, sources). Each model
says what is accepted, what is filled in by default, and which combinations make no
sense; checks that span fields name the field at fault through ``problem(at=...)``.
Behaviour (scheduling, IPAM, reconciling) lives elsewhere and reads these models.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    Strict,
    field_validator,
    model_validator,
)

from kled.errors import InvalidInput
from kled.resources.fields import (
    Address,
    Cpu,
    Duration,
    Endpoint,
    LabelSelector,
    Memory,
    PublicKey,
    UtcDatetime,
)
from kled.resources.kubekinds import KUBE_RESOURCES, kube_kind, kube_resource
from kled.resources.meta import (
    Bool,
    DnsLabel,
    DnsName,
    EnvVars,
    FieldEnv,
    Int,
    KledModel,
    Labels,
    NonEmptyStr,
    Port,
    VersionText,
    in_range,
    is_dns_label,
    label_key_problem,
    problem,
    range_schema,
)
from kled.resources.podspec import Container, Volume, VolumeMount, check_pod
from kled.resources.registry import resolve_kind
from kled.resources.sshkeys import HasSshKeys
from kled.resources.wsrequirements import WorkspaceHostRequirements

TEAM_SPACE = ipaddress.IPv4Network("100.64.0.0/10")
_HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+\Z")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+\Z")


class Resources(KledModel):
    """CPU and memory an App asks for (``500m``, ``256Mi``)."""

    cpu: Cpu | None = None
    memory: Memory | None = None


# --- Team, User, Token -------------------------------------------------------------------


class TeamSpec(KledModel):
    display_name: str | None = None
    block: str | None = None
    """The team's addresses, a CIDR inside 100.64.0.0/10 (default: a /16 chosen by IPAM)."""
    zone: DnsName | None = None
    """The DNS zone of the team's names: ``<app>.<env>.<team>.<zone>`` (default: the
    server's ``--zone``, so that a server's zone applies to every team that sets none)."""

    @field_validator("block")
    @classmethod
    def _check_block(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            network = ipaddress.IPv4Network(value, strict=True)
        except ValueError as exc:
            raise problem(f"must be a CIDR like 100.64.0.0/16 ({exc})") from exc
        # Inside the /10 the prefix is at least /10; /24 leaves room for the mesh split.
        if not network.subnet_of(TEAM_SPACE) or network.prefixlen > 24:
            raise problem("must be a CIDR inside 100.64.0.0/10 with a prefix from /10 to /24")
        return str(network)


class UserSpec(HasSshKeys):
    role: Literal["owner", "admin", "member", "viewer"] = "member"
    email: str | None = None
    display_name: str | None = None

    @field_validator("email")
    @classmethod
    def _check_email(cls, value: str | None) -> str | None:
        if value is not None and not _EMAIL.match(value):
            raise problem("must be an e-mail address like ada@example.com")
        return value


class TokenSpec(KledModel):
    user: DnsLabel
    """The user the token acts as."""
    expires_at: UtcDatetime | None = None
    ttl: Duration | None = None
    """Lifetime from creation (``24h``, ``30m``, ``7d``); the server turns it into expiresAt."""
    description: str | None = None
    revoked: Bool = False

    @model_validator(mode="after")
    def _one_expiry(self) -> TokenSpec:
        if self.expires_at is not None and self.ttl is not None:
            raise problem("set expiresAt or ttl, not both", at=("ttl",))
        return self


# --- Node, Device --------------------------------------------------------------------------


class Taint(KledModel):
    key: NonEmptyStr
    value: str | None = None
    effect: Literal["NoSchedule", "PreferNoSchedule", "NoExecute"] = "NoSchedule"

    @field_validator("key")
    @classmethod
    def _check_key(cls, value: str) -> str:
        error = label_key_problem(value)
        if error:
            raise problem(error)
        return value


class Capacity(KledModel):
    cpu: Cpu | None = None
    memory: Memory | None = None
    pods: Annotated[int, Field(ge=1, le=240)] | None = None
    """A Node's: how many replicas the scheduler places there at most (default 110; its
    pod subnet holds 244 addresses, its workspaces' included)."""


class NodeSpec(KledModel):
    unschedulable: Bool = False
    taints: list[Taint] = []
    capacity: Capacity | None = None
    address: Address | None = None
    """Where the node is reached from other nodes (underlay IP or host name)."""


class DeviceSpec(KledModel):
    owner: DnsLabel
    """The user the device belongs to."""
    public_key: PublicKey | None = None
    kind: Literal["laptop", "phone", "workspace", "server"] = "laptop"
    endpoint: Endpoint | None = None
    """A reachable ``host:port`` for WireGuard, when the device has one."""


# --- Environment, App, ManagedService --------------------------------------------------------


class EnvironmentSpec(KledModel):
    display_name: str | None = None
    cloned_from: DnsLabel | None = None
    """The environment this one was cloned from."""
    variables: EnvVars = {}
    """Variables every app of the environment gets."""


class EnvFromSource(KledModel):
    """All entries of one Config or one Secret as variables, or the variables of a managed
    service's credentials (``DATABASE_URL``…, see ``resources/templates.py``)."""

    config: DnsLabel | None = None
    secret: DnsLabel | None = None
    managed_service: DnsLabel | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> EnvFromSource:
        if [self.config, self.secret, self.managed_service].count(None) != 2:
            raise problem("must name exactly one of config, secret or managedService")
        return self


class ServicePort(KledModel):
    name: DnsLabel | None = None
    port: Port
    target_port: Port | None = None
    """The port the process listens on (default: ``port``)."""
    protocol: Literal["TCP", "UDP"] = "TCP"

    @model_validator(mode="after")
    def _default_target(self) -> ServicePort:
        if self.target_port is None:
            self.target_port = self.port
        return self


NonNegative = Annotated[int, Strict(), in_range(0, 86400), range_schema(0, 86400)]
AtLeastOne = Annotated[int, Strict(), in_range(1, 86400), range_schema(1, 86400)]
ProbePort = Port | DnsLabel
"""A port number, or the name of one of the app's ``spec.ports``."""


class HttpHeader(KledModel):
    name: NonEmptyStr
    value: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise problem("must be an HTTP header name")
        return value


class HttpGetAction(KledModel):
    """``GET http://<pod IP>:<port><path>``: a status from 200 to 399 is a success."""

    path: str = "/"
    port: ProbePort
    http_headers: list[HttpHeader] = []

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() or ord(c) < 32 for c in value):
            raise problem("must be a path like /healthz, without spaces")
        return value


class TcpSocketAction(KledModel):
    """A TCP connection to ``<pod IP>:<port>`` that opens is a success."""

    port: ProbePort


class ExecAction(KledModel):
    """A command run inside the replica (its namespace, working dir and env); exit 0 is a
    success."""

    command: Annotated[list[NonEmptyStr], Field(min_length=1)]


_HANDLERS = ("httpGet", "tcpSocket", "exec")


class Probe(KledModel):
    """A check the agent runs against each replica, as in Kubernetes."""

    http_get: HttpGetAction | None = None
    tcp_socket: TcpSocketAction | None = None
    exec: ExecAction | None = None
    initial_delay_seconds: NonNegative = 0
    period_seconds: AtLeastOne = 10
    timeout_seconds: AtLeastOne = 1
    success_threshold: AtLeastOne = 1
    failure_threshold: AtLeastOne = 3

    @model_validator(mode="after")
    def _one_handler(self) -> Probe:
        given = [n for n, h in zip(_HANDLERS, self.handlers(), strict=True) if h is not None]
        if not given:
            raise problem("must set exactly one of httpGet, tcpSocket or exec")
        if len(given) > 1:
            raise problem(f"set only one of {', '.join(given)}", at=(given[1],))
        return self

    def handlers(self) -> tuple[HttpGetAction | None, TcpSocketAction | None, ExecAction | None]:
        return (self.http_get, self.tcp_socket, self.exec)


class LifecycleHandler(KledModel):
    """A hook: an HTTP GET or a command, as a probe runs them."""

    http_get: HttpGetAction | None = None
    exec: ExecAction | None = None

    @model_validator(mode="after")
    def _one_handler(self) -> LifecycleHandler:
        if (self.http_get is None) == (self.exec is None):
            raise problem("must set exactly one of httpGet or exec")
        return self


class Lifecycle(KledModel):
    pre_stop: LifecycleHandler | None = None
    """Run before a replica is sent SIGTERM, after it has left every gateway's backends."""


_PERCENT = re.compile(r"^(100|[1-9]?[0-9])%\Z")


def _int_or_percent(value: Any) -> int | str:
    # As in Kubernetes: a whole number of replicas, or a percentage of spec.replicas.
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise problem("must be a whole number or a percentage like 25%")
    if isinstance(value, int):
        if not 0 <= value <= 1000:
            raise problem("must be 0-1000 or a percentage like 25%")
        return value
    if not _PERCENT.match(value):
        raise problem("must be a whole number or a percentage like 25% (0%-100%)")
    return value


IntOrPercent = Annotated[int | str, BeforeValidator(_int_or_percent)]


class RollingUpdate(KledModel):
    """How far a rolling update may go above and below ``replicas`` at each step."""

    max_surge: IntOrPercent = "25%"
    """Replicas above ``replicas`` while rolling (a percentage rounds up)."""
    max_unavailable: IntOrPercent = "25%"
    """Replicas below ``replicas`` that may be not ready while rolling (rounds down)."""


class DeploymentStrategy(KledModel):
    """``RollingUpdate`` (the default) replaces replicas a few at a time, each step waiting
    for readiness; ``Recreate`` restarts them all at once."""

    type: Literal["RollingUpdate", "Recreate"] = "RollingUpdate"
    max_surge: IntOrPercent | None = None
    """Short for ``rollingUpdate.maxSurge``."""
    max_unavailable: IntOrPercent | None = None
    """Short for ``rollingUpdate.maxUnavailable``."""
    rolling_update: RollingUpdate | None = None

    @model_validator(mode="after")
    def _check(self) -> DeploymentStrategy:
        flat = self.max_surge is not None or self.max_unavailable is not None
        if flat and self.rolling_update is not None:
            raise problem("set maxSurge/maxUnavailable here or in rollingUpdate, not both",
                          at=("rollingUpdate",))  # fmt: skip
        if self.type == "Recreate" and (flat or self.rolling_update is not None):
            where = "rollingUpdate" if self.rolling_update is not None else "maxSurge"
            if self.rolling_update is None and self.max_surge is None:
                where = "maxUnavailable"
            raise problem("only for type RollingUpdate", at=(where,))
        surge, unavailable = self.limits()
        if _is_zero(surge) and _is_zero(unavailable):
            at: tuple[str, ...] = ("maxUnavailable",)
            if self.rolling_update is not None:
                at = ("rollingUpdate", "maxUnavailable")
            raise problem("maxSurge and maxUnavailable cannot both be 0", at=at)
        return self

    def limits(self) -> tuple[int | str, int | str]:
        """(maxSurge, maxUnavailable) as written, the defaults filled in."""
        nested = self.rolling_update or RollingUpdate()
        surge = self.max_surge if self.max_surge is not None else nested.max_surge
        unavailable = (
            self.max_unavailable if self.max_unavailable is not None else nested.max_unavailable
        )
        return surge, unavailable


def _is_zero(value: int | str) -> bool:
    return value in (0, "0%")


class Autoscale(KledModel):
    """Replicas follow CPU use, as a HorizontalPodAutoscaler does: the replica count that
    brings the mean CPU of the ready replicas (a share of ``resources.cpu``) to the target."""

    min_replicas: Annotated[int, Strict(), in_range(0, 1000), range_schema(0, 1000)] = 1
    """0: the app goes to no replica when idle; its first request waits at the gateway."""
    max_replicas: Annotated[int, Strict(), in_range(1, 1000), range_schema(1, 1000)]
    target_cpu_utilization_percentage: Annotated[
        int, Strict(), in_range(1, 1000), range_schema(1, 1000)
    ] = Field(default=80, alias="targetCPUUtilizationPercentage")
    """Mean CPU of the ready replicas, in percent of their ``resources.cpu``."""
    target_requests_per_second: (
        Annotated[int, Strict(), in_range(1, 1_000_000), range_schema(1, 1_000_000)] | None
    ) = None
    """New connections per second per ready replica, counted by the gateways' routers."""
    scale_down_stabilization_seconds: Annotated[
        int, Strict(), in_range(0, 3600), range_schema(0, 3600)
    ] = 300
    """A scale-down takes the highest recommendation of this window, against flapping."""
    scale_to_zero_after_seconds: Annotated[
        int, Strict(), in_range(1, 86400), range_schema(1, 86400)
    ] = 300
    """With ``minReplicas: 0``: no new connection for this long scales the app to 0."""

    @model_validator(mode="after")
    def _check(self) -> Autoscale:
        if self.max_replicas < self.min_replicas:
            raise problem(f"must be at least minReplicas ({self.min_replicas})",
                          at=("maxReplicas",))  # fmt: skip
        return self


class AppSpec(KledModel):
    runtime: Literal["process", "container", "kubernetes"] = "process"
    command: list[str] = []
    args: list[str] = []
    working_dir: str | None = None
    image: str | None = None
    """Required for the container and kubernetes runtimes."""
    replicas: Annotated[int, Strict(), in_range(0, 1000), range_schema(0, 1000)] = 1
    env: EnvVars = {}
    field_env: FieldEnv = {}
    """Variables the agent sets where each replica runs: ``metadata.name`` (the replica's
    name, ``<replicaNamePrefix>-<index>``), ``status.podIP``, ``spec.nodeName``."""
    replica_name_prefix: DnsName | None = None
    """What a replica's name starts with (default: the app's name)."""
    env_from: list[EnvFromSource] = []
    ports: list[ServicePort] = []
    resources: Resources = Field(default_factory=Resources)
    node_selector: Labels = {}
    restart_policy: Literal["Always", "OnFailure", "Never"] = "Always"
    readiness_probe: Probe | None = None
    """Until it passes, a replica is not Ready and not a backend of the app's service IP."""
    liveness_probe: Probe | None = None
    """When it fails ``failureThreshold`` times in a row, the replica is restarted."""
    startup_probe: Probe | None = None
    """Holds the other probes back until it passes once; failing, it restarts the replica."""
    lifecycle: Lifecycle | None = None
    termination_grace_period_seconds: NonNegative | None = None
    """Seconds between SIGTERM and SIGKILL when a replica stops (default 30)."""
    strategy: DeploymentStrategy = Field(default_factory=DeploymentStrategy)
    """How a change to what runs (command, image, env, configs, secrets) replaces replicas."""
    paused: Bool = False
    """While true, a change to what runs starts no rollout (scaling still happens)."""
    progress_deadline_seconds: AtLeastOne = 600
    """A rollout that makes no progress for this long is reported stalled and stops."""
    autoscale: Autoscale | None = None
    """When set, the control plane sets the number of replicas; ``replicas`` is the start."""
    sidecars: list[Container] = []
    """More containers of each replica's pod (``resources/podspec.py``; container runtime)."""
    init_containers: list[Container] = []
    """Containers run to completion, in order, before the others of the pod start."""
    volumes: list[Volume] = []
    volume_mounts: list[VolumeMount] = []
    """Where the app's own container mounts ``volumes``."""

    @field_validator("working_dir")
    @classmethod
    def _check_working_dir(cls, value: str | None) -> str | None:
        # Relative to what? The agent's own folder is never a replica's working directory.
        if value is not None and (not value.startswith("/") or "\x00" in value):
            raise problem("must be an absolute path like /srv/app")
        return value

    @model_validator(mode="after")
    def _check(self) -> AppSpec:
        if self.runtime == "process" and not self.command:
            raise problem("required for the process runtime", at=("command",))
        if self.runtime != "process" and not self.image:
            raise problem(f"required for the {self.runtime} runtime", at=("image",))
        names: set[str] = set()
        bindings: set[tuple[int, str]] = set()
        for index, port in enumerate(self.ports):
            if port.name is not None:
                if port.name in names:
                    raise problem(f"duplicate port name {port.name!r}", at=("ports", index, "name"))
                names.add(port.name)
            binding = (port.port, port.protocol)
            if binding in bindings:
                raise problem(
                    f"duplicate port {port.port}/{port.protocol}", at=("ports", index, "port")
                )
            bindings.add(binding)
        self._check_probe_ports()
        check_pod(self.runtime, self.sidecars, self.init_containers, self.volumes,
                  self.volume_mounts)  # fmt: skip
        if self.autoscale is not None and self.resources.cpu is None:
            raise problem("required with autoscale: the CPU target is a share of it",
                          at=("resources", "cpu"))  # fmt: skip
        routed = self.autoscale is not None and (
            self.autoscale.min_replicas == 0
            or self.autoscale.target_requests_per_second is not None
        )
        if routed and not any(p.protocol == "TCP" for p in self.ports):
            assert self.autoscale is not None
            if self.autoscale.min_replicas != 0:
                raise problem("needs a TCP port in spec.ports: connections are counted there",
                              at=("autoscale", "targetRequestsPerSecond"))  # fmt: skip
            raise problem(
                "0 needs a TCP port in spec.ports: the first request is held there "
                "until a replica is ready",
                at=("autoscale", "minReplicas"),
            )
        return self

    def _check_probe_ports(self) -> None:
        named = {p.name for p in self.ports if p.name is not None and p.protocol == "TCP"}
        numbers = {p.target_port for p in self.ports if p.protocol == "TCP"}
        where: list[tuple[tuple[str | int, ...], HttpGetAction | TcpSocketAction | None]] = []
        probes = (
            ("readinessProbe", self.readiness_probe),
            ("livenessProbe", self.liveness_probe),
            ("startupProbe", self.startup_probe),
        )
        for name, probe in probes:
            if probe is None:
                continue
            where.append(((name, "httpGet", "port"), probe.http_get))
            where.append(((name, "tcpSocket", "port"), probe.tcp_socket))
            if name != "readinessProbe" and probe.success_threshold != 1:
                raise problem("must be 1 for liveness and startup probes",
                              at=(name, "successThreshold"))  # fmt: skip
        if self.lifecycle is not None and self.lifecycle.pre_stop is not None:
            where.append((("lifecycle", "preStop", "httpGet", "port"),
                          self.lifecycle.pre_stop.http_get))  # fmt: skip
        exposed = sorted(str(n) for n in numbers) + sorted(named)
        offered = ", ".join(exposed) if exposed else "none"
        for at, action in where:
            if action is None:
                continue
            port = action.port
            if (port not in named) if isinstance(port, str) else (port not in numbers):
                raise problem(
                    f"the app exposes no TCP port {port!r} in spec.ports (it has: {offered})",
                    at=at,
                )


class ServiceStorage(KledModel):
    size: Memory
    """The most the service's data may take (``10Gi``): a size smaller than the data
    directory already holds is refused (``docs/services.md``)."""


class ManagedServiceSpec(KledModel):
    template: DnsLabel
    """A template name: postgres, redis, mysql, mongodb, nats, or one an admin added."""
    version: VersionText | None = None
    parameters: dict[str, Any] = {}
    secret_name: DnsLabel | None = None
    """The Secret that receives the credentials (default: the service's name)."""
    resources: Resources | None = None
    """CPU and memory of the server (``docs/services.md``)."""
    storage: ServiceStorage | None = None


# --- Workspace, Intercept ------------------------------------------------------------------


class WorkspaceSource(KledModel):
    """Where the workspace's files come from: a git repository cloned on the node, or a
    folder of the user's, uploaded by ``kled ws up`` (``upload``: the archive's sha256)."""

    git: NonEmptyStr | None = None
    ref: NonEmptyStr | None = None
    path: NonEmptyStr | None = None
    """The folder on the user's machine (shown, and its basename names the mount)."""
    upload: NonEmptyStr | None = None
    """The sha256 of the folder's archive, uploaded to the control plane."""

    @model_validator(mode="after")
    def _one_source(self) -> WorkspaceSource:
        if (self.git is None) == (self.path is None):
            raise problem("must name exactly one of git or path")
        if self.ref is not None and self.git is None:
            raise problem("only applies to a git source", at=("ref",))
        if self.upload is not None and self.path is None:
            raise problem("only applies to a folder source (path)", at=("upload",))
        if self.upload is not None and not re.fullmatch(r"[0-9a-f]{64}", self.upload):
            raise problem("must be a sha256 in hex (64 characters)", at=("upload",))
        if self.git is not None and any(c.isspace() for c in self.git):
            raise problem("must be a git URL without spaces", at=("git",))
        return self


class WorkspaceSpec(KledModel):
    source: WorkspaceSource | None = None
    provider: Literal["container", "process", "ssh", "kubernetes"] = "container"
    image: str | None = None
    devcontainer: NonEmptyStr | None = None
    """The config's path in the source; None: found in the spec's order (``discovery``)."""
    running: bool = True
    """False after ``kled ws stop``: the container stays, stopped, with its volumes."""
    node: DnsLabel | None = None
    """Run on this node only (``kled ws up --node``)."""
    node_selector: Labels = {}
    environment: DnsLabel | None = None
    """The environment the workspace joins (its apps are reached by short names)."""
    forward_ports: list[Port] = []
    env: EnvVars = {}
    owner: DnsLabel | None = None
    """Who may enter it (with the team's admins); none: every member of the team."""
    host_requirements: WorkspaceHostRequirements | None = None
    """What its node must have (devcontainer.json's ``hostRequirements``; the scheduler)."""
    idle_timeout: Duration | None = None
    """Stopped after this long (``30m``) with no session and no SSH traffic; none: never."""
    local_env: EnvVars = {}
    """The client's values of the variables the config names as ``${localEnv:V}`` (sent by
    ``kled ws up``: the config is read on the node)."""
    project: NonEmptyStr | None = None
    """``kled ws up --project DIR``: a repository without devcontainer.json, run from the
    image of ``DIR``'s Dockerfile (``workspace/projects.py``)."""


class InterceptPort(KledModel):
    port: Port
    """The app's service port."""
    local_port: Port | None = None
    """The port on the device (default: ``port``)."""

    @model_validator(mode="after")
    def _default_local(self) -> InterceptPort:
        if self.local_port is None:
            self.local_port = self.port
        return self


class HeaderMatch(KledModel):
    """Only requests carrying this HTTP header go to the device (a personal intercept)."""

    name: NonEmptyStr
    value: str

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _HEADER_NAME.match(value):
            raise problem("must be an HTTP header name")
        return value


#: an intercept's target that is a workspace, not a device: ``ws/<name>``
WORKSPACE_TARGET = "ws/"


def _check_intercept_target(value: str) -> str:
    name = value.removeprefix(WORKSPACE_TARGET)
    if not is_dns_label(name):
        raise problem("must be a device's name, or ws/ and a workspace's name")
    return value


class InterceptSpec(KledModel):
    app: DnsLabel
    #: a device's name, or ``ws/<workspace>``
    device: Annotated[str, AfterValidator(_check_intercept_target)]
    ports: list[InterceptPort] = []
    """The ports to intercept; empty means every port of the app."""
    header: HeaderMatch | None = None
    on_device_offline: Literal["fallback", "keep"] = "fallback"

    @model_validator(mode="after")
    def _unique_ports(self) -> InterceptSpec:
        seen: set[int] = set()
        for index, item in enumerate(self.ports):
            if item.port in seen:
                raise problem(f"duplicate port {item.port}", at=("ports", index, "port"))
            seen.add(item.port)
        return self


# --- Policy, Cluster -----------------------------------------------------------------------

Operation = Literal["CREATE", "UPDATE", "DELETE"]


def _all_operations() -> list[Operation]:
    return ["CREATE", "UPDATE", "DELETE"]


class PolicySpec(KledModel):
    """A kPolicy, in the shape of jsPolicy's JsPolicy spec."""

    type: Literal["Validating", "Mutating", "Controller"] = "Validating"
    operations: list[Operation] = Field(default_factory=_all_operations)
    resources: list[NonEmptyStr] = Field(default_factory=lambda: ["*"])
    """Kinds or plurals the policy applies to; ``*`` for all."""
    environments: list[str] = []
    """Environments the policy applies to; empty for all."""
    kinds: list[NonEmptyStr] = []
    """Kubernetes kinds of Kled Clusters' objects (``Deployment``), beside ``resources``."""
    api_groups: list[str] = []
    """API groups of the Kubernetes objects matched (``apps``, ``""``); empty for all."""
    namespaces: list[str] = []
    """Kubernetes namespaces (names or globs) of the objects matched; empty for all."""
    object_selector: LabelSelector | None = None
    namespace_selector: LabelSelector | None = None
    """Selects environments by their labels."""
    javascript: NonEmptyStr
    timeout_seconds: Annotated[int, Strict(), in_range(1, 30), range_schema(1, 30)] = 10
    failure_policy: Literal["Fail", "Ignore"] = "Fail"
    violation_policy: Literal["Deny", "Warn", "Dry"] = "Deny"
    audit_policy: Literal["Log", "Skip"] = "Log"
    priority: Int | None = None

    @field_validator("operations")
    @classmethod
    def _operations(cls, value: list[str]) -> list[str]:
        if not value:
            raise problem("must name at least one of CREATE, UPDATE, DELETE")
        return _unique(value)

    @field_validator("resources")
    @classmethod
    def _resources(cls, value: list[str]) -> list[str]:
        if not value:
            raise problem('must name at least one kind, or "*"')
        for index, word in enumerate(value):
            if word != "*" and kube_resource(word) is None:
                try:
                    resolve_kind(word)
                except InvalidInput as exc:
                    raise problem(exc.message, at=(index,)) from exc
        return _unique(value)

    @model_validator(mode="after")
    def _kinds_alone(self) -> PolicySpec:
        """``kinds`` without ``resources`` names those Kubernetes kinds only."""
        if self.kinds and "resources" not in self.model_fields_set:
            self.resources = []
        return self

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, value: list[str]) -> list[str]:
        known = ", ".join(r.kind for r in KUBE_RESOURCES)
        for index, word in enumerate(value):
            if word != "*" and kube_kind(word) is None:
                raise problem(f"unknown Kubernetes kind {word!r} (known: {known})", at=(index,))
        return _unique(value)

    @field_validator("environments")
    @classmethod
    def _environments(cls, value: list[str]) -> list[str]:
        for index, name in enumerate(value):
            if name != "*" and not is_dns_label(name):
                raise problem("must be an environment name (a DNS label) or '*'", at=(index,))
        return _unique(value)

    @field_validator("javascript")
    @classmethod
    def _not_blank(cls, value: str) -> str:
        if not value.strip():
            raise problem("must not be empty")
        return value


def _unique(value: list[str]) -> list[str]:
    seen: set[str] = set()
    for index, item in enumerate(value):
        if item in seen:
            raise problem(f"duplicate entry {item!r}", at=(index,))
        seen.add(item)
    return value


class Quotas(KledModel):
    cpu: Cpu | None = None
    memory: Memory | None = None
    apps: Annotated[int, Strict(), Field(ge=0)] | None = None
    workspaces: Annotated[int, Strict(), Field(ge=0)] | None = None


class ClusterQuota(KledModel):
    """What a Kled Cluster's objects may ask for in all, enforced when they are written."""

    cpu: Cpu | None = None
    memory: Memory | None = None
    gpu: Annotated[int, Strict(), Field(ge=0)] | None = None
    pods: Annotated[int, Strict(), Field(ge=0)] | None = None
    services: Annotated[int, Strict(), Field(ge=0)] | None = None


class ClusterUser(KledModel):
    """A team member and the Kubernetes role they hold in one Kled Cluster."""

    name: DnsLabel
    role: Literal["cluster-admin", "edit", "view"] = "view"


class ClusterSpec(KledModel):
    """A Kled Cluster: a tenant space with its own nodes (by selector) or quotas."""

    node_selector: Labels = {}
    quotas: Quotas | None = None
    quota: ClusterQuota | None = None
    """The cluster's ResourceQuota: requests of its pods in all, pods, services."""
    description: str | None = None
    users: list[ClusterUser] = []
    """Who may use the cluster's Kubernetes API and how; team owners and admins are
    cluster-admin without being listed."""

    @field_validator("users")
    @classmethod
    def _one_role_each(cls, value: list[ClusterUser]) -> list[ClusterUser]:
        _unique([user.name for user in value])
        return value


class KubeObjectSpec(KledModel):
    """One object of a Kled Cluster's Kubernetes API, as the cluster's clients wrote it.

    Stored in the environment named after the cluster; ``kled.kube`` owns its shape."""

    object: dict[str, Any]


# --- GitSource ------------------------------------------------------------------------------

GIT_SCHEMES = ("file://", "git://", "ssh://", "https://", "http://")
#: what a ref may not contain: git's own rules (``git check-ref-format``), and a leading
#: ``-`` that git would read as an option
_BAD_REF = re.compile(r"(^[-/.])|\.\.|@\{|[\x00-\x20~^:?*\[\\\x7f]|//|/$|\.lock$|\.$")


def is_git_ref(value: str) -> bool:
    """Whether ``value`` names a branch, tag or commit as git accepts it."""
    return bool(value) and _BAD_REF.search(value) is None


class SecretKeyRef(KledModel):
    """One entry of a Secret of the team: which environment holds it, its name, its key."""

    environment: DnsLabel
    name: DnsLabel
    key: NonEmptyStr | None = None
    """The entry to read (default: the only entry, or the one the reader names)."""


class GitSourceSpec(KledModel):
    """A git repository whose YAML documents the control plane keeps applied (issue 18)."""

    url: NonEmptyStr
    """``file://``, ``git://``, ``ssh://`` or ``https://`` (``http://`` too)."""
    ref: NonEmptyStr = "main"
    """A branch, a tag or a commit."""
    path: str = "."
    """The folder of YAML documents inside the repository, read with its subfolders."""
    interval: Duration = "1m"
    prune: Bool = True
    """Delete what this source created once its document leaves the repository."""
    atomic: Bool = True
    """A commit is applied whole or not at all; ``false`` applies what passes."""
    suspend: Bool = False
    environment: DnsLabel | None = None
    """Put every document into this environment (default: each document's own)."""
    credentials: SecretKeyRef | None = None
    """A Secret holding an SSH private key (``ssh://``) or a token (``https://``)."""
    webhook_secret: SecretKeyRef | None = None
    """The Secret entry that signs push webhooks (GitHub/Gitea HMAC, GitLab token)."""

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(GIT_SCHEMES):
            raise problem(f"must start with one of {', '.join(GIT_SCHEMES)}")
        if any(ch.isspace() or ord(ch) < 32 for ch in value):
            raise problem("must not contain spaces or control characters")
        return value

    @field_validator("ref")
    @classmethod
    def _check_ref(cls, value: str) -> str:
        if not is_git_ref(value):
            raise problem("must be a branch, tag or commit name as git accepts it")
        return value

    @field_validator("path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        parts = [p for p in value.strip().split("/") if p not in ("", ".")]
        if value.startswith("/") or ".." in parts or "\\" in value:
            raise problem("must be a relative folder inside the repository, without '..'")
        if any(ord(ch) < 32 for ch in value):
            raise problem("must not contain control characters")
        return "/".join(parts) or "."
