"""``python -m kled.agent``: the agent as a process of its own.

The ``kled agent`` command of the CLI is the user's way in; this entry point exists so the
agent can run (and be killed with -9, and restarted) without the CLI, as the integration
tests do. It registers with ``--server`` and a join token once (``--token-file`` or
``$KLED_AGENT_TOKEN``, which stay out of ``ps``; ``--token``), or takes NATS credentials
directly, and runs until SIGTERM or SIGINT; the replicas keep running after it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
from pathlib import Path

from kled.agent.agent import Agent, default_network, detect_capabilities, host_capacity
from kled.agent.net.host import HostNetworkLayer
from kled.agent.registration import Registration, load_registration, register_waiting
from kled.agent.workspaces import SourceFetcher
from kled.bus.office import ConnectOptions, MessageOffice
from kled.bus.subjects import Subjects, check_node_name
from kled.errors import InvalidInput, KledError

#: the environment variable that may carry the join token instead of ``--token``
TOKEN_ENV = "KLED_AGENT_TOKEN"


def _labels(pairs: list[str]) -> dict[str, str]:
    labels: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"label {pair!r} is not key=value", field="labels")
        labels[key] = value
    return labels


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m kled.agent", description=__doc__)
    p.add_argument("--data-dir", required=True)
    p.add_argument("--name", default=None, help="node name (default: host name)")
    p.add_argument("--labels", action="append", default=[], help="k=v, repeatable")
    p.add_argument("--server", help="Kled server URL to register with")
    p.add_argument(
        "--token",
        default=os.environ.get(TOKEN_ENV),
        help=f"join token from `kled node token create` (or ${TOKEN_ENV}; visible in ps)",
    )
    p.add_argument("--token-file", help="read the join token from this file")
    p.add_argument("--nats-url")
    p.add_argument("--nats-user")
    p.add_argument("--nats-password")
    p.add_argument("--subjects-prefix", default="", help="for test installations")
    p.add_argument("--heartbeat", type=float, default=2.0, help="seconds between heartbeats")
    p.add_argument(
        "--usage-interval",
        type=float,
        default=10.0,
        help="seconds between measurements of replicas' CPU, memory and network",
    )
    p.add_argument(
        "--network",
        choices=("auto", "on", "off"),
        default="auto",
        help="build the team meshes on this host (auto: when it can, as root with WireGuard)",
    )
    p.add_argument(
        "--host-id",
        default=None,
        help="prefix of this host's namespaces and interfaces (default: from the node name)",
    )
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    # Read once, then gone from our environment: replicas must not inherit a join token.
    os.environ.pop(TOKEN_ENV, None)
    if args.token_file:
        args.token = read_token(args.token_file)
    return args


def read_token(path: str) -> str:
    """The join token in ``path``, its first line: a file (mode 0600) or the environment
    keeps the token out of the process list, where anyone on the host could read it."""
    try:
        lines = Path(path).read_text(encoding="utf-8").split()
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or e
        message = f"cannot read the join token in {path}: {reason}"
        raise InvalidInput(message, field="token-file") from None
    if not lines:
        raise InvalidInput(f"{path} holds no join token", field="token-file")
    return lines[0]


async def _credentials(args: argparse.Namespace, name: str, labels: dict[str, str]) -> Registration:
    if args.nats_url:
        return Registration(
            node=name,
            nats_url=args.nats_url,
            nats_user=args.nats_user or "",
            nats_password=args.nats_password or "",
        )
    if args.server and args.token:
        return await register_waiting(
            args.server,
            args.token,
            name,
            labels,
            capacity=host_capacity(),
            capabilities=detect_capabilities(),
            data_dir=args.data_dir,
        )
    saved = load_registration(args.data_dir)
    if saved is None:
        raise InvalidInput("give --server and --token to register, or --nats-url", field="server")
    return saved


def _network(args: argparse.Namespace, node: str) -> HostNetworkLayer | None:
    if args.network == "off":
        return None
    # The agent runs in the host's own namespace, where the underlay is.
    layer = default_network(args.data_dir, node, args.host_id)
    if layer is None and args.network == "on":
        raise InvalidInput(
            "--network on needs root, wireguard-go (or the kernel module) and nft", field="network"
        )
    return layer


async def main(args: argparse.Namespace) -> None:
    name = check_node_name(args.name or socket.gethostname().split(".")[0].lower())
    labels = _labels(args.labels)
    reg = await _credentials(args, name, labels)
    office = MessageOffice(
        ConnectOptions(
            url=reg.nats_url,
            user=reg.nats_user or None,
            password=reg.nats_password or None,
            node=reg.node,
            name=f"kled-agent-{reg.node}",
            connect_retry_for=None,
        ),
        Subjects(args.subjects_prefix),
    )
    await office.connect()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    agent = Agent(
        args.data_dir,
        office,
        reg.node,
        labels=labels,
        heartbeat_interval=args.heartbeat,
        usage_interval=args.usage_interval,
        network=_network(args, reg.node),
        sources=SourceFetcher(reg.server_url, reg.node, reg.nats_user, reg.nats_password),
    )
    try:
        await agent.run(stop)
    finally:
        await office.close()


def run(argv: list[str] | None = None) -> int:
    try:
        args = parse(argv)
    except InvalidInput as err:
        print(f"error: {err}")
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s %(message)s"
    )
    try:
        asyncio.run(main(args))
    except KledError as err:
        print(f"error: {err}")
        return 2 if isinstance(err, InvalidInput) else 1
    return 0


if __name__ == "__main__":
    raise SystemExit(run())
