"""Schemas of every kind: what is accepted, what is filled in, and what errors read like."""

from __future__ import annotations

import base64
import json
from datetime import date, datetime
from typing import Any

import pytest

from kled.errors import InvalidInput
from kled.resources import kinds
from kled.resources.kinds import SchemaError, model_for, parse, spec_json_schema, validate
from kled.resources.registry import KINDS

KEY = base64.b64encode(bytes(range(32))).decode()


def doc(kind: str, spec: dict[str, Any] | None = None, **meta: Any) -> dict[str, Any]:
    metadata = {"name": "x", **meta}
    body: dict[str, Any] = {"apiVersion": "kled.io/v1", "kind": kind, "metadata": metadata}
    if spec is not None:
        body["spec"] = spec
    return body


def error_of(document: dict[str, Any]) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        validate(document)
    return caught.value


def assert_error(document: dict[str, Any], field: str, message: str) -> None:
    error = error_of(document)
    assert (error.field, error.message) == (field, message)


# One valid document per kind, as a user would write it.
MINIMAL: dict[str, dict[str, Any]] = {
    "Team": doc("Team", {}),
    "User": doc("User", {}, team="acme"),
    "Token": doc("Token", {"user": "ada"}, team="acme"),
    "Node": doc("Node", {}),
    "Device": doc("Device", {"owner": "ada"}, team="acme"),
    "Environment": doc("Environment", {}, team="acme"),
    "App": doc("App", {"command": ["sleep", "1"]}, team="acme", environment="dev"),
    "ManagedService": doc("ManagedService", {"template": "postgres"}, environment="dev"),
    "Config": {"kind": "Config", "metadata": {"name": "x"}, "data": {"a": "b"}},
    "Secret": {"kind": "Secret", "metadata": {"name": "x"}, "stringData": {"a": "b"}},
    "Workspace": doc("Workspace", {}),
    "Intercept": doc("Intercept", {"app": "api", "device": "laptop"}, environment="dev"),
    "Policy": doc("Policy", {"javascript": "allow();"}),
    "Cluster": doc("Cluster", {}),
    "GitSource": doc("GitSource", {"url": "file:///srv/git/env.git"}, team="acme"),
    "Job": doc("Job", {"command": ["true"]}, environment="dev"),
    "KubeObject": doc("KubeObject", {"object": {"kind": "ConfigMap"}}, environment="dev"),
    "ServiceTemplate": doc(
        "ServiceTemplate",
        {
            "engine": "redis",
            "package": "redis-server",
            "versions": ["7"],
            "port": 6379,
            "uri": "redis://{user}:{password}@{host}:{port}/{database}",
        },
    ),
}


def test_every_kind_has_a_minimal_example() -> None:
    assert set(MINIMAL) == {info.kind for info in KINDS}


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_minimal_document_validates_and_is_stable(kind: str) -> None:
    out = validate(MINIMAL[kind])
    assert out["apiVersion"] == "kled.io/v1"
    assert out["kind"] == kind
    assert out["metadata"]["name"] == "x"
    assert out["status"] == {}
    assert json.loads(json.dumps(out)) == out
    assert validate(out) == out
    assert isinstance(parse(out), model_for(kind))


@pytest.mark.parametrize("kind", sorted(MINIMAL))
def test_spec_json_schema_exists_for_every_kind(kind: str) -> None:
    schema = spec_json_schema(kind)
    assert schema["type"] == "object"
    assert schema["additionalProperties"] is False


def test_validate_does_not_change_its_input() -> None:
    document = MINIMAL["Secret"]
    before = json.dumps(document, sort_keys=True)
    validate(document)
    assert json.dumps(document, sort_keys=True) == before


