"""Intercepts under load: how fast they switch, and what the header router costs plain
traffic (issue 5, "Measure").

Switch latency (``switch_latency``): the full stack of tests/e2e/agentlab.py: the control
plane, two agents on namespace hosts, a laptop host joined with ``kled device join``, an app
``api`` with one replica on node1 and a caller pod on node2 that asks the app's service IP in
a tight loop, one fresh connection per request, logging when each answer came and from whom
(on CLOCK_MONOTONIC, which every namespace shares). For each switch: from ``kled intercept
start`` returning to the first answer from the laptop's process (``to_device``), and from
``kled intercept stop`` returning to the first answer from the replica (``to_replica``);
p50/p99 over 20 switches (5 with ``--quick``), with how long the CLI itself took.

Personal-intercept routing: one host made of network namespaces, with a real team gateway
(namespace, bridge, nft rules, header router) and three pods on its bridge: a replica, a
stand-in for a developer's device, and a client running ``wrk``. The same HTTP responder
(a small asyncio keep-alive server, ``--serve``) answers in the replica and the device.
``wrk`` measures, one after the other in the same run:

- ``direct``: the client to the replica's pod IP (no NAT, no router);
- ``service_dnat``: the service IP on a port without personal intercepts (nft DNAT only);
- ``router_replica``: the service IP on the personally intercepted port, no header: through
  the header router to the replica, the path every other caller of the app now takes;
- ``router_device``: the same with the developer's header: through the router to the device.

Each path is measured in three interleaved rounds and reports its median round (and the
requests/s of every round): requests/s, p50 and p99 latency, and the ratios of ``router_replica`` to
``direct`` and to ``service_dnat``; then ``direct`` and ``router_replica`` once more over a
single connection (``one_connection``: the latency one caller feels, and the p50 the router
adds to it). All of it shares this machine's cores with ``wrk`` and the
responder, so the ratios, not the absolute figures, are what carries over.

Needs root, ``ip``, ``nft``, ``wireguard-go``, ``wg``, ``wrk`` and ``curl``.

    python bench/intercept.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
# The agent lab of the end-to-end tests (and the servers fixture it builds on).
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from kled.agent.net import gateway, pods  # noqa: E402 - after the path set-up
from kled.resources.netstate import (  # noqa: E402
    PersonalIntercept,
    Service,
    ServicePort,
    TeamNetwork,
)

TEAM = "bench"
SVC_IP = "100.90.1.10"
REPLICA_IP, DEVICE_IP, CLIENT_IP = "100.90.16.11", "100.90.16.12", "100.90.16.13"
ROUTED, PLAIN, APP = 80, 81, 8080
HEADER = ("x-kled-dev", "me")


# ---- the responder (runs inside a pod: --serve NAME PORT) -----------------------------


def serve(name: str, port: int) -> None:
    body = name.encode()
    response = b"HTTP/1.1 200 OK\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)

    class Responder(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
            self.pending = b""

        def data_received(self, data: bytes) -> None:
            # wrk sends bodiless GETs: one response per complete head.
            self.pending += data
            count = self.pending.count(b"\r\n\r\n")
            if count:
                self.pending = self.pending[self.pending.rfind(b"\r\n\r\n") + 4 :]
                self.transport.write(response * count)

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            Responder, "0.0.0.0", port, backlog=1024
        )
        print("ready", flush=True)
        await server.serve_forever()

    try:
        import uvloop  # what the header router runs on too

        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


# ---- the lab ----------------------------------------------------------------------


def _team(service: Service) -> TeamNetwork:
    return TeamNetwork(
        team=TEAM,
        block="100.90.0.0/16",
        mesh_ip="100.90.0.1",
        pod_subnet="100.90.16.0/24",
        listen_port=51899,
        services=(service,),
    )


def _service() -> Service:
    return Service(
        name="api",
        env="dev",
        ip=SVC_IP,
        ports=(ServicePort(port=ROUTED, target_port=APP), ServicePort(port=PLAIN, target_port=APP)),
        backends=(REPLICA_IP,),
        personal=(
            PersonalIntercept(
                header=HEADER[0], value=HEADER[1], target_ip=DEVICE_IP, port_map={ROUTED: APP}
            ),
        ),
    )


@contextlib.asynccontextmanager
async def lab() -> AsyncIterator[dict[str, str]]:
    """A host namespace with the team gateway and three pods; everything removed on exit."""
    host = f"kb-{secrets.token_hex(2)}-h1"
    state = Path(tempfile.mkdtemp(prefix="kled-bench-"))
    procs: list[asyncio.subprocess.Process] = []
    try:
        subprocess.run(["ip", "netns", "add", host], check=True)
        subprocess.run(["ip", "-n", host, "link", "set", "lo", "up"], check=True)
        gw = await gateway.ensure_team_gateway(host, _team(_service()), state_dir=state)
        names = {}
        for name, ip in (("replica", REPLICA_IP), ("device", DEVICE_IP), ("client", CLIENT_IP)):
            names[name] = (await pods.ensure_pod_netns(name, TEAM, ip, gw)).netns
        for name in ("replica", "device"):
            proc = await asyncio.create_subprocess_exec(
                "ip", "netns", "exec", names[name], sys.executable, __file__, "--serve", name,
                str(APP), stdout=asyncio.subprocess.PIPE, start_new_session=True,
            )  # fmt: skip
            procs.append(proc)
            assert proc.stdout is not None
            if (await proc.stdout.readline()).strip() != b"ready":
                raise RuntimeError(f"the responder in {name} did not start")
        yield names
    finally:
        for proc in procs:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
        await gateway.teardown_team_gateway(host, TEAM, state_dir=state, forget_key=True)
        subprocess.run(["ip", "netns", "delete", host], check=False)
        shutil.rmtree(state, ignore_errors=True)


# ---- wrk --------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _ms(text: str) -> float:
    value, unit = re.fullmatch(r"([\d.]+)(us|ms|s)", text).groups()  # type: ignore[union-attr]
    return round(float(value) * _UNITS[unit], 3)


def wrk(
    netns: str,
    url: str,
    seconds: int,
    header: tuple[str, str] | None = None,
    connections: int = 32,
) -> dict[str, Any]:
    threads = min(2, connections)
    argv = ["ip", "netns", "exec", netns, "wrk", f"-t{threads}", f"-c{connections}",
            f"-d{seconds}s", "--latency"]  # fmt: skip
    if header:
        argv += ["-H", f"{header[0]}: {header[1]}"]
    out = subprocess.run([*argv, url], capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    pct = dict(re.findall(r"^\s+(50|99)%\s+(\S+)", out, re.MULTILINE))
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: .*", out)
    return {
        "requests_per_s": round(rps),
        "p50_ms": _ms(pct["50"]),
        "p99_ms": _ms(pct["99"]),
        "errors": errors.group(0) if errors else None,
    }


def _answer(netns: str, url: str, header: tuple[str, str] | None = None) -> str:
    """Who answers ``url`` (checks that each measured path goes where it should)."""
    argv = ["ip", "netns", "exec", netns, "curl", "-s", "--max-time", "5"]
    if header:
        argv += ["-H", f"{header[0]}: {header[1]}"]
    return subprocess.run([*argv, url], capture_output=True, text=True, check=False).stdout


def _median_run(runs: list[dict[str, Any]]) -> dict[str, Any]:
    by_rps = sorted(runs, key=lambda r: r["requests_per_s"])
    middle = dict(by_rps[len(by_rps) // 2])
    middle["rounds_requests_per_s"] = [r["requests_per_s"] for r in runs]
    return middle


async def bench_personal_routing(seconds: int, rounds: int = 3) -> dict[str, Any]:
    paths = {
        "direct": (f"http://{REPLICA_IP}:{APP}/", None, "replica"),
        "service_dnat": (f"http://{SVC_IP}:{PLAIN}/", None, "replica"),
        "router_replica": (f"http://{SVC_IP}:{ROUTED}/", None, "replica"),
        "router_device": (f"http://{SVC_IP}:{ROUTED}/", HEADER, "device"),
    }
    async with lab() as ns:
        for name, (url, header, who) in paths.items():
            answer = _answer(ns["client"], url, header)
            if answer != who:
                raise RuntimeError(f"{name}: {url} answered {answer!r}, expected {who!r}")
        # Rounds interleave the paths, so that a burst of load from elsewhere on the machine
        # hits all of them alike; each path reports its median round.
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name in paths}
        for _ in range(rounds):
            for name, (url, header, _) in paths.items():
                runs[name].append(await asyncio.to_thread(wrk, ns["client"], url, seconds, header))
        results = {name: _median_run(r) for name, r in runs.items()}
        # One connection, one request at a time: the latency a single caller feels, which
        # is what a developer's colleagues notice (the loaded runs above measure capacity).
        results["one_connection"] = {
            name: await asyncio.to_thread(wrk, ns["client"], url, seconds, header, 1)
            for name, (url, header, _) in paths.items()
            if name in ("direct", "router_replica")
        }
    direct, dnat, routed = results["direct"], results["service_dnat"], results["router_replica"]
    results["ratio"] = {
        "router_vs_direct_rps": round(routed["requests_per_s"] / direct["requests_per_s"], 3),
        "router_vs_service_dnat_rps": round(routed["requests_per_s"] / dnat["requests_per_s"], 3),
        "router_vs_direct_p99": round(routed["p99_ms"] / max(direct["p99_ms"], 1e-3), 2),
        "one_connection_added_p50_ms": round(
            results["one_connection"]["router_replica"]["p50_ms"]
            - results["one_connection"]["direct"]["p50_ms"],
            3,
        ),
    }
    results["setup"] = {
        "wrk": "2 threads, 32 keep-alive connections; one_connection: 1 thread, 1 connection",
        "seconds_each": seconds,
        "rounds": rounds,
        "load_average_1m": round(os.getloadavg()[0], 2),
        "responder": "asyncio (uvloop) keep-alive HTTP/1.1 server, one process per pod",
        "cpus": os.cpu_count(),
    }
    return results


# ---- switch latency (the full stack) ---------------------------------------------

#: the caller's loop, run in its pod: one request per fresh connection (conntrack keeps an
#: established connection where it was DNATed), each answer logged with its arrival time
CALLER = """
import socket, sys, time
ip, port = sys.argv[1], int(sys.argv[2])
print("ready", flush=True)
while True:
    try:
        with socket.create_connection((ip, port), timeout=0.5) as s:
            s.sendall(b"GET / HTTP/1.0\\r\\nHost: x\\r\\n\\r\\n")
            data = b""
            while chunk := s.recv(4096):
                data += chunk
        answer = data.split(b"\\r\\n\\r\\n", 1)[-1].decode(errors="replace") or "!empty"
    except OSError as exc:
        answer = "!" + type(exc).__name__
        time.sleep(0.005)
    print(f"{time.monotonic():.6f} {answer}", flush=True)
