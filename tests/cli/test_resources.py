"""apply, get, describe, delete, environments and secrets: the tour a new user takes."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
import yaml
from clikit import Cli

from servers import RunningServer

STACK = """\
apiVersion: kled.io/v1
kind: App
metadata: {name: api, labels: {tier: backend}}
spec:
  command: ["python", "-m", "http.server", "8080"]
  replicas: 2
  ports: [{name: http, port: 80, targetPort: 8080}]
---
apiVersion: kled.io/v1
kind: App
metadata: {name: web, labels: {tier: frontend}}
spec:
  command: ["python", "-m", "http.server", "8081"]
  ports: [{port: 81, targetPort: 8081}]
---
apiVersion: kled.io/v1
kind: Config
metadata: {name: settings}
data: {LOG_LEVEL: debug}
---
apiVersion: kled.io/v1
kind: Secret
metadata: {name: db}
stringData: {password: s3cr3t}
---
apiVersion: kled.io/v1
kind: Environment
metadata: {name: dev}
"""

CREATED = [
    "environment/dev created",
    "app/api created",
    "app/web created",
    "config/settings created",
    "secret/db created",
]


def _team(admin: Cli, name: str) -> None:
    admin.ok("team", "create", name)
    admin.ok("context", "set", "--team", name)


def _stack(tmp_path: Path, text: str = STACK) -> str:
    path = tmp_path / "stack.yaml"
    path.write_text(text)
    return str(path)


def test_apply_created_configured_unchanged(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "rs-apply")
    assert admin.ok("apply", "-f", _stack(tmp_path), "-e", "dev").splitlines() == CREATED
    edited = _stack(tmp_path, STACK.replace("replicas: 2", "replicas: 3"))
    assert admin.ok("apply", "-f", edited, "-e", "dev").splitlines()[1] == "app/api configured"
    again = admin.ok("apply", "-f", edited, "-e", "dev").splitlines()
    assert again == [line.replace("created", "unchanged") for line in CREATED]
    dry = admin.ok(
        "apply",
        "-f",
        _stack(tmp_path, STACK.replace("replicas: 2", "replicas: 5")),
        "-e",
        "dev",
        "--dry-run",
    ).splitlines()
    assert dry[1:3] == ["app/api configured (dry run)", "app/web unchanged (dry run)"]
    api = json.loads(admin.ok("get", "app", "api", "-e", "dev", "-o", "json"))
    assert api["spec"]["replicas"] == 3
    assert api["metadata"]["generation"] == 2


def test_apply_twice_is_unchanged(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "rs-twice")
    stack = _stack(tmp_path)
    admin.ok("apply", "-f", stack, "-e", "dev")
    again = admin.ok("apply", "-f", stack, "-e", "dev").splitlines()
    assert again == [line.replace("created", "unchanged") for line in CREATED]


def test_apply_from_stdin_fills_team_and_environment(admin: Cli) -> None:
    _team(admin, "rs-stdin")
    admin.ok("env", "create", "qa")
    admin.ok("context", "set", "--env", "qa")
    app = (
        'kind: App\napiVersion: kled.io/v1\nmetadata: {name: one}\nspec: {command: [sleep, "60"]}\n'
    )
    assert admin.ok("apply", "-f", "-", stdin=app).strip() == "app/one created"
    got = yaml.safe_load(admin.ok("get", "app", "one", "-o", "yaml"))
    assert (got["metadata"]["team"], got["metadata"]["environment"]) == ("rs-stdin", "qa")
    other = admin(
        "apply",
        "-f",
        "-",
        "-e",
        "prod",
        stdin=app.replace("{name: one}", "{name: two, environment: qa}"),
    )
    assert other.code == 2 and "is in environment 'qa' but -e says 'prod'" in other.err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("kind: App\nmetadata: {name: a\n", "stack.yaml: line 3, column 1: "),
        (
            STACK.replace("replicas: 2", "replicas: 2\n  colour: blue"),
            "stack.yaml: document 1 (App/api): spec.colour: ",
        ),
        (
            STACK.replace("port: 81,", "port: 70000,"),
            "stack.yaml: document 2 (App/web): spec.ports[0].port: must be 1-65535",
        ),
        (STACK.replace("kind: Config", "kind: Gizmo"), "stack.yaml: document 3 (Gizmo/settings): "),
    ],
    ids=["bad-yaml", "unknown-field", "bad-port", "unknown-kind"],
)
def test_bad_documents_exit_2_and_store_nothing(
    admin: Cli, tmp_path: Path, text: str, message: str, request: pytest.FixtureRequest
) -> None:
    team = f"rs-bad-{request.node.callspec.id}"
    _team(admin, team)
    path = _stack(tmp_path, text)
    result = admin("apply", "-f", path, "-e", "dev")
    assert result.code == 2, result
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path.rsplit('/', 1)[0]}/{message}")
    assert result.out == ""
    assert admin.ok("get", "envs", "-o", "name").strip() == ""
    assert admin.ok("get", "apps", "-o", "name").strip() == ""


def test_get_in_every_format(admin: Cli, server: RunningServer, tmp_path: Path) -> None:
    _team(admin, "rs-get")
    admin.ok("apply", "-f", _stack(tmp_path), "-e", "dev")
    with server.client() as http:
        # The mesh controller gives the app its address just after the create.
        ip = _settled_ip(http, "/api/v1/teams/rs-get/environments/dev/apps/api")
    table = admin.ok("get", "apps", "-e", "dev").splitlines()
    assert table[0].split() == ["NAME", "ENV", "RUNTIME", "READY", "PHASE", "PORTS", "AGE"]
    # PHASE is the control plane's to fill in, whenever it gets to it: not asserted here.
    assert [table[1].split()[i] for i in (0, 1, 2, 3, 5)] == [
        "api",
        "dev",
        "process",
        "0/2",
        "80:8080/TCP",
    ]
    assert [table[2].split()[i] for i in (0, 1, 2, 3, 5)] == [
        "web",
        "dev",
        "process",
        "0/1",
        "81:8081/TCP",
    ]
    wide = admin.ok("get", "apps", "-o", "wide").splitlines()
    assert wide[0].split()[-3:] == ["IP", "DNS", "LABELS"]
    assert wide[1].split()[-1] == "tier=backend"
    listed = json.loads(admin.ok("get", "apps", "-o", "json"))
    assert listed["apiVersion"] == "kled.io/v1" and listed["kind"] == "List"
    assert [i["metadata"]["name"] for i in listed["items"]] == ["api", "web"]
    one = yaml.safe_load(admin.ok("get", "app", "api", "-o", "yaml"))
    assert one["kind"] == "App" and one["spec"]["ports"][0]["targetPort"] == 8080
    names = admin.ok("get", "apps", "-l", "tier=frontend", "-o", "name").split()
    assert names == ["app/web"]
    configs = admin.ok("get", "cm", "-e", "dev").splitlines()
    assert configs[0].split() == ["NAME", "ENV", "DATA", "AGE"]
    assert configs[1].split()[:3] == ["settings", "dev", "1"]
    envs = admin.ok("get", "env").splitlines()
    assert [row.split()[0] for row in envs] == ["NAME", "dev"]
    missing = admin("get", "app", "nope", "-e", "dev")
    assert missing.code == 1 and missing.err.strip().endswith("not found")
    bad_format = admin("get", "apps", "-o", "xml")
    assert bad_format.code == 2 and "unknown output format 'xml'" in bad_format.err

    page = admin.ok("describe", "app", "api")
    assert "Name:          api" in page and "Environment:   dev" in page
    assert "Labels:        tier=backend" in page
    assert "Spec:\n  runtime: process" in page
    assert f"Status:\n  ip: {ip}\n  dns: api.dev.rs-get.kled.internal\n" in page


def _settled_ip(http: httpx.Client, path: str) -> str:
    for _ in range(600):
        ip = (http.get(path).json().get("status") or {}).get("ip")
        if ip:
            return str(ip)
        time.sleep(0.05)
    raise AssertionError(f"{path}: no status.ip")


def test_describe_shows_replicas_and_events(
    admin: Cli, server: RunningServer, tmp_path: Path
) -> None:
    _team(admin, "rs-describe")
    admin.ok("apply", "-f", _stack(tmp_path), "-e", "dev")
    path = "/api/v1/teams/rs-describe/environments/dev/apps/api"
    with server.client() as http:
        # Written after the mesh controller's own status write, so that it is not undone.
        ip = _settled_ip(http, path)
    status = {
        "phase": "Running",
        "ip": ip,
        "replicas": [
            {"name": "api-0", "node": "n1", "phase": "Running", "ip": "10.1.0.2", "ready": True},
            {"name": "api-1", "node": "n2", "phase": "Pending"},
        ],
        "events": [{"type": "Normal", "reason": "Scheduled", "message": "api-0 on n1"}],
    }
    with server.client() as http:
        answer = http.put(f"{path}/status", json={"status": status})
        assert answer.status_code == 200, answer.text
    row = admin.ok("get", "app", "api", "-e", "dev").splitlines()[1].split()
    assert row[3] == "1/2" and row[4] == "Running"
    page = admin.ok("describe", "app", "api", "-e", "dev")
    assert f"Status:\n  phase: Running\n  ip: {ip}\n" in page
    replicas = page.split("Replicas:\n", 1)[1].splitlines()
    header = ["REPLICA", "NODE", "STATE", "RESTARTS", "LAST-EXIT", "STARTED", "REASON"]
    assert replicas[0].split() == header
    assert replicas[1].split() == ["api-0", "n1", "Running", "0", "-", "-", "-"]
    assert replicas[2].split() == ["api-1", "n2", "Pending", "0", "-", "-", "-"]
    events = page.split("Events:\n", 1)[1].splitlines()
    assert events[1].split()[:2] == ["Normal", "Scheduled"]
    assert events[1].endswith("api-0 on n1")


def test_get_watch_shows_the_events_of_a_second_apply(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "rs-watch")
    admin.ok("apply", "-f", _stack(tmp_path), "-e", "dev")
    watcher = admin.popen("get", "apps", "-e", "dev", "-w")
    lines: list[str] = []

    def read() -> None:
        assert watcher.stdout is not None
        for line in watcher.stdout:
            lines.append(line.rstrip())

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        _wait_for(lambda: len(lines) >= 3, lines)  # the header and the two apps
        edited = STACK.replace("replicas: 2", "replicas: 4").replace(
            "metadata: {name: web", "metadata: {name: web2"
        )
        admin.ok("apply", "-f", _stack(tmp_path, edited), "-e", "dev")
        _wait_for(
            lambda: any(line.startswith("ADDED") and "app/web2" in line for line in lines), lines
        )
        _wait_for(
            lambda: any(line.startswith("MODIFIED") and "app/api" in line for line in lines), lines
        )
    finally:
        watcher.send_signal(signal.SIGINT)
        try:
            watcher.wait(30)
        except subprocess.TimeoutExpired:
            watcher.kill()
            watcher.wait()
        reader.join(10)
    assert lines[0].split() == ["EVENT", "RESOURCE", "ENV", "VERSION", "AGE"]
    assert [line.split()[:3] for line in lines[1:3]] == [
        ["ADDED", "app/api", "dev"],
        ["ADDED", "app/web", "dev"],
    ]
    versions = [int(line.split()[3]) for line in lines[3:]]
    assert versions == sorted(versions)
    assert watcher.returncode == 0


def _wait_for(condition: object, lines: list[str]) -> None:
    assert callable(condition)
    for _ in range(2400):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"not seen in the watch: {lines}")


def test_env_clone_copies_apps_configs_and_secrets(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "rs-clone")
    admin.ok("apply", "-f", _stack(tmp_path), "-e", "dev")
    assert admin.ok("env", "clone", "dev", "feature-x").strip() == (
        "environment/feature-x created (a clone of dev)"
    )
    rows = [line.split()[:2] for line in admin.ok("get", "apps", "-A").splitlines()[1:]]
    assert rows == [["api", "dev"], ["web", "dev"], ["api", "feature-x"], ["web", "feature-x"]]
    assert admin.ok("get", "secrets", "-e", "feature-x", "-o", "name").split() == ["secret/db"]
    envs = admin.ok("env", "list").splitlines()
    assert envs[2].split()[:3] == ["feature-x", "-", "dev"]
    assert admin.ok("env", "delete", "feature-x").strip() == "environment/feature-x deleted"
    assert admin.ok("get", "apps", "-A", "-o", "name").split() == ["app/api", "app/web"]


def test_secret_set_get_and_reveal(admin: Cli, server: RunningServer, tmp_path: Path) -> None:
    _team(admin, "rs-secret")
    admin.ok("env", "create", "dev")
    assert admin.ok("secret", "set", "db", "user=app", "password=s3cr=t", "-e", "dev").strip() == (
        "secret/db created (password, user)"
    )
    assert admin.ok("secret", "set", "db", "password=n3w", "-e", "dev").strip() == (
        "secret/db configured (password)"
    )
    hidden = admin("secret", "get", "db", "-e", "dev")
    assert hidden.code == 0 and hidden.out.split() == ["password", "user"]
    assert "--reveal" in hidden.err and "n3w" not in hidden.out
    shown = admin.ok("secret", "get", "db", "-e", "dev", "--reveal").splitlines()
    assert shown == ["password=n3w", "user=app"]
    bad = admin("secret", "set", "db", "novalue", "-e", "dev")
    assert bad.code == 2 and "'novalue' is not KEY=VALUE" in bad.err

    admin.ok("user", "create", "mia", "--role", "member")
    token = admin.ok("token", "create", "--user", "mia").strip()
    member = Cli(tmp_path / "mia")
    member.ok("login", "--server", server.url, "--token", token, "--env", "dev")
    assert member.ok("secret", "get", "db").split() == ["password", "user"]
    refused = member("secret", "get", "db", "--reveal")
    assert refused.code == 1
    assert refused.err.startswith("error: role member in team rs-secret may not reveal")
    partial = member("secret", "set", "db", "user=other")
    assert partial.code == 1 and "set every key at once" in partial.err
    member.ok("secret", "set", "db", "user=u2", "password=p2")
    assert admin.ok("secret", "get", "db", "-e", "dev", "--reveal").split() == [
        "password=p2",
        "user=u2",
    ]


def test_delete_by_name_and_by_file(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "rs-delete")
    stack = _stack(tmp_path)
    admin.ok("apply", "-f", stack, "-e", "dev")
    assert admin.ok("delete", "app", "web", "-e", "dev").strip() == "app/web deleted"
    gone = admin("delete", "app", "web", "-e", "dev")
    assert gone.code == 1 and "not found" in gone.err
    no_env = admin("delete", "app", "api")
    assert no_env.code == 2 and "pass -e ENV" in no_env.err
    out = admin.ok("delete", "-f", stack, "-e", "dev", "--ignore-not-found").splitlines()
    assert out == [
        "app/api deleted",
        "config/settings deleted",
        "secret/db deleted",
        "environment/dev deleted",
    ]
    assert admin.ok("get", "envs", "-o", "name").strip() == ""


def test_delete_waits_for_finalizers(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "rs-final")
    held = STACK.replace("metadata: {name: web,", "metadata: {name: web, finalizers: [kled.io/x],")
    admin.ok("apply", "-f", _stack(tmp_path, held), "-e", "dev")
    assert admin.ok("delete", "app", "web", "-e", "dev").strip() == "app/web deleting"
    row = admin.ok("get", "app", "web", "-e", "dev").splitlines()[1].split()
    assert row[0] == "web" and row[4] == "Deleting"
    assert "Deleting since: " in admin.ok("describe", "app", "web", "-e", "dev")


def test_apply_a_folder_recursively_and_an_oversized_body(admin: Cli, tmp_path: Path) -> None:
    _team(admin, "rs-folder")
    folder = tmp_path / "deploy"
    (folder / "apps").mkdir(parents=True)
    (folder / "env.yaml").write_text(
        "kind: Environment\napiVersion: kled.io/v1\nmetadata: {name: dev}\n"
    )
    (folder / "apps" / "api.yaml").write_text(STACK.split("---")[0])
    (folder / "notes.txt").write_text("not a resource")
    flat = admin.ok("apply", "-f", str(folder))
    assert flat.strip() == "environment/dev created"
    deep = admin.ok("apply", "-f", str(folder), "-R", "-e", "dev").splitlines()
    assert deep[1:] == ["app/api created"]

    huge = tmp_path / "huge.yaml"
    huge.write_text(yaml.safe_dump({
        "apiVersion": "kled.io/v1", "kind": "Config", "metadata": {"name": "huge"},
        "data": {"blob": "x" * (1024 * 1024 + 10)},
    }))  # fmt: skip
    result = admin("apply", "-f", str(huge), "-e", "dev")
    assert result.code == 2, result
    # refused before it is sent: a document is at most 256 KiB (the body limit is 1 MiB)
    assert result.err.strip().startswith(f"error: {huge}: document 1 (Config/huge): the document")
    assert result.err.strip().endswith("bytes, over the limit of 262144")
    assert admin.ok("get", "configs", "-e", "dev", "-o", "name").strip() == ""
