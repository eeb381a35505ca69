"""The console's mesh drawing on a real mesh: two agents' gateways, a laptop joined with
``kled device join``, real WireGuard handshakes (issue 13).

Hosts 1 and 2 run agents and the app's replicas, host 3 is the laptop, host 4 the control
plane (``agentlab.lab_mesh``). Once the laptop has reached the app over the mesh, the
handshake its gateway reported in a heartbeat colours their peering as fresh, in the page's
table and in the drawing chromium shows; an intercept started meanwhile marks the app
without a reload. The control plane listens inside its lab host only: a forwarder in the
test process gives chromium a loopback port onto its Unix socket.

``KLED_CONSOLE_SHOTS=docs/ui`` also saves the drawing in light and dark (the screenshots
of docs/console.md).
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from agentlab import Mesh, eventually, lab_mesh, laptop_ifname, laptop_kled, serve_cmd

from integration.consolekit import browser, page, sign_in

__all__ = ["browser", "page"]  # fixtures

pytestmark = [pytest.mark.slow, pytest.mark.serial, pytest.mark.xdist_group("netns")]

BLOCK = "100.91.0.0/16"
SHOTS = os.environ.get("KLED_CONSOLE_SHOTS")


class Forwarder:
    """127.0.0.1:<port> → a Unix socket, one pair of pumping threads per connection."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.open: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        with contextlib.suppress(OSError):
            while True:
                client, _ = self.listener.accept()
                upstream = socket.socket(socket.AF_UNIX)
                upstream.connect(self.path)
                self.open += [client, upstream]
                for a, b in ((client, upstream), (upstream, client)):
                    threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self.listener.close()
        for s in self.open:
            with contextlib.suppress(OSError):
                s.close()


@pytest.fixture
def mesh(tmp_path: Path) -> Iterator[Mesh]:
    with lab_mesh(tmp_path, 3, "conmesh") as m:
        yield m


@pytest.fixture
def console(mesh: Mesh) -> Iterator[Forwarder]:
    forward = Forwarder(str(mesh.server.settings.socket_path()))
    try:
        yield forward
    finally:
        forward.close()


def _peering_rows(html: str, peer: str) -> list[tuple[str, str]]:
    """(class, gateway) of each table row of ``peer`` on the mesh page."""
    rows = re.findall(
        rf'<tr class="(\w+)"><th scope="row">{peer}</th>(?:<td>[^<]*</td>){{3}}<td>([^<]*)</td>',
        html,
    )
    return [(str(a), str(b)) for a, b in rows]


def test_the_drawing_colours_real_handshakes_and_marks_an_intercept(
    mesh: Mesh, console: Forwarder, page: Any, tmp_path: Path
) -> None:
    mesh.start_agent(1)
    mesh.start_agent(2)
    mesh.team("a", BLOCK)
    token = mesh.user_token("a", "alice")
    mesh.app(
        "a",
        "api",
        {"command": serve_cmd(), "replicas": 2, "ports": [{"port": 80, "targetPort": 8080}]},
    )
    service_ip = eventually(lambda: mesh.get_app("a", "api")["status"]["ip"], "api service IP")
    home = tmp_path / "laptop"
    mesh.lab.ifnames.add(laptop_ifname(home))
    try:
        joined = laptop_kled(mesh, home, token, "device", "join", "laptop", host=3)
        assert joined.returncode == 0, joined.stderr + mesh.dump_logs()

        def answered() -> bool:
            # Playwright's loop runs in this thread: the lab's asyncio asks from another
            with ThreadPoolExecutor(1) as other:
                asking = other.submit(mesh.ask, mesh.lab.host(3), service_ip, 80, 2)
                return all(a.startswith("api-") for a in asking.result())

        eventually(answered, "api answering the laptop over the mesh")

        with httpx.Client(base_url=console.url, timeout=30) as reader:
            form = reader.get("/ui/signin").text
            csrf = re.search(r'name="csrf" value="([^"]+)"', form)
            assert csrf is not None
            reader.post("/ui/signin", data={"csrf": csrf.group(1), "token": token})

            def fresh() -> list[tuple[str, str]]:
                rows = _peering_rows(reader.get("/ui/teams/a/mesh").text, "laptop")
                return [r for r in rows if r[0] == "fresh"]

            # the laptop's traffic went through a gateway: a heartbeat tells its handshake
            assert eventually(fresh, "a fresh laptop peering on the mesh page")

        sign_in(page, console, token)
        page.goto(f"{console.url}/ui/teams/a/mesh")
        drawing = page.get_by_test_id("mesh")
        assert drawing.locator("[data-peer=device-laptop]").count() == 1
        assert drawing.locator("[data-peer=node-node1], [data-peer=node-node2]").count() == 2
        assert drawing.locator("path.edge.fresh").count() >= 1
        hosting = {r["node"] for r in mesh.get_app("a", "api")["status"]["replicas"]}
        # the service IP → each node running a replica of it
        assert drawing.locator("path.edge.route").count() == len(hosting)
        page.locator("html[data-live=open]").wait_for()
        mesh.api(
            "POST",
            "/api/v1/teams/a/environments/dev/intercepts",
            {"metadata": {"name": "api-laptop"}, "spec": {"app": "api", "device": "laptop"}},
        )
        drawing.locator("[data-peer=app-dev-api].intercepted").wait_for(timeout=30_000)
        assert "intercepted → laptop" in (
            drawing.locator("[data-peer=app-dev-api]").text_content() or ""
        )
        if SHOTS:
            _screenshots(page, console, token, Path(SHOTS))
        assert page.errors == []
    except BaseException:
        print(mesh.dump_logs())
        raise


def _screenshots(page: Any, console: Forwarder, token: str, folder: Path) -> None:
    for scheme in ("light", "dark"):
        context = page.context.browser.new_context(
            color_scheme=scheme, viewport={"width": 1200, "height": 800}
        )
        try:
            shot = context.new_page()
            sign_in(shot, console, token)
            shot.goto(f"{console.url}/ui/teams/a/mesh")
            shot.screenshot(path=str(folder / f"mesh-{scheme}.png"), full_page=True)
        finally:
            context.close()
