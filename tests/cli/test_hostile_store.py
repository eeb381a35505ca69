"""Issue 10: a server whose store holds documents no API would accept today still starts.

The data dir is seeded the way an older version (or a hand edit) could have left it — a
status nested 488 deep, a lone surrogate, metadata that is not a mapping, a document over
the size bound, and events carrying them — then the server starts over it: it serves
everything else, names each bad document in ``/readyz``, lets it be deleted, and
``kled server doctor`` finds and purges the rest.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from clikit import Cli

from servers import RunningServer


def nested(levels: int) -> Any:
    value: Any = "x"
    for _ in range(levels):
        value = {"x": value}
    return value


def _seed(data_dir: Path) -> None:
    server = RunningServer(data_dir, None).start()
    try:
        with server.client() as c:
            assert c.post("/api/v1/teams", json={"metadata": {"name": "t"}}).status_code == 201
            envs = "/api/v1/teams/t/environments"
            assert c.post(envs, json={"metadata": {"name": "dev"}}).status_code == 201
            for name in ("good", "deep", "surrogate", "nometa", "huge"):
                r = c.post(
                    f"{envs}/dev/apps",
                    json={"kind": "App", "metadata": {"name": name}, "spec": {"command": ["x"]}},
                )
                assert r.status_code == 201, r.text
    finally:
        server.stop()
    db = sqlite3.connect(data_dir / "kled.db")
    try:
        rows = dict(db.execute("SELECT name, doc FROM resources WHERE kind = 'App'").fetchall())
        hostile: dict[str, Any] = {}
        deep = json.loads(rows["deep"])
        deep["status"] = nested(488)
        hostile["deep"] = deep
        bad = json.loads(rows["surrogate"])
        bad["metadata"]["annotations"] = {"a": "\ud800"}
        hostile["surrogate"] = bad
        nometa = json.loads(rows["nometa"])
        nometa["metadata"] = ["not", "a", "mapping"]
        hostile["nometa"] = nometa
        huge = json.loads(rows["huge"])
        huge["status"] = {"blob": "x" * 600_000}
        hostile["huge"] = huge
        for name, doc in hostile.items():
            text = json.dumps(doc)  # ensure_ascii: the surrogate is stored as \\ud800
            db.execute("UPDATE resources SET doc = ? WHERE kind = 'App' AND name = ?", (text, name))
        seq = db.execute("SELECT MAX(seq) FROM events").fetchone()[0]
        db.execute(
            "INSERT INTO events (seq, type, kind, team, environment, name, object, created_at) "
            "VALUES (?, 'MODIFIED', 'App', 't', 'dev', 'deep', ?, '2026-01-01 00:00:00')",
            (seq + 1, json.dumps(deep)),
        )
        db.execute("UPDATE revision SET value = ?", (seq + 1,))
        db.commit()
    finally:
        db.close()


def test_the_server_starts_over_hostile_documents_and_names_them(tmp_path: Path, cli: Cli) -> None:
    data_dir = tmp_path / "data"
    _seed(data_dir)
    server = RunningServer(data_dir, None).start()  # raised RecursionError before
    try:
        with server.client() as c:
            apps = "/api/v1/teams/t/environments/dev/apps"
            listed = c.get(apps)
            assert listed.status_code == 200, listed.text
            assert [a["metadata"]["name"] for a in listed.json()["items"]] == ["good", "huge"]
            assert c.get(f"{apps}/deep").status_code == 404
            ready = c.get("/readyz").json()
            named = {p["resource"] for p in ready["unreadable"]}
            assert {"app/t/dev/deep", "app/t/dev/surrogate"} <= named
            # a bad document can be deleted (and only deleted)
            assert c.delete(f"{apps}/deep").json()["result"] == "deleted"
            assert c.get(apps).status_code == 200
            # everything else still works: a new app, a watch from the start
            r = c.post(
                apps, json={"kind": "App", "metadata": {"name": "new"}, "spec": {"command": ["x"]}}
            )
            assert r.status_code == 201, r.text
    finally:
        server.stop()

    found = cli("server", "doctor", "--data-dir", str(data_dir))
    assert found.code == 1, found
    assert "app/t/dev/surrogate" in found.out and "UTF-8" in found.out
    assert "app/t/dev/huge" not in found.out  # within depth and text; the size was its writer's
    assert "app/t/dev/nometa" in found.out
    assert "app/t/dev/deep" not in found.out  # deleted above
    assert "--purge" in found.err
    purged = cli("server", "doctor", "--data-dir", str(data_dir), "--purge")
    assert purged.code == 0, purged
    again = cli("server", "doctor", "--data-dir", str(data_dir))
    assert again.code == 0, again
    assert "no problems" in again.out

    server = RunningServer(data_dir, None).start()
    try:
        with server.client() as c:
            names = [a["metadata"]["name"] for a in c.get(apps).json()["items"]]
            assert names == ["good", "huge", "new"]
            assert "unreadable" not in c.get("/readyz").json()
    finally:
        server.stop()


def test_kled_apply_refuses_an_alias_bomb_in_one_line(admin: Cli, tmp_path: Path) -> None:
    lines = [
        "apiVersion: kled.io/v1",
        "kind: ManagedService",
        "metadata: {name: db, team: t, environment: dev}",
        "spec:",
        "  template: postgres",
        "  parameters:",
        "    a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]",
    ]
    for i in range(1, 10):
        lines.append(f"    a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("\n".join(lines) + "\n")
    result = admin("apply", "-f", str(bomb))
    assert result.code == 2, result
    assert "aliases expand to more than 100000 values" in result.err
    assert len(result.err.strip().splitlines()) == 1
