"""Desired host state from apps and placements: env resolution, bad references, restarts."""

from __future__ import annotations

import base64
from typing import Any

from kled.control.desired import (
    RESTARTED_AT,
    ReplicaSpecs,
    compute,
    restart_generation,
)
from kled.control.scheduling import Placement
from kled.resources.hoststate import RuntimeKind
from kled.resources.kinds import validate

REF = ("acme", "dev", "api")


def app(**spec: Any) -> dict[str, Any]:
    annotations = spec.pop("annotations", {})
    doc = validate(
        {
            "kind": "App",
            "metadata": {
                "name": "api",
                "team": "acme",
                "environment": "dev",
                "annotations": annotations,
            },
            "spec": {"command": ["python", "-m", "http.server"], **spec},
        }
    )
    doc["metadata"]["uid"] = "u-1"
    return doc


def config(name: str, **data: str) -> dict[str, Any]:
    return validate(
        {"kind": "Config", "metadata": {"name": name, "team": "acme", "environment": "dev"},
         "data": data}
    )  # fmt: skip


def secret(name: str, **data: str) -> dict[str, Any]:
    return validate(
        {"kind": "Secret", "metadata": {"name": name, "team": "acme", "environment": "dev"},
         "stringData": data}
    )  # fmt: skip


def run(
    doc: dict[str, Any],
    placements: list[Placement],
    configs: list[dict[str, Any]] = (),  # type: ignore[assignment]
    secrets: list[dict[str, Any]] = (),  # type: ignore[assignment]
    environments: dict[Any, Any] | None = None,
) -> Any:
    return compute(
        ["a", "b"],
        [doc],
        {REF: placements},
        configs={("acme", "dev", c["metadata"]["name"]): c for c in configs},
        secrets={("acme", "dev", s["metadata"]["name"]): s for s in secrets},
        environments=environments,
    )


def test_each_placed_replica_lands_on_its_node() -> None:
    out = run(app(replicas=3), [Placement(0, "a"), Placement(1, "b"), Placement(2, "a")])
    assert [r.index for r in out.nodes["a"].replicas] == [0, 2]
    assert [r.index for r in out.nodes["b"].replicas] == [1]
    r = out.nodes["b"].replicas[0]
    assert (r.team, r.environment, r.app, r.app_uid) == ("acme", "dev", "api", "u-1")
    assert r.command == ["python", "-m", "http.server"]
    assert r.runtime is RuntimeKind.PROCESS
    assert not out.bad


def test_pending_replicas_go_nowhere_and_every_node_gets_a_state() -> None:
    out = run(app(), [Placement(0, None, "Unschedulable", "no ready nodes")])
    assert set(out.nodes) == {"a", "b"}
    assert all(not s.replicas for s in out.nodes.values())


def test_env_from_config_and_secret_merged_under_explicit_env() -> None:
    doc = app(
        env={"LOG_LEVEL": "debug", "SHARED": "from-app"},
        envFrom=[{"config": "settings"}, {"secret": "db"}],
    )
    out = run(
        doc,
        [Placement(0, "a")],
        configs=[config("settings", SHARED="from-config", COLOR="blue")],
        secrets=[secret("db", PASSWORD="s3cret", COLOR="red")],
    )
    env = out.nodes["a"].replicas[0].env
    assert env == {
        "COLOR": "red",  # a later source wins over an earlier one
        "LOG_LEVEL": "debug",
        "PASSWORD": "s3cret",  # base64-decoded
        "SHARED": "from-app",  # explicit env wins
    }
    assert list(env) == sorted(env)


def test_environment_variables_are_the_lowest_layer() -> None:
    env_doc = {"spec": {"variables": {"REGION": "eu", "LOG_LEVEL": "info"}}}
    out = run(
        app(env={"LOG_LEVEL": "debug"}),
        [Placement(0, "a")],
        environments={("acme", "dev", ""): env_doc},
    )
    assert out.nodes["a"].replicas[0].env == {"LOG_LEVEL": "debug", "REGION": "eu"}


