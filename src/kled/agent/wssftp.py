"""SFTP into a workspace, as its remoteUser: ``sftp``, and ``scp`` (which speaks SFTP).

Why a server of Kled's: the image needs nothing (no ``sftp-server`` in it, maybe no libc
for one of the node's), and serving the container's files from the node as root would
write files owned by root and bypass the user's permissions. So the SSH server
(``agent/wsssh.py``) runs this module as a child for each ``sftp`` subsystem: it imports
all it needs, joins the container's namespaces and becomes remoteUser (``wsenter.enter``),
then speaks SFTP version 3 (draft-ietf-secsh-filexfer-02, what OpenSSH's clients use) on
stdin/stdout. Every file operation is the kernel's, as that user, in the container: files
land with the user's ownership and umask, and what the user may not touch fails with
"Permission denied" as it would in a shell.

Run as ``python -m kled.agent.wssftp JSON`` (``pid``, ``user``, ``workdir``). The protocol
core (:class:`SftpServer`) works on any pair of binary streams; it is tested alone.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import struct
import sys
import time
from pathlib import Path
from typing import BinaryIO

from kled.agent import wsenter

VERSION = 3
# packet types
INIT, VERSION_, OPEN, CLOSE, READ, WRITE, LSTAT, FSTAT = 1, 2, 3, 4, 5, 6, 7, 8
SETSTAT, FSETSTAT, OPENDIR, READDIR, REMOVE, MKDIR, RMDIR = 9, 10, 11, 12, 13, 14, 15
REALPATH, STAT, RENAME, READLINK, SYMLINK = 16, 17, 18, 19, 20
STATUS, HANDLE, DATA, NAME, ATTRS = 101, 102, 103, 104, 105
EXTENDED, EXTENDED_REPLY = 200, 201
# status codes
OK, EOF, NO_SUCH_FILE, PERMISSION_DENIED, FAILURE, BAD_MESSAGE, OP_UNSUPPORTED = 0, 1, 2, 3, 4, 5, 8
# attribute flags
A_SIZE, A_UIDGID, A_PERMISSIONS, A_ACMODTIME = 1, 2, 4, 8
# open flags
F_READ, F_WRITE, F_APPEND, F_CREAT, F_TRUNC, F_EXCL = 1, 2, 4, 8, 16, 32
#: the most a READ returns (OpenSSH's clients ask for 32 KiB or less)
MAX_READ = 256 * 1024

_ERRNO_STATUS = {
    errno.ENOENT: NO_SUCH_FILE,
    errno.ENOTDIR: NO_SUCH_FILE,
    errno.EACCES: PERMISSION_DENIED,
    errno.EPERM: PERMISSION_DENIED,
    errno.EROFS: PERMISSION_DENIED,
}


class BadMessage(Exception):
    pass


class Reader:
    """Fields of one packet's payload."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def u32(self) -> int:
        if self.at + 4 > len(self.data):
            raise BadMessage("short packet")
        (value,) = struct.unpack_from(">I", self.data, self.at)
        self.at += 4
        return int(value)

    def u64(self) -> int:
        if self.at + 8 > len(self.data):
            raise BadMessage("short packet")
        (value,) = struct.unpack_from(">Q", self.data, self.at)
        self.at += 8
        return int(value)

    def string(self) -> bytes:
        size = self.u32()
        if self.at + size > len(self.data):
            raise BadMessage("short packet")
        value = self.data[self.at : self.at + size]
        self.at += size
        return value

    def attrs(self) -> dict[str, int]:
        flags = self.u32()
        out: dict[str, int] = {}
        if flags & A_SIZE:
            out["size"] = self.u64()
        if flags & A_UIDGID:
            out["uid"], out["gid"] = self.u32(), self.u32()
        if flags & A_PERMISSIONS:
            out["mode"] = self.u32()
        if flags & A_ACMODTIME:
            out["atime"], out["mtime"] = self.u32(), self.u32()
        if flags & 0x80000000:  # extended pairs: read and ignored
            for _ in range(self.u32()):
                self.string(), self.string()
        return out


def _u32(value: int) -> bytes:
    return struct.pack(">I", value & 0xFFFFFFFF)


def _str(value: bytes) -> bytes:
    return _u32(len(value)) + value


def encode_attrs(st: os.stat_result) -> bytes:
    return (
        _u32(A_SIZE | A_UIDGID | A_PERMISSIONS | A_ACMODTIME)
        + struct.pack(">Q", st.st_size)
        + _u32(st.st_uid)
        + _u32(st.st_gid)
        + _u32(st.st_mode)
        + _u32(int(st.st_atime))
        + _u32(int(st.st_mtime))
    )


