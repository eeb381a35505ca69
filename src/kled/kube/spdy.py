"""SPDY/3.1 framing, as much of it as ``kubectl port-forward`` speaks (pure: bytes in, frames out).

kubectl's port-forward multiplexes its connections over one SPDY/3.1 session
(``moby/spdystream``): it opens streams with SYN_STREAM, the server answers each with
SYN_REPLY, both sides send DATA (FIN half-closes a stream), RST_STREAM abandons one, PING
is echoed, GOAWAY ends the session. SETTINGS, HEADERS and WINDOW_UPDATE are read and
ignored (spdystream enforces no flow-control window).

Frames (big-endian): a control frame is ``1 | version(15) | type(16) | flags(8) |
length(24) | body``; a data frame is ``0 | stream id(31) | flags(8) | length(24) | data``.
Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are zlib streams primed with the SPDY/3
dictionary, one compression context per direction for the whole session; uncompressed a
block is ``count(32)`` then ``len(32) name len(32) value`` pairs, several values of one
name joined by NUL.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass, field

VERSION = 3
SYN_STREAM, SYN_REPLY, RST_STREAM, SETTINGS = 1, 2, 3, 4
PING, GOAWAY, HEADERS, WINDOW_UPDATE = 6, 7, 8, 9
FLAG_FIN = 0x01
#: RST_STREAM status codes used here
PROTOCOL_ERROR, REFUSED_STREAM, CANCEL, INTERNAL_ERROR = 1, 3, 5, 6
#: most bytes one frame may carry (24-bit length)
MAX_LENGTH = (1 << 24) - 1
#: most decompressed bytes one header block may make (a bound on a zlib bomb)
MAX_HEADER_BLOCK = 256 * 1024

_WORDS = (
    "options",
    "head",
    "post",
    "put",
    "delete",
    "trace",
    "accept",
    "accept-charset",
    "accept-encoding",
    "accept-language",
    "accept-ranges",
    "age",
    "allow",
    "authorization",
    "cache-control",
    "connection",
    "content-base",
    "content-encoding",
    "content-language",
    "content-length",
    "content-location",
    "content-md5",
    "content-range",
    "content-type",
    "date",
    "etag",
    "expect",
    "expires",
    "from",
    "host",
    "if-match",
    "if-modified-since",
    "if-none-match",
    "if-range",
    "if-unmodified-since",
    "last-modified",
    "location",
    "max-forwards",
    "pragma",
    "proxy-authenticate",
    "proxy-authorization",
    "range",
    "referer",
    "retry-after",
    "server",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "user-agent",
    "vary",
    "via",
    "warning",
    "www-authenticate",
    "method",
    "get",
    "status",
    "200 OK",
    "version",
    "HTTP/1.1",
    "url",
    "public",
    "set-cookie",
    "keep-alive",
    "origin",
)
_TAIL = (
    "100101201202205206300302303304305306307402405406407408409410411412413414415416417"
    "502504505203 Non-Authoritative Information204 No Content301 Moved Permanently"
    "400 Bad Request401 Unauthorized403 Forbidden404 Not Found500 Internal Server Error"
    "501 Not Implemented503 Service UnavailableJan Feb Mar Apr May Jun Jul Aug Sept Oct "
    "Nov Dec 00:00:00 Mon, Tue, Wed, Thu, Fri, Sat, Sun, GMTchunked,text/html,image/png,"
    "image/jpg,image/gif,application/xml,application/xhtml+xml,text/plain,"
    "text/javascript,publicprivatemax-age=gzip,deflate,sdchcharset=utf-8"
    "charset=iso-8859-1,utf-,*,enq=0."
)


def _dictionary() -> bytes:
    """The SPDY/3 header dictionary: length-prefixed words, then a run of text."""
    out = bytearray()
    for word in _WORDS:
        out += struct.pack(">I", len(word)) + word.encode()
    return bytes(out) + _TAIL.encode()


DICTIONARY = _dictionary()


class ProtocolError(ValueError):
    """The peer sent something that is not SPDY/3."""


@dataclass
class Frame:
    """One frame. ``kind`` is the control type, or 0 for DATA; ``stream`` the stream id
    (the ping id for PING, the last good stream for GOAWAY); ``value`` the status code of
    RST_STREAM and GOAWAY, the delta of WINDOW_UPDATE."""

    kind: int
    stream: int = 0
    flags: int = 0
    data: bytes = b""
    headers: dict[str, list[str]] = field(default_factory=dict)
    value: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


def encode_headers(headers: dict[str, list[str]]) -> bytes:
    """An uncompressed header block (names lowercased)."""
    out = bytearray(struct.pack(">I", len(headers)))
    for name, values in headers.items():
        key = name.lower().encode()
        value = b"\0".join(v.encode() for v in values)
        out += struct.pack(">I", len(key)) + key + struct.pack(">I", len(value)) + value
    return bytes(out)


def decode_headers(block: bytes) -> dict[str, list[str]]:
    """An uncompressed header block as name → values."""
    try:
        (count,) = struct.unpack_from(">I", block, 0)
        at, headers = 4, {}
        for _ in range(count):
            (size,) = struct.unpack_from(">I", block, at)
            name = block[at + 4 : at + 4 + size]
            at += 4 + size
            (size,) = struct.unpack_from(">I", block, at)
            value = block[at + 4 : at + 4 + size]
            at += 4 + size
            if at > len(block):
                raise ProtocolError("a header block shorter than its lengths")
            headers[name.decode("latin-1")] = value.decode("latin-1").split("\0")
    except struct.error as err:
        raise ProtocolError(f"a truncated header block: {err}") from err
    return headers


class Codec:
    """Both directions of one SPDY/3 session: ``feed`` bytes read, take frames; ``*``
    builders make the bytes to write. Each direction keeps its zlib context across frames,
    so frames must be written in the order they are built."""

    def __init__(self) -> None:
        self._buffer = bytearray()
        self._inflate = zlib.decompressobj(zdict=DICTIONARY)
        self._deflate = zlib.compressobj(zdict=DICTIONARY)

    # -- reading ----------------------------------------------------------------------------
    def feed(self, data: bytes) -> list[Frame]:
        """The frames completed by ``data`` (a partial frame waits for more)."""
        self._buffer += data
        frames = []
        while len(self._buffer) >= 8:
            (length,) = struct.unpack_from(">I", self._buffer, 4)
            length &= MAX_LENGTH
            if len(self._buffer) < 8 + length:
                break
            head = bytes(self._buffer[:8])
            body = bytes(self._buffer[8 : 8 + length])
            del self._buffer[: 8 + length]
            frames.append(self._frame(head, body))
        return frames

    def _frame(self, head: bytes, body: bytes) -> Frame:
        first, second = struct.unpack(">II", head)
        flags = second >> 24
        if not first & 0x80000000:
            return Frame(0, first & 0x7FFFFFFF, flags, body)
        version, kind = (first >> 16) & 0x7FFF, first & 0xFFFF
        if version != VERSION:
            raise ProtocolError(f"SPDY version {version}, not {VERSION}")
        try:
            if kind == SYN_STREAM:
                (stream,) = struct.unpack_from(">I", body, 0)
                headers = self._inflated(body[10:])
                return Frame(kind, stream & 0x7FFFFFFF, flags, headers=headers)
            if kind in (SYN_REPLY, HEADERS):
                (stream,) = struct.unpack_from(">I", body, 0)
                return Frame(kind, stream & 0x7FFFFFFF, flags, headers=self._inflated(body[4:]))
            if kind in (RST_STREAM, GOAWAY, WINDOW_UPDATE):
                stream, value = struct.unpack_from(">II", body, 0)
                return Frame(kind, stream & 0x7FFFFFFF, flags, value=value & 0x7FFFFFFF)
            if kind == PING:
                (ping,) = struct.unpack_from(">I", body, 0)
                return Frame(kind, ping, flags)
        except struct.error as err:
            raise ProtocolError(f"a truncated control frame of type {kind}") from err
        return Frame(kind, 0, flags, body)  # SETTINGS and unknown types: read, not used

    def _inflated(self, compressed: bytes) -> dict[str, list[str]]:
        try:
            block = self._inflate.decompress(compressed, MAX_HEADER_BLOCK)
        except zlib.error as err:
            raise ProtocolError(f"a header block that does not inflate: {err}") from err
        if self._inflate.unconsumed_tail:
            raise ProtocolError(f"a header block of more than {MAX_HEADER_BLOCK} bytes")
        return decode_headers(block)

    # -- writing ----------------------------------------------------------------------------
    def _deflated(self, headers: dict[str, list[str]]) -> bytes:
        raw = encode_headers(headers)
        return self._deflate.compress(raw) + self._deflate.flush(zlib.Z_SYNC_FLUSH)

    def syn_stream(self, stream: int, headers: dict[str, list[str]], *, fin: bool = False) -> bytes:
        body = struct.pack(">IIBB", stream, 0, 0, 0) + self._deflated(headers)
        return control(SYN_STREAM, FLAG_FIN if fin else 0, body)

    def syn_reply(
        self, stream: int, headers: dict[str, list[str]] | None = None, *, fin: bool = False
    ) -> bytes:
        body = struct.pack(">I", stream) + self._deflated(headers or {})
        return control(SYN_REPLY, FLAG_FIN if fin else 0, body)


def control(kind: int, flags: int, body: bytes) -> bytes:
    head = struct.pack(">HHI", 0x8000 | VERSION, kind, (flags << 24) | len(body))
    return head + body


def data(stream: int, payload: bytes, *, fin: bool = False) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise ValueError(f"a DATA frame carries at most {MAX_LENGTH} bytes")
    flags = FLAG_FIN if fin else 0
    return struct.pack(">II", stream & 0x7FFFFFFF, (flags << 24) | len(payload)) + payload


def rst_stream(stream: int, status: int) -> bytes:
    return control(RST_STREAM, 0, struct.pack(">II", stream, status))


def ping(ping_id: int) -> bytes:
    return control(PING, 0, struct.pack(">I", ping_id))


def goaway(last_stream: int, status: int = 0) -> bytes:
    return control(GOAWAY, 0, struct.pack(">II", last_stream, status))


def window_update(stream: int, delta: int) -> bytes:
    return control(WINDOW_UPDATE, 0, struct.pack(">II", stream, delta))
