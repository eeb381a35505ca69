"""Kled's DNS server on a loopback port, asked with ``dig`` as a user would."""

from __future__ import annotations

import asyncio
import re
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from kled.dns.records import AppRecord, NamedPort, RecordSet
from kled.dns.server import DnsServer

pytestmark = pytest.mark.skipif(shutil.which("dig") is None, reason="dig is not installed")

ZONE = "acme.kled.internal"


def free_port() -> int:
    """A loopback port free for both UDP and TCP (as a DNS server needs)."""
    while True:
        with (
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp,
            socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp,
        ):
            udp.bind(("127.0.0.1", 0))
            port = int(udp.getsockname()[1])
            try:
                tcp.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port


def records(api_ip: str = "100.64.4.1", apps: int = 0) -> RecordSet:
    rs = RecordSet(
        apps={
            ("dev", "api"): AppRecord(api_ip, (NamedPort("http", 80), NamedPort("dns", 53, "UDP"))),
            ("dev", "web"): AppRecord("100.64.4.2", (NamedPort("http", 8080),)),
            ("prod", "api"): AppRecord("100.64.4.3"),
        },
        devices={"laptop": "100.64.0.2"},
        nodes={"n1": "100.64.0.1"},
    )
    for i in range(apps):
        rs.apps[("big", f"service-number-{i}")] = AppRecord(
            f"100.64.5.{i + 1}", (NamedPort("http", 10000 + i),)
        )
    return rs


