"""Workspace times, through the CLI a user runs: ``kled ws up`` until Running, and more.

One ``kled server`` and one ``kled agent`` on this machine, podman, and a busybox image
made on the spot (no registry is reachable). The workspace has a local feature (so ``up``
builds an image) and every create-time hook. Measured, each as the wall time of the
``kled`` command, which returns once the workspace is Running (or Stopped):

- ``up_cold``: first ``kled ws up`` of the folder (upload, feature build, container, hooks);
- ``up_unchanged``: ``kled ws up`` again with nothing changed (the same archive: no work);
- ``up_edited``: ``kled ws up`` after a file changed (a new archive and container; the
  feature layer comes from the engine's cache);
- ``stop`` and ``start`` (postStartCommand runs);
- ``ssh_true``: ``kled ws ssh NAME -- true``: OpenSSH's ``ssh``, the ``kled ws proxy``
  it starts, the API's stream, the node's SSH server for the connection, the handshake,
  one session; ``exec_true`` beside it (``kled ws exec NAME -- true``, no SSH);
- ``upload_10k_files``: packing and uploading a folder of 10,000 small files (``up
  --no-wait``), and the archive's size.

    python bench/workspace.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(HERE), str(HERE / "integration")]

from hostkit import Hosts, eventually  # noqa: E402
from test_workspaces_agent import APPLETS, write_folder  # noqa: E402

from cli.clikit import free_port  # noqa: E402
from imagekit import busybox_image, podman  # noqa: E402


def timed(h: Hosts, *args: str) -> float:
    start = time.perf_counter()
    result = h.cli(*args, timeout=900)
    took = time.perf_counter() - start
    if result.code != 0:
        raise SystemExit(f"kled {' '.join(args)} failed: {result}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    team = f"wsb-{random.randint(10**5, 10**6)}"
    image = f"localhost/kled-bench-ws:{team}"
    results: dict[str, list[float]] = {}
    extra: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kled-bench-ws-") as tmp:
        root = Path(tmp)
        busybox_image(root / "image", image, APPLETS, dirs=("tmp", "root", "workspaces"))
        h = Hosts(root, ["--embedded-nats", "--nats-port", str(free_port())], team)
        try:
            h.start_server()
            h.cli.ok("team", "create", team)
            h.start_agent("bench")
            eventually(lambda: h.node_phase("bench") == "Ready", "node Ready")
            config = {
                "image": image,
                "features": {"./marker": {"greeting": "hi"}},
                "mounts": ["source=cache,target=/cache,type=volume"],
                "onCreateCommand": "echo c >> /cache/order",
                "postCreateCommand": "echo p >> /cache/order",
                "postStartCommand": "echo s >> /cache/order",
            }
            for run in range(args.runs):
                folder = write_folder(root / f"run{run}" / "shop", config)
                name = f"shop{run}"
                for key, cmd in (
                    ("up_cold", ("ws", "up", str(folder), "--name", name)),
                    ("up_unchanged", ("ws", "up", str(folder), "--name", name)),
                ):
                    results.setdefault(key, []).append(timed(h, *cmd))
                (folder / "hello.txt").write_text(f"edited {run}\n")
                results.setdefault("up_edited", []).append(
                    timed(h, "ws", "up", str(folder), "--name", name)
                )
                results.setdefault("stop", []).append(timed(h, "ws", "stop", name))
                results.setdefault("start", []).append(timed(h, "ws", "start", name))
                for _ in range(3):
                    results.setdefault("ssh_true", []).append(
                        timed(h, "ws", "ssh", name, "--", "true")
                    )
                    results.setdefault("exec_true", []).append(
                        timed(h, "ws", "exec", name, "--", "true")
                    )
                h.cli.ok("ws", "delete", name, "--yes")
            many = write_folder(root / "many" / "big", {"image": image})
            for i in range(10_000):
                sub = many / "files" / f"d{i // 500}"
                sub.mkdir(parents=True, exist_ok=True)
                (sub / f"f{i}.txt").write_text(f"file {i}\n")
            results["upload_10k_files"] = [timed(h, "ws", "up", str(many), "--no-wait")]
            from kled.cli.workspaces import pack

            extra["archive_10k_files_bytes"] = len(pack(many))
            h.cli.ok("ws", "delete", "big", "--yes")
        finally:
            h.close([])
            for name in podman("ps", "-a", "-q", "--filter", "label=kled.workspace").stdout.split():
                if team in podman("inspect", "--format", "{{.Name}}", name).stdout:
                    podman("rm", "-f", "-t", "0", name)
            podman("rmi", "-f", image)
    summary = {
        key: {"median_s": round(statistics.median(v), 3), "runs": [round(x, 3) for x in v]}
        for key, v in results.items()
    }
    print(json.dumps({"bench": "workspace", "engine": "podman", **summary, **extra}, indent=2))


if __name__ == "__main__":
    main()
