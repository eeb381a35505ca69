"""``kled server`` and ``kled up``: run the control plane in the foreground.

``kled server`` is the control plane alone, configured by flags (then ``KLED_*``
variables, then defaults). ``kled up`` is the one-machine default: the same server with its
data under ``~/.local/share/kled``, the embedded NATS, a local agent joined to it, and a
``local`` context in the CLI config so that the next command just works. Other parts (the
mesh) join ``kled up`` as parts (``UP_PARTS``) started beside the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import psutil
import typer

from kled.cli.config import Context
from kled.cli.output import note, out
from kled.cli.state import STATE
from kled.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="State, keys and the socket.", show_default=False)
]
Listen = Annotated[str | None, typer.Option("--listen", help="TCP address, host:port.")]
DnsListen = Annotated[
    str | None,
    typer.Option(
        "--dns-listen",
        help="Address of the team DNS server, host:port (0.0.0.0:53 lets laptops resolve "
        "team names with no set-up).",
    ),
]
Zone = Annotated[str | None, typer.Option("--zone", help="DNS zone of the teams' meshes.")]
Socket = Annotated[
    Path | None, typer.Option("--socket", help="Unix socket (default <data-dir>/kled.sock).")
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database", help="sqlite:///PATH or postgresql://… (default: SQLite)."),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
LogJson = Annotated[bool, typer.Option("--log-json", help="Log as JSON lines.")]
EmbeddedNatsOpt = Annotated[
    bool,
    typer.Option("--embedded-nats", help="Run a nats-server with JetStream in the data dir."),
]
NatsPort = Annotated[
    int | None, typer.Option("--nats-port", help="Port of the embedded nats-server (0: free).")
]
NatsUrl = Annotated[
    str | None, typer.Option("--nats", help="An existing NATS cluster, nats://host:4222.")
]
NatsUser = Annotated[str | None, typer.Option("--nats-user", help="User for --nats.")]
NatsPassword = Annotated[str | None, typer.Option("--nats-password", help="Password for --nats.")]
NatsCreds = Annotated[str | None, typer.Option("--nats-creds", help="Credentials file for --nats.")]
NatsTlsCa = Annotated[str | None, typer.Option("--nats-tls-ca", help="CA bundle to verify NATS.")]
NatsTlsCert = Annotated[
    str | None, typer.Option("--nats-tls-cert", help="Client certificate for NATS.")
]
NatsTlsKey = Annotated[str | None, typer.Option("--nats-tls-key", help="Client key for NATS.")]
NatsAdvertise = Annotated[
    str | None,
    typer.Option(
        "--nats-advertise",
        help="NATS URL told to agents (default: the host they reached the API at).",
    ),
]


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def setup_logging(level: str, as_json: bool) -> None:
    if level.lower() not in LOG_LEVELS:
        raise InvalidInput(f"must be one of {', '.join(LOG_LEVELS)}", field="--log-level")
    handler = logging.StreamHandler(sys.stderr)
    if as_json:
        handler.setFormatter(_JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s level=%(levelname)s logger=%(name)s %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    if level.lower() != "debug":
        # Alembic narrates every migration step at INFO; only problems matter here.
        logging.getLogger("alembic").setLevel(logging.WARNING)


def mesh_flags(dns_listen: str | None, zone: str | None) -> dict[str, Any]:
    """The mesh's flags by their settings names; None leaves the variable or default."""
    if dns_listen is not None:
        _, sep, port = dns_listen.rpartition(":")
        if not sep or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise InvalidInput(f"{dns_listen!r} is not host:port", field="--dns-listen")
    return {"dns_listen": dns_listen, "zone": zone}


