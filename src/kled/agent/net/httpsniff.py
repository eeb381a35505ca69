"""Reading the request headers at the start of a TCP connection, without answering it.

The header router (``header_router``) must decide where a connection goes from the bytes the
client sends first, and then pass those same bytes on untouched. ``sniff`` looks at what has
arrived so far and says one of: wait for more, this is HTTP/1.x with these headers, this is
HTTP/2 cleartext (prior knowledge) with these headers of its first stream, or this is not
HTTP that we can route. It never consumes or rewrites anything, and it is pure, so it is
tested on byte strings alone.

HTTP/2: after the 24-byte preface come frames; the client's SETTINGS, WINDOW_UPDATE and
PRIORITY frames are skipped, and the first HEADERS frame (with its CONTINUATION frames) is
HPACK-decoded with the ``hpack`` package. A fresh decoder per connection is right: the first
header block is the first user of the connection's dynamic table.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

#: the first bytes of every HTTP/2 connection with prior knowledge (RFC 9113 §3.4)
H2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
#: a head longer than this is not worth waiting for: the connection goes to a replica
MAX_HEAD = 64 * 1024

_HEADERS, _CONTINUATION = 0x1, 0x9
_END_HEADERS, _PADDED, _PRIORITY = 0x4, 0x8, 0x20
_TOKEN = frozenset(b"!#$%&'*+-.^_`|~0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")


class Kind(enum.Enum):
    MORE = "more"  # not enough bytes yet to decide
    HTTP1 = "http/1"
    H2 = "h2c"
    OTHER = "other"  # not HTTP, malformed, or too long: route to the replicas


@dataclass(frozen=True)
class Sniffed:
    kind: Kind
    #: request headers, names lower-case, values stripped (pseudo-headers for HTTP/2 too)
    headers: list[tuple[str, str]] = field(default_factory=list)
    #: why a connection was judged OTHER (for debug logs)
    reason: str = ""

    def get(self, name: str) -> list[str]:
        return [v for n, v in self.headers if n == name]


MORE = Sniffed(Kind.MORE)


def _other(reason: str) -> Sniffed:
    return Sniffed(Kind.OTHER, reason=reason)


def sniff(data: bytes) -> Sniffed:
    """What the connection's first ``data`` bytes are; MORE until it can tell."""
    if not data:
        return MORE
    prefix = min(len(data), len(H2_PREFACE))
    if data[:prefix] == H2_PREFACE[:prefix]:
        return MORE if prefix < len(H2_PREFACE) else sniff_h2(data[len(H2_PREFACE) :])
    return sniff_http1(data)


def sniff_http1(data: bytes) -> Sniffed:
    """An HTTP/1.x request head: ``METHOD SP target SP HTTP/1.x CRLF (field CRLF)* CRLF``."""
    space = data.find(b" ", 0, 21)
    method = data[:space] if space > 0 else data[:20]
    if not method or any(c not in _TOKEN for c in method):
        return _other("no HTTP method")
    if space < 0:
        return MORE if len(data) <= 20 else _other("method too long")
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return MORE if len(data) < MAX_HEAD else _other("head too long")
    lines = data[:end].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return _other("bad request line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        # Obsolete line folding and spaces before the colon are refused by RFC 9112;
        # a head we cannot read exactly as the server would is not routed by header.
        if not colon or not name or any(c not in _TOKEN for c in name):
            return _other("bad header line")
        headers.append((name.decode("ascii").lower(), value.strip(b" \t").decode("latin-1")))
    return Sniffed(Kind.HTTP1, headers)


def sniff_h2(frames: bytes) -> Sniffed:
    """The header list of the first HEADERS frame after the preface (and its CONTINUATIONs)."""
    offset = 0
    block = b""
    stream = None
    while True:
        if len(frames) - offset < 9:
            return _more_h2(offset)
        length_hi, length_lo, ftype, flags, sid = struct.unpack_from(">BHBBI", frames, offset)
        length = length_hi << 16 | length_lo
        sid &= 0x7FFFFFFF
        start, end = offset + 9, offset + 9 + length
        if length > 16384:  # SETTINGS_MAX_FRAME_SIZE until the server raises it
            return _other("h2 frame too large")
        if len(frames) < end:
            return _more_h2(end)
        payload = frames[start:end]
        offset = end
        if stream is None and ftype != _HEADERS:
            if ftype == _CONTINUATION:
                return _other("h2 CONTINUATION without HEADERS")
            continue  # SETTINGS, WINDOW_UPDATE, PRIORITY, PING…: not ours to read
        if stream is None:
            stream = sid
            try:
                block += _headers_fragment(payload, flags)
            except ValueError as exc:
                return _other(str(exc))
        elif ftype != _CONTINUATION or sid != stream:
            return _other("h2 header block interrupted")
        else:
            block += payload
        if flags & _END_HEADERS:
            return _decode(block)


def _more_h2(needed: int) -> Sniffed:
    return MORE if needed + len(H2_PREFACE) < MAX_HEAD else _other("h2 head too long")


def _headers_fragment(payload: bytes, flags: int) -> bytes:
    pad, start = 0, 0
    if flags & _PADDED:
        if not payload:
            raise ValueError("h2 HEADERS padding missing")
        pad, start = payload[0], 1
    if flags & _PRIORITY:
        start += 5
    if start + pad > len(payload):
        raise ValueError("h2 HEADERS padding too long")
    return payload[start : len(payload) - pad]


def _decode(block: bytes) -> Sniffed:
    try:
        # Imported here so that a host without it still routes HTTP/1 (h2c → replicas).
        from hpack import Decoder
        from hpack.exceptions import HPACKError
    except ImportError:
        return _other("the hpack package is not installed")
    try:
        decoded = Decoder().decode(block, raw=True)
    except HPACKError as exc:
        return _other(f"hpack: {exc}")
    headers = [
        (bytes(n).decode("latin-1").lower(), bytes(v).strip(b" \t").decode("latin-1"))
        for n, v in decoded
    ]
    return Sniffed(Kind.H2, headers)
