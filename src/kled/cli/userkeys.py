"""``kled user key add|list|remove``: a user's SSH public keys.

Workspaces' SSH servers accept the keys of the users allowed on them (the workspace's
owner, the team's admins), so ``ssh`` with one's own key (or agent) gets in through
``kled ws ssh-config``'s Host block. A user manages their own keys; an admin those of
others (``--user``). The key is read and checked here first: a file that is not an OpenSSH
public key is one line, and nothing is sent.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from kled.cli.output import align, note, out
from kled.cli.state import STATE, TeamOption
from kled.errors import InvalidInput
from kled.resources.sshkeys import parse_key

app = typer.Typer(no_args_is_help=True)

UserOption = Annotated[
    str | None, typer.Option("--user", help="Whose keys (default: yours; others': admins).")
]
#: what ``add`` reads when given no file, the first that exists
DEFAULT_KEYS = ("id_ed25519.pub", "id_ecdsa.pub", "id_rsa.pub")


def _read(source: str | None) -> tuple[str, str]:
    """(the key line, where it came from)."""
    if source == "-":
        text, where = sys.stdin.read(), "stdin"
    else:
        if source is None:
            folder = Path.home() / ".ssh"
            found = next((folder / n for n in DEFAULT_KEYS if (folder / n).exists()), None)
            if found is None:
                raise InvalidInput(f"no key in {folder} ({', '.join(DEFAULT_KEYS)}): give FILE")
            path = found
        else:
            path = Path(source).expanduser()
        try:
            text, where = path.read_text(), str(path)
        except (OSError, UnicodeDecodeError) as err:
            raise InvalidInput(f"{path}: cannot read it ({err})", field="FILE") from None
    lines = [line for line in text.splitlines() if line.strip() and not line.startswith("#")]
    if len(lines) != 1:
        raise InvalidInput(f"{where}: give one public key line, not {len(lines)}", field="FILE")
    try:
        parse_key(lines[0])
    except ValueError as err:
        raise InvalidInput(f"{where}: {err}", field="FILE") from None
    return lines[0].strip(), where


def _path(team: str, user: str | None) -> str:
    if user is None:
        with STATE.client() as client:
            user = str(client.get("/api/v1/whoami")["username"])
    return f"/api/v1/teams/{team}/users/{user}/ssh-keys"


@app.command()
def add(
    source: Annotated[
        str | None,
        typer.Argument(metavar="[FILE|-]", help="A .pub file, or - for stdin (default: ~/.ssh)."),
    ] = None,
    user: UserOption = None,
    team: TeamOption = None,
) -> None:
    """Add an SSH public key: workspaces you may enter accept it."""
    line, where = _read(source)
    chosen = STATE.team_for(team)
    path = _path(chosen, user)
    with STATE.client() as client:
        added = client.post(path, {"key": line})
    note(f"from {where}")
    comment = f" {added['comment']}" if added["comment"] else ""
    out(f"key {added['id']} added ({added['type']}{comment})")


@app.command("list")
def list_keys(user: UserOption = None, team: TeamOption = None) -> None:
    """List the SSH keys of a user: their ids (SHA256 fingerprints), types, comments."""
    chosen = STATE.team_for(team)
    path = _path(chosen, user)
    with STATE.client() as client:
        items = client.get(path)["items"]
    if not items:
        note("no SSH keys: add one with kled user key add")
        return
    rows = [["ID", "TYPE", "COMMENT"]] + [[i["id"], i["type"], i["comment"]] for i in items]
    out(align(rows))


@app.command()
def remove(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="The key's id, or its start.")],
    user: UserOption = None,
    team: TeamOption = None,
) -> None:
    """Remove an SSH key by its id (as list shows it)."""
    if not key_id.strip():
        raise InvalidInput("give the key's id, as kled user key list shows it", field="ID")
    chosen = STATE.team_for(team)
    path = _path(chosen, user)
    with STATE.client() as client:
        gone = client.delete(f"{path}/{key_id.strip()}")
    out(f"key {gone['id']} removed")