def settings_from(
    data_dir: Path | None,
    listen: str | None,
    socket: Path | None,
    database: str | None,
    log_json: bool,
    nats: dict[str, Any] | None = None,
) -> Any:
    """ServerSettings from the flags given; the rest from ``KLED_*`` or defaults.

    ``nats`` holds the Message Office's flags by their settings names (``nats_url``...);
    a flag left out (None, or False for a switch) leaves the variable or default in force.
    """
    from pydantic import ValidationError

    from kled.settings import ServerSettings

    given: dict[str, Any] = {
        "data_dir": data_dir,
        "listen": listen,
        "socket": socket,
        "database": database,
        "log_json": log_json or None,
        **{k: (v or None) if isinstance(v, bool) else v for k, v in (nats or {}).items()},
    }
    try:
        settings = ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{first['msg']}", field=where) from None
    settings.listen_address()  # a bad --listen is bad input, before anything starts
    if settings.nats_url and not settings.nats_url.startswith(
        ("nats://", "tls://", "ws://", "wss://")
    ):
        raise InvalidInput(f"{settings.nats_url!r} is not a nats:// URL", field="--nats")
    if settings.embedded_nats and settings.nats_url:
        raise InvalidInput("give either --embedded-nats or --nats URL, not both", field="--nats")
    return settings


def nats_flags(
    embedded: bool = False,
    port: int | None = None,
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    creds: str | None = None,
    tls_ca: str | None = None,
    tls_cert: str | None = None,
    tls_key: str | None = None,
    advertise: str | None = None,
) -> dict[str, Any]:
    """The NATS flags of a command under their ServerSettings names."""
    return {
        "embedded_nats": embedded,
        "nats_port": port,
        "nats_url": url,
        "nats_user": user,
        "nats_password": password,
        "nats_creds": creds,
        "nats_tls_ca": tls_ca,
        "nats_tls_cert": tls_cert,
        "nats_tls_key": tls_key,
        "nats_advertise": advertise,
    }


def nats_line(plane: Any) -> list[str]:
    """Where the Message Office is, for the start-up message."""
    hosts = getattr(plane, "hosts", None)
    embedded = getattr(hosts, "embedded", None)
    if embedded is not None:
        return [f"Message Office (embedded NATS) on {embedded.url}"]
    if hosts is not None and getattr(hosts, "office", None) is not None:
        return [f"Message Office on {plane.settings.nats_url}"]
    return []


#: something that runs beside the control plane (the embedded NATS, a local agent): given
#: the opened plane, an async context manager that starts it and stops it on exit
Part = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


async def _serve(
    settings: Any, announce: Callable[[Any], None], parts: Sequence[Part] = ()
) -> None:
    """Open, start the parts, bind, serve until SIGINT/SIGTERM, then stop it all."""
    from kled.api.server import ControlPlane

    plane = ControlPlane(settings)
    plane.wait_for_controllers = False  # serve while they catch up with a large store
    loop = asyncio.get_running_loop()
    try:
        await plane.open()
        if parts:
            await plane.settled()  # the parts use what the controllers start (NATS)
        async with contextlib.AsyncExitStack() as running:
            for part in parts:
                await running.enter_async_context(part(plane))
            await _listen_and_serve(plane, settings, loop, announce)
    finally:
        await plane.close()  # removes the socket only if this process bound it
        log.info("control plane stopped")
    if plane.lost_lease:
        raise Unavailable(f"the server stopped: {plane.lost_lease}; start it again")


async def _listen_and_serve(
    plane: Any, settings: Any, loop: asyncio.AbstractEventLoop, announce: Callable[[Any], None]
) -> None:
    try:
        try:
            plane.bind()
        except OSError as e:
            host, port = settings.listen_address()
            raise Unavailable(
                f"cannot listen on {host}:{port} or {settings.socket_path()}: {e.strerror or e}"
            ) from e
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, plane.stop)

        async def announce_when_settled() -> None:
            await plane.settled()  # the Message Office line needs the started controllers
            announce(plane)

        announcing: set[asyncio.Task[None]] = set()  # held, so that it is not collected

        def on_ready() -> None:
            announcing.add(asyncio.ensure_future(announce_when_settled()))

        await plane.serve(on_ready=on_ready)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(Exception):
                loop.remove_signal_handler(sig)


