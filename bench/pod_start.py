"""What a pod of several containers costs the container runtime to start and to stop.

Starts, ``--rounds`` times each, with rootful podman and a busybox image made here:

- ``single``: one container (the peer: what a replica was before sidecars);
- ``pod``: an init container, the main container and a sidecar, an ``emptyDir`` and a
  ``secret`` volume in the tmpfs;

and reports, per shape, p50 and max seconds from ``start()`` to the replica Running, to
every sidecar running (the pod's ``2/2``), and of ``stop()`` (every container removed,
volumes gone). Prints one JSON document.

    python bench/pod_start.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from imagekit import busybox_image, podman
from kled.agent.runtime.container import ContainerRuntime
from kled.resources.hoststate import (
    ContainerSpec,
    FileSpec,
    MountSpec,
    ReplicaSpec,
    RuntimeKind,
    VolumeSpec,
)


def spec(image: str, shape: str) -> ReplicaSpec:
    base: dict[str, Any] = {
        "team": "bench",
        "environment": f"p{random.randint(10**5, 10**6)}",
        "app": "web",
        "index": 0,
        "runtime": RuntimeKind.CONTAINER,
        "image": image,
        "command": ["sleep", "600"],
        "termination_grace_period_seconds": 0,
    }
    if shape == "pod":
        token = base64.b64encode(b"s3cret").decode()
        base |= {
            "init_containers": [ContainerSpec(name="init", image=image, command=["true"])],
            "sidecars": [ContainerSpec(name="side", image=image, command=["sleep", "600"],
                                       mounts=[MountSpec(volume="shared", path="/s")])],
            "volumes": [VolumeSpec(name="shared", kind="emptyDir"),
                        VolumeSpec(name="tok", kind="secret",
                                   files=[FileSpec(path="t", data=token)])],
            "mounts": [MountSpec(volume="shared", path="/s"), MountSpec(volume="tok", path="/t")],
        }  # fmt: skip
    return ReplicaSpec(**base)


async def one(rt: ContainerRuntime, s: ReplicaSpec) -> tuple[float, float, float]:
    begun = time.perf_counter()
    status = await rt.start(s)
    running = time.perf_counter() - begun
    assert status.state == "Running", status
    while s.sidecars:
        current = rt._replicas[s.id].status.containers
        if all(c.running for c in current.values()):
            break
        await asyncio.sleep(0.01)
    ready = time.perf_counter() - begun
    begun = time.perf_counter()
    await rt.stop(s.id)
    return running, ready, time.perf_counter() - begun


def summary(values: list[float]) -> dict[str, float]:
    return {"p50": round(statistics.median(values), 3), "max": round(max(values), 3)}


async def main(rounds: int) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="kled-bench-pod-"))
    image = busybox_image(work, f"localhost/kled-bench-pod:{random.randint(10**6, 10**7)}",
                          ("sh", "sleep", "true"))  # fmt: skip
    rt = ContainerRuntime(work / "state", pull=False, stop_grace=0, log_poll=0.1)
    out: dict[str, Any] = {"rounds": rounds}
    try:
        for shape in ("single", "pod"):
            runs = [await one(rt, spec(image, shape)) for _ in range(rounds)]
            out[shape] = {
                "seconds_to_running": summary([r[0] for r in runs]),
                "seconds_to_all_containers": summary([r[1] for r in runs]),
                "seconds_to_stop": summary([r[2] for r in runs]),
            }
    finally:
        for rid in await rt.list():
            await rt.stop(rid)
        podman("rmi", "-f", image)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    print(json.dumps(asyncio.run(main(parser.parse_args().rounds)), indent=2))
