"""``kled node add --ssh`` end to end: how long a machine takes to become a node, and to go.

The lab of tests/e2e/test_node_ssh.py: Debian's sshd in a namespace host, the laptop in
another, the control plane in a third (``agentlab.lab_mesh`` + ``sshlab.sshd_on``). Each
round times, as the user sees it, ``kled node add --ssh root@198.18.0.1`` (probe, packing
this Kled, copying it, the venv, the start, until Ready) and ``kled node remove`` (drain,
stop, delete, remove the files); it also reports the bundle's size and how long packing it
alone takes. Medians of ``--rounds`` (3; 1 with ``--quick``). Needs root, ip, sshd.

    python bench/node_ssh.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from agentlab import lab_mesh, laptop_kled  # noqa: E402 - after the path set-up
from sshlab import PORT, sshd_on, sshd_skip_reason  # noqa: E402

from kled.cli import agentbundle  # noqa: E402


def _timed(argv: list[str], run: Callable[..., subprocess.CompletedProcess[str]]) -> float:
    started = time.monotonic()
    done = run(*argv)
    took = time.monotonic() - started
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {done.stderr.strip()}")
    return took


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    reason = sshd_skip_reason()
    if reason:
        print(json.dumps({"bench": "node_ssh", "skipped": reason}))
        return
    with tempfile.TemporaryDirectory(prefix="kled-bench-ssh-") as tmp:
        root = Path(tmp)
        started = time.monotonic()
        bundle = agentbundle.build(root / "bundle.tar.gz")
        pack_s = time.monotonic() - started
        bundle_mib = round(bundle.stat().st_size / 2**20, 1)
        adds, removes = [], []
        with (
            lab_mesh(root, 2, "sshbench") as mesh,
            sshd_on(mesh, 1, root / "sshd", root / "remote") as keys,
        ):

            def kled(*argv: str) -> subprocess.CompletedProcess[str]:
                return laptop_kled(mesh, root / "laptop", mesh.server.admin_token, *argv)

            for i in range(rounds):
                add = [
                    "node", "add", "--ssh", "root@198.18.0.1", "--port", str(PORT),
                    "--identity", str(keys / "id"), "--name", f"far{i}",
                    "--prefix", str(root / "remote" / f"far{i}"), "--supervisor", "loop",
                    "--agent-arg=--network=off", "--agent-arg=--heartbeat=1",
                ]  # fmt: skip
                adds.append(_timed(add, kled))
                removes.append(_timed(["node", "remove", f"far{i}"], kled))
    print(
        json.dumps(
            {
                "bench": "node_ssh",
                "rounds": rounds,
                "bundle_mib": bundle_mib,
                "pack_s": round(pack_s, 2),
                "add_to_ready_s": round(statistics.median(adds), 2),
                "remove_s": round(statistics.median(removes), 2),
                "add_s_all": [round(x, 2) for x in adds],
            }
        )
    )


if __name__ == "__main__":
    main()