def _token_lines(plane: Any) -> list[str]:
    token_file = plane.settings.data_dir / "admin.token"
    if plane.admin_token:
        return [
            "Bootstrap token of the server administrator (shown once; also written to "
            f"{token_file}):",
            f"  {plane.admin_token}",
        ]
    return [f"Administrator token: in {token_file}"]


def server(
    ctx: typer.Context,
    data_dir: DataDir = None,
    listen: Listen = None,
    socket: Socket = None,
    database: DatabaseUrl = None,
    log_level: LogLevel = "info",
    log_json: LogJson = False,
    embedded_nats: EmbeddedNatsOpt = False,
    nats_port: NatsPort = None,
    nats: NatsUrl = None,
    nats_user: NatsUser = None,
    nats_password: NatsPassword = None,
    nats_creds: NatsCreds = None,
    nats_tls_ca: NatsTlsCa = None,
    nats_tls_cert: NatsTlsCert = None,
    nats_tls_key: NatsTlsKey = None,
    nats_advertise: NatsAdvertise = None,
    dns_listen: DnsListen = None,
    zone: Zone = None,
) -> None:
    """Run the control plane (API on TCP and a Unix socket) until Ctrl-C."""
    if ctx.invoked_subcommand is not None:
        return
    setup_logging(log_level, log_json)
    flags = nats_flags(
        embedded_nats,
        nats_port,
        nats,
        nats_user,
        nats_password,
        nats_creds,
        nats_tls_ca,
        nats_tls_cert,
        nats_tls_key,
        nats_advertise,
    )
    flags.update(mesh_flags(dns_listen, zone))
    settings = settings_from(data_dir, listen, socket, database, log_json, flags)

    def announce(plane: Any) -> None:
        lines = [
            *_token_lines(plane),
            f"Kled API on {plane.url} and unix:{settings.socket_path()}",
            *nats_line(plane),
        ]
        out("\n".join(lines))

    asyncio.run(_serve(settings, announce))


def write_local_context(plane: Any) -> Context:
    """The ``local`` context for this machine's server, made current."""
    config = STATE.config()
    existing = config.find("local")
    token_file = plane.settings.data_dir / "admin.token"
    try:
        token = token_file.read_text().strip()
    except OSError:
        token = existing.token if existing else ""
    context = Context(
        name="local",
        server=plane.url,
        token=token,
        socket=str(plane.settings.socket_path()),
        team=existing.team if existing else None,
        environment=existing.environment if existing else None,
    )
    config.put(context)
    config.current = "local"
    config.save()
    return context


def up(
    data_dir: DataDir = None,
    listen: Listen = None,
    database: DatabaseUrl = None,
    log_level: LogLevel = "warning",
    log_json: LogJson = False,
    nats_port: NatsPort = None,
    agent: Annotated[
        bool, typer.Option("--agent/--no-agent", help="Run a local agent for this host.")
    ] = True,
    agent_network: Annotated[
        str,
        typer.Option("--agent-network", help="The local agent's team meshes: auto, on or off."),
    ] = "auto",
    dns_listen: DnsListen = None,
    zone: Zone = None,
) -> None:
    """Run Kled on this machine: the server, NATS, a local agent, and a `local` context."""
    setup_logging(log_level, log_json)
    flags = {**nats_flags(embedded=True, port=nats_port), **mesh_flags(dns_listen, zone)}
    settings = settings_from(data_dir, listen, None, database, log_json, flags)
    if agent_network not in ("auto", "on", "off"):
        raise InvalidInput("must be auto, on or off", field="--agent-network")
    local = LocalAgent(network=agent_network)

    def announce(plane: Any) -> None:
        context = write_local_context(plane)
        token_file = plane.settings.data_dir / "admin.token"
        lines = [*_token_lines(plane)] if plane.admin_token else []
        lines += [
            f"Kled is up at {plane.url} (socket {plane.settings.socket_path()})",
            f"Web console: {plane.url}/ui (kled ui opens it signed in; kled ui --print: a link)",
            f"Token file: {token_file}",
            *nats_line(plane),
        ]
        if agent:
            lines.append(f"Local agent: node/{local.name} (log {local.logfile(plane)})")
        lines += [
            f"Context {context.name!r} is current in {STATE.config().path}",
            "Next: kled team create demo && kled context set --team demo",
            "      kled env create dev && kled apply -f app.yaml -e dev && kled get apps -w",
        ]
        out("\n".join(lines))

    pid_file = up_pid_file(settings.data_dir)
    pid_file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pid_file.write_text(f"{os.getpid()}\n")
    try:
        asyncio.run(_serve(settings, announce, [*UP_PARTS, *([local] if agent else [])]))
    finally:
        with contextlib.suppress(OSError):
            if pid_file.read_text().strip() == str(os.getpid()):
                pid_file.unlink()


