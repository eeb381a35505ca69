"""A request loop for rollout tests and ``bench/rollout.py``: ``loadloop.py IP PORT STOP``.

GETs ``http://IP:PORT/`` one request after another until the file ``STOP`` exists, then
prints ``{"ok": N, "failed": [...], "answers": {answer: count}, "latencies_ms": [...]}``
as JSON. It stops on a file, not after a time, so the test decides when the load ends
(after the rollout is over, however long that took on this machine).
"""

from __future__ import annotations

import http.client
import json
import os
import sys
import time
from collections import Counter


def main(ip: str, port: int, stop: str) -> None:
    ok, failed, answers, latencies = 0, [], Counter[str](), []
    while not os.path.exists(stop):
        started = time.perf_counter()
        conn = http.client.HTTPConnection(ip, port, timeout=5)
        try:
            conn.request("GET", "/")
            response = conn.getresponse()
            body = response.read().decode(errors="replace")
            if response.status == 200:
                ok += 1
                answers[body.split("-")[0]] += 1
                latencies.append((time.perf_counter() - started) * 1000)
            else:
                failed.append(f"HTTP {response.status}")
        except OSError as e:
            failed.append(f"{type(e).__name__}: {e}")
        finally:
            conn.close()
        time.sleep(0.005)
    out = {"ok": ok, "failed": failed, "answers": dict(answers), "latencies_ms": latencies}
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
