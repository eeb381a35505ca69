"""The policy library (``policies/``): every policy, on its own test cases, through the
real engine (real QuickJS in worker processes), exactly as ``kled policy test`` runs it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from kled.admission.policy.pool import WorkerPool
from kled.admission.policy.runtime import compile_check
from kled.cli.policy import evaluate
from kled.resources.loading import load_path

LIBRARY = Path(__file__).resolve().parents[2] / "policies"
CASES = LIBRARY / "tests"


def _cases() -> list[Any]:
    found = []
    for path in sorted(CASES.glob("*.yaml")):
        suite = yaml.safe_load(path.read_text())
        for case in suite["cases"]:
            found.append(pytest.param(suite, case, id=f"{path.stem}: {case['name']}"))
    return found


@pytest_asyncio.fixture(loop_scope="module", scope="module")
async def pool() -> AsyncIterator[WorkerPool]:
    shared = WorkerPool(size=2)
    await shared.start()
    yield shared
    await shared.close()


def test_every_library_policy_is_valid_and_has_tests() -> None:
    policies = sorted(LIBRARY.glob("*.yaml"))
    assert len(policies) >= 7
    for path in policies:
        [doc] = load_path(path)  # the schema's own validation
        assert doc["kind"] == "Policy"
        assert doc["metadata"]["name"] == path.stem
        compile_check(doc["spec"]["javascript"])
        suite = CASES / path.name
        assert suite.exists(), f"{path.name} has no test cases in policies/tests/"
        cases = yaml.safe_load(suite.read_text())["cases"]
        outcomes = {c["expect"]["allowed"] for c in cases}
        assert outcomes == {True, False}, f"{path.name}: test both an allowed and a denied case"


@pytest.mark.asyncio(loop_scope="module")
@pytest.mark.parametrize(("suite", "case"), _cases())
async def test_library_case(pool: WorkerPool, suite: dict[str, Any], case: dict[str, Any]) -> None:
    policies = load_path(LIBRARY / suite["policy"])
    verdict = await evaluate(
        policies,
        case["resource"],
        old=case.get("old"),
        operation=case.get("operation", "UPDATE" if case.get("old") else "CREATE"),
        user=case.get("user", "alice"),
        team="acme",
        existing=case.get("existing") or suite.get("existing") or [],
        pool=pool,
    )
    expect = case["expect"]
    assert verdict["allowed"] is expect["allowed"], verdict["message"]
    if "message" in expect:
        assert verdict["message"] == expect["message"]
    if "messageContains" in expect:
        assert expect["messageContains"] in verdict["message"]
    if "code" in expect:
        assert verdict["code"] == expect["code"]
    if not expect["allowed"]:
        assert verdict["policy"] == policies[0]["metadata"]["name"]
        assert verdict["violations"][0]["action"] == "deny"
