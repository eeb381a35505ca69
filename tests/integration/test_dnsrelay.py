"""The pods' DNS relay, asked from inside a team namespace as a pod would ask it.

The namespace holds only the bridge address (on a bridge of no ports) and ``lo``; Kled's own
DNS server on loopback in this process's namespace is the upstream, reached by the relay
from the agent's side. Over UDP and TCP the pod gets the same records; an answer too big
for UDP comes back truncated and whole when the resolver asks again over TCP.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from kled.agent import dnsrelay
from kled.agent.dnsrelay import DnsRelays
from kled.dns.records import AppRecord, NamedPort, RecordSet
from kled.dns.server import DnsServer

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None or shutil.which("dig") is None,
        reason="needs root, iproute2 and dig to make a team namespace",
    ),
]

ZONE = "acme.kled.internal"
BRIDGE_IP = "10.254.0.1"
BIG = f"_http._tcp.big.{ZONE}"  # one SRV record per app of 40: truncated over UDP

# A pod's TCP client, run inside the namespace: ``pipeline NAME...`` sends every query in
# one write and prints the answers (``pipeline-then-eof``: and ends its side at once);
# ``hold NAME`` asks once, prints the answer, then waits for the relay to end the
# connection; ``idle`` asks nothing and waits for the same.
CLIENT = r"""
import json, socket, struct, sys
from dnslib import DNSRecord

def read_message(s):
    data = b""
    for size in (2, None):
        want = struct.unpack("!H", data)[0] if size is None else size
        data = b""
        while len(data) < want:
            got = s.recv(want - len(data))
            if not got:
                return None
            data += got
    return DNSRecord.parse(data)

def frame(name):
    wire = DNSRecord.question(name, "A").pack()
    return struct.pack("!H", len(wire)) + wire

mode, names = sys.argv[1], sys.argv[2:]
s = socket.create_connection(("BRIDGE", 53))
if mode.startswith("pipeline"):
    s.sendall(b"".join(frame(n) for n in names))
    if mode == "pipeline-then-eof":
        s.shutdown(socket.SHUT_WR)
    answers = [read_message(s) for _ in names]
    print(json.dumps([[str(rr.rname), str(rr.rdata)] for a in answers for rr in a.rr]))
    sys.exit()
if mode == "hold":
    s.sendall(frame(names[0]))
    answer = read_message(s)
    print("closed" if answer is None else f"answered {answer.rr[0].rdata}", flush=True)
    if answer is None:
        sys.exit()
else:
    print("connected", flush=True)
