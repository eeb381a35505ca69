"""``kled ui``: open the web console in a browser, already signed in.

The server gives a one-time link for this CLI's token (``POST /ui/links``); it signs the
browser in on first use and is spent, and expires within a minute if unused. ``--print``
prints the link instead of opening it (for another machine's browser, or a script).
"""

from __future__ import annotations

import webbrowser
from typing import Annotated

import typer

from kled.cli.output import out
from kled.cli.state import STATE


def ui(
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the one-time link, do not open a browser.")
    ] = False,
) -> None:
    """Open the web console, signed in through a one-time link."""
    with STATE.client() as client:
        answer = client.post("/ui/links", {})
        link = f"{client.server}{answer['path']}"
    if print_only or not webbrowser.open(link):
        out(link)
        return
    out(f"opened {client.server}/ui in a browser (the link works once, within a minute)")


def register(root: typer.Typer) -> None:
    root.command("ui")(ui)
