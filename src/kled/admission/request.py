"""What an admission step sees of a write, and what it may answer.

The API builds one ``AdmissionRequest`` per write; each hook of the chain answers with a
``HookResult``. Kept as plain dataclasses so that hooks (schema checks, kPolicy) are pure
functions of their input and easy to test.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from kled.admission.kube import KubeRequest


class Operation(StrEnum):
    CREATE = "CREATE"
    UPDATE = "UPDATE"
    DELETE = "DELETE"


@dataclass(frozen=True)
class UserInfo:
    """Who is asking. ``server_admin`` is the server's administrator (bootstrap token)."""

    username: str
    team: str | None = None
    role: str | None = None  # owner | admin | member | viewer, in ``team``
    server_admin: bool = False
    groups: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        groups = list(self.groups)
        if self.server_admin:
            groups.append("kled:server-admins")
        if self.team and self.role:
            groups.append(f"kled:team:{self.team}:{self.role}")
        return {"username": self.username, "uid": self.username, "groups": groups}


@dataclass
class AdmissionRequest:
    operation: Operation
    kind: str
    name: str
    team: str | None
    environment: str | None
    object: dict[str, Any] | None
    old_object: dict[str, Any] | None
    user: UserInfo
    dry_run: bool = False
    uid: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: a Kled Cluster's write: the Kubernetes object beside its ``KubeObject`` document
    kube: KubeRequest | None = None


@dataclass
class HookResult:
    """A hook's answer. ``object`` replaces the request's object when set (mutation)."""

    allowed: bool = True
    message: str = ""
    reason: str = ""
    code: int = 403
    policy: str | None = None
    object: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
