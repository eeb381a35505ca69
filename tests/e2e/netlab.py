"""Hosts made of network namespaces, joined by an underlay bridge in 198.18.0.0/15.

``make_lab(n)`` builds ``n`` hosts ``kx-<run>-h1 … hN``, each with ``eth0`` at
``198.18.0.<i>/24`` on a bridge in ``kx-<run>-ul``, and tears everything down on exit even
when the test failed: processes the lab started, every wireguard-go and header router
running in one of its namespaces (found by namespace inode, so nothing else on the machine
is touched), the namespaces of the hosts and of the team gateways and pods named after
them, and stale WireGuard control sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
import pytest

PROBE = str(Path(__file__).with_name("netprobe.py"))
TOOLS = ("ip", "wg", "wireguard-go", "nft")


def netns_skip_reason() -> str | None:
    """Why the namespace tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    missing = [t for t in TOOLS if shutil.which(t) is None]
    if missing:
        return (
            f"needs {', '.join(missing)} (Debian: iproute2 wireguard-tools wireguard-go nftables)"
        )
    if not os.path.exists("/dev/net/tun"):
        return "needs /dev/net/tun for wireguard-go"
    return None


def sh(*argv: str, check: bool = True) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {done.stderr.strip()}")
    return done.stdout


@dataclass
class Lab:
    run: str
    hosts: list[str]
    underlay: str
    state_dir: Path
    procs: list[subprocess.Popen[str]] = field(default_factory=list)
    ifnames: set[str] = field(default_factory=set)

    def host(self, i: int) -> str:
        """The namespace of host ``i`` (1-based)."""
        return self.hosts[i - 1]

    @staticmethod
    def underlay_ip(i: int) -> str:
        return f"198.18.0.{i}"

    def owns(self, ns: str) -> bool:
        prefix = f"kx-{self.run}-"
        return ns.startswith((prefix, f"kt-{prefix}", f"kp-{prefix}"))

    def spawn(self, ns: str, *argv: str, ready: str | None = None) -> subprocess.Popen[str]:
        """Start a process in ``ns``, stopped at teardown; wait for a ``ready`` line."""
        proc = subprocess.Popen(
            ["ip", "netns", "exec", ns, *argv],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
            start_new_session=True,
        )
        self.procs.append(proc)
        if ready is not None:
            assert proc.stdout is not None
            line = proc.stdout.readline().strip()
            if line != ready:
                raise RuntimeError(f"{argv} in {ns} did not start: {line!r}")
        return proc

    def serve(self, ns: str, name: str, tcp: int, udp: int, bind: str = "0.0.0.0") -> None:
        self.spawn(
            ns, sys.executable, PROBE, "serve", name, bind, str(tcp), str(udp), ready="ready"
        )

    def stop(self, proc: subprocess.Popen[str]) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc.stdout:
            proc.stdout.close()

    async def ask(
        self,
        ns: str,
        proto: str,
        ip: str,
        port: int,
        count: int = 1,
        timeout: float = 3.0,
        sport: int = 0,
    ) -> list[str]:
        """Answers to ``count`` requests from inside ``ns`` (``!Error`` for failures);
        UDP from source port ``sport`` when given."""
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, PROBE, "ask",
            proto, ip, str(port), str(count), str(timeout), str(sport),
            stdout=asyncio.subprocess.PIPE,
        )  # fmt: skip
        out, _ = await proc.communicate()
        answers: list[str] = json.loads(out)
        return answers

    async def eventually(
        self, probe: Callable[[], object], attempts: int = 40, pause: float = 0.5
    ) -> None:
        """Retry an async check until it passes (the first WireGuard handshake takes a while);
        a deadline of attempts, not a wall-clock bound on speed."""
        for i in range(attempts):
            try:
                result = probe()
                if asyncio.iscoroutine(result):
                    await result
                return
            except AssertionError:
                if i == attempts - 1:
                    raise
                await asyncio.sleep(pause)


def _ns_inode(ns: str) -> int | None:
    try:
        return os.stat(f"/run/netns/{ns}").st_ino
    except OSError:
        return None


def _wireguard_in(inodes: set[int]) -> list[psutil.Process]:
    """wireguard-go and header routers (which the gateway layer starts, not the lab)."""
    found = []
    for proc in psutil.process_iter(["name", "cmdline"]):
        cmdline = proc.info.get("cmdline") or []
        router = "kled.agent.net.header_router" in cmdline
        if proc.info.get("name") != "wireguard-go" and not router:
            continue
        try:
            link = os.readlink(f"/proc/{proc.pid}/ns/net")
        except OSError:
            continue
        if int(link.split("[")[1].rstrip("]")) in inodes:
            found.append(proc)
    return found


def destroy_lab(lab: Lab) -> None:
    for proc in lab.procs:
        lab.stop(proc)
    names = [n for n in sh("ip", "netns", "list").split() if lab.owns(n)]
    inodes = {i for i in (_ns_inode(n) for n in names) if i is not None}
    # SIGTERM first: wireguard-go then removes its own control socket.
    wgs = _wireguard_in(inodes)
    for wg in wgs:
        with contextlib.suppress(psutil.NoSuchProcess):
            wg.terminate()
    _, alive = psutil.wait_procs(wgs, timeout=5)
    for wg in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            wg.kill()
    psutil.wait_procs(alive, timeout=5)
    # Gateways and pods first, hosts and the underlay last.
    for ns in sorted(names, key=lambda n: n.startswith("kx-")):
        sh("ip", "netns", "delete", ns, check=False)
        shutil.rmtree(f"/etc/netns/{ns}", ignore_errors=True)
    for ifname in lab.ifnames:
        Path(f"/var/run/wireguard/{ifname}.sock").unlink(missing_ok=True)
    shutil.rmtree(lab.state_dir, ignore_errors=True)


@contextlib.contextmanager
def make_lab(n: int, state_dir: Path) -> Iterator[Lab]:
    reason = netns_skip_reason()
    if reason:
        pytest.skip(reason)
    run = secrets.token_hex(2)
    lab = Lab(run=run, hosts=[f"kx-{run}-h{i}" for i in range(1, n + 1)],
              underlay=f"kx-{run}-ul", state_dir=state_dir)  # fmt: skip
    try:
        sh("ip", "netns", "add", lab.underlay)
        sh("ip", "-n", lab.underlay, "link", "add", "ul0", "type", "bridge")
        sh("ip", "-n", lab.underlay, "link", "set", "ul0", "up")
        for i, host in enumerate(lab.hosts, start=1):
            sh("ip", "netns", "add", host)
            sh("ip", "-n", host, "link", "set", "lo", "up")
            port = f"u{i}"
            sh("ip", "-n", lab.underlay, "link", "add", port, "type", "veth",
               "peer", "name", "eth0", "netns", host)  # fmt: skip
            sh("ip", "-n", lab.underlay, "link", "set", port, "master", "ul0", "up")
            sh("ip", "-n", host, "addr", "add", f"{lab.underlay_ip(i)}/24", "dev", "eth0")
            sh("ip", "-n", host, "link", "set", "eth0", "up")
        yield lab
    finally:
        destroy_lab(lab)
