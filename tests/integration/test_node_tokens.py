"""Node join tokens made at once: each its own (an admin scripting many agents' joins)."""

from __future__ import annotations

import asyncio

import httpx

from servers import RunningServer


def test_node_tokens_made_at_once_are_all_made_and_distinct(server: RunningServer) -> None:
    async def make_all() -> list[httpx.Response]:
        headers = {"Authorization": f"Bearer {server.admin_token}"}
        async with httpx.AsyncClient(base_url=server.url, headers=headers, timeout=60) as c:
            return await asyncio.gather(
                *(c.post("/api/v1/node-tokens", json={"ttl": "1h"}) for _ in range(32))
            )

    answers = asyncio.run(make_all())
    assert [r.status_code for r in answers] == [201] * 32, [r.text for r in answers]
    assert len({r.json()["token"] for r in answers}) == 32
