"""Rolling updates with a real agent, real replicas and a real team gateway, under load.

One lab host runs an agent with the mesh on (``agentlab``). The app ``web``
(``probeapp.py``: answers ``NAME-<pid>``, ready once it serves) has 3 replicas behind its
service IP; a client pod GETs the service IP in a loop (``loadloop.py``) through the
gateway's DNAT the whole time. Checked, as a user would see it:

- a rolling update (a new NAME in the command) fails no request, ends with only new
  answers, and the ready count sampled during it never drops below ``replicas -
  maxUnavailable``; ``kled rollout status`` says it rolled out and ``history`` lists both;
- an update whose replicas never get ready stalls with ProgressDeadlineExceeded in the
  status and an event, the old replicas serving every request, and ``kled rollout undo``
  brings the app back to a complete rollout of the good revision;
- ``Recreate`` replaces every replica in place (requests may fail then: not counted);
- an agent killed and started again in the middle of a rollout: the rollout completes with
  exactly 3 replica processes, all of the new revision.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
from agentlab import IDLE_CMD, MARKER_VAR, Mesh, eventually, lab_mesh, laptop_kled

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

APP = Path(__file__).with_name("probeapp.py")
LOAD = Path(__file__).with_name("loadloop.py")
PATH = "/api/v1/teams/a/environments/dev/apps/web"


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 1, "rollouttest") as m:
        yield m


def web(state: Path, name: str, **extra: Any) -> dict[str, Any]:
    return {
        "command": [sys.executable, str(APP), name, str(state), "8080"],
        "replicas": 3,
        "ports": [{"name": "http", "port": 80, "targetPort": 8080}],
        "readinessProbe": {"httpGet": {"path": "/ready", "port": "http"},
                           "periodSeconds": 1, "failureThreshold": 1},
        "lifecycle": {"preStop": {"httpGet": {"path": "/prestop", "port": "http"}}},
        "terminationGracePeriodSeconds": 5,
        **extra,
    }  # fmt: skip


def change(mesh: Mesh, edit: Callable[[dict[str, Any]], None]) -> None:
    """Read the app, edit its spec, write it back; again if the controller wrote between."""
    for _ in range(20):
        doc = mesh.get_app("a", "web")
        edit(doc["spec"])
        doc["spec"]["env"] = {MARKER_VAR: mesh.marker}
        doc.pop("status", None)
        with mesh.server.client() as c:
            r = c.put(PATH, json=doc)
        if r.status_code != 409:
            assert r.status_code < 300, r.text
            return
    raise AssertionError("the app kept changing under the test")


def command(state: Path, name: str) -> Callable[[dict[str, Any]], None]:
    def edit(spec: dict[str, Any]) -> None:
        spec["command"] = web(state, name)["command"]

    return edit


class Load:
    """The request loop in the client pod, until ``stop``."""

    def __init__(self, mesh: Mesh, client_ns: str, ip: str, root: Path) -> None:
        self.stop_file = root / f"stop-{len(list(root.glob('stop-*')))}"
        argv = ["ip", "netns", "exec", client_ns, sys.executable, str(LOAD), ip, "80",
                str(self.stop_file)]  # fmt: skip
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)

    def stop(self) -> dict[str, Any]:
        self.stop_file.touch()
        try:
            out, _ = self.proc.communicate(timeout=60)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        result: dict[str, Any] = json.loads(out)
        return result


def rollout(mesh: Mesh) -> dict[str, Any]:
    status: dict[str, Any] = mesh.get_app("a", "web")["status"]
    return status


def test_rolling_update_drops_nothing_a_bad_one_stalls_and_undo_restores(
    mesh: Mesh, tmp_path: Path
) -> None:
    state = tmp_path / "web-state"
    state.mkdir()
    mesh.start_agent(1)
    mesh.team("a", "100.93.0.0/16")
    mesh.app("a", "web", web(state, "v1", progressDeadlineSeconds=20))
    mesh.app("a", "client", {"command": IDLE_CMD})
    try:
        _scenario(mesh, state, tmp_path)
    except BaseException:
        print(mesh.dump_logs())
        raise


def _scenario(mesh: Mesh, state: Path, root: Path) -> None:
    service_ip = eventually(lambda: rollout(mesh)["ip"], "web service IP")
    client = mesh.pod_ns(1, "a", "a.dev.client.0")
    eventually(lambda: Path(f"/run/netns/{client}").exists(), "the client's pod")

    def names(count: int = 12) -> set[str]:
        return {a.split("-")[0] for a in mesh.ask(client, service_ip, 80, count=count)}

    eventually(lambda: rollout(mesh)["readyReplicas"] == 3, "3 replicas ready")
    eventually(lambda: names() == {"v1"}, "v1 answering through the service IP")
    assert rollout(mesh)["rollout"]["phase"] == "Complete"

    # 1. A rolling update under load: no request fails, never fewer than 3 ready (the
    #    defaults for 3 replicas: maxSurge 1, maxUnavailable 0).
    events = state / "events"
    before = len(events.read_text().splitlines()) if events.exists() else 0
    load = Load(mesh, client, service_ip, root)
    change(mesh, command(state, "v2"))
    samples: list[int] = []

    def rolled() -> bool:
        status = rollout(mesh)
        samples.append(status["readyReplicas"])
        roll = status.get("rollout") or {}
        return roll.get("revision") == 2 and roll.get("phase") == "Complete"

    eventually(rolled, "revision 2 rolled out")
    result = load.stop()
    assert result["failed"] == [], result["failed"]
    assert result["ok"] > 50 and set(result["answers"]) == {"v1", "v2"}, result["answers"]
    assert min(samples) >= 3, samples
    # Complete once the old replicas are planned away (as a Deployment is while its old
    # pods terminate): the last one leaves the gateway's backends a moment after.
    eventually(lambda: names() == {"v2"}, "only v2 answering")

    # Each old replica left the backends, got its preStop hook, then SIGTERM.
    def terms() -> list[list[str]]:
        lines = [line.split() for line in events.read_text().splitlines()[before:]]
        return lines if sum(1 for line in lines if line[0] == "sigterm") == 3 else []

    lines = eventually(terms, "the three old replicas stopped")
    stopped = {pid for what, pid, _ in lines if what == "sigterm"}
    for pid in stopped:
        assert [what for what, p, _ in lines if p == pid] == ["prestop", "sigterm"], lines
    replicas = rollout(mesh)["replicas"]
    assert len(replicas) == 3 and len({r["revision"] for r in replicas}) == 1

    home = root / "home"
    home.mkdir()
    token = mesh.server.admin_token
    done = laptop_kled(mesh, home, token, "rollout", "status", "web", "-e", "dev")
    assert done.returncode == 0 and "successfully rolled out (revision 2)" in done.stdout, done
    done = laptop_kled(mesh, home, token, "rollout", "history", "web", "-e", "dev")
    lines = done.stdout.splitlines()
    assert done.returncode == 0 and lines[0].split()[0] == "REVISION", done
    assert [line.split()[0] for line in lines[1:]] == ["1", "2"], done.stdout
    assert "v2" in lines[2] and "(current)" in lines[2]

    # 2. A revision whose replicas never get ready: stalled, the old ones serve on.
    load = Load(mesh, client, service_ip, root)
    change(mesh, lambda spec: spec.update(command=["sh", "-c", "exit 3"]))

    def stalled() -> dict[str, Any] | None:
        roll = rollout(mesh).get("rollout") or {}
        return roll if roll.get("revision") == 3 and roll.get("phase") == "Stalled" else None

    roll = eventually(stalled, "revision 3 stalled", attempts=400)
    assert roll["reason"] == "ProgressDeadlineExceeded"
    status = rollout(mesh)
    assert any(e["reason"] == "ProgressDeadlineExceeded" for e in status["events"])
    assert status["readyReplicas"] == 3
    done = laptop_kled(mesh, home, token, "rollout", "status", "web", "-e", "dev")
    assert done.returncode == 1 and "stalled" in done.stdout + done.stderr, done

    done = laptop_kled(mesh, home, token, "rollout", "undo", "web", "-e", "dev")
    assert done.returncode == 0 and "rolled back to revision 2" in done.stdout, done

    def restored() -> bool:
        roll = rollout(mesh).get("rollout") or {}
        return roll.get("revision") == 4 and roll.get("phase") == "Complete"

    eventually(restored, "the undo rolled out as revision 4")
    result = load.stop()
    assert result["failed"] == [], result["failed"]
    assert set(result["answers"]) == {"v2"}, result["answers"]
    kept = [e["revision"] for e in rollout(mesh)["revisions"]]
    assert kept == [1, 3, 4], kept
    assert len(rollout(mesh)["replicas"]) == 3

    # A revision that is not kept: a one-line error naming the flag, exit 2.
    done = laptop_kled(mesh, home, token, "rollout", "undo", "web", "-e", "dev",
                       "--to-revision", "2")  # fmt: skip
    assert done.returncode == 2 and "--to-revision" in done.stderr, done

    # 3. Recreate: every replica restarted in place, keeping its index.
    indexes = sorted(r["index"] for r in rollout(mesh)["replicas"])

    def recreate(spec: dict[str, Any]) -> None:
        spec["strategy"] = {"type": "Recreate"}
        command(state, "v3")(spec)

    change(mesh, recreate)

    def recreated() -> bool:
        roll = rollout(mesh).get("rollout") or {}
        return roll.get("revision") == 5 and roll.get("phase") == "Complete"

    eventually(recreated, "revision 5 recreated")
    assert sorted(r["index"] for r in rollout(mesh)["replicas"]) == indexes
    eventually(lambda: names() == {"v3"}, "v3 answering")


def test_an_agent_restarted_mid_rollout_finishes_it_without_extra_replicas(
    mesh: Mesh, tmp_path: Path
) -> None:
    state = tmp_path / "web-state"
    state.mkdir()
    mesh.start_agent(1)
    mesh.team("a", "100.97.0.0/16")
    mesh.app("a", "web", web(state, "v1"))
    try:
        eventually(lambda: rollout(mesh).get("readyReplicas") == 3, "3 replicas ready")
        (state / "unready-all").touch()  # v2's replicas will not get ready until told
        change(mesh, command(state, "v2"))

        def started() -> bool:
            roll = rollout(mesh).get("rollout") or {}
            return roll.get("revision") == 2 and roll.get("updatedReplicas") == 1

        eventually(started, "the first new replica placed")
        mesh.kill_agent("node1")  # replicas outlive their agent by design
        (state / "unready-all").unlink()
        mesh.start_agent(1)

        def done() -> bool:
            roll = rollout(mesh).get("rollout") or {}
            return roll.get("revision") == 2 and roll.get("phase") == "Complete"

        eventually(done, "revision 2 rolled out after the agent restart")

        def processes() -> list[str]:
            names = []
            for p in mesh.replicas():
                try:
                    cmdline = p.cmdline()
                except psutil.NoSuchProcess:
                    continue  # an old one ending just now
                if str(APP) in cmdline:
                    names.append(cmdline[cmdline.index(str(APP)) + 1])
            return names if len(names) == 3 else []

        assert sorted(eventually(processes, "3 replica processes")) == ["v2", "v2", "v2"]
        assert len(rollout(mesh)["replicas"]) == 3
    except BaseException:
        print(mesh.dump_logs())
        raise
