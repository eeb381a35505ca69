"""The inside of a ``process`` workspace: its namespaces, its root, its sessions.

A process workspace has no image and no container engine: it is a process tree in
namespaces of its own, made by this module as root on the node (the agent runs it).

``init NAME`` makes the workspace run: it joins the pod's network namespace (when the
team mesh gave the workspace one), unshares mount, UTS, IPC and PID namespaces and forks
the workspace's pid 1, which builds a root of its own on a tmpfs and ``pivot_root``s into
it. That root holds the node's ``/usr``, ``/opt`` and ``/lib*`` read-only (the node's
tools are the workspace's tools), an ``/etc`` overlay (the node's, plus the workspace's
user in ``passwd``/``group``, its ``hostname``, ``hosts`` and the pod's ``resolv.conf``), a
``/dev`` with only the harmless nodes and a ``devpts`` of its own, a ``/proc`` of its
PID namespace, ``/sys`` read-only, and the workspace's own persistent folders: ``/tmp``,
``/home/<user>``, the source and the volumes at their targets. Nothing else of the node
is visible (no other user's home, no ``/root``, no ``/var``, no ``/run``). pid 1 then reaps
orphans until it is told to stop (SIGTERM: every process of the namespace gets SIGTERM,
then SIGKILL).

``inspect --format '{{json .State.Pid}}' NAME`` prints pid 1's pid on the node, as ``podman
inspect`` does, for the SSH server's SFTP and forwarding (``wsenter``).

``exec [-i] [-t] [--user U] [--workdir DIR] [--env-file F] [--env K=V]… NAME CMD…`` runs a
command in it, taking the options ``podman exec`` takes so that the workspace runner, the
exec server and the SSH server use it as they use the engine: it joins pid 1's namespaces
(and cgroup), becomes the workspace's user (no capabilities, no supplementary groups), and
runs the command with the workspace's containerEnv, then the session's env, in the
working directory. Its exit code is the command's (128 + N for a signal).

The state a workspace is made from is ``<root>/sandboxes/<NAME>/state.json``
(``wsprocess.ProcessEngine`` writes it); ``init.pid`` holds pid 1's pid on the node and
its start time (a reused pid is not taken for it).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import signal
import socket
import sys
import termios
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: what a session's PATH is unless containerEnv or the session says otherwise
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: the node's folders the workspace sees, read-only (a symlink on the node stays one)
READ_ONLY = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt", "/srv")
#: the device nodes the workspace gets
DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
#: the namespaces a session joins, in order (mnt last: the paths before are the node's)
NAMESPACES = ("net", "uts", "ipc", "pid", "mnt")
STOP_GRACE = 3.0

_CLONE_NEWNS = 0x00020000
_CLONE_NEWUTS = 0x04000000
_CLONE_NEWIPC = 0x08000000
_CLONE_NEWPID = 0x20000000
_MS_RDONLY = 1
_MS_NOSUID = 2
_MS_NODEV = 4
_MS_NOEXEC = 8
_MS_REMOUNT = 32
_MS_BIND = 4096
_MS_REC = 16384
_MS_PRIVATE = 1 << 18
_MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41, "riscv64": 41, "ppc64le": 203, "s390x": 217}

_libc = ctypes.CDLL(None, use_errno=True)


class SandboxError(Exception):
    """One line for the user: why the workspace cannot run or be entered."""


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise SandboxError(f"{what}: {os.strerror(err)}")


def mount(source: str | None, target: str, fstype: str | None, flags: int, data: str = "") -> None:
    _check(
        _libc.mount(
            None if source is None else source.encode(),
            target.encode(),
            None if fstype is None else fstype.encode(),
            ctypes.c_ulong(flags),
            data.encode() if data else None,
        ),
        f"mount of {target}",
    )


def bind(source: str, target: str, *, read_only: bool = False, device: bool = False) -> None:
    """``source`` at ``target``: nosuid always, nodev unless it is a ``device`` node."""
    mount(source, target, None, _MS_BIND | _MS_REC)
    flags = _MS_BIND | _MS_REMOUNT | _MS_NOSUID | (0 if device else _MS_NODEV)
    mount(None, target, None, flags | (_MS_RDONLY if read_only else 0))


def setns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        _check(_libc.setns(fd, 0), f"joining {path}")
    finally:
        os.close(fd)


# ---- the state on disk -----------------------------------------------------------------


def sandbox_dir(root: Path, name: str) -> Path:
    if not name or "/" in name or name.startswith("."):
        raise SandboxError(f"no workspace named {name!r}")
    return root / "sandboxes" / name


def read_state(folder: Path) -> dict[str, Any]:
    try:
        state: dict[str, Any] = json.loads((folder / "state.json").read_text())
    except (OSError, ValueError) as e:
        raise SandboxError(f"no process workspace {folder.name}") from e
    return state


def start_time(pid: int) -> str:
    """The process's start time (clock ticks since boot); "" when there is no such pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]