def test_missing_config_is_a_bad_reference_not_sent() -> None:
    out = run(app(envFrom=[{"config": "nope"}]), [Placement(0, "a")])
    assert not out.nodes["a"].replicas
    bad = out.bad[REF]
    assert bad.reason == "ConfigNotFound"
    assert "api" in bad.message and "'nope'" in bad.message


def test_missing_secret_is_a_bad_reference() -> None:
    out = run(
        app(envFrom=[{"config": "settings"}, {"secret": "db"}]),
        [Placement(0, "a")],
        configs=[config("settings", A="1")],
    )
    assert out.bad[REF].reason == "SecretNotFound"
    assert "'db'" in out.bad[REF].message


def test_config_of_another_environment_does_not_count() -> None:
    other = config("settings", A="1")
    out = compute(
        ["a"],
        [app(envFrom=[{"config": "settings"}])],
        {REF: [Placement(0, "a")]},
        configs={("acme", "prod", "settings"): other},
        secrets={},
    )
    assert out.bad[REF].reason == "ConfigNotFound"


def test_restart_annotation_changes_the_generation() -> None:
    before = run(app(), [Placement(0, "a")]).nodes["a"].replicas[0]
    after = (
        run(app(annotations={RESTARTED_AT: "2026-11-23T01:00:00Z"}), [Placement(0, "a")])
        .nodes["a"]
        .replicas[0]
    )
    later = (
        run(app(annotations={RESTARTED_AT: "2026-11-23T01:00:05Z"}), [Placement(0, "a")])
        .nodes["a"]
        .replicas[0]
    )
    assert before.generation == 0
    assert 0 < after.generation < later.generation
    assert restart_generation(app(annotations={RESTARTED_AT: "7"})) == 7


def test_quantities_and_ports_become_numbers() -> None:
    doc = app(
        resources={"cpu": "500m", "memory": "256Mi"},
        ports=[{"name": "http", "port": 80, "targetPort": 8080}],
        restartPolicy="OnFailure",
        workingDir="/srv",
    )
    r = run(doc, [Placement(0, "a")]).nodes["a"].replicas[0]
    assert r.resources.cpu_millicores == 500
    assert r.resources.memory_bytes == 256 * 1024 * 1024
    assert (r.ports[0].port, r.ports[0].target_port, r.ports[0].name) == (80, 8080, "http")
    assert r.restart_policy.value == "OnFailure"
    assert r.working_dir == "/srv"


def test_container_app_carries_its_image() -> None:
    doc = app(runtime="container", image="localhost/busybox:1")
    r = run(doc, [Placement(0, "a")]).nodes["a"].replicas[0]
    assert r.runtime is RuntimeKind.CONTAINER and r.image == "localhost/busybox:1"


def test_kubernetes_runtime_is_reported_not_sent() -> None:
    out = run(app(runtime="kubernetes", image="x"), [Placement(0, "a")])
    assert out.bad[REF].reason == "UnsupportedRuntime"
    assert not out.nodes["a"].replicas


def test_output_is_deterministic() -> None:
    a = app(replicas=12)
    placements = [Placement(i, "a" if i % 2 else "b") for i in range(12)]
    one = run(a, placements)
    two = run(a, list(reversed(placements)))
    assert one.nodes == two.nodes
    ids = [r.id for r in one.nodes["a"].replicas]
    assert ids == sorted(ids)


def test_secret_values_are_decoded_bytes() -> None:
    raw = base64.b64encode("naïve".encode()).decode()
    doc = {"metadata": {"name": "db"}, "data": {"WORD": raw}}
    out = compute(
        ["a"],
        [app(envFrom=[{"secret": "db"}])],
        {REF: [Placement(0, "a")]},
        configs={},
        secrets={("acme", "dev", "db"): doc},
    )
    assert out.nodes["a"].replicas[0].env["WORD"] == "naïve"


