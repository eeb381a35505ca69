"""The header router's pure parts: reading request heads, picking targets, its config."""

from __future__ import annotations

import struct

import pytest
from hpack import Encoder
from pydantic import ValidationError

from kled.agent.net.header_router import Route, load_routes, render_config
from kled.agent.net.httpsniff import H2_PREFACE, MAX_HEAD, Kind, Sniffed, sniff
from kled.agent.net.nftables import ROUTER_PORT, render_ruleset
from kled.resources.netstate import (
    Intercept,
    PersonalIntercept,
    Service,
    ServicePort,
    TeamNetwork,
)

HEAD = (
    b"GET /orders?id=7 HTTP/1.1\r\nHost: api\r\nX-Kled-Dev:  alice \r\n"
    b"Accept: */*\r\naccept: text/plain\r\n\r\n"
)


# ---- HTTP/1.x -------------------------------------------------------------------------


def test_http1_head_gives_lower_case_names_and_trimmed_values() -> None:
    head = sniff(HEAD + b"body bytes that follow")
    assert head.kind is Kind.HTTP1
    assert head.get("x-kled-dev") == ["alice"]
    assert head.get("accept") == ["*/*", "text/plain"]
    assert head.get("host") == ["api"]


@pytest.mark.parametrize("cut", [1, 3, 4, 20, len(HEAD) - 1])
def test_http1_head_cut_anywhere_waits_for_more(cut: int) -> None:
    assert sniff(HEAD[:cut]).kind is Kind.MORE


@pytest.mark.parametrize(
    "data",
    [
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",  # a TLS ClientHello
        b"SSH-2.0-OpenSSH_9.2\r\n",  # "-" is a token char, but no HTTP version follows
        b"GET / HTTP/1.1\r\nX-Kled-Dev: alice\r\n folded\r\n\r\n",  # obsolete line folding
        b"GET / HTTP/1.1\r\nX-Kled-Dev : alice\r\n\r\n",  # space before the colon
        b"GET /\r\n\r\n",  # HTTP/0.9
    ],
)
def test_what_is_not_a_readable_http1_head_is_other(data: bytes) -> None:
    if data.startswith(b"SSH"):
        data += b"\r\n"  # a blank line so that the head is complete
    assert sniff(data).kind is Kind.OTHER


def test_a_head_longer_than_the_limit_is_not_waited_for() -> None:
    endless = b"GET / HTTP/1.1\r\n" + b"X-Pad: " + b"a" * MAX_HEAD
    assert sniff(endless).kind is Kind.OTHER
    assert sniff(b"GET / HTTP/1.1\r\nX-Pad: aaaa").kind is Kind.MORE


# ---- HTTP/2 cleartext ------------------------------------------------------------------


def frame(ftype: int, flags: int, stream: int, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload))[1:] + struct.pack(">BBI", ftype, flags, stream) + payload


HEADERS_LIST = [
    (":method", "GET"),
    (":scheme", "http"),
    (":path", "/orders"),
    (":authority", "api.dev.acme.kled.internal"),
    ("x-kled-dev", "bob"),
    ("user-agent", "curl/7.88.1"),
]


def h2_connection(split: bool = False, padded: bool = False) -> bytes:
    block = Encoder().encode(HEADERS_LIST)  # huffman and incremental indexing, as curl does
    settings = frame(0x4, 0, 0, struct.pack(">HI", 0x3, 100) + struct.pack(">HI", 0x4, 1 << 20))
    window = frame(0x8, 0, 0, struct.pack(">I", 1 << 30))
    if split:
        half = len(block) // 2
        headers = frame(0x1, 0x1, 1, block[:half]) + frame(0x9, 0x4, 1, block[half:])
    elif padded:
        payload = bytes([3]) + struct.pack(">IB", 0, 15) + block + b"\0\0\0"
        headers = frame(0x1, 0x1 | 0x4 | 0x8 | 0x20, 1, payload)
    else:
        headers = frame(0x1, 0x1 | 0x4, 1, block)
    return H2_PREFACE + settings + window + headers


@pytest.mark.parametrize("shape", ["plain", "split", "padded"])
def test_h2_first_headers_are_decoded(shape: str) -> None:
    data = h2_connection(split=shape == "split", padded=shape == "padded")
    head = sniff(data)
    assert head.kind is Kind.H2
    assert head.get("x-kled-dev") == ["bob"]
    assert head.get(":path") == ["/orders"]
    # Every shorter prefix of the same bytes waits for more, never misjudges.
    assert {sniff(data[:cut]).kind for cut in range(1, len(data))} == {Kind.MORE}


def test_h2_rfc7541_example_with_huffman() -> None:
    # RFC 7541 C.4.1: a request header block with huffman-coded www.example.com.
    block = bytes.fromhex("828684418cf1e3c2e5f23a6ba0ab90f4ff")
    head = sniff(H2_PREFACE + frame(0x1, 0x5, 1, block))
    assert head.headers == [
        (":method", "GET"),
        (":scheme", "http"),
        (":path", "/"),
        (":authority", "www.example.com"),
    ]


def test_h2_broken_header_blocks_are_other() -> None:
    assert sniff(H2_PREFACE + frame(0x9, 0x4, 1, b"\x82")).kind is Kind.OTHER
    interrupted = frame(0x1, 0x0, 1, b"\x82") + frame(0x0, 0x0, 1, b"data")
    assert sniff(H2_PREFACE + interrupted).kind is Kind.OTHER
    assert sniff(H2_PREFACE + frame(0x1, 0x4, 1, b"\xff\xff\xff\xff")).kind is Kind.OTHER
    assert sniff(H2_PREFACE + struct.pack(">I", 1 << 20)[1:] + b"\x04\0\0\0\0\0").kind is (
        Kind.OTHER
    )


