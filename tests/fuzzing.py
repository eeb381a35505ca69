"""Schemathesis over the whole OpenAPI document of a running control plane.

Shared by ``tests/integration/test_openapi_fuzz.py`` and ``bench/fuzz.py``. It seeds one team
with an object of every kind (so that paths resolve and writes reach admission, not only
404), then, for every operation of ``/openapi.json``, draws positive and negative cases with
hypothesis — once with the seeded names in the path, once with any — sends each with the
server administrator's token, and checks the answer: never 5xx, status code, content type
and body as documented. Streams are asked for as plain answers (``watch``/``follow`` off):
a fuzzer cannot tell a stream that never ends from a hung server.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import hypothesis
import requests
import schemathesis
from hypothesis import HealthCheck, Phase
from hypothesis.strategies import SearchStrategy
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from schemathesis.core.result import Err

TEAM = "fuzz"
ENV = "dev"
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]
#: the name of the seeded object of each kind, by plural
SEEDED = {
    "teams": TEAM,
    "users": "ann",
    "tokens": "ci",
    "devices": "laptop",
    "environments": ENV,
    "workspaces": "ws",
    "policies": "no-latest",
    "clusters": "c1",
    "apps": "api",
    "managedservices": "db",
    "configs": "cfg",
    "secrets": "pw",
    "intercepts": "icpt",
}
#: query parameters that turn an answer into an endless stream
STREAMS = {"watch": "false", "follow": "false"}


def _doc(kind: str, name: str, spec: dict[str, Any], env: bool = False) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "team": TEAM}
    if env:
        meta["environment"] = ENV
    return {"apiVersion": "kled.io/v1", "kind": kind, "metadata": meta, "spec": spec}


def seed(base_url: str, token: str) -> str | None:
    """One object of each kind in team ``fuzz`` (environment ``dev``).

    Returns the secret of Token ``ci``: user ``ann``'s, a member of the team.
    """
    app = {"runtime": "process", "command": ["sleep", "60"], "ports": [{"port": 80}]}
    docs = [
        {"apiVersion": "kled.io/v1", "kind": "Team", "metadata": {"name": TEAM}, "spec": {}},
        _doc("Environment", ENV, {}),
        _doc("User", "ann", {"role": "member"}),
        _doc("Token", "ci", {"user": "ann", "ttl": "1h"}),
        _doc("Device", "laptop", {"owner": "ann"}),
        _doc("Workspace", "ws", {"source": {"path": "/tmp"}}),
        _doc("Cluster", "c1", {}),
        _doc(
            "Policy",
            "no-latest",
            {"resources": ["clusters"], "javascript": "allow()"},
        ),
        _doc("App", "api", app, env=True),
        _doc("ManagedService", "db", {"template": "postgres"}, env=True),
        _doc("Intercept", "icpt", {"app": "api", "device": "laptop"}, env=True),
    ]
    cfg = {"apiVersion": "kled.io/v1", "kind": "Config", "data": {"a": "1"}}
    cfg["metadata"] = {"name": "cfg", "team": TEAM, "environment": ENV}
    secret = {"apiVersion": "kled.io/v1", "kind": "Secret", "stringData": {"pw": "x"}}
    secret["metadata"] = {"name": "pw", "team": TEAM, "environment": ENV}
    docs += [cfg, secret]
    member = None
    with httpx.Client(base_url=base_url, headers={"Authorization": f"Bearer {token}"}) as c:
        for doc in docs:
            r = c.post("/api/v1/apply", json=doc)
            if doc["kind"] == "Token" and r.status_code == 201:
                member = r.json().get("token")
            if r.status_code >= 300:
                # a seed refused is a missing path, not a failure of the fuzz: say so
                print(f"seed {doc['kind']}/{doc['metadata']['name']}: {r.status_code} {r.text}")
    return member


@dataclass
class Finding:
    operation: str
    status: int | None
    problem: str
    request: str


@dataclass
class Report:
    operations: int = 0
    covered: set[str] = field(default_factory=set)
    requests: int = 0
    server_errors: int = 0
    violations: int = 0
    transport_errors: int = 0
    seconds: float = 0.0
    findings: list[Finding] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {
            "operations_covered": len(self.covered),
            "operations_total": self.operations,
            "coverage_percent": round(100 * len(self.covered) / max(self.operations, 1), 1),
            "requests": self.requests,
            "responses_5xx": self.server_errors,
            "schema_violations": self.violations,
            "transport_errors": self.transport_errors,
            "seconds": round(self.seconds, 1),
        }


def _order(label: str) -> tuple[int, str]:
    # Deletes last, the team's own last of all, so that the writes before them find the
    # seeded objects still there.
    method, path = label.split(" ", 1)
    return (2 if path == "/api/v1/teams/{team}" else 1 if method == "DELETE" else 0, label)


def _seeded_path(path: str) -> dict[str, str]:
    values: dict[str, str] = {}
    if "{team}" in path:
        values["team"] = TEAM
    if "{env}" in path:
        values["env"] = ENV
    if "{name}" in path:
        plural = path.split("/{name}")[0].rsplit("/", 1)[-1]
        if plural in SEEDED:
            values["name"] = SEEDED[plural]
    return values


def run(
    base_url: str,
    token: str,
    *,
    max_examples: int = 10,
    budget_seconds: float = 240.0,
    seed_value: int = 0,
    on_operation: Callable[[str], None] | None = None,
) -> Report:
    """Fuzz every operation of ``base_url``'s OpenAPI document; never raises on a finding."""
    report = Report()
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = []
    for result in schema.get_all_operations():
        if isinstance(result, Err):
            raise result.err()  # a document schemathesis cannot read is a failure of its own
        operations.append(result.ok())
    operations.sort(key=lambda op: _order(op.label))
    report.operations = len(operations)
    sender = _Sender(base_url, token, report)
    per_operation = budget_seconds / max(len(operations), 1)

    for operation in operations:
        if on_operation:
            on_operation(operation.label)
        # An operation may take twice its share while the whole run keeps to its budget;
        # past either, an operation not yet reached still gets its one case.
        deadline = min(time.monotonic() + per_operation * 2, started + budget_seconds)
        streams = {
            p.name: STREAMS[p.name]
            for p in operation.query
            if p.name in STREAMS  # type: ignore[attr-defined]
        }
        seeded = _seeded_path(operation.path)
        variants: list[tuple[GenerationMode, dict[str, Any]]] = [
            (GenerationMode.POSITIVE, {}),
            (GenerationMode.NEGATIVE, {}),
        ]
        if seeded and not operation.path.endswith("/wireguard/watch"):
            variants[:0] = [(GenerationMode.POSITIVE, seeded), (GenerationMode.NEGATIVE, seeded)]
        for mode, path_parameters in variants:
            if time.monotonic() > deadline and operation.label in report.covered:
                break
            kwargs: dict[str, Any] = {"query": streams} if streams else {}
            if path_parameters:
                kwargs["path_parameters"] = path_parameters
            try:
                strategy = operation.as_strategy(generation_mode=mode, **kwargs)
            except Exception as e:  # e.g. nothing negative to generate for this operation
                report.findings.append(Finding(operation.label, None, f"strategy: {e}", ""))
                continue
            send = functools.partial(sender.send, label=operation.label, deadline=deadline)
            with contextlib.suppress(hypothesis.errors.Unsatisfiable):
                # Unsatisfiable: e.g. nothing to make negative with the seeded path fixed
                _draw(strategy, max_examples, seed_value, send)
    report.seconds = time.monotonic() - started
    return report