def running_pid(folder: Path) -> int | None:
    """pid 1 of the workspace, on the node, while it runs."""
    try:
        pid_text, _, started = (folder / "init.pid").read_text().strip().partition(" ")
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if not started or start_time(pid) != started:
        return None
    return pid


# ---- init: pid 1 of the workspace --------------------------------------------------------


def _etc(new_root: Path, scratch: Path, state: dict[str, Any]) -> None:
    """``/etc``: the node's, overlaid with the workspace's user, names and resolver."""
    etc = new_root / "etc"
    etc.mkdir()
    mount("tmpfs", str(scratch), "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0700,size=16m")
    (scratch / "up").mkdir()
    (scratch / "work").mkdir()
    options = f"lowerdir=/etc,upperdir={scratch}/up,workdir={scratch}/work"
    mount("overlay", str(etc), "overlay", _MS_NOSUID | _MS_NODEV, options)
    user, uid, gid, home = state["user"], int(state["uid"]), int(state["gid"]), state["home"]

    def without(path: str, name: str, number: int) -> list[str]:
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            return []
        kept = []
        for line in lines:
            fields = line.split(":")
            if fields[0] == name or (len(fields) > 2 and fields[2] == str(number)):
                continue
            kept.append(line)
        return kept

    shell = "/bin/bash" if Path("/bin/bash").exists() else "/bin/sh"
    passwd = [*without("/etc/passwd", user, uid), f"{user}:x:{uid}:{gid}::{home}:{shell}"]
    group = [*without("/etc/group", user, gid), f"{user}:x:{gid}:"]
    resolv = ""
    for candidate in (state.get("resolv") or "", "/etc/resolv.conf"):
        with contextlib.suppress(OSError):
            if candidate:
                resolv = Path(candidate).read_text()
                break
    hostname = state["hostname"]
    hosts = f"127.0.0.1\tlocalhost\n::1\tlocalhost\n{state.get('ip') or '127.0.1.1'}\t{hostname}\n"
    for name, text in (
        ("passwd", "\n".join(passwd) + "\n"),
        ("group", "\n".join(group) + "\n"),
        ("hostname", hostname + "\n"),
        ("hosts", hosts),
        ("resolv.conf", resolv),
    ):
        target = etc / name
        with contextlib.suppress(FileNotFoundError):
            target.unlink()  # a symlink on the node (resolv.conf) becomes a file here
        target.write_text(text)
    # the node's secrets stay the node's
    for secret in ("shadow", "gshadow", "sudoers", "sudoers.d", "ssh"):
        hidden = etc / secret
        if hidden.is_dir() and not hidden.is_symlink():
            mount("tmpfs", str(hidden), "tmpfs", _MS_RDONLY | _MS_NOSUID | _MS_NODEV, "size=4k")
        elif hidden.exists():
            hidden.unlink()


