"""Intercepts under load: what the header router costs plain traffic (issue 5, "Measure").

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

Needs root, ``ip``, ``nft``, ``wireguard-go``, ``wg`` and ``wrk``.

    python bench/intercept.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Callable, Coroutine
from pathlib import Path
from typing import Any, cast

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from kled.agent.net import gateway, pods
from kled.resources.netstate import PersonalIntercept, Service, ServicePort, TeamNetwork

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


#: One entry per measurement of issue 5. The switch latency (`kled intercept start` returning
#: → first request served by the device, and back on stop) joins here once the control plane
#: drives intercepts end to end.
SECTIONS: dict[str, Callable[[int], Coroutine[Any, Any, dict[str, Any]]]] = {
    "personal_routing": bench_personal_routing,
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="2 s per wrk run instead of 5 s")
    parser.add_argument("--serve", nargs=2, metavar=("NAME", "PORT"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve[0], int(args.serve[1]))
        return 0
    if os.geteuid() != 0:
        print(json.dumps({"skipped": "needs root for network namespaces"}))
        return 0
    missing = [t for t in ("ip", "nft", "wg", "wireguard-go", "wrk", "curl") if not shutil.which(t)]
    if missing:
        print(json.dumps({"skipped": f"needs {', '.join(missing)}"}))
        return 0
    seconds = 2 if args.quick else 5
    report = {name: asyncio.run(run(seconds)) for name, run in SECTIONS.items()}
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
