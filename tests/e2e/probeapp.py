"""An HTTP replica for the probe tests, steered by files in a state folder.

``probeapp.py NAME STATE PORT``: ``GET /`` answers ``NAME-<pid>``; ``/ready`` is 500 while
``STATE/unready-all`` or ``STATE/unready-<pid>`` exists; ``/live`` is 500 while
``STATE/dead-<pid>`` exists; ``/prestop`` and SIGTERM append a line to ``STATE/events``
(``prestop <pid> <time>``, ``sigterm <pid> <time>``); after SIGTERM it serves on for a
moment, as a real server finishing its requests would, then exits.

``probeapp.py load IP PORT SECONDS``: GET ``/`` in a loop for that long; prints
``{"ok": N, "failed": [errors...]}`` as JSON.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

PID = os.getpid()


def load(ip: str, port: int, seconds: float) -> None:
    import http.client
    import json

    ok, failed = 0, []
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        conn = http.client.HTTPConnection(ip, port, timeout=3)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            response.read()
            if response.status == 200:
                ok += 1
            else:
                failed.append(f"HTTP {response.status}")
        except OSError as e:
            failed.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()
        time.sleep(0.005)
    print(json.dumps({"ok": ok, "failed": failed}))


if sys.argv[1] == "load":
    load(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]))
    sys.exit(0)
NAME, STATE, PORT = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])


def note(what: str) -> None:
    with open(STATE / "events", "a") as f:
        f.write(f"{what} {PID} {time.time():.3f}\n")


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        code, body = 200, f"{NAME}-{PID}"
        if self.path == "/ready":
            if (STATE / "unready-all").exists() or (STATE / f"unready-{PID}").exists():
                code = 500
        elif self.path == "/live":
            if (STATE / f"dead-{PID}").exists():
                code = 500
        elif self.path == "/prestop":
            note("prestop")
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


def on_term(*_: object) -> None:
    note("sigterm")
    threading.Timer(0.5, lambda: os._exit(0)).start()


signal.signal(signal.SIGTERM, on_term)
ThreadingHTTPServer(("0.0.0.0", PORT), Handler).serve_forever()
