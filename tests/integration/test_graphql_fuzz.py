"""GraphQL at ``/graphql`` fuzzed as REST is (``test_openapi_fuzz``): no request breaks it.

hypothesis-graphql draws queries and mutations from the server's own schema — valid ones and
ones with a schema violation — as a team member and as the server administrator, against a
team seeded with an object of every kind (``fuzzing.seed``). Strings are mostly names that
exist (kinds, the seeded team, environment and objects) so that calls reach the service, not
only ``NOT_FOUND``; the JSON scalar is a resource document or any JSON. Every answer must be
below 500, every error one of Kled's (``extensions.code``) or a refusal of the query
itself (parse, validation, limits: no ``path``), and no fault logged by the server (an error
with a traceback). Bounded in examples and time.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import graphql
import httpx
import hypothesis
import pytest
from hypothesis import HealthCheck, Phase
from hypothesis import strategies as st
from hypothesis_graphql import Mode, mutations, queries
from hypothesis_graphql import nodes as gql

import fuzzing
from kled.api.graphql import schema
from kled.resources.registry import KINDS
from servers import RunningServer

#: seconds for each of the eight runs (2 users, queries or mutations, valid or not)
BUDGET = 5.0
EXAMPLES = 60

NAMES = sorted({*fuzzing.SEEDED.values(), "nosuch", ""})
KIND_NAMES = sorted({n for k in KINDS for n in (k.kind, k.plural)} | {"Widget"})
#: what a string argument is drawn from, so that most calls name things that exist
WORDS = [*NAMES, *KIND_NAMES * 3, *[fuzzing.TEAM, fuzzing.ENV] * 12]


def _text() -> st.SearchStrategy[str]:
    return st.sampled_from(WORDS) | st.sampled_from(WORDS) | st.sampled_from(WORDS) | st.text()


def _json() -> st.SearchStrategy[Any]:
    keys = st.from_regex(r"\A[_A-Za-z][_0-9A-Za-z]{0,8}\Z")
    leaves = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | _text()
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
        max_leaves=12,
    )


def _document() -> st.SearchStrategy[Any]:
    """A resource document aimed at the seeded team, or any JSON at all."""
    metadata = st.fixed_dictionaries(
        {"name": st.sampled_from(NAMES)},
        optional={
            "team": st.sampled_from([fuzzing.TEAM, "nosuch"]),
            "environment": st.sampled_from([fuzzing.ENV, "nosuch"]),
            "labels": _json(),
            "resourceVersion": st.sampled_from(["1", "x", "99999999"]),
        },
    )
    resource = st.fixed_dictionaries(
        {"kind": st.sampled_from(KIND_NAMES), "metadata": metadata},
        optional={
            "apiVersion": st.sampled_from(["kled.io/v1", "v2"]),
            "spec": _json(),
            "data": _json(),
            "stringData": _json(),
            "status": _json(),
        },
    )
    return resource | _json()


def _node(value: Any) -> graphql.ValueNode:
    if value is None:
        return gql.Null
    if isinstance(value, bool):
        return gql.Boolean(value)
    if isinstance(value, int):
        return gql.Int(value)
    if isinstance(value, float):
        return gql.Float(value)
    if isinstance(value, str):
        return gql.String(value)
    if isinstance(value, list):
        return gql.List([_node(v) for v in value])
    return gql.Object(
        [
            graphql.ObjectFieldNode(name=graphql.NameNode(value=k), value=_node(v))
            for k, v in value.items()
        ]
    )


SCALARS = {"String": _text().map(gql.String), "JSON": _document().map(_node)}


def _problems(response: httpx.Response, query: str) -> list[str]:
    where = f"{query[:300]!r} → {response.status_code}"
    if response.status_code >= 500:
        return [f"{where}: {response.text[:300]}"]
    if response.status_code != 200:
        return []  # a refusal of the request itself (400 bad JSON, 413, …)
    problems = []
    for error in response.json().get("errors") or []:
        if "path" in error and not (error.get("extensions") or {}).get("code"):
            problems.append(f"{where}: internal error {error.get('message')!r}")
    return problems


def _fuzz(
    strategy: st.SearchStrategy[Any], send: Callable[[str], list[str]], found: list[str]
) -> int:
    """Send up to ``EXAMPLES`` documents drawn from ``strategy`` for ``BUDGET`` seconds."""
    deadline = time.monotonic() + BUDGET
    sent = 0

    @hypothesis.settings(
        max_examples=EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @hypothesis.given(query=strategy)
    def each(query: str) -> None:
        nonlocal sent
        if time.monotonic() < deadline:
            sent += 1
            found.extend(send(query))

    each()
    return sent


@pytest.mark.slow
def test_graphql_fuzz_as_member_and_admin_finds_no_server_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    server = RunningServer(tmp_path, None).start()
    found: list[str] = []
    sent = 0
    try:
        sdl = schema.as_str()
        member = fuzzing.seed(server.url, server.admin_token)
        assert member, "the seed issues the member's token"
        for who in ("member", "admin"):
            for build in (queries, mutations):
                for mode in (Mode.POSITIVE, Mode.NEGATIVE):
                    fuzzing.seed(server.url, server.admin_token)  # what a delete removed
                    token = member if who == "member" else server.admin_token
                    with httpx.Client(
                        base_url=server.url,
                        headers={"Authorization": f"Bearer {token}"},
                        timeout=15,
                    ) as client:

                        def send(query: str, client: httpx.Client = client) -> list[str]:
                            return _problems(client.post("/graphql", json={"query": query}), query)

                        strategy = build(sdl, custom_scalars=SCALARS, mode=mode)
                        sent += _fuzz(strategy, send, found)
    finally:
        server.stop()
    assert sent >= 100
    assert found == [], "\n".join(found[:20])
    # a fault of the server is logged as an error even when the answer looks like a refusal
    faults = [
        f"{r.name}: {r.getMessage()}"
        for r in caplog.records
        if r.levelno >= logging.ERROR and r.name.startswith(("kled.api", "strawberry"))
    ]
    assert faults == [], faults[:5]