"""


class Answers:
    """The caller's log, read as it comes: (monotonic time, who answered)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self._lines: list[tuple[float, str]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(proc,), daemon=True).start()

    def _read(self, proc: subprocess.Popen[str]) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            stamp, _, answer = line.strip().partition(" ")
            with self._cond:
                self._lines.append((float(stamp), answer))
                self._cond.notify_all()

    def first_after(self, since: float, prefix: str, timeout: float = 60.0) -> float:
        """When the first answer from ``prefix`` at or after ``since`` came."""
        deadline = time.monotonic() + timeout
        with self._cond:
            seen = 0
            while True:
                for at, answer in self._lines[seen:]:
                    if at >= since and answer.startswith(prefix):
                        return at
                seen = len(self._lines)
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self._lines[-3:]
                    raise RuntimeError(f"no answer from {prefix!r} in {timeout}s (last: {last})")
                self._cond.wait(left)


def _pct(values: list[float], p: float) -> float:
    """Nearest-rank percentile (of 20 values, p99 is the slowest)."""
    ordered = sorted(values)
    return round(ordered[max(0, math.ceil(p * len(ordered)) - 1)] * 1000, 1)


def _summary(values: list[float]) -> dict[str, Any]:
    return {"p50_ms": _pct(values, 0.50), "p99_ms": _pct(values, 0.99),
            "max_ms": _pct(values, 1.0), "min_ms": _pct(sorted(values)[:1], 1.0)}  # fmt: skip


