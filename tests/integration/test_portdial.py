"""The agent's own connection into a pod's network namespace (kled.agent.portdial), the
path of ``kubectl port-forward``: a real namespace with servers on its loopback only."""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
from collections.abc import Iterator

import pytest

from kled.agent import portdial
from kled.kube.portforward import RELAY

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 to make a pod namespace",
    ),
]

#: in the namespace: an echo on 127.0.0.1:7070 and one on [::1]:7171 only
ECHO = r"""
import socket, sys, threading
def echo(conn):
    with conn:
        while data := conn.recv(65536):
            conn.sendall(data)
def serve(server):
    while True:
        threading.Thread(target=echo, args=(server.accept()[0],), daemon=True).start()
servers = [socket.create_server(("127.0.0.1", 7070)),
           socket.create_server(("::1", 7171), family=socket.AF_INET6)]
for server in servers:
    threading.Thread(target=serve, args=(server,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.fixture
def pod() -> Iterator[str]:
    """A namespace like a pod's, with the echo servers running; its path."""
    name = f"pd-{os.getpid()}-{secrets.token_hex(3)}"
    server = None
    try:
        subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
        subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True, timeout=30)
        server = subprocess.Popen(
            ["ip", "netns", "exec", name, sys.executable, "-c", ECHO],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline() == "ready\n"
        yield f"/run/netns/{name}"
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", name], capture_output=True, timeout=30)


async def _echo(netns: str, port: int, payload: bytes) -> bytes:
    sock = await portdial.connect(netns, port)
    reader, writer = await asyncio.open_connection(sock=sock)
    writer.write(payload)
    writer.write_eof()
    got = await reader.read()
    writer.close()
    return got


async def test_a_connection_to_the_pods_loopback_over_ipv4_then_ipv6(pod: str) -> None:
    ours = os.readlink("/proc/thread-self/ns/net")
    payload = os.urandom(1 << 20)
    assert await _echo(pod, 7070, payload) == payload
    assert await _echo(pod, 7171, b"only on ::1") == b"only on ::1"
    # nothing of this process left the agent's own namespace
    assert os.readlink("/proc/thread-self/ns/net") == ours
    # the same ports are not open in the agent's namespace
    with pytest.raises(portdial.DialFailed):
        await portdial.connect(None, 7171)


async def test_a_port_nothing_listens_on_is_refused_in_gos_words(pod: str) -> None:
    with pytest.raises(portdial.DialFailed) as refused:
        await portdial.connect(pod, 9)
    assert str(refused.value) == (
        "IPv4: dial tcp4 127.0.0.1:9: connect: connection refused "
        "IPv6: dial tcp6 [::1]:9: connect: connection refused"
    )
    with pytest.raises(portdial.DialFailed, match="cannot enter the pod's network namespace"):
        await portdial.connect("/run/netns/kled-no-such-namespace", 7070)


def test_the_relay_an_agent_runs_where_it_cannot_connect_itself(pod: str) -> None:
    """kled.kube.portforward's relay: stdin to the port, the port to stdout, over IPv6 when
    IPv4 is refused; the same words as the agent's when nothing listens."""
    inside = ["ip", "netns", "exec", os.path.basename(pod), sys.executable, "-c", RELAY]
    payload = os.urandom(1 << 20)
    done = subprocess.run([*inside, "7171"], input=payload, capture_output=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, payload), done.stderr
    refused = subprocess.run([*inside, "9"], input=b"", capture_output=True, timeout=60)
    assert refused.returncode == 1
    assert refused.stderr.decode() == (
        "IPv4: dial tcp4 127.0.0.1:9: connect: connection refused "
        "IPv6: dial tcp6 [::1]:9: connect: connection refused"
    )
