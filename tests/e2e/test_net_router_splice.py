"""The header router's data path on one namespace: bulk bytes, half-close, keep-alive, limits.

A single lab host with the gateway's real nft rules and a real router process; the
"device" and the "replica" are echo servers on the host's own address that first say who
they are, so a client sees where its connection went and whether every byte came back.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from netlab import Lab, make_lab, sh

from kled.agent.net import nftables, router_process
from kled.resources.netstate import PersonalIntercept, Service, ServicePort, TeamNetwork

pytestmark = [pytest.mark.netns, pytest.mark.slow, pytest.mark.xdist_group("netns")]

SVC_IP, HOST_IP = "100.70.1.10", "198.18.0.1"
DEVICE_PORT, REPLICA_PORT = 7070, 8080

ECHO = """
import socket, sys, threading
name, port = sys.argv[1].encode(), int(sys.argv[2])
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("198.18.0.1", port)); srv.listen(64)
def echo(c):
    with c:
        c.sendall(name + b"\\n")
        while data := c.recv(1 << 16):
            c.sendall(data)
        c.shutdown(socket.SHUT_WR)
print("ready", flush=True)
while True:
    threading.Thread(target=echo, args=(srv.accept()[0],), daemon=True).start()
"""

CLIENT = """
import hashlib, json, os, socket, sys, threading
mode = sys.argv[1]
s = socket.create_connection(("100.70.1.10", 80), timeout=10)
out = {}
def read_all():
    data = b""
    while chunk := s.recv(1 << 16):
        data += chunk
    return data
if mode == "bulk":
    body = os.urandom(16 << 20)
    sent = b"POST /up HTTP/1.1\\r\\nx-kled-dev: me\\r\\n\\r\\n" + body
    def send():
        s.sendall(sent)
        s.shutdown(socket.SHUT_WR)
    t = threading.Thread(target=send); t.start()
    got = read_all(); t.join()
    banner, _, echoed = got.partition(b"\\n")
    out = {"banner": banner.decode(), "intact": hashlib.sha256(echoed).digest()
           == hashlib.sha256(sent).digest(), "bytes": len(echoed)}
elif mode == "keepalive":
    f = s.makefile("rb")
    s.sendall(b"GET /1 HTTP/1.1\\r\\nx-kled-dev: me\\r\\n\\r\\n")
    first = f.readline().strip().decode()
    s.sendall(b"GET /2 HTTP/1.1\\r\\n\\r\\n")
    s.shutdown(socket.SHUT_WR)
    rest = f.read().decode()
    names = [line for line in rest.split("\\r\\n") if line in ("dev", "replica")]
    out = {"banners": [first] + names}
    out["second_request_echoed"] = "GET /2" in rest
elif mode == "hold":
    # One connection kept open: each line on stdin goes out, its echo is printed.
    f = s.makefile("rb")
    s.sendall(b"GET / HTTP/1.1\\r\\nx-kled-dev: me\\r\\n\\r\\n")
    print(f.readline().strip().decode(), flush=True)
    f.readline(); f.readline(); f.readline()  # the echoed head
    for line in sys.stdin:
        s.sendall(line.encode())
        print(f.readline().strip().decode(), flush=True)
    sys.exit(0)
elif mode == "silent":
    out = {"banner": s.makefile("rb").readline().strip().decode()}
else:
    header = b"x-kled-dev: me\\r\\n" if mode == "me" else b""
    s.sendall(b"GET / HTTP/1.1\\r\\n" + header + b"\\r\\n")
    s.shutdown(socket.SHUT_WR)
    out = {"answer": read_all().decode(errors="replace")}
