"""Who may do what: roles per team, the server administrator, and team isolation.

Roles, from most to least: owner, admin, member, viewer. The server administrator (the
bootstrap token) manages teams and nodes and may act in any team. A user of one team gets
``NotFound`` for anything of another team — never ``Forbidden``, which would tell them it
exists. Every denial is logged with who asked and for what.
"""

from __future__ import annotations

import logging

from kled.admission.request import UserInfo
from kled.errors import Forbidden, NotFound
from kled.resources.registry import KindInfo, Scope

log = logging.getLogger(__name__)

ROLES = ("owner", "admin", "member", "viewer")
READ_VERBS = frozenset({"get", "list", "watch"})
#: kinds a member may write (ARCHITECTURE: apps, environments, workspaces, intercepts — and
#: what an environment is made of)
MEMBER_WRITABLE = frozenset(
    {"App", "Environment", "Workspace", "Intercept", "Config", "Secret", "ManagedService", "Device"}
)
ADMIN_ONLY = frozenset({"User", "Policy", "Cluster"})


def rank(role: str | None) -> int:
    """Higher is more powerful; unknown roles rank below viewer."""
    return len(ROLES) - ROLES.index(role) if role in ROLES else 0


def check_team(user: UserInfo, team: str, what: str) -> None:
    """A user sees only their own team; anything else does not exist for them."""
    if user.server_admin or user.team == team:
        return
    _deny(user, "see", what)
    raise NotFound(f"{what} not found")


def authorize(user: UserInfo, verb: str, info: KindInfo, team: str, what: str) -> None:
    """Raise NotFound/Forbidden unless ``user`` may ``verb`` the ``info`` kind in ``team``."""
    if user.server_admin:
        return
    if info.scope is Scope.SERVER:
        if verb in READ_VERBS:
            return
        _deny(user, verb, what)
        raise Forbidden(f"only the server administrator may {verb} {info.plural}")
    check_team(user, team, what)
    role = user.role
    if verb in READ_VERBS:
        if rank(role) >= rank("viewer"):
            return
    elif verb == "reveal":
        if rank(role) >= rank("admin"):
            return
    elif info.kind in ADMIN_ONLY or info.kind == "Token":
        # Tokens are checked more finely by the service (a user may manage their own).
        if rank(role) >= rank("admin"):
            return
    elif info.kind in MEMBER_WRITABLE and rank(role) >= rank("member"):
        return
    _deny(user, verb, what)
    raise Forbidden(f"role {role or 'none'} in team {team} may not {verb} {info.plural}")


def _deny(user: UserInfo, verb: str, what: str) -> None:
    log.warning(
        "denied user=%s team=%s role=%s verb=%s resource=%s",
        user.username,
        user.team or "-",
        user.role or ("server-admin" if user.server_admin else "-"),
        verb,
        what,
    )
