"""The SFTP v3 core of ``agent/wssftp.py`` on in-memory streams, in a temporary folder:
framing, the replies OpenSSH's clients read, and errors as SFTP status codes."""

from __future__ import annotations

import io
import os
import struct
from pathlib import Path

import pytest

from kled.agent import wssftp as s


def packet(kind: int, rid: int, *fields: bytes) -> bytes:
    body = bytes([kind]) + struct.pack(">I", rid) + b"".join(fields)
    return struct.pack(">I", len(body)) + body


def string(value: bytes) -> bytes:
    return struct.pack(">I", len(value)) + value


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def replies(*packets: bytes) -> list[tuple[int, s.Reader]]:
    init = struct.pack(">I", 5) + bytes([s.INIT]) + u32(3)
    out = io.BytesIO()
    s.SftpServer(io.BytesIO(init + b"".join(packets)), out).serve()
    data, found = out.getvalue(), []
    while data:
        (size,) = struct.unpack(">I", data[:4])
        found.append((data[4], s.Reader(data[5 : 4 + size])))
        data = data[4 + size :]
    return found


def status(reply: tuple[int, s.Reader]) -> int:
    kind, msg = reply
    assert kind == s.STATUS
    msg.u32()
    return msg.u32()


@pytest.fixture(autouse=True)
def here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_version_then_write_read_and_eof(here: Path) -> None:
    flags = s.F_WRITE | s.F_CREAT | s.F_TRUNC
    got = replies(packet(s.OPEN, 1, string(b"f.txt"), u32(flags), u32(s.A_PERMISSIONS),
                         u32(0o640)))  # fmt: skip
    assert got[0][0] == s.VERSION_ and got[0][1].u32() == 3
    kind, msg = got[1]
    assert kind == s.HANDLE and msg.u32() == 1
    handle = msg.string()
    got = replies(
        packet(s.OPEN, 1, string(b"f.txt"), u32(flags), u32(s.A_PERMISSIONS), u32(0o640)),
        packet(s.WRITE, 2, string(handle), struct.pack(">Q", 0), string(b"hello")),
        packet(s.CLOSE, 3, string(handle)),
        packet(s.OPEN, 4, string(b"f.txt"), u32(s.F_READ), u32(0)),
        packet(s.READ, 5, string(b"2"), struct.pack(">Q", 1), u32(100)),
        packet(s.READ, 6, string(b"2"), struct.pack(">Q", 5), u32(100)),
    )
    assert [status(got[2]), status(got[3])] == [s.OK, s.OK]
    kind, msg = got[5]
    assert kind == s.DATA and msg.u32() == 5 and msg.string() == b"ello"
    assert status(got[6]) == s.EOF
    assert (here / "f.txt").read_text() == "hello"
    assert (here / "f.txt").stat().st_mode & 0o777 == 0o640 & ~_umask()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_errors_are_sftp_status_codes(here: Path) -> None:
    (here / "a").write_text("a")
    (here / "b").write_text("b")
    got = replies(
        packet(s.STAT, 1, string(b"missing")),
        packet(s.RENAME, 2, string(b"a"), string(b"b")),  # v3: not onto an existing name
        packet(s.READ, 3, string(b"nope"), struct.pack(">Q", 0), u32(1)),
        packet(99, 4),
    )
    assert status(got[1]) == s.NO_SUCH_FILE
    assert status(got[2]) == s.FAILURE and (here / "b").read_text() == "b"
    assert status(got[3]) == s.BAD_MESSAGE
    assert status(got[4]) == s.OP_UNSUPPORTED


def test_realpath_readdir_and_folders(here: Path) -> None:
    got = replies(
        packet(s.REALPATH, 1, string(b".")),
        packet(s.MKDIR, 2, string(b"box"), u32(0)),
        packet(s.OPENDIR, 3, string(b".")),
        packet(s.READDIR, 4, string(b"1")),
        packet(s.READDIR, 5, string(b"1")),
        packet(s.RMDIR, 6, string(b"box")),
    )
    kind, msg = got[1]
    assert kind == s.NAME and msg.u32() == 1 and msg.u32() == 1
    assert msg.string() == str(here).encode()
    assert status(got[2]) == s.OK
    kind, msg = got[4]
    msg.u32()
    names = []
    for _ in range(msg.u32()):
        names.append(msg.string())
        assert msg.string().startswith((b"d", b"-"))  # ls -l's line
        msg.attrs()
    assert names == [b".", b"..", b"box"]
    assert status(got[5]) == s.EOF
    assert status(got[6]) == s.OK and not (here / "box").exists()
