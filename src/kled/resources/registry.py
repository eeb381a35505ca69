"""The table of resource kinds: names, plurals, aliases and scope.

Every layer that needs to turn a word a user typed (``apps``, ``app``, ``env``) or a URL
segment into a kind asks here, so there is one list of kinds in the whole code base.
The schemas of the kinds live in ``kled.resources.kinds``; this module stays free of
pydantic so that the store and the CLI can import it cheaply.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from kled.errors import InvalidInput

API_VERSION = "kled.io/v1"
#: annotations a client writes to ask for a restart (``kled app restart``, ``ws up --recreate``)
#: or a fresh start of a workspace's files (``ws up --reset``); a new value asks again
RESTARTED_AT = "kled.io/restartedAt"
RESET_AT = "kled.io/resetAt"


class Scope(StrEnum):
    """Where a kind lives: server-wide, in a team, or in a team's environment."""

    SERVER = "server"
    TEAM = "team"
    ENVIRONMENT = "environment"


@dataclass(frozen=True)
class KindInfo:
    kind: str
    plural: str
    scope: Scope
    aliases: tuple[str, ...] = ()
    #: kinds whose desired state is top-level ``data`` rather than ``spec``
    data_kind: bool = False

    @property
    def singular(self) -> str:
        return self.kind.lower()


KINDS: tuple[KindInfo, ...] = (
    KindInfo("Team", "teams", Scope.SERVER),
    KindInfo("Node", "nodes", Scope.SERVER, ("no",)),
    KindInfo("User", "users", Scope.TEAM),
    KindInfo("Token", "tokens", Scope.TEAM),
    KindInfo("Device", "devices", Scope.TEAM, ("dev",)),
    KindInfo("Environment", "environments", Scope.TEAM, ("env", "envs")),
    KindInfo("Workspace", "workspaces", Scope.TEAM, ("ws",)),
    KindInfo("Policy", "policies", Scope.TEAM, ("pol",)),
    KindInfo("Cluster", "clusters", Scope.TEAM),
    KindInfo("GitSource", "gitsources", Scope.TEAM, ("gs", "gitsource")),
    KindInfo("App", "apps", Scope.ENVIRONMENT),
    KindInfo("ManagedService", "managedservices", Scope.ENVIRONMENT, ("ms", "msvc")),
    KindInfo("Config", "configs", Scope.ENVIRONMENT, ("cfg", "cm", "configmap"), data_kind=True),
    KindInfo("Secret", "secrets", Scope.ENVIRONMENT, (), data_kind=True),
    KindInfo("Intercept", "intercepts", Scope.ENVIRONMENT, ("icpt",)),
    KindInfo("Job", "jobs", Scope.ENVIRONMENT, ("cronjob", "cronjobs")),
    KindInfo("KubeObject", "kubeobjects", Scope.ENVIRONMENT),
    KindInfo("ServiceTemplate", "servicetemplates", Scope.SERVER, ("st", "template")),
)

_BY_KIND = {k.kind: k for k in KINDS}
_BY_WORD: dict[str, KindInfo] = {}
for _k in KINDS:
    for _word in (_k.kind.lower(), _k.plural, *_k.aliases):
        _BY_WORD[_word] = _k


def kind_info(kind: str) -> KindInfo:
    """The kind named exactly (``App``), raising InvalidInput for an unknown one."""
    info = _BY_KIND.get(kind)
    if info is None:
        raise InvalidInput(f"unknown kind {kind!r} (known: {', '.join(_BY_KIND)})", field="kind")
    return info


def resolve_kind(word: str) -> KindInfo:
    """The kind a user or URL means by ``word``: ``apps``, ``app``, ``App``, ``env``."""
    info = _BY_KIND.get(word) or _BY_WORD.get(word.lower())
    if info is None:
        known = ", ".join(k.plural for k in KINDS)
        raise InvalidInput(f"unknown resource type {word!r} (known: {known})", field="kind")
    return info


def by_plural(plural: str) -> KindInfo:
    for info in KINDS:
        if info.plural == plural:
            return info
    raise InvalidInput(f"unknown resource type {plural!r}", field="kind")
