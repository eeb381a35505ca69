"""Usage for real: an agent measures a replica that burns CPU and holds memory.

One ``kled server`` and one ``kled agent`` (sampling every second) run a process replica
that allocates 160 MiB and then spins, and a podman container that spins; ``kled top
apps``, the usage route and ``/metrics`` must say what ``/proc`` says of them, within 15 %
(20 % for the container's CPU).
"""

from __future__ import annotations

import json
import random
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import psutil
import pytest
from hostkit import Hosts, eventually, marker, processes

from imagekit import busybox_image, podman

# serial: CPU rates are compared with /proc, which a loaded host makes noisy
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("usage")]

TEAM = f"usage-{random.randint(10**5, 10**6)}"
MIB = 1 << 20
BURN = "import sys; held = b'x' * (160 << 20)\nwhile True: pass"
BOX = marker()


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:

    root = tmp_path_factory.mktemp("usage")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_team_node("u1", extra=("--usage-interval", "1"))
        h.apply(
            {
                "apiVersion": "kled.io/v1",
                "kind": "App",
                # the folder in the command line: teardown kills the replica by it
                "metadata": {"name": "burner"},
                "spec": {"command": ["python3", "-c", BURN, str(root)], "replicas": 1},
            }
        )
        eventually(lambda: h.running("burner", 1), "burner Running")
        yield h
    finally:
        h.close([])


def _burner(hosts: Hosts) -> psutil.Process:
    found = processes(lambda cmd: cmd[1:2] == ["-c"] and str(hosts.root) in cmd)
    assert len(found) == 1, found
    return found[0]


def _cpu(proc: psutil.Process) -> float:
    times = proc.cpu_times()
    return times.user + times.system


def _row(hosts: Hosts) -> dict[str, Any] | None:
    rows = hosts.api(f"/api/v1/teams/{TEAM}/usage")["items"]
    row = next((r for r in rows if r["app"] == "burner"), None)
    if row and row["cpuMillicores"] and row["memoryBytes"] >= 160 * MIB:
        return dict(row)
    return None


def _near(measured: float, truth: float, share: float = 0.15) -> bool:
    return abs(measured - truth) <= share * truth


def _rate_beside(
    proc: psutil.Process, reported: Callable[[], dict[str, Any] | None], seconds: int = 6
) -> tuple[float, float]:
    """The mean of what the route reports each second for ``seconds`` and what /proc says
    the process burned per second over the same time (one reading is one 1-s sample, which
    another test's load on the host can move far from a 3-s mean of /proc)."""
    before, t0 = _cpu(proc), time.monotonic()
    said = []
    for _ in range(seconds):
        time.sleep(1)
        row = reported()
        assert row is not None
        said.append(row["cpuMillicores"])
    truth = (_cpu(proc) - before) / (time.monotonic() - t0) * 1000
    return sum(said) / len(said), truth


def test_the_usage_route_says_what_proc_says(hosts: Hosts) -> None:
    eventually(lambda: _row(hosts), "burner's usage reported", timeout=60)
    proc = _burner(hosts)
    said, truth = _rate_beside(proc, lambda: _row(hosts))
    assert _near(said, truth), (said, truth)
    cpu_before = _cpu(proc)
    row = _row(hosts)
    cpu_after, rss = _cpu(proc), proc.memory_info().rss
    assert row is not None
    # cumulative: at most one sample (1 s) and one heartbeat behind /proc
    assert cpu_before - 2.5 <= row["cpuSeconds"] <= cpu_after + 0.1, (row, cpu_before)
    assert _near(row["memoryBytes"], rss, 0.1), (row, rss)
    assert (row["replicas"], row["ready"], row["restarts"]) == (1, 1, 0)


def test_kled_top_apps_and_nodes(hosts: Hosts) -> None:
    proc = _burner(hosts)
    table = hosts.cli.ok("top", "apps", "-e", "dev").splitlines()
    assert table[0].split() == ["NAME", "READY", "CPU(cores)", "MEMORY(bytes)", "RESTARTS"]
    [(name, ready, cpu, memory, restarts)] = [r.split() for r in table[1:] if "burner" in r]
    assert (name, ready, restarts) == ("burner", "1/1", "0")
    assert re.fullmatch(r"\d+m", cpu) and int(cpu[:-1]) > 300, cpu  # it spins
    assert _near(int(memory.removesuffix("Mi")), proc.memory_info().rss / MIB, 0.1), memory
    rows = json.loads(hosts.cli.ok("top", "apps", "-A", "-o", "json"))
    assert ("dev", "burner") in [(r["environment"], r["app"]) for r in rows]
    nodes = hosts.cli.ok("top", "nodes").splitlines()
    assert nodes[0].split() == ["NAME", "CPU(cores)", "CPU%", "MEMORY(bytes)", "MEMORY%"]
    [u1] = [line.split() for line in nodes[1:] if line.split()[0] == "u1"]
    assert int(u1[1].removesuffix("m")) >= 300  # the burner runs there


