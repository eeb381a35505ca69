"""What each node should run: apps and placements turned into ``HostDesiredState`` values.

A pure function of the App documents, the placement the scheduler chose, and the
environment's Configs, Secrets and Environment variables. It resolves everything an agent
must not have to look up: ``envFrom`` is expanded here, quantities become numbers, and a
restart request becomes a new ``ReplicaSpec.generation``.

Environment variables of a replica, lowest precedence first: the Environment's
``spec.variables``, then each ``envFrom`` source in order (a Config's ``data`` as is, a
Secret's ``data`` base64-decoded), then the app's own ``spec.env`` — explicit env wins.

A replica whose app names a Config or Secret that does not exist is not sent to its node:
it comes back as a :class:`BadReference` that the caller shows as Failed
(``ConfigNotFound`` / ``SecretNotFound``) until the reference resolves.

The output is sorted (replicas by id, env by name), so an unchanged input gives an equal
value and the caller can skip rewriting a node's key.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

from kled.control.rollout import spec_inputs
from kled.control.scheduling import Placement
from kled.errors import InvalidInput
from kled.resources.hoststate import (
    Handler,
    HostDesiredState,
    PortSpec,
    ProbeSpec,
    ReplicaSpec,
    ResourceLimits,
    RestartPolicy,
    RuntimeKind,
)
from kled.resources.quantities import parse_cpu, parse_memory
from kled.resources.registry import RESTARTED_AT as RESTARTED_AT

if TYPE_CHECKING:
    from kled.control.podparts import PodParts

#: set by ``kled app restart``: an ISO timestamp (or a whole number); a new value restarts

#: (team, environment, name) of a Config, Secret or App; (team, environment, "") of an env
Ref = tuple[str, str, str]


@dataclass(frozen=True)
class BadReference:
    """Why an app's replicas cannot be sent to a node: shown as Failed in ``App.status``."""

    reason: str  # ConfigNotFound | SecretNotFound | UnsupportedRuntime | InvalidSpec
    message: str


@dataclass
class DesiredStates:
    """The result: one state per node given, and the apps that could not be resolved."""

    nodes: dict[str, HostDesiredState] = field(default_factory=dict)
    bad: dict[Ref, BadReference] = field(default_factory=dict)


def app_ref(app: Mapping[str, Any]) -> Ref:
    meta = app["metadata"]
    return (str(meta["team"]), str(meta.get("environment") or ""), str(meta["name"]))


def restart_generation(app: Mapping[str, Any]) -> int:
    """The restart nonce of ``app``: the ``kled.io/restartedAt`` annotation as a number.

    An ISO timestamp becomes its epoch milliseconds, so each later restart gives a larger
    number; a whole number is taken as is; absent or unreadable means 0.
    """
    annotations = (app.get("metadata") or {}).get("annotations") or {}
    value = annotations.get(RESTARTED_AT)
    if value in (None, ""):
        return 0
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return 0
    return int(moment.timestamp() * 1000)


def resolve_env(
    app: Mapping[str, Any],
    configs: Mapping[Ref, Mapping[str, Any]],
    secrets: Mapping[Ref, Mapping[str, Any]],
    variables: Mapping[str, str] | None = None,
) -> dict[str, str] | BadReference:
    """The replica's environment, or the first reference that does not resolve."""
    team, env, name = app_ref(app)
    spec = app.get("spec") or {}
    merged: dict[str, str] = dict(variables or {})
    for position, source in enumerate(spec.get("envFrom") or []):
        if source.get("config"):
            wanted = str(source["config"])
            config = configs.get((team, env, wanted))
            if config is None:
                return BadReference(
                    "ConfigNotFound",
                    f"app {name}: config {wanted!r} (envFrom[{position}]) does not exist "
                    f"in environment {env}; create it or remove the reference",
                )
            merged.update({str(k): str(v) for k, v in (config.get("data") or {}).items()})
        elif source.get("managedService"):
            wanted = str(source["managedService"])
            found = credentials_of(secrets, team, env, wanted)
            if found is None:
                return BadReference(
                    "ManagedServiceNotFound",
                    f"app {name}: managed service {wanted!r} (envFrom[{position}]) has no "
                    f"credentials in environment {env} yet; create it or wait until it is "
                    "provisioned",
                )
            merged.update(found)
        elif source.get("secret"):
            wanted = str(source["secret"])
            secret = secrets.get((team, env, wanted))
            if secret is None:
                return BadReference(
                    "SecretNotFound",
                    f"app {name}: secret {wanted!r} (envFrom[{position}]) does not exist "
                    f"in environment {env}; create it or remove the reference",
                )
            for key, encoded in (secret.get("data") or {}).items():
                try:
                    raw = base64.b64decode(str(encoded), validate=True)
                except (binascii.Error, ValueError):
                    return BadReference(
                        "InvalidSecret",
                        f"app {name}: secret {wanted!r} key {key!r} is not base64",
                    )
                merged[str(key)] = raw.decode("utf-8", errors="replace")
    merged.update({str(k): str(v) for k, v in (spec.get("env") or {}).items()})
    return dict(sorted(merged.items()))


