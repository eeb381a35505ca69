"""``kled intercept`` as developers use it: start, list, stop, the app's environment in a
file or around a command, and the intercept gone when that command ends."""

from __future__ import annotations

import signal
import threading
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


def _team(request: pytest.FixtureRequest) -> str:
    return "ic-" + str(abs(hash(request.node.name)) % 10**6)


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
    team = _team(request)
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


def _gateway(server: RunningServer, team: str, intercepts: list[str]) -> None:
    """What node ic-gw reports as the team's gateway: Ready, with these intercepts applied."""
    mesh = {team: {"publicKey": "gw-key", "intercepts": intercepts}}
    with server.client() as c:
        r = c.put("/api/v1/nodes/ic-gw/status", json={"status": {"phase": "Ready", "mesh": mesh}})
        assert r.status_code == 200, r.text


def test_the_end_after_a_command_waits_for_the_gateways(
    people: dict[str, Cli], server: RunningServer, request: pytest.FixtureRequest
) -> None:
    """As `kled intercept stop` does: the command's end returns once every Ready gateway
    removed the intercept, and names one that does not (issue 10)."""
    alice, team = people["alice"], _team(request)
    node = {"apiVersion": "kled.io/v1", "kind": "Node", "metadata": {"name": "ic-gw"}}
    with server.client() as c:
        assert c.post("/api/v1/nodes", json=node).status_code == 201
    try:
        with server.client() as c:
            device = f"/api/v1/teams/{team}/devices/laptop-a"
            wait_for(lambda: bool(c.get(device).json().get("status", {}).get("ip")), "an ip")
            entry = f"dev/api→{c.get(device).json()['status']['ip']}"
        start = ("intercept", "start", "api", "-e", "dev", "--to", "laptop-a")
        _gateway(server, team, [entry])  # applied at once, and then kept
        result = alice(*start, "--timeout", "1", "--", "true")
        assert result.code == 1, result
        assert "intercept/dev/api-laptop-a: active on 1/1 gateways in " in result.out
        assert "intercept/api-laptop-a deleted" in result.out
        assert "error: intercept/dev/api-laptop-a: 0/1 gateways after 1 s; not yet removed by " \
            "ic-gw" in result.err  # fmt: skip

        result = alice(*start, "--no-wait", "--", "sh", "-c", "exit 3")
        assert result.code == 3, result
        assert "intercept/api-laptop-a deleted" in result.out
        assert "gateways" not in result.out

        # The gateway removes it half a second after the intercept ended: the command waits.
        intercept = f"/api/v1/teams/{team}/environments/dev/intercepts/api-laptop-a"

        def gateway() -> None:
            with server.client() as c:
                wait_for(lambda: c.get(intercept).status_code == 200, "the intercept")
                wait_for(lambda: c.get(intercept).status_code == 404, "its end")
            time.sleep(0.5)
            _gateway(server, team, [])

        remover = threading.Thread(target=gateway)
        remover.start()
        result = alice(*start, "--", "true")
        remover.join()
        assert result.code == 0, result
        [line] = [line for line in result.out.splitlines() if "removed from" in line]
        assert line.startswith("intercept/dev/api-laptop-a: removed from 1/1 gateways in ")
        assert float(line.split()[-2]) >= 0.5
    finally:
        with server.client() as c:
            c.delete("/api/v1/nodes/ic-gw")
