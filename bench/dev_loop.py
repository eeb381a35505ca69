"""``kled dev`` end to end: change-to-new-response of a Python HTTP app with restart.

A real ``kled server`` (embedded NATS), a real ``kled agent`` and a process app serving
HTTP on a port of this machine; ``kled dev`` swaps it for its dev replica with the
laptop's copy, syncing over an exec stream relayed through the API and the Message
Office, and restarting ``python3 app.py`` on ``**/*.py``. Measured:

- ``start``: from ``kled dev`` starting to the dev replica's first answer (swap, replica,
  initial sync, command start);
- ``change_to_response`` p50/p99: from before writing ``app.py`` to the first HTTP answer
  with the new text (detection, sync through the relay, SIGTERM, restart, bind), polling
  every 5 ms;
- ``change_to_remote`` p50/p99: the sync's own figure for each of those edits (change
  seen → the replica confirmed the file), as ``kled dev`` prints it;
- ``restore``: from Ctrl-C to ``kled dev`` having restored the app and exited.

Prints one JSON document. ``python bench/dev_loop.py [--edits 20]``
"""

from __future__ import annotations

import argparse
import json
import random
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from hostkit import Hosts, eventually  # noqa: E402

from cli.clikit import free_port  # noqa: E402 - after the path set-up

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
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""
SYNCED = re.compile(r"synced \d+ file\(s\), \d+ B in (\d+) ms")


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))], 1)


def stats(values: list[float]) -> dict[str, Any]:
    return {"n": len(values), "p50_ms": pct(values, 0.5), "p99_ms": pct(values, 0.99)}


def answer(port: int, client: httpx.Client) -> str:
    try:
        return client.get(f"http://127.0.0.1:{port}/", timeout=1).text
    except httpx.HTTPError:
        return ""


def wait_for(port: int, text: str, client: httpx.Client, limit: float = 120) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < limit:
        if answer(port, client) == text:
            return time.perf_counter()
        time.sleep(0.005)
    raise TimeoutError(f"the app never answered {text!r}")


def run(root: Path, edits: int) -> dict[str, Any]:
    team = f"bench-{random.randint(10**5, 10**6)}"
    hosts = Hosts(root, ["--embedded-nats", "--nats-port", str(free_port())], team)
    port = free_port()
    try:
        hosts.start_team_node("b1", context=True)
        original = root / "original"
        original.mkdir()
        (original / "app.py").write_text(APP.format(message="original"))
        hosts.apply(
            {
                "apiVersion": "kled.io/v1",
                "kind": "App",
                "metadata": {
                    "name": "web",
                    "annotations": {"kled.io/dev-sync-roots": str(root / "remote")},
                },
                "spec": {"command": ["python3", str(original / "app.py"), str(port)]},
            }
        )
        laptop, remote = root / "laptop", root / "remote"
        laptop.mkdir()
        remote.mkdir()
        (laptop / "app.py").write_text(APP.format(message="v0"))
        config = {
            "dev": {
                "web": {
                    "sync": [{"local": ".", "remote": str(remote)}],
                    "command": ["python3", "app.py", str(port)],
                    "onChange": {"restart": ["**/*.py"]},
                    "restartGraceSeconds": 2,
                }
            }
        }
        (laptop / "kled.yaml").write_text(json.dumps(config))
        with httpx.Client() as client:
            eventually(lambda: answer(port, client) == "original", "the app answers")
            lines: list[str] = []
            t0 = time.perf_counter()
            dev = hosts.cli.popen("dev", "web", "-f", str(laptop / "kled.yaml"))
            threading.Thread(target=lambda: lines.extend(dev.stdout or []), daemon=True).start()
            started = wait_for(port, "v0", client) - t0
            times = []
            for i in range(1, edits + 1):
                time.sleep(0.3)  # let the previous restart settle
                text = f"v{i}"
                t = time.perf_counter()
                (laptop / "app.py").write_text(APP.format(message=text))
                times.append((wait_for(port, text, client) - t) * 1000)
            t = time.perf_counter()
            dev.send_signal(signal.SIGINT)
            code = dev.wait(120)
            restore = time.perf_counter() - t
        synced = [float(m.group(1)) for line in lines if (m := SYNCED.search(line))]
        return {
            "start_s": round(started, 2),
            "change_to_response": stats(times),
            "change_to_remote": stats(synced) if synced else None,
            "restore_s": round(restore, 2),
            "exit_code": code,
        }
    finally:
        hosts.close([])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="kled-bench-dev-") as tmp:
        result = run(Path(tmp), args.edits)
    result["goal"] = "change-to-new-response < 1 s"
    print(json.dumps({"bench": "dev_loop", **result}, indent=2))


if __name__ == "__main__":
    main()
