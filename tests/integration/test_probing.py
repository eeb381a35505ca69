"""The probe checks against real sockets and processes (no namespace: 127.0.0.1)."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from kled.agent.probing import ExecPlanner, run_handler
from kled.agent.runtime.base import ExecPlan
from kled.resources.hoststate import Handler, ReplicaSpec

SPEC = ReplicaSpec(team="t", environment="dev", app="a", index=0, command=["x"])


def _plan(tmp: Path) -> ExecPlanner:
    def plan(spec: ReplicaSpec, command: list[str]) -> ExecPlan:
        return ExecPlan(argv=command, cwd=str(tmp), env={"WHO": spec.app})

    return plan


async def _http_server(codes: dict[str, int], seen: list[str]) -> asyncio.Server:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = (await reader.readuntil(b"\r\n\r\n")).decode()
        seen.append(head)
        path = head.split()[1]
        writer.write(f"HTTP/1.1 {codes.get(path, 404)} X\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_http_get_passes_on_2xx_3xx_and_fails_with_the_status(tmp_path: Path) -> None:
    seen: list[str] = []
    server = await _http_server({"/ok": 200, "/moved": 302, "/bad": 500}, seen)
    port = server.sockets[0].getsockname()[1]
    plan = _plan(tmp_path)
    try:
        for path, expected in (("/ok", (True, "HTTP 200")), ("/moved", (True, "HTTP 302")),
                               ("/bad", (False, "HTTP 500"))):  # fmt: skip
            handler = Handler(kind="httpGet", port=port, path=path, headers=[("X-Probe", "1")])
            assert await run_handler(SPEC, handler, 2, plan) == expected
    finally:
        server.close()
        await server.wait_closed()
    assert "X-Probe: 1" in seen[0] and seen[0].startswith("GET /ok HTTP/1.1")


async def test_tcp_socket_passes_when_it_connects_and_fails_when_refused(tmp_path: Path) -> None:
    server = await asyncio.start_server(lambda r, w: w.close(), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    plan = _plan(tmp_path)
    ok, _ = await run_handler(SPEC, Handler(kind="tcpSocket", port=port), 2, plan)
    server.close()
    await server.wait_closed()
    ok_after, what = await run_handler(SPEC, Handler(kind="tcpSocket", port=port), 2, plan)
    assert ok and not ok_after and what == "Connection refused"


async def test_exec_runs_in_the_replicas_dir_and_env_and_times_out(tmp_path: Path) -> None:
    plan = _plan(tmp_path)
    check = (
        'import os,sys; sys.exit(0 if os.environ["WHO"] == "a" and os.getcwd() == sys.argv[1] '
        "else 3)"
    )
    good = Handler(kind="exec", command=[sys.executable, "-c", check, str(tmp_path)])
    assert await run_handler(SPEC, good, 5, plan) == (True, "exit code 0")
    bad = Handler(kind="exec", command=[sys.executable, "-c", "print('nope'); raise SystemExit(2)"])
    assert await run_handler(SPEC, bad, 5, plan) == (False, "exit code 2: nope")
    slow = Handler(kind="exec", command=["sleep", "5"])
    assert await run_handler(SPEC, slow, 0.3, plan) == (False, "timed out after 0.3s")
