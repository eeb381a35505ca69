"""Apps run for real: ``kled server --embedded-nats``, two ``kled agent`` processes, the CLI.

One control plane and two agents (``n1``, ``n2``) serve the whole module; the tests run
in order, each from the state the previous one left, as a user would go through them:
replicas spread and Running, logs, a killed replica restarted, an agent killed with -9
and restarted, bad apps failing alone, scaling, NATS and the control plane restarted, and
last the loss of a node.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from hostkit import Hosts, app_doc, eventually, marker, processes, sleepers

from imagekit import busybox_image, podman

# in order, on one worker: each test starts from the state the previous one left
pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("hosts")]

TEAM = f"hosts-{random.randint(10**5, 10**6)}"  # runs side by side share this host
WEB = marker()
BAD = marker()
REF = marker()
BOX = marker()


# Session scope, not module: xdist may run other modules' tests between these on the
# same worker, and pytest tears a module fixture down when the module changes; these
# tests build on one another's state, so their hosts must outlive such interleaving.
@pytest.fixture(scope="session")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:

    root = tmp_path_factory.mktemp("hosts")
    # a fixed NATS port: agents reconnect to the same URL after the server restarts
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_server()
        h.cli.ok("team", "create", TEAM)
        h.cli.ok("env", "create", "dev")
        h.start_agent("n1", labels="zone=a")
        h.start_agent("n2", labels="zone=b")
        eventually(
            lambda: h.node_phase("n1") == "Ready" and h.node_phase("n2") == "Ready",
            "both nodes Ready",
        )
        yield h
    finally:
        h.close([WEB, BAD, REF, BOX])


def test_server_prints_the_nats_url(hosts: Hosts) -> None:
    assert any(line.startswith("Message Office (embedded NATS) on nats://") for line in hosts.lines)


def test_nodes_are_listed_with_capacity_and_labels(hosts: Hosts) -> None:
    table = hosts.cli.ok("node", "list").splitlines()
    assert table[0].split() == [
        "NAME", "STATUS", "AGE", "CPU", "MEMORY", "CAPABILITIES", "LABELS"
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert set(rows) >= {"n1", "n2"}
    assert rows["n1"][1] == "Ready" and rows["n1"][-1] == "zone=a"
    assert rows["n1"][3] == str(os.cpu_count())
    assert "netns" in rows["n2"][5] or "<none>" not in rows["n2"][5]


def test_replicas_spread_over_both_nodes_and_run(hosts: Hosts) -> None:
    hosts.apply(app_doc("web", WEB, replicas=2))
    reps = eventually(lambda: hosts.running("web", 2), "web 2/2 Running")
    assert sorted(r["node"] for r in reps) == ["n1", "n2"]
    assert len(sleepers(WEB)) == 2

    table = hosts.cli.ok("get", "apps", "-e", "dev").splitlines()
    assert table[0].split()[:6] == ["NAME", "ENV", "RUNTIME", "READY", "PHASE", "PORTS"]
    assert table[1].split()[:5] == ["web", "dev", "process", "2/2", "Running"]

    page = hosts.cli.ok("describe", "app", "web", "-e", "dev")
    assert "REPLICA   NODE   STATE     RESTARTS   LAST-EXIT" in page
    assert any(line.split()[:4] == ["web-0", reps[0]["node"], "Running", "0"] for line in
               page.splitlines())  # fmt: skip
    assert "Scheduled" in page and "Events:" in page

    node = reps[0]["node"]
    described = hosts.cli.ok("node", "describe", node)
    assert "Status:         Ready" in described
    assert f"{TEAM}/dev/web   0         Running" in described


def test_logs_show_each_replica_and_keep_stderr_apart(hosts: Hosts) -> None:
    def both() -> bool:
        result = hosts.cli("logs", "web", "-e", "dev", "--since", "5m")
        return result.code == 0 and all(f"[web-{i}] hello from web" in result.out for i in (0, 1))

    eventually(both, "both replicas' lines in kled logs")
    result = hosts.cli("logs", "web", "-e", "dev")
    assert "[web-0] oops from web" in result.err and "oops" not in result.out
    one = hosts.cli.ok("logs", "web", "-e", "dev", "--replica", "1")
    assert one.splitlines()[0] == "hello from web"

    follower = hosts.cli.popen("logs", "web", "-e", "dev", "-f", "--replica", "0")
    try:
        assert follower.stdout is not None
        assert follower.stdout.readline().strip() == "hello from web"  # then it keeps following
        assert follower.poll() is None
    finally:
        follower.kill()
        follower.wait()

    missing = hosts.cli("logs", "nope", "-e", "dev")
    assert missing.code == 1
    assert missing.err.strip() == f"error: app/nope not found in {TEAM}/dev: see `kled get apps`"


def _pid_of(hosts: Hosts, app_marker: int, index: int) -> psutil.Process:
    for p in sleepers(app_marker):
        if p.cwd().endswith(f".web.{index}"):
            return p
    raise AssertionError(f"no process of replica {index}")


def test_a_killed_replica_is_restarted(hosts: Hosts) -> None:
    victim = _pid_of(hosts, WEB, 0)
    victim.kill()
    eventually(
        lambda: hosts.running("web", 2) and hosts.replicas("web")[0]["restarts"] >= 1,
        "replica 0 restarted",
    )
    reps = hosts.replicas("web")
    assert reps[0]["restarts"] == 1 and reps[0]["lastExitCode"] in (-9, 137)
    assert len(sleepers(WEB)) == 2


def test_an_agent_killed_with_9_adopts_its_replicas(hosts: Hosts) -> None:
    before = {p.pid for p in sleepers(WEB)}
    restarts = [r["restarts"] for r in hosts.replicas("web")]
    hosts.kill_agent("n1")
    hosts.start_agent("n1", join=False, labels="zone=a")  # its saved registration
    eventually(lambda: "adopt" in (hosts.root / "n1.log").read_text().lower(), "n1 adopted")
    eventually(lambda: hosts.running("web", 2), "web still Running")
    assert {p.pid for p in sleepers(WEB)} == before  # no duplicates, nothing restarted
    assert [r["restarts"] for r in hosts.replicas("web")] == restarts


def test_a_missing_command_or_secret_fails_alone(hosts: Hosts) -> None:
    restarts = [r["restarts"] for r in hosts.replicas("web")]
    bad = app_doc("bad", BAD)
    bad["spec"]["command"] = ["/no/such/command", "x"]
    hosts.apply(bad)
    ref = app_doc("ref", REF, envFrom=[{"secret": "db"}])
    hosts.apply(ref)

    def failed(name: str, reason: str) -> bool:
        status = hosts.app(name).get("status") or {}
        reps = status.get("replicas") or [{}]
        return status.get("phase") == "Failed" and reps[0].get("reason") == reason

    eventually(lambda: failed("bad", "CommandNotFound"), "bad Failed: CommandNotFound")
    eventually(lambda: failed("ref", "SecretNotFound"), "ref Failed: SecretNotFound")
    page = hosts.cli.ok("describe", "app", "bad", "-e", "dev")
    assert "CommandNotFound: command '/no/such/command' was not found" in page
    table = hosts.cli.ok("get", "apps", "-e", "dev")
    assert any(line.split()[:5] == ["ref", "dev", "process", "0/1", "Failed"]
               for line in table.splitlines())  # fmt: skip
    assert hosts.running("web", 2)
    assert [r["restarts"] for r in hosts.replicas("web")] == restarts

    # the secret appears: the app starts by itself
    hosts.cli.ok("secret", "set", "db", "PASSWORD=x", "-e", "dev")
    eventually(lambda: hosts.running("ref", 1), "ref Running once its secret exists")
    hosts.cli.ok("delete", "app", "bad", "-e", "dev")
    hosts.cli.ok("delete", "app", "ref", "-e", "dev")
    eventually(lambda: not sleepers(REF), "ref's process stopped")


def test_scale_from_2_to_3(hosts: Hosts) -> None:
    assert hosts.cli.ok("app", "scale", "web", "3", "-e", "dev").strip() == "app/web scaled to 3"
    reps = eventually(lambda: hosts.running("web", 3), "web 3/3 Running")
    assert sorted(r["node"] for r in reps).count("n1") in (1, 2)
    assert len(sleepers(WEB)) == 3
    bad = hosts.cli("app", "scale", "web", "1001", "-e", "dev")
    assert bad.code == 2 and "replicas: must be between 0 and 1000" in bad.err


def test_restart_restarts_every_replica(hosts: Hosts) -> None:
    before = {p.pid for p in sleepers(WEB)}
    assert hosts.cli.ok("app", "restart", "web", "-e", "dev").strip() == "app/web restarted"
    eventually(
        lambda: len(now := {p.pid for p in sleepers(WEB)}) == 3 and not now & before,
        "three new processes",
    )
    eventually(lambda: hosts.running("web", 3), "web 3/3 Running after the restart")


def _busybox_image(root: Path) -> str:
    """A tiny image built here from the static busybox (no registry is reachable)."""
    return busybox_image(root, f"localhost/kled-hosts-box:{BOX}")


def test_a_container_app_runs_from_a_local_image(hosts: Hosts) -> None:
    image = _busybox_image(hosts.root)
    try:
        doc = app_doc("box", BOX, runtime="container", image=image)
        hosts.apply(doc)
        eventually(lambda: hosts.running("box", 1), "box Running in a container")
        assert len(sleepers(BOX)) == 1
        eventually(
            lambda: "hello from box" in hosts.cli.ok("logs", "box", "-e", "dev"), "box's logs"
        )
        assert "container" in hosts.cli.ok("get", "app", "box", "-e", "dev")
        hosts.cli.ok("delete", "app", "box", "-e", "dev")
        eventually(lambda: not sleepers(BOX), "box's container stopped")
    finally:
        podman("rm", "-f", f"kled-{TEAM}.dev.box.0")
        # the agent removes its container a moment after the app is gone
        eventually(lambda: podman("rmi", "-f", image).returncode == 0, "image removed", 30)


def _nats_servers(hosts: Hosts) -> list[psutil.Process]:
    conf = str(hosts.root / "server")
    return processes(lambda cmd: "nats-server" in cmd[0] and any(conf in c for c in cmd))


def test_nats_and_the_control_plane_restarted_converge(hosts: Hosts) -> None:
    pids = {p.pid for p in sleepers(WEB)}
    restarts = [r["restarts"] for r in hosts.replicas("web")]
    [nats] = _nats_servers(hosts)
    nats.kill()
    # the control plane starts its nats-server again by itself, on the same port
    eventually(
        lambda: [p.pid for p in _nats_servers(hosts)] not in ([], [nats.pid]),
        "a new nats-server",
    )
    # and a restart of the control plane itself: everything comes back again
    hosts.stop_server()
    assert not _nats_servers(hosts)
    hosts.start_server()
    assert hosts.cli.ok("app", "scale", "web", "2", "-e", "dev").strip() == "app/web scaled to 2"
    eventually(lambda: hosts.running("web", 2), "web 2/2 after NATS and the server restarted")
    eventually(lambda: len(sleepers(WEB)) == 2, "one replica stopped")
    survivors = {p.pid for p in sleepers(WEB)}
    assert survivors <= pids  # the two kept were never restarted
    after = [r["restarts"] for r in hosts.replicas("web")]
    assert all(a <= b for a, b in zip(after, restarts, strict=False))  # nothing counted twice
    eventually(
        lambda: hosts.node_phase("n1") == "Ready" and hosts.node_phase("n2") == "Ready",
        "agents back",
    )


def test_drain_moves_replicas_off_a_node(hosts: Hosts) -> None:
    assert hosts.cli.ok("node", "drain", "n2").strip() == "node/n2 drained"
    eventually(
        lambda: (reps := hosts.running("web", 2)) and all(r["node"] == "n1" for r in reps),
        "both replicas on n1",
    )
    assert "Ready,SchedulingDisabled" in hosts.cli.ok("node", "list")
    assert hosts.cli.ok("node", "uncordon", "n2").strip() == "node/n2 uncordoned"
    assert "SchedulingDisabled" not in hosts.cli.ok("node", "list")


def test_a_lost_node_goes_not_ready_and_its_replicas_move(hosts: Hosts) -> None:
    hosts.cli.ok("app", "scale", "web", "4", "-e", "dev")
    reps = eventually(
        lambda: (r := hosts.running("web", 4)) and {x["node"] for x in r} == {"n1", "n2"} and r,
        "web on both nodes",
    )
    assert reps
    hosts.kill_agent("n2")
    for p in sleepers(WEB):  # the host is gone: so are its processes
        if "/n2/" in p.cwd():
            p.kill()
    eventually(lambda: hosts.node_phase("n2") == "NotReady", "n2 NotReady", timeout=60)
    assert "NotReady" in hosts.cli.ok("node", "list")
    moved = eventually(
        lambda: (r := hosts.running("web", 4)) and all(x["node"] == "n1" for x in r) and r,
        "every replica on n1",
        timeout=120,
    )
    assert len(moved) == 4
    assert any(e.get("reason") == "Rescheduled" for e in hosts.app("web")["status"]["events"])
    assert hosts.cli.ok("node", "delete", "n2").strip() == "node/n2 deleted"
    assert "n2" not in hosts.cli.ok("node", "list")
    gone = hosts.cli("node", "describe", "n2")
    assert gone.code == 1 and "node/n2 not found" in gone.err


def test_server_flags_are_checked(hosts: Hosts, tmp_path: Path) -> None:
    bad = hosts.cli("server", "--data-dir", str(tmp_path), "--nats", "http://x")
    assert bad.code == 2 and bad.err.strip() == "error: --nats: 'http://x' is not a nats:// URL"
    both = hosts.cli("server", "--embedded-nats", "--nats", "nats://127.0.0.1:1")
    assert both.code == 2 and "not both" in both.err
    agent = hosts.cli("agent", "--server", hosts.url, "--data-dir", str(tmp_path / "a"))
    assert agent.code == 2 and "--token" in agent.err
    refused = hosts.cli(
        "agent", "--server", hosts.url, "--token", "kledjoin_nope", "--data-dir", str(tmp_path)
    )
    assert refused.code == 1
    assert refused.err.count("\n") == 1 and "unknown, expired or revoked node token" in refused.err
