"""The server of a managed service, run on its node: one engine per template kind.

A ManagedService becomes an App whose one replica runs ``python -m kled.agent.servicerun
serve …`` (``control/managed.py``); the agent runs it like any replica, in its pod
namespace. This module is that command and its siblings: ``serve`` initialises the data
directory the first time (into a temporary folder renamed when complete, so a failed
init leaves nothing half-written), loads a backup into it when asked to, starts the
server from the Debian package's binaries as the package's own user, sets the generated
credentials (read from the replica's environment, which the credentials Secret feeds: a
rotated password restarts the replica and is set here), and stays as the server's parent,
passing on SIGTERM. ``health`` is the readiness probe, ``backup`` writes a real dump
(``pg_dump``, a Redis RDB, ``mariadb-dump``) into the node's backup folder and prints what
it wrote as JSON; it is run inside the replica by ``kled service backup``.

The data directory outlives the replica and the agent: it is a folder of the node named for
the service's uid, never the replica's working folder, and an exclusive lock on it means a
second server can never start on the same data.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import fcntl
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

READY_FILE = "credentials-set"
_PR_SET_PDEATHSIG = 1
#: written into the service's folder by `kled service delete --purge`
PURGE_FILE = "purge-on-stop"


class ServiceError(Exception):
    """A step of the server's life failed: one line for the replica's log and status."""


class Layout:
    """The folders of one service on its node."""

    def __init__(self, root: str) -> None:
        self.root = Path(root)
        self.data = self.root / "data"
        self.run = self.root / "run"
        self.lock = self.root / "lock"
        self.ready = self.run / READY_FILE


def _ids(user: str | None) -> tuple[int, int] | None:
    if user is None:
        return None
    try:
        entry = pwd.getpwnam(user)
    except KeyError:
        raise ServiceError(f"the user {user!r} of the server's package is missing") from None
    return entry.pw_uid, entry.pw_gid


def _as(user: str | None) -> Callable[[], None] | None:
    ids = _ids(user)
    if ids is None:
        return None
    uid, gid = ids

    def drop() -> None:
        os.setgroups([])
        os.setgid(gid)
        os.setuid(uid)

    return drop


def _dies_with_parent(signum: int, user: str | None) -> Callable[[], None]:
    drop = _as(user)

    def setup() -> None:
        if drop is not None:
            drop()
        # after the change of user, which clears the setting
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signum, 0, 0, 0)

    return setup


def _chown(path: Path, user: str | None) -> None:
    ids = _ids(user)
    if ids is not None:
        for where, _, files in os.walk(path):
            os.chown(where, *ids)
            for f in files:
                os.chown(os.path.join(where, f), *ids)


def _run(argv: list[str], *, user: str | None = None, stdin: bytes | None = None,
         what: str) -> str:  # fmt: skip
    done = subprocess.run(argv, input=stdin, capture_output=True, preexec_fn=_as(user), check=False)
    if done.returncode != 0:
        err = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
        raise ServiceError(f"{what} failed: {err[-1] if err else f'exit {done.returncode}'}")
    return done.stdout.decode(errors="replace")


def _creds() -> tuple[str, str, str]:
    """(user, password, database): the credentials Secret's own (lower-case) entries,
    which the server app imports with ``envFrom: [{secret: …}]``."""
    env = os.environ
    return env.get("user", "app"), env.get("password", ""), env.get("database", "app")


def _sql_text(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


# ---- engines -------------------------------------------------------------------------------


class Engine:
    """What differs between servers; every path below is on the node."""

    user: str | None = None

    def __init__(self, bin_dir: str, layout: Layout, port: int, params: dict[str, str]) -> None:
        self.bin = Path(bin_dir)
        self.at = layout
        self.port = port
        self.params = params

    def initialise(self, into: Path) -> None:
        raise NotImplementedError

    def command(self, first: bool) -> list[str]:
        raise NotImplementedError

    def alive(self) -> bool:
        raise NotImplementedError

    def provision(self, restore: str | None, first: bool) -> None:
        raise NotImplementedError

    def backup(self, to: Path) -> None:
        raise NotImplementedError

    def prepare_restore(self, source: str) -> None:
        """Before the first start: place what the server loads by itself."""


class Postgres(Engine):
    user = "postgres"

    def initialise(self, into: Path) -> None:
        _run([str(self.bin / "initdb"), "-D", str(into), "-U", "postgres", "-E", "UTF8",
              "--auth-local=trust", "--auth-host=scram-sha-256"], user=self.user,
             what="initdb")  # fmt: skip
        (into / "pg_hba.conf").write_text(
            "local all all trust\nhost all all 0.0.0.0/0 scram-sha-256\n"
        )

    def command(self, first: bool) -> list[str]:
        argv = [str(self.bin / "postgres"), "-D", str(self.at.data), "-p", str(self.port),
                "-k", str(self.at.run), "-c", "listen_addresses=*"]  # fmt: skip
        for name, value in self.params.items():
            argv += ["-c", f"{name}={value}"]
        return argv

    def _psql(self, sql: str, db: str = "postgres") -> str:
        argv = [str(self.bin / "psql"), "-h", str(self.at.run), "-p", str(self.port), "-U",
                "postgres", "-d", db, "-v", "ON_ERROR_STOP=1", "-qAt"]  # fmt: skip
        return _run(argv, user=self.user, stdin=sql.encode(), what="psql")

    def alive(self) -> bool:
        argv = [
            str(self.bin / "pg_isready"),
            "-h",
            str(self.at.run),
            "-p",
            str(self.port),
            "-U",
            "postgres",
        ]
        return subprocess.run(argv, capture_output=True, check=False).returncode == 0

    def provision(self, restore: str | None, first: bool) -> None:
        user, password, db = _creds()
        name = '"' + user.replace('"', '""') + '"'
        self._psql(
            f"SELECT 'CREATE ROLE {name} LOGIN' WHERE NOT EXISTS "
            f"(SELECT FROM pg_roles WHERE rolname = {_sql_text(user)})\\gexec\n"
            f"ALTER ROLE {name} LOGIN PASSWORD {_sql_text(password)};\n"
            f"SELECT 'CREATE DATABASE \"{db}\" OWNER {name}' WHERE NOT EXISTS "
            f"(SELECT FROM pg_database WHERE datname = {_sql_text(db)})\\gexec\n"
        )
        if restore is not None and first:
            argv = [str(self.bin / "pg_restore"), "-h", str(self.at.run), "-p", str(self.port),
                    "-U", "postgres", "-d", db, "--no-owner", f"--role={user}",
                    "--exit-on-error", restore]  # fmt: skip
            _run(argv, user=self.user, what=f"pg_restore of {restore}")

    def backup(self, to: Path) -> None:
        _, _, db = _creds()
        argv = [str(self.bin / "pg_dump"), "-h", str(self.at.run), "-p", str(self.port),
                "-U", "postgres", "-Fc", "-d", db]  # fmt: skip
        with open(to, "wb") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE,
                                  preexec_fn=_as(self.user), check=False)  # fmt: skip
        if done.returncode != 0:
            raise ServiceError(f"pg_dump failed: {done.stderr.decode(errors='replace').strip()}")


class Redis(Engine):
    user = "redis"

    def initialise(self, into: Path) -> None:
        pass  # redis writes its files on its own

    def prepare_restore(self, source: str) -> None:
        shutil.copyfile(source, self.at.data / "dump.rdb")
        _chown(self.at.data, self.user)

    def command(self, first: bool) -> list[str]:
        _, password, _ = _creds()
        # A restored RDB is only read with AOF off; AOF is turned on once it is loaded.
        aof = "no" if first else "yes"
        argv = [str(self.bin / "redis-server"), "--port", str(self.port), "--bind", "0.0.0.0",
                "--protected-mode", "no", "--dir", str(self.at.data), "--appendonly", aof,
                "--unixsocket", str(self.at.run / "redis.sock"), "--unixsocketperm", "700",
                "--requirepass", password, "--repl-diskless-sync-delay", "0"]  # fmt: skip
        for name, value in self.params.items():
            argv += [f"--{name}", value]
        return argv

    def _cli(self, *args: str) -> str:
        _, password, _ = _creds()
        argv = [str(self.bin / "redis-cli"), "-s", str(self.at.run / "redis.sock"),
                "--no-auth-warning", "-a", password, *args]  # fmt: skip
        return _run(argv, what=f"redis-cli {args[0]}").strip()

    def alive(self) -> bool:
        try:
            return self._cli("ping") == "PONG"
        except ServiceError:
            return False

    def provision(self, restore: str | None, first: bool) -> None:
        if not first:
            return
        self._cli("config", "set", "appendonly", "yes")
        for _ in range(600):
            info = self._cli("info", "persistence")
            if "aof_rewrite_in_progress:0" in info and "aof_rewrite_scheduled:0" in info:
                return
            time.sleep(0.1)
        raise ServiceError("redis: the append-only file was not written")

    def backup(self, to: Path) -> None:
        self._cli("--rdb", str(to))


class MariaDB(Engine):
    user = "mysql"

    def initialise(self, into: Path) -> None:
        _run([str(self.bin / "mariadb-install-db"), f"--datadir={into}", f"--user={self.user}",
              "--auth-root-authentication-method=socket", "--skip-test-db"],
             what="mariadb-install-db")  # fmt: skip

    def command(self, first: bool) -> list[str]:
        argv = [str(self.bin.parent / "sbin" / "mariadbd") if not (self.bin / "mariadbd").exists()
                else str(self.bin / "mariadbd"), "--no-defaults", f"--datadir={self.at.data}",
                f"--port={self.port}", "--bind-address=0.0.0.0",
                f"--socket={self.at.run / 'mysqld.sock'}",
                f"--pid-file={self.at.run / 'mysqld.pid'}", f"--user={self.user}",
                "--skip-name-resolve"]  # fmt: skip
        argv += [f"--{name}={value}" for name, value in self.params.items()]
        return argv

    def _client(self, sql: str, db: str | None = None) -> str:
        argv = [str(self.bin / "mariadb"), "--no-defaults", "-S", str(self.at.run / "mysqld.sock"),
                "-u", "root", "-N", "-B"]  # fmt: skip
        if db:
            argv.append(db)
        return _run(argv, stdin=sql.encode(), what="mariadb")

    def alive(self) -> bool:
        try:
            return self._client("SELECT 1").strip() == "1"
        except ServiceError:
            return False

    def provision(self, restore: str | None, first: bool) -> None:
        user, password, db = _creds()
        u, p = _sql_text(user), _sql_text(password)
        self._client(
            f"CREATE DATABASE IF NOT EXISTS `{db}`;\n"
            f"CREATE USER IF NOT EXISTS {u}@'%' IDENTIFIED BY {p};\n"
            f"ALTER USER {u}@'%' IDENTIFIED BY {p};\n"
            f"GRANT ALL ON `{db}`.* TO {u}@'%';\n"
        )
        if restore is not None and first:
            self._client(Path(restore).read_text(), db)

    def backup(self, to: Path) -> None:
        _, _, db = _creds()
        sock = str(self.at.run / "mysqld.sock")
        argv = [str(self.bin / "mariadb-dump"), "--no-defaults", "-S", sock, "-u", "root",
                "--single-transaction", db]  # fmt: skip
        with open(to, "wb") as out:
            done = subprocess.run(argv, stdout=out, stderr=subprocess.PIPE, check=False)
        if done.returncode != 0:
            msg = done.stderr.decode(errors="replace").strip()
            raise ServiceError(f"mariadb-dump failed: {msg}")


class Nats(Engine):
    """nats-server with JetStream, its streams stored in the data directory."""

    user = "nats"

    def initialise(self, into: Path) -> None:
        pass  # JetStream writes its store on its own

    def prepare_restore(self, source: str) -> None:
        with tarfile.open(source) as tar:
            tar.extractall(self.at.data, filter="data")
        _chown(self.at.data, self.user)

    def command(self, first: bool) -> list[str]:
        user, password, _ = _creds()
        # In a file of the server's user, not on the command line where ps shows it.
        lines = [f"port: {self.port}", 'host: "0.0.0.0"',
                 f"authorization {{ user: {json.dumps(user)}, password: {json.dumps(password)} }}",
                 f"jetstream {{ store_dir: {json.dumps(str(self.at.data))} }}"]  # fmt: skip
        lines += [f"{name}: {value}" for name, value in self.params.items()]
        conf = self.at.run / "nats.conf"
        conf.write_text("\n".join(lines) + "\n")
        conf.chmod(0o600)
        _chown(self.at.run, self.user)
        return [str(self.bin / "nats-server"), "--config", str(conf)]

    def alive(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=2) as conn:
                return conn.makefile("rb").readline().startswith(b"INFO ")
        except OSError:
            return False

    def provision(self, restore: str | None, first: bool) -> None:
        pass  # the account is in the configuration

    def backup(self, to: Path) -> None:
        # A copy of the JetStream store as it is on disk (taken live).
        with tarfile.open(to, "w") as tar:
            tar.add(self.at.data, arcname=".")


ENGINES: dict[str, type[Engine]] = {
    "postgres": Postgres,
    "redis": Redis,
    "mariadb": MariaDB,
    "nats": Nats,
}
SUFFIX = {"postgres": "pgdump", "redis": "rdb", "mariadb": "sql", "nats": "tar"}


# ---- commands ------------------------------------------------------------------------------


def _engine(args: argparse.Namespace) -> Engine:
    params = dict(p.split("=", 1) for p in args.param or [])
    return ENGINES[args.engine](args.bin_dir, Layout(args.data), args.port, params)


def serve(args: argparse.Namespace) -> int:
    engine = _engine(args)
    at = engine.at
    at.root.mkdir(parents=True, exist_ok=True)
    lock = os.open(at.lock, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        held = Path(at.lock).read_text().strip() or "another process"
        raise ServiceError(f"data directory {at.root} is in use by {held}") from None
    os.ftruncate(lock, 0)
    os.write(lock, f"pid {os.getpid()} on {os.uname().nodename}\n".encode())
    shutil.rmtree(at.run, ignore_errors=True)
    at.run.mkdir(mode=0o700)
    first = not at.data.exists()
    if first:
        staging = at.root / "data.init"
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(mode=0o700)
        _chown(staging, engine.user)
        engine.initialise(staging)
        _chown(staging, engine.user)
        staging.rename(at.data)
        if args.restore_from:
            engine.prepare_restore(args.restore_from)
    restored = at.root / "restored"
    loading = first or (args.restore_from is not None and not restored.exists())
    _chown(at.run, engine.user)
    # The server dies with this process (a killed replica leaves no server holding the
    # data); postgres takes SIGQUIT as its immediate shutdown, which also ends its children.
    dying = signal.SIGQUIT if args.engine == "postgres" else signal.SIGTERM
    server = subprocess.Popen(
        engine.command(first), cwd=at.root, preexec_fn=_dies_with_parent(dying, engine.user)
    )

    def stop(signum: int, _frame: object) -> None:
        # postgres takes SIGINT as a fast shutdown (SIGTERM waits for every client)
        server.send_signal(signal.SIGINT if args.engine == "postgres" else signal.SIGTERM)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    while not engine.alive():
        if server.poll() is not None:
            raise ServiceError(f"the server exited with {server.returncode} while starting")
        time.sleep(0.1)
    engine.provision(args.restore_from if loading else None, first=loading)
    if args.restore_from:
        restored.touch()
    at.ready.touch()
    print(f"servicerun: {args.engine} ready on port {args.port}", flush=True)
    code = server.wait()
    if (at.root / PURGE_FILE).exists():
        # `kled service delete --purge`: the data goes with the server's last stop
        shutil.rmtree(at.root, ignore_errors=True)
        print(f"servicerun: data directory {at.root} removed", flush=True)
    return code


def health(args: argparse.Namespace) -> int:
    engine = _engine(args)
    return 0 if engine.at.ready.exists() and engine.alive() else 1


def backup(args: argparse.Namespace) -> int:
    engine = _engine(args)
    folder = Path(args.to)
    folder.mkdir(parents=True, exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    name = f"{args.label}-{stamp}.{SUFFIX[args.engine]}"
    final = folder / name
    partial = folder / f".{name}.partial"
    try:
        engine.backup(partial)
        partial.rename(final)  # a failed dump never replaces or hides an earlier one
    finally:
        with contextlib.suppress(FileNotFoundError):
            partial.unlink()
    taken = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    out = {"id": name, "path": str(final), "bytes": final.stat().st_size, "time": taken}
    print(json.dumps(out), flush=True)
    return 0


def data_bytes(folder: Path) -> int:
    """What the files under ``folder`` take on disk, as ``du`` counts it."""
    total = 0
    for where, _, files in os.walk(folder):
        for name in [".", *files]:
            with contextlib.suppress(FileNotFoundError):
                total += os.lstat(os.path.join(where, name)).st_blocks * 512
    return total


def usage(args: argparse.Namespace) -> int:
    print(json.dumps({"dataBytes": data_bytes(Layout(args.data).data)}), flush=True)
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="servicerun")
    sub = parser.add_subparsers(dest="verb", required=True)
    for verb in ("serve", "health", "backup", "usage"):
        p = sub.add_parser(verb)
        p.add_argument("--engine", choices=sorted(ENGINES), required=True)
        p.add_argument("--bin-dir", required=True)
        p.add_argument("--data", required=True)
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--param", action="append")
        if verb == "serve":
            p.add_argument("--restore-from")
        if verb == "backup":
            p.add_argument("--to", required=True)
            p.add_argument("--label", default="backup")
    return parser


#: variables the client tools read by themselves (``MYSQL_PWD``, ``PGUSER``…): the
#: credentials Secret carries them for apps; here they would speak for the wrong user
_CLIENT_VARS = ("MYSQL_", "MARIADB_", "PG", "REDIS", "NATS_", "DATABASE_URL")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    for name in [n for n in os.environ if n.startswith(_CLIENT_VARS)]:
        del os.environ[name]
    verbs = {"serve": serve, "health": health, "backup": backup, "usage": usage}
    try:
        return verbs[args.verb](args)
    except ServiceError as e:
        print(f"servicerun: {e}", file=sys.stderr, flush=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
