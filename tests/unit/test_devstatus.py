"""The terminal of ``kled dev``: the status line as text, and where lines go."""

from __future__ import annotations

import io

from rich.console import Console

from kled.cli.devstatus import LastSync, Snapshot, View, render, size


def test_the_status_line_says_state_last_sync_restarts_and_ports() -> None:
    snap = Snapshot("api", "running", LastSync(3, 2048, 12.4), 2, ("8080→80", "remote 9000→8000"))
    assert render(snap) == (
        "api: running · last sync 3 file(s), 2.0 KiB in 12 ms · 2 restart(s)"
        " · ports 8080→80, remote 9000→8000"
    )


def test_before_the_first_sync_and_without_ports() -> None:
    assert render(Snapshot("web", "first sync")) == "web: first sync · no sync yet · 0 restart(s)"


def test_sizes_read_as_people_read_them() -> None:
    assert [size(n) for n in (0, 812, 1024, 1536, 5 * 2**20, 3 * 2**40)] == [
        "0 B",
        "812 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 MiB",
        "3072.0 GiB",
    ]


def test_without_a_tty_only_the_event_lines_are_printed() -> None:
    out = io.StringIO()
    view = View(lambda: Snapshot("api", "running"), out)  # a StringIO is no TTY
    view.start()
    view.line("[kled dev] synced 1 file(s), 9 B in 3 ms")
    view.stop()
    assert out.getvalue() == "[kled dev] synced 1 file(s), 9 B in 3 ms\n"


def test_on_a_tty_the_status_line_stays_below_the_lines_and_goes_at_the_end() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=200, color_system=None)
    state = {"restarts": 0}
    view = View(lambda: Snapshot("api", "running", None, state["restarts"]), out, console=console)
    assert view.live is False  # the StringIO is no TTY: asked for explicitly below
    view.live = True
    view.start()
    view.line("[api] serving on :80")
    state["restarts"] = 4
    view.line("[kled dev] restarting api (restart 4)")
    view.stop()
    text = out.getvalue()
    assert "[api] serving on :80" in text and "restarting api (restart 4)" in text
    assert "api: running · no sync yet · 4 restart(s)" in text
    # the status line is drawn after the events and erased when the view stops
    assert text.index("4 restart(s)") > text.index("(restart 4)")
    assert text.endswith("\x1b[2K")  # the terminal's "erase line": nothing left of it
