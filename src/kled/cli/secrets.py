"""``kled secret set|get``: the keys of a secret, without writing YAML.

``set`` merges: the keys given are added or replaced, the others kept. The API shows a
secret's values only to owners and admins (``reveal``), so merging into an existing secret
reads it with ``reveal``; someone who may not reveal can still replace every key at once.
``get`` shows the keys, and their decoded values only with ``--reveal``.
"""

from __future__ import annotations

import base64
import binascii
from typing import Annotated, Any

import typer

from kled.cli.output import check_format, note, out, to_json, to_yaml, warn
from kled.cli.state import STATE, EnvOption, TeamOption
from kled.errors import Forbidden, InvalidInput, NotFound

app = typer.Typer(no_args_is_help=True)


def _pairs(items: list[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise InvalidInput(f"{item!r} is not KEY=VALUE", field="KEY=VALUE")
        pairs[key] = value
    return pairs


def _decode(value: str) -> str:
    try:
        return base64.b64decode(value, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return f"<{len(value)} bytes of base64, not UTF-8 text>"


@app.command("set")
def set_keys(
    name: str,
    pairs: Annotated[list[str], typer.Argument(help="KEY=VALUE, one or more.")],
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Create a secret, or add and replace keys of an existing one."""
    given = _pairs(pairs)
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    path = f"/api/v1/teams/{chosen_team}/environments/{chosen_env}/secrets/{name}"
    with STATE.client() as client:
        current: dict[str, Any] | None
        try:
            current = client.get(path, reveal="true")
        except NotFound:
            current = None
        except Forbidden:
            current = client.get(path)
            missing = sorted(set(current.get("data") or {}) - set(given))
            if missing:
                raise Forbidden(
                    f"cannot keep the other keys of secret {name} ({', '.join(missing)}): "
                    "reading them needs the admin or owner role; set every key at once"
                ) from None
        doc: dict[str, Any] = {
            "apiVersion": "kled.io/v1",
            "kind": "Secret",
            "metadata": {"name": name, "team": chosen_team, "environment": chosen_env},
            "stringData": given,
        }
        if current is not None:
            kept = {k: v for k, v in (current.get("data") or {}).items() if k not in given}
            doc["data"] = kept
            meta = current.get("metadata") or {}
            for key in ("labels", "annotations"):
                if meta.get(key):
                    doc["metadata"][key] = meta[key]
            if current.get("type"):
                doc["type"] = current["type"]
        answer = client.post("/api/v1/apply", doc)
    for text in answer.get("warnings") or []:
        warn(text)
    out(f"secret/{name} {answer.get('result')} ({', '.join(sorted(given))})")


@app.command("get")
def get_keys(
    name: str,
    reveal: Annotated[
        bool, typer.Option("--reveal", help="Show the values (owners and admins).")
    ] = False,
    output: Annotated[
        str, typer.Option("--output", "-o", help="table (KEY=VALUE lines), yaml or json.")
    ] = "table",
    env: EnvOption = None,
    team: TeamOption = None,
) -> None:
    """Show a secret's keys, and with --reveal their values."""
    check_format(output)
    chosen_team, chosen_env = STATE.team_for(team), STATE.env_for(env)
    path = f"/api/v1/teams/{chosen_team}/environments/{chosen_env}/secrets/{name}"
    with STATE.client() as client:
        doc = client.get(path, reveal="true" if reveal else None)
    data = doc.get("data") or {}
    if output in ("json", "yaml"):
        out(to_json(doc) if output == "json" else to_yaml(doc))
        return
    if not data:
        note(f"secret/{name} has no keys")
        return
    for key in sorted(data):
        out(f"{key}={_decode(data[key])}" if reveal else key)
    if not reveal:
        note("values hidden; pass --reveal to show them (owners and admins)")
