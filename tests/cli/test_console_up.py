"""``kled up`` names the web console and how to get in; the link ``kled ui --print`` then
prints signs a browser in once (issue 13: "make up prints the console's URL")."""

from __future__ import annotations

import signal
import threading

import httpx
from clikit import Cli, ServerProcess, free_port, wait_for


def test_up_prints_the_console_url_and_a_link_signs_in(cli: Cli) -> None:
    port = free_port()
    up = ServerProcess(cli, cli.home / ".local" / "share" / "kled", port)
    up.proc = cli.popen("up", "--listen", f"127.0.0.1:{port}", "--no-agent")
    threading.Thread(target=lambda: up.lines.extend(up.proc.stdout or []), daemon=True).start()
    try:
        wait_for(lambda: any("Next:" in line for line in up.lines), "kled up announces itself")
        console = [line.strip() for line in up.lines if line.startswith("Web console:")]
        assert console == [
            f"Web console: http://127.0.0.1:{port}/ui "
            "(kled ui opens it signed in; kled ui --print: a link)"
        ]
        link = cli.ok("ui", "--print").strip()
        assert link.startswith(f"http://127.0.0.1:{port}/ui/link/")
        with httpx.Client(follow_redirects=True, timeout=30) as browser:
            page = browser.get(link)
            assert page.status_code == 200 and page.url.path == "/ui/teams"
            assert "admin · server administrator" in page.text
            spent = browser.get(link)  # one time only
            assert spent.status_code == 401 and "spent or expired" in spent.text
        assert up.stop(signal.SIGINT) == 0
    finally:
        up.stop(signal.SIGKILL)
