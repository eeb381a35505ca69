"""The QuickJS sandbox on its own (real QuickJS, in this process) and the pure parts
around it: the syntax check, label selectors, reading a Policy, the mutation patch."""

from __future__ import annotations

from typing import Any

import pytest

from kled.admission.policy.matching import Selector, read_policy
from kled.admission.policy.patching import json_patch
from kled.admission.policy.runtime import Limits, Sandbox, compile_check
from kled.errors import InvalidInput

REQUEST: dict[str, Any] = {
    "operation": "CREATE",
    "namespace": "dev",
    "name": "api",
    "object": {"metadata": {"name": "api", "labels": {}}},
}
FAST = Limits(seconds=1, memory_bytes=8 * 1024 * 1024)


@pytest.mark.parametrize(
    ("script", "where"),
    [
        ("const a = 1;\nconst b = ;\n", "line 2, column 11: SyntaxError"),
        ("let a = 1;\nlet b = 2;\nif (a { }\n", "line 3, column 7: SyntaxError: expecting ')'"),
        ("const x = 1;\n  foo bar;\n", "line 2, column 7: SyntaxError"),
        ('deny("x"', "line 1, column 9: SyntaxError"),
        ("let s = 'open", "line 1, column"),
    ],
)
def test_syntax_errors_name_line_and_column(script: str, where: str) -> None:
    with pytest.raises(InvalidInput) as caught:
        compile_check(script)
    assert caught.value.field == "spec.javascript"
    assert str(caught.value).startswith(f"spec.javascript: {where}")


def test_valid_scripts_pass_and_escaping_the_wrapper_does_not() -> None:
    compile_check("if (request.namespace === 'default') { deny(`no ${request.name}`); }")
    compile_check("const f = (x) => x?.y ?? 1; class A {}; for (const k of [1]) {}")
    with pytest.raises(InvalidInput, match="closes its own function early"):
        compile_check("})\nwhile (true) {}\n(function () {")


def test_decisions_and_warnings() -> None:
    box = Sandbox()
    denied = box.run("k1", 'warn("first"); deny(`no ${request.name}`, "Why", 409)', REQUEST, FAST)
    assert (denied.action, denied.message, denied.reason, denied.code) == (
        "deny",
        "no api",
        "Why",
        409,
    )
    assert denied.warnings == ["first"]
    # A script that swallows the halt of deny() and then allows is still denied.
    sticky = box.run("k2", "try { deny('x') } catch (e) {} allow()", REQUEST, FAST)
    assert sticky.action == "deny"
    assert box.run("k3", "exit(); deny('never')", REQUEST, FAST).action == "exit"
    assert box.run("k4", "const a = 1;", REQUEST, FAST).action is None


def test_mutate_returns_the_changed_object_and_print_is_collected() -> None:
    box = Sandbox()
    outcome = box.run(
        "m",
        "print('seen', request.name, {a: 1});"
        "request.object.metadata.labels.team = 'acme'; mutate(request.object)",
        REQUEST,
        FAST,
    )
    assert outcome.action == "mutate"
    assert outcome.object == {"metadata": {"name": "api", "labels": {"team": "acme"}}}
    assert outcome.prints == ['seen api {"a":1}']


def test_host_calls_are_answered_by_replaying_the_script() -> None:
    box = Sandbox(env={"STAGE": "test"})
    script = (
        "const d = get('Device', 'v1', 'lap'); const l = list('App', 'v1', {namespace: 'dev'});"
        "if (!d) deny('no device');"
        "warn(`${d.spec.owner} ${l.length} ${env('STAGE')} ${env('HOME')}`)"
    )
    first = box.run("h", script, REQUEST, FAST)
    assert first.need == {
        "key": 'get["Device","v1","lap"]',
        "fn": "get",
        "args": ["Device", "v1", "lap"],
    }
    answers: dict[str, Any] = {first.need["key"]: {"value": {"spec": {"owner": "alice"}}}}
    second = box.run("h", script, REQUEST, FAST, answers)
    assert second.need is not None and second.need["fn"] == "list"
    answers[second.need["key"]] = {"value": [{}, {}]}
    third = box.run("h", script, REQUEST, FAST, answers)
    assert third.need is None
    assert third.warnings == ["alice 2 test undefined"]
    failing = box.run("h", script, REQUEST, FAST, {first.need["key"]: {"error": "boom"}})
    assert failing.error is not None and "boom" in failing.error