def _dev(new_root: Path) -> None:
    dev = new_root / "dev"
    dev.mkdir()
    mount("tmpfs", str(dev), "tmpfs", _MS_NOSUID | _MS_NOEXEC, "mode=0755,size=64k")
    for name in DEVICES:
        if Path("/dev", name).exists():
            (dev / name).touch()
            bind(f"/dev/{name}", str(dev / name), device=True)
    (dev / "pts").mkdir()
    mount(
        "devpts",
        str(dev / "pts"),
        "devpts",
        _MS_NOSUID | _MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )
    (dev / "ptmx").symlink_to("pts/ptmx")
    (dev / "shm").mkdir()
    mount("tmpfs", str(dev / "shm"), "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=1777,size=64m")
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
                         ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2")):  # fmt: skip
        (dev / name).symlink_to(target)


def _mount_point(new_root: Path, target: str, *, directory: bool = True) -> Path:
    path = new_root / target.lstrip("/")
    if ".." in Path(target).parts or not target.startswith("/"):
        raise SandboxError(f"mount target {target} is not an absolute path")
    try:
        if directory:
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
    except OSError as e:
        raise SandboxError(f"mount target {target} cannot be made: {e.strerror}") from e
    return path


def build_root(folder: Path, state: dict[str, Any]) -> Path:
    """The workspace's root, on a tmpfs, with everything mounted in it (not entered yet)."""
    mount(None, "/", None, _MS_REC | _MS_PRIVATE)
    new_root = folder / "root"
    new_root.mkdir(exist_ok=True)
    mount("tmpfs", str(new_root), "tmpfs", _MS_NOSUID | _MS_NODEV, "mode=0755,size=16m")
    for path in READ_ONLY:
        node = Path(path)
        inside = new_root / path.lstrip("/")
        if node.is_symlink():
            inside.symlink_to(os.readlink(node))
        elif node.is_dir():
            inside.mkdir()
            bind(path, str(inside), read_only=True)
    etc_scratch = folder / "etc"
    etc_scratch.mkdir(exist_ok=True)
    _etc(new_root, etc_scratch, state)
    _dev(new_root)
    (new_root / "proc").mkdir()
    mount("proc", str(new_root / "proc"), "proc", _MS_NOSUID | _MS_NODEV | _MS_NOEXEC)
    (new_root / "sys").mkdir()
    bind("/sys", str(new_root / "sys"), read_only=True)
    for path, mode in (("run", 0o755), ("var", 0o755), ("var/tmp", 0o1777), ("root", 0o700)):
        (new_root / path).mkdir()
        os.chmod(new_root / path, mode)
    bind(str(folder / "tmp"), str(_mount_point(new_root, "/tmp")))
    bind(str(folder / "home"), str(_mount_point(new_root, state["home"])))
    for entry in state.get("mounts") or []:
        target = str(entry["target"])
        if entry["type"] == "tmpfs":
            mount(
                "tmpfs",
                str(_mount_point(new_root, target)),
                "tmpfs",
                _MS_NOSUID | _MS_NODEV,
                "mode=1777",
            )
            continue
        source = Path(str(entry["source"]))
        if not source.exists():
            raise SandboxError(f"mount source {source} does not exist")
        point = _mount_point(new_root, target, directory=source.is_dir())
        bind(str(source), str(point), read_only=bool(entry.get("read_only")))
    return new_root


def pivot(new_root: Path) -> None:
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None:
        raise SandboxError(f"pivot_root is not known on {os.uname().machine}")
    old = new_root / ".oldroot"
    old.mkdir()
    os.chdir(new_root)
    _check(_libc.syscall(number, b".", b".oldroot"), "pivot_root")
    os.chdir("/")
    _check(_libc.umount2(b"/.oldroot", _MNT_DETACH), "unmounting the node's root")
    os.rmdir("/.oldroot")
    # the root itself read-only: only the mounted folders are writable
    mount(None, "/", None, _MS_BIND | _MS_REMOUNT | _MS_RDONLY | _MS_NOSUID | _MS_NODEV)


