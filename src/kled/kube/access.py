"""Who is calling a cluster's API, and what their Kubernetes role lets them do.

Two kinds of bearer token are accepted: a kubeconfig token (credential purpose ``kube``,
named ``<cluster>:<user>:<id>``; an empty user is the server administrator), which works
for that one cluster only, and an ordinary
Kled API token of the team. The role comes from the cluster's ``spec.users`` at each
request (so removing a user takes effect at once); the team's owners and admins and the
server administrator are ``cluster-admin``. A user of another team, or with a token of
another cluster, is ``401``: the cluster does not exist for them.

Roles follow Kubernetes' default ClusterRoles: ``view`` reads everything but Secrets,
``edit`` writes namespaced kinds and reads the rest, ``cluster-admin`` does everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from kled.admission.request import UserInfo
from kled.api.service import Service
from kled.kube.served import READ_VERBS, Served
from kled.kube.status import KubeError, forbidden
from kled.store.credentials import ADMIN_USER
from kled.store.objects import Key

KUBE_PURPOSE = "kube"
ROLES = ("view", "edit", "cluster-admin")


@dataclass(frozen=True)
class Caller:
    user: UserInfo
    role: str | None  # None: a team member the cluster does not list

    @property
    def name(self) -> str:
        return self.user.username


def unauthorized() -> KubeError:
    return KubeError(401, "Unauthorized", "Unauthorized")


async def identify(
    svc: Service, team: str, cluster: str, spec: dict[str, Any], secret: str | None
) -> Caller:
    if not secret:
        raise unauthorized()
    cred = await svc.credentials.lookup(secret)
    if cred is None or not cred.usable():
        raise unauthorized()
    if cred.purpose == KUBE_PURPOSE:
        if cred.team != team or cred.name.split(":", 1)[0] != cluster:
            raise unauthorized()
        if cred.username == "":  # issued to the server administrator
            admin = UserInfo(username=ADMIN_USER, server_admin=True)
            return Caller(admin, "cluster-admin")
        member = await svc.store.find(Key("User", team, "", cred.username))
        if member is None:  # the user left the team: their kubeconfig goes with them
            raise unauthorized()
        role = (member.get("spec") or {}).get("role", "viewer")
        team_user = UserInfo(username=cred.username, team=team, role=role)
        return Caller(team_user, role_of(team_user, spec))
    user = await svc.authenticate(secret)
    if user is None:
        raise unauthorized()
    if not user.server_admin and user.team != team:
        raise unauthorized()
    return Caller(user, role_of(user, spec))


def role_of(user: UserInfo, spec: dict[str, Any]) -> str | None:
    if user.server_admin or user.role in ("owner", "admin"):
        return "cluster-admin"
    for entry in spec.get("users") or []:
        if entry.get("name") == user.username:
            return str(entry.get("role", "view"))
    return None


def allowed(role: str | None, verb: str, served: Served) -> bool:
    if role == "cluster-admin":
        return True
    if role == "edit":
        # namespaced kinds clients write; not the server's own views (ReplicaSet,
        # ResourceQuota), refused as Kubernetes' edit role refuses them: 403
        return verb in READ_VERBS or (
            served.namespaced and served.kind != "Event" and served.writable
        )
    if role == "view":
        return verb in READ_VERBS and served.kind != "Secret"
    return False


def authorize(caller: Caller, verb: str, served: Served, namespace: str | None) -> None:
    if not allowed(caller.role, verb, served):
        raise forbidden(caller.name, verb, served.plural, served.group, namespace)
