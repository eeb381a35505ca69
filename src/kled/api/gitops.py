"""GitOps over HTTP: push webhooks, a sync on demand, and the diff of stored against git.

The webhook (``POST /api/v1/teams/T/gitsources/NAME/webhook``) takes the push payloads of
GitHub, Gitea and GitLab. It carries no Kled token: it is signed with the source's own
secret (``spec.webhookSecret``) — an HMAC-SHA256 of the body for GitHub
(``X-Hub-Signature-256``) and Gitea (``X-Gitea-Signature``), the secret itself for GitLab
(``X-Gitlab-Token``) — and any failure, an unknown source included, is the same 401, so
that it tells nothing to someone without the secret. A push of another ref is accepted
and ignored; a push of the source's ref asks the controller for a sync at once and
answers 202 before the sync runs.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from kled.admission.request import UserInfo
from kled.api import authz
from kled.api.gitsync import GitOps
from kled.api.rest import User
from kled.control.gitrepo import GitError
from kled.errors import Conflict, InvalidInput, KledError, Unauthorized, Unavailable
from kled.resources import bounds
from kled.resources.registry import kind_info
from kled.resources.specs import is_git_ref
from kled.store.objects import Key

router = APIRouter(prefix="/api/v1")

_PATH = "/teams/{team}/gitsources/{name}"
_ACCEPTED = {
    "type": "object",
    "properties": {
        "accepted": {"type": "boolean"},
        "ref": {"type": "string"},
        "commit": {"type": "string"},
        "reason": {"type": "string"},
    },
}
_STATUS = {"type": "object", "description": "the GitSource's status after the sync"}
_SYNC_BODY = {
    "type": "object",
    "properties": {"ref": {"type": "string", "description": "sync this ref once"}},
    "additionalProperties": False,
}
_DIFF = {"type": "object", "properties": {"diff": {"type": "string"}}}


def _json(code: int, schema: dict[str, Any], why: str) -> dict[int | str, dict[str, Any]]:
    return {code: {"description": why, "content": {"application/json": {"schema": schema}}}}


def gitops_of(request: Request) -> GitOps:
    gitops = getattr(request.app.state, "gitops", None)
    if not isinstance(gitops, GitOps):
        raise Unavailable("GitOps is not running on this server")
    return gitops


def _refused() -> Unauthorized:
    return Unauthorized("webhook signature missing or wrong")


def signed(body: bytes, secret: str, headers: dict[str, str]) -> bool:
    """Whether ``headers`` carry a valid signature of ``body`` by ``secret``."""
    gitlab = headers.get("x-gitlab-token")
    if gitlab is not None:
        return hmac.compare_digest(gitlab.encode(), secret.encode())
    mac = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    github = headers.get("x-hub-signature-256")
    if github is not None:
        return hmac.compare_digest(github.encode(), f"sha256={mac}".encode())
    gitea = headers.get("x-gitea-signature") or headers.get("x-gogs-signature")
    if gitea is not None:
        return hmac.compare_digest(gitea.encode(), mac.encode())
    return False


def pushed_ref(payload: Any) -> tuple[str, str]:
    """(ref, commit) of a push payload, the same field names in all three forges."""
    if not isinstance(payload, dict) or not isinstance(payload.get("ref"), str):
        raise InvalidInput("a push payload needs a ref", field="ref")
    after = payload.get("after") or payload.get("checkout_sha") or ""
    return str(payload["ref"]), str(after)


def ref_matches(pushed: str, wanted: str) -> bool:
    """``refs/heads/main`` matches ``main``; ``refs/tags/v1`` matches ``v1``."""
    return pushed == wanted or pushed in (f"refs/heads/{wanted}", f"refs/tags/{wanted}")


@router.post(
    _PATH + "/webhook",
    status_code=202,
    summary="A push webhook (GitHub, Gitea, GitLab) for a GitSource, signed with its secret",
    responses=_json(202, _ACCEPTED, "the push is accepted (a sync is asked for) or ignored"),
    openapi_extra={
        "requestBody": {"required": True, "content": {"application/json": {"schema": {}}}}
    },
)
async def webhook(request: Request, team: str, name: str) -> Response:
    gitops = gitops_of(request)
    body = await request.body()
    headers = {k.lower(): v for k, v in request.headers.items()}
    try:
        doc = await gitops.store.find(Key("GitSource", team, "", name))
    except KledError:
        raise _refused() from None
    spec = (doc or {}).get("spec") or {}
    if doc is None or not spec.get("webhookSecret"):
        raise _refused()
    try:
        secret = await gitops.secret_value(team, spec["webhookSecret"], ("secret", "token"))
    except KledError:
        raise _refused() from None
    if not signed(body, secret, headers):
        raise _refused()
    event = (
        headers.get("x-github-event")
        or headers.get("x-gitea-event")
        or headers.get("x-gitlab-event")
        or "push"
    )
    if event == "ping":
        return JSONResponse({"accepted": False, "reason": "ping"}, status_code=202)
    try:
        payload = json.loads(body or b"null")
    except ValueError:
        raise InvalidInput("the body must be a JSON push payload", field="body") from None
    pushed, commit = pushed_ref(payload)
    wanted = str(spec.get("ref") or "main")
    if not ref_matches(pushed, wanted):
        answer = {"accepted": False, "ref": pushed, "reason": f"the source follows {wanted}"}
        return JSONResponse(answer, status_code=202)
    if spec.get("suspend"):
        answer = {"accepted": False, "ref": pushed, "reason": "the source is suspended"}
        return JSONResponse(answer, status_code=202)
    gitops.poke(team, name)
    return JSONResponse({"accepted": True, "ref": pushed, "commit": commit}, status_code=202)


@router.post(
    _PATH + "/sync",
    summary="Sync a GitSource now (at its ref, or once at another); answers its status",
    responses=_json(200, _STATUS, "the source's status after the sync"),
    openapi_extra={
        "requestBody": {
            "required": False,
            "content": {"application/json": {"schema": _SYNC_BODY}},
        }
    },
)
async def sync(request: Request, team: str, name: str, user: UserInfo = User) -> Response:
    authz.authorize(user, "update", kind_info("GitSource"), team, f"gitsource/{team}/{name}")
    body = bounds.loads(await request.body() or b"{}")
    if not isinstance(body, dict):
        raise InvalidInput('the body must be a JSON object like {"ref": "main"}')
    ref = body.get("ref")
    if ref is not None and not isinstance(ref, str):
        raise InvalidInput("must be a string", field="ref")
    if ref is not None and not is_git_ref(ref):
        raise InvalidInput(f"{ref!r} is not a branch, tag or commit name", field="ref")
    # a failed fetch or a denied commit is the source's status, not an error of the call
    return JSONResponse(await gitops_of(request).sync(team, name, ref))


@router.get(
    _PATH + "/diff",
    summary="A unified diff of the stored resources against the source's last fetched commit",
    responses=_json(200, _DIFF, "empty when the store is what git says"),
)
async def diff(request: Request, team: str, name: str, user: UserInfo = User) -> Response:
    authz.authorize(user, "get", kind_info("GitSource"), team, f"gitsource/{team}/{name}")
    try:
        text = await gitops_of(request).diff(team, name)
    except GitError as exc:
        raise Conflict(f"gitsource/{team}/{name}: {exc.message}") from None
    return JSONResponse({"diff": text})
