"""The console's live pages after the event log was compacted past them (issue 15).

A page drawn at a revision whose events are gone would get a 410, on which a browser's
EventSource gives up for good; instead the console's watch says ``RESYNC`` (the page reads
itself again) and goes on with the changes from now.
"""

from __future__ import annotations

import json
import time
from typing import Any

from test_api import make_team, make_user
from test_compaction_watch import APPS, app, revision, server
from test_console_http import signed_in

from servers import RunningServer

__all__ = ["server"]  # the compacting server of test_compaction_watch (keeps 3 events)


def wait_compacted_past(server: RunningServer, seq: int) -> None:
    """Until a REST watch from ``seq`` is refused with 410 (its answer's status only: a
    watch that is not refused streams on, and is closed here without reading it)."""
    with server.client() as c:
        for _ in range(300):
            params = {"watch": "true", "resourceVersion": str(seq)}
            with c.stream("GET", APPS, params=params) as r:
                if r.status_code == 410:
                    return
                assert r.status_code == 200
            time.sleep(0.1)
    raise AssertionError(f"events after {seq} were never compacted")


def changes(lines: Any) -> Any:
    """The ``data`` of each ``change`` event of an SSE stream's lines."""
    kind = ""
    for line in lines:
        if line.startswith("event:"):
            kind = line.split(":", 1)[1].strip()
        elif line.startswith("data:") and kind == "change":
            yield json.loads(line.split(":", 1)[1])


def test_a_page_behind_compaction_reads_itself_again(server: RunningServer) -> None:
    make_team(server, "blue")
    drawn = revision(server)
    with server.client() as c:
        for i in range(6):
            assert c.post(APPS, json=app(f"old{i}")).status_code == 201
    wait_compacted_past(server, drawn)
    token = make_user(server, "blue", "olga", "owner")
    with signed_in(server, token) as browser:
        path = f"/ui/teams/blue/watch?kinds=App&since={drawn}"
        with browser.stream("GET", path, timeout=30) as stream:
            assert stream.status_code == 200
            seen = changes(stream.iter_lines())
            assert next(seen)["type"] == "RESYNC"
            with server.client() as c:
                assert c.post(APPS, json=app("fresh")).status_code == 201
            for change in seen:
                if change["name"] == "fresh":
                    break
