"""The service layer: every read and write of resources, shared by REST and GraphQL.

One place decides, for each request: who is asking (``UserInfo``), whether they may
(``authz``), whether the object is acceptable (the admission chain), and what the store
does. REST routes and GraphQL resolvers are thin translations onto these methods, so the
two APIs cannot drift apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from kled.admission.chain import AdmissionChain
from kled.admission.request import AdmissionRequest, Operation, UserInfo
from kled.api import authz, wstokens
from kled.control.desired import MANAGED_BY
from kled.control.ipam import Ipam
from kled.control.managed import clone_annotations
from kled.control.nodes import drain
from kled.errors import Conflict, Forbidden, InvalidInput, NotFound
from kled.resources import bounds, clusterservices
from kled.resources.fields import MAX_DURATION_SECONDS
from kled.resources.registry import KindInfo, Scope, kind_info
from kled.store.cipher import redact
from kled.store.credentials import ADMIN_USER, WORKSPACE_PURPOSE, Credential, Credentials
from kled.store.objects import Event, Invariant, Key, Page, Store, Written

log = logging.getLogger(__name__)

LabelMatcher = Callable[[dict[str, str]], bool]
#: kinds copied by ``clone_environment``
CLONED_KINDS = ("App", "Config", "Secret", "ManagedService")
WATCH_POLL_SECONDS = 1.0
AUTH_CACHE_SECONDS = 2.0
AUTH_CACHE_SIZE = 10_000


@dataclass
class Outcome:
    """A write's result as the API reports it."""

    object: dict[str, Any]
    result: str  # created | configured | unchanged | deleted | deleting
    warnings: list[str] = field(default_factory=list)
    token: str | None = None  # a new Token's secret, shown once