print("closed" if read_message(s) is None else "more", flush=True)
""".replace("BRIDGE", BRIDGE_IP)


def records() -> RecordSet:
    rs = RecordSet(apps={("dev", "api"): AppRecord("100.64.4.1", (NamedPort("http", 80),))})
    rs.apps[("dev", "web")] = AppRecord("100.64.4.2")
    for i in range(40):
        rs.apps[("big", f"service-number-{i}")] = AppRecord(
            f"100.64.5.{i + 1}", (NamedPort("http", 10000 + i),)
        )
    return rs


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def namespace() -> Iterator[str]:
    """A team namespace with the bridge address on an empty bridge; its name."""
    ns = f"s8b-dns-{os.getpid()}"
    try:
        ip("netns", "add", ns)
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "link", "add", "s8bbr0", "type", "bridge")
        ip("-n", ns, "addr", "add", f"{BRIDGE_IP}/24", "dev", "s8bbr0")
        ip("-n", ns, "link", "set", "s8bbr0", "up")
        yield ns
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=30)


@pytest.fixture
async def upstream() -> AsyncIterator[DnsServer]:
    server = DnsServer(("127.0.0.1", 0), upstreams=[], ns_address="127.0.0.1")
    server.apply("acme", records())
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


@pytest.fixture
async def relays(namespace: str, upstream: DnsServer) -> AsyncIterator[DnsRelays]:
    relays = DnsRelays()
    try:
        await relays.ensure(
            "acme", f"/run/netns/{namespace}", BRIDGE_IP, f"127.0.0.1:{upstream.port}"
        )
        yield relays
    finally:
        await relays.close()


async def dig(ns: str, *args: str) -> str:
    # dig runs as a child process while this loop relays its queries.
    proc = await asyncio.create_subprocess_exec(
        "ip", "netns", "exec", ns, "dig", f"@{BRIDGE_IP}", "+time=5", "+tries=2", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out.decode()


def flags(out: str) -> set[str]:
    found = re.search(r";; flags: ([a-z ]+);", out)
    assert found, out
    return set(found.group(1).split())


def answers(out: str) -> list[list[str]]:
    found = re.search(r";; ANSWER SECTION:\n(.*?)(?:\n\n|\Z)", out, re.S)
    return sorted(line.split() for line in found.group(1).splitlines()) if found else []


class Client:
    """The pod's TCP client (``CLIENT``) running in the namespace."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc

    @classmethod
    async def start(cls, ns: str, *args: str) -> Client:
        proc = await asyncio.create_subprocess_exec(
            "ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        return cls(proc)

    async def line(self) -> str:
        """The client's next line; a generous deadline only keeps a hang from lasting."""
        assert self.proc.stdout is not None
        got = await asyncio.wait_for(self.proc.stdout.readline(), 120)
        if not got:
            assert self.proc.stderr is not None
            pytest.fail(f"the client ended: {(await self.proc.stderr.read()).decode()}")
        return got.decode().strip()

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
        await self.proc.wait()


async def test_udp_and_tcp_give_the_same_records(namespace: str, relays: DnsRelays) -> None:
    name = f"api.dev.{ZONE}"
    udp = await dig(namespace, name)
    assert "status: NOERROR" in udp and "UDP" in udp
    assert answers(udp) == [[f"{name}.", "5", "IN", "A", "100.64.4.1"]]
    tcp = await dig(namespace, "+tcp", name)
    assert "status: NOERROR" in tcp and "(TCP)" in tcp
    assert answers(tcp) == answers(udp)
    srv = f"_http._tcp.api.dev.{ZONE}"
    assert answers(await dig(namespace, "+tcp", srv, "SRV")) == answers(
        await dig(namespace, srv, "SRV")
    )


async def test_a_truncated_answer_is_whole_when_asked_again_over_tcp(
    namespace: str, relays: DnsRelays
) -> None:
    truncated = await dig(namespace, BIG, "SRV", "+ignore", "+noedns")
    assert "tc" in flags(truncated) and answers(truncated) == []
    retried = await dig(namespace, BIG, "SRV", "+noedns")  # plain dig retries over TCP
    assert "Truncated, retrying in TCP mode" in retried
    assert "tc" not in flags(retried)
    whole = answers(retried)
    assert len(whole) == 40
    assert [rr[6] for rr in whole] == sorted(str(10000 + i) for i in range(40))


@pytest.mark.parametrize("mode", ["pipeline", "pipeline-then-eof"])
async def test_queries_pipelined_on_one_connection_are_all_answered(
    namespace: str, relays: DnsRelays, mode: str
) -> None:
    client = await Client.start(namespace, mode, f"api.dev.{ZONE}", f"web.dev.{ZONE}")
    try:
        got = json.loads(await client.line())
    finally:
        await client.stop()
    assert sorted(got) == [[f"api.dev.{ZONE}.", "100.64.4.1"], [f"web.dev.{ZONE}.", "100.64.4.2"]]


async def test_a_stopped_upstream_closes_the_clients_connection(
    namespace: str, upstream: DnsServer, relays: DnsRelays, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    # An hour of idleness allowed: only the upstream's going can end these connections.
    monkeypatch.setattr(dnsrelay, "_TCP_IDLE", 3600.0)
    caplog.set_level(logging.DEBUG, logger="kled.agent.dnsrelay")
    held = await Client.start(namespace, "hold", f"api.dev.{ZONE}")
    try:
        assert await held.line() == "answered 100.64.4.1"
        await upstream.stop()
        assert await held.line() == "closed"
    finally:
        await held.stop()
    # A new connection's query has no upstream to go to: closed, unanswered.
    late = await Client.start(namespace, "hold", f"api.dev.{ZONE}")
    try:
        assert await late.line() == "closed"
    finally:
        await late.stop()
    # Told in the log, once per connection and without a traceback.
    mine = [r for r in caplog.records if r.name == "kled.agent.dnsrelay"]
    assert not [r for r in mine if r.exc_info or r.levelno >= logging.WARNING]
    assert any("DNS over TCP" in r.getMessage() for r in mine)


async def test_an_idle_connection_is_closed(
    namespace: str, upstream: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnsrelay, "_TCP_IDLE", 0.5)
    relays = DnsRelays()
    try:
        await relays.ensure(
            "acme", f"/run/netns/{namespace}", BRIDGE_IP, f"127.0.0.1:{upstream.port}"
        )
        silent = await Client.start(namespace, "idle")
        answered = await Client.start(namespace, "hold", f"api.dev.{ZONE}")
        try:
            assert await silent.line() == "connected"
            assert await silent.line() == "closed"
            assert await answered.line() == "answered 100.64.4.1"
            assert await answered.line() == "closed"
        finally:
            await silent.stop()
            await answered.stop()
    finally:
        await relays.close()


async def test_closing_the_relay_closes_its_sockets_and_connections(
    namespace: str, upstream: DnsServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(dnsrelay, "_TCP_IDLE", 3600.0)
    relays = DnsRelays()
    try:
        await relays.ensure(
            "acme", f"/run/netns/{namespace}", BRIDGE_IP, f"127.0.0.1:{upstream.port}"
        )
        held = await Client.start(namespace, "hold", f"api.dev.{ZONE}")
        try:
            assert await held.line() == "answered 100.64.4.1"
            await relays.keep_only(set())
            assert await held.line() == "closed"
        finally:
            await held.stop()
    finally:
        await relays.close()
    refused = await dig(namespace, "+tcp", "+tries=1", f"api.dev.{ZONE}")
    assert "connection refused" in refused
    # Nothing listens on UDP either: dig hears nothing back (the port is unreachable).
    unheard = await dig(namespace, "+tries=1", "+time=1", f"api.dev.{ZONE}")
    assert "status:" not in unheard