def up_pid_file(data_dir: Path) -> Path:
    return Path(data_dir) / "up.pid"


def down(data_dir: DataDir = None, log_level: LogLevel = "warning") -> None:
    """Stop `kled up` and everything its local agent runs: replicas and team networks.

    What the server stores (teams, apps, secrets) is kept: the next `kled up` starts the
    same apps again."""
    setup_logging(log_level, False)
    settings = settings_from(data_dir, None, None, None, False)
    pid_file = up_pid_file(settings.data_dir)
    stopped = _stop_up(pid_file)
    if stopped:
        out(f"kled up (pid {stopped}) stopped")
    agent_dir = Path(settings.data_dir) / "agent"
    if not agent_dir.is_dir():
        out("no local agent state here: nothing else to stop")
        return
    from kled.agent.agent import default_network
    from kled.agent.teardown import teardown

    network = default_network(agent_dir, local_node_name())
    if network is None and os.geteuid() != 0:
        note("not root: team networks (if any) are left; run `sudo kled down` to remove them")
    done = asyncio.run(teardown(agent_dir, network))
    out(f"local agent: {done.summary()}; data kept in {settings.data_dir}")


def _exited(proc: psutil.Process, wait: float) -> bool:
    """Whether ``proc`` ends within ``wait`` seconds (a zombie has: its parent reaps it)."""
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.1)
    return False


def _stop_up(pid_file: Path, wait: float = 30.0) -> int | None:
    """SIGINT the `kled up` of this data dir, if it runs; its pid once it has exited."""
    try:
        pid = int(pid_file.read_text().strip())
        proc = psutil.Process(pid)
        if "kled" not in " ".join(proc.cmdline()):
            return None  # a stale file whose pid now belongs to something else
    except (OSError, ValueError, psutil.Error):
        return None
    proc.send_signal(signal.SIGINT)
    if not _exited(proc, wait):
        proc.terminate()
        if not _exited(proc, 10):
            raise Unavailable(f"kled up (pid {pid}) does not stop; kill it and run this again")
    return pid


def local_node_name() -> str:
    """This host's name as a node name: a DNS label."""
    raw = socket.gethostname().split(".")[0].lower()
    name = re.sub(r"[^a-z0-9-]+", "-", raw).strip("-")[:63].strip("-")
    return name or "local"