def longname(name: bytes, st: os.stat_result) -> bytes:
    """``ls -l``'s line, which ``sftp``'s ``ls -l`` shows as it is."""
    when = time.strftime("%b %d %H:%M", time.localtime(st.st_mtime))
    head = f"{stat.filemode(st.st_mode)} {st.st_nlink:>3} {st.st_uid:<8} {st.st_gid:<8} "
    return head.encode() + f"{st.st_size:>8} {when} ".encode() + name


class SftpServer:
    """SFTP v3 on two binary streams, every operation as the calling process."""

    def __init__(self, inp: BinaryIO, out: BinaryIO) -> None:
        self.inp = inp
        self.out = out
        self.handles: dict[bytes, int | tuple[bytes, list[bytes]]] = {}
        self.next_handle = 0

    # ---- framing ----------------------------------------------------------------------

    def _read_exactly(self, size: int) -> bytes | None:
        chunks = b""
        while len(chunks) < size:
            chunk = self.inp.read(size - len(chunks))
            if not chunk:
                return None
            chunks += chunk
        return chunks

    def _send(self, kind: int, body: bytes) -> None:
        payload = bytes([kind]) + body
        self.out.write(_u32(len(payload)) + payload)
        self.out.flush()

    def _status(self, rid: int, code: int, message: str = "") -> None:
        self._send(STATUS, _u32(rid) + _u32(code) + _str(message.encode()) + _str(b"en"))

    def serve(self) -> None:
        while True:
            head = self._read_exactly(4)
            if head is None:
                break
            (size,) = struct.unpack(">I", head)
            if not 1 <= size <= 1 << 20:
                break
            packet = self._read_exactly(size)
            if packet is None:
                break
            self.handle(packet[0], Reader(packet[1:]))
        for handle in list(self.handles):
            self._close(handle)

    # ---- dispatch ---------------------------------------------------------------------

    def handle(self, kind: int, msg: Reader) -> None:
        if kind == INIT:
            self._send(VERSION_, _u32(VERSION))
            return
        try:
            rid = msg.u32()
        except BadMessage:
            return
        op = _OPS.get(kind)
        try:
            if op is None:
                self._status(rid, OP_UNSUPPORTED, "operation not supported")
            else:
                op(self, rid, msg)
        except BadMessage as err:
            self._status(rid, BAD_MESSAGE, str(err))
        except OSError as err:
            self._status(rid, _ERRNO_STATUS.get(err.errno or 0, FAILURE), err.strerror or "")

    def _new_handle(self, value: int | tuple[bytes, list[bytes]]) -> bytes:
        self.next_handle += 1
        handle = str(self.next_handle).encode()
        self.handles[handle] = value
        return handle

    def _fd(self, handle: bytes) -> int:
        value = self.handles.get(handle)
        if not isinstance(value, int):
            raise BadMessage("not an open file")
        return value

    def _close(self, handle: bytes) -> None:
        value = self.handles.pop(handle, None)
        if isinstance(value, int):
            os.close(value)

    def _attrs_reply(self, rid: int, st: os.stat_result) -> None:
        self._send(ATTRS, _u32(rid) + encode_attrs(st))

    @staticmethod
    def _apply(path: bytes | int, attrs: dict[str, int]) -> None:
        if "size" in attrs:
            os.truncate(path, attrs["size"])
        if "uid" in attrs:
            os.chown(path, attrs["uid"], attrs["gid"])
        if "mode" in attrs:
            os.chmod(path, attrs["mode"] & 0o7777)
        if "mtime" in attrs:
            os.utime(path, (attrs["atime"], attrs["mtime"]))

    # ---- operations -------------------------------------------------------------------

    def op_open(self, rid: int, msg: Reader) -> None:
        path, pflags, attrs = msg.string(), msg.u32(), msg.attrs()
        rw = pflags & (F_READ | F_WRITE)
        flags = {F_READ: os.O_RDONLY, F_WRITE: os.O_WRONLY}.get(rw, os.O_RDWR)
        for bit, extra in ((F_APPEND, os.O_APPEND), (F_CREAT, os.O_CREAT)):
            if pflags & bit:
                flags |= extra
        for bit, extra in ((F_TRUNC, os.O_TRUNC), (F_EXCL, os.O_EXCL)):
            if pflags & bit:
                flags |= extra
        fd = os.open(path, flags | os.O_CLOEXEC, attrs.get("mode", 0o666) & 0o7777)
        self._send(HANDLE, _u32(rid) + _str(self._new_handle(fd)))

    def op_close(self, rid: int, msg: Reader) -> None:
        self._close(msg.string())
        self._status(rid, OK)

    def op_read(self, rid: int, msg: Reader) -> None:
        fd, offset, size = self._fd(msg.string()), msg.u64(), msg.u32()
        data = os.pread(fd, min(size, MAX_READ), offset)
        if not data:
            self._status(rid, EOF, "end of file")
        else:
            self._send(DATA, _u32(rid) + _str(data))

    def op_write(self, rid: int, msg: Reader) -> None:
        fd, offset, data = self._fd(msg.string()), msg.u64(), msg.string()
        view = memoryview(data)
        while view:
            view = view[os.pwrite(fd, view, offset + len(data) - len(view)) :]
        self._status(rid, OK)

    def op_lstat(self, rid: int, msg: Reader) -> None:
        self._attrs_reply(rid, os.lstat(msg.string()))

    def op_stat(self, rid: int, msg: Reader) -> None:
        self._attrs_reply(rid, os.stat(msg.string()))

    def op_fstat(self, rid: int, msg: Reader) -> None:
        self._attrs_reply(rid, os.fstat(self._fd(msg.string())))

    def op_setstat(self, rid: int, msg: Reader) -> None:
        path, attrs = msg.string(), msg.attrs()
        self._apply(path, attrs)
        self._status(rid, OK)

    def op_fsetstat(self, rid: int, msg: Reader) -> None:
        fd, attrs = self._fd(msg.string()), msg.attrs()
        self._apply(fd, attrs)
        self._status(rid, OK)

    def op_opendir(self, rid: int, msg: Reader) -> None:
        path = msg.string()
        names = [b".", b"..", *sorted(os.listdir(path))]
        self._send(HANDLE, _u32(rid) + _str(self._new_handle((path, names))))

    def op_readdir(self, rid: int, msg: Reader) -> None:
        value = self.handles.get(msg.string())
        if not isinstance(value, tuple):
            raise BadMessage("not an open directory")
        folder, names = value
        batch, names[:] = names[:100], names[100:]
        if not batch:
            self._status(rid, EOF, "end of directory")
            return
        body = b""
        count = 0
        for name in batch:
            try:
                st = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            body += _str(name) + _str(longname(name, st)) + encode_attrs(st)
            count += 1
        self._send(NAME, _u32(rid) + _u32(count) + body)

    def op_remove(self, rid: int, msg: Reader) -> None:
        os.unlink(msg.string())
        self._status(rid, OK)

    def op_mkdir(self, rid: int, msg: Reader) -> None:
        path, attrs = msg.string(), msg.attrs()
        os.mkdir(path, attrs.get("mode", 0o777) & 0o7777)
        self._status(rid, OK)

    def op_rmdir(self, rid: int, msg: Reader) -> None:
        os.rmdir(msg.string())
        self._status(rid, OK)

    def op_realpath(self, rid: int, msg: Reader) -> None:
        path = msg.string() or b"."
        real = os.path.realpath(path)
        st_line = _str(real) + _str(real) + _u32(0)
        self._send(NAME, _u32(rid) + _u32(1) + st_line)

    def op_rename(self, rid: int, msg: Reader) -> None:
        old, new = msg.string(), msg.string()
        if os.path.lexists(new):  # v3: renaming onto an existing name fails
            raise OSError(errno.EEXIST, "file exists")
        os.rename(old, new)
        self._status(rid, OK)

    def op_readlink(self, rid: int, msg: Reader) -> None:
        target = os.readlink(msg.string())
        self._send(NAME, _u32(rid) + _u32(1) + _str(target) + _str(target) + _u32(0))

    def op_symlink(self, rid: int, msg: Reader) -> None:
        # OpenSSH sends (target, link), the reverse of the draft: follow the client
        target, link = msg.string(), msg.string()
        os.symlink(target, link)
        self._status(rid, OK)


