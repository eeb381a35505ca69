"""``kled intercept`` as developers use it: start, list, stop, the app's environment in a
file or around a command, and the intercept gone when that command ends."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from clikit import Cli, wait_for

from servers import RunningServer

APP_YAML = """
apiVersion: kled.io/v1
kind: Config
metadata: {name: settings}
data: {MODE: staging, SHARED: from-config}
---
apiVersion: kled.io/v1
kind: Secret
metadata: {name: db}
stringData: {DB_PASSWORD: "s3cret value"}
---
apiVersion: kled.io/v1
kind: App
metadata: {name: api}
spec:
  command: ["sleep", "600"]
  env: {LOG_LEVEL: debug, SHARED: from-app}
  envFrom: [{config: settings}, {secret: db}]
  ports: [{port: 80}, {name: metrics, port: 9100}]
"""


def _rows(out: str) -> list[list[str]]:
    return [line.split() for line in out.strip().splitlines()]


def _person(admin: Cli, server: RunningServer, team: str, name: str, role: str) -> Cli:
    admin.ok("user", "create", name, "--role", role, "--team", team)
    token = admin.ok("token", "create", f"{name}-t", "--user", name, "--team", team).strip()
    person = Cli(admin.home / name)
    person.ok("login", "--server", server.url, "--token", token)
    return person


@pytest.fixture
def people(admin: Cli, server: RunningServer, request: pytest.FixtureRequest) -> dict[str, Cli]:
    """A team (named after the test) with env dev, app api, and alice (member) and carol
    (admin), each with a registered device of their own."""
    team = "ic-" + str(abs(hash(request.node.name)) % 10**6)
    admin.ok("team", "create", team)
    admin.ok("env", "create", "dev", "--team", team)
    alice = _person(admin, server, team, "alice", "member")
    carol = _person(admin, server, team, "carol", "admin")
    alice.ok("apply", "-f", "-", "-e", "dev", stdin=APP_YAML)
    alice.ok("device", "register", "laptop-a")
    carol.ok("device", "register", "laptop-c")
    return {"alice": alice, "carol": carol, "admin": admin}


def test_start_list_stop(people: dict[str, Cli]) -> None:
    alice = people["alice"]
    out = alice.ok(
        "intercept", "start", "api", "-e", "dev", "--to", "laptop-a", "--port", "80:8080"
    )
    assert "intercept/api-laptop-a created: all traffic to app/api goes to device/laptop-a" in out
    out = alice.ok(
        "intercept", "start", "api", "-e", "dev", "--to", "laptop-a", "--header", "x-dev=alice"
    )
    assert "intercept/api-laptop-a-alice created: requests with x-dev: alice" in out
    rows = _rows(alice.ok("intercept", "list", "-e", "dev"))
    assert rows[0] == ["NAME", "ENV", "APP", "DEVICE", "PORTS", "HEADER", "PHASE", "GATEWAYS"]
    assert [r[:6] for r in rows[1:]] == [
        ["api-laptop-a", "dev", "api", "laptop-a", "80:8080", "-"],
        ["api-laptop-a-alice", "dev", "api", "laptop-a", "all", "x-dev=alice"],
    ]
    assert _rows(alice.ok("intercept", "list"))[1:] == rows[1:]  # every environment
    # A second global intercept, a port the app lacks, someone else's device: one-line errors.
    clash = people["carol"]("intercept", "start", "api", "-e", "dev", "--to", "laptop-c")
    assert clash.code == 1 and "already intercepted by 'api-laptop-a'" in clash.err
    assert clash.err.count("\n") == 1
    bad_port = alice("intercept", "start", "api", "-e", "dev", "--to", "laptop-a", "-p", "81:81")
    assert bad_port.code == 2 and "does not expose port 81" in bad_port.err
    not_hers = alice(
        "intercept", "start", "api", "-e", "dev", "--to", "laptop-c", "--header", "x=1"
    )
    assert not_hers.code == 1 and "belongs to 'carol'" in not_hers.err

    out = alice.ok("intercept", "stop", "api", "-e", "dev", "--header", "x-dev=alice")
    assert out.splitlines()[0] == "intercept/api-laptop-a-alice deleted"
    out = alice.ok("intercept", "stop", "api", "-e", "dev")
    assert out.splitlines()[0] == "intercept/api-laptop-a deleted"
    assert "no intercepts" in alice("intercept", "list", "-e", "dev").err
    again = alice("intercept", "stop", "api", "-e", "dev")
    assert again.code == 1 and "no intercept of app/api" in again.err


def _env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line)
    return {k: v for k, v in pairs}


def test_env_file_has_secrets_only_for_who_may_read_them(
    people: dict[str, Cli], tmp_path: Path
) -> None:
    alice, carol = people["alice"], people["carol"]
    mine = tmp_path / "alice.env"
    result = alice(
        "intercept", "start", "api", "-e", "dev", "--to", "laptop-a", "--env-file", str(mine)
    )
    assert result.code == 0, result
    assert "secret/db not written" in result.err
    assert _env_file(mine) == {"LOG_LEVEL": "debug", "MODE": "staging", "SHARED": "from-app"}
    assert mine.stat().st_mode & 0o077 == 0
    alice.ok("intercept", "stop", "api", "-e", "dev")

    theirs = tmp_path / "carol.env"
    result = carol(
        "intercept", "start", "api", "-e", "dev", "--to", "laptop-c", "--env-file", str(theirs)
    )
    assert result.code == 0, result
    assert "not written" not in result.err
    assert _env_file(theirs)["DB_PASSWORD"] == '"s3cret value"'


def test_command_runs_with_the_env_and_ends_the_intercept(
    people: dict[str, Cli], tmp_path: Path
) -> None:
    alice = people["alice"]
    seen = tmp_path / "seen"
    result = alice(
        "intercept", "start", "api", "-e", "dev", "--to", "laptop-a", "--",
        "sh", "-c", f'echo "$LOG_LEVEL $MODE" > {seen}; exit 3',
    )  # fmt: skip
    assert result.code == 3, result
    assert seen.read_text().strip() == "debug staging"
    assert "intercept/api-laptop-a deleted" in result.out
    assert "no intercepts" in alice("intercept", "list", "-e", "dev").err

    # Ctrl-C while the command runs: the command stops and the intercept still ends.
    proc = alice.popen(
        "intercept", "start", "api", "-e", "dev", "--to", "laptop-a", "--", "sleep", "120"
    )
    try:
        wait_for(lambda: "api-laptop-a" in alice.ok("intercept", "list", "-e", "dev"), "intercept")
        time.sleep(0.3)  # let the command start, as a person's Ctrl-C would come later
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "no intercepts" in alice("intercept", "list", "-e", "dev").err