def _die_with_parent() -> None:
    # `kled up` killed with -9 must not leave its agent behind (its replicas stay, by design)
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class LocalAgent:
    """The agent of ``kled up``: ``python -m kled.agent`` as a child process.

    A child process rather than a task, so that the agent can be killed and restarted on its
    own and its replicas outlive it. It joins with a node token made here, once the API
    answers, handed over in its environment (``KLED_AGENT_TOKEN``), never on its command
    line, where every user of the machine could read it in ``ps``; its registration is made
    afresh at every start, because the embedded NATS may listen on another port than last
    time. ``kled up`` supervises it: an agent that exits is reported in one line with its
    exit code and started again, after 1 s, then twice as long each time it dies within a
    minute (at most ``MAX_BACKOFF``).
    """

    #: the longest wait before starting a dead agent again, in seconds
    MAX_BACKOFF = 30.0
    #: an agent that ran this long before it died is restarted after the shortest wait
    STABLE_AFTER = 60.0

    def __init__(self, name: str | None = None, network: str = "auto") -> None:
        self.name = name or local_node_name()
        self.network = network
        self.proc: subprocess.Popen[bytes] | None = None
        self._task: asyncio.Task[None] | None = None
        self._pid_file: Path | None = None

    def data_dir(self, plane: Any) -> Path:
        return Path(plane.settings.data_dir) / "agent"

    def logfile(self, plane: Any) -> Path:
        return Path(plane.settings.data_dir) / "agent.log"

    def pid_file(self, plane: Any) -> Path:
        """The running agent's pid, for scripts (the README's tour) that must signal
        exactly this agent and no other process."""
        return Path(plane.settings.data_dir) / "agent.pid"

    @contextlib.asynccontextmanager
    async def __call__(self, plane: Any) -> AsyncIterator[LocalAgent]:
        if plane.hosts is None or plane.hosts.office is None:
            yield self
            return
        self._task = asyncio.create_task(self._supervise(plane), name="local-agent")
        try:
            yield self
        finally:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
            await asyncio.to_thread(self.stop)

    async def _supervise(self, plane: Any) -> None:
        """Start the agent; whenever it exits, say so and start it again, backing off."""
        while not (plane.bound and plane.server is not None and plane.server.started):
            await asyncio.sleep(0.05)
        loop = asyncio.get_running_loop()
        delay = 1.0
        while True:
            await self._start(plane)
            proc, since = self.proc, loop.time()
            assert proc is not None
            while (code := proc.poll()) is None:
                await asyncio.sleep(0.2)
            if loop.time() - since >= self.STABLE_AFTER:
                delay = 1.0
            log.warning(
                "node/%s: local agent (pid %s) exited with code %s%s; restarting in %.0f s "
                "(log %s)",
                self.name,
                proc.pid,
                code,
                f" ({signal.Signals(-code).name})" if code < 0 else "",
                delay,
                self.logfile(plane),
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.MAX_BACKOFF)

    async def _start(self, plane: Any) -> None:
        expires = datetime.now(UTC) + timedelta(minutes=10)
        token = await plane.service.credentials.issue(
            purpose="join",
            team="",
            name=f"join-local-{int(time.time() * 1000)}",
            username="node",
            expires_at=expires,
            prefix="kledjoin",
        )
        data_dir = self.data_dir(plane)
        data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        with contextlib.suppress(FileNotFoundError):
            (data_dir / "registration.json").unlink()
        args = [sys.executable, "-m", "kled.agent", "--data-dir", str(data_dir)]
        args += ["--name", self.name, "--server", plane.url, "--network", self.network]
        env = {**os.environ, "KLED_AGENT_TOKEN": token}
        with self.logfile(plane).open("ab") as log_out:
            self.proc = subprocess.Popen(  # noqa: ASYNC220 - returns at once
                args,
                stdout=log_out,
                stderr=subprocess.STDOUT,
                env=env,
                preexec_fn=_die_with_parent,
            )
        self._pid_file = self.pid_file(plane)
        self._pid_file.write_text(f"{self.proc.pid}\n")
        log.info("node/%s: local agent started pid=%s", self.name, self.proc.pid)

    def stop(self) -> None:
        if self._pid_file is not None:
            with contextlib.suppress(OSError):
                self._pid_file.unlink()
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


#: what ``kled up`` runs beside the control plane (the local agent is added by ``up``)
UP_PARTS: list[Part] = []


def register(root: typer.Typer) -> None:
    from kled.cli.doctor import doctor

    group = typer.Typer(help="Run the control plane; check its store.")
    group.callback(invoke_without_command=True)(server)
    group.command()(doctor)
    root.add_typer(group, name="server")
    root.command()(up)
    root.command()(down)
