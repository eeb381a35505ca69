"""A replica's variables that only its node knows: its pod IP, the node's name.

``AppSpec.field_env`` (Kubernetes' downward API, ``env[].valueFrom.fieldRef`` in a Kled
Cluster) names variables by what they hold; the agent sets them when it places the
replica, so that the spec a runtime records, and compares, holds the values.
"""

from __future__ import annotations

from kled.resources.hoststate import ContainerSpec, ReplicaSpec

#: a replica without a pod of its own shares the node's network: its address is loopback
NO_POD_IP = "127.0.0.1"


def with_fields(spec: ReplicaSpec, node: str) -> ReplicaSpec:
    """``spec`` with the variables of its ``field_env`` (and its containers') set."""
    containers = [*spec.sidecars, *spec.init_containers]
    if not spec.field_env and not any(c.field_env for c in containers):
        return spec
    values = {
        "metadata.name": spec.name,
        "status.podIP": spec.pod_ip or NO_POD_IP,
        "spec.nodeName": node,
    }

    def env(own: dict[str, str], fields: dict[str, str]) -> dict[str, str]:
        return {**own, **{name: values[path] for name, path in fields.items() if path in values}}

    def container(c: ContainerSpec) -> ContainerSpec:
        return c.model_copy(update={"env": env(c.env, c.field_env)}) if c.field_env else c

    return spec.model_copy(
        update={
            "env": env(spec.env, spec.field_env),
            "sidecars": [container(c) for c in spec.sidecars],
            "init_containers": [container(c) for c in spec.init_containers],
        }
    )