#: the label a managed service's credentials Secret carries: the service's name
MANAGED_BY = "kled.io/managed-service"
_ENV_NAME = re.compile(r"^[A-Z_][A-Z0-9_]*\Z")


def credentials_of(
    secrets: Mapping[Ref, Mapping[str, Any]], team: str, env: str, service: str
) -> dict[str, str] | None:
    """The variables of managed service ``service``: the upper-case entries of the Secret
    labelled as its credentials (``DATABASE_URL``…); None if there is none yet."""
    for (s_team, s_env, _), doc in sorted(secrets.items()):
        labels = (doc.get("metadata") or {}).get("labels") or {}
        if s_team != team or s_env != env or labels.get(MANAGED_BY) != service:
            continue
        out: dict[str, str] = {}
        for key, encoded in (doc.get("data") or {}).items():
            if not _ENV_NAME.match(str(key)):
                continue
            try:
                out[str(key)] = base64.b64decode(str(encoded), validate=True).decode("utf-8")
            except (binascii.Error, ValueError):
                continue
        return out
    return None


def replica_spec(
    app: Mapping[str, Any], index: int, env: Mapping[str, str], pod: PodParts | None = None
) -> ReplicaSpec:
    """The ``ReplicaSpec`` of replica ``index`` of ``app``; raises InvalidInput if it cannot be.
    ``pod``: its sidecars, init containers and volumes (``podparts.PodParts``), resolved."""
    team, environment, name = app_ref(app)
    spec = app.get("spec") or {}
    runtime = str(spec.get("runtime") or "process")
    if runtime not in {k.value for k in RuntimeKind}:
        raise InvalidInput(
            f"the {runtime} runtime is not run by Kled agents yet; use process or container",
            field="spec.runtime",
        )
    wanted = spec.get("resources") or {}
    try:
        limits = ResourceLimits(
            cpu_millicores=parse_cpu(wanted["cpu"]) if wanted.get("cpu") else None,
            memory_bytes=parse_memory(wanted["memory"]) if wanted.get("memory") else None,
        )
        return ReplicaSpec(
            team=team,
            environment=environment,
            app=name,
            app_uid=str(app["metadata"].get("uid") or ""),
            index=index,
            runtime=RuntimeKind(runtime),
            command=[str(c) for c in spec.get("command") or []],
            args=[str(a) for a in spec.get("args") or []],
            working_dir=spec.get("workingDir"),
            env=dict(env),
            field_env={str(k): str(v) for k, v in (spec.get("fieldEnv") or {}).items()},
            name_prefix=spec.get("replicaNamePrefix"),
            image=spec.get("image"),
            ports=[
                PortSpec(
                    name=p.get("name"),
                    port=int(p["port"]),
                    target_port=p.get("targetPort"),
                    protocol=p.get("protocol") or "TCP",
                )
                for p in spec.get("ports") or []
            ],
            resources=limits,
            restart_policy=RestartPolicy(spec.get("restartPolicy") or "Always"),
            generation=restart_generation(app),
            readiness_probe=_probe(spec.get("readinessProbe"), spec),
            liveness_probe=_probe(spec.get("livenessProbe"), spec),
            startup_probe=_probe(spec.get("startupProbe"), spec),
            pre_stop=_handler(((spec.get("lifecycle") or {}).get("preStop")), spec),
            termination_grace_period_seconds=spec.get("terminationGracePeriodSeconds"),
            sidecars=pod.sidecars if pod else [],
            init_containers=pod.init_containers if pod else [],
            volumes=pod.volumes if pod else [],
            mounts=pod.mounts if pod else [],
        )
    except (ValidationError, ValueError, KeyError, TypeError) as e:
        raise InvalidInput(f"app {name} cannot be run: {e}", field="spec") from e


def _port(wanted: Any, spec: Mapping[str, Any]) -> int:
    """A probe's port as the number the replica listens on (a name is one of spec.ports)."""
    if isinstance(wanted, str):
        for p in spec.get("ports") or []:
            if p.get("name") == wanted:
                return int(p.get("targetPort") or p["port"])
        raise ValueError(f"no port named {wanted!r} in spec.ports")
    return int(wanted)


