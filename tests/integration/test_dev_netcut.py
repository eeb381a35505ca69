"""``kled dev`` across a cut network: the laptop's link to the control plane goes dark
mid-session and comes back.

The laptop is a network namespace of its own (a veth pair on 198.19.x.0/30) running
``kled dev`` against a real ``kled server`` listening on the host side; the cut is an
nftables table in the laptop's namespace dropping every packet to and from the server.
While it lasts, both sides are edited: a file written and one deleted in the replica's
folder, the app edited and a file added on the laptop. When the link is back, the session
reconnects by itself and resyncs: every edit arrives on the other side, nothing is lost,
nothing is duplicated (no conflict copies, the two trees hold the same files), the app
serves the edit made during the cut, and Ctrl-C restores the app.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml
from hostkit import Hosts, eventually
from test_dev_session import APP, MARK, MARK_VAR, Lab, _marked

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("dev")]

TEAM = f"cut-{random.randint(10**5, 10**6)}"
RUN = f"kdc{random.randint(10**4, 10**5)}"
OCTET = random.randint(0, 255)
HOST_IP, LAPTOP_IP = f"198.19.{OCTET}.1", f"198.19.{OCTET}.2"


def _skip_reason() -> str | None:
    if os.geteuid() != 0:
        return "needs root for a network namespace"
    missing = [t for t in ("ip", "nft") if shutil.which(t) is None]
    return f"needs {', '.join(missing)} (Debian: iproute2 nftables)" if missing else None


pytestmark.append(pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason())))


def _sh(*argv: str) -> None:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")


def _in_laptop(*argv: str) -> None:
    _sh("ip", "netns", "exec", RUN, *argv)


class Laptop:
    """``kled dev`` run inside the laptop's namespace, its output collected."""

    def __init__(self, lab: Lab) -> None:
        self.lines: list[str] = []
        env = {**lab.hosts.cli.env}
        env.update(KLED_SERVER=f"http://{HOST_IP}:{lab.hosts.port}", KLED_TOKEN=lab.hosts.token)
        from cli.clikit import KLED

        self.proc = subprocess.Popen(
            ["ip", "netns", "exec", RUN, str(KLED), "dev", "web", "-f", str(lab.config)],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env=env,
        )
        threading.Thread(target=self._collect, daemon=True).start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, text: str) -> bool:
        return any(text in line for line in self.lines)

    def serves(self, lab: Lab, message: str) -> None:
        def check() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"kled dev exited with {self.proc.returncode}")
            return lab.answer() == message

        try:
            eventually(check, f"the dev replica serves {message}")
        except AssertionError as err:
            raise AssertionError(f"{err}; kled dev said: {self.lines}") from None

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def cut() -> None:
    _in_laptop("nft", "add", "table", "inet", "kledcut")
    for chain, hook, field in (("out", "output", "daddr"), ("in", "input", "saddr")):
        spec = f"{{ type filter hook {hook} priority 0 ; }}"
        _in_laptop("nft", "add", "chain", "inet", "kledcut", chain, spec)
        _in_laptop("nft", "add", "rule", "inet", "kledcut", chain, "ip", field, HOST_IP, "drop")


