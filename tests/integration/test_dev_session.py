"""``kled dev`` for real: a ``kled server`` (dev grace 3 s), a ``kled agent``, an HTTP app.

The app is a process replica serving ``original``; the laptop folder holds the same app
serving ``v1``. ``kled dev`` swaps the app for its dev replica, syncs the folder into it
and runs the command there: the app's port answers ``v1``, then ``v2`` after an edit (a
restart on ``**/*.py``), a crash says its exit code and the next edit brings it back.
Ctrl-C restores the app's spec exactly; ``kill -9`` of the CLI leaves the restore to the
control plane after the grace period. A viewer and a bad ``kled.yaml`` are refused.
"""

from __future__ import annotations

import contextlib
import random
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest
import yaml
from hostkit import Hosts, eventually

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dev")]

TEAM = f"dev-{random.randint(10**5, 10**6)}"
MARK_VAR = "KLED_DEVTEST_MARK"
MARK = str(random.randint(10**8, 10**9))
APP = """import http.server, sys
MESSAGE = {message!r}
class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = MESSAGE.encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
print("serving", MESSAGE, flush=True)
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


class Lab:
    def __init__(self, hosts: Hosts, port: int) -> None:
        self.hosts = hosts
        self.port = port
        self.laptop = hosts.root / "laptop"
        self.config = self.laptop / "kled.yaml"
        self.forwarded = 0

    def through_forward(self) -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{self.forwarded}/", timeout=5).text
        except httpx.HTTPError:
            return ""

    def answer(self, port: int | None = None) -> str:
        try:
            return httpx.get(f"http://127.0.0.1:{port or self.port}/", timeout=2).text
        except httpx.HTTPError:
            return ""

    def write_app(self, message: str) -> None:
        (self.laptop / "app.py").write_text(APP.format(message=message))

    def spec(self) -> dict[str, Any]:
        return dict(self.hosts.app("web")["spec"])

    def annotations(self) -> dict[str, str]:
        return dict(self.hosts.app("web")["metadata"].get("annotations") or {})


class Dev:
    """``kled dev`` as a process, its output collected."""

    def __init__(self, lab: Lab, *args: str, app: str = "web", config: Path | None = None) -> None:
        self.lines: list[str] = []
        self.proc = lab.hosts.cli.popen("dev", app, "-f", str(config or lab.config), *args)
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=self._collect, args=(stream,), daemon=True).start()

    def _collect(self, stream: Any) -> None:
        for line in stream:
            self.lines.append(line.rstrip("\n"))

    def serves(self, lab: Lab, message: str, port: int | None = None) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"kled dev exited with {self.proc.returncode}")
            return lab.answer(port) == message

        try:
            eventually(check, f"the dev replica serves {message}")
        except AssertionError as err:
            raise AssertionError(f"{err}; kled dev said: {self.lines}") from None

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def stop(self, sig: int) -> int:
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _marked() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["environ"]):
        with contextlib.suppress(psutil.Error):
            if (p.info["environ"] or {}).get(MARK_VAR) == MARK:
                found.append(p)
    return found


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from cli.clikit import free_port

    root = tmp_path_factory.mktemp("dev")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    h.cli.env["KLED_DEV_GRACE_SECONDS"] = "3"
    port = free_port()
    lab = Lab(h, port)
    lab.forwarded = free_port()
    try:
        h.start_team_node("d1", context=True)
        original = root / "original"
        original.mkdir()
        (original / "app.py").write_text(APP.format(message="original"))
        h.apply(
            {
                "apiVersion": "kled.io/v1",
                "kind": "App",
                "metadata": {
                    "name": "web",
                    "labels": {"tier": "front"},
                    "annotations": {"kled.io/dev-sync-roots": str(root / "remote")},
                },
                "spec": {
                    "command": ["python3", str(original / "app.py"), str(port)],
                    "env": {MARK_VAR: MARK, "GREETING": "hi"},
                    "ports": [{"name": "http", "port": 80, "targetPort": port}],
                    "readinessProbe": {"tcpSocket": {"port": port}, "periodSeconds": 1},
                },
            }
        )
        eventually(lambda: lab.answer() == "original", "the app answers")
        lab.laptop.mkdir()
        lab.write_app("v1")
        (lab.laptop / "notes.txt").write_text("not code\n")
        config = {
            "dev": {
                "web": {
                    "sync": [{"local": ".", "remote": str(root / "remote"), "exclude": ["*.pyc"]}],
                    "command": ["python3", "app.py", str(port)],
                    "onChange": {"restart": ["**/*.py"]},
                    "restartGraceSeconds": 2,
                    "ports": [f"{lab.forwarded}:{port}"],
                }
            }
        }
        lab.config.write_text(yaml.safe_dump(config))
        (root / "remote").mkdir()
        yield lab
    finally:
        h.close([])
        procs = _marked()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)


def test_dev_serves_edits_restarts_on_crash_and_ctrl_c_restores_the_app(lab: Lab) -> None:
    lab.write_app("v1")  # whatever an earlier test left in the folder
    before = lab.spec()
    dev = Dev(lab)
    try:
        dev.serves(lab, "v1")
        assert lab.spec()["command"][0] == "sh" and "kled.io/dev-session" in lab.annotations()
        assert (lab.hosts.root / "remote" / "notes.txt").read_text() == "not code\n"
        lab.write_app("v2")
        dev.serves(lab, "v2")
        # the laptop's forwarded port reaches the same server through exec streams
        assert eventually(lab.through_forward, "the forward answers") == "v2"
        assert dev.said(f"forwarding 127.0.0.1:{lab.forwarded}")
        assert dev.said("[web] serving v2")
        (lab.laptop / "app.py").write_text("raise SystemExit(3)\n")
        eventually(lambda: dev.said("web exited with code 3; waiting for a change"), "crash")
        lab.write_app("v3")
        dev.serves(lab, "v3")
    finally:
        code = dev.stop(signal.SIGINT)
    assert code == 0, dev.lines
    assert dev.said("app web restored"), dev.lines
    assert lab.spec() == before
    assert "kled.io/dev-session" not in lab.annotations()
    eventually(lambda: lab.answer() == "original", "the app itself answers again")


def test_a_vanished_laptop_is_restored_by_the_control_plane(lab: Lab) -> None:
    before = lab.spec()
    lab.write_app("v1")
    dev = Dev(lab)
    try:
        dev.serves(lab, "v1")
    finally:
        dev.proc.kill()  # SIGKILL: no restore from the CLI
        dev.proc.wait()
    assert "kled.io/dev-session" in lab.annotations()  # the CLI could not undo it
    eventually(lambda: lab.spec() == before, "the control plane restored the app", timeout=60)
    assert "kled.io/dev-session" not in lab.annotations()
    eventually(lambda: lab.answer() == "original", "the app itself answers again")


def test_dev_status_and_stop_from_another_terminal(lab: Lab) -> None:
    before = lab.spec()
    lab.write_app("v1")  # whatever an earlier test left in the folder
    assert "no dev session" in lab.hosts.cli.ok("dev", "--status", "web")
    dev = Dev(lab)
    try:
        dev.serves(lab, "v1")
        assert "dev session" in lab.hosts.cli.ok("dev", "--status", "web")
        assert lab.hosts.cli.ok("dev", "stop", "web").strip() == "app web restored"
        code = dev.proc.wait(60)  # the CLI hears of it at its next renewal, and ends
    finally:
        dev.stop(signal.SIGTERM)
    assert code == 1, dev.lines
    assert dev.said("the control plane ended this dev session"), dev.lines
    assert lab.spec() == before


def test_a_viewer_and_a_bad_kled_yaml_are_refused_with_one_line(lab: Lab) -> None:
    from test_exec_stream import user_token

    before = lab.spec()
    viewer = user_token(lab.hosts, TEAM, "vic", "viewer")
    result = lab.hosts.cli("--token", viewer, "dev", "web", "-f", str(lab.config))
    assert result.code == 1 and "may not update apps" in result.err, result
    assert lab.spec() == before
    bad = lab.hosts.root / "bad.yaml"
    bad.write_text(yaml.safe_dump({"dev": {"web": {"sync": [{"local": ".", "remote": "../x"}]}}}))
    result = lab.hosts.cli("dev", "web", "-f", str(bad))
    assert result.code == 2, result
    assert "dev.web.sync[0].remote" in result.err and ".." in result.err, result
    assert len(result.err.strip().splitlines()) == 1
    result = lab.hosts.cli("dev", "api", "-f", str(lab.config))
    assert result.code == 2 and "no dev.api" in result.err, result
    # a process replica writes the node's own files: only where the app lets it
    outside = lab.hosts.root / "outside.yaml"
    outside.write_text(
        yaml.safe_dump({"dev": {"web": {"sync": [{"local": ".", "remote": "/etc"}]}}})
    )
    result = lab.hosts.cli("dev", "web", "-f", str(outside))
    assert result.code == 2 and len(result.err.strip().splitlines()) == 1, result
    assert "dev.web.sync[0].remote: /etc is outside" in result.err, result
    assert lab.spec() == before and "kled.io/dev-session" not in lab.annotations()


def test_two_developers_on_two_apps_at_once_and_one_app_is_one_session(lab: Lab) -> None:
    from cli.clikit import free_port

    root, port = lab.hosts.root, free_port()
    (root / "api-original.py").write_text(APP.format(message="api original"))
    lab.hosts.apply(
        {
            "apiVersion": "kled.io/v1",
            "kind": "App",
            "metadata": {
                "name": "api",
                "annotations": {"kled.io/dev-sync-roots": str(root / "remote2")},
            },
            "spec": {
                "command": ["python3", str(root / "api-original.py"), str(port)],
                "env": {MARK_VAR: MARK},
            },
        }
    )
    eventually(lambda: lab.answer(port) == "api original", "the second app answers")
    api_before = lab.hosts.app("api")["spec"]
    other = root / "laptop2"
    (other / "src").mkdir(parents=True)
    (other / "src" / "app.py").write_text(APP.format(message="api from laptop 2"))
    config = other / "kled.yaml"
    rule = {"local": "src", "remote": str(root / "remote2")}
    command = ["python3", "app.py", str(port)]
    config.write_text(yaml.safe_dump({"dev": {"api": {"sync": [rule], "command": command}}}))
    (root / "remote2").mkdir()
    web_before = lab.spec()
    lab.write_app("v1")
    first, second = Dev(lab), Dev(lab, app="api", config=config)
    try:
        first.serves(lab, "v1")
        second.serves(lab, "api from laptop 2", port)
        again = lab.hosts.cli("dev", "web", "-f", str(lab.config))
        assert again.code == 1 and "in the dev session of admin" in again.err, again
        assert first.proc.poll() is None  # the refused one did not end the first
    finally:
        codes = first.stop(signal.SIGINT), second.stop(signal.SIGINT)
    assert codes == (0, 0), (first.lines, second.lines)
    assert lab.spec() == web_before and lab.hosts.app("api")["spec"] == api_before
    eventually(lambda: lab.answer(port) == "api original", "the second app is back")


def test_the_loop_goes_on_across_an_agent_restart(lab: Lab) -> None:
    before = lab.spec()
    lab.write_app("v1")
    dev = Dev(lab)
    try:
        dev.serves(lab, "v1")
        lab.hosts.kill_agent("d1", signal.SIGKILL)  # its exec'd commands die with it
        eventually(lambda: lab.answer() == "", "the dev command died with the agent")
        lab.hosts.start_agent("d1", join=False)
        # the sync reconnects through a new stream and the command is started again
        dev.serves(lab, "v1")
        lab.write_app("after the agent came back")
        dev.serves(lab, "after the agent came back")
    finally:
        code = dev.stop(signal.SIGINT)
    assert code == 0, dev.lines
    assert lab.spec() == before


def test_a_reverse_port_lets_the_replica_reach_the_laptop(lab: Lab) -> None:
    import http.server

    from cli.clikit import free_port

    class Laptop(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = f"laptop answers {self.path}".encode()
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Laptop)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    inside = free_port()
    config = lab.hosts.root / "reverse.yaml"
    target = yaml.safe_load(lab.config.read_text())["dev"]["web"]
    target.pop("ports")
    target["sync"][0]["local"] = str(lab.laptop)
    target["reversePorts"] = [f"{server.server_address[1]}:{inside}"]
    config.write_text(yaml.safe_dump({"dev": {"web": target}}))
    lab.write_app("v1")
    fetch = f"import urllib.request; print(urllib.request.urlopen('http://127.0.0.1:{inside}/x').read().decode())"
    dev = Dev(lab, config=config)
    try:
        dev.serves(lab, "v1")
        eventually(lambda: dev.said(f"reverse port {inside}"), "the reverse port listens")
        for _ in range(2):  # a second connection through the same listener
            answer = lab.hosts.cli("exec", "web", "--", "python3", "-c", fetch)
            assert answer.code == 0 and answer.out.strip() == "laptop answers /x", answer
    finally:
        code = dev.stop(signal.SIGINT)
        server.shutdown()
    assert code == 0, dev.lines