class Service:
    def __init__(self, store: Store, credentials: Credentials, chain: AdmissionChain) -> None:
        self.store = store
        self.credentials = credentials
        self.chain = chain
        self._auth_cache: dict[str, tuple[float, UserInfo | None]] = {}
        self._auth_revision = 0  # the watch cache's revision the answers are checked up to
        self._user_locks: dict[str, asyncio.Lock] = {}

    # ---- identity --------------------------------------------------------------------

    async def authenticate(self, secret: str | None) -> UserInfo | None:
        """The user a bearer token speaks for, or None for an unknown/expired/revoked one.

        Answers are remembered for ``AUTH_CACHE_SECONDS``: a token revoked through this
        process stops at once (the cache is cleared), through another replica once its event
        reaches this one's watch cache (without one, within that time).
        """
        if not secret:
            return None
        self._forget_on_credential_events()
        now = time.monotonic()
        cached = self._auth_cache.get(secret)
        if cached is not None and cached[0] > now:
            return cached[1]
        user = await self._authenticate(secret)
        if len(self._auth_cache) > AUTH_CACHE_SIZE:
            self._auth_cache.clear()
        self._auth_cache[secret] = (now + AUTH_CACHE_SECONDS, user)
        return user

    def forget_credentials(self) -> None:
        self._auth_cache.clear()

    def _forget_on_credential_events(self) -> None:
        """Forget every remembered answer once a Token or User changed, on any replica.

        The watch cache holds every replica's events as soon as they reach this one (at
        once through ``NOTIFY`` on PostgreSQL): a token revoked elsewhere is refused here
        from its revocation's event on, not when its remembered answer runs out.
        """
        cache = self.store.cache
        if cache is None or cache.revision == self._auth_revision:
            return
        seen, self._auth_revision = self._auth_revision, cache.revision
        events = cache.events_after(seen, cache.revision - seen) if seen else None
        if events is None or any(e.kind in ("Token", "User", "Workspace") for e in events):
            self._auth_cache.clear()

    async def _authenticate(self, secret: str) -> UserInfo | None:
        cred = await self.credentials.lookup(secret)
        if cred is None or cred.purpose not in ("api", WORKSPACE_PURPOSE) or not cred.usable():
            return None
        if cred.purpose == WORKSPACE_PURPOSE and not await wstokens.holds(self.store, cred):
            return None  # its workspace is gone, or owned by someone else now
        if not cred.team:
            return UserInfo(username=cred.username, server_admin=True)
        user = await self.store.find(Key("User", cred.team, "", cred.username))
        if user is None:
            return None
        role = (user.get("spec") or {}).get("role", "viewer")
        return UserInfo(username=cred.username, team=cred.team, role=role)

    # ---- reading ---------------------------------------------------------------------

    async def get(self, user: UserInfo, key: Key, *, reveal: bool = False) -> dict[str, Any]:
        info = kind_info(key.kind)
        authz.authorize(user, "get", info, key.team, str(key))
        if reveal:
            authz.authorize(user, "reveal", info, key.team, str(key))
        doc = await self.store.get(key)
        self._check_visible(user, info, doc, str(key))
        if key.kind == "Token":
            [doc] = await self._token_truth([doc])
        return doc if reveal else self.present(doc)

    async def list(
        self,
        user: UserInfo,
        info: KindInfo,
        team: str | None,
        environment: str | None,
        *,
        matches: LabelMatcher | None = None,
        limit: int = 0,
        continue_token: str | None = None,
        as_text: bool = False,
    ) -> Page:
        """``as_text``: the items as JSON text where the store has it (``Page.texts``) and
        they are shown as stored (not Secrets, Tokens or Teams)."""
        scope_team = team or ""
        what = f"{info.plural} in team {team}" if team else info.plural
        authz.authorize(user, "list", info, scope_team, what)
        if team and environment and info.scope is Scope.ENVIRONMENT:
            await self._require(Key("Environment", team, "", environment), user)
        store_team = None if info.scope is Scope.SERVER else team
        page = await self.store.list(
            info.kind,
            store_team,
            environment if info.scope is Scope.ENVIRONMENT else None,
            matches=matches,
            limit=limit,
            continue_token=continue_token,
            as_text=as_text and info.kind not in ("Secret", "Token", "Team"),
        )
        if page.texts is not None:
            return page  # every one visible and shown as stored: no Secret, Token or Team
        page.items = [self.present(d) for d in page.items if self._visible(user, info, d)]
        if info.kind == "Token":
            page.items = [*await self._token_truth(page.items)]
        return page

    async def watch(
        self,
        user: UserInfo,
        info: KindInfo,
        team: str | None,
        environment: str | None,
        *,
        since: int | None,
        matches: LabelMatcher | None = None,
    ) -> AsyncIterator[Event]:
        """Every change after ``since`` (or a snapshot of ADDED then changes), in order.

        Authorisation happens here, before the first event, so a refusal is an ordinary
        error response rather than a broken stream.
        """
        page = await self.list(user, info, team, environment, matches=matches)
        if since is not None:
            await self.store.check_since(since)  # Gone (410) when compacted: list again
        return self._follow(user, info, team, environment, since, matches, page)

    async def _follow(
        self,
        user: UserInfo,
        info: KindInfo,
        team: str | None,
        environment: str | None,
        since: int | None,
        matches: LabelMatcher | None,
        page: Page,
    ) -> AsyncIterator[Event]:
        last = since
        if last is None:
            last = page.revision
            for doc in page.items:
                meta = doc["metadata"]
                yield Event(
                    int(meta["resourceVersion"]),
                    "ADDED",
                    info.kind,
                    meta.get("team") or "",
                    meta.get("environment") or "",
                    meta["name"],
                    doc,
                )
        while True:
            batch = await self.store.events_after(last)
            for event in batch:
                last = event.seq
                if self._event_matches(user, event, info, team, environment, matches):
                    yield event
            if len(batch) < 500:
                await self.store.wait_for_change(WATCH_POLL_SECONDS)

    def _event_matches(
        self,
        user: UserInfo,
        event: Event,
        info: KindInfo,
        team: str | None,
        environment: str | None,
        matches: LabelMatcher | None,
    ) -> bool:
        if event.kind != info.kind:
            return False
        if info.scope is not Scope.SERVER and team is not None and event.team != team:
            return False
        if environment is not None and info.scope is Scope.ENVIRONMENT:
            if event.environment != environment:
                return False
        if matches is not None and not matches(event.object["metadata"].get("labels") or {}):
            return False
        return self._visible(user, info, event.object)

    # ---- writing ---------------------------------------------------------------------

    async def create(
        self, user: UserInfo, doc: dict[str, Any], *, dry_run: bool = False
    ) -> Outcome:
        doc = self._prepare(doc)
        key = Key.of(doc)
        info = kind_info(key.kind)
        authz.authorize(user, "create", info, key.team, str(key))
        await self._check_parents(user, key)
        admitted = await self.chain.admit(
            self._request(Operation.CREATE, key, doc, None, user, dry_run)
        )
        obj = admitted.object or doc
        obj, token_secret = await self._before_create(user, key, obj, dry_run)
        created = await self.store.create(obj, dry_run=dry_run)
        if token_secret is not None:
            created = copy.deepcopy(created)
        return Outcome(self.present(created), "created", admitted.warnings, token_secret)

    async def update(
        self,
        user: UserInfo,
        doc: dict[str, Any],
        *,
        dry_run: bool = False,
        expected_version: str | None = None,
        current: dict[str, Any] | None = None,
    ) -> Outcome:
        doc = self._prepare(doc)
        key = Key.of(doc)
        info = kind_info(key.kind)
        authz.authorize(user, "update", info, key.team, str(key))
        if current is None:
            current = await self.store.find(key)
        if current is None:
            raise NotFound(f"{key} not found")
        self._check_visible(user, info, current, str(key), write=True)
        version = expected_version or (doc.get("metadata") or {}).get("resourceVersion")
        admitted = await self.chain.admit(
            self._request(Operation.UPDATE, key, doc, current, user, dry_run)
        )
        obj = admitted.object or doc
        async with self._users_of(key):
            invariant = await self._before_update(user, key, current, obj)
            written = await self.store.update(
                obj, expected_version=version, dry_run=dry_run, invariant=invariant
            )
        await self._after_update(key, current, written, dry_run)
        return Outcome(self.present(written.object), written.result, admitted.warnings)

    async def apply(self, user: UserInfo, doc: dict[str, Any], *, dry_run: bool = False) -> Outcome:
        """Create, or update what exists (without a resourceVersion check unless given)."""
        prepared = self._prepare(doc)
        key = Key.of(prepared)
        info = kind_info(key.kind)
        authz.authorize(user, "get", info, key.team, str(key))
        current = await self.store.find(key)
        if current is None:
            try:
                return await self.create(user, prepared, dry_run=dry_run)
            except Conflict:
                pass  # created meanwhile by someone else: update it instead
        return await self.update(user, prepared, dry_run=dry_run, current=current)

    async def update_status(
        self, user: UserInfo, key: Key, status: dict[str, Any], expected_version: str | None
    ) -> dict[str, Any]:
        """Replace ``status``: the system's part, written by controllers and agents.

        Through the API only the server administrator may (as ``*/status`` is a
        subresource of its own in Kubernetes); a member could otherwise claim that an app
        runs, or store a status no reader can take.
        """
        info = kind_info(key.kind)
        authz.authorize(user, "update-status", info, key.team, str(key))
        bounds.check(status, prefix="status")
        return self.present(
            await self.store.update_status(key, status, expected_version=expected_version)
        )

    async def delete(
        self,
        user: UserInfo,
        key: Key,
        *,
        dry_run: bool = False,
        expected_version: str | None = None,
    ) -> Outcome:
        info = kind_info(key.kind)
        authz.authorize(user, "delete", info, key.team, str(key))
        current = await self.store.find(key)
        if current is None and str(key) in self.store.problems and not dry_run:
            # stored outside the bounds by an older version: deleting is all it allows
            purged = await self.store.delete(key)
            return Outcome(purged.object, purged.result)
        if current is None:
            raise NotFound(f"{key} not found")
        self._check_visible(user, info, current, str(key), write=True)
        admitted = await self.chain.admit(
            self._request(Operation.DELETE, key, None, current, user, dry_run)
        )
        async with self._users_of(key):
            invariant = await self._before_delete(user, key, dry_run)
            written: Written = await self.store.delete(
                key, expected_version=expected_version, dry_run=dry_run, invariant=invariant
            )
        if not dry_run and key.kind == "Token":
            await self._revoke_quietly(key.team, key.name)
        elif not dry_run and key.kind == "User":
            # after the write, which may still be refused (the last owner); until then the
            # user's tokens work, and after it they name no user, which refuses them anyway
            await self.credentials.revoke_user(key.team, key.name)
            await self._mark_revoked(key.team, key.name)
            self.forget_credentials()
        elif not dry_run and key.kind == "Workspace":
            await wstokens.revoke(self.credentials, key.team, key.name)
            self.forget_credentials()
        return Outcome(self.present(written.object), written.result, admitted.warnings)

    async def clone_environment(
        self, user: UserInfo, team: str, source: str, target: str, *, with_data: bool = False
    ) -> Outcome:
        """A new environment with copies of the source's apps, configs and secrets.

        Managed services come as new services of the same template with their own data
        and credentials: empty, or (``with_data``) loaded from the source's latest backup."""
        src = await self.get(user, Key("Environment", team, "", source))
        # Every service to clone with data has a backup, checked before anything is stored.
        services = (await self.store.list("ManagedService", team, source)).items
        cloned_annotations = {
            d["metadata"]["name"]: clone_annotations(d, with_data=with_data) for d in services
        }
        env = {
            "apiVersion": src["apiVersion"],
            "kind": "Environment",
            "metadata": {
                "name": target,
                "team": team,
                "labels": copy.deepcopy(src["metadata"].get("labels") or {}),
            },
            "spec": {**copy.deepcopy(src.get("spec") or {}), "clonedFrom": source},
        }
        outcome = await self.create(user, env)
        for kind in CLONED_KINDS:
            page = await self.store.list(kind, team, source)
            for doc in page.items:
                if (doc["metadata"].get("labels") or {}).get(MANAGED_BY):
                    # A managed service's server app and credentials: its controller makes
                    # new ones for the clone (own data, own password), never shared ones.
                    continue
                copy_doc = {k: copy.deepcopy(v) for k, v in doc.items() if k != "status"}
                meta = doc["metadata"]
                copy_doc["metadata"] = {
                    "name": meta["name"],
                    "team": team,
                    "environment": target,
                    "labels": copy.deepcopy(meta.get("labels") or {}),
                    "annotations": copy.deepcopy(meta.get("annotations") or {}),
                }
                if kind == "ManagedService":
                    copy_doc["metadata"]["annotations"] = cloned_annotations[meta["name"]]
                result = await self.create(user, copy_doc)
                outcome.warnings.extend(result.warnings)
        return outcome

    # ---- presentation ----------------------------------------------------------------

    @staticmethod
    def present(doc: dict[str, Any]) -> dict[str, Any]:
        """What the API shows of a stored document: secrets without their values."""
        return redact(doc) if doc.get("kind") == "Secret" else doc

    # ---- internals -------------------------------------------------------------------

    def _prepare(self, doc: dict[str, Any]) -> dict[str, Any]:
        if not isinstance(doc, dict):
            raise InvalidInput("a resource must be a JSON object")
        if "kind" not in doc:
            raise InvalidInput("kind is required", field="kind")
        kind_info(str(doc["kind"]))
        bounds.check(doc)
        # status is the system's: what a user sends (say, a document from ``get -o yaml``)
        # is dropped, as Kubernetes does on create and update.
        return {k: copy.deepcopy(v) for k, v in doc.items() if k != "status"}

    def _request(
        self,
        op: Operation,
        key: Key,
        obj: dict[str, Any] | None,
        old: dict[str, Any] | None,
        user: UserInfo,
        dry_run: bool,
    ) -> AdmissionRequest:
        return AdmissionRequest(
            operation=op,
            kind=key.kind,
            name=key.name,
            team=key.team or None,
            environment=key.environment or None,
            object=obj,
            old_object=old,
            user=user,
            dry_run=dry_run,
        )

    async def _require(self, key: Key, user: UserInfo) -> None:
        if await self.store.find(key) is None:
            if key.kind == "Team":
                raise NotFound(f"team {key.name} not found")
            raise NotFound(f"environment {key.name} not found in team {key.team}")

    async def _check_parents(self, user: UserInfo, key: Key) -> None:
        if key.team:
            await self._require(Key("Team", "", "", key.team), user)
        if key.environment:
            await self._require(Key("Environment", key.team, "", key.environment), user)

    def _visible(self, user: UserInfo, info: KindInfo, doc: dict[str, Any]) -> bool:
        if user.server_admin:
            return True
        if info.kind == "Team":
            return bool(doc["metadata"]["name"] == user.team)
        if info.kind == "Token" and authz.rank(user.role) < authz.rank("admin"):
            return bool((doc.get("spec") or {}).get("user") == user.username)
        return True

    def _check_visible(
        self, user: UserInfo, info: KindInfo, doc: dict[str, Any], what: str, write: bool = False
    ) -> None:
        if not self._visible(user, info, doc):
            raise NotFound(f"{what} not found")
        if write and info.kind == "Team" and not user.server_admin:
            raise Forbidden("only the server administrator may change teams")

    async def _before_create(
        self, user: UserInfo, key: Key, obj: dict[str, Any], dry_run: bool
    ) -> tuple[dict[str, Any], str | None]:
        if key.kind == "User":
            authz.check_grant(user, (obj.get("spec") or {}).get("role"), f"user {key.name}")
        if key.kind == "Workspace":
            await wstokens.check_owner_write(self.store, user, key, obj, None)
        if key.kind != "Token":
            return obj, None
        spec = obj.setdefault("spec", {})
        target = spec.get("user") or user.username
        spec["user"] = target
        if target != user.username and authz.rank(user.role) < authz.rank("admin"):
            if not user.server_admin:
                raise Forbidden("only an admin may create tokens for other users")
        holder = await self.store.find(Key("User", key.team, "", target))
        if holder is None:
            raise InvalidInput(f"user {target!r} not found in team {key.team}", field="spec.user")
        # A token acts with its user's role: issuing one for a higher role would be a grant.
        authz.check_ceiling(user, _role(holder), "issue tokens for", f"user {target}")
        if spec.get("revoked"):
            raise InvalidInput("a new token cannot be revoked already", field="spec.revoked")
        expires = _expiry(spec)
        if expires is not None:
            spec["expiresAt"] = expires.isoformat().replace("+00:00", "Z")
        spec.pop("ttl", None)
        if dry_run:
            return obj, None
        secret = await self.credentials.issue(
            purpose="api", team=key.team, name=key.name, username=target, expires_at=expires
        )
        return obj, secret

    async def _before_update(
        self, user: UserInfo, key: Key, current: dict[str, Any], obj: dict[str, Any]
    ) -> Invariant | None:
        if key.kind == "User":
            old_role = _role(current)
            new_role = _role(obj)
            authz.check_ceiling(user, old_role, "change", f"user {key.name}")
            authz.check_grant(user, new_role, f"user {key.name}")
            if old_role == "owner" and new_role != "owner":
                await self._keep_an_owner(key, "demote")
                return _an_owner_remains(key, "demote")
        elif key.kind == "Token":
            await self._check_token_holder(user, key, current)
            _keep_token_facts(current, obj)
        elif key.kind == "Workspace":
            await wstokens.check_owner_write(self.store, user, key, obj, current)
        return None

    async def _after_update(
        self, key: Key, current: dict[str, Any], written: Written, dry_run: bool
    ) -> None:
        if dry_run or key.kind not in ("Token", "User"):
            return
        self.forget_credentials()  # a role or a token changed: ask the database again
        if (written.object.get("spec") or {}).get("revoked"):
            await self._revoke_quietly(key.team, key.name)

    async def _before_delete(self, user: UserInfo, key: Key, dry_run: bool) -> Invariant | None:
        """Deleting a container deletes what it holds, as a namespace does in Kubernetes."""
        invariant = None
        if key.kind == "User":
            role = _role(await self.store.find(key))
            authz.check_ceiling(user, role, "delete", f"user {key.name}")
            if role == "owner":
                await self._keep_an_owner(key, "delete")
                invariant = _an_owner_remains(key, "delete")
        elif key.kind == "Token":
            token = await self.store.find(key)
            if token is not None:
                await self._check_token_holder(user, key, token)
        if dry_run:
            return invariant
        if key.kind == "Environment":
            for kind in ("Intercept", "App", "ManagedService", "Config", "Secret"):
                for doc in (await self.store.list(kind, key.team, key.name)).items:
                    await self.store.delete(Key.of(doc))
        elif key.kind == "Cluster":
            # a Kled Cluster's Kubernetes objects and kubeconfig tokens go with it
            for doc in (await self.store.list("KubeObject", key.team, key.name)).items:
                await self.store.delete(Key.of(doc))
            for cred in await self.credentials.listed("kube", key.team):
                if cred.name.startswith(f"{key.name}:") and not cred.revoked:
                    await self.credentials.revoke("kube", key.team, cred.name)
            await self._drain_external_nodes(key.team, key.name)
            ipam = Ipam(self.store.db)
            for held in await ipam.list(key.team):
                if held.owner_kind == "KubeService" and held.owner_name.startswith(f"{key.name}/"):
                    await ipam.release(key.team, held.owner_kind, held.owner_name)
            for env in (await self.store.list("Environment", key.team)).items:
                if (env["metadata"].get("labels") or {}).get("kled.io/cluster") == key.name:
                    await self.delete(ADMIN, Key.of(env))  # the apps its Deployments ran
        elif key.kind == "Team":
            await self.credentials.revoke_team(key.name)
            for info_kind in (
                "KubeObject",
                "Intercept",
                "App",
                "ManagedService",
                "Config",
                "Secret",
                "Workspace",
                "Device",
                "Policy",
                "Cluster",
                "Environment",
                "Token",
                "User",
            ):
                for doc in (await self.store.list(info_kind, key.name)).items:
                    await self.store.delete(Key.of(doc))
        self.forget_credentials()
        return invariant

    async def _drain_external_nodes(self, team: str, cluster: str) -> None:
        """A deleted Kled Cluster's join tokens are revoked and the nodes that joined with
        them drained: their replicas stop with the cluster's environments (their agents
        still hear it) and nothing else is placed there; ``kled node delete`` forgets them
        (docs/clusters.md)."""
        for cred in await self.credentials.listed("join", team):
            if cred.name.startswith(f"cluster:{cluster}:") and not cred.revoked:
                await self.credentials.revoke("join", team, cred.name)
        owner = clusterservices.reserved_for(team, cluster)
        for node in (await self.store.list("Node")).items:
            labels = node["metadata"].get("labels") or {}
            if labels.get(clusterservices.CLUSTER_LABEL) == owner:
                with contextlib.suppress(NotFound):  # status is kept: heartbeats may race
                    await self.store.update(drain(node))

    def _users_of(self, key: Key) -> contextlib.AbstractAsyncContextManager[Any]:
        """Writes to a team's users one at a time in this process: the last-owner check and
        the write it allows cannot interleave with another's (``_an_owner_remains`` holds
        the rule across control-plane replicas)."""
        if key.kind != "User":
            return contextlib.nullcontext()
        return self._user_locks.setdefault(key.team, asyncio.Lock())

    async def _keep_an_owner(self, key: Key, verb: str) -> None:
        """A team always keeps an owner: its last one can be neither demoted nor deleted."""
        users = (await self.store.list("User", key.team)).items
        owners = {u["metadata"]["name"] for u in users if _role(u) == "owner"}
        if owners == {key.name}:
            raise Conflict(
                f"user {key.name} is the last owner of team {key.team} and cannot be {verb}d: "
                "make another user owner first"
            )

    async def _check_token_holder(self, user: UserInfo, key: Key, token: dict[str, Any]) -> None:
        """A token is its user's: only those at or above that user's role may touch it."""
        holder = (token.get("spec") or {}).get("user")
        if holder and holder != user.username:
            role = _role(await self.store.find(Key("User", key.team, "", str(holder))))
            authz.check_ceiling(user, role, "manage the tokens of", f"user {holder}")

    async def _mark_revoked(self, team: str, username: str) -> None:
        """A deleted user's Token documents say what their credentials are: revoked.

        So that watchers and policies, which see documents, see the truth too.
        """
        for doc in (await self.store.list("Token", team)).items:
            spec = doc.get("spec") or {}
            if spec.get("user") == username and not spec.get("revoked"):
                marked = copy.deepcopy(doc)
                marked["spec"]["revoked"] = True
                with contextlib.suppress(Conflict, NotFound):
                    await self.store.update(marked)

    async def _token_truth(self, docs: Sequence[dict[str, Any]]) -> Sequence[dict[str, Any]]:
        """Tokens with ``revoked`` and ``expiresAt`` as the credentials store knows them.

        The store, not the document, decides whether a token works; a document written
        before these fields were the system's, or a token of a deleted user, could say
        otherwise. Documents are copied, never changed in place (they may be cached).
        """
        known: dict[tuple[str, str], Credential] = {}
        for team in {d["metadata"].get("team") or "" for d in docs}:
            for stored in await self.credentials.listed("api", team):
                known[(team, stored.name)] = stored
        shown = []
        for doc in docs:
            cred = known.get((doc["metadata"].get("team") or "", doc["metadata"]["name"]))
            spec = doc.get("spec") or {}
            if cred is None or (
                bool(spec.get("revoked")) == cred.revoked
                and _instant(spec.get("expiresAt")) == cred.expires
            ):
                shown.append(doc)
                continue
            doc = copy.deepcopy(doc)
            spec = doc.setdefault("spec", {})
            spec["revoked"] = cred.revoked
            if cred.expires is None:
                spec.pop("expiresAt", None)
            else:
                spec["expiresAt"] = _timestamp(cred.expires)
            shown.append(doc)
        return shown

    async def _revoke_quietly(self, team: str, name: str) -> None:
        self.forget_credentials()
        with contextlib.suppress(NotFound):
            await self.credentials.revoke("api", team, name)