def _series(text: str, name: str) -> dict[str, float]:
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{") and f'team="{TEAM}"' in line and 'app="burner"' in line:
            labels, value = line.rsplit(" ", 1)
            found[labels] = float(value)
    return found


def test_metrics_carry_the_apps_series_to_the_metrics_token(hosts: Hosts) -> None:
    proc = _burner(hosts)
    token = hosts.cli.ok("token", "create", "prom", "--metrics").strip().splitlines()[0]
    response = httpx.get(f"{hosts.url}/metrics", headers={"Authorization": f"Bearer {token}"})
    response.raise_for_status()
    text = response.text
    [memory] = _series(text, "kled_app_memory_bytes").values()
    assert _near(memory, proc.memory_info().rss, 0.1)
    [cpu] = _series(text, "kled_app_cpu_seconds_total").values()
    assert _cpu(proc) - 2.5 <= cpu <= _cpu(proc) + 0.1, cpu  # a sample and a heartbeat behind
    assert list(_series(text, "kled_app_ready_replicas").values()) == [1.0]
    assert list(_series(text, "kled_app_restarts_total").values()) == [0.0]
    assert 'app="burner"' in next(iter(_series(text, "kled_app_ready_replicas")))
    assert re.search(r'^kled_node_memory_bytes\{node="u1"\} ', text, re.M)


def _user(hosts: Hosts, team: str, name: str) -> str:
    """A viewer of ``team`` (made with a new team when it is not ours), and their token."""
    admin = {"Authorization": f"Bearer {hosts.token}"}
    with httpx.Client(base_url=hosts.url, headers=admin) as c:
        if team != TEAM:
            c.post("/api/v1/teams", json={"metadata": {"name": team}}).raise_for_status()
        body = {"metadata": {"name": name}, "spec": {"role": "viewer"}}
        c.post(f"/api/v1/teams/{team}/users", json=body).raise_for_status()
        token = {"metadata": {"name": f"{name}-token"}, "spec": {"user": name}}
        answer = c.post(f"/api/v1/teams/{team}/tokens", json=token)
        answer.raise_for_status()
        return str(answer.json()["token"])


def test_a_team_sees_its_own_usage_and_no_other(hosts: Hosts) -> None:
    ours, theirs = _user(hosts, TEAM, "vic"), _user(hosts, f"{TEAM}x", "eve")

    def get(path: str, token: str) -> httpx.Response:
        return httpx.get(hosts.url + path, headers={"Authorization": f"Bearer {token}"})

    mine = get("/metrics", ours).text
    assert _series(mine, "kled_app_memory_bytes") and "kled_node_" not in mine
    assert not _series(get("/metrics", theirs).text, "kled_app_memory_bytes")
    assert get(f"/api/v1/teams/{TEAM}/usage", theirs).status_code == 404
    assert get(f"/api/v1/teams/{TEAM}x/usage", theirs).json() == {"items": []}
    assert [r["app"] for r in get(f"/api/v1/teams/{TEAM}/usage", ours).json()["items"]] == [
        "burner"
    ]
    assert get("/api/v1/usage/nodes", theirs).status_code == 200  # nodes are everyone's


def test_a_container_replica_is_measured_too(hosts: Hosts) -> None:
    image = busybox_image(hosts.root, f"localhost/kled-usage-box:{BOX}")
    spin = f"while :; do :; done; exec sleep {BOX}"
    doc = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": "box"},
        # a shell as PID 1 ignores SIGTERM: a short grace for its removal
        "spec": {
            "runtime": "container",
            "image": image,
            "command": ["sh", "-c", spin],
            "terminationGracePeriodSeconds": 1,
        },
    }
    try:
        hosts.apply(doc)
        eventually(lambda: hosts.running("box", 1), "box Running in a container")

        def measured() -> dict[str, Any] | None:
            rows = hosts.api(f"/api/v1/teams/{TEAM}/usage?environment=dev")["items"]
            return next((r for r in rows if r["app"] == "box" and r["cpuMillicores"]), None)

        eventually(measured, "box's usage reported", timeout=60)
        [proc] = processes(lambda cmd: cmd[-1:] == [spin])
        said, truth = _rate_beside(proc, measured)
        assert _near(said, truth, 0.2), (said, truth)
        row = measured()
        assert row is not None
        assert row["memoryBytes"] > 0
        # a container has its own network namespace: its bytes are counted
        assert row["rxBytes"] is not None, row
    finally:
        hosts.cli("delete", "app", "box", "-e", "dev")
        podman("rm", "-f", f"kled-{TEAM}.dev.box.0")
        eventually(lambda: podman("rmi", "-f", image).returncode == 0, "image removed", 30)
