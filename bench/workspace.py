"""Workspace times, through the CLI a user runs, beside the reference ``devcontainer`` CLI.

One ``kled server`` and one ``kled agent`` on this machine (root, with podman), a busybox
image made on the spot (no registry is reachable), and ``@devcontainers/cli`` as the
Makefile installs it (``.tools/node_modules/.bin/devcontainer``) with ``--docker-path`` a
podman wrapper (rootful, this sandbox's engine flags, as Kled's agent runs podman). The
same devcontainer.json goes up on each side (three create-time hooks and postStart).

Measured, each from the start of ``up`` to the first successful ``true`` in a session
(``kled ws ssh NAME -- true``: OpenSSH through ``kled ws proxy``, the API's stream, the
node's SSH server; for the reference ``devcontainer exec … true``):

- ``container_cold``: a config with ``build.dockerfile`` whose build cannot come from the
  engine's cache (a fresh value in it); ``container_warm``: a config naming an image that
  is on the node;
- ``process``: the warm config with ``--provider process`` (no image, no engine);
- ``reference_cold`` and ``reference_warm``: ``devcontainer up --docker-path podman`` of
  the cold and warm configs; ``ratio_*`` is Kled's time over the reference's;
- ``*_up_only``: the same ``kled ws up`` alone (it returns once Running, hooks run);
  ``process_ssh_true`` and ``process_exec_true``: one more session of a running workspace;
- ``container_up_unchanged``: ``kled ws up`` again with nothing changed (no work);
- ``stop`` and ``start`` of each provider (start runs postStartCommand);
- ``upload_10k_files``: packing and uploading a folder of 10,000 small files (``up
  --no-wait``), and the archive's size.

    python bench/workspace.py [--runs 1] [--warm-only]

``--warm-only`` measures the warm container config alone (and the reference's), the
quickest look at issue 11's measure.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
HERE = REPO / "tests"
sys.path[:0] = [str(HERE), str(HERE / "integration")]

from hostkit import Hosts, eventually  # noqa: E402

from cli.clikit import free_port  # noqa: E402
from imagekit import busybox_image, podman  # noqa: E402

REFERENCE = REPO / ".tools" / "node_modules" / ".bin" / "devcontainer"
APPLETS = ("sh", "sleep", "echo", "cat", "mkdir", "true", "env", "ls", "id", "chmod", "rm")
HOOKS = {
    "onCreateCommand": "echo c > /tmp/c",
    "updateContentCommand": "echo u > /tmp/u",
    "postCreateCommand": "echo p > /tmp/p",
    "postStartCommand": "echo s > /tmp/s",
}
WRAPPER = """#!/bin/sh
# podman as Kled's agent runs it here: rootful (no --userns=keep-id), this sandbox's flags
case "$1" in
  run|create|build)
    sub=$1; shift
    for a in "$@"; do shift; [ "$a" = "--userns=keep-id" ] || set -- "$@" "$a"; done
    exec {podman} "$sub" {flags} "$@";;
