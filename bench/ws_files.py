"""Moving files into and out of a workspace: ``scp`` (SFTP as remoteUser, through ``kled ws
proxy`` and the API) beside ``kled ws exec -- cat`` (the exec stream, the same API path,
no SSH), in the same run.

One ``kled server`` and one ``kled agent`` on this machine (root, podman), a busybox image
made on the spot with a user ``dev``. For a file of ``--mib`` MiB of random bytes:

- ``scp_up``, ``scp_down``: OpenSSH's ``scp`` with ``kled ws ssh-config``'s Host block;
- ``exec_up``, ``exec_down``: ``kled ws exec shop -- sh -c 'cat > F'`` with the file on
  stdin, and ``… -- cat F`` to a local file (the peer);
- ``*_mib_s``: MiB per second of each (median of ``--runs``), ``ratio_*``: scp over exec
  (above 1: scp is faster).

    python bench/ws_files.py [--mib 32] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "tests"
sys.path[:0] = [str(HERE), str(HERE / "integration")]

from hostkit import Hosts, eventually  # noqa: E402
from test_workspace_ssh_access import make_image  # noqa: E402

from cli.clikit import KLED, free_port  # noqa: E402
from imagekit import podman  # noqa: E402


def timed(argv: list[str], env: dict[str, str], **kw: object) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True, capture_output=True, **kw)  # type: ignore[call-overload]
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    if shutil.which("scp") is None or os.geteuid() != 0:
        sys.exit("needs root, podman and OpenSSH's scp")
    team = f"wsfiles-{random.randint(10**5, 10**6)}"
    image = f"localhost/kled-test-wsacc:{team}"
    root = Path(tempfile.mkdtemp(prefix="kled-bench-wsfiles-"))
    import test_workspace_ssh_access as access

    access.IMAGE = image  # the image make_image imports
    make_image(root / "image")
    hosts = Hosts(root, ["--embedded-nats", "--nats-port", str(free_port())], team)
    try:
        hosts.start_server()
        hosts.cli.ok("team", "create", team)
        hosts.start_agent("filesnode")
        eventually(lambda: hosts.node_phase("filesnode") == "Ready", "node Ready")
        folder = root / "shop"
        (folder / ".devcontainer").mkdir(parents=True)
        config = {"image": image, "remoteUser": "dev"}
        (folder / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
        assert hosts.cli("ws", "up", str(folder), timeout=600).code == 0
        ssh_config = root / "ssh_config"
        ssh_config.write_text(hosts.cli.ok("ws", "ssh-config", "shop"))
        data = root / "data.bin"
        data.write_bytes(os.urandom(args.mib * 2**20))
        env = hosts.cli.env
        times: dict[str, list[float]] = {
            k: [] for k in ("scp_up", "scp_down", "exec_up", "exec_down")
        }
        for _ in range(args.runs):
            times["scp_up"].append(
                timed(["scp", "-F", str(ssh_config), str(data), "ws-shop:/home/dev/a.bin"], env)
            )
            times["scp_down"].append(
                timed(
                    ["scp", "-F", str(ssh_config), "ws-shop:/home/dev/a.bin", str(root / "a")], env
                )
            )
            with data.open("rb") as stdin:
                times["exec_up"].append(
                    timed(
                        [
                            str(KLED),
                            "ws",
                            "exec",
                            "shop",
                            "--",
                            "sh",
                            "-c",
                            "cat > /home/dev/b.bin",
                        ],
                        env,
                        stdin=stdin,
                    )
                )
            with (root / "b").open("wb") as out:
                start = time.perf_counter()
                subprocess.run([str(KLED), "ws", "exec", "shop", "--", "cat", "/home/dev/b.bin"],
                               env=env, check=True, stdout=out)  # fmt: skip
                times["exec_down"].append(time.perf_counter() - start)
            assert (root / "a").read_bytes() == data.read_bytes()
            assert (root / "b").read_bytes() == data.read_bytes()
        result: dict[str, object] = {"mib": args.mib, "runs": args.runs}
        for name, values in times.items():
            median = statistics.median(values)
            result[f"{name}_s"] = round(median, 3)
            result[f"{name}_mib_s"] = round(args.mib / median, 1)
        for way in ("up", "down"):
            scp, exe = result[f"scp_{way}_s"], result[f"exec_{way}_s"]
            result[f"ratio_{way}"] = round(float(exe) / float(scp), 2)  # type: ignore[arg-type]
        print(json.dumps(result))
    finally:
        hosts.close([])
        podman("rm", "-f", "-t", "0", f"kled-ws-{team}-shop")
        podman("rmi", "-f", image)
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
