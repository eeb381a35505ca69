"""Who may do what: roles per team, the server administrator, and team isolation.

Roles, from most to least: owner, admin, member, viewer. The server administrator (the
bootstrap token) manages teams and nodes and may act in any team. A user of one team gets
``NotFound`` for anything of another team — never ``Forbidden``, which would tell them it
exists. Every denial is logged, at INFO on one line, with who asked and for what: a
denial is the system working, not an error of the server.

Roles are also a ceiling: nobody but the server administrator acts on a user whose role is
above their own — grants it, changes or deletes that user, or issues or touches that user's
tokens (``check_ceiling``).
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
ADMIN_ONLY = frozenset({"User", "Policy", "Cluster", "GitSource"})


def rank(role: str | None) -> int:
    """Higher is more powerful; unknown roles rank below viewer."""
    return len(ROLES) - ROLES.index(role) if role in ROLES else 0


def check_team(user: UserInfo, team: str, what: str) -> None:
    """A user sees only their own team; anything else does not exist for them."""
    if user.server_admin or user.team == team:
        return
    deny(user, "see", what)
    raise NotFound(f"{what} not found")


def authorize(user: UserInfo, verb: str, info: KindInfo, team: str, what: str) -> None:
    """Raise NotFound/Forbidden unless ``user`` may ``verb`` the ``info`` kind in ``team``."""
    if user.server_admin:
        return
    if info.scope is Scope.SERVER:
        if verb in READ_VERBS:
            return
        deny(user, verb, what)
        raise Forbidden(f"only the server administrator may {verb} {info.plural}")
    check_team(user, team, what)
    role = user.role
    if verb in READ_VERBS:
        if rank(role) >= rank("viewer"):
            return
    elif verb == "reveal":
        if rank(role) >= rank("admin"):
            return
    elif verb == "update-status":
        pass  # status is the system's: controllers and agents (the server administrator)
    elif info.kind in ADMIN_ONLY or info.kind == "Token":
        # Tokens are checked more finely by the service (a user may manage their own).
        if rank(role) >= rank("admin"):
            return
    elif info.kind in MEMBER_WRITABLE and rank(role) >= rank("member"):
        return
    deny(user, verb, what)
    raise Forbidden(f"role {role or 'none'} in team {team} may not {verb} {info.plural}")


def check_ceiling(user: UserInfo, role: str | None, verb: str, what: str) -> None:
    """Refuse to ``verb`` ``what`` (a user, or their tokens) whose ``role`` is above ``user``'s."""
    if user.server_admin or rank(role) <= rank(user.role):
        return
    deny(user, verb, what)
    raise Forbidden(
        f"role {user.role or 'none'} may not {verb} {what}: its role {role} is above yours"
    )


def check_grant(user: UserInfo, role: str | None, what: str) -> None:
    """Refuse to give ``what`` (a user) a ``role`` above ``user``'s own."""
    if user.server_admin or rank(role) <= rank(user.role):
        return
    deny(user, f"grant-{role}", what)
    raise Forbidden(f"role {user.role or 'none'} may not grant the role {role}, above its own")


def deny(user: UserInfo, verb: str, what: str) -> None:
    """Log a refusal: one line at INFO (a denial is an answer, not a fault of the server)."""
    log.info(
        "denied user=%s team=%s role=%s verb=%s resource=%s",
        user.username,
        user.team or "-",
        user.role or ("server-admin" if user.server_admin else "-"),
        verb,
        what,
    )
