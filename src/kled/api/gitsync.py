"""The GitOps controller: keeps each GitSource's environments in step with its repository.

It lives beside the service layer (as the intercept feed does) because every write of a
sync goes through that layer — authorisation, schema, mutating and validating kPolicy —
exactly as ``kled apply`` does, so a policy denies a bad commit as it denies a bad apply.

A sync is two passes over the commit. The first reads the store and asks admission, in a
dry run, about every document that would change and every resource that would be pruned;
nothing is written. If anything is invalid, denied or owned by another source, an atomic
source (the default) stops there: the status names each problem and the environment stays
as the previous commit left it. Otherwise the second pass writes, environments first, and
prunes. Before writing, the status says ``Syncing`` with the commit; every source is synced
again when the control plane starts, so a sync cut short by a restart is completed (each
write is idempotent), never left half done. A sync that finds nothing to change writes
nothing at all, status included.

The pure decisions (rendering, what is unchanged, drift, what to prune, the diff) are in
``control/gitplan.py``; git itself is behind ``control/gitrepo.py``.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kled.admission.request import AdmissionRequest, Operation, UserInfo
from kled.aio import wait_event
from kled.api.service import Service
from kled.control import gitplan
from kled.control.gitplan import FAILED, Item
from kled.control.gitrepo import Auth, GitCache, GitError, Limits
from kled.errors import Forbidden, InvalidInput, KledError, NotFound
from kled.resources.fields import duration_seconds
from kled.resources.registry import KINDS, Scope
from kled.store.follow import follow_events
from kled.store.objects import Event, Key

log = logging.getLogger(__name__)

#: the kinds a source may manage, environments first (their content needs them)
MANAGED_KINDS = tuple(
    sorted(
        (k.kind for k in KINDS if k.scope is not Scope.SERVER and k.kind not in gitplan.UNMANAGED),
        key=lambda kind: kind != "Environment",
    )
)
MAX_PARALLEL = 4
#: the longest wait between looks at the sources (a new source is also seen from the log)
IDLE_SECONDS = 5.0


@dataclass
class _Plan:
    """The first pass of a sync: what to write and delete, and what is wrong."""

    items: list[Item] = field(default_factory=list)
    writes: list[tuple[Key, dict[str, Any], bool]] = field(default_factory=list)
    prunes: list[Key] = field(default_factory=list)
    inventory: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[Item]:
        return [item for item in self.items if item.result in FAILED]


def source_user(team: str, name: str) -> UserInfo:
    """Who a source writes as: an admin of its team (only admins create GitSources)."""
    return UserInfo(username=f"gitops:{name}", team=team, role="admin")


class GitOps:
    """Polls, syncs and reports every GitSource; ``poke`` asks for a sync at once."""

    def __init__(self, svc: Service, cache_root: Path, limits: Limits | None = None) -> None:
        self.svc = svc
        self.store = svc.store
        self.cache = GitCache(cache_root, limits)
        self._locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._due: dict[tuple[str, str], float] = {}
        self._generation: dict[tuple[str, str], int] = {}
        self._running: dict[tuple[str, str], asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._gate = asyncio.Semaphore(MAX_PARALLEL)
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self, after: int | None = None) -> None:
        """Schedule the syncs and follow the log from ``after`` (default: now)."""
        if after is None:
            after = await self.store.revision()
        self._tasks = [
            asyncio.create_task(self._schedule(), name="gitops"),
            asyncio.create_task(
                follow_events(
                    self.store, after, self._on_event, what="gitops feed", resync=self.resync
                ),
                name="gitops feed",
            ),
        ]

    async def stop(self) -> None:
        tasks = [*self._tasks, *self._running.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._tasks = []

    def poke(self, team: str, name: str) -> None:
        """Sync this source as soon as it is free (a webhook, a new or changed spec)."""
        self._due[(team, name)] = 0.0
        self._wake.set()

    # ---- scheduling ------------------------------------------------------------------

    async def resync(self) -> int:
        """After the feed's events were compacted: sync at once every source whose spec
        changed meanwhile, forget those deleted; the revision to go on from."""
        now = await self.store.revision()
        stored: set[tuple[str, str]] = set()
        for doc in (await self.store.list("GitSource")).items:
            meta = doc["metadata"]
            ident = (str(meta["team"]), str(meta["name"]))
            stored.add(ident)
            generation = int(meta.get("generation") or 1)
            if self._generation.get(ident) != generation:
                self._generation[ident] = generation
                self.poke(*ident)
        for ident in set(self._generation) - stored:
            self._due.pop(ident, None)
            self._generation.pop(ident, None)
            self.cache.forget(*ident)
        return now

    async def _on_event(self, event: Event) -> None:
        if event.kind != "GitSource":
            return
        ident = (event.team, event.name)
        if event.type == "DELETED":
            self._due.pop(ident, None)
            self._generation.pop(ident, None)
            self.cache.forget(*ident)
            return
        generation = int(event.object["metadata"].get("generation") or 1)
        if self._generation.get(ident) != generation:
            self._generation[ident] = generation
            self.poke(*ident)

    async def _schedule(self) -> None:
        while True:
            wait = IDLE_SECONDS
            try:
                wait = min(wait, await self._start_due())
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gitops: looking at the sources failed; trying again")
            self._wake.clear()
            await wait_event(self._wake, max(wait, 0.05))

    async def _start_due(self) -> float:
        """Start the syncs that are due; return the seconds until the next one."""
        now = time.monotonic()
        soonest = IDLE_SECONDS
        for doc in (await self.store.list("GitSource")).items:
            meta = doc["metadata"]
            ident = (str(meta["team"]), str(meta["name"]))
            spec = doc.get("spec") or {}
            self._generation.setdefault(ident, int(meta.get("generation") or 1))
            cut_short = (doc.get("status") or {}).get("phase") == "Syncing"
            if meta.get("deletionTimestamp") or (spec.get("suspend") and not cut_short):
                continue
            due = self._due.setdefault(ident, 0.0)  # first look after a start: at once
            if ident in self._running:
                continue
            if due > now:
                soonest = min(soonest, due - now)
                continue
            self._due[ident] = now + duration_seconds(str(spec.get("interval") or "1m"))
            self._running[ident] = asyncio.create_task(self._sync_quietly(*ident))
        return soonest

    async def _sync_quietly(self, team: str, name: str) -> None:
        try:
            async with self._gate:
                await self.sync(team, name)
        except NotFound:
            pass
        except Exception:
            log.exception("gitops: sync of gitsource/%s/%s failed", team, name)
        finally:
            self._running.pop((team, name), None)
            self._wake.set()

    # ---- one sync --------------------------------------------------------------------

    async def sync(self, team: str, name: str, ref: str | None = None) -> dict[str, Any]:
        """Fetch, plan and apply one source; return its status."""
        key = Key("GitSource", team, "", name)
        async with self._locks.setdefault((team, name), asyncio.Lock()):
            doc = await self.store.get(key)
            spec = doc.get("spec") or {}
            before = dict(doc.get("status") or {})
            wanted_ref = ref or str(spec.get("ref") or "main")
            try:
                auth = await self._auth(team, spec, "credentials")
                commit = await self.cache.fetch(team, name, str(spec["url"]), wanted_ref, auth)
                tree = await self.cache.read(team, name, commit, str(spec.get("path") or "."))
            except KledError as exc:
                status = {
                    **_kept(before),
                    "phase": "Failed",
                    "ref": wanted_ref,
                    "message": f"fetch of {wanted_ref!r} failed: {exc.message}",
                }
                log.info("gitops: gitsource/%s/%s fetch failed: %s", team, name, exc.message)
                return await self._report(key, before, status)
            rendered = gitplan.render(
                tree.files,
                team=team,
                source=name,
                commit=commit,
                environment=spec.get("environment"),
            )
            user = source_user(team, name)
            plan = await self._plan(team, name, rendered, before, bool(spec.get("prune", True)))
            base = {**_kept(before), "ref": wanted_ref, "lastFetchedCommit": commit}
            if plan.failed and spec.get("atomic", True):
                first = plan.failed[0]
                status = {
                    **base,
                    "phase": "Failed",
                    "message": f"commit {commit[:12]} not applied: {first.message}"
                    + (f" (and {len(plan.failed) - 1} more)" if len(plan.failed) > 1 else ""),
                    "resources": gitplan.listed(plan.items),
                }
                return await self._report(key, before, status)
            if not plan.writes and not plan.prunes and not plan.failed:
                if before.get("phase") == "Synced" and before.get("lastAppliedCommit") == commit:
                    return before  # nothing changed: nothing is written
            if plan.writes or plan.prunes:
                syncing = {**before, "phase": "Syncing", "syncingCommit": commit}
                await self.store.update_status(key, syncing)
            items = await self._write(user, plan)
            failed = [i for i in items if i.result in FAILED]
            drift = sorted(i.ref for i in items if i.drift)
            status = {
                **base,
                "phase": "Partial" if failed else "Synced",
                "lastAppliedCommit": commit,
                "message": _summary(items, commit),
                "resources": gitplan.listed(items),
                "inventory": plan.inventory,
            }
            if drift:
                status["drift"] = drift
            log.info("gitops: gitsource/%s/%s %s", team, name, status["message"])
            return await self._report(key, before, status)

    async def _plan(
        self,
        team: str,
        name: str,
        rendered: gitplan.Rendered,
        before: dict[str, Any],
        prune: bool,
    ) -> _Plan:
        plan = _Plan(items=list(rendered.problems))
        recorded: dict[str, str] = dict(before.get("inventory") or {})
        user = source_user(team, name)
        pending_envs = {
            key.name
            for key in rendered.docs
            if key.kind == "Environment" and await self.store.find(key) is None
        }
        for key, wanted in sorted(rendered.docs.items(), key=lambda kv: _order(kv[0])):
            ref = gitplan.ref_of(key)
            stored = await self.store.find(key)
            holder = gitplan.owner(stored)
            if stored is not None and holder not in (None, name):
                if await self.store.find(Key("GitSource", team, "", str(holder))) is not None:
                    plan.items.append(Item(ref, "clash", f"{ref} is managed by GitSource {holder}"))
                    continue
            if stored is not None and gitplan.ignored(stored):
                plan.items.append(
                    Item(ref, "ignored", "kled.io/gitops: ignore", not gitplan.same(stored, wanted))
                )
                plan.inventory[ref] = gitplan.digest(stored)
                continue
            if stored is not None and gitplan.same(stored, wanted):
                plan.items.append(Item(ref, "unchanged"))
                plan.inventory[ref] = gitplan.digest(stored)
                continue
            drift = (
                holder == name and stored is not None and gitplan.drifted(stored, recorded.get(ref))
            )
            try:
                result = await self._dry_run(user, key, wanted, stored, pending_envs)
            except Forbidden as exc:
                plan.items.append(Item(ref, "denied", exc.message))
                continue
            except KledError as exc:
                where = f"{exc.field}: " if exc.field else ""
                plan.items.append(Item(ref, "invalid", f"{ref}: {where}{exc.message}"))
                continue
            if result == "unchanged" and stored is not None:
                plan.items.append(Item(ref, "unchanged"))
                plan.inventory[ref] = gitplan.digest(stored)
                continue
            plan.writes.append((key, wanted, drift))
        # a document that could not be read might be one that still exists: prune nothing
        if prune and not rendered.problems:
            for key in gitplan.prunable(await self._owned(team, name), rendered.docs):
                try:
                    await self.svc.delete(user, key, dry_run=True)
                except NotFound:
                    continue
                except Forbidden as exc:
                    plan.items.append(Item(gitplan.ref_of(key), "denied", exc.message))
                    continue
                except KledError as exc:
                    plan.items.append(Item(gitplan.ref_of(key), "invalid", exc.message))
                    continue
                plan.prunes.append(key)
        return plan

    async def _dry_run(
        self,
        user: UserInfo,
        key: Key,
        wanted: dict[str, Any],
        stored: dict[str, Any] | None,
        pending_envs: set[str],
    ) -> str:
        """Admission's answer for ``wanted``, nothing written: its would-be result."""
        if stored is None and key.environment in pending_envs:
            # its environment comes with the same commit: admission alone, no parent check
            await self.svc.chain.admit(
                AdmissionRequest(
                    operation=Operation.CREATE,
                    kind=key.kind,
                    name=key.name,
                    team=key.team,
                    environment=key.environment or None,
                    object=copy.deepcopy(wanted),
                    old_object=None,
                    user=user,
                    dry_run=True,
                )
            )
            return "created"
        probe = wanted if stored is None else gitplan.with_commit(wanted, gitplan.commit_of(stored))
        outcome = await self.svc.apply(user, probe, dry_run=True)
        return outcome.result

    async def _write(self, user: UserInfo, plan: _Plan) -> list[Item]:
        items = list(plan.items)
        for key, wanted, drift in plan.writes:
            ref = gitplan.ref_of(key)
            try:
                outcome = await self.svc.apply(user, wanted)
            except Forbidden as exc:
                items.append(Item(ref, "denied", exc.message))
                continue
            except KledError as exc:
                items.append(Item(ref, "invalid", f"{ref}: {exc.message}"))
                continue
            stored = await self.store.find(key)
            if stored is not None:
                plan.inventory[ref] = gitplan.digest(stored)
            message = "changed by hand since the last sync: reverted" if drift else ""
            items.append(Item(ref, outcome.result, message, drift))
        for key in plan.prunes:
            ref = gitplan.ref_of(key)
            try:
                await self.svc.delete(user, key)
            except NotFound:
                pass
            except KledError as exc:
                items.append(Item(ref, "denied", exc.message))
                continue
            items.append(Item(ref, "pruned"))
        return items

    async def _owned(self, team: str, name: str) -> list[Key]:
        owned = []
        for kind in MANAGED_KINDS:
            for doc in (await self.store.list(kind, team)).items:
                if gitplan.owner(doc) == name:
                    owned.append(Key.of(doc))
        return owned

    async def _report(
        self, key: Key, before: dict[str, Any], status: dict[str, Any]
    ) -> dict[str, Any]:
        status.pop("syncingCommit", None)
        if status != before:
            with contextlib.suppress(NotFound):
                await self.store.update_status(key, status)
        return status

    # ---- secrets ---------------------------------------------------------------------

    async def secret_value(
        self, team: str, ref: dict[str, Any], default_keys: tuple[str, ...]
    ) -> str:
        """The text of a Secret entry a source names (``credentials``, ``webhookSecret``)."""
        where = f"secret/{ref.get('environment')}/{ref.get('name')}"
        doc = await self.store.find(
            Key("Secret", team, str(ref.get("environment")), str(ref.get("name")))
        )
        if doc is None:
            raise InvalidInput(f"{where} not found in team {team}")
        data: dict[str, str] = doc.get("data") or {}
        wanted = ref.get("key")
        if wanted is None:
            wanted = next((k for k in default_keys if k in data), None)
            if wanted is None and len(data) == 1:
                wanted = next(iter(data))
        if wanted is None or wanted not in data:
            raise InvalidInput(f"{where} has no entry {wanted or ' or '.join(default_keys)!r}")
        try:
            return base64.b64decode(data[wanted]).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise InvalidInput(f"{where}: entry {wanted!r} is not text") from None

    async def _auth(self, team: str, spec: dict[str, Any], field_name: str) -> Auth:
        ref = spec.get(field_name)
        if not ref:
            return Auth()
        if str(spec.get("url", "")).startswith("ssh://"):
            key = await self.secret_value(team, ref, ("ssh-privatekey", "identity", "key"))
            return Auth(ssh_key=key)
        token = await self.secret_value(team, ref, ("token", "password"))
        return Auth(token=token)

    # ---- diff ------------------------------------------------------------------------

    async def diff(self, team: str, name: str) -> str:
        """Stored against git, for every resource the last fetched commit differs on."""
        doc = await self.store.get(Key("GitSource", team, "", name))
        spec = doc.get("spec") or {}
        commit = (doc.get("status") or {}).get("lastFetchedCommit")
        async with self._locks.setdefault((team, name), asyncio.Lock()):
            try:
                if not commit:
                    raise GitError("not fetched yet")
                tree = await self.cache.read(team, name, str(commit), str(spec.get("path") or "."))
            except GitError:
                auth = await self._auth(team, spec, "credentials")
                ref = str(spec.get("ref") or "main")
                commit = await self.cache.fetch(team, name, str(spec["url"]), ref, auth)
                tree = await self.cache.read(team, name, commit, str(spec.get("path") or "."))
        rendered = gitplan.render(
            tree.files,
            team=team,
            source=name,
            commit=str(commit),
            environment=spec.get("environment"),
        )
        parts = []
        for key, wanted in sorted(rendered.docs.items(), key=lambda kv: _order(kv[0])):
            stored = await self.store.find(key)
            if stored is None or not gitplan.same(stored, wanted):
                parts.append(gitplan.diff(key, stored, wanted))
        if spec.get("prune", True):
            for key in gitplan.prunable(await self._owned(team, name), rendered.docs):
                parts.append(gitplan.diff(key, await self.store.find(key), None))
        return "".join(parts)


def _order(key: Key) -> tuple[int, str, str, str]:
    return (0 if key.kind == "Environment" else 1, key.kind, key.environment, key.name)


def _kept(before: dict[str, Any]) -> dict[str, Any]:
    """What a failed sync keeps of the status: the last applied commit and inventory."""
    return {
        k: v
        for k, v in before.items()
        if k in ("lastAppliedCommit", "lastFetchedCommit", "inventory", "resources", "drift")
    }


def _summary(items: list[Item], commit: str) -> str:
    counts: dict[str, int] = {}
    for item in items:
        counts[item.result] = counts.get(item.result, 0) + 1
    told = ", ".join(f"{n} {result}" for result, n in sorted(counts.items()))
    return f"commit {commit[:12]}: {told or 'no resources'}"
