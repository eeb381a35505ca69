"""Loading resources from YAML/JSON text, files and folders, and dumping them back."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from kled.errors import InvalidInput
from kled.resources.loading import (
    DocumentError,
    dump_yaml,
    load_documents,
    load_path,
    register_translator,
    unregister_translator,
)

APP = """\
apiVersion: kled.io/v1
kind: App
metadata: {name: api, team: acme, environment: dev, labels: {tier: backend}}
spec:
  runtime: process
  command: ["python", "-m", "http.server", "8080"]
  image: null
  replicas: 2
  env: {LOG_LEVEL: debug}
  envFrom: [{secret: db}]
  ports: [{name: http, port: 80, targetPort: 8080, protocol: TCP}]
  resources: {cpu: "500m", memory: 256Mi}
"""

CONFIG = """\
apiVersion: kled.io/v1
kind: Config
metadata: {name: settings, environment: dev}
data: {greeting: hello}
"""


def error_of(text: str, source: str = "app.yaml") -> DocumentError:
    with pytest.raises(DocumentError) as caught:
        load_documents(text, source)
    return caught.value


def test_multi_document_yaml_is_validated_in_order() -> None:
    docs = load_documents(f"{CONFIG}---\n{APP}", "app.yaml")
    assert [(d["kind"], d["metadata"]["name"]) for d in docs] == [
        ("Config", "settings"),
        ("App", "api"),
    ]
    assert docs[1]["spec"]["restartPolicy"] == "Always"  # defaults filled in


def test_empty_documents_and_comments_are_skipped() -> None:
    text = f"# leading comment\n---\n---\n{CONFIG}---\n# only a comment\n---\n"
    assert [d["kind"] for d in load_documents(text)] == ["Config"]
    assert load_documents("") == []


def test_error_names_source_document_kind_name_field_and_problem() -> None:
    bad = APP.replace("port: 80,", "port: 80000,")
    error = error_of(f"{CONFIG}---\n{bad}")
    assert error.message == "app.yaml: document 2 (App/api): spec.ports[0].port: must be 1-65535"
    assert str(error) == error.message
    assert error.field == "spec.ports[0].port"
    assert error.document == 2
    assert isinstance(error, InvalidInput)


def test_documents_are_numbered_as_they_stand_in_the_file() -> None:
    error = error_of(f"{CONFIG}---\n---\nkind: Config\nmetadata: {{name: Bad}}\n")
    assert error.message == (
        "app.yaml: document 3 (Config/Bad): metadata.name: "
        "must be a DNS label (lowercase letters, digits and '-', at most 63)"
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: App\nmetadata:\n  name: api\n   team: x\n",
         "app.yaml: line 4, column 8: mapping values are not allowed here"),
        ("kind: App\nmetadata: {name: api\n",
         "app.yaml: line 3, column 1: expected ',' or '}', but got '<stream end>'"),
        ("kind: App\nkind: Config\n", "app.yaml: line 2, column 1: duplicate key 'kind'"),
        ("- kind: App\n", "app.yaml: document 1: must be a mapping, not a list"),
        (f"{CONFIG}---\njust text\n", "app.yaml: document 2: must be a mapping, not a string"),
        ("metadata: {name: api}\n", "app.yaml: document 1: kind: field required"),
        ("kind: Widget\nmetadata: {name: w}\n",
         "app.yaml: document 1 (Widget/w): kind: unknown kind 'Widget' (known: Team, Node, "
         "User, Token, Device, Environment, Workspace, Policy, Cluster, GitSource, App, "
         "ManagedService, Config, Secret, Intercept, Job, KubeObject, ServiceTemplate)"),
        ("apiVersion: apps/v1\nkind: App\nmetadata: {name: api}\n",
         "app.yaml: document 1 (App/api): apiVersion: unknown apiVersion 'apps/v1' for App "
         "(expected kled.io/v1)"),
        ("kind: App\nspec: {command: [x]}\n", "app.yaml: document 1 (App): metadata: "
         "field required"),
    ],
)  # fmt: skip
def test_errors_name_where_they_are(text: str, message: str) -> None:
    assert error_of(text).message == message


def test_several_problems_in_one_document_are_counted() -> None:
    error = error_of("kind: App\nmetadata: {name: api}\nspec: {replicas: -1, runtime: vm}\n")
    assert error.message == (
        "app.yaml: document 1 (App/api): spec.runtime: must be one of 'process', 'container' "
        "or 'kubernetes' (got 'vm') (and 1 more problem)"
    )


def test_json_text_is_read_when_the_source_is_json() -> None:
    docs = [{"kind": "Config", "metadata": {"name": "a"}, "data": {}}]
    assert load_documents(json.dumps(docs), "list.json")[0]["metadata"]["name"] == "a"
    one = load_documents(json.dumps(docs[0]), "one.json")
    assert [d["kind"] for d in one] == ["Config"]
    error = error_of('{"kind": "Config",\n "metadata": }', "bad.json")
    assert error.message.startswith("bad.json: line 2, column 14: Expecting value")


FOREIGN = """\
apiVersion: policy.example.com/v1beta1
kind: FooPolicy
metadata: {name: deny-latest}
spec:
  operations: [CREATE]
  resources: [apps]
  javascript: "deny('no');"
  apiGroups: ["*"]