def _an_owner_remains(key: Key, verb: str) -> Invariant:
    """The last-owner rule again, inside the write's transaction, after the write."""

    def check(users: list[dict[str, Any]]) -> None:
        if not any(
            _role(u) == "owner" and not u["metadata"].get("deletionTimestamp") for u in users
        ):
            raise Conflict(
                f"user {key.name} is the last owner of team {key.team} and cannot be {verb}d: "
                "make another user owner first"
            )

    return Invariant("User", key.team, check)


def _role(user_doc: dict[str, Any] | None) -> str | None:
    return None if user_doc is None else (user_doc.get("spec") or {}).get("role", "viewer")


def _instant(value: Any) -> datetime | None:
    if not value:
        return None
    ts = (
        value
        if isinstance(value, datetime)
        else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    )
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)


def _timestamp(value: datetime) -> str:
    return value.isoformat().replace("+00:00", "Z")


def _keep_token_facts(current: dict[str, Any], obj: dict[str, Any]) -> None:
    """A Token's user, expiry and revocation are the system's: an update may not change them.

    ``revoked`` goes from false to true (that is ``kled token revoke``), never back; the
    expiry is fixed at creation. Refusing says so at once, where keeping the stored value
    would answer ``configured`` for a change that did not happen. A ``ttl`` is dropped: it
    was read once, at creation.
    """
    old = current.get("spec") or {}
    new = obj.setdefault("spec", {})
    new.setdefault("user", old.get("user"))  # not sent: the token's own, as at creation
    if new.get("user") != old.get("user"):
        raise InvalidInput(
            "a token's user is fixed at creation: create a new token", field="spec.user"
        )
    if old.get("revoked") and not new.get("revoked"):
        raise InvalidInput(
            "a revoked token stays revoked: create a new one (kled token create)",
            field="spec.revoked",
        )
    # ``ttl`` is an input of creation, never stored: the same file applied again (GitOps,
    # ``kled apply`` twice) must stay "unchanged", so it is dropped, as the expiry it gave
    # is kept below. To change a lifetime, create a new token.
    new.pop("ttl", None)
    if new.get("expiresAt") is None:
        if old.get("expiresAt"):
            new["expiresAt"] = old["expiresAt"]  # not sent: kept, as the token keeps it
    elif _instant(new["expiresAt"]) != _instant(old.get("expiresAt")):
        raise InvalidInput(
            "a token's expiry is fixed at creation: create a new token with --ttl",
            field="spec.expiresAt",
        )


def _expiry(spec: dict[str, Any]) -> datetime | None:
    if spec.get("expiresAt"):
        value = spec["expiresAt"]
        ts = (
            value
            if isinstance(value, datetime)
            else datetime.fromisoformat(str(value).replace("Z", "+00:00"))
        )
        return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
    ttl = spec.get("ttl")
    if not ttl:
        return None
    return datetime.now(UTC) + parse_duration(str(ttl), "spec.ttl")


def parse_duration(text: str, field_name: str) -> timedelta:
    """``90s``, ``5m``, ``24h``, ``7d`` (and combinations like ``1h30m``)."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
    total = 0
    number = ""
    for ch in text.strip():
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total += int(number) * units[ch]
            number = ""
        else:
            raise InvalidInput(f"{text!r} is not a duration like 30m, 24h or 7d", field=field_name)
    if number or total <= 0:
        raise InvalidInput(f"{text!r} is not a duration like 30m, 24h or 7d", field=field_name)
    if total > MAX_DURATION_SECONDS:
        raise InvalidInput(f"{text!r} is longer than 100 years", field=field_name)
    return timedelta(seconds=total)


ADMIN = UserInfo(username=ADMIN_USER, server_admin=True)
