"""The mesh's control side under load: netmap sizes and deltas, DNS against dnsmasq.

Netmap: one team of N peers (one in twenty a node, the rest devices), for N = 1,000 and
10,000: the time to compute every peer's full map (what a control plane that rebuilds
maps pays at every change), and the time and size (JSON) of the deltas for one device and
for one node joining at 10,000 peers (what Kled pays). NetBird's published figure (4.0 s to
compute maps for 5,000 peers, netbirdio/netbird PR #2363) is printed beside it as a
reference, not measured here.

Delivery: the same population, and one device then one node joining, written through a
real ``nats-server`` (embedded, on a free port) the way the control plane does it: one
key of the peers bucket per (recipient node, peer) touched (``kled.control.peersync``).
Reports the keys written, bytes on the wire (subject + value), the time until every write
is acknowledged, and the time until one node's watch has seen the new peer; beside it,
the bytes a design that resends each recipient's whole peer set would send.

DNS: ``dnsperf`` against Kled's DNS server (in its own process) and against ``dnsmasq``
serving the same records (``host-record``/``srv-host``), one after the other in the same
run, with the same query file (A, SRV and NXDOMAIN names). Reports queries/s, mean and p99
latency, and the ratio Kled/dnsmasq.

Throughput: two hosts of tests/e2e/netlab.py (network namespaces on a veth underlay in
198.18.0.0/15), each with a team gateway built by the agent's network layer
(``kled.agent.net``: wireguard-go between the gateways) and one pod. ``iperf3`` runs pod to
pod over the mesh and host to host over the plain underlay, in the same run, each way
(``-R`` for the reverse); it reports Mbit/s and the ratio mesh/underlay. Needs root,
iperf3 and wireguard-go (the reason is in the JSON otherwise); the namespaces are removed
even when a step fails.

    python bench/mesh.py [--quick] [--only netmap|delivery|dns|throughput]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import importlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from kled.control.netmap import Netmap, Peer

E2E = Path(__file__).resolve().parent.parent / "tests" / "e2e"

NETBIRD_REFERENCE = {
    "source": "NetBird's published figure (netbirdio/netbird PR #2363), not measured here",
    "peers": 5000,
    "seconds_to_compute_maps": 4.0,
}


# ---- netmap ---------------------------------------------------------------------------


def _key(n: int) -> str:
    return base64.b64encode(n.to_bytes(32, "big")).decode()


def _peer(n: int, kind: str) -> Peer:
    ip = f"100.64.{n // 250}.{n % 250 + 1}"
    routes = (f"{ip}/32", f"100.65.{n % 256}.0/24") if kind == "node" else (f"{ip}/32",)
    return Peer(
        id=f"acme/{kind}/p{n}",
        kind="node" if kind == "node" else "device",
        team="acme",
        public_key=_key(n),
        mesh_ip=ip,
        endpoint=f"198.18.{n // 250}.{n % 250 + 1}:51820" if kind == "node" else None,
        allowed_ips=routes,
    )


def _population(count: int) -> list[Peer]:
    nodes = max(2, count // 20)
    return [_peer(n, "node" if n < nodes else "device") for n in range(count)]


def _delta_bytes(deltas: dict[str, Any]) -> int:
    return len(json.dumps({rid: d.as_dict() for rid, d in deltas.items()}).encode())


def bench_netmap(count: int) -> dict[str, Any]:
    peers = _population(count)
    netmap = Netmap()
    started = time.perf_counter()
    for p in peers:
        netmap.load(p)
    load_s = time.perf_counter() - started

    started = time.perf_counter()
    entries = sum(len(netmap.full_map(p.id)) for p in peers)
    all_maps_s = time.perf_counter() - started
    result: dict[str, Any] = {
        "peers": count,
        "nodes": sum(1 for p in peers if p.kind == "node"),
        "load_seconds": round(load_s, 4),
        "all_full_maps_seconds": round(all_maps_s, 4),
        "all_full_maps_entries": entries,
    }
    for kind in ("device", "node"):
        newcomer = _peer(count + 1, kind)
        started = time.perf_counter()
        deltas = netmap.join(newcomer)
        join_s = time.perf_counter() - started
        result[f"join_one_{kind}"] = {
            "seconds": round(join_s, 6),
            "recipients": len(deltas),
            "delta_bytes_json": _delta_bytes(deltas),
        }
        netmap.leave(newcomer.id)
    return result


# ---- delivery through the Message Office ----------------------------------------------


class _Counting:
    """The Message Office's peers bucket, counting what crosses the wire."""

    def __init__(self, office: Any) -> None:
        self.office = office
        self.bytes = 0

    async def put_peer(self, key: str, peer: Any) -> int:
        self.bytes += len(self.office.subjects.peer_subject(key)) + len(peer.model_dump_json())
        return int(await self.office.put_peer(key, peer))

    async def delete_peer(self, key: str) -> int:
        self.bytes += len(self.office.subjects.peer_subject(key))
        return int(await self.office.delete_peer(key))

    async def peer_entries(self) -> dict[str, bytes]:
        return dict(await self.office.peer_entries())


