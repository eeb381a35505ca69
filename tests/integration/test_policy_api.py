"""kPolicy through the real API: policies applied, enforced, reported and measured, on a
control plane with a real database (SQLite and PostgreSQL) and real worker processes.

Every test makes its own team(s) with a ``dev`` environment and talks HTTP to the server,
as ``kled`` and the web UI do. One server per database serves the module: each test's teams
are named afresh (``TEAM`` and ``OTHER``, set before each test), so no test sees another's
policies, resources or violations.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest
from test_api import make_user

from servers import RunningServer

#: this test's team and a second one; renamed before each test by ``fresh_teams``
TEAM = "acme"
OTHER = "other"


@pytest.fixture
def server(shared_server: RunningServer) -> RunningServer:
    return shared_server


@pytest.fixture(autouse=True)
def fresh_teams(unique_team: str) -> None:
    global TEAM, OTHER
    TEAM, OTHER = unique_team, f"{unique_team}-other"


def make_team(server: RunningServer, team: str | None = None, *envs: str) -> None:
    team = team or TEAM
    with server.client() as admin:
        r = admin.post("/api/v1/teams", json={"metadata": {"name": team}})
        assert r.status_code == 201, r.text
        for env in envs or ("dev",):
            r = admin.post(f"/api/v1/teams/{team}/environments", json={"metadata": {"name": env}})
            assert r.status_code == 201, r.text


def policy(name: str, javascript: str, team: str | None = None, **spec: Any) -> dict[str, Any]:
    team = team or TEAM
    return {
        "apiVersion": "kled.io/v1",
        "kind": "Policy",
        "metadata": {"name": name, "team": team},
        "spec": {"resources": ["apps"], "javascript": javascript, **spec},
    }


def app(
    name: str,
    *,
    team: str | None = None,
    env: str = "dev",
    labels: dict[str, str] | None = None,
    replicas: int = 1,
) -> dict[str, Any]:
    return {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {
            "name": name,
            "team": team or TEAM,
            "environment": env,
            "labels": labels or {},
        },
        "spec": {"command": ["sleep", "60"], "replicas": replicas},
    }


def apply(c: httpx.Client, doc: dict[str, Any]) -> httpx.Response:
    return c.post("/api/v1/apply", json=doc)


def applied(c: httpx.Client, doc: dict[str, Any]) -> dict[str, Any]:
    r = apply(c, doc)
    assert r.status_code in (200, 201), r.text
    body: dict[str, Any] = r.json()
    return body


def violations(c: httpx.Client, team: str | None = None, **params: Any) -> list[dict[str, Any]]:
    r = c.get(f"/api/v1/teams/{team or TEAM}/violations", params=params)
    assert r.status_code == 200, r.text
    assert r.json()["kind"] == "ViolationList"
    items: list[dict[str, Any]] = r.json()["items"]
    return items


def wait_for(condition: Any, what: str) -> None:
    """Poll ``condition`` with a generous give-up bound (the server works in the background)."""
    for _ in range(600):
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what}: not met")


REQUIRE_OWNER = """
const labels = request.object.metadata.labels || {};
if (!labels.owner) {
  deny(`app ${request.name} has no owner label`, "MissingOwner");
}
"""


# --- validating: deny, warn, dry -----------------------------------------------------------


def test_a_validating_policy_denies_with_its_message_and_name(server: RunningServer) -> None:
    make_team(server)
    with server.client() as c:
        applied(c, policy("require-owner", REQUIRE_OWNER))
        r = apply(c, app("api"))
        assert r.status_code == 403
        status = r.json()
        assert status["kind"] == "Status"
        assert status["reason"] == "Forbidden"
        assert status["policy"] == "require-owner"
        assert "app api has no owner label" in status["message"]
        assert "require-owner" in status["message"]
        assert c.get(f"/api/v1/teams/{TEAM}/environments/dev/apps/api").status_code == 404
        assert apply(c, app("api", labels={"owner": "ana"})).status_code == 201
        # The route a resource is created on is held to the same policies as /apply.
        r = c.post(f"/api/v1/teams/{TEAM}/environments/dev/apps", json=app("web"))
        assert r.status_code == 403 and r.json()["policy"] == "require-owner"
        found = violations(c)
        assert [(v["policy"], v["action"], v["name"]) for v in found] == [
            ("require-owner", "deny", "web"),
            ("require-owner", "deny", "api"),
        ]
        assert found[1]["reason"] == "MissingOwner"
        assert found[1]["user"] == "admin"
        assert found[1]["environment"] == "dev"
        assert found[1]["operation"] == "CREATE"


def test_warn_allows_with_warnings_in_the_body_and_a_warning_header(
    server: RunningServer,
) -> None:
    make_team(server)
    with server.client() as c:
        applied(c, policy("big", "if (request.object.spec.replicas > 3) warn('more than 3')"))
        applied(c, policy("owner-warn", REQUIRE_OWNER, violationPolicy="Warn"))
        r = apply(c, app("api", replicas=5))
        assert r.status_code == 201, r.text
        warnings = r.json()["warnings"]
        assert "[big] more than 3" in warnings
        assert "[owner-warn] app api has no owner label" in warnings
        assert "[big] more than 3" in r.headers["Warning"]
        assert r.headers["Warning"].startswith('299 - "')
        assert c.get(f"/api/v1/teams/{TEAM}/environments/dev/apps/api").status_code == 200
        assert [(v["policy"], v["action"]) for v in violations(c)] == [("owner-warn", "warn")]


def test_dry_allows_silently_and_records(server: RunningServer) -> None:
    make_team(server)
    with server.client() as c:
        applied(c, policy("owner-dry", REQUIRE_OWNER, violationPolicy="Dry"))
        r = apply(c, app("api"))
        assert r.status_code == 201
        assert r.json()["warnings"] == []
        assert "Warning" not in r.headers
        found = violations(c, policy="owner-dry")
        assert [(v["action"], v["message"]) for v in found] == [
            ("dry", "app api has no owner label")
        ]
        # A dry-run request stores nothing, and records nothing either.
        r = c.post("/api/v1/apply", params={"dryRun": "true"}, json=app("web"))
        assert r.status_code == 201
        assert len(violations(c, policy="owner-dry")) == 1


# --- mutating ------------------------------------------------------------------------------


def test_mutations_are_stored_in_priority_order_before_validation(server: RunningServer) -> None:
    make_team(server)
    with server.client() as c:
        # Named so that alphabetical order would be the wrong one: priority decides.
        first = """
        const o = request.object;
        o.metadata.labels = {...(o.metadata.labels || {}), owner: "platform", step: "1"};
        mutate(o);
        """
        second = """
        const o = request.object;
        o.metadata.annotations = {...(o.metadata.annotations || {}),
                                  seen: o.metadata.labels.step || "none"};
        o.metadata.labels.step = "2";
        mutate(o);
        """
        applied(c, policy("z-first", first, type="Mutating", priority=1))
        applied(c, policy("a-second", second, type="Mutating", priority=2))
        # Validating policies see the mutated object: the owner label is there by then.
        applied(c, policy("require-owner", REQUIRE_OWNER))
        body = applied(c, app("api"))
        assert body["result"] == "created"
        stored = c.get(f"/api/v1/teams/{TEAM}/environments/dev/apps/api").json()
        assert stored["metadata"]["labels"] == {"owner": "platform", "step": "2"}
        assert stored["metadata"]["annotations"] == {"seen": "1"}
        assert violations(c) == []


# --- failures: time, memory, syntax --------------------------------------------------------


@pytest.mark.slow
def test_failure_policy_on_an_infinite_loop_and_a_huge_allocation(server: RunningServer) -> None:
    make_team(server, TEAM, "loop", "hog", "loop-ignored", "hog-ignored")
    spin = "while (true) {}"
    hog = "const a = []; for (;;) a.push('y'.repeat(65536) + a.length);"
    with server.client() as c:
        applied(c, policy("spin", spin, timeoutSeconds=1, environments=["loop"]))
        applied(c, policy("hog", hog, environments=["hog"]))
        applied(
            c,
            policy(
                "spin-ignored",
                spin,
                timeoutSeconds=1,
                failurePolicy="Ignore",
                environments=["loop-ignored"],
            ),
        )
        applied(
            c,
            policy("hog-ignored", hog, failurePolicy="Ignore", environments=["hog-ignored"]),
        )
        r = apply(c, app("a", env="loop"))
        assert r.status_code == 403
        assert r.json()["policy"] == "spin"
        assert "exceeded its time limit of 1s" in r.json()["message"]
        r = apply(c, app("b", env="hog"))
        assert r.status_code == 403
        assert r.json()["policy"] == "hog"
        assert "exceeded its memory limit" in r.json()["message"]
        assert apply(c, app("c", env="loop-ignored")).status_code == 201
        assert apply(c, app("d", env="hog-ignored")).status_code == 201
        reasons = {v["policy"]: v["reason"] for v in violations(c)}
        assert reasons == {"spin": "Timeout", "hog": "MemoryLimit"}


def test_a_syntax_error_is_refused_at_apply_with_line_and_column(server: RunningServer) -> None:
    make_team(server)
    with server.client() as c:
        broken = "const a = 1;\nif (a > 0 {\n  deny('x');\n}\n"
        r = apply(c, policy("broken", broken))
        assert r.status_code == 422
        status = r.json()
        assert status["field"] == "spec.javascript"
        assert "line 2, column" in status["message"]
        assert "SyntaxError" in status["message"]
        assert c.get(f"/api/v1/teams/{TEAM}/policies/broken").status_code == 404


# --- what a script can see -----------------------------------------------------------------


def test_get_and_list_see_the_team_and_not_another_team(server: RunningServer) -> None:
    make_team(server, TEAM)
    make_team(server, OTHER)
    script = """
    const db = get("Config", "kled.io/v1", "dev/db");
    const apps = list("App", "kled.io/v1", {namespace: "dev"});
    const names = apps.map(a => a.metadata.name).sort().join(",");
    deny(`db=${db ? db.data.url : "none"} apps=${names}`);
    """
    with server.client() as c:
        for team, url in ((TEAM, "mine"), (OTHER, "theirs")):
            cfg = {
                "kind": "Config",
                "metadata": {"name": "db", "team": team, "environment": "dev"},
                "data": {"url": url},
            }
            applied(c, cfg)
        applied(c, app("ours"))
        applied(c, app("theirs", team=OTHER))
        applied(c, policy("peek", script, operations=["CREATE"]))
        r = apply(c, app("new"))
        assert r.status_code == 403
        assert "db=mine apps=ours" in r.json()["message"]


def test_user_info_names_who_asks(server: RunningServer) -> None:
    make_team(server)
    mia = make_user(server, TEAM, "mia", "member")
    script = """
    const u = request.userInfo;
    if (!u.groups.includes("kled:team:TEAM:owner")) {
      deny(`${u.username} (${u.groups.join(" ")}) may not create apps`);
    }
    """.replace("TEAM", TEAM)
    with server.client() as c:
        applied(c, policy("owners-only", script))
    with server.client(mia) as c:
        r = apply(c, app("api"))
        assert r.status_code == 403
        assert f"mia (kled:team:{TEAM}:member) may not create apps" in r.json()["message"]
    with server.client() as c:
        assert [v["user"] for v in violations(c)] == ["mia"]


# --- controller policies and reports -------------------------------------------------------


def test_a_controller_policy_rechecks_existing_and_changed_resources(
    server: RunningServer,
) -> None:
    make_team(server)
    audit = "if (request.object.spec.replicas > 2) deny(`${request.name} has too many replicas`)"
    with server.client() as c:
        applied(c, app("small", replicas=1))
        applied(c, app("big", replicas=5))
        applied(c, policy("replicas-audit", audit, type="Controller"))
        report_path = f"/api/v1/teams/{TEAM}/policies/replicas-audit/report"

        def names() -> list[str]:
            r = c.get(report_path)
            assert r.status_code == 200, r.text
            return [v["name"] for v in r.json()["items"]]

        wait_for(lambda: names() == ["big"], "the audit finds the existing app")
        # Nothing is refused: the Controller policy only reports.
        assert apply(c, app("small", replicas=4)).status_code == 200
        wait_for(lambda: names() == ["small", "big"], "the changed app is re-checked")
        # A status write (controllers make them all the time) is not a change to re-check:
        # the feed is in event order, so once "huge" is reported, "big"'s status was seen.
        r = c.put(f"/api/v1/teams/{TEAM}/environments/dev/apps/big/status", json={"phase": "X"})
        assert r.status_code == 200, r.text
        applied(c, app("huge", replicas=9))
        wait_for(lambda: names()[:1] == ["huge"], "the new app is checked")
        assert names() == ["huge", "small", "big"]
        report = c.get(report_path).json()
        assert report["kind"] == "PolicyReport"
        assert report["policy"]["metadata"]["name"] == "replicas-audit"
        first = report["items"][1]
        assert first["action"] == "deny"
        assert first["message"] == "small has too many replicas"
        assert first["user"] == "kled:policy-controller"


@pytest.mark.slow
def test_reports_filter_by_policy_and_stay_bounded(server: RunningServer) -> None:
    make_team(server)
    make_team(server, OTHER)
    with server.client() as c:
        applied(c, policy("always", "deny('no ' + request.name)"))
        applied(c, policy("never", "allow()"))
        applied(c, policy("always", "deny('nope')", team=OTHER))
        for n in range(105):
            assert apply(c, app(f"a{n}")).status_code == 403
        assert apply(c, app("x", team=OTHER)).status_code == 403
        everything = violations(c, limit=1000)
        assert len(everything) == 100  # each policy keeps its newest 100
        assert everything[0]["message"] == "no a104"
        assert everything[-1]["message"] == "no a5"
        assert len(violations(c, limit=10)) == 10
        for bad in (0, 1001):
            r = c.get(f"/api/v1/teams/{TEAM}/violations", params={"limit": bad})
            assert r.status_code == 422 and r.json()["field"] == "query.limit"
        assert violations(c, policy="never") == []
        report = c.get(f"/api/v1/teams/{TEAM}/policies/always/report", params={"limit": 3})
        assert [v["name"] for v in report.json()["items"]] == ["a104", "a103", "a102"]
        assert [v["message"] for v in violations(c, OTHER)] == ["nope"]
        missing = c.get(f"/api/v1/teams/{TEAM}/policies/nope/report")
        assert missing.status_code == 404


def test_other_teams_cannot_read_the_report(server: RunningServer) -> None:
    make_team(server)
    make_team(server, OTHER)
    stranger = make_user(server, OTHER, "sam", "owner")
    viewer = make_user(server, TEAM, "vic", "viewer")
    with server.client() as c:
        applied(c, policy("always", "deny('no')"))
        apply(c, app("a"))
    with server.client(stranger) as c:
        assert c.get(f"/api/v1/teams/{TEAM}/violations").status_code == 404
        assert c.get(f"/api/v1/teams/{TEAM}/policies/always/report").status_code == 404
    with server.client(viewer) as c:
        assert [v["name"] for v in violations(c)] == ["a"]


def test_metrics_count_policy_runs(server: RunningServer) -> None:
    make_team(server)
    with server.client() as c:
        applied(c, policy("metered", "deny('no')"))
        for _ in range(3):
            apply(c, app("api"))
        text = c.get("/metrics").text
    series = f'kled_policy_executions_total{{policy="{TEAM}/metered",result="deny"}}'
    line = next(ln for ln in text.splitlines() if ln.startswith(series))
    # The registry is the process's: other tests' servers in this process add to it.
    assert float(line.split()[-1]) >= 3
    assert f'kled_policy_duration_seconds_count{{policy="{TEAM}/metered"}}' in text


# --- a runaway policy under load -----------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "runaway",
    ["while (true) {}", "const a = []; for (;;) a.push('y'.repeat(65536) + a.length);"],
    ids=["infinite-loop", "huge-allocation"],
)
def test_a_runaway_policy_does_not_stall_other_requests(
    server: RunningServer, runaway: str
) -> None:
    make_team(server, TEAM, "slow", "fast")
    with server.client() as c:
        applied(c, policy("runaway", runaway, timeoutSeconds=5, environments=["slow"]))
        # The other environment's writes also go through a policy, so through the workers.
        applied(c, policy("require-owner", REQUIRE_OWNER, environments=["fast"]))
    outcome: dict[str, Any] = {}

    def stuck() -> None:
        with server.client() as c:
            outcome["response"] = apply(c, app("stuck", env="slow"))

    blocker = threading.Thread(target=stuck)
    blocker.start()
    time.sleep(0.3)  # let the runaway take its worker

    def one(n: int) -> int:
        with server.client() as c:
            return apply(c, app(f"app-{n}", env="fast", labels={"owner": "ana"})).status_code

    health: list[int] = []
    with ThreadPoolExecutor(50) as pool:
        futures = [pool.submit(one, n) for n in range(50)]
        while not all(f.done() for f in futures):
            health.append(httpx.get(f"{server.url}/healthz", timeout=30).status_code)
            time.sleep(0.05)
        codes = [f.result() for f in futures]
    blocker.join(60)
    assert codes.count(201) == 50
    assert health and set(health) == {200}
    response = outcome["response"]
    assert response.status_code == 403
    assert response.json()["policy"] == "runaway"
    with server.client() as c:
        items = c.get(f"/api/v1/teams/{TEAM}/environments/fast/apps").json()["items"]
        assert len(items) == 50