"""


def _translate_foo(doc: dict[str, Any]) -> dict[str, Any]:
    spec = {key: value for key, value in doc["spec"].items() if key != "apiGroups"}
    if not doc["metadata"]["name"].startswith("deny"):
        raise InvalidInput("only deny policies are understood", field="metadata.name")
    return {"apiVersion": "kled.io/v1", "kind": "Policy", "metadata": doc["metadata"], "spec": spec}


@pytest.fixture
def foo_translator() -> Any:
    register_translator("policy.example.com/v1beta1", "FooPolicy", _translate_foo)
    yield
    unregister_translator("policy.example.com/v1beta1", "FooPolicy")


@pytest.mark.usefixtures("foo_translator")
def test_foreign_documents_are_translated_before_validation() -> None:
    (policy,) = load_documents(FOREIGN, "policy.yaml")
    assert policy["kind"] == "Policy"
    assert policy["spec"]["operations"] == ["CREATE"]
    assert policy["spec"]["failurePolicy"] == "Fail"


@pytest.mark.usefixtures("foo_translator")
def test_errors_in_translated_documents_name_the_foreign_kind() -> None:
    bad = FOREIGN.replace("resources: [apps]", "resources: [widgets]")
    assert error_of(bad, "p.yaml").message.startswith(
        "p.yaml: document 1 (FooPolicy/deny-latest): spec.resources[0]: unknown resource type"
    )
    refused = FOREIGN.replace("deny-latest", "allow-all")
    assert error_of(refused, "p.yaml").message == (
        "p.yaml: document 1 (FooPolicy/allow-all): metadata.name: only deny policies are understood"
    )


def test_a_crashing_translator_is_reported_as_bad_input() -> None:
    def broken(doc: dict[str, Any]) -> dict[str, Any]:
        return {"kind": doc["nope"]}

    register_translator("x.io/v1", "Thing", broken)
    try:
        error = error_of("apiVersion: x.io/v1\nkind: Thing\nmetadata: {name: t}\n", "t.yaml")
    finally:
        unregister_translator("x.io/v1", "Thing")
    assert error.message == "t.yaml: document 1 (Thing/t): cannot translate: 'nope'"


def test_without_a_translator_a_foreign_document_is_refused() -> None:
    assert error_of(FOREIGN, "p.yaml").message == (
        "p.yaml: document 1 (FooPolicy/deny-latest): kind: unknown kind 'FooPolicy' (known: "
        "Team, Node, User, Token, Device, Environment, Workspace, Policy, Cluster, GitSource, "
        "App, ManagedService, Config, Secret, Intercept, Job, KubeObject, ServiceTemplate)"
    )


def test_load_path_reads_a_file_or_the_resource_files_of_a_folder(tmp_path: Path) -> None:
    (tmp_path / "b-app.yml").write_text(APP)
    (tmp_path / "a-config.yaml").write_text(CONFIG)
    (tmp_path / "c.json").write_text(
        json.dumps({"kind": "Node", "metadata": {"name": "n1"}, "spec": {}})
    )
    (tmp_path / "notes.txt").write_text("not a resource")
    nested = tmp_path / "more"
    nested.mkdir()
    (nested / "d.yaml").write_text(CONFIG.replace("settings", "nested"))

    names = [d["metadata"]["name"] for d in load_path(tmp_path)]
    assert names == ["settings", "api", "n1"]
    recursive = [d["metadata"]["name"] for d in load_path(tmp_path, recursive=True)]
    assert recursive == ["settings", "api", "n1", "nested"]
    assert [d["kind"] for d in load_path(tmp_path / "b-app.yml")] == ["App"]


def test_load_path_errors_name_the_file(tmp_path: Path) -> None:
    path = tmp_path / "app.yaml"
    path.write_text(APP.replace("replicas: 2", "replicas: 2000"))
    with pytest.raises(DocumentError) as caught:
        load_path(tmp_path)
    assert caught.value.message == (f"{path}: document 1 (App/api): spec.replicas: must be 0-1000")
    with pytest.raises(InvalidInput, match="no such file or directory"):
        load_path(tmp_path / "missing.yaml")


def test_dump_yaml_round_trips_and_keeps_scripts_readable() -> None:
    policy = {
        "kind": "Policy",
        "metadata": {"name": "p"},
        "spec": {"javascript": "if (request.object.spec.replicas > 3) {\n  deny('too many');\n}\n"},
    }
    docs = load_documents(f"{CONFIG}---\n{APP}") + load_documents(json.dumps(policy), "p.json")
    text = dump_yaml(docs)
    assert text.startswith("---\napiVersion: kled.io/v1\nkind: Config\n")
    assert "  javascript: |\n    if (request.object.spec.replicas > 3) {\n" in text
    assert load_documents(text) == docs


def test_dump_yaml_of_one_document_has_no_separator() -> None:
    docs = load_documents(CONFIG)
    text = dump_yaml(docs)
    assert not text.startswith("---")
    assert load_documents(text) == docs