def mend() -> None:
    _in_laptop("nft", "delete", "table", "inet", "kledcut")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    from cli.clikit import free_port

    root = tmp_path_factory.mktemp("devcut")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    # the laptop reaches the server through the veth; the cut is far shorter than the grace
    h.server_args += ["--listen", f"0.0.0.0:{h.port}"]
    h.cli.env["KLED_DEV_GRACE_SECONDS"] = "300"
    lab = Lab(h, free_port())
    try:
        _sh("ip", "netns", "add", RUN)
        _sh("ip", "link", "add", f"{RUN}h", "type", "veth", "peer", "name", f"{RUN}n")
        _sh("ip", "link", "set", f"{RUN}n", "netns", RUN)
        _sh("ip", "addr", "add", f"{HOST_IP}/30", "dev", f"{RUN}h")
        _sh("ip", "link", "set", f"{RUN}h", "up")
        _in_laptop("ip", "addr", "add", f"{LAPTOP_IP}/30", "dev", f"{RUN}n")
        _in_laptop("ip", "link", "set", f"{RUN}n", "up")
        _in_laptop("ip", "link", "set", "lo", "up")
        h.start_team_node("c1", context=True)
        original = root / "original.py"
        original.write_text(APP.format(message="original"))
        h.apply(
            {
                "apiVersion": "kled.io/v1",
                "kind": "App",
                "metadata": {
                    "name": "web",
                    "annotations": {"kled.io/dev-sync-roots": str(root / "remote")},
                },
                "spec": {
                    "command": ["python3", str(original), str(lab.port)],
                    "env": {MARK_VAR: MARK},
                    "ports": [{"name": "http", "port": 80, "targetPort": lab.port}],
                },
            }
        )
        eventually(lambda: lab.answer() == "original", "the app answers")
        lab.laptop.mkdir()
        lab.write_app("v1")
        (lab.laptop / "old.txt").write_text("deleted in the replica during the cut\n")
        (root / "remote").mkdir()
        rule = {"local": ".", "remote": str(root / "remote"), "exclude": ["__pycache__"]}
        command = ["python3", "app.py", str(lab.port)]
        target = {"sync": [rule], "command": command, "onChange": {"restart": ["**/*.py"]}}
        target["restartGraceSeconds"] = 2
        lab.config.write_text(yaml.safe_dump({"dev": {"web": target}}))
        yield lab
    finally:
        h.close([])
        procs = _marked()
        for p in procs:
            with contextlib.suppress(psutil.Error):
                p.kill()
        psutil.wait_procs(procs, timeout=10)
        subprocess.run(["ip", "link", "del", f"{RUN}h"], capture_output=True, check=False)
        subprocess.run(["ip", "netns", "del", RUN], capture_output=True, check=False)


def _files(root: Path) -> dict[str, str]:
    found: dict[str, Any] = {}
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if path.is_file() and "__pycache__" not in rel.parts and rel.name != "kled.yaml":
            found[str(rel)] = path.read_text()
    return found


def test_a_cut_link_mid_session_reconnects_and_resyncs_both_ways(lab: Lab) -> None:
    remote = lab.hosts.root / "remote"
    before = lab.spec()
    laptop = Laptop(lab)
    try:
        laptop.serves(lab, "v1")
        assert (remote / "old.txt").exists()
        cut()
        try:
            # the laptop notices its streams are gone; the control plane that its laptop
            # is, and stops the dev command it ran for it
            eventually(lambda: laptop.said("lost web's output"), "the laptop sees the cut")
            eventually(lambda: lab.answer() == "", "the dev command stopped by the cut")
            lab.write_app("edited during the cut")
            (lab.laptop / "from-laptop.txt").write_text("written on the laptop\n")
            (remote / "from-replica.txt").write_text("written in the replica\n")
            (remote / "old.txt").unlink()
        finally:
            mend()
        laptop.serves(lab, "edited during the cut")
        eventually(
            lambda: (
                (lab.laptop / "from-replica.txt").exists() and not (lab.laptop / "old.txt").exists()
            ),
            "the replica's edits reach the laptop",
        )
        eventually(lambda: _files(remote) == _files(lab.laptop), "both trees the same")
        assert (remote / "from-laptop.txt").read_text() == "written on the laptop\n"
        assert (lab.laptop / "from-replica.txt").read_text() == "written in the replica\n"
        assert not [p for p in _files(remote) if ".conflict-" in p], _files(remote)
        assert sorted(_files(lab.laptop)) == ["app.py", "from-laptop.txt", "from-replica.txt"]
    finally:
        code = laptop.stop()
    assert code == 0, laptop.lines
    assert laptop.said("app web restored"), laptop.lines
    assert lab.spec() == before
