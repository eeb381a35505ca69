"""``kled server`` and ``kled up``: run the control plane in the foreground.

``kled server`` is the control plane alone, configured by flags (then ``KLED_*``
variables, then defaults). ``kled up`` is the one-machine default: the same server with its
data under ``~/.local/share/kled``, plus a ``local`` context in the CLI config so that the
next command just works. Later parts of Kled (the embedded NATS, a local agent, the mesh)
join ``kled up`` as parts (``UP_PARTS``) started beside the server.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer

from kled.cli.config import Context
from kled.cli.output import out
from kled.cli.state import STATE
from kled.errors import InvalidInput, Unavailable

log = logging.getLogger(__name__)

LOG_LEVELS = ("debug", "info", "warning", "error")

DataDir = Annotated[
    Path | None, typer.Option("--data-dir", help="State, keys and the socket.", show_default=False)
]
Listen = Annotated[str | None, typer.Option("--listen", help="TCP address, host:port.")]
Socket = Annotated[
    Path | None, typer.Option("--socket", help="Unix socket (default <data-dir>/kled.sock).")
]
DatabaseUrl = Annotated[
    str | None,
    typer.Option("--database", help="sqlite:///PATH or postgresql://… (default: SQLite)."),
]
LogLevel = Annotated[str, typer.Option("--log-level", help="debug, info, warning or error.")]
LogJson = Annotated[bool, typer.Option("--log-json", help="Log as JSON lines.")]


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


def settings_from(
    data_dir: Path | None,
    listen: str | None,
    socket: Path | None,
    database: str | None,
    log_json: bool,
) -> Any:
    """ServerSettings from the flags given; the rest from ``KLED_*`` or defaults."""
    from pydantic import ValidationError

    from kled.settings import ServerSettings

    given: dict[str, Any] = {
        "data_dir": data_dir,
        "listen": listen,
        "socket": socket,
        "database": database,
        "log_json": log_json or None,
    }
    try:
        settings = ServerSettings(**{k: v for k, v in given.items() if v is not None})
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidInput(f"{first['msg']}", field=where) from None
    settings.listen_address()  # a bad --listen is bad input, before anything starts
    return settings


#: something that runs beside the control plane (the embedded NATS, a local agent): given
#: the opened plane, an async context manager that starts it and stops it on exit
Part = Callable[[Any], contextlib.AbstractAsyncContextManager[Any]]


async def _serve(
    settings: Any, announce: Callable[[Any], None], parts: Sequence[Part] = ()
) -> None:
    """Open, start the parts, bind, serve until SIGINT/SIGTERM, then stop it all."""
    from kled.api.server import ControlPlane

    plane = ControlPlane(settings)
    loop = asyncio.get_running_loop()
    try:
        await plane.open()
        async with contextlib.AsyncExitStack() as running:
            for part in parts:
                await running.enter_async_context(part(plane))
            await _listen_and_serve(plane, settings, loop, announce)
    finally:
        await plane.close()  # removes the socket only if this process bound it
        log.info("control plane stopped")


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
        await plane.serve(on_ready=lambda: announce(plane))
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
    data_dir: DataDir = None,
    listen: Listen = None,
    socket: Socket = None,
    database: DatabaseUrl = None,
    log_level: LogLevel = "info",
    log_json: LogJson = False,
) -> None:
    """Run the control plane (API on TCP and a Unix socket) until Ctrl-C."""
    setup_logging(log_level, log_json)
    settings = settings_from(data_dir, listen, socket, database, log_json)

    def announce(plane: Any) -> None:
        lines = [
            *_token_lines(plane),
            f"Kled API on {plane.url} and unix:{settings.socket_path()}",
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
) -> None:
    """Run Kled on this machine: the server, and a `local` context that uses it."""
    setup_logging(log_level, log_json)
    settings = settings_from(data_dir, listen, None, database, log_json)

    def announce(plane: Any) -> None:
        context = write_local_context(plane)
        token_file = plane.settings.data_dir / "admin.token"
        lines = [*_token_lines(plane)] if plane.admin_token else []
        lines += [
            f"Kled is up at {plane.url} (socket {plane.settings.socket_path()})",
            f"Token file: {token_file}",
            f"Context {context.name!r} is current in {STATE.config().path}",
            "Next: kled team create demo && kled context set --team demo",
            "      kled env create dev && kled apply -f app.yaml -e dev",
        ]
        out("\n".join(lines))

    asyncio.run(_serve(settings, announce, UP_PARTS))


#: what ``kled up`` runs beside the control plane; later issues add NATS and the agent here
UP_PARTS: list[Part] = []


def register(root: typer.Typer) -> None:
    root.command("server")(server)
    root.command()(up)
