"""The ``kled`` CLI inside a workspace, logged in as the workspace's owner.

When a node's agent makes a workspace's container (or sandbox), it asks the control plane
for the workspace's token (``POST /api/v1/nodes/{node}/workspace-tokens/{team}/{name}``,
with the node's Message Office credentials, only for a workspace placed on that node). The
token is a credential of purpose ``workspace`` named after the workspace, for its owner
(``spec.owner``); asking again gives a new secret and the old one stops working, so only
the newest container's works. The agent puts it in the container's environment as
``KLED_TOKEN``, with ``KLED_SERVER`` (the URL the agent reached the API at) and
``KLED_TEAM``: the CLI reads all three.

A workspace token is a token of its owner while the workspace exists and its owner is that
user: it is refused once the workspace is deleted (revoked then, and looked up at every
use), once the owner changes, and once the user leaves the team. It acts with the owner's
role, no more. A workspace without an owner gets no token (it is the team's: nobody's
token would be right).

Because the token acts as the owner, who may write a workspace with an owner is limited:
its owner, or an admin or owner of the team whose role is not below the owner's (and the
server administrator). A member cannot name someone else the owner of a workspace whose
hooks they wrote, nor change a workspace someone else owns, so nobody's token runs
commands they did not accept.
"""

from __future__ import annotations

import contextlib
from typing import Any

from kled.admission.request import UserInfo
from kled.api import authz
from kled.errors import Forbidden, NotFound
from kled.store.credentials import WORKSPACE_PURPOSE, Credential, Credentials
from kled.store.objects import Key, Store


def owner_of(doc: dict[str, Any] | None) -> str | None:
    owner = ((doc or {}).get("spec") or {}).get("owner")
    return str(owner) if owner else None


async def check_owner_write(
    store: Store,
    user: UserInfo,
    key: Key,
    new: dict[str, Any] | None,
    current: dict[str, Any] | None,
    *,
    verb: str = "write",
) -> None:
    """Refuse a write of a workspace owned (before or after it) by someone else, unless
    ``user`` is an admin whose role is not below that owner's."""
    if user.server_admin:
        return
    for owner in {owner_of(new), owner_of(current)} - {None, user.username}:
        holder = await store.find(Key("User", key.team, "", str(owner)))
        role = None if holder is None else (holder.get("spec") or {}).get("role", "viewer")
        if authz.rank(user.role) >= authz.rank("admin") and authz.rank(role) <= authz.rank(
            user.role
        ):
            continue
        authz.deny(user, verb, f"workspace/{key.team}/{key.name}")
        raise Forbidden(
            f"workspace {key.name} (spec.owner {owner}): only {owner} and team admins at "
            f"their role or above may {verb} it"
        )


async def holds(store: Store, cred: Credential) -> bool:
    """Whether a workspace token still speaks for its user: the workspace exists, is
    not being deleted, and that user owns it."""
    doc = await store.find(Key("Workspace", cred.team, "", cred.name))
    if doc is None or (doc.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return owner_of(doc) == cred.username


async def issue(store: Store, credentials: Credentials, team: str, name: str) -> str | None:
    """A new token for the workspace's owner (the previous one stops working); None when
    it has no owner or its owner is not a user of the team."""
    doc = await store.find(Key("Workspace", team, "", name))
    if doc is None:
        raise NotFound(f"workspace {name} not found in team {team}")
    owner = owner_of(doc)
    if owner is None or await store.find(Key("User", team, "", owner)) is None:
        return None
    return await credentials.reissue(
        purpose=WORKSPACE_PURPOSE, team=team, name=name, username=owner
    )


async def revoke(credentials: Credentials, team: str, name: str) -> None:
    """The workspace is gone: its token goes with it."""
    with contextlib.suppress(NotFound):  # it never had one
        await credentials.revoke(WORKSPACE_PURPOSE, team, name)
