"""SPDY/3.1 framing of ``kubectl port-forward`` (kled.kube.spdy), with frames built by hand
as spdystream writes them, and the head of an upgrade request (kled.kube.upgrade)."""

from __future__ import annotations

import struct
import zlib

import pytest

from kled.kube import spdy
from kled.kube.execspdy import expected_streams
from kled.kube.upgrade import PATH, parse_head, response


def _block(headers: list[tuple[str, str]]) -> bytes:
    out = struct.pack(">I", len(headers))
    for name, value in headers:
        out += struct.pack(">I", len(name)) + name.encode()
        out += struct.pack(">I", len(value)) + value.encode()
    return out


class _Client:
    """The client's side of one session: its own compression context, as spdystream has."""

    def __init__(self) -> None:
        self.deflate = zlib.compressobj(9, zdict=spdy.DICTIONARY)
        self.inflate = zlib.decompressobj(zdict=spdy.DICTIONARY)

    def syn_stream(self, stream: int, headers: list[tuple[str, str]], flags: int = 0) -> bytes:
        packed = self.deflate.compress(_block(headers)) + self.deflate.flush(zlib.Z_SYNC_FLUSH)
        body = struct.pack(">IIBB", stream, 0, 0, 0) + packed
        return struct.pack(">HHI", 0x8003, 1, (flags << 24) | len(body)) + body


def _pf_headers(kind: str, request: str) -> list[tuple[str, str]]:
    return [("streamtype", kind), ("port", "8080"), ("requestid", request)]


def test_the_dictionary_is_spdy3s() -> None:
    assert len(spdy.DICTIONARY) == 1423
    assert spdy.DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert b"\x00\x00\x00\x06200 OK\x00\x00\x00\x07version" in spdy.DICTIONARY
    assert b"\x00\x00\x00\x06origin100101201202" in spdy.DICTIONARY
    assert spdy.DICTIONARY.endswith(b",*,enq=0.")
    # the id a zlib stream primed with it carries (kubectl checks it)
    assert zlib.adler32(spdy.DICTIONARY) == 0xE3C6A7C2


def test_syn_streams_share_one_header_context_and_arrive_in_any_pieces() -> None:
    client = _Client()
    wire = client.syn_stream(1, _pf_headers("error", "0"), flags=spdy.FLAG_FIN)
    wire += client.syn_stream(3, _pf_headers("data", "0"))  # compressed against the first
    codec = spdy.Codec()
    frames = [f for i in range(len(wire)) for f in codec.feed(wire[i : i + 1])]
    assert [(f.kind, f.stream, f.fin) for f in frames] == [
        (spdy.SYN_STREAM, 1, True),
        (spdy.SYN_STREAM, 3, False),
    ]
    assert frames[0].headers == {"streamtype": ["error"], "port": ["8080"], "requestid": ["0"]}
    assert frames[1].headers["streamtype"] == ["data"]


def test_replies_decompress_in_order_with_the_peers_context() -> None:
    codec, client = spdy.Codec(), _Client()
    first, second = codec.syn_reply(1), codec.syn_reply(3, {"X-Answer": ["a", "b"]})
    for frame, stream, block in (
        (first, 1, _block([])),
        (second, 3, _block([("x-answer", "a\0b")])),
    ):
        control, kind, flags_length, got_stream = struct.unpack_from(">HHII", frame)
        assert (control, kind, flags_length & 0xFFFFFF) == (0x8003, 2, len(frame) - 8)
        assert got_stream == stream
        assert client.inflate.decompress(frame[12:]) == block


def test_data_frames_both_ways() -> None:
    codec = spdy.Codec()
    wire = spdy.data(3, b"GET / HTTP/1.1\r\n\r\n") + spdy.data(3, b"", fin=True)
    assert wire[:8] == struct.pack(">II", 3, 18)
    first, last = codec.feed(wire)
    assert (first.kind, first.stream, first.data, first.fin) == (0, 3, wire[8:26], False)
    assert (last.data, last.fin) == (b"", True)
    with pytest.raises(ValueError, match="at most"):
        spdy.data(1, b"x" * (spdy.MAX_LENGTH + 1))