_OPS = {
    OPEN: SftpServer.op_open,
    CLOSE: SftpServer.op_close,
    READ: SftpServer.op_read,
    WRITE: SftpServer.op_write,
    LSTAT: SftpServer.op_lstat,
    FSTAT: SftpServer.op_fstat,
    SETSTAT: SftpServer.op_setstat,
    FSETSTAT: SftpServer.op_fsetstat,
    OPENDIR: SftpServer.op_opendir,
    READDIR: SftpServer.op_readdir,
    REMOVE: SftpServer.op_remove,
    MKDIR: SftpServer.op_mkdir,
    RMDIR: SftpServer.op_rmdir,
    REALPATH: SftpServer.op_realpath,
    STAT: SftpServer.op_stat,
    RENAME: SftpServer.op_rename,
    READLINK: SftpServer.op_readlink,
    SYMLINK: SftpServer.op_symlink,
}


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m kled.agent.wssftp JSON", file=sys.stderr)
        return 2
    try:
        plan = json.loads(argv[0])
        pid = int(plan["pid"])
        who = wsenter.account(Path(f"/proc/{pid}/root"), plan.get("user"))
        wsenter.enter(pid, who, plan.get("workdir"))
    except (OSError, ValueError, KeyError) as err:
        print(f"kled: sftp: cannot enter the workspace: {err}", file=sys.stderr)
        return 1
    SftpServer(sys.stdin.buffer, sys.stdout.buffer).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