print(json.dumps(out))
"""


def service(backends: tuple[str, ...] = (HOST_IP,), *who: str) -> Service:
    return Service(
        name="api",
        env="dev",
        ip=SVC_IP,
        ports=(ServicePort(port=80, target_port=REPLICA_PORT),),
        backends=backends,
        personal=tuple(
            PersonalIntercept(
                header="x-kled-dev", value=w, target_ip=HOST_IP, port_map={80: DEVICE_PORT}
            )
            for w in who or ("me",)
        ),
    )


def plain_service() -> Service:
    return service().model_copy(update={"personal": ()})


def team(svc: Service) -> TeamNetwork:
    return TeamNetwork(team="acme", block="100.70.0.0/16", mesh_ip="100.70.0.1",
                       pod_subnet="100.70.16.0/24", listen_port=51820, services=(svc,))  # fmt: skip


async def apply(lab: Lab, svc: Service) -> None:
    """What the gateway does, minus WireGuard: the router is ready before rules redirect
    to it, and stopped after they no longer do."""
    net = team(svc)
    if svc.personal:
        await router_process.ensure_router(lab.host(1), net, lab.state_dir)
    await nftables.apply(lab.host(1), nftables.render_ruleset(net, wg_ifname="none", bridge="none"))
    if not svc.personal:
        router_process.stop_router(lab.state_dir, "acme")


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    with make_lab(1, tmp_path_factory.mktemp("netlab")) as lab:
        # The service range goes out of eth0, as it would into the mesh; the rules catch it.
        sh("ip", "-n", lab.host(1), "route", "add", "100.70.0.0/16", "dev", "eth0")
        for name, port in (("dev", DEVICE_PORT), ("replica", REPLICA_PORT)):
            lab.spawn(lab.host(1), sys.executable, "-c", ECHO, name, str(port), ready="ready")
        asyncio.run(apply(lab, service()))
        yield lab


async def client(lab: Lab, mode: str) -> dict[str, object]:
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", lab.host(1), sys.executable, "-c", CLIENT, mode,
        stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    out, _ = await proc.communicate()
    result: dict[str, object] = json.loads(out)
    return result


async def test_sixteen_mib_each_way_arrive_intact_through_a_half_close(lab: Lab) -> None:
    result = await client(lab, "bulk")
    assert result == {"banner": "dev", "intact": True, "bytes": (16 << 20) + 37}


async def test_a_kept_alive_connection_stays_with_its_first_target(lab: Lab) -> None:
    result = await client(lab, "keepalive")
    # Documented: the second request, without the header, still goes to the device.
    assert result == {"banners": ["dev"], "second_request_echoed": True}


async def test_a_client_that_waits_for_the_server_gets_a_replica(lab: Lab) -> None:
    assert await client(lab, "silent") == {"banner": "replica"}


async def test_without_replicas_plain_requests_get_503_and_headers_still_work(lab: Lab) -> None:
    try:
        await apply(lab, service(backends=()))
        answer = str((await client(lab, "plain"))["answer"])
        assert answer.startswith("HTTP/1.1 503 ") and answer.endswith("no replicas are running\n")
        assert str((await client(lab, "me"))["answer"]).startswith("dev\n")
    finally:
        await apply(lab, service())
    assert str((await client(lab, "plain"))["answer"]).startswith("replica\n")


async def test_the_router_is_adopted_and_restarted_by_its_pid_file(lab: Lab) -> None:
    files = router_process.RouterFiles(Path(lab.state_dir), "acme")
    pid = router_process.running_pid(files)
    assert pid is not None
    # An agent restart: the same desired state adopts the running router.
    await apply(lab, service())
    assert router_process.running_pid(files) == pid
    # A crashed router is started again by the next pass.
    sh("kill", "-9", str(pid))
    for _ in range(100):
        if router_process.running_pid(files) is None:
            break
        await asyncio.sleep(0.05)
    await apply(lab, service())
    again = router_process.running_pid(files)
    assert again is not None and again != pid
    assert str((await client(lab, "me"))["answer"]).startswith("dev\n")


async def test_open_connections_outlive_a_reload_and_the_end_of_the_intercepts(lab: Lab) -> None:
    held = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", lab.host(1), sys.executable, "-c", CLIENT, "hold",
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert held.stdin is not None and held.stdout is not None

    async def echo(text: str) -> str:
        assert held.stdin is not None and held.stdout is not None
        held.stdin.write(f"{text}\n".encode())
        await held.stdin.drain()
        return (await held.stdout.readline()).decode().strip()

    try:
        assert (await held.stdout.readline()).decode().strip() == "dev"
        await apply(lab, service((HOST_IP,), "me", "you"))  # a reload (SIGHUP)
        assert await echo("after reload") == "after reload"
        await apply(lab, plain_service())  # the router drains; rules DNAT to the replica
        assert str((await client(lab, "me"))["answer"]).startswith("replica\n")
        assert await echo("after the end") == "after the end"
        # Intercepting again at once starts a new router beside the draining one.
        await apply(lab, service())
        assert str((await client(lab, "me"))["answer"]).startswith("dev\n")
        assert await echo("still here") == "still here"
    finally:
        held.stdin.close()
        await held.wait()
        await apply(lab, service())


async def test_an_unreachable_device_gets_a_502_and_others_are_unaffected(lab: Lab) -> None:
    gone = service().model_copy(
        update={
            "personal": (
                PersonalIntercept(
                    header="x-kled-dev", value="me", target_ip=HOST_IP, port_map={80: 7999}
                ),
            )
        }
    )
    try:
        await apply(lab, gone)
        answer = str((await client(lab, "me"))["answer"])
        assert answer.startswith("HTTP/1.1 502 ") and f"cannot reach {HOST_IP}:7999" in answer
        assert str((await client(lab, "plain"))["answer"]).startswith("replica\n")
    finally:
        await apply(lab, service())
