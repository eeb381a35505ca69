"""kPolicy as a user meets it from the CLI: ``kled apply`` of a policy and of what it
refuses, warnings, ``kled policy report``, ``kled policy test``, and jsPolicy manifests —
``kled`` as a subprocess against a real control plane.
"""

from __future__ import annotations

import json
from pathlib import Path

import yaml
from clikit import ROOT, Cli

from kled.cli.client import Client
from kled.cli.policy import violations_section
from servers import RunningServer

LIBRARY = ROOT / "policies"

APP = """\
apiVersion: kled.io/v1
kind: App
metadata: {name: api}
spec:
  command: ["sleep", "60"]
  replicas: 1
"""

OWNED = APP.replace("{name: api}", "{name: api, labels: {owner: ana}}")

# From jsPolicy's documentation (the quickstart), verbatim.
JSPOLICY = """\
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "deny-default-namespace.company.tld"
spec:
  operations: ["CREATE"]
  resources: ["*"]
  scope: Namespaced
  javascript: |
    if (request.namespace === "default") {
      deny("Creation of resources within the default namespace is not allowed!");
    }
"""

WARN_REPLICAS = """\
apiVersion: kled.io/v1
kind: Policy
metadata: {name: many-replicas}
spec:
  type: Validating
  resources: [apps]
  javascript: |
    if (request.object.spec.replicas > 3) {
      warn(`${request.name} asks for ${request.object.spec.replicas} replicas`);
    }
"""


def _team(admin: Cli, name: str, *envs: str) -> None:
    admin.ok("team", "create", name)
    admin.ok("context", "set", "--team", name)
    for env in envs:
        admin.ok("env", "create", env)


def _file(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_a_library_policy_denies_then_allows_and_reports(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "pol-owner", "dev")
    policy = str(LIBRARY / "require-owner-label.yaml")
    assert admin.ok("apply", "-f", policy).strip() == "policy/require-owner-label created"

    denied = admin("apply", "-f", _file(tmp_path, "app.yaml", APP), "-e", "dev")
    assert denied.code == 1, denied
    assert denied.err.startswith("error: denied (policy require-owner-label): ")
    assert "app api has no owner label: add metadata.labels.owner" in denied.err
    assert denied.out == ""
    assert admin("get", "app", "api", "-e", "dev").code == 1

    fixed = _file(tmp_path, "owned.yaml", OWNED)
    assert admin.ok("apply", "-f", fixed, "-e", "dev").strip() == "app/api created"

    table = admin.ok("policy", "report").splitlines()
    assert table[0].split() == ["TIME", "POLICY", "ACTION", "KIND/NAME", "ENV", "USER", "MESSAGE"]
    assert len(table) == 2
    row = table[1].split()
    assert row[2:7] == ["require-owner-label", "deny", "app/api", "dev", "admin"]
    assert "app api has no owner label" in table[1]

    report = json.loads(admin.ok("policy", "report", "require-owner-label", "-o", "json"))
    assert report["kind"] == "PolicyReport"
    assert report["policy"]["metadata"]["name"] == "require-owner-label"
    assert [(v["action"], v["name"], v["reason"]) for v in report["items"]] == [
        ("deny", "api", "MissingOwner")
    ]
    listed = yaml.safe_load(admin.ok("policy", "report", "-o", "yaml", "--limit", "1"))
    assert listed["kind"] == "ViolationList" and len(listed["items"]) == 1


def test_warnings_are_printed_on_stderr(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "pol-warn", "dev")
    admin.ok("apply", "-f", _file(tmp_path, "warn.yaml", WARN_REPLICAS))
    many = _file(tmp_path, "many.yaml", APP.replace("replicas: 1", "replicas: 5"))
    result = admin("apply", "-f", many, "-e", "dev")
    assert result.code == 0, result
    assert result.out.strip() == "app/api created"
    assert "Warning: [many-replicas] api asks for 5 replicas" in result.err


def test_report_of_nothing_and_of_a_missing_policy(admin: Cli) -> None:
    _team(admin, "pol-empty")
    empty = admin("policy", "report")
    assert empty.code == 0 and empty.out == ""
    assert "no violations of the policies in team pol-empty" in empty.err
    missing = admin("policy", "report", "nope")
    assert missing.code == 1
    assert missing.err.startswith("error: ") and "nope" in missing.err
    bad = admin("policy", "report", "-o", "wide")
    assert bad.code == 2 and "unknown output format 'wide'" in bad.err


def test_a_jspolicy_manifest_is_applied_and_enforced(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "pol-jsp", "default", "dev")
    manifest = _file(tmp_path, "jspolicy.yaml", JSPOLICY)
    assert (
        admin.ok("apply", "-f", manifest).strip()
        == "policy/deny-default-namespace-company-tld created"
    )
    stored = yaml.safe_load(
        admin.ok("get", "policy", "deny-default-namespace-company-tld", "-o", "yaml")
    )
    assert stored["metadata"]["annotations"]["kled.io/jspolicy-name"] == (
        "deny-default-namespace.company.tld"
    )
    app = _file(tmp_path, "app.yaml", OWNED)
    denied = admin("apply", "-f", app, "-e", "default")
    assert denied.code == 1, denied
    assert "Creation of resources within the default namespace is not allowed!" in denied.err
    assert admin.ok("apply", "-f", app, "-e", "dev").strip() == "app/api created"


def test_policy_test_runs_a_library_policy_locally(cli: Cli, tmp_path: Path) -> None:
    # No server, no login: `kled policy test` is for CI pipelines.
    policy = str(LIBRARY / "require-owner-label.yaml")
    denied = cli("policy", "test", policy, "--resource", _file(tmp_path, "a.yaml", APP))
    assert denied.code == 1, denied
    assert denied.out.startswith("DENIED: app api has no owner label")
    assert denied.out.rstrip().endswith("(policy require-owner-label)")
    allowed = cli("policy", "test", policy, "-r", _file(tmp_path, "b.yaml", OWNED))
    assert allowed.code == 0, allowed
    assert allowed.out.strip() == "ALLOWED"


def test_describe_section_lists_the_newest_violations(
    admin: Cli, server: RunningServer, tmp_path: Path
) -> None:
    _team(admin, "pol-describe", "dev")
    admin.ok("apply", "-f", str(LIBRARY / "require-owner-label.yaml"))
    for name in ("one", "two"):
        admin(
            "apply",
            "-f",
            _file(tmp_path, f"{name}.yaml", APP.replace("{name: api}", f"{{name: {name}}}")),
            "-e",
            "dev",
        )
    with Client(server.url, server.admin_token) as client:
        section = violations_section(client, "pol-describe", "require-owner-label").splitlines()
        assert section[0] == "Violations:"
        assert section[1].split()[:3] == ["TIME", "POLICY", "ACTION"]
        assert [line.split()[4] for line in section[2:]] == ["app/two", "app/one"]
        admin.ok("apply", "-f", _file(tmp_path, "quiet.yaml", WARN_REPLICAS))
        assert violations_section(client, "pol-describe", "many-replicas") == "Violations:  <none>"