@pytest.fixture(scope="module")
def upstream(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    """A real resolver that only knows outside.test, standing in for the host's."""
    if shutil.which("dnsmasq") is None:
        pytest.skip("dnsmasq is not installed")
    hosts = tmp_path_factory.mktemp("upstream") / "hosts"
    # One name with 60 addresses: too big for 512 bytes, so the upstream truncates it.
    hosts.write_text("".join(f"198.18.100.{i} big.outside.test\n" for i in range(1, 61)))
    port = free_port()
    proc = subprocess.Popen(
        [
            "dnsmasq",
            "--no-daemon",
            "--no-resolv",
            "--no-hosts",
            "--conf-file=/dev/null",
            "--pid-file=",
            f"--addn-hosts={hosts}",
            "--address=/outside.test/198.18.99.9",
            f"--port={port}",
            "--listen-address=127.0.0.1",
            "--bind-interfaces",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            out = subprocess.run(
                [
                    "dig",
                    "@127.0.0.1",
                    "-p",
                    str(port),
                    "+short",
                    "+time=1",
                    "+tries=1",
                    "outside.test",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if "198.18.99.9" in out.stdout:
                break
            if proc.poll() is not None:
                pytest.fail(f"dnsmasq exited: {proc.stderr.read().decode() if proc.stderr else ''}")
            time.sleep(0.1)
        yield port
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture
async def dns(upstream: int) -> AsyncIterator[DnsServer]:
    server = DnsServer(
        ("127.0.0.1", 0), upstreams=[("127.0.0.1", upstream)], ns_address="127.0.0.1"
    )
    server.apply("acme", records(apps=40))
    await server.start()
    try:
        yield server
    finally:
        await server.stop()


async def dig(server: DnsServer, *args: str) -> str:
    # dig runs as a child process while this loop keeps serving its queries.
    proc = await asyncio.create_subprocess_exec(
        "dig",
        "@127.0.0.1",
        "-p",
        str(server.port),
        "+time=3",
        "+tries=1",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await proc.communicate()
    return out.decode()


def status(out: str) -> str:
    found = re.search(r"status: (\w+)", out)
    assert found, out
    return found.group(1)


def flags(out: str) -> set[str]:
    found = re.search(r";; flags: ([a-z ]+);", out)
    assert found, out
    return set(found.group(1).split())


def section(out: str, name: str) -> list[list[str]]:
    """The records of one section of dig's output, each split into fields."""
    found = re.search(rf";; {name} SECTION:\n(.*?)(?:\n\n|\Z)", out, re.S)
    return [line.split() for line in found.group(1).splitlines()] if found else []


async def test_a_records_for_apps_devices_and_nodes(dns: DnsServer) -> None:
    for name, ip in (
        (f"api.dev.{ZONE}", "100.64.4.1"),
        (f"api.prod.{ZONE}", "100.64.4.3"),
        (f"laptop.{ZONE}", "100.64.0.2"),
        (f"n1.nodes.{ZONE}", "100.64.0.1"),
    ):
        out = await dig(dns, name, "A")
        assert status(out) == "NOERROR"
        assert "aa" in flags(out)
        assert section(out, "ANSWER") == [[f"{name}.", "5", "IN", "A", ip]]


async def test_names_are_answered_in_the_case_they_were_asked(dns: DnsServer) -> None:
    out = await dig(dns, "Api.DEV.acme.Kled.Internal")
    assert section(out, "ANSWER") == [["Api.DEV.acme.Kled.Internal.", "5", "IN", "A", "100.64.4.1"]]


async def test_srv_records_for_named_ports(dns: DnsServer) -> None:
    out = await dig(dns, f"_http._tcp.api.dev.{ZONE}", "SRV")
    assert section(out, "ANSWER") == [
        [f"_http._tcp.api.dev.{ZONE}.", "5", "IN", "SRV", "0", "0", "80", f"api.dev.{ZONE}."]
    ]
    assert section(out, "ADDITIONAL") == [[f"api.dev.{ZONE}.", "5", "IN", "A", "100.64.4.1"]]
    udp = await dig(dns, f"_dns._udp.api.dev.{ZONE}", "SRV", "+short")
    assert udp.split() == ["0", "0", "53", f"api.dev.{ZONE}."]
    # Every app of the environment with a port named http.
    env_wide = await dig(dns, f"_http._tcp.dev.{ZONE}", "SRV", "+short")
    assert sorted(env_wide.splitlines()) == [
        f"0 0 80 api.dev.{ZONE}.",
        f"0 0 8080 web.dev.{ZONE}.",
    ]


async def test_nxdomain_and_nodata_carry_the_soa(dns: DnsServer) -> None:
    missing = await dig(dns, f"nope.dev.{ZONE}")
    assert status(missing) == "NXDOMAIN"
    assert "aa" in flags(missing)
    (soa,) = section(missing, "AUTHORITY")
    assert soa[:5] == [f"{ZONE}.", "5", "IN", "SOA", f"ns.{ZONE}."]
    assert soa[-1] == "5"  # the negative TTL
    assert status(await dig(dns, f"_http._udp.api.dev.{ZONE}", "SRV")) == "NXDOMAIN"

    # The name exists, not with this type: NODATA (NOERROR, no answer, the SOA).
    for name, rtype in (
        (f"api.dev.{ZONE}", "AAAA"),
        (f"api.dev.{ZONE}", "SRV"),
        (f"dev.{ZONE}", "A"),  # exists because apps live below it
        (f"nodes.{ZONE}", "A"),
        (f"laptop.{ZONE}", "TXT"),
    ):
        out = await dig(dns, name, rtype)
        assert status(out) == "NOERROR", (name, rtype)
        assert section(out, "ANSWER") == []
        assert section(out, "AUTHORITY")[0][3] == "SOA"


async def test_soa_and_ns_at_the_apex(dns: DnsServer) -> None:
    soa = section(await dig(dns, ZONE, "SOA"), "ANSWER")
    assert soa[0][:6] == [f"{ZONE}.", "5", "IN", "SOA", f"ns.{ZONE}.", f"hostmaster.{ZONE}."]
    ns = await dig(dns, ZONE, "NS")
    assert section(ns, "ANSWER") == [[f"{ZONE}.", "5", "IN", "NS", f"ns.{ZONE}."]]
    assert section(ns, "ADDITIONAL") == [[f"ns.{ZONE}.", "5", "IN", "A", "127.0.0.1"]]


async def test_edns0_is_answered_in_kind(dns: DnsServer) -> None:
    with_edns = await dig(dns, f"api.dev.{ZONE}", "+bufsize=4096")
    assert "EDNS: version: 0" in with_edns and "udp: 1232" in with_edns
    without = await dig(dns, f"api.dev.{ZONE}", "+noedns")
    assert "OPT PSEUDOSECTION" not in without
    assert status(without) == "NOERROR"
    assert status(await dig(dns, f"api.dev.{ZONE}", "+edns=1", "+noednsneg")) == "BADVERS"


async def test_a_large_answer_is_truncated_over_udp_and_whole_over_tcp(dns: DnsServer) -> None:
    name = f"_http._tcp.big.{ZONE}"  # 40 apps, one SRV record each
    udp = await dig(dns, name, "SRV", "+ignore", "+noedns")
    assert "tc" in flags(udp)
    assert section(udp, "ANSWER") == []
    small_edns = await dig(dns, name, "SRV", "+ignore", "+bufsize=1232")
    assert "tc" in flags(small_edns)

    tcp = await dig(dns, name, "SRV", "+tcp")
    assert "tc" not in flags(tcp)
    assert len(section(tcp, "ANSWER")) == 40

    retried = await dig(dns, name, "SRV")  # plain dig sees TC and asks again over TCP
    assert "Truncated, retrying in TCP mode" in retried
    assert len(section(retried, "ANSWER")) == 40

    # A big client buffer takes the whole answer over UDP, dropping the optional extras.
    roomy = await dig(dns, name, "SRV", "+ignore", "+bufsize=8192")
    assert "tc" not in flags(roomy) and len(section(roomy, "ANSWER")) == 40


async def test_outside_names_are_forwarded_upstream(dns: DnsServer) -> None:
    out = await dig(dns, "www.outside.test")
    assert status(out) == "NOERROR"
    assert section(out, "ANSWER")[0][-1] == "198.18.99.9"
    tcp = await dig(dns, "outside.test", "+tcp", "+short")
    assert tcp.strip() == "198.18.99.9"


async def test_a_truncated_upstream_answer_is_asked_again_over_tcp(dns: DnsServer) -> None:
    # Over TCP to Kled: Kled asks upstream over UDP, gets TC, asks again over TCP.
    whole = await dig(dns, "big.outside.test", "+tcp", "+noedns")
    assert "tc" not in flags(whole)
    assert len(section(whole, "ANSWER")) == 60
    # Over UDP without EDNS the client gets TC from Kled and retries over TCP itself.
    udp = await dig(dns, "big.outside.test", "+noedns", "+ignore")
    assert "tc" in flags(udp)
    retried = await dig(dns, "big.outside.test", "+noedns")
    assert "Truncated, retrying in TCP mode" in retried
    assert len(section(retried, "ANSWER")) == 60


async def test_an_unreachable_upstream_is_servfail() -> None:
    server = DnsServer(
        ("127.0.0.1", 0), upstreams=[("127.0.0.1", free_port())], forward_timeout=0.5
    )
    async with server:
        assert status(await dig(server, "www.outside.test")) == "SERVFAIL"
    no_upstream = DnsServer(("127.0.0.1", 0), upstreams=[])
    async with no_upstream:
        assert status(await dig(no_upstream, "www.outside.test")) == "REFUSED"


async def test_a_record_change_is_answered_by_the_next_query(dns: DnsServer, upstream: int) -> None:
    assert (await dig(dns, f"api.dev.{ZONE}", "+short")).strip() == "100.64.4.1"
    dns.apply("acme", records(api_ip="100.64.4.99"))
    assert (await dig(dns, f"api.dev.{ZONE}", "+short")).strip() == "100.64.4.99"
    smaller = records()
    del smaller.apps[("dev", "web")]
    dns.apply("acme", smaller)
    assert status(await dig(dns, f"web.dev.{ZONE}")) == "NXDOMAIN"
    dns.remove("acme")
    # Once the team is gone the name is no longer Kled's: it goes upstream, and the
    # client gets the upstream's own answer.
    gone = await dig(dns, f"api.dev.{ZONE}")
    direct = subprocess.run(
        ["dig", "@127.0.0.1", "-p", str(upstream), "+time=2", "+tries=1", f"api.dev.{ZONE}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    assert status(gone) == status(direct) != "NOERROR"
    assert section(gone, "AUTHORITY") == section(direct, "AUTHORITY")


async def _dig_at(host: str, port: int, *args: str) -> str:
    proc = await asyncio.create_subprocess_exec(
        "dig", f"@{host}", "-p", str(port), "+time=3", "+tries=1", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    out, _ = await proc.communicate()
    return out.decode()


async def test_it_answers_at_an_added_address_from_that_address(dns: DnsServer) -> None:
    # 127.0.0.2 stands for the address a remote host reaches this machine at.
    port = await dns.listen_also("127.0.0.2")
    assert port == dns.port and await dns.listen_also("127.0.0.2") == port  # once only
    assert dns.port_on("127.0.0.2") == port and dns.port_on("127.0.0.3") is None
    assert dns.addresses == [("127.0.0.1", port), ("127.0.0.2", port)]
    # dig insists that the reply comes from the address it asked: forwarded answers too.
    assert (await _dig_at("127.0.0.2", port, "+short", f"api.dev.{ZONE}")).strip() == "100.64.4.1"
    assert "198.18.99.9" in await _dig_at("127.0.0.2", port, "+short", "outside.test")
    assert "status: NOERROR" in await _dig_at("127.0.0.2", port, "+tcp", f"api.dev.{ZONE}")