async def _deliver(count: int) -> dict[str, Any]:
    from kled.bus.embedded import EmbeddedNats
    from kled.bus.office import ConnectOptions, MessageOffice
    from kled.control.hostnet import wg_peer
    from kled.control.peersync import PeerPublisher

    peers = _population(count)
    with tempfile.TemporaryDirectory(prefix="kled-bench-") as tmp:
        server = EmbeddedNats(Path(tmp) / "nats", port=_free_port())
        await server.start()
        try:
            options = ConnectOptions(
                url=server.url, user=server.control_user, password=server.control_password
            )
            async with MessageOffice(options) as office, MessageOffice(options) as agent:
                await office.ensure_streams()
                bucket = _Counting(office)
                publisher = PeerPublisher(bucket)
                await publisher.start(Netmap())  # the bucket as it stands: empty
                netmap = Netmap()
                for p in peers:
                    netmap.load(p)  # the mesh as it stands, as if already delivered
                watched = next(p for p in peers if p.kind == "node").id.rsplit("/", 1)[1]
                result: dict[str, Any] = {"peers": count, "nodes": count // 20}
                for kind in ("device", "node"):
                    newcomer = _peer(count + 1, kind)
                    wanted = f"{kind}-p{count + 1}"
                    seen = asyncio.Event()

                    async def watch(name: str = wanted, event: asyncio.Event = seen) -> None:
                        async for change in agent.watch_peers(watched, heartbeat=1.0):
                            if change is not None and change.name == name:
                                event.set()

                    watcher = asyncio.create_task(watch())
                    await asyncio.sleep(0.5)  # the watch's consumer is in place
                    writes, sent = publisher.writes, bucket.bytes
                    started = time.perf_counter()
                    deltas = netmap.join(newcomer)
                    publisher.apply(deltas, netmap)
                    await asyncio.wait_for(seen.wait(), 120)
                    seen_s = time.perf_counter() - started
                    await asyncio.wait_for(publisher.settled(), 600)
                    acked_s = time.perf_counter() - started
                    watcher.cancel()
                    recipients = [r for r in deltas if "/node/" in r]
                    one_map = [wg_peer(p) for p in netmap.full_map(recipients[0])]
                    whole = sum(len(p.model_dump_json()) for p in one_map if p is not None)
                    result[f"join_one_{kind}"] = {
                        "keys_written": publisher.writes - writes,
                        "bytes_sent": bucket.bytes - sent,
                        "seconds_until_all_acknowledged": round(acked_s, 4),
                        "seconds_until_a_node_saw_it": round(seen_s, 4),
                        "recipient_nodes": len(recipients),
                        "whole_peer_sets_bytes_instead": whole * len(recipients),
                    }
                await publisher.stop()
        finally:
            await server.stop()
    return result


def bench_delivery(count: int) -> dict[str, Any]:
    return asyncio.run(_deliver(count))


# ---- DNS ------------------------------------------------------------------------------


def _free_port() -> int:
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u, socket.socket() as t:
            u.bind(("127.0.0.1", 0))
            port = int(u.getsockname()[1])
            try:
                t.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def _records(apps: int, devices: int, nodes: int) -> dict[str, Any]:
    return {
        "apps": [
            [f"env{i % 2}", f"app{i}", f"100.64.{4 + i // 250}.{i % 250 + 1}"] for i in range(apps)
        ],
        "devices": [[f"dev{i}", f"100.64.0.{i % 250 + 1}"] for i in range(devices)],
        "nodes": [[f"node{i}", f"100.64.3.{i + 1}"] for i in range(nodes)],
    }


ZONE = "acme.kled.internal"


def _queries(records: dict[str, Any]) -> list[str]:
    lines = []
    for env, app, _ in records["apps"]:
        lines.append(f"{app}.{env}.{ZONE} A")
        lines.append(f"_http._tcp.{app}.{env}.{ZONE} SRV")
    lines += [f"{name}.{ZONE} A" for name, _ in records["devices"]]
    lines += [f"{name}.nodes.{ZONE} A" for name, _ in records["nodes"]]
    lines += [f"missing{i}.{ZONE} A" for i in range(len(lines) // 10)]
    return lines


def _dnsmasq_conf(records: dict[str, Any], port: int) -> str:
    lines = [
        "no-resolv",
        "no-hosts",
        f"port={port}",
        "listen-address=127.0.0.1",
        "bind-interfaces",
        f"local=/{ZONE}/",
        "cache-size=10000",
    ]
    for env, app, ip in records["apps"]:
        host = f"{app}.{env}.{ZONE}"
        lines.append(f"host-record={host},{ip},5")
        lines.append(f"srv-host=_http._tcp.{host},{host},80")
    lines += [f"host-record={n}.{ZONE},{ip},5" for n, ip in records["devices"]]
    lines += [f"host-record={n}.nodes.{ZONE},{ip},5" for n, ip in records["nodes"]]
    return "\n".join(lines) + "\n"


def _serve_kled(records_file: str, port: int) -> None:
    """The Kled DNS server, run in a child process of the benchmark."""
    from kled.dns.records import AppRecord, NamedPort, RecordSet
    from kled.dns.server import DnsServer

    data = json.loads(Path(records_file).read_text())
    rs = RecordSet(
        apps={(env, app): AppRecord(ip, (NamedPort("http", 80),)) for env, app, ip in data["apps"]},
        devices=dict(data["devices"]),
        nodes=dict(data["nodes"]),
    )

    async def main() -> None:
        server = DnsServer(("127.0.0.1", port), upstreams=[])
        server.apply("acme", rs)
        await server.start()
        print("ready", flush=True)
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        await stop.wait()
        await server.stop()

    asyncio.run(main())


def _wait_ready(port: int) -> None:
    for _ in range(200):
        out = subprocess.run(
            [
                "dig",
                "@127.0.0.1",
                "-p",
                str(port),
                "+short",
                "+time=1",
                "+tries=1",
                f"node0.nodes.{ZONE}",
            ],
            capture_output=True,
            text=True,
            check=False,
        )
        # dig prints its errors on stdout too: only an address means the server is up.
        if out.stdout.strip() and not out.stdout.startswith(";;"):
            return
        time.sleep(0.05)
    raise RuntimeError(f"no DNS server answered on port {port}")


def _dnsperf(port: int, queries: Path, seconds: int) -> dict[str, Any]:
    out = subprocess.run(
        [
            "dnsperf",
            "-s",
            "127.0.0.1",
            "-p",
            str(port),
            "-d",
            str(queries),
            "-l",
            str(seconds),
            "-c",
            "4",
            "-q",
            "64",
            "-v",
        ],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    latencies = sorted(_latencies(out))
    qps = next(
        (float(line.split()[-1]) for line in out.splitlines() if "Queries per second" in line), 0.0
    )
    lost = next(
        (line.split(":")[1].strip() for line in out.splitlines() if "Queries lost" in line), "?"
    )
    p99 = latencies[int(len(latencies) * 0.99) - 1] if latencies else None
    return {
        "queries_per_second": round(qps, 1),
        "mean_latency_ms": round(statistics.fmean(latencies) * 1000, 3) if latencies else None,
        "p99_latency_ms": round(p99 * 1000, 3) if p99 is not None else None,
        "answered": len(latencies),
        "lost": lost,
    }


def _latencies(out: str) -> list[float]:
    """Per-query latencies from dnsperf -v lines: ``> NOERROR name A 0.000123``."""
    found = []
    for line in out.splitlines():
        if line.startswith("> "):
            try:
                found.append(float(line.split()[-1]))
            except ValueError:
                continue  # a line for a lost query carries no latency
    return found


def bench_dns(seconds: int) -> dict[str, Any]:
    missing = [tool for tool in ("dnsperf", "dnsmasq", "dig") if shutil.which(tool) is None]
    if missing:
        return {"skipped": f"not installed: {', '.join(missing)}"}
    records = _records(apps=500, devices=500, nodes=50)
    with tempfile.TemporaryDirectory(prefix="kled-bench-dns-") as tmp:
        work = Path(tmp)
        (work / "records.json").write_text(json.dumps(records))
        queries = work / "queries.txt"
        queries.write_text("\n".join(_queries(records)) + "\n")
        results: dict[str, Any] = {
            "records": sum(len(v) for v in records.values()),
            "seconds": seconds,
        }

        port = _free_port()
        kled = subprocess.Popen(
            [
                sys.executable,
                __file__,
                "--serve-dns",
                str(work / "records.json"),
                "--port",
                str(port),
            ],
            stdout=subprocess.PIPE,
            env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent / "src")},
        )
        try:
            _wait_ready(port)
            results["kled"] = _dnsperf(port, queries, seconds)
        finally:
            kled.terminate()
            kled.wait(10)

        port = _free_port()
        (work / "dnsmasq.conf").write_text(_dnsmasq_conf(records, port))
        dnsmasq = subprocess.Popen(
            ["dnsmasq", "--no-daemon", "-C", str(work / "dnsmasq.conf"), "--pid-file="],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            _wait_ready(port)
            results["dnsmasq"] = _dnsperf(port, queries, seconds)
        finally:
            dnsmasq.terminate()
            dnsmasq.wait(10)
    k, d = results["kled"], results["dnsmasq"]
    if d["queries_per_second"]:
        results["qps_ratio_kled_to_dnsmasq"] = round(
            k["queries_per_second"] / d["queries_per_second"], 3
        )
    if k["p99_latency_ms"] and d["p99_latency_ms"]:
        results["p99_ratio_kled_to_dnsmasq"] = round(k["p99_latency_ms"] / d["p99_latency_ms"], 3)
    return results


# ---- throughput ------------------------------------------------------------------------

IPERF_PORT = 5201
_BLOCK = "100.65"
_WG_PORT = 51820


def _netlab() -> Any:
    """tests/e2e/netlab.py, the lab the namespace tests build their hosts with."""
    if str(E2E) not in sys.path:
        sys.path.insert(0, str(E2E))
    return importlib.import_module("netlab")


def _throughput_skip_reason() -> str | None:
    reason: str | None = _netlab().netns_skip_reason()
    if reason is None and shutil.which("iperf3") is None:
        reason = "needs iperf3 (Debian: iperf3)"
    return reason


def _iperf(ns: str, server_ip: str, seconds: int, reverse: bool) -> float:
    """Mbit/s received in one iperf3 run from ``ns`` to ``server_ip`` (``reverse``: the
    server sends); a server still starting is retried."""
    argv = ["ip", "netns", "exec", ns, "iperf3", "-c", server_ip, "-p", str(IPERF_PORT),
            "-t", str(seconds), "-J", "--connect-timeout", "2000"]  # fmt: skip
    if reverse:
        argv.append("-R")
    last = ""
    for _ in range(20):
        done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 30)
        try:
            result = json.loads(done.stdout)
        except json.JSONDecodeError:
            result = {"error": done.stderr.strip() or done.stdout.strip()}
        if "error" not in result:
            bits = result["end"]["sum_received"]["bits_per_second"]
            return round(float(bits) / 1e6, 1)
        last = str(result["error"])
        time.sleep(0.25)
    raise RuntimeError(f"iperf3 to {server_ip} from {ns}: {last}")


async def _two_host_mesh(lab: Any) -> tuple[str, str, str, str]:
    """Team gateways on hosts 1 and 2 and a pod on each: (pod1 ns, pod1 ip, pod2 ns,
    pod2 ip)."""
    from kled.agent.net import gateway, pods, wireguard
    from kled.resources.netstate import Peer as WgPeer
    from kled.resources.netstate import TeamNetwork

    keys = {}
    for host in (1, 2):
        keys[host] = await wireguard.ensure_private_key(lab.state_dir / "keys" / f"h{host}.key")
    out: list[str] = []
    for host in (1, 2):
        other = 2 if host == 1 else 1
        net = TeamNetwork(
            team="a",
            block=f"{_BLOCK}.0.0/16",
            mesh_ip=f"{_BLOCK}.0.{host}",
            pod_subnet=f"{_BLOCK}.{15 + host}.0/24",
            listen_port=_WG_PORT,
            private_key_file=str(lab.state_dir / "keys" / f"h{host}.key"),
            peers=(
                WgPeer(
                    public_key=keys[other],
                    endpoint=f"{lab.underlay_ip(other)}:{_WG_PORT}",
                    allowed_ips=(f"{_BLOCK}.0.{other}/32", f"{_BLOCK}.{15 + other}.0/24"),
                ),
            ),
        )
        gw = await gateway.ensure_team_gateway(lab.host(host), net, state_dir=lab.state_dir)
        lab.ifnames.add(gw.wg_ifname)
        ip = f"{_BLOCK}.{15 + host}.10"
        pod = await pods.ensure_pod_netns(f"a.dev.iperf.{host}", "a", ip, gw)
        out += [pod.netns, ip]
    return out[0], out[1], out[2], out[3]


def bench_throughput(seconds: int) -> dict[str, Any]:
    reason = _throughput_skip_reason()
    if reason is not None:
        return {"skipped": reason}
    make_lab = _netlab().make_lab
    results: dict[str, Any] = {"seconds_per_run": seconds, "tool": "iperf3 (TCP, 1 stream)"}
    with tempfile.TemporaryDirectory() as tmp, make_lab(2, Path(tmp) / "lab") as lab:
        pod1, pod1_ip, pod2, _ = asyncio.run(_two_host_mesh(lab))
        for ns, bind in ((lab.host(1), lab.underlay_ip(1)), (pod1, pod1_ip)):
            lab.spawn(ns, "iperf3", "-s", "-B", bind, "-p", str(IPERF_PORT))
        paths = {
            "underlay": (lab.host(2), lab.underlay_ip(1)),
            "mesh": (pod2, pod1_ip),
        }
        for path, (ns, server) in paths.items():
            results[path] = {
                "host2_to_host1_mbit_s": _iperf(ns, server, seconds, reverse=False),
                "host1_to_host2_mbit_s": _iperf(ns, server, seconds, reverse=True),
            }
    for way in ("host2_to_host1", "host1_to_host2"):
        plain = results["underlay"][f"{way}_mbit_s"]
        if plain:
            ratio = results["mesh"][f"{way}_mbit_s"] / plain
            results[f"ratio_mesh_to_underlay_{way}"] = round(ratio, 3)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="shorter DNS runs (2 s each)")
    parser.add_argument(
        "--only", choices=("netmap", "delivery", "dns", "throughput"), help="one part"
    )
    parser.add_argument("--serve-dns", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve_dns:
        _serve_kled(args.serve_dns, args.port)
        return
    report: dict[str, Any] = {}
    if args.only in (None, "netmap"):
        report["netmap"] = [bench_netmap(1000), bench_netmap(10000)]
        report["netmap_reference"] = NETBIRD_REFERENCE
    if args.only in (None, "delivery"):
        report["delivery"] = bench_delivery(10000)
    if args.only in (None, "dns"):
        report["dns"] = bench_dns(2 if args.quick else 10)
    if args.only in (None, "throughput"):
        report["throughput"] = bench_throughput(2 if args.quick else 5)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
