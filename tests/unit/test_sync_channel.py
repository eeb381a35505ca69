"""The sync channel's framing, request ids, streaming and backpressure over in-memory pipes,
and the remote side's answers to a session speaking through one."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kled.sync import remote as remote_module
from kled.sync.channel import (
    CHUNK,
    HEADER,
    MAX_FRAME,
    Channel,
    ChannelError,
    Client,
    Header,
    decode,
    encode,
    hello,
)
from kled.sync.remote import Remote


class MemoryWriter:
    """Feeds what is written straight into a StreamReader (no buffer limit)."""

    def __init__(self, reader: asyncio.StreamReader) -> None:
        self.reader = reader
        self.frames = 0

    def write(self, data: bytes) -> None:
        self.frames += 1
        self.reader.feed_data(data)

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        self.reader.feed_eof()


def memory_pair() -> tuple[Channel, Channel]:
    a_in, b_in = asyncio.StreamReader(), asyncio.StreamReader()
    return Channel(a_in, MemoryWriter(b_in)), Channel(b_in, MemoryWriter(a_in))


async def os_pipe() -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A kernel pipe (64 KiB of buffer): the writer really waits for the reader."""
    loop = asyncio.get_running_loop()
    r, w = os.pipe()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(r, "rb"))
    transport, protocol = await loop.connect_write_pipe(
        asyncio.streams.FlowControlMixin, os.fdopen(w, "wb")
    )
    return reader, asyncio.StreamWriter(transport, protocol, None, loop)


def test_frames_round_trip_small_ones_uncompressed() -> None:
    frame = encode(7, {"op": "x"}, b"abc")
    length, rid, flags = HEADER.unpack(frame[: HEADER.size])
    assert (rid, flags, length) == (7, 0, len(frame) - HEADER.size)
    assert decode(flags, frame[HEADER.size :]) == ({"op": "x"}, b"abc")


def test_large_compressible_payloads_are_zlib_compressed() -> None:
    data = b"print('hello')\n" * 10_000
    frame = encode(1, {"op": "data"}, data)
    _, _, flags = HEADER.unpack(frame[: HEADER.size])
    assert flags == 1 and len(frame) < len(data) // 10
    assert decode(flags, frame[HEADER.size :]) == ({"op": "data"}, data)


def test_incompressible_payloads_stay_raw() -> None:
    data = os.urandom(4096)
    frame = encode(1, {"op": "data"}, data)
    assert HEADER.unpack(frame[: HEADER.size])[2] == 0


def test_a_frame_over_the_limit_is_refused_both_ways() -> None:
    with pytest.raises(ChannelError):
        encode(1, {"op": "data"}, os.urandom(MAX_FRAME + 1))


async def test_a_peer_announcing_a_huge_frame_breaks_the_channel() -> None:
    reader = asyncio.StreamReader()
    reader.feed_data(struct.pack(">IIB", MAX_FRAME + 1, 1, 0))
    with pytest.raises(ChannelError, match="over the limit"):
        await Channel(reader, MemoryWriter(asyncio.StreamReader())).recv()


async def test_replies_are_matched_by_request_id_out_of_order() -> None:
    near, far = memory_pair()
    events: list[Header] = []
    client = Client(near, events.append)
    client.start()
    first = await client.request({"op": "a"})
    second = await client.request({"op": "b"})
    (rid_a, ha, _), (rid_b, hb, _) = await far.recv(), await far.recv()
    assert (ha["op"], hb["op"]) == ("a", "b") and rid_a != rid_b
    await far.send(0, {"op": "changed", "paths": ["x"]})
    await far.send(rid_b, {"op": "b-reply"})
    await far.send(rid_a, {"op": "a-reply"})
    assert (await second)["op"] == "b-reply"
    assert (await first)["op"] == "a-reply"
    assert events == [{"op": "changed", "paths": ["x"]}]
    await client.close()


async def test_a_closed_channel_fails_what_is_pending() -> None:
    near, far = memory_pair()
    client = Client(near, lambda _: None)
    client.start()
    waiting = await client.request({"op": "index"})
    far.close()
    with pytest.raises(ChannelError):
        await waiting
    assert client.closed.is_set()
    with pytest.raises(ChannelError):
        await client.request({"op": "index"})


