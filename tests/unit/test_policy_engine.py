"""kPolicy through the admission hooks: real QuickJS in real worker processes, with the
server's seams (policy source, resource reader) filled from memory."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from typing import Any

import pytest
import pytest_asyncio
from prometheus_client import REGISTRY

from kled.admission.chain import AdmissionChain
from kled.admission.policy import EngineSettings, InMemoryViolationSink, PolicyEngine
from kled.admission.policy.local import MemoryResources, StaticPolicySource
from kled.admission.policy.pool import WorkerPool
from kled.admission.request import AdmissionRequest, Operation, UserInfo
from kled.errors import Forbidden

pytestmark = pytest.mark.asyncio(loop_scope="module")

TEAM = "acme"


def policy(name: str, javascript: str, rv: str = "1", **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Policy",
        "metadata": {"name": name, "team": TEAM, "uid": f"uid-{name}", "resourceVersion": rv},
        "spec": {"javascript": javascript, **spec},
    }


def app(
    name: str = "api", env: str = "dev", labels: dict[str, str] | None = None
) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": name, "team": TEAM, "environment": env, "labels": labels or {}},
        "spec": {"runtime": "process", "command": ["sleep", "1"], "replicas": 1},
    }


def request(
    obj: dict[str, Any] | None,
    op: Operation = Operation.CREATE,
    old: dict[str, Any] | None = None,
    user: str = "alice",
) -> AdmissionRequest:
    doc = obj or old or {}
    meta = doc["metadata"]
    return AdmissionRequest(
        operation=op,
        kind=doc["kind"],
        name=meta["name"],
        team=meta["team"],
        environment=meta.get("environment"),
        object=obj,
        old_object=old,
        user=UserInfo(username=user, team=TEAM, role="member"),
    )


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[WorkerPool]:
    shared = WorkerPool(size=2, env={"DEBUG": "true"})
    await shared.start()
    yield shared
    await shared.close()


class Rig:
    def __init__(self, pool: WorkerPool, docs: list[dict[str, Any]], **settings: Any) -> None:
        self.source = StaticPolicySource(docs)
        self.resources = MemoryResources()
        self.sink = InMemoryViolationSink(per_policy=100)
        self.engine = PolicyEngine(
            self.source,
            self.resources,
            self.sink,
            settings=EngineSettings(**settings),
            pool=pool,
        )
        self.chain = AdmissionChain(lambda d: d)
        self.chain.add_mutating(self.engine.mutating_hook)
        self.chain.add_validating(self.engine.validating_hook)

    async def violations(self, name: str | None = None) -> list[Any]:
        return await self.sink.list(TEAM, name, 1000)


def rig(pool: WorkerPool, *docs: dict[str, Any], **settings: Any) -> Rig:
    return Rig(pool, list(docs), **settings)


# --- validating, warn, dry -------------------------------------------------------------------


async def test_deny_is_a_403_naming_the_policy(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "require-owner",
            "if (!request.object.metadata.labels.owner) {\n"
            "  deny(`app ${request.name} in ${request.namespace} needs an owner label`);\n}",
            resources=["apps"],
        ),
    )
    with pytest.raises(Forbidden) as caught:
        await r.chain.admit(request(app()))
    assert caught.value.status == 403
    assert caught.value.policy == "require-owner"
    assert "app api in dev needs an owner label" in str(caught.value)
    admitted = await r.chain.admit(request(app(labels={"owner": "alice"})))
    assert admitted.object is not None
    [violation] = await r.violations("require-owner")
    assert (violation.action, violation.kind, violation.name, violation.environment) == (
        "deny",
        "App",
        "api",
        "dev",
    )
    assert (violation.operation, violation.user) == ("CREATE", "alice")


async def test_deny_with_reason_and_code(pool: WorkerPool) -> None:
    r = rig(pool, policy("bad", 'deny("No new app allowed in default", "BadRequest", 400)'))
    result = await r.engine.validating_hook(request(app(env="default")))
    assert (result.allowed, result.code, result.reason) == (False, 400, "BadRequest")


async def test_warn_reaches_the_response_and_allows(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "warner",
            "warn(`Hello for ${request.object.metadata.environment}/${request.name}`);"
            'warn("Another")',
        ),
    )
    admitted = await r.chain.admit(request(app()))
    assert admitted.warnings == ["[warner] Hello for dev/api", "[warner] Another"]
    assert await r.violations() == []


async def test_violation_policy_warn_allows_and_records(pool: WorkerPool) -> None:
    r = rig(pool, policy("soft", 'deny("not in dev")', violationPolicy="Warn"))
    admitted = await r.chain.admit(request(app()))
    assert admitted.warnings == ["[soft] not in dev"]
    [violation] = await r.violations("soft")
    assert violation.action == "warn"


async def test_violation_policy_dry_allows_silently_and_records(pool: WorkerPool) -> None:
    r = rig(pool, policy("dry", 'deny("would deny")', violationPolicy="Dry"))
    admitted = await r.chain.admit(request(app()))
    assert admitted.warnings == []
    [violation] = await r.violations("dry")
    assert (violation.action, violation.message) == ("dry", "would deny")


async def test_audit_policy_skip_records_nothing(pool: WorkerPool) -> None:
    r = rig(pool, policy("quiet", 'deny("no")', auditPolicy="Skip"))
    assert not (await r.engine.validating_hook(request(app()))).allowed
    assert await r.violations() == []


async def test_matching_by_operation_kind_environment_and_labels(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "picky",
            'deny("matched")',
            operations=["UPDATE"],
            resources=["App"],
            environments=["prod"],
            objectSelector={"matchLabels": {"tier": "web"}},
        ),
    )
    web = app(env="prod", labels={"tier": "web"})
    assert (await r.engine.validating_hook(request(web))).allowed  # CREATE: not matched
    assert not (await r.engine.validating_hook(request(web, Operation.UPDATE, web))).allowed
    other = app(env="dev", labels={"tier": "web"})
    assert (await r.engine.validating_hook(request(other, Operation.UPDATE, other))).allowed
    plain = app(env="prod")
    assert (await r.engine.validating_hook(request(plain, Operation.UPDATE, plain))).allowed


async def test_namespace_selector_matches_environment_labels(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "prod-only",
            'deny("no apps in this environment")',
            namespaceSelector={
                "matchExpressions": [{"key": "stage", "operator": "In", "values": ["prod"]}]
            },
        ),
    )
    for name, stage in (("live", "prod"), ("scratch", "dev")):
        r.resources.put(
            {
                "kind": "Environment",
                "metadata": {"name": name, "team": TEAM, "labels": {"stage": stage}},
            }
        )
    assert not (await r.engine.validating_hook(request(app(env="live")))).allowed
    assert (await r.engine.validating_hook(request(app(env="scratch")))).allowed


async def test_policies_of_other_teams_never_apply(pool: WorkerPool) -> None:
    other = policy("foreign", 'deny("from another team")')
    other["metadata"]["team"] = "globex"
    r = rig(pool, other)
    assert (await r.engine.validating_hook(request(app()))).allowed


# --- mutating --------------------------------------------------------------------------------


async def test_mutate_in_priority_order_each_seeing_the_last(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "b-second",
            "request.object.metadata.labels.order = request.object.metadata.labels.order + ',b';"
            "mutate(request.object);",
            type="Mutating",
            priority=2,
        ),
        policy(
            "a-first",
            "request.object.metadata.labels.order = 'a'; mutate(request.object);",
            type="Mutating",
            priority=1,
        ),
        policy(
            "check",
            "if (request.object.metadata.labels.order !== 'a,b') deny('order was ' +"
            " request.object.metadata.labels.order)",
        ),
    )
    admitted = await r.chain.admit(request(app()))
    assert admitted.object is not None
    assert admitted.object["metadata"]["labels"]["order"] == "a,b"


async def test_mutate_may_not_change_identity(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "rename",
            "request.object.metadata.name = 'other'; mutate(request.object)",
            type="Mutating",
        ),
    )
    result = await r.engine.mutating_hook(request(app()))
    assert not result.allowed
    assert "may not change metadata.name" in result.message


async def test_mutate_in_a_validating_policy_changes_nothing(pool: WorkerPool) -> None:
    r = rig(pool, policy("sly", "request.object.spec.replicas = 9; mutate(request.object)"))
    admitted = await r.chain.admit(request(app()))
    assert admitted.object is not None
    assert admitted.object["spec"]["replicas"] == 1


# --- the script's API --------------------------------------------------------------------


async def test_get_list_env_atob_btoa(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "reader",
            """
            const here = get("Environment", "v1", request.namespace);
            if (!here) deny("no environment");
            const same = get("App", "kled.io/v1", "dev/db");
            if (!same || same.metadata.name !== "db") deny("no db");
            if (get("App", "v1", "dev/missing") !== undefined) deny("found a ghost");
            const pods = list("Pod", "v1", {namespace: request.namespace});
            const web = list("App", "v1", {labelSelector: "tier in (web),owner"});
            if (pods.length !== 2 || web.length !== 1) deny(`counted ${pods.length}/${web.length}`);
            if (env("DEBUG") !== "true" || env("HOME") !== undefined) deny("env leaked");
            if (atob(btoa("kled")) !== "kled" || btoa("abc") !== "YWJj") deny("base64");
            const secret = get("Secret", "v1", "dev/db");
            if (secret.data.password !== "") deny("secret value shown");
            """,
        ),
    )
    r.resources.put({"kind": "Environment", "metadata": {"name": "dev", "team": TEAM}})
    r.resources.put(app("db"))
    r.resources.put(app("web", labels={"tier": "web", "owner": "bob"}))
    r.resources.put(app("other", env="prod"))
    r.resources.put(
        {
            "kind": "Secret",
            "metadata": {"name": "db", "team": TEAM, "environment": "dev"},
            "data": {"password": "aHVudGVyMg=="},
        }
    )
    result = await r.engine.validating_hook(request(app()))
    assert result.allowed, result.message


async def test_runtime_error_follows_failure_policy(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy("broken", "const x = null;\nx.y = 1;", failurePolicy="Fail"),
        policy("lenient", "undefinedFunction()", failurePolicy="Ignore"),
    )
    result = await r.engine.validating_hook(request(app()))
    assert not result.allowed
    assert result.policy == "broken"
    assert "failed: TypeError" in result.message
    assert "line 2" in result.message


async def test_read_only_and_no_outside_world(pool: WorkerPool) -> None:
    r = rig(
        pool,
        policy(
            "writer",
            "try { create({}); } catch (e) { warn(e.message) }\n"
            "try { fetchSync('http://example.com'); } catch (e) { warn(e.message) }",
        ),
    )
    result = await r.engine.validating_hook(request(app()))
    assert result.allowed
    assert "read resources, never write them" in result.warnings[0]
    assert "no network or file access" in result.warnings[1]


# --- syntax errors, caching --------------------------------------------------------------------


async def test_policy_with_syntax_error_is_refused_with_line_and_column(pool: WorkerPool) -> None:
    r = rig(pool)
    bad = policy("bad", "const a = 1;\nconst b = 2;\nif (a { deny('x') }\n")
    with pytest.raises(Forbidden) as caught:
        await r.chain.admit(request(bad))
    assert caught.value.status == 422
    assert "spec.javascript: line 3, column 7: SyntaxError" in str(caught.value)


async def test_stored_policy_with_syntax_error_follows_failure_policy(pool: WorkerPool) -> None:
    r = rig(pool, policy("stored-bad", "if ("))
    result = await r.engine.validating_hook(request(app()))
    assert not result.allowed
    assert "cannot run" in result.message and "line 1, column 5" in result.message


async def test_compiled_once_and_changed_when_the_policy_changes(pool: WorkerPool) -> None:
    # A global counter survives between runs of one compiled version only.
    counting = "globalThis.n = (globalThis.n || 0) + 1; warn(`v{V} run ${globalThis.n}`)"
    r = rig(pool, policy("count", counting.replace("{V}", "1"), rv="1"))
    seen = set()
    for _ in range(6):
        seen.update((await r.engine.validating_hook(request(app()))).warnings)
    assert any("run 2" in w for w in seen)  # reused: not a fresh context each time
    r.source.docs = [policy("count", counting.replace("{V}", "2"), rv="2")]
    result = await r.engine.validating_hook(request(app()))
    assert result.warnings[0].startswith("[count] v2 run ")


# --- limits -----------------------------------------------------------------------------------


async def test_infinite_loop_is_cut_off_and_fails_closed(pool: WorkerPool) -> None:
    r = rig(pool, policy("spin", "while (true) {}", timeoutSeconds=1))
    result = await r.engine.validating_hook(request(app()))
    assert not result.allowed
    assert result.message == "policy spin exceeded its time limit of 1s (timeoutSeconds)"
    [violation] = await r.violations("spin")
    assert violation.reason == "Timeout"


async def test_infinite_loop_with_ignore_is_allowed(pool: WorkerPool) -> None:
    r = rig(pool, policy("spin", "for (;;) {}", timeoutSeconds=1, failurePolicy="Ignore"))
    assert (await r.engine.validating_hook(request(app()))).allowed


async def test_huge_allocation_is_cut_off_at_the_memory_limit(pool: WorkerPool) -> None:
    hog = "const a = []; while (true) a.push('x'.repeat(4096) + Math.random());"
    r = rig(pool, policy("hog", hog), memory_bytes=16 * 1024 * 1024)
    result = await r.engine.validating_hook(request(app()))
    assert not result.allowed
    assert result.message == "policy hog exceeded its memory limit of 16 MiB"
    ignoring = rig(pool, policy("hog", hog, failurePolicy="Ignore"))
    assert (await ignoring.engine.validating_hook(request(app()))).allowed


async def test_runaway_policy_does_not_stall_other_requests(pool: WorkerPool) -> None:
    # The runaway may use 30 CPU seconds: it is still running when the others are done,
    # however slow this machine is, and is cancelled then (its worker is replaced).
    spin = rig(pool, policy("spin", "while (true) {}", timeoutSeconds=30))
    hog = rig(pool, policy("hog", "const a = []; for (;;) a.push('y'.repeat(65536) + a.length);"))
    quick = rig(pool, policy("quick", "if (request.name === 'nope') deny('no')"))
    runaway = asyncio.create_task(spin.engine.validating_hook(request(app())))
    await asyncio.sleep(0.2)  # let the runaway take its worker
    allocation = asyncio.create_task(hog.engine.validating_hook(request(app("hog"))))
    completed = 0
    for i in range(50):
        result = await quick.engine.validating_hook(request(app(f"app-{i}")))
        assert result.allowed
        completed += 1
    assert completed == 50
    assert not runaway.done()
    hogged = await allocation
    assert not hogged.allowed and "memory limit" in hogged.message
    runaway.cancel()
    with pytest.raises(asyncio.CancelledError):
        await runaway
    after = await quick.engine.validating_hook(request(app("after")))
    assert after.allowed


async def test_a_dead_worker_is_replaced(pool: WorkerPool) -> None:
    r = rig(pool, policy("fine", "allow()"))
    assert (await r.engine.validating_hook(request(app()))).allowed
    victim = pool.pids[0]
    os.kill(victim, 9)
    await asyncio.sleep(0.1)
    for _ in range(4):
        assert (await r.engine.validating_hook(request(app()))).allowed
    while len(pool.pids) < pool.size:  # the replacement starts in the background
        await asyncio.sleep(0.05)
    assert victim not in pool.pids
    # A worker lost in the middle of a run: the policy fails (closed), the server lives.
    spin = rig(pool, policy("spin-crash", "while (true) {}", timeoutSeconds=30))
    running = asyncio.create_task(spin.engine.validating_hook(request(app())))
    await asyncio.sleep(0.3)
    for pid in pool.pids:
        os.kill(pid, 9)
    result = await running
    assert not result.allowed
    assert "the policy runtime crashed (signal 9)" in result.message
    for _ in range(4):
        assert (await r.engine.validating_hook(request(app()))).allowed


# --- metrics, violations -------------------------------------------------------------------------


async def test_metrics_count_executions_and_time_them(pool: WorkerPool) -> None:
    r = rig(pool, policy("metered", "deny('no')"))
    labels = {"policy": f"{TEAM}/metered", "result": "deny"}
    before = REGISTRY.get_sample_value("kled_policy_executions_total", labels) or 0
    for _ in range(3):
        await r.engine.validating_hook(request(app()))
    assert REGISTRY.get_sample_value("kled_policy_executions_total", labels) == before + 3
    count = REGISTRY.get_sample_value(
        "kled_policy_duration_seconds_count", {"policy": f"{TEAM}/metered"}
    )
    assert count is not None and count >= 3


async def test_violations_are_bounded_per_policy() -> None:
    from kled.admission.policy.violations import Violation

    sink = InMemoryViolationSink(per_policy=100)
    for i in range(130):
        await sink.record(Violation(team=TEAM, policy="p", action="deny", message=str(i)))
    await sink.record(Violation(team=TEAM, policy="q", action="dry", message="q"))
    kept = await sink.list(TEAM, "p", 1000)
    assert len(kept) == 100
    assert {v.message for v in kept} == {str(i) for i in range(30, 130)}
    assert len(await sink.list(TEAM, None, 1000)) == 101
    assert await sink.list("globex", None, 10) == []


# --- controller policies ----------------------------------------------------------------------


async def test_controller_audits_existing_and_changed_resources(pool: WorkerPool) -> None:
    ctl = policy(
        "audit-owner",
        "if (!request.object.metadata.labels.owner) deny(`${request.name} has no owner`)",
        type="Controller",
        resources=["apps"],
    )
    r = rig(pool, ctl)
    r.resources.put(app("orphan"))
    r.resources.put(app("owned", labels={"owner": "bob"}))
    report = await r.engine.audit(TEAM, None)
    assert report.evaluated == 2
    assert [v.name for v in report.violations] == ["orphan"]
    # Admission does not run controller policies.
    assert (await r.engine.validating_hook(request(app("new")))).allowed
    changed = await r.engine.on_change("MODIFIED", app("owned"))
    assert [v.name for v in changed.violations] == ["owned"]
    recorded = await r.violations("audit-owner")
    assert {v.name for v in recorded} == {"orphan", "owned"}
    assert all(v.user == "kled:policy-controller" for v in recorded)
    again = await r.engine.on_change("ADDED", ctl)
    assert again.evaluated == 2


async def test_the_policies_a_request_matches_run_together_and_decide_as_alone(
    pool: WorkerPool,
) -> None:
    """Sixteen matching policies go to one worker in one round trip; a policy that reads
    the store (a host call) is run again alone with its answers; each decides as if it
    had run alone: the first denial by name answers, the others' warnings come along."""
    docs = [policy(f"ok-{n:02d}", 'warn("seen")' if n == 3 else "let a = 1;") for n in range(13)]
    docs.append(policy("reads", 'if (!get("App", "v1", "dev/db")) deny("no db yet");'))
    docs.append(policy("zz-owner", "if (!request.object.metadata.labels.owner) deny('owner');"))
    docs.append(policy("zz-slow", "while (true) {}", timeoutSeconds=1, failurePolicy="Ignore"))
    r = rig(pool, *docs)
    result = await r.engine.validating_hook(request(app()))
    assert (result.allowed, result.policy) == (False, "reads")
    assert "no db yet" in result.message
    r.resources.put(app("db"))
    result = await r.engine.validating_hook(request(app()))
    assert (result.allowed, result.policy) == (False, "zz-owner")
    result = await r.engine.validating_hook(request(app(labels={"owner": "ada"})))
    assert result.allowed, result.message
    assert result.warnings == ["[ok-03] seen"]
    # recorded as alone: both denials of the first request, the one of the second
    assert sorted(v.policy for v in await r.violations()) == ["reads", "zz-owner", "zz-owner"]