def test_control_frames_without_headers() -> None:
    codec = spdy.Codec()
    settings = spdy.control(spdy.SETTINGS, 0, struct.pack(">IBBHI", 1, 0, 0, 7, 65536))
    wire = (
        spdy.ping(7)
        + spdy.rst_stream(5, spdy.CANCEL)
        + spdy.window_update(3, 1024)
        + settings
        + spdy.goaway(9)
    )
    frames = codec.feed(wire)
    assert [(f.kind, f.stream, f.value) for f in frames] == [
        (spdy.PING, 7, 0),
        (spdy.RST_STREAM, 5, spdy.CANCEL),
        (spdy.WINDOW_UPDATE, 3, 1024),
        (spdy.SETTINGS, 0, 0),
        (spdy.GOAWAY, 9, 0),
    ]


def test_what_is_not_spdy3_is_refused() -> None:
    with pytest.raises(spdy.ProtocolError, match="version 2"):
        spdy.Codec().feed(struct.pack(">HHI", 0x8002, 6, 4) + b"\0\0\0\1")
    broken = struct.pack(">IIBB", 1, 0, 0, 0) + b"not zlib at all"
    with pytest.raises(spdy.ProtocolError, match="does not inflate"):
        spdy.Codec().feed(spdy.control(spdy.SYN_STREAM, 0, broken))
    deflate = zlib.compressobj(zdict=spdy.DICTIONARY)
    short = deflate.compress(struct.pack(">II", 2, 5) + b"po") + deflate.flush(zlib.Z_SYNC_FLUSH)
    with pytest.raises(spdy.ProtocolError, match="header block"):
        spdy.Codec().feed(
            spdy.control(spdy.SYN_STREAM, 0, struct.pack(">IIBB", 1, 0, 0, 0) + short)
        )
    with pytest.raises(spdy.ProtocolError, match="truncated control frame"):
        spdy.Codec().feed(spdy.control(spdy.RST_STREAM, 0, b"\0\0"))


def test_an_upgrade_head_and_its_path() -> None:
    raw = (
        b"POST /k8s/a/c1/api/v1/namespaces/default/pods/web-0/portforward HTTP/1.1\r\n"
        b"Host: x\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n"
        b"X-Stream-Protocol-Version: portforward.k8s.io\r\nAuthorization: Bearer t"
    )
    head = parse_head(raw)
    assert head is not None and head.upgrade_to_spdy()
    match = PATH.match(head.path)
    assert match is not None and match["name"] == "web-0" and match["cluster"] == "c1"
    assert head.headers["authorization"] == "Bearer t"
    plain = parse_head(b"GET /k8s/a/c1/api HTTP/1.1\r\nConnection: keep-alive")
    assert plain is not None and not plain.upgrade_to_spdy()
    websocket = parse_head(b"GET / HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket")
    assert websocket is not None and not websocket.upgrade_to_spdy()
    assert parse_head(b"not http") is None
    exec_ = PATH.match("/k8s/a/c1/api/v1/namespaces/default/pods/web-0/exec")
    assert exec_ is not None and exec_["subresource"] == "exec"
    assert PATH.match("/k8s/a/c1/api/v1/namespaces/default/pods/web-0/attach") is None
    with_query = parse_head(b"POST /k8s/x?command=ls&command=-l&stdin=true HTTP/1.1\r\nA: b")
    assert with_query is not None and with_query.query == "command=ls&command=-l&stdin=true"
    answer = response(404, {"kind": "Status", "code": 404})
    assert answer.startswith(b"HTTP/1.1 404 Not Found\r\n") and answer.endswith(b'"code": 404}')


def test_the_streams_an_exec_waits_for() -> None:
    assert expected_streams({"stdout": ["true"], "stderr": ["true"]}) == {
        "error",
        "stdout",
        "stderr",
    }
    # a terminal: stdout carries both, and sizes come on "resize"
    tty = {"stdin": ["true"], "stdout": ["true"], "stderr": ["true"], "tty": ["true"]}
    assert expected_streams(tty) == {"error", "stdin", "stdout", "resize"}
    assert expected_streams({"stdin": ["false"]}) == {"error"}
