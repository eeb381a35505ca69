"""The SSH agent relay's two ends joined back to back: connections made to the node's
socket reach the laptop's agent socket (here an echo server that answers in upper case),
each on its own, in order, and end when either side closes; the socket is 0600 and goes
when the stream ends. And what a failed clone says."""

from __future__ import annotations

import asyncio
import stat
from pathlib import Path

from kled.agent.wsgitagent import clone_error, is_ssh_url
from kled.workspace import agentrelay


async def _pair(tmp: Path) -> None:
    async def agent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(1024):
            writer.write(data.upper())
            await writer.drain()
        writer.close()

    laptop = await asyncio.start_unix_server(agent, tmp / "laptop.sock")
    to_node, to_laptop = asyncio.StreamReader(), asyncio.StreamReader()

    async def node_sends(data: bytes) -> None:
        to_laptop.feed_data(data)

    async def laptop_sends(data: bytes) -> None:
        to_node.feed_data(data)

    node = asyncio.create_task(agentrelay.node_relay(tmp / "node.sock", to_node, node_sends))
    client = asyncio.create_task(
        agentrelay.client_relay(to_laptop, laptop_sends, str(tmp / "laptop.sock"))
    )
    for _ in range(100):
        if (tmp / "node.sock").exists():
            break
        await asyncio.sleep(0.01)
    assert stat.S_IMODE((tmp / "node.sock").stat().st_mode) == 0o600
    one = await asyncio.open_unix_connection(tmp / "node.sock")
    two = await asyncio.open_unix_connection(tmp / "node.sock")
    for i, (reader, writer) in enumerate((one, two, one)):
        writer.write(f"sign {i}".encode())
        await writer.drain()
        assert await reader.readexactly(6) == f"SIGN {i}".encode()
    big = bytes(range(256)) * 1024  # more than one frame
    two[1].write(big.lower())
    await two[1].drain()
    assert await two[0].readexactly(len(big)) == big.lower().upper()
    one[1].close()
    two[1].close()
    to_node.feed_eof()  # the stream ends: the node's end stops and removes its socket
    await asyncio.wait_for(node, 5)
    to_laptop.feed_eof()
    await asyncio.wait_for(client, 5)
    assert not (tmp / "node.sock").exists()
    laptop.close()


def test_connections_to_the_node_socket_reach_the_laptops_agent(tmp_path: Path) -> None:
    asyncio.run(_pair(tmp_path))


def test_a_malformed_frame_ends_the_stream() -> None:
    async def read(data: bytes) -> object:
        reader = asyncio.StreamReader()
        reader.feed_data(data)
        reader.feed_eof()
        return await agentrelay.read_frame(reader)

    assert asyncio.run(read(agentrelay.frame(7, agentrelay.DATA, b"hi"))) == (7, 1, b"hi")
    assert asyncio.run(read(agentrelay.HEADER.pack(1, 9, 0))) is None  # no such kind
    assert asyncio.run(read(agentrelay.HEADER.pack(1, 1, 10**9))) is None  # too large
    assert asyncio.run(read(agentrelay.frame(1, agentrelay.DATA, b"hello")[:-2])) is None


def test_ssh_urls_and_what_a_failed_clone_says() -> None:
    assert is_ssh_url("git@example.test:acme/api.git")
    assert is_ssh_url("ssh://git@example.test:2222/acme/api.git")
    assert not is_ssh_url("https://example.test/acme/api.git")
    assert not is_ssh_url("file:///srv/api.git")
    refused = (
        "git@example.test: Permission denied (publickey).\n"
        "fatal: Could not read from remote repository.\n\n"
        "Please make sure you have the correct access rights\nand the repository exists.\n"
    )
    assert clone_error(refused) == "git@example.test: Permission denied (publickey)."
    missing = "Cloning into 'x'...\nfatal: repository '/nope' does not exist\n"
    assert clone_error(missing) == "fatal: repository '/nope' does not exist"
    assert clone_error("something odd\n") == "something odd"