# ---- routing decisions and the config -------------------------------------------------


def personal(who: str, ip: str, ports: dict[int, int] | None = None) -> PersonalIntercept:
    return PersonalIntercept(header="X-Kled-Dev", value=who, target_ip=ip,
                             port_map=ports or {80: 7070})  # fmt: skip


def team(svc: Service) -> TeamNetwork:
    return TeamNetwork(team="acme", block="100.70.0.0/16", mesh_ip="100.70.0.1",
                       pod_subnet="100.70.16.0/24", listen_port=51820, services=(svc,))  # fmt: skip


def service(*who: PersonalIntercept, icpt: Intercept | None = None, backends: int = 2) -> Service:
    return Service(
        name="api",
        env="dev",
        ip="100.70.1.10",
        ports=(
            ServicePort(port=80, target_port=8080),
            ServicePort(port=81, target_port=8081),
            ServicePort(port=80, protocol="UDP", target_port=8080),
        ),
        backends=tuple(f"100.70.16.{10 + i}" for i in range(backends)),
        intercept=icpt,
        personal=who,
    )


ALICE = personal("alice", "100.70.0.10")
BOB = personal("bob", "100.70.0.11", {80: 9000, 81: 9001})


def route(svc: Service, port: int = 80) -> Route:
    config = render_config(team(svc))
    assert config is not None
    return load_routes(config)[("100.70.1.10", port)]


def http1(*headers: tuple[str, str]) -> Sniffed:
    return Sniffed(Kind.HTTP1, list(headers))


def test_the_matching_header_picks_the_device_else_replicas_round_robin() -> None:
    r = route(service(ALICE, BOB))
    assert r.pick(http1(("x-kled-dev", "alice"))) == (("100.70.0.10", 7070), "x-kled-dev=alice")
    assert r.pick(http1(("x-kled-dev", "bob")))[0] == ("100.70.0.11", 9000)
    assert r.pick(Sniffed(Kind.H2, [("x-kled-dev", "bob")]))[0] == ("100.70.0.11", 9000)
    plain = [r.pick(http1(("x-kled-dev", "carol")))[0] for _ in range(4)]
    assert plain == [("100.70.16.10", 8080), ("100.70.16.11", 8080)] * 2
    # Bytes that were not HTTP never match, even if they contain the words.
    assert r.pick(Sniffed(Kind.OTHER, [("x-kled-dev", "alice")]))[1] == "replica"
    # Values are exact: no case folding, no list splitting.
    assert r.pick(http1(("x-kled-dev", "Alice")))[1] == "replica"


def test_no_replicas_and_no_match_has_no_target() -> None:
    r = route(service(ALICE, backends=0))
    assert r.pick(http1()) == (None, "no replicas")
    assert r.pick(http1(("x-kled-dev", "alice")))[0] == ("100.70.0.10", 7070)


def test_config_covers_only_tcp_ports_that_someone_intercepts() -> None:
    assert render_config(team(service())) is None
    config = render_config(team(service(ALICE)))
    assert config is not None
    assert [(r["port"], len(r["personal"])) for r in config["routes"]] == [(80, 1)]
    config = render_config(team(service(ALICE, BOB)))
    assert config is not None and config["listen"] == ROUTER_PORT
    assert [(r["port"], len(r["personal"])) for r in config["routes"]] == [(80, 2), (81, 1)]


def test_a_global_intercept_wins_its_ports() -> None:
    whole = Intercept(target_ip="100.70.0.12", port_map={80: 5000})
    config = render_config(team(service(ALICE, BOB, icpt=whole)))
    assert config is not None and [r["port"] for r in config["routes"]] == [81]
    rules = render_ruleset(team(service(ALICE, BOB, icpt=whole)), wg_ifname="kw", bridge="kbr0")
    kinds = {}
    for cmd in rules:
        rule = cmd.get("add", {}).get("rule")
        if rule and rule["chain"] == "services":
            dport = rule["expr"][2]["match"]
            key = (dport["left"]["payload"]["protocol"], dport["right"])
            kinds[key] = "redirect" if "redirect" in rule["expr"][-1] else rule["comment"]
    assert kinds == {
        ("tcp", 80): "app/dev/api intercepted",
        ("tcp", 81): "redirect",
        ("udp", 80): "app/dev/api intercepted",
    }


def test_config_digest_follows_content() -> None:
    one, two = render_config(team(service(ALICE))), render_config(team(service(ALICE, BOB)))
    again = render_config(team(service(ALICE)))
    assert one is not None and two is not None and again is not None
    assert one["digest"] == again["digest"] != two["digest"]


@pytest.mark.parametrize(
    ("header", "value", "message"),
    [
        ("Host", "alice", "routes HTTP itself"),
        ("x dev", "alice", "not an HTTP header name"),
        (":path", "/", "not an HTTP header name"),
        ("x-kled-dev", "  ", "printable and not blank"),
        ("x-kled-dev", "a\r\nb", "printable and not blank"),
    ],
)
def test_bad_personal_intercepts_are_refused(header: str, value: str, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        PersonalIntercept(header=header, value=value, target_ip="100.70.0.10", port_map={80: 1})


def test_two_developers_cannot_share_a_header_value() -> None:
    with pytest.raises(ValidationError, match="same header and value"):
        service(ALICE, personal("alice", "100.70.0.11"))
    assert ALICE.header == "x-kled-dev"