def _handler(doc: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> Handler | None:
    """A probe's or hook's action in the agent's terms; None when not set."""
    if not doc:
        return None
    if doc.get("httpGet"):
        get = doc["httpGet"]
        return Handler(
            kind="httpGet",
            port=_port(get["port"], spec),
            path=str(get.get("path") or "/"),
            headers=[(str(h["name"]), str(h["value"])) for h in get.get("httpHeaders") or []],
        )
    if doc.get("tcpSocket"):
        return Handler(kind="tcpSocket", port=_port(doc["tcpSocket"]["port"], spec))
    if doc.get("exec"):
        return Handler(kind="exec", command=[str(c) for c in doc["exec"]["command"]])
    raise ValueError("a probe or hook without httpGet, tcpSocket or exec")


def _probe(doc: Mapping[str, Any] | None, spec: Mapping[str, Any]) -> ProbeSpec | None:
    handler = _handler(doc, spec)
    if handler is None or doc is None:
        return None
    timing = {
        field: doc[key]
        for field, key in (
            ("initial_delay_seconds", "initialDelaySeconds"),
            ("period_seconds", "periodSeconds"),
            ("timeout_seconds", "timeoutSeconds"),
            ("success_threshold", "successThreshold"),
            ("failure_threshold", "failureThreshold"),
        )
        if doc.get(key) is not None
    }
    return ProbeSpec(**handler.model_dump(), **timing)


class ReplicaSpecs:
    """The ``ReplicaSpec`` of each (app, index), kept while what it is made of stays: the
    app's uid, generation (bumped by the store on every spec change) and restart stamp,
    the resolved environment and pod parts. A round of scheduling builds every replica's;
    validating them all anew was a third of a round at 1,000 apps. Only an app's own
    document is kept (an old revision's, rebuilt from its history, carries the app's
    generation with another spec), and none without a generation."""

    def __init__(self) -> None:
        self._held: dict[tuple[Ref, int], tuple[tuple[Any, ...] | None, Any, ReplicaSpec]] = {}

    def of(
        self,
        app: Mapping[str, Any],
        index: int,
        env: Mapping[str, str],
        pod: PodParts | None,
    ) -> ReplicaSpec:
        key = spec_inputs(app, env)
        slot = (app_ref(app), index)
        held = self._held.get(slot)
        if key is not None and held is not None and held[0] == key and held[1] == pod:
            return held[2]
        made = replica_spec(app, index, env, pod)
        self._held[slot] = (key, pod, made)
        return made

    def forget(self, ref: Ref) -> None:
        """Forget a deleted app's replicas."""
        for slot in [slot for slot in self._held if slot[0] == ref]:
            del self._held[slot]


def compute(
    nodes: Iterable[str],
    apps: Iterable[Mapping[str, Any]],
    placements: Mapping[Ref, Sequence[Placement]],
    *,
    configs: Mapping[Ref, Mapping[str, Any]],
    secrets: Mapping[Ref, Mapping[str, Any]],
    environments: Mapping[Ref, Mapping[str, Any]] | None = None,
    variants: Mapping[Ref, Mapping[int, tuple[Mapping[str, Any], Mapping[str, str]]]] | None = None,
    made: ReplicaSpecs | None = None,
) -> DesiredStates:
    """Every given node's desired state (empty when it runs nothing), and the bad apps.

    ``environments`` maps (team, environment, "") to the Environment document.
    ``variants`` gives, for a replica that runs another revision than the app's spec (the
    old replicas of a rollout), the app document and environment it runs with.
    ``made``: the replicas' specs of the last round, taken again where nothing changed.
    """
    from kled.control import podparts  # it builds on resolve_env, above

    out = DesiredStates()
    per_node: dict[str, list[ReplicaSpec]] = {n: [] for n in nodes}
    for app in apps:
        ref = app_ref(app)
        placed = [p for p in placements.get(ref, ()) if p.node is not None]
        if not placed:
            continue
        env_doc = (environments or {}).get((ref[0], ref[1], "")) or {}
        variables = (env_doc.get("spec") or {}).get("variables") or {}
        env = resolve_env(app, configs, secrets, variables)
        if isinstance(env, BadReference):
            out.bad[ref] = env
            continue
        other = (variants or {}).get(ref) or {}
        pods: dict[int, podparts.PodParts] = {}
        by_doc: dict[int, podparts.PodParts | BadReference] = {}
        for p in placed:
            doc = (other.get(p.index) or (app, env))[0]
            if id(doc) not in by_doc:
                by_doc[id(doc)] = podparts.resolve(doc, configs, secrets, variables)
            pod = by_doc[id(doc)]
            if isinstance(pod, BadReference):
                out.bad[ref] = pod
                break
            pods[p.index] = pod
        if ref in out.bad:
            continue
        try:
            specs = [
                (
                    p.node,
                    made.of(doc, p.index, values, pods[p.index])
                    if made is not None and doc is app
                    else replica_spec(doc, p.index, values, pods[p.index]),
                )
                for p in placed
                for doc, values in [other.get(p.index) or (app, env)]
            ]
        except InvalidInput as e:
            reason = "UnsupportedRuntime" if e.field == "spec.runtime" else "InvalidSpec"
            out.bad[ref] = BadReference(reason, e.message)
            continue
        for node, replica in specs:
            if node is not None:
                per_node.setdefault(node, []).append(replica)
    for node in sorted(per_node):
        replicas = sorted(per_node[node], key=lambda r: r.id)
        out.nodes[node] = HostDesiredState(node=node, replicas=replicas)
    return out


def same_replicas(a: HostDesiredState | None, b: HostDesiredState) -> bool:
    """Whether two states ask for the same thing (ignoring the counters around them)."""
    return a is not None and a.node == b.node and a.replicas == b.replicas
