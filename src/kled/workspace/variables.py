"""``${…}`` variables in devcontainer.json, resolved as the reference CLI resolves them.

Resolution happens in three phases, because the values are known at three moments:

1. ``substitute`` — on the client, before anything runs: ``${localEnv:V}`` (and its
   alias ``${env:V}``), ``${localWorkspaceFolder}``, ``${localWorkspaceFolderBasename}``,
   ``${containerWorkspaceFolder}``, ``${containerWorkspaceFolderBasename}``.
2. ``substitute_devcontainer_id`` — once the workspace's id labels are known.
3. ``substitute_container_env`` — once the container exists and its environment is known:
   ``${containerEnv:V}``. Until then it stays literal, as in the reference.

The rules are the reference's (``variableSubstitution.ts``): a variable is the shortest
``${…}``; its arguments are split on ``:``, so ``${localEnv:V:default}`` falls back to
``default`` only when ``V`` is unset (set but empty stays empty), an unset variable with
no default is the empty string, and a default cannot itself contain ``:``; unknown
variables stay as written; keys are never substituted, only string values.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from kled.errors import InvalidInput
from kled.resources.meta import field_path

#: The container labels that identify a workspace's container, and from which
#: ``${devcontainerId}`` is computed.
LOCAL_FOLDER_LABEL = "devcontainer.local_folder"
CONFIG_FILE_LABEL = "devcontainer.config_file"

_VARIABLE = re.compile(r"\$\{(.*?)\}")
_BASE32_DIGITS = "0123456789abcdefghijklmnopqrstuv"

Loc = tuple[str | int, ...]


class SubstitutionError(InvalidInput):
    """A variable that cannot be resolved; ``loc`` is where it was written."""

    def __init__(self, message: str, loc: Loc) -> None:
        super().__init__(message, field=field_path(loc) or None)
        self.loc = loc


@dataclass(frozen=True)
class LocalContext:
    """What the client knows before a container exists."""

    env: Mapping[str, str]
    local_workspace_folder: str | None = None
    #: the container's workspace folder as configured; may itself hold variables
    container_workspace_folder: str | None = None


_Replace = Callable[[str, str, list[str], Loc], str]


def substitute(value: Any, context: LocalContext) -> Any:
    """``value`` with the client-side variables of ``context`` resolved (phase 1)."""
    replace = _local_replacer(context)
    if context.container_workspace_folder is not None:
        resolved = _resolve_string(replace, context.container_workspace_folder, ())
        replace = _local_replacer(
            LocalContext(context.env, context.local_workspace_folder, resolved)
        )
    return _walk(replace, value, ())


def substitute_devcontainer_id(value: Any, id_labels: Mapping[str, str]) -> Any:
    """``value`` with ``${devcontainerId}`` resolved from the id labels (phase 2)."""
    ident = devcontainer_id(id_labels)

    def replace(match: str, name: str, args: list[str], loc: Loc) -> str:
        return ident if name == "devcontainerId" else match

    return _walk(replace, value, ())


def substitute_container_env(value: Any, container_env: Mapping[str, str]) -> Any:
    """``value`` with ``${containerEnv:V[:default]}`` resolved (phase 3)."""

    def replace(match: str, name: str, args: list[str], loc: Loc) -> str:
        if name == "containerEnv":
            return _lookup(container_env, args, match, loc)
        return match

    return _walk(replace, value, ())


def id_labels(local_workspace_folder: str, config_file: str) -> dict[str, str]:
    """The labels that identify the container of a workspace folder and config file."""
    return {LOCAL_FOLDER_LABEL: local_workspace_folder, CONFIG_FILE_LABEL: config_file}


def devcontainer_id(labels: Mapping[str, str]) -> str:
    """``${devcontainerId}``: sha256 of the labels as sorted compact JSON, in base 32.

    Base 32 here is JavaScript's ``BigInt.toString(32)`` (digits 0-9 then a-v, most
    significant first), left-padded with ``0`` to 52 characters: stable across rebuilds,
    unique per (folder, config file).
    """
    text = json.dumps(
        {key: labels[key] for key in sorted(labels)}, separators=(",", ":"), ensure_ascii=False
    )
    number = int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest(), "big")
    digits = ""
    while number:
        number, rest = divmod(number, 32)
        digits = _BASE32_DIGITS[rest] + digits
    return digits.rjust(52, "0")


# --- the walk -------------------------------------------------------------------------


def _walk(replace: _Replace, value: Any, loc: Loc) -> Any:
    if isinstance(value, str):
        return _resolve_string(replace, value, loc)
    if isinstance(value, list):
        return [_walk(replace, item, (*loc, i)) for i, item in enumerate(value)]
    if isinstance(value, dict):
        return {key: _walk(replace, item, (*loc, key)) for key, item in value.items()}
    return value


def _resolve_string(replace: _Replace, value: str, loc: Loc) -> str:
    def one(match: re.Match[str]) -> str:
        name, *args = match.group(1).split(":")
        return replace(match.group(0), name, args, loc)

    return _VARIABLE.sub(one, value)


def _local_replacer(context: LocalContext) -> _Replace:
    def replace(match: str, name: str, args: list[str], loc: Loc) -> str:
        if name in ("localEnv", "env"):
            return _lookup(context.env, args, match, loc)
        if name == "localWorkspaceFolder":
            folder = context.local_workspace_folder
            return match if folder is None else folder
        if name == "localWorkspaceFolderBasename":
            folder = context.local_workspace_folder
            return match if folder is None else PurePosixPath(folder).name
        if name == "containerWorkspaceFolder":
            folder = context.container_workspace_folder
            return match if folder is None else folder
        if name == "containerWorkspaceFolderBasename":
            folder = context.container_workspace_folder
            return match if folder is None else PurePosixPath(folder).name
        return match

    return replace


def _lookup(env: Mapping[str, str], args: list[str], match: str, loc: Loc) -> str:
    if not args:
        raise SubstitutionError(
            f"{match} cannot be resolved: it names no environment variable", loc
        )
    found = env.get(args[0])
    if found is not None:
        return found
    return args[1] if len(args) > 1 else ""


def local_env_names(value: Any) -> set[str]:
    """The client's environment variables ``value`` names (``${localEnv:V}``, ``${env:V}``).

    The config is read on the node, not where ``kled ws up`` runs: the CLI sends the values
    of exactly these (never its whole environment), and the node resolves with them.
    """
    names: set[str] = set()

    def note(match: str, name: str, args: list[str], loc: Loc) -> str:
        if name in ("localEnv", "env") and args and args[0]:
            names.add(args[0])
        return match

    _walk(note, value, ())
    return names
