"""``kled dev`` on the mesh: the app's service IP and DNS name reach the dev replica.

One lab host runs an agent with the mesh on; the control plane runs in a host of its own,
where ``kled dev`` runs too (as a laptop would, through the API). A client pod asks
``http://web.dev.a.kled.internal/`` through the team gateway's DNAT: first the app, then
the laptop's code in the dev replica, an edit after the restart, and the app again once
``kled dev`` ends with Ctrl-C.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from agentlab import IDLE_CMD, KLED, Mesh, eventually, lab_mesh

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

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
http.server.HTTPServer(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"""
NAME = "web.dev.a.kled.internal"
GET = (
    "import sys, urllib.request\n"
    "try:\n"
    "    print(urllib.request.urlopen(sys.argv[1], timeout=2).read().decode(), end='')\n"
    "except OSError:\n"
    "    pass\n"
)


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 1, "devtest") as m:
        yield m


def _get(mesh: Mesh, ns: str, url: str) -> str:
    done = subprocess.run(
        ["ip", "netns", "exec", ns, sys.executable, "-c", GET, url],
        capture_output=True, text=True, check=False, timeout=30,
    )  # fmt: skip
    return done.stdout


def test_the_service_name_reaches_the_dev_replica_and_the_app_again_after(
    mesh: Mesh, tmp_path: Path
) -> None:
    original = tmp_path / "original.py"
    original.write_text(APP.format(message="original"))
    mesh.start_agent(1)
    mesh.team("a", "100.93.0.0/16")
    ports = [{"name": "http", "port": 80, "targetPort": 8080}]
    remote = tmp_path / "remote"  # the dev session syncs into the app's workingDir
    remote.mkdir()
    web = {"command": [sys.executable, str(original), "8080"], "ports": ports}
    mesh.app("a", "web", {**web, "workingDir": str(remote)})
    mesh.app("a", "client", {"command": IDLE_CMD})
    client = mesh.pod_ns(1, "a", "a.dev.client.0")
    eventually(lambda: Path(f"/run/netns/{client}").exists(), "the client's pod")
    url = f"http://{NAME}/"
    try:
        eventually(lambda: _get(mesh, client, url) == "original", "the app by its name")
        before = mesh.get_app("a", "web")["spec"]
        laptop = tmp_path / "laptop"
        laptop.mkdir()
        (laptop / "app.py").write_text(APP.format(message="from the laptop"))
        rule = {"local": ".", "remote": str(remote)}
        dev = {"sync": [rule], "command": [sys.executable, "app.py", "8080"],
               "onChange": {"restart": ["**/*.py"]}}  # fmt: skip
        (laptop / "kled.yaml").write_text(yaml.safe_dump({"dev": {"web": dev}}))
        lines: list[str] = []
        proc = _kled_dev(mesh, tmp_path / "home", laptop / "kled.yaml")
        threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True).start()
        try:
            eventually(lambda: _get(mesh, client, url) == "from the laptop", "the dev replica")
            (laptop / "app.py").write_text(APP.format(message="edited"))
            eventually(lambda: _get(mesh, client, url) == "edited", "the edit, by name")
        finally:
            proc.send_signal(signal.SIGINT)
            code = proc.wait(60)
        assert code == 0, lines
        assert mesh.get_app("a", "web")["spec"] == before
        eventually(lambda: _get(mesh, client, url) == "original", "the app itself again")
    except BaseException:
        print(mesh.dump_logs())
        raise


def _kled_dev(mesh: Mesh, home: Path, config: Path) -> subprocess.Popen[str]:
    """``kled dev web`` in the control plane's host (a laptop reaching the API)."""
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
    env.update(HOME=str(home), KLED_CONFIG=str(home / "kled.yaml"), NO_COLOR="1")
    host = mesh.lab.host(2)
    argv = ["ip", "netns", "exec", host, str(KLED), "--server", mesh.server.url]
    argv += ["--token", mesh.server.admin_token, "--team", "a", "dev", "web", "-e", "dev"]
    argv += ["-f", str(config)]
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # fmt: skip
