"""spec.idleTimeout's pure parts: the activity file's age, the reason, what the node gets."""

from __future__ import annotations

import os
from pathlib import Path

from kled.agent import wsidle
from kled.agent.workspaces import spec_hash
from kled.control.workspaces import on_host


def test_due_after_the_timeout_since_the_last_use(tmp_path: Path) -> None:
    assert wsidle.due(tmp_path, 1800) is None  # never marked: not judged
    wsidle.touch(tmp_path)
    used = (tmp_path / wsidle.ACTIVITY).stat().st_mtime
    assert wsidle.due(tmp_path, 1800, now=used + 1799) is None
    assert wsidle.due(tmp_path, 1800, now=used + 1800) == "idle for 30m"
    assert wsidle.due(tmp_path, None, now=used + 10**6) is None
    os.utime(tmp_path / wsidle.ACTIVITY, (used + 100, used + 100))
    assert wsidle.idle_seconds(tmp_path, now=used + 160) == 60
    wsidle.touch(tmp_path / "gone")  # a removed workspace's folder: nothing, no error


def test_the_reason_says_the_timeout_as_written() -> None:
    assert [wsidle.duration_text(s) for s in (30, 90, 1800, 7200, 86400)] == [
        "30s", "90s", "30m", "2h", "1d",
    ]  # fmt: skip


def test_the_node_gets_seconds_and_a_new_timeout_keeps_the_container() -> None:
    doc = {"metadata": {"team": "acme", "name": "shop"}, "spec": {"idleTimeout": "1h30m"}}
    ws = on_host(doc)
    assert ws.idle_timeout == 5400
    assert on_host({**doc, "spec": {}}).idle_timeout is None
    assert spec_hash(ws) == spec_hash(ws.model_copy(update={"idle_timeout": 60}))


def test_the_idle_stop_reason_is_kept_until_the_workspace_starts_again(tmp_path: Path) -> None:
    assert wsidle.stopped_reason(tmp_path) is None
    wsidle.mark_stopped(tmp_path, "idle for 30m")
    assert wsidle.stopped_reason(tmp_path) == "idle for 30m"  # read again after a restart
    wsidle.clear_stopped(tmp_path)
    assert wsidle.stopped_reason(tmp_path) is None
    wsidle.clear_stopped(tmp_path / "gone")  # a removed workspace's folder: no error
    wsidle.mark_stopped(tmp_path / "gone", "idle for 1h")