class _Stop(Exception):
    pass


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def reap_forever() -> None:
    """pid 1's work: reap whatever ends; at SIGTERM end everything, then itself."""
    signal.signal(signal.SIGCHLD, lambda *_: None)
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    try:
        while True:
            try:
                os.wait()
            except ChildProcessError:
                signal.pause()
    except _Stop:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGTERM)
    until = time.monotonic() + STOP_GRACE
    while time.monotonic() < until:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            time.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        os.kill(-1, signal.SIGKILL)


def init(root: Path, name: str) -> int:
    """Start the workspace: namespaces, then pid 1 (forked) builds its root and waits.
    This process stays as pid 1's parent on the node and ends with it."""
    folder = sandbox_dir(root, name)
    state = read_state(folder)
    (folder / "ready").unlink(missing_ok=True)
    netns = str(state.get("netns") or "")
    if netns:
        if not Path(netns).exists():
            raise SandboxError(f"its network namespace {netns} is gone")
        setns(netns)
    # a PID namespace for the child only; the rest is the child's alone, so that this
    # process stays in the node's mounts (pid 1's pivot_root moves its namespace's root)
    _check(_libc.unshare(_CLONE_NEWPID), "unshare")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        try:
            _check(_libc.unshare(_CLONE_NEWNS | _CLONE_NEWUTS | _CLONE_NEWIPC), "unshare")
            cgroup = str(state.get("cgroup") or "")
            if cgroup:
                Path(cgroup, "cgroup.procs").write_text("0")
            socket.sethostname(state["hostname"])
            new_root = build_root(folder, state)
            ready = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
            pivot(new_root)
            os.close(ready)
        except (SandboxError, OSError) as e:
            os.write(write_end, str(e).encode()[:500])
            os._exit(1)
        os.write(write_end, b"ok")
        os.close(write_end)
        os.closerange(3, 1024)
        reap_forever()
        os._exit(0)
    os.close(write_end)
    (folder / "init.pid").write_text(f"{pid} {start_time(pid)}\n")
    answer = b""
    while chunk := os.read(read_end, 512):
        answer += chunk
    os.close(read_end)
    if answer != b"ok":
        os.waitpid(pid, 0)
        raise SandboxError(answer.decode(errors="replace") or "the workspace's pid 1 ended")
    started = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    (folder / "ready").write_text(started + "\n")
    # stdio closed: the agent that started this is not held by it
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) if status else 0


# ---- exec: a session in the workspace ---------------------------------------------------


def parse_exec(args: list[str]) -> tuple[dict[str, Any], str, list[str]]:
    """``podman exec``'s options (those the runner and servers use), the name, the argv."""
    options: dict[str, Any] = {"env": {}, "env_file": None, "workdir": None, "user": None}
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        key, eq, value = arg.partition("=")
        takes = key in ("--user", "-u", "--workdir", "-w", "--env-file", "--env", "-e")
        if takes and not eq:
            i += 1
            if i >= len(args):
                raise SandboxError(f"{arg} needs a value")
            value = args[i]
        if key in ("--user", "-u"):
            options["user"] = value
        elif key in ("--workdir", "-w"):
            options["workdir"] = value
        elif key == "--env-file":
            options["env_file"] = value
        elif key in ("--env", "-e"):
            name, _, val = value.partition("=")
            options["env"][name] = val
        elif arg not in ("-i", "-t", "-it", "-ti", "--interactive", "--tty"):
            raise SandboxError(f"unknown option {arg}")
        i += 1
    if i >= len(args):
        raise SandboxError("exec needs a workspace name")
    return options, args[i], args[i + 1 :]