def test_probes_and_graceful_stop_are_carried_with_named_ports_resolved() -> None:
    doc = app(
        ports=[{"name": "http", "port": 80, "targetPort": 8080}],
        readinessProbe={
            "httpGet": {"path": "/ready", "port": "http",
                        "httpHeaders": [{"name": "X-Probe", "value": "1"}]},
            "periodSeconds": 2,
        },
        livenessProbe={"tcpSocket": {"port": 8080}, "failureThreshold": 5},
        startupProbe={"exec": {"command": ["test", "-f", "/tmp/up"]}},
        lifecycle={"preStop": {"exec": {"command": ["sleep", "1"]}}},
        terminationGracePeriodSeconds=7,
    )  # fmt: skip
    r = run(doc, [Placement(0, "a")]).nodes["a"].replicas[0]
    assert r.readiness_probe is not None and r.liveness_probe is not None
    assert (r.readiness_probe.kind, r.readiness_probe.port, r.readiness_probe.path) == (
        "httpGet", 8080, "/ready"
    )  # fmt: skip
    assert r.readiness_probe.headers == [("X-Probe", "1")]
    assert (r.readiness_probe.period_seconds, r.readiness_probe.failure_threshold) == (2, 3)
    assert (r.liveness_probe.kind, r.liveness_probe.port) == ("tcpSocket", 8080)
    assert r.liveness_probe.failure_threshold == 5
    assert r.startup_probe is not None and r.startup_probe.command == ["test", "-f", "/tmp/up"]
    assert r.pre_stop is not None and r.pre_stop.command == ["sleep", "1"]
    assert r.termination_grace_period_seconds == 7


def test_an_app_without_probes_sends_the_spec_it_always_did() -> None:
    r = run(app(), [Placement(0, "a")]).nodes["a"].replicas[0]
    assert r.readiness_probe is None and r.liveness_probe is None and r.startup_probe is None
    assert r.pre_stop is None and r.termination_grace_period_seconds is None


def test_replica_specs_are_kept_while_the_app_and_its_inputs_stay() -> None:
    made = ReplicaSpecs()
    here = [Placement(0, "a"), Placement(1, "b")]

    def specs(doc: dict[str, Any], configs: list[dict[str, Any]] = ()) -> list[Any]:  # type: ignore[assignment]
        out = compute(
            ["a", "b"],
            [doc],
            {REF: here},
            configs={("acme", "dev", c["metadata"]["name"]): c for c in configs},
            secrets={},
            made=made,
        )
        fresh = run(doc, here, configs)  # the same round without memory: the truth
        assert out.nodes == fresh.nodes
        return [r for n in sorted(out.nodes) for r in out.nodes[n].replicas]

    v1 = {**app(envFrom=[{"config": "cfg"}]), "metadata": {**app()["metadata"], "generation": 1}}
    first = specs(v1, [config("cfg", A="1")])
    assert [r.id for r in first] == ["acme.dev.api.0", "acme.dev.api.1"]
    again = specs(v1, [config("cfg", A="1")])
    assert all(x is y for x, y in zip(first, again, strict=True))  # not validated again
    assert specs(v1, [config("cfg", A="2")])[0].env["A"] == "2"  # its config changed
    v2 = {**v1, "spec": {**v1["spec"], "command": ["sleep", "1"]}}
    v2["metadata"] = {**v1["metadata"], "generation": 2}
    assert specs(v2, [config("cfg", A="2")])[0].command == ["sleep", "1"]
    stamped = {**v2, "metadata": {**v2["metadata"], "annotations": {RESTARTED_AT: "7"}}}
    assert specs(stamped, [config("cfg", A="2")])[0].generation != first[0].generation
    made.forget(REF)
    assert specs(stamped, [config("cfg", A="2")])[0] is not first[0]
