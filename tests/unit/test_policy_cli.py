"""``kled policy test`` as a CI pipeline runs it: a subprocess, files in, exit code out."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

LIBRARY = Path(__file__).resolve().parents[2] / "policies"

APP_WITHOUT_OWNER = """
apiVersion: kled.io/v1
kind: App
metadata: {name: api, environment: dev}
spec: {command: [python, -m, http.server]}
"""

APP_WITH_OWNER = """
apiVersion: kled.io/v1
kind: App
metadata: {name: api, environment: dev, labels: {owner: alice}}
spec: {command: [python, -m, http.server]}
"""

MUTATING_JSPOLICY = """
apiVersion: policy.jspolicy.com/v1beta1
kind: JsPolicy
metadata:
  name: "set-annotation.example.com"
spec:
  type: Mutating
  operations: ["CREATE", "UPDATE"]
  resources: ["pods"]
  javascript: |
    warn("annotated");
    if (request.object.metadata.annotations?.["required-annotation"] !== "is-required") {
      request.object.metadata.annotations = {
        ...request.object.metadata.annotations, 'required-annotation': 'is-required'};
      mutate(request.object);
    }
"""


def kled_policy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "kled.cli.policy", *args],
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def files(tmp_path: Path) -> Path:
    (tmp_path / "no-owner.yaml").write_text(APP_WITHOUT_OWNER)
    (tmp_path / "owner.yaml").write_text(APP_WITH_OWNER)
    (tmp_path / "mutate.yaml").write_text(MUTATING_JSPOLICY)
    (tmp_path / "broken.yaml").write_text(
        "apiVersion: kled.io/v1\nkind: Policy\nmetadata: {name: broken}\n"
        "spec:\n  javascript: |\n    const a = 1;\n    if (a {\n"
    )
    return tmp_path


def test_denied_exits_1_with_the_message(files: Path) -> None:
    run = kled_policy(
        "test",
        str(LIBRARY / "require-owner-label.yaml"),
        "--resource",
        str(files / "no-owner.yaml"),
    )
    assert run.returncode == 1, run.stderr
    assert run.stdout.strip() == (
        "DENIED: app api has no owner label: add metadata.labels.owner (who runs it) "
        "(policy require-owner-label)"
    )


def test_allowed_exits_0(files: Path) -> None:
    run = kled_policy(
        "test", str(LIBRARY / "require-owner-label.yaml"), "--resource", str(files / "owner.yaml")
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "ALLOWED"


def test_mutation_is_shown_and_warnings_go_to_stderr(files: Path) -> None:
    run = kled_policy("test", str(files / "mutate.yaml"), "--resource", str(files / "owner.yaml"))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == [
        "ALLOWED",
        '  add /metadata/annotations/required-annotation "is-required"',
    ]
    assert "Warning: [set-annotation-example-com] annotated" in run.stderr


def test_json_output(files: Path) -> None:
    run = kled_policy(
        "test",
        str(LIBRARY / "require-owner-label.yaml"),
        "--resource",
        str(files / "no-owner.yaml"),
        "-o",
        "json",
    )
    assert run.returncode == 1
    verdict = json.loads(run.stdout)
    assert verdict["allowed"] is False
    assert verdict["policy"] == "require-owner-label"
    assert verdict["violations"][0]["kind"] == "App"


def test_bad_input_exits_2_with_one_line(files: Path) -> None:
    missing = kled_policy("test", str(files / "nope.yaml"), "--resource", str(files / "owner.yaml"))
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0
    assert "does not exist" in missing.stderr
    broken = kled_policy(
        "test", str(files / "broken.yaml"), "--resource", str(files / "owner.yaml")
    )
    assert broken.returncode == 2
    assert "broken: spec.javascript: line 2, column 7: SyntaxError" in broken.stderr
    assert "Traceback" not in broken.stderr
    bad_op = kled_policy(
        "test",
        str(LIBRARY / "require-owner-label.yaml"),
        "--resource",
        str(files / "owner.yaml"),
        "--operation",
        "PATCH",
    )
    assert bad_op.returncode == 2


def test_existing_resources_and_user_feed_get(tmp_path: Path) -> None:
    (tmp_path / "device.yaml").write_text(
        "apiVersion: kled.io/v1\nkind: Device\nmetadata: {name: lap}\nspec: {owner: alice}\n"
    )
    (tmp_path / "icpt.yaml").write_text(
        "apiVersion: kled.io/v1\nkind: Intercept\nmetadata: {name: i1, environment: dev}\n"
        "spec: {app: api, device: lap}\n"
    )
    policy = str(LIBRARY / "intercept-device-owner.yaml")
    args = ["test", policy, "--resource", str(tmp_path / "icpt.yaml")]
    args += ["--existing", str(tmp_path / "device.yaml")]
    assert kled_policy(*args, "--user", "alice").returncode == 0
    denied = kled_policy(*args, "--user", "bob")
    assert denied.returncode == 1
    assert "only alice, who owns device lap" in denied.stdout