esac
exec {podman} "$@"
"""


def make_image(workdir: Path, tag: str) -> None:
    """A busybox image with the ``/etc/passwd`` and ``/etc/group`` the reference needs."""
    busybox_image(workdir, tag, APPLETS, dirs=("tmp", "root", "workspaces", "etc"))
    rootfs = workdir / "rootfs"
    (rootfs / "etc" / "passwd").write_text("root:x:0:0:root:/root:/bin/sh\n")
    (rootfs / "etc" / "group").write_text("root:x:0:\n")
    with tarfile.open(workdir / "rootfs.tar", "w") as tar:
        tar.add(rootfs, arcname=".")
    done = podman("import", str(workdir / "rootfs.tar"), tag)
    if done.returncode != 0:
        raise SystemExit(f"podman import: {done.stderr.strip()}")


def folder_with(path: Path, image: str, cold: bool) -> Path:
    (path / ".devcontainer").mkdir(parents=True)
    config: dict[str, Any] = dict(HOOKS)
    if cold:
        nonce = secrets.token_hex(8)  # a build the engine's cache cannot answer
        (path / ".devcontainer" / "Dockerfile").write_text(
            f"FROM {image}\nRUN echo {nonce} > /built\n"
        )
        config["build"] = {"dockerfile": "Dockerfile"}
    else:
        config["image"] = image
    (path / ".devcontainer" / "devcontainer.json").write_text(json.dumps(config))
    (path / "hello.txt").write_text("hello\n")
    return path


def until_true(run: Callable[[], int], what: str, limit: float = 300.0) -> None:
    deadline = time.monotonic() + limit
    while run() != 0:
        if time.monotonic() > deadline:
            raise SystemExit(f"{what}: no successful `true` within {limit:.0f} s")
        time.sleep(0.1)


class Reference:
    """``devcontainer up`` and ``exec`` with podman, and the cleanup of what they made."""

    def __init__(self, root: Path) -> None:
        from kled.agent.runtime.container import container_engine, engine_flags

        engine = container_engine()
        if engine is None:
            raise SystemExit("the reference needs podman")
        global_flags, run_flags = engine_flags(engine)
        self.wrapper = root / "podman"
        self.wrapper.write_text(
            WRAPPER.format(podman=" ".join([engine, *global_flags]), flags=" ".join(run_flags))
        )
        self.wrapper.chmod(0o755)
        tmp = root / "tmp"
        # its `up` fetches a control manifest from containers.dev unless one is cached
        cache = tmp / f"devcontainercli-{os.environ.get('USER') or 'root'}"
        cache.mkdir(parents=True)
        (cache / "control-manifest.json").write_text(
            '{"disallowedFeatures":[],"featureAdvisories":[]}'
        )
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("KLED_")}
        self.env["TMPDIR"] = str(tmp)
        self.folders: list[Path] = []

    def _run(self, command: str, folder: Path, *rest: str) -> subprocess.CompletedProcess[str]:
        argv = [str(REFERENCE), command, "--workspace-folder", str(folder)]
        return subprocess.run(
            [*argv, "--docker-path", str(self.wrapper), *rest],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=900,
        )

    def up_to_true(self, folder: Path) -> float:
        self.folders.append(folder)
        start = time.perf_counter()
        done = self._run("up", folder)
        if '"outcome":"success"' not in done.stdout.replace(" ", ""):
            raise SystemExit(f"devcontainer up failed: {done.stderr[-2000:]}")

        until_true(lambda: self._run("exec", folder, "true").returncode, "devcontainer exec")
        return time.perf_counter() - start

    def clean(self) -> None:
        for folder in self.folders:
            found = podman("ps", "-aq", "--filter", f"label=devcontainer.local_folder={folder}")
            for ident in found.stdout.split():
                podman("rm", "-f", "-t", "0", ident)
        tags = podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split()
        for tag in tags:
            if any(f"vsc-{f.name}-" in tag for f in self.folders):
                podman("rmi", "-f", tag)


def timed(h: Hosts, *args: str) -> float:
    start = time.perf_counter()
    result = h.cli(*args, timeout=900)
    took = time.perf_counter() - start
    if result.code != 0:
        raise SystemExit(f"kled {' '.join(args)} failed: {result}")
    return took


def kled_up_to_true(h: Hosts, folder: Path, name: str, *flags: str) -> tuple[float, float]:
    """(up to the first ``ssh true``, ``kled ws up`` alone)."""
    start = time.perf_counter()
    up = h.cli("ws", "up", str(folder), "--name", name, *flags, timeout=900)
    if up.code != 0:
        raise SystemExit(f"kled ws up {name} failed: {up}")
    returned = time.perf_counter() - start
    until_true(lambda: h.cli("ws", "ssh", name, "--", "true", timeout=120).code, "kled ws ssh")
    return time.perf_counter() - start, returned


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--warm-only", action="store_true", help="the warm container alone")
    args = parser.parse_args()
    if not REFERENCE.exists():
        raise SystemExit(f"{REFERENCE} is missing: run `make oracle`")
    if shutil.which("ssh") is None:
        raise SystemExit("kled ws ssh needs OpenSSH's ssh")
    team = f"wsb-{random.randint(10**5, 10**6)}"
    image = f"localhost/kled-bench-ws:{team}"
    results: dict[str, list[float]] = {}
    extra: dict[str, Any] = {}

    def record(key: str, value: float) -> None:
        results.setdefault(key, []).append(value)

    with tempfile.TemporaryDirectory(prefix="kled-bench-ws-") as tmp:
        root = Path(tmp)
        make_image(root / "image", image)
        reference = Reference(root)
        h = Hosts(root, ["--embedded-nats", "--nats-port", str(free_port())], team)
        try:
            h.start_server()
            h.cli.ok("team", "create", team)
            h.start_agent("bench")
            eventually(lambda: h.node_phase("bench") == "Ready", "node Ready")
            for run in range(args.runs):
                base = root / f"run{run}"
                kinds = (("cold", True), ("warm", False))
                for kind, cold in kinds[1:] if args.warm_only else kinds:
                    name = f"{kind}{run}"
                    mine = folder_with(base / "kled" / name, image, cold)
                    total, up = kled_up_to_true(h, mine, name)
                    record(f"container_{kind}", total)
                    record(f"container_{kind}_up_only", up)
                    theirs = folder_with(base / "ref" / name, image, cold)
                    record(f"reference_{kind}", reference.up_to_true(theirs))
                    if not cold:
                        again = ("ws", "up", str(mine), "--name", name)
                        record("container_up_unchanged", timed(h, *again))
                        record("container_stop", timed(h, "ws", "stop", name))
                        record("container_start", timed(h, "ws", "start", name))
                    h.cli.ok("ws", "delete", name, "--yes")
                if args.warm_only:
                    continue
                name = f"proc{run}"
                folder = folder_with(base / "kled" / name, image, cold=False)
                total, up = kled_up_to_true(h, folder, name, "--provider", "process")
                record("process", total)
                record("process_up_only", up)
                for _ in range(3):  # a running workspace: a session alone, and an exec
                    record("process_ssh_true", timed(h, "ws", "ssh", name, "--", "true"))
                    record("process_exec_true", timed(h, "ws", "exec", name, "--", "true"))
                record("process_stop", timed(h, "ws", "stop", name))
                record("process_start", timed(h, "ws", "start", name))
                h.cli.ok("ws", "delete", name, "--yes")
            if not args.warm_only:
                many = folder_with(root / "many" / "big", image, cold=False)
                for i in range(10_000):
                    sub = many / "files" / f"d{i // 500}"
                    sub.mkdir(parents=True, exist_ok=True)
                    (sub / f"f{i}.txt").write_text(f"file {i}\n")
                record("upload_10k_files", timed(h, "ws", "up", str(many), "--no-wait"))
                from kled.cli.workspaces import pack

                extra["archive_10k_files_bytes"] = len(pack(many))
                h.cli.ok("ws", "delete", "big", "--yes")
        finally:
            h.close([])
            reference.clean()
            for name in podman("ps", "-a", "-q", "--filter", "label=kled.workspace").stdout.split():
                if team in podman("inspect", "--format", "{{.Name}}", name).stdout:
                    podman("rm", "-f", "-t", "0", name)
            for tag in podman("images", "--format", "{{.Repository}}:{{.Tag}}").stdout.split():
                if team in tag:
                    podman("rmi", "-f", tag)
            podman("rmi", "-f", image)
    medians = {key: statistics.median(v) for key, v in results.items()}
    summary = {
        key: {"median_s": round(medians[key], 3), "runs": [round(x, 3) for x in v]}
        for key, v in results.items()
    }
    pairs = {
        "ratio_container_cold": ("container_cold", "reference_cold"),
        "ratio_container_warm": ("container_warm", "reference_warm"),
        "ratio_process": ("process", "reference_warm"),
    }
    ratios = {k: medians[a] / medians[b] for k, (a, b) in pairs.items() if a in medians}
    print(
        json.dumps(
            {
                "bench": "workspace",
                "peer": "@devcontainers/cli up --docker-path podman",
                "measured": "up to the first successful `true` in a session",
                **summary,
                **{k: round(v, 2) for k, v in ratios.items()},
                **extra,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
