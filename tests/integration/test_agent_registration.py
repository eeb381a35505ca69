"""Registration: one HTTP call to the server, remembered in the data dir."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from kled.agent.registration import load_registration, register, register_waiting
from kled.bus.embedded import free_port
from kled.errors import Unauthorized, Unavailable
from kled.resources.hoststate import Capacity


class FakeServer(ThreadingHTTPServer):
    """A real HTTP server on loopback standing in for the lead's register route."""

    requests: list[dict[str, Any]]


class Handler(BaseHTTPRequestHandler):
    server: FakeServer

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "body": body})
        if body["token"] == "busy-token" and len(self.server.requests) <= 2:
            self._answer(503, {"message": "the store is busy; retry"})
            return
        if body["token"] not in ("good-token", "busy-token"):
            self._answer(401, {"message": "join token is invalid or expired"})
            return
        self._answer(
            200,
            {
                "node": body["name"],
                "nats_url": "nats://10.0.0.1:4222",
                "nats_user": f"node-{body['name']}",
                "nats_password": "s3cret",
            },
        )

    def _answer(self, code: int, doc: dict[str, str]) -> None:
        data = json.dumps(doc).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: object) -> None:
        return None


@pytest.fixture
def server() -> Iterator[tuple[str, FakeServer]]:
    httpd = FakeServer(("127.0.0.1", 0), Handler)
    httpd.requests = []
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", httpd
    finally:
        httpd.shutdown()
        httpd.server_close()


CAP = Capacity(cpu_millicores=2000, memory_bytes=4 << 30)


async def test_register_sends_the_node_and_keeps_the_answer(
    server: tuple[str, FakeServer], tmp_path: Path
) -> None:
    url, httpd = server
    reg = await register(
        url,
        "good-token",
        "node-1",
        {"zone": "a"},
        capacity=CAP,
        capabilities=["podman"],
        data_dir=tmp_path,
    )
    assert (reg.node, reg.nats_url, reg.nats_user) == (
        "node-1",
        "nats://10.0.0.1:4222",
        "node-node-1",
    )
    [req] = httpd.requests
    assert req["path"] == "/api/v1/nodes/register"
    assert req["body"] == {
        "token": "good-token",
        "name": "node-1",
        "labels": {"zone": "a"},
        "capacity": {"cpu_millicores": 2000, "memory_bytes": 4 << 30},
        "capabilities": ["podman"],
    }
    assert (tmp_path / "registration.json").stat().st_mode & 0o777 == 0o600
    assert load_registration(tmp_path) == reg

    # a restarted agent reuses it: no second call, even with a spent token
    again = await register(
        url, "spent", "node-1", {}, capacity=CAP, capabilities=[], data_dir=tmp_path
    )
    assert again == reg and len(httpd.requests) == 1


async def test_a_bad_token_says_what_to_do(server: tuple[str, FakeServer], tmp_path: Path) -> None:
    url, _ = server
    with pytest.raises(Unauthorized, match="kled node token create"):
        await register(url, "bad", "node-1", {}, capacity=CAP, capabilities=[], data_dir=tmp_path)
    assert load_registration(tmp_path) is None


async def test_an_unreachable_server_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(Unavailable, match="cannot reach"):
        await register(
            f"http://127.0.0.1:{free_port()}", "t", "n", {}, capacity=CAP, capabilities=[]
        )


async def test_a_busy_server_is_waited_for_and_a_refusal_is_not(
    server: tuple[str, FakeServer], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """kled agent started while the server restarts, or is too busy to answer: it
    registers once the server answers, saying meanwhile what it waits for."""
    url, httpd = server
    reg = await register_waiting(
        url, "busy-token", "node-1", {}, capacity=CAP, capabilities=[],
        data_dir=tmp_path, first_delay=0.01,
    )  # fmt: skip
    assert reg.node == "node-1" and len(httpd.requests) == 3
    waits = [r.getMessage() for r in caplog.records if "registering again" in r.getMessage()]
    assert len(waits) == 2 and "registration refused (503): the store is busy" in waits[0]
    with pytest.raises(Unauthorized):
        await register_waiting(
            url, "bad", "node-2", {}, capacity=CAP, capabilities=[], first_delay=0.01
        )
