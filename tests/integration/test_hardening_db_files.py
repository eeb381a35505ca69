"""Issue 10, item 7: the server's SQLite files (every team's documents) are the server's alone."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from servers import RunningServer


def modes(data_dir: Path) -> dict[str, str]:
    found = {p.name: f"{stat.S_IMODE(p.stat().st_mode):o}" for p in data_dir.glob("kled.db*")}
    found["."] = f"{stat.S_IMODE(data_dir.stat().st_mode):o}"
    return found


def write_something(server: RunningServer) -> None:
    with server.client() as client:
        answer = client.post("/api/v1/teams", json={"kind": "Team", "metadata": {"name": "files"}})
        assert answer.status_code in (200, 201), answer.text


def test_the_database_files_are_0600_and_the_data_dir_0700(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = RunningServer(data, None).start()
    try:
        write_something(server)  # a write: the -wal and -shm files exist
        assert modes(data) == {".": "700", "kled.db": "600", "kled.db-wal": "600",
                               "kled.db-shm": "600"}  # fmt: skip
    finally:
        server.stop()


def test_database_files_an_older_version_left_readable_are_made_private_at_start(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    server = RunningServer(data, None).start()
    try:
        write_something(server)
    finally:
        server.stop()
    os.chmod(data, 0o755)
    for path in data.glob("kled.db*"):
        os.chmod(path, 0o644)

    again = RunningServer(data, None).start()
    try:
        with again.client() as client:
            assert client.get("/api/v1/teams/files").status_code == 200
        assert set(modes(data).values()) == {"600", "700"}
        assert modes(data)["."] == "700"
    finally:
        again.stop()