def switch_run(switches: int) -> dict[str, Any]:
    from agentlab import IDLE_CMD, eventually, lab_mesh, laptop_kled, serve_cmd

    from kled.agent.net import device

    with tempfile.TemporaryDirectory(prefix="kled-bench-switch-") as tmp:
        root = Path(tmp)
        # Hosts 1 and 2 run agents, host 3 is the laptop; everything goes with the lab.
        with lab_mesh(root, 3, "benchswitch") as mesh:
            try:
                return _switches(mesh, root, switches, IDLE_CMD, serve_cmd(), eventually,
                                 laptop_kled, device.device_ifname("a", "laptop"))  # fmt: skip
            except BaseException:
                print(mesh.dump_logs(), file=sys.stderr)
                raise


def _switches(
    mesh: Any, root: Path, switches: int, idle: list[str], serve_cmd: list[str],
    eventually: Any, laptop_kled: Any, ifname: str,
) -> dict[str, Any]:  # fmt: skip
    for i in (1, 2):
        mesh.start_agent(i)
    mesh.team("a", "100.90.0.0/16")
    token = mesh.user_token("a", "alice")
    ports = [{"port": 80, "targetPort": 8080}]
    mesh.app("a", "api", {"command": serve_cmd, "ports": ports,
                          "nodeSelector": {"lab.kled.io/node": "node1"}})  # fmt: skip
    mesh.app("a", "client", {"command": idle, "nodeSelector": {"lab.kled.io/node": "node2"}})
    service_ip = eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    caller = mesh.pod_ns(2, "a", "a.dev.client.0")
    eventually(
        lambda: all(a.startswith("api-") for a in mesh.ask(caller, service_ip, 80, count=2)),
        "the replica answering the caller",
    )
    home = root / "laptop"
    mesh.lab.ifnames.add(ifname)
    joined = laptop_kled(mesh, home, token, "device", "join", "laptop", host=3)
    if joined.returncode != 0:
        raise RuntimeError(f"kled device join: {joined.stderr}")
    laptop_ip = mesh.api("GET", "/api/v1/teams/a/devices/laptop")["status"]["ip"]
    mesh.lab.serve(mesh.lab.host(3), "laptop", 7070, 7071, bind=laptop_ip)
    answers = Answers(
        mesh.lab.spawn(caller, sys.executable, "-c", CALLER, service_ip, "80", ready="ready")
    )
    start = ["intercept", "start", "api", "-e", "dev", "--to", "laptop", "--port", "80:7070"]
    stop = ["intercept", "stop", "api", "-e", "dev"]
    to_device: list[float] = []
    to_replica: list[float] = []
    cli: list[float] = []
    for _ in range(switches):
        for argv, where, into in ((start, "laptop", to_device), (stop, "api-", to_replica)):
            began = time.monotonic()
            done = laptop_kled(mesh, home, token, *argv, host=3)
            returned = time.monotonic()
            if done.returncode != 0:
                raise RuntimeError(f"kled {' '.join(argv)}: {done.stderr}")
            cli.append(returned - began)
            into.append(answers.first_after(returned, where) - returned)
    return {
        "to_device": _summary(to_device),
        "to_replica": _summary(to_replica),
        "cli_command": _summary(cli),
        "setup": {
            "switches": switches,
            "path": "caller pod on node2 → service IP → node2's team gateway → WireGuard → "
            "laptop (intercepted) or node1's replica",
            "caller": "one TCP connection per request, back to back",
            "load_average_1m": round(os.getloadavg()[0], 2),
            "cpus": os.cpu_count(),
        },
    }


async def bench_switch_latency(quick: bool) -> dict[str, Any]:
    return await asyncio.to_thread(switch_run, 5 if quick else 20)


async def bench_personal(quick: bool) -> dict[str, Any]:
    return await bench_personal_routing(2 if quick else 5)


#: One entry per measurement of issue 5.
SECTIONS: dict[str, Callable[[bool], Coroutine[Any, Any, dict[str, Any]]]] = {
    "switch_latency": bench_switch_latency,
    "personal_routing": bench_personal,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--quick", action="store_true", help="5 switches instead of 20; 2 s per wrk run, not 5 s"
    )
    parser.add_argument("--serve", nargs=2, metavar=("NAME", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root for network namespaces"}))
        return 0
    tools = ("ip", "nft", "wg", "wireguard-go", "wrk", "curl", "nsenter")
    missing = [t for t in tools if not shutil.which(t)]
    if missing:
        print(json.dumps({"skipped": f"needs {', '.join(missing)}"}))
        return 0
    report = {name: asyncio.run(run(args.quick)) for name, run in SECTIONS.items()}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