def test_atob_btoa() -> None:
    box = Sandbox()
    script = (
        "if (btoa('') !== '' || btoa('a') !== 'YQ==' || btoa('ab') !== 'YWI=' ||"
        " btoa('Kled!') !== 'S2xlZCE=' || atob('S2xlZCE=') !== 'Kled!' || atob('YQ') !== 'a')"
        " deny('wrong');"
        "try { atob('%%%'); deny('no error'); } catch (e) { warn(e.message) }"
    )
    outcome = box.run("b", script, REQUEST, FAST)
    assert outcome.action is None, outcome.message
    assert outcome.warnings == ["atob: the string is not valid base64"]


def test_limits_cut_runs_off_and_the_sandbox_recovers() -> None:
    # Memory limits are tested through the worker processes only (test_policy_engine):
    # QuickJS can fault at its memory limit, which must not take the test run down.
    box = Sandbox()
    assert box.run("loop", "while (true) {}", REQUEST, Limits(seconds=0.3)).limit == "time"
    deep = "function f(n) { return f(n + 1) + 1; } f(0);"
    assert box.run("deep", deep, REQUEST, FAST).limit == "stack"
    assert box.run("ok", "allow()", REQUEST, FAST).action == "allow"


def test_label_selectors() -> None:
    sel = Selector.parse("tier=web, env!=prod,team in (a, b),owner,!legacy")
    assert sel.matches({"tier": "web", "env": "dev", "team": "a", "owner": "x"})
    assert not sel.matches({"tier": "web", "env": "prod", "team": "a", "owner": "x"})
    assert not sel.matches({"tier": "web", "team": "c", "owner": "x"})
    assert not sel.matches({"tier": "web", "team": "a", "owner": "x", "legacy": "1"})
    assert Selector.parse("").matches({})
    structured = Selector.from_spec(
        {
            "matchLabels": {"a": "1"},
            "matchExpressions": [{"key": "b", "operator": "NotIn", "values": ["2"]}],
        },
        "spec.objectSelector",
    )
    assert structured is not None and structured.matches({"a": "1"})
    assert not structured.matches({"a": "1", "b": "2"})
    with pytest.raises(InvalidInput):
        Selector.parse("a in (")


def test_read_policy_defaults_and_errors() -> None:
    doc = {"metadata": {"name": "p", "team": "t"}, "spec": {"javascript": "allow()"}}
    policy = read_policy(doc)
    assert (policy.type, policy.timeout_seconds, policy.failure_policy) == (
        "Validating",
        10,
        "Fail",
    )
    assert policy.operations == {"CREATE", "UPDATE", "DELETE"} and policy.kinds is None
    assert read_policy({**doc, "spec": {"javascript": "1", "resources": ["apps", "ws"]}}).kinds == {
        "App",
        "Workspace",
    }
    # a Kubernetes resource names a Kled Cluster's kind (docs/policy.md), none of Kled's
    pods = read_policy({**doc, "spec": {"javascript": "1", "resources": ["pods"]}})
    assert pods.kinds == frozenset()
    for spec, field in (
        ({"javascript": "1", "timeoutSeconds": 31}, "spec.timeoutSeconds"),
        ({"javascript": "1", "resources": ["gizmos"]}, "spec.resources[0]"),
        ({"javascript": "1", "violationPolicy": "Maybe"}, "spec.violationPolicy"),
        ({"javascript": " "}, "spec.javascript"),
    ):
        with pytest.raises(InvalidInput) as caught:
            read_policy({**doc, "spec": spec})
        assert caught.value.field == field


def test_json_patch() -> None:
    before = {"metadata": {"labels": {"a": "1", "b/c": "2"}}, "spec": {"replicas": 1, "x": [1]}}
    after = {
        "metadata": {"labels": {"a": "9"}, "annotations": {"n": "v"}},
        "spec": {"replicas": 1, "x": [1, 2]},
    }
    assert json_patch(before, after) == [
        {"op": "remove", "path": "/metadata/labels/b~1c"},
        {"op": "replace", "path": "/metadata/labels/a", "value": "9"},
        {"op": "add", "path": "/metadata/annotations", "value": {"n": "v"}},
        {"op": "replace", "path": "/spec/x", "value": [1, 2]},
    ]
    assert json_patch(before, before) == []
