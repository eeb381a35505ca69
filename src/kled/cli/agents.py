"""``kled agent``: run this host's agent in the foreground.

A thin wrapper over ``python -m kled.agent`` (kled.agent's own entry point), so that the
agent's flags read like the rest of the CLI and its failures end like every other command:
one line, ``2`` for bad input (a bad label, a missing flag), ``1`` for a failure (the server
unreachable, a refused token). The join token comes from ``--token-file`` or
``$KLED_AGENT_TOKEN`` (or ``--token``, which every user of the host sees in ``ps``). The
agent keeps its registration in the data dir, so a restart needs neither server nor token.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from kled.errors import InvalidInput

DEFAULT_DATA_DIR = Path("/var/lib/kled/agent")
NETWORK_MODES = ("auto", "on", "off")


def agent(
    server: Annotated[
        str | None, typer.Option("--server", help="Kled server URL to join (first start).")
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="KLED_AGENT_TOKEN",
            help="Join token from `kled node token create` (shows in `ps`: prefer the file).",
        ),
    ] = None,
    token_file: Annotated[
        Path | None,
        typer.Option("--token-file", help="Read the join token from this file (mode 0600)."),
    ] = None,
    name: Annotated[
        str | None, typer.Option("--name", help="Node name (default: the host name).")
    ] = None,
    labels: Annotated[
        list[str] | None, typer.Option("--labels", "-l", help="k=v, repeatable.")
    ] = None,
    data_dir: Annotated[
        Path, typer.Option("--data-dir", help="The agent's state: registration, replicas, logs.")
    ] = DEFAULT_DATA_DIR,
    heartbeat: Annotated[
        float, typer.Option("--heartbeat", help="Seconds between heartbeats.")
    ] = 2.0,
    usage_interval: Annotated[
        float,
        typer.Option(
            "--usage-interval", help="Seconds between measurements of replicas' CPU and memory."
        ),
    ] = 10.0,
    network: Annotated[
        str,
        typer.Option(
            "--network",
            help="Build the team meshes here: auto (as root with WireGuard), on or off.",
        ),
    ] = "auto",
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning…")] = "info",
) -> None:
    """Run the agent of this host until Ctrl-C; its replicas keep running after it."""
    import logging

    from kled.agent.__main__ import main as agent_main
    from kled.agent.__main__ import parse, read_token

    if token and token_file:
        raise InvalidInput("give --token or --token-file, not both", field="--token-file")
    if token_file is not None:
        token = read_token(str(token_file))
    if (server is None) != (token is None) and not (data_dir / "registration.json").exists():
        raise InvalidInput(
            "give both --server and a join token (--token-file, $KLED_AGENT_TOKEN or --token) "
            "to join",
            field="--token",
        )
    if network not in NETWORK_MODES:
        raise InvalidInput(f"must be one of {', '.join(NETWORK_MODES)}", field="--network")
    if heartbeat <= 0:
        raise InvalidInput("must be more than 0", field="--heartbeat")
    if usage_interval <= 0:
        raise InvalidInput("must be more than 0", field="--usage-interval")
    level = getattr(logging, log_level.upper(), None)
    if not isinstance(level, int):
        raise InvalidInput("must be debug, info, warning or error", field="--log-level")
    argv = ["--data-dir", str(data_dir), "--heartbeat", str(heartbeat), "--network", network]
    argv += ["--usage-interval", str(usage_interval)]
    argv += ["--name", name] if name else []
    argv += ["--server", server] if server else []
    argv += ["--token", token] if token else []
    for pair in labels or []:
        key, sep, _ = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"label {pair!r} is not key=value", field="--labels")
        argv += ["--labels", pair]
    try:
        data_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInput(
            f"cannot use {data_dir}: {e.strerror or e}; pass --data-dir", field="--data-dir"
        ) from None
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per request is noise
    asyncio.run(agent_main(parse(argv)))


def register(root: typer.Typer) -> None:
    root.command("agent")(agent)
