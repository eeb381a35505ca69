"""The direct SSH port's plumbing (``agent/wslisten.py``) with real sockets and setns: a
listener made in a process's network namespace hands each connection to a child as its
stdin and stdout, follows the container's starts, and does not retry a port in use."""

from __future__ import annotations

import asyncio
import os
import socket
import sys

import pytest

from cli.clikit import free_port
from kled.agent.wslisten import SshPorts

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="setns needs root")

UPPER = [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.readline().upper())"]


async def _ask(port: int, line: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(line)
    await writer.drain()
    answer = await reader.read()
    writer.close()
    return answer


def test_each_connection_is_served_by_a_child_on_the_socket() -> None:
    port = free_port()
    served: list[str] = []

    async def plan(wid: str) -> list[str] | None:
        served.append(wid)
        return UPPER

    async def pid_of(wid: str) -> int:
        return os.getpid()  # this process's own network namespace

    async def scenario() -> None:
        ports = SshPorts(plan, pid_of, port=port)
        try:
            await ports.sync({"acme._ws.shop.0": 1})
            assert await _ask(port, b"hello\n") == b"HELLO\n"
            assert await _ask(port, b"again\n") == b"AGAIN\n"
            await ports.sync({})  # stopped: no port
            with pytest.raises(OSError):
                await _ask(port, b"x\n")
        finally:
            await ports.close()

    asyncio.run(scenario())
    assert served == ["acme._ws.shop.0", "acme._ws.shop.0"]


def test_a_port_in_use_is_not_tried_again_for_the_same_start() -> None:
    taken = socket.socket()
    taken.bind(("0.0.0.0", 0))
    taken.listen(1)
    port = taken.getsockname()[1]
    tries: list[str] = []

    async def pid_of(wid: str) -> int:
        tries.append(wid)
        return os.getpid()

    async def scenario() -> None:
        ports = SshPorts(lambda wid: asyncio.sleep(0, UPPER), pid_of, port=port)
        try:
            await ports.sync({"w": 1})
            await ports.sync({"w": 1})
            assert tries == ["w"]
            await ports.sync({"w": 2})  # a new container: tried again
            assert tries == ["w", "w"]
        finally:
            await ports.close()

    try:
        asyncio.run(scenario())
    finally:
        taken.close()