def test_app_full_example_and_defaults() -> None:
    out = validate(
        doc(
            "App",
            {
                "command": ["python", "-m", "http.server", "8080"],
                "replicas": 2,
                "env": {"LOG_LEVEL": "debug"},
                "envFrom": [{"secret": "db"}, {"config": "settings"}],
                "ports": [{"name": "http", "port": 80, "targetPort": 8080}, {"port": 53}],
                "resources": {"cpu": "500m", "memory": "256Mi"},
            },
            team="acme",
            environment="dev",
            labels={"tier": "backend", "kled.io/owner": "ada"},
        )
    )
    spec = out["spec"]
    assert spec["runtime"] == "process"
    assert spec["restartPolicy"] == "Always"
    assert spec["args"] == []
    assert spec["nodeSelector"] == {}
    assert spec["ports"] == [
        {"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"},
        {"port": 53, "targetPort": 53, "protocol": "TCP"},
    ]
    assert spec["envFrom"] == [{"secret": "db"}, {"config": "settings"}]
    assert "image" not in spec  # unset optional fields are left out, not written as null
    assert out["metadata"]["labels"] == {"tier": "backend", "kled.io/owner": "ada"}


def test_app_numbers_from_yaml_for_quantities_are_kept_as_written() -> None:
    out = validate(doc("App", {"command": ["x"], "resources": {"cpu": 2, "memory": 1000}}))
    assert out["spec"]["resources"] == {"cpu": "2", "memory": "1000"}


def test_system_metadata_passes_through_unchanged() -> None:
    meta = {
        "uid": "0b6f",
        "resourceVersion": "17",
        "generation": 3,
        "creationTimestamp": "2025-01-31T12:00:00.123456Z",
        "deletionTimestamp": "2025-02-01T00:00:00+02:00",
        "finalizers": ["kled.io/agent"],
        "annotations": {"note": "anything at all: {}"},
    }
    out = validate(doc("Node", {}, **meta))
    for key, value in meta.items():
        assert out["metadata"][key] == value


def test_yaml_timestamps_and_numeric_resource_versions_become_strings() -> None:

    out = validate(
        doc("Node", {}, resourceVersion=5, creationTimestamp=datetime(2025, 1, 31, 12, 0, 0))
    )
    assert out["metadata"]["resourceVersion"] == "5"
    assert out["metadata"]["creationTimestamp"] == "2025-01-31T12:00:00Z"


def test_status_is_kept_as_given() -> None:
    status = {"phase": "Running", "replicas": [{"node": "n1", "ip": "100.64.16.7"}]}
    out = validate({**MINIMAL["App"], "status": status})
    assert out["status"] == status


def test_secret_string_data_is_folded_into_data() -> None:
    out = validate(
        {
            "kind": "Secret",
            "metadata": {"name": "db"},
            "data": {"user": base64.b64encode(b"old").decode(), "host": "ZGI="},
            "stringData": {"user": "postgres", "password": "s3cret: yes"},
        }
    )
    assert "stringData" not in out
    assert out["type"] == "Opaque"
    decoded = {key: base64.b64decode(value).decode() for key, value in out["data"].items()}
    assert decoded == {"user": "postgres", "host": "db", "password": "s3cret: yes"}
    assert validate(out) == out


def test_token_expiry_is_an_iso_date() -> None:
    out = validate(doc("Token", {"user": "ada", "expiresAt": "2030-01-01T00:00:00"}))
    assert out["spec"]["expiresAt"] == "2030-01-01T00:00:00Z"
    assert out["spec"]["revoked"] is False
    assert validate(out) == out