async def test_a_file_is_streamed_in_chunks(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(3 * CHUNK + 5))
    near, far = memory_pair()
    client = Client(near, lambda _: None)
    client.start()
    reply = await client.put_file({"path": "big"}, str(big))
    got, sizes = b"", []
    while True:
        rid, header, data = await far.recv()
        if header["op"] == "end":
            break
        if header["op"] in ("put", "data"):
            sizes.append(len(data))
            got += data
    assert sizes == [CHUNK, CHUNK, CHUNK, 5]
    assert got == big.read_bytes()
    await far.send(rid, {"op": "end", "ok": True})
    assert (await reply)["ok"]
    await client.close()


async def test_a_small_file_is_one_frame(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.write_bytes(b"tiny")
    near, far = memory_pair()
    client = Client(near, lambda _: None)
    client.start()
    await client.put_file({"path": "small"}, str(small))
    _, header, data = await far.recv()
    assert (header["op"], header["last"], data) == ("put", True, b"tiny")
    await client.close()


async def test_a_reader_that_stops_reading_holds_the_writer_back(tmp_path: Path) -> None:
    big = tmp_path / "big"
    big.write_bytes(os.urandom(8 * CHUNK))
    reader, writer = await os_pipe()
    sender = Channel(asyncio.StreamReader(), writer)
    client = Client(sender, lambda _: None)
    task = asyncio.create_task(client.put_file({"path": "big"}, str(big)))
    await asyncio.sleep(0.3)
    assert not task.done(), "the whole file went into a pipe nobody reads"
    assert sender.sent_bytes < 3 * CHUNK
    receiver = Channel(reader, writer)
    frames = 0
    while True:
        _, header, _ = await receiver.recv()
        frames += 1
        if header["op"] == "end":
            break
    await task
    assert frames == 9, "put with the first chunk, 7 data frames, end"
    writer.close()


@contextlib.asynccontextmanager
async def remote_over_memory(root: Path, token: str = "s3cret") -> AsyncIterator[Client]:
    near, far = memory_pair()
    server = asyncio.create_task(Remote(str(root), token, far).serve())
    client = Client(near, lambda _: None)
    client.start()
    try:
        yield client
    finally:
        await client.close()
        server.cancel()
        with contextlib.suppress(asyncio.CancelledError, ChannelError):
            await server


async def test_a_wrong_token_is_refused(tmp_path: Path) -> None:
    async with remote_over_memory(tmp_path) as client:
        with pytest.raises(ChannelError, match="bad token"):
            await hello(client, "guess", [])


async def test_remote_writes_atomically_and_refuses_escapes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(remote_module, "INDEX_PAGE", 3)
    src = tmp_path / "src"
    src.write_bytes(b"x" * (CHUNK + 1))
    root = tmp_path / "root"
    async with remote_over_memory(root) as client:
        assert (await hello(client, "s3cret", ["*.log"]))["ok"]
        put = await client.put_file({"path": "d/f", "mode": 0o750, "mtime_ns": 10**18}, str(src))
        reply = await put
        assert reply["ok"] and reply["entry"][0:2] == ["file", CHUNK + 1]
        assert not (root / "d/f").exists(), "visible before the commit"
        assert (await client.call({"op": "commit"}))["errors"] == []
        assert (root / "d/f").read_bytes() == src.read_bytes()
        assert (root / "d/f").stat().st_mode & 0o777 == 0o750
        assert not [p for p in (root / "d").iterdir() if p.name != "f"], "a temp file stayed"
        bad = await (await client.put_file({"path": "../out"}, str(src)))
        assert not bad["ok"] and not (tmp_path / "out").exists()
        batch = await client.call(
            {
                "op": "batch",
                "ops": [
                    ["symlink", "evil", "/etc"],
                    ["symlink", "d/up", "../../x"],
                    ["symlink", "ok", "d/f"],
                    ["mkdir", "e", 0o700],
                ],
            }
        )
        assert [bool(e) for e in batch["errors"]] == [True, True, False, False]
        assert not (root / "evil").exists() and not (root / "d/up").is_symlink()
        (root / "skip.log").write_text("excluded")
        reply, pages = await client.collect({"op": "index", "paths": None})
        assert reply == {"op": "index", "pages": 2}, "the index comes in pages"
        entries = {p for page in pages for p in json.loads(page)}
        assert sorted(entries) == ["d", "d/f", "e", "ok"]