def read_env_file(path: str | None) -> dict[str, str]:
    if not path:
        return {}
    env: dict[str, str] = {}
    for line in Path(path).read_text().splitlines():
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            env[key] = value
    return env


def session_env(state: dict[str, Any], options: dict[str, Any]) -> dict[str, str]:
    env = {
        "PATH": DEFAULT_PATH,
        "HOME": state["home"],
        "USER": state["user"],
        "LOGNAME": state["user"],
        "SHELL": "/bin/sh",
        "HOSTNAME": state["hostname"],
    }
    env.update(state.get("env") or {})
    env.update(read_env_file(options["env_file"]))
    env.update(options["env"])
    return env


def enter(root: Path, args: list[str]) -> int:
    options, name, argv = parse_exec(args)
    if not argv:
        raise SandboxError("exec needs a command")
    folder = sandbox_dir(root, name)
    state = read_state(folder)
    pid = running_pid(folder)
    if pid is None:
        raise SandboxError(f"workspace {name} is not running")
    env = session_env(state, options)
    workdir = options["workdir"] or state["home"]
    cgroup = str(state.get("cgroup") or "")
    if cgroup:
        with contextlib.suppress(OSError):
            Path(cgroup, "cgroup.procs").write_text("0")
    root_fd = os.open(f"/proc/{pid}/root", os.O_RDONLY | os.O_DIRECTORY)
    for ns in NAMESPACES:
        setns(f"/proc/{pid}/ns/{ns}")
    os.fchdir(root_fd)  # pid 1's root, as ``nsenter --root`` takes it
    os.chroot(".")
    os.close(root_fd)
    child = os.fork()
    if child == 0:
        try:
            if os.isatty(0):
                # the terminal is this session's, inside the PID namespace: a shell's job
                # control finds its process groups there (taken from the outer session)
                os.setsid()
                fcntl.ioctl(0, termios.TIOCSCTTY, 1)
            os.setgroups([])
            os.setgid(int(state["gid"]))
            os.setuid(int(state["uid"]))
            try:
                os.chdir(workdir)
            except OSError as e:
                sys.stderr.write(f"workdir {workdir}: {e.strerror}\n")
                os._exit(126)
            os.execvpe(argv[0], argv, env)
        except FileNotFoundError:
            sys.stderr.write(f"{argv[0]}: command not found\n")
            os._exit(127)
        except OSError as e:
            sys.stderr.write(f"{argv[0]}: {e.strerror}\n")
            os._exit(126)

    def forward(signum: int, frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signum)

    for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGQUIT):
        signal.signal(signum, forward)
    _, status = os.waitpid(child, 0)
    code = os.waitstatus_to_exitcode(status)
    return 128 - code if code < 0 else code


def inspect(root: Path, args: list[str]) -> int:
    """``inspect --format '{{json .State.Pid}}' NAME``: pid 1 on the node (0: not running),
    as ``podman inspect`` prints it, for those that reach into a workspace by its pid
    (``wsenter``: SFTP, agent forwarding, the workspace's localhost)."""
    if len(args) != 3 or args[0] != "--format" or ".State.Pid" not in args[1]:
        raise SandboxError("inspect takes --format '{{json .State.Pid}}' NAME only")
    folder = sandbox_dir(root, args[2])
    read_state(folder)
    print(running_pid(folder) or 0)
    return 0


def main(argv: list[str]) -> int:
    commands = ("init", "exec", "inspect")
    if len(argv) < 4 or argv[0] != "--root" or argv[2] not in commands:
        sys.stderr.write("usage: python -m kled.agent.wssandbox --root DIR init|exec|inspect …\n")
        return 2
    root = Path(argv[1])
    try:
        if argv[2] == "init":
            return init(root, argv[3])
        if argv[2] == "inspect":
            return inspect(root, argv[3:])
        return enter(root, argv[3:])
    except SandboxError as e:
        sys.stderr.write(f"{e}\n")
        return 125


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