def test_defaults_of_the_other_kinds() -> None:
    # no zone of its own: the server's --zone applies
    assert validate(MINIMAL["Team"])["spec"] == {}
    assert validate(MINIMAL["User"])["spec"] == {"role": "member", "sshKeys": []}
    assert validate(MINIMAL["Node"])["spec"] == {"unschedulable": False, "taints": []}
    assert validate(MINIMAL["Device"])["spec"] == {"owner": "ada", "kind": "laptop"}
    assert validate(MINIMAL["Environment"])["spec"] == {"variables": {}}
    assert validate(MINIMAL["ManagedService"])["spec"] == {"template": "postgres", "parameters": {}}
    assert validate(MINIMAL["Workspace"])["spec"] == {
        "provider": "container",
        "running": True,
        "nodeSelector": {},
        "forwardPorts": [],
        "env": {},
        "localEnv": {},
    }
    assert validate(MINIMAL["Intercept"])["spec"] == {
        "app": "api",
        "device": "laptop",
        "ports": [],
        "onDeviceOffline": "fallback",
    }
    assert validate(MINIMAL["Policy"])["spec"] == {
        "type": "Validating",
        "operations": ["CREATE", "UPDATE", "DELETE"],
        "resources": ["*"],
        "environments": [],
        "kinds": [],
        "apiGroups": [],
        "namespaces": [],
        "javascript": "allow();",
        "timeoutSeconds": 10,
        "failurePolicy": "Fail",
        "violationPolicy": "Deny",
        "auditPolicy": "Log",
    }
    assert validate(MINIMAL["Cluster"])["spec"] == {"nodeSelector": {}, "users": []}
    assert validate(MINIMAL["Config"])["data"] == {"a": "b"}


def test_richer_documents_of_each_kind() -> None:
    validate(doc("Team", {"displayName": "Acme", "block": "100.64.0.0/16", "zone": "acme.dev"}))
    validate(doc("User", {"role": "owner", "email": "ada@example.com"}))
    validate(doc("Token", {"user": "ada", "ttl": "1h30m", "description": "ci"}))
    validate(
        doc(
            "Node",
            {
                "unschedulable": True,
                "taints": [{"key": "gpu", "value": "yes", "effect": "NoExecute"}],
                "capacity": {"cpu": "8", "memory": "32Gi"},
                "address": "198.18.0.2",
            },
        )
    )
    validate(doc("Device", {"owner": "ada", "publicKey": KEY, "endpoint": "[::1]:51820"}))
    validate(doc("Environment", {"clonedFrom": "dev", "variables": {"REGION": "eu"}}))
    validate(
        doc(
            "App",
            {
                "runtime": "container",
                "image": "localhost/api:1",
                "restartPolicy": "OnFailure",
                "nodeSelector": {"kled.io/arch": "amd64"},
                "ports": [{"port": 53, "protocol": "UDP"}, {"port": 53, "protocol": "TCP"}],
            },
        )
    )
    validate(
        doc(
            "ManagedService",
            {"template": "redis", "version": 7, "parameters": {"maxmemory": "1gb"}},
        )
    )
    validate(
        doc(
            "Workspace",
            {
                "source": {"git": "https://example.com/acme/api.git", "ref": "main"},
                "provider": "container",
                "environment": "dev",
                "forwardPorts": [8080],
                "owner": "ada",
            },
        )
    )
    validate(
        doc(
            "Intercept",
            {
                "app": "api",
                "device": "laptop",
                "ports": [{"port": 80, "localPort": 8080}],
                "header": {"name": "x-kled-user", "value": "ada"},
                "onDeviceOffline": "keep",
            },
        )
    )
    validate(
        doc(
            "Policy",
            {
                "type": "Mutating",
                "operations": ["CREATE"],
                "resources": ["apps", "Secret"],
                "environments": ["dev"],
                "objectSelector": {
                    "matchLabels": {"tier": "backend"},
                    "matchExpressions": [{"key": "env", "operator": "In", "values": ["a"]}],
                },
                "javascript": "mutate(request.object);",
                "timeoutSeconds": 30,
                "priority": -1,
            },
        )
    )
    validate(doc("Cluster", {"quotas": {"cpu": "4", "memory": "8Gi", "apps": 10, "workspaces": 0}}))


def test_version_of_a_managed_service_written_as_a_number_is_text() -> None:
    out = validate(doc("ManagedService", {"template": "postgres", "version": 16}))
    assert out["spec"]["version"] == "16"


