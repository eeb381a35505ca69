"""The API served from the watch cache, and a compacted event log, on both databases.

A server that keeps only the last 3 events: a watch from an older revision is refused with
410 naming the oldest kept, and the CLI's watch lists again and goes on; meanwhile reads
from memory keep teams apart, see a client's own writes at once, and an ``apply`` of the
same document answers ``unchanged`` without a write.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_api import make_team, make_user

from kled.cli.client import Client, WatchEvent
from servers import RunningServer


@pytest.fixture
def server(tmp_path: Path, database_url: str) -> Iterator[RunningServer]:
    running = RunningServer(
        tmp_path / "data", database_url, keep_events=3, compact_seconds=0.1
    ).start()
    try:
        yield running
    finally:
        running.stop()


def app(name: str, **labels: str) -> dict[str, Any]:
    return {
        "kind": "App",
        "metadata": {"name": name, "team": "blue", "environment": "dev", "labels": labels},
        "spec": {"command": ["sleep", "60"]},
    }


APPS = "/api/v1/teams/blue/environments/dev/apps"


def revision(server: RunningServer) -> int:
    with server.client() as c:
        return int(c.get("/readyz").json()["revision"])


def compacted_past(server: RunningServer, seq: int) -> str:
    """Wait until a watch from ``seq`` is refused; the refusal's message."""
    with server.client() as c:
        for _ in range(200):
            # a watch that is not refused streams on: look at its status only, then hang up
            params = {"watch": "true", "resourceVersion": str(seq)}
            with c.stream("GET", APPS, params=params) as r:
                if r.status_code == 410:
                    body = json.loads(r.read())
                    assert body["reason"] == "Gone"
                    assert body["field"] == "resourceVersion"
                    return str(body["message"])
                assert r.status_code == 200, r.status_code
            time.sleep(0.1)
    raise AssertionError(f"events after {seq} were never compacted")


def test_a_watch_from_a_compacted_revision_is_gone_and_the_cli_lists_again(
    server: RunningServer,
) -> None:
    make_team(server, "blue")
    with server.client() as c:
        for n in range(6):
            assert c.post("/api/v1/apply", json=app(f"a-{n}")).status_code == 201
    message = compacted_past(server, 1)
    assert "the events after revision 1 were compacted; the oldest kept is" in message

    seen: list[WatchEvent] = []
    notes: list[str] = []
    done = threading.Event()

    def watch() -> None:
        with Client(server.url, server.admin_token) as client:
            for event in client.watch(APPS, since=1, on_retry=notes.append):
                seen.append(event)
                if event.object["metadata"]["name"] == "late":
                    done.set()
                    return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    for _ in range(200):  # the relist's six ADDED, then a write after it
        if len(seen) >= 6:
            break
        time.sleep(0.05)
    with server.client() as c:
        assert c.post("/api/v1/apply", json=app("late")).status_code == 201
    assert done.wait(30), seen
    names = [e.object["metadata"]["name"] for e in seen]
    assert sorted(names[:6]) == [f"a-{n}" for n in range(6)]
    assert all(e.type == "ADDED" for e in seen[:6])
    assert names[-1] == "late"
    assert any("listing again" in note for note in notes), notes


def test_a_watch_from_a_kept_revision_goes_on(server: RunningServer) -> None:
    make_team(server, "blue")
    now = revision(server)
    with (
        server.client() as c,
        c.stream("GET", APPS, params={"watch": "true", "resourceVersion": str(now)}) as r,
    ):
        assert r.status_code == 200
        assert c.post("/api/v1/apply", json=app("x")).status_code == 201
        for line in r.iter_lines():
            if line.startswith("data:"):
                assert '"name":"x"' in line.replace(" ", "")
                break


def test_reads_from_memory_see_own_writes_and_keep_teams_apart(server: RunningServer) -> None:
    make_team(server, "blue")
    make_team(server, "green")
    green = make_user(server, "green", "gus", "admin")
    with server.client() as c:
        for n in range(20):
            r = c.post("/api/v1/apply", json=app("rw", n=str(n)))
            assert r.status_code in (200, 201), r.text
            version = r.json()["object"]["metadata"]["resourceVersion"]
            got = c.get(f"{APPS}/rw").json()
            assert got["metadata"]["resourceVersion"] == version
            listed = c.get(APPS, params={"labelSelector": f"n={n}"}).json()
            assert [d["metadata"]["name"] for d in listed["items"]] == ["rw"]
    with server.client(green) as other:
        r = other.get(f"{APPS}/rw")
        assert r.status_code == 404
        assert r.json()["message"] == "team blue not found"
        assert other.get(APPS).status_code == 404
        mine = other.get("/api/v1/teams/green/environments/dev/apps").json()
        assert mine["items"] == []


def test_applying_the_same_document_again_writes_nothing(server: RunningServer) -> None:
    """A Config: no controller writes its status, so the revision moves only for us."""
    make_team(server, "blue")

    def config(value: str) -> dict[str, Any]:
        meta = {"name": "same", "team": "blue", "environment": "dev"}
        return {"kind": "Config", "metadata": meta, "data": {"k": value}}

    with server.client() as c:
        assert c.post("/api/v1/apply", json=config("1")).status_code == 201
        before = revision(server)
        for _ in range(5):
            r = c.post("/api/v1/apply", json=config("1"))
            assert r.status_code == 200
            assert r.json()["result"] == "unchanged"
        assert revision(server) == before
        r = c.post("/api/v1/apply", json=config("2"))
        assert r.json()["result"] == "configured"
        assert revision(server) == before + 1


def test_a_list_from_memory_is_the_documents_a_get_shows(server: RunningServer) -> None:
    make_team(server, "blue")
    with server.client() as c:
        for n in range(5):
            doc = app(f"l-{n}", tier="web" if n % 2 else "db")
            doc["metadata"]["annotations"] = {"note": 'ünïcode ✓ "quoted"'}
            assert c.post("/api/v1/apply", json=doc).status_code == 201

        def listed() -> list[str] | None:
            """The names, paged; None if a controller wrote an app between a list and a get."""
            names, token = [], None
            while True:
                params = {"labelSelector": "tier=db", "limit": "2"}
                if token:
                    params["continue"] = token
                r = c.get(APPS, params=params)
                assert r.status_code == 200
                assert r.headers["content-type"] == "application/json"
                page = r.json()
                assert page["kind"] == "List"
                for item in page["items"]:
                    got = c.get(f"{APPS}/{item['metadata']['name']}").json()
                    if item != got:
                        # the IP allocator writes each app's status: only a newer version
                        # of the document may differ from what the list showed
                        version = int(got["metadata"]["resourceVersion"])
                        assert version > int(item["metadata"]["resourceVersion"]), (item, got)
                        return None
                    assert item["metadata"]["annotations"]["note"] == 'ünïcode ✓ "quoted"'
                names += [i["metadata"]["name"] for i in page["items"]]
                token = page["metadata"]["continue"]
                if not token:
                    return names

        for _ in range(50):
            names = listed()
            if names is not None:
                break
            time.sleep(0.2)
        assert names == ["l-0", "l-2", "l-4"]