def _draw(
    strategy: SearchStrategy[schemathesis.Case[Any]],
    max_examples: int,
    seed_value: int,
    send: Callable[[schemathesis.Case[Any]], None],
) -> None:
    """Send up to ``max_examples`` cases drawn from ``strategy``, without shrinking."""

    @hypothesis.settings(
        max_examples=max_examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
        verbosity=hypothesis.Verbosity.quiet,
    )
    @hypothesis.seed(seed_value)
    @hypothesis.given(case=strategy)
    def each(case: schemathesis.Case[Any]) -> None:
        send(case)

    each()


class _Sender:
    """Sends a case with the token, and counts and checks what came back."""

    def __init__(self, base_url: str, token: str, report: Report) -> None:
        self.base_url = base_url
        self.headers = {"Authorization": f"Bearer {token}"}
        self.session = requests.Session()
        self.report = report

    def send(self, case: schemathesis.Case[Any], *, label: str, deadline: float) -> None:
        report = self.report
        if time.monotonic() > deadline and label in report.covered:
            return
        report.requests += 1
        try:
            response = case.call(
                base_url=self.base_url, session=self.session, headers=self.headers, timeout=15
            )
        except requests.RequestException as e:
            report.transport_errors += 1
            report.findings.append(Finding(label, None, f"transport: {e}", ""))
            return
        report.covered.add(label)
        if response.status_code >= 500:
            report.server_errors += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=self.headers)
        except BaseExceptionGroup as group:
            for failure in group.exceptions:
                _record(report, label, response.status_code, failure, case)
        except AssertionError as failure:
            _record(report, label, response.status_code, failure, case)


def _record(
    report: Report, label: str, status: int, failure: BaseException, case: schemathesis.Case[Any]
) -> None:
    title = getattr(failure, "title", type(failure).__name__)
    if title != "Server error":
        report.violations += 1
    request = (
        f"{case.method} {case.formatted_path} query={case.query} headers={case.headers}"
        f" body={_short(case.body)}"
    )
    report.findings.append(Finding(label, status, f"{title}: {failure}"[:600], request))


def _short(body: Any) -> str:
    text = repr(body)
    return text if len(text) < 300 else text[:300] + "…"