def test_intercept_local_port_defaults_to_the_port() -> None:
    out = validate(doc("Intercept", {"app": "a", "device": "d", "ports": [{"port": 80}]}))
    assert out["spec"]["ports"] == [{"port": 80, "localPort": 80}]


# --- errors ----------------------------------------------------------------------------------

DNS = "must be a DNS label (lowercase letters, digits and '-', at most 63)"


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        # the generic kinds of error
        (doc("App", {"command": ["x"], "ports": [{"port": 70000}]}), "spec.ports[0].port",
         "must be 1-65535"),
        (doc("App", {"command": ["x"], "ports": [{"port": 0}]}), "spec.ports[0].port",
         "must be 1-65535"),
        (doc("Token", {}), "spec.user", "field required"),
        (doc("App", {"command": ["x"], "replica": 2}), "spec.replica", "unknown field"),
        (doc("App", {"command": ["x"]}, nmae="y"), "metadata.nmae", "unknown field"),
        ({**doc("Node", {}), "extra": 1}, "extra", "unknown field"),
        (doc("App", {"command": ["x"], "replicas": 1001}), "spec.replicas", "must be 0-1000"),
        (doc("App", {"command": ["x"], "replicas": "two"}), "spec.replicas",
         "must be an integer"),
        (doc("App", {"command": "python"}), "spec.command", "must be a list"),
        (doc("App", {"command": ["x"], "resources": []}), "spec.resources", "must be a mapping"),
        (doc("Node", {"unschedulable": "maybe"}), "spec.unschedulable",
         "must be true or false"),
        (doc("App", {"runtime": "vm"}), "spec.runtime",
         "must be one of 'process', 'container' or 'kubernetes' (got 'vm')"),
        (doc("App", {"command": ["x"], "env": {"PORT": 8080}}), "spec.env.PORT",
         "must be a string (got 8080; quote it in YAML)"),
        (doc("App", {"command": ["x"]}, labels={"debug": False}), "metadata.labels.debug",
         "must be a string (got false; quote it in YAML)"),
        (doc("Token", {"user": "ada", "expiresAt": "soon"}), "spec.expiresAt",
         "must be a date-time like 2025-01-31T12:00:00Z"),
        (doc("Policy", {"javascript": ""}), "spec.javascript", "must not be empty"),
        (doc("Policy", {"javascript": "  \n"}), "spec.javascript", "must not be empty"),
        (doc("Cluster", {"quotas": {"apps": -1}}), "spec.quotas.apps", "must be at least 0"),
        # names
        ({"kind": "Node", "spec": {}}, "metadata", "field required"),
        (doc("App", {"command": ["x"]}, name=None), "metadata.name", "field required"),
        (doc("App", {"command": ["x"]}, name="Api"), "metadata.name", DNS),
        (doc("App", {"command": ["x"]}, name="a" * 64), "metadata.name", DNS),
        (doc("App", {"command": ["x"]}, name="-api"), "metadata.name", DNS),
        (doc("Team", {}, name="acme_corp"), "metadata.name", DNS),
        (doc("App", {"command": ["x"]}, team="Acme"), "metadata.team", DNS),
        (doc("App", {"command": ["x"]}, environment="dev."), "metadata.environment", DNS),
        (doc("Workspace", {}, environment="dev"), "metadata.environment",
         "not allowed: a Workspace does not belong to an environment"),
        (doc("App", {"command": ["x"]}, finalizers=["a", "a"]), "metadata.finalizers[1]",
         "duplicate finalizer 'a'"),
        # labels
        (doc("App", {"command": ["x"]}, labels={"tier": "back end"}), "metadata.labels.tier",
         "label value 'back end' must be at most 63 letters, digits, '-', '_' or '.', "
         "starting and ending with a letter or digit"),
        (doc("App", {"command": ["x"]}, labels={"Kled.IO/x": "a"}),
         "metadata.labels['Kled.IO/x']",
         "label key 'Kled.IO/x': prefix must be a DNS subdomain (lowercase, dots, at most 253)"),
        (doc("App", {"command": ["x"]}, labels={"a" * 64: "a"}), f"metadata.labels.{'a' * 64}",
         f"label key {'a' * 64!r}: name must be at most 63 letters, digits, '-', '_' or '.', "
         "starting and ending with a letter or digit"),
        # App rules
        (doc("App", {}), "spec.command", "required for the process runtime"),
        (doc("App", {"runtime": "container"}), "spec.image", "required for the container runtime"),
        (doc("App", {"command": ["x"], "ports": [{"name": "a", "port": 1},
                                                  {"name": "a", "port": 2}]}),
         "spec.ports[1].name", "duplicate port name 'a'"),
        (doc("App", {"command": ["x"], "ports": [{"port": 80}, {"port": 80}]}),
         "spec.ports[1].port", "duplicate port 80/TCP"),
        (doc("App", {"command": ["x"], "ports": [{"name": "HTTP", "port": 80}]}),
         "spec.ports[0].name", DNS),
        (doc("App", {"command": ["x"], "ports": [{"port": 80, "protocol": "tcp"}]}),
         "spec.ports[0].protocol", "must be one of 'TCP' or 'UDP' (got 'tcp')"),
        (doc("App", {"command": ["x"], "envFrom": [{"config": "a", "secret": "b"}]}),
         "spec.envFrom[0]", "must name exactly one of config, secret or managedService"),
        (doc("App", {"command": ["x"], "envFrom": [{}]}), "spec.envFrom[0]",
         "must name exactly one of config, secret or managedService"),
        (doc("App", {"command": ["x"], "env": [{"name": "A", "value": "b"}]}), "spec.env",
         "must be a mapping of NAME: value, not a list"),
        (doc("App", {"command": ["x"], "env": {"A=B": "c"}}), "spec.env['A=B']",
         "variable name 'A=B' must be printable ASCII without '='"),
        (doc("App", {"command": ["x"], "resources": {"cpu": "lots"}}), "spec.resources.cpu",
         "must be a CPU quantity like \"500m\", \"2\" or \"0.5\" (got 'lots')"),
        (doc("App", {"command": ["x"], "resources": {"memory": "1GB"}}),
         "spec.resources.memory",
         "must be a memory quantity like \"256Mi\", \"1Gi\", \"512M\" or \"1000\" "
         "(unknown unit 'GB')"),
        # other kinds
        (doc("Team", {"block": "10.0.0.0/16"}), "spec.block",
         "must be a CIDR inside 100.64.0.0/10 with a prefix from /10 to /24"),
        (doc("Team", {"block": "100.64.0.0/26"}), "spec.block",
         "must be a CIDR inside 100.64.0.0/10 with a prefix from /10 to /24"),
        (doc("Team", {"block": "100.64.0.1/16"}), "spec.block",
         "must be a CIDR like 100.64.0.0/16 (100.64.0.1/16 has host bits set)"),
        (doc("Team", {"zone": "Kled"}), "spec.zone",
         "must be a DNS name (dot-separated DNS labels, at most 253)"),
        (doc("User", {"role": "root"}), "spec.role",
         "must be one of 'owner', 'admin', 'member' or 'viewer' (got 'root')"),
        (doc("User", {"email": "ada"}), "spec.email",
         "must be an e-mail address like ada@example.com"),
        (doc("Token", {"user": "ada", "ttl": "1y"}), "spec.ttl",
         "must be a duration like '30m', '24h' or '7d' (got '1y')"),
        (doc("Token", {"user": "ada", "ttl": "0h"}), "spec.ttl", "must be longer than zero"),
        (doc("Token", {"user": "ada", "ttl": "1h", "expiresAt": "2030-01-01T00:00:00Z"}),
         "spec.ttl", "set expiresAt or ttl, not both"),
        (doc("Node", {"taints": [{"key": "gpu", "effect": "Never"}]}), "spec.taints[0].effect",
         "must be one of 'NoSchedule', 'PreferNoSchedule' or 'NoExecute' (got 'Never')"),
        (doc("Node", {"address": "not an address"}), "spec.address",
         "must be an IP address or a host name"),
        (doc("Device", {"owner": "ada", "publicKey": "abc"}), "spec.publicKey",
         "must be a WireGuard public key (44 characters of base64)"),
        (doc("Device", {"owner": "ada", "endpoint": "host"}), "spec.endpoint",
         "must be host:port with a port 1-65535 (IPv6 as [addr]:port)"),
        (doc("Device", {"owner": "ada", "kind": "tablet"}), "spec.kind",
         "must be one of 'laptop', 'phone', 'workspace' or 'server' (got 'tablet')"),
        (doc("ManagedService", {"template": "postgres", "version": 16.1}), "spec.version",
         "must be a string (got 16.1; quote it in YAML)"),
        (doc("Workspace", {"source": {"git": "https://x/y.git", "path": "/src"}}),
         "spec.source", "must name exactly one of git or path"),
        (doc("Workspace", {"source": {"path": "/src", "ref": "main"}}), "spec.source.ref",
         "only applies to a git source"),
        (doc("Workspace", {"forwardPorts": [8080, 99999]}), "spec.forwardPorts[1]",
         "must be 1-65535"),
        (doc("Intercept", {"app": "api", "device": "d", "ports": [{"port": 1}, {"port": 1}]}),
         "spec.ports[1].port", "duplicate port 1"),
        (doc("Intercept", {"app": "api", "device": "d", "header": {"name": "a b", "value": ""}}),
         "spec.header.name", "must be an HTTP header name"),
        (doc("Policy", {"javascript": "x", "timeoutSeconds": 31}), "spec.timeoutSeconds",
         "must be 1-30"),
        (doc("Policy", {"javascript": "x", "operations": ["CREATE", "PATCH"]}),
         "spec.operations[1]",
         "must be one of 'CREATE', 'UPDATE' or 'DELETE' (got 'PATCH')"),
        (doc("Policy", {"javascript": "x", "operations": []}), "spec.operations",
         "must name at least one of CREATE, UPDATE, DELETE"),
        (doc("Policy", {"javascript": "x", "resources": ["apps", "widgets"]}),
         "spec.resources[1]",
         "unknown resource type 'widgets' (known: teams, nodes, users, tokens, devices, "
         "environments, workspaces, policies, clusters, gitsources, apps, managedservices, "
         "configs, "
         "secrets, intercepts, jobs, kubeobjects, servicetemplates)"),
        (doc("Policy", {"javascript": "x", "objectSelector": {
            "matchExpressions": [{"key": "a", "operator": "In"}]}}),
         "spec.objectSelector.matchExpressions[0].values", "must not be empty for operator In"),
        (doc("Policy", {"javascript": "x", "namespaceSelector": {
            "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["b"]}]}}),
         "spec.namespaceSelector.matchExpressions[0].values",
         "must be empty for operator Exists"),
        (doc("Policy", {"javascript": "x", "failurePolicy": "Retry"}), "spec.failurePolicy",
         "must be one of 'Fail' or 'Ignore' (got 'Retry')"),
        ({"kind": "Config", "metadata": {"name": "c"}, "data": {"a b": "c"}}, "data['a b']",
         "key 'a b' must be letters, digits, '-', '_' or '.', at most 253"),
        ({"kind": "Config", "metadata": {"name": "c"}, "spec": {}}, "spec", "unknown field"),
        ({"kind": "Secret", "metadata": {"name": "s"}, "data": {"a": "not base64!"}}, "data.a",
         "must be base64 (use stringData for plain text)"),
        # the envelope
        ({"metadata": {"name": "x"}}, "kind", "field required"),
        ({"kind": 3, "metadata": {"name": "x"}}, "kind", "must be a string"),
        ({"apiVersion": "apps/v1", "kind": "App", "metadata": {"name": "x"}}, "apiVersion",
         "unknown apiVersion 'apps/v1' for App (expected kled.io/v1)"),
        ({**doc("Node", {}), "status": ["Running"]}, "status", "must be a mapping"),
    ],
)  # fmt: skip
def test_error_names_the_field_and_says_what_is_wrong(
    document: dict[str, Any], field: str, message: str
) -> None:
    assert_error(document, field, message)


def test_unknown_kind_lists_the_known_ones() -> None:
    error = error_of({"kind": "Deployment", "metadata": {"name": "x"}})
    assert error.field == "kind"
    assert error.message.startswith("unknown kind 'Deployment' (known: Team, Node, User,")


def test_a_document_that_is_not_a_mapping() -> None:
    with pytest.raises(InvalidInput, match="a resource must be a mapping, not list"):
        validate([1, 2])  # type: ignore[arg-type]


def test_str_of_the_error_is_one_line_naming_the_field() -> None:
    error = error_of(doc("App", {"command": ["x"], "ports": [{"port": 0}]}))
    assert str(error) == "spec.ports[0].port: must be 1-65535"


def test_every_problem_is_listed_and_the_first_one_is_the_message() -> None:
    error = error_of(doc("App", {"runtime": "vm", "replicas": -1, "bogus": 1}, name="X"))
    assert isinstance(error, SchemaError)
    assert error.problems == [
        ("metadata.name", DNS),
        ("spec.runtime", "must be one of 'process', 'container' or 'kubernetes' (got 'vm')"),
        ("spec.replicas", "must be 0-1000"),
        ("spec.bogus", "unknown field"),
    ]
    assert error.field == "metadata.name"
    assert error.message == f"{DNS} (and 3 more problems)"


def test_models_are_typed_for_code_that_reads_them() -> None:
    app = parse(MINIMAL["App"])
    assert isinstance(app, kinds.App)
    assert app.spec.replicas == 1
    assert app.metadata.environment == "dev"
    with pytest.raises(InvalidInput):
        model_for("Widget")


def test_null_fields_take_their_defaults_as_in_kubernetes() -> None:
    out = validate(doc("App", {"command": ["x"], "env": None, "image": None}, labels=None))
    assert out["spec"]["env"] == {}
    assert "image" not in out["spec"]
    assert out["metadata"]["labels"] == {}


@pytest.mark.parametrize(
    ("document", "field", "message"),
    [
        (doc("App", {"command": ["x"], "replicas": True}), "spec.replicas", "must be an integer"),
        (doc("App", {"command": ["x"], "ports": [{"port": "80"}]}), "spec.ports[0].port",
         "must be an integer"),
        (doc("App", {"command": ["x"], "ports": [{"port": 80.0}]}), "spec.ports[0].port",
         "must be an integer"),
        (doc("Token", {"user": "a", "revoked": "no"}), "spec.revoked", "must be true or false"),
        (doc("App", {"command": ["x"], "env": {1: "a"}}), "spec.env",
         "key 1 must be a string (quote it in YAML)"),
        (doc("Token", {"user": "a", "expiresAt": 12}), "spec.expiresAt",
         "must be a date-time like 2025-01-31T12:00:00Z"),
        (doc("App", {"command": ["x"], "env": {"DAY": date(2025, 1, 31)}}), "spec.env.DAY",
         "must be a string (got 2025-01-31; quote it in YAML)"),
        (doc("App", {"command": ["x"]}, generation="1"), "metadata.generation",
         "must be an integer"),
    ],
)  # fmt: skip
def test_yaml_surprises_are_reported_not_guessed(
    document: dict[str, Any], field: str, message: str
) -> None:
    assert_error(document, field, message)


def test_dates_in_status_are_written_like_metadata_timestamps() -> None:
    out = validate({**MINIMAL["Node"], "status": {"seen": datetime(2025, 1, 31, 12, 0)}})
    assert out["status"] == {"seen": "2025-01-31T12:00:00Z"}
