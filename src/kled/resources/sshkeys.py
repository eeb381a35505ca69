"""Users' SSH public keys (``kled user key add``): their format, and the id they go by.

A key is kept in OpenSSH's one-line form (``TYPE BASE64 [COMMENT]``) on the user's
``User`` resource, ``spec.sshKeys``; its id is OpenSSH's own fingerprint
(``SHA256:…``, as ``ssh-keygen -lf`` and ``ssh-add -l`` print it), so a user can tell which
key is which. Workspaces' SSH servers accept the keys of the users allowed on them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Iterable, Mapping
from typing import Annotated, Any

from pydantic import AfterValidator, field_validator

from kled.resources.meta import KledModel, problem

#: the key types OpenSSH's clients use
KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)


def parse_key(text: str) -> tuple[str, bytes, str]:
    """(type, blob, comment) of an OpenSSH public key line; ValueError says what is wrong."""
    words = text.strip().split(None, 2)
    if len(words) < 2 or words[0] not in KEY_TYPES:
        raise ValueError(
            "must be an OpenSSH public key line (ssh-ed25519 AAAA… comment), as in ~/.ssh/*.pub"
        )
    try:
        blob = base64.b64decode(words[1], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {words[0]} key's base64 does not decode") from None
    if len(blob) < 4:
        raise ValueError(f"the {words[0]} key is empty")
    (size,) = struct.unpack(">I", blob[:4])
    if blob[4 : 4 + size] != words[0].encode():
        raise ValueError(f"the key's data is not a {words[0]} key")
    return words[0], blob, words[2].strip() if len(words) == 3 else ""


def fingerprint(text: str) -> str:
    """``SHA256:…``: OpenSSH's fingerprint of the key."""
    _, blob, _ = parse_key(text)
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


def _check(value: str) -> str:
    try:
        kind, blob, comment = parse_key(value)
    except ValueError as err:
        raise problem(str(err)) from None
    return " ".join(w for w in (kind, base64.b64encode(blob).decode(), comment) if w)


SshPublicKey = Annotated[str, AfterValidator(_check)]


class UserSshKey(KledModel):
    key: SshPublicKey
    """One OpenSSH public key line (``ssh-ed25519 AAAA… comment``)."""


def unique_keys(value: list[UserSshKey]) -> list[UserSshKey]:
    seen: set[str] = set()
    for index, entry in enumerate(value):
        print_ = fingerprint(entry.key)
        if print_ in seen:
            raise problem(f"the key {print_} is listed twice", at=(index, "key"))
        seen.add(print_)
    return value


class HasSshKeys(KledModel):
    """Mixed into ``UserSpec``: ``spec.sshKeys``."""

    ssh_keys: list[UserSshKey] = []
    """The user's SSH public keys: what workspaces they may enter accept (``kled user key``)."""

    @field_validator("ssh_keys")
    @classmethod
    def _unique(cls, value: list[UserSshKey]) -> list[UserSshKey]:
        return unique_keys(value)


#: the roles that may enter every workspace of their team
WORKSPACE_ADMINS = ("owner", "admin")
#: the roles that may enter a workspace without an owner (the team's)
WORKSPACE_MEMBERS = ("owner", "admin", "member")


def user_keys(user: Mapping[str, Any]) -> list[str]:
    return [str(k["key"]) for k in (user.get("spec") or {}).get("sshKeys") or []]


def may_enter(role: str | None, username: str, workspace: Mapping[str, Any]) -> bool:
    """Whether a member of the workspace's team with ``role`` may enter it: its owner,
    the team's admins and owners; every member if it has no owner."""
    owner = (workspace.get("spec") or {}).get("owner")
    if role in WORKSPACE_ADMINS:
        return True
    if owner:
        return bool(username == owner)
    return role in WORKSPACE_MEMBERS


def workspace_keys(workspace: Mapping[str, Any], users: Iterable[Mapping[str, Any]]) -> list[str]:
    """The SSH keys of the users (of the workspace's team) allowed on it, each once."""
    keys: list[str] = []
    for user in users:
        role = (user.get("spec") or {}).get("role") or "member"
        name = str((user.get("metadata") or {}).get("name") or "")
        if may_enter(role, name, workspace):
            keys += [k for k in user_keys(user) if k not in keys]
    return keys
