"""Schemathesis over the whole OpenAPI document: coverage, server errors, schema violations.

Starts a control plane (with its embedded NATS, so that log and device routes answer for
real) in a thread, seeds team ``fuzz`` with an object of every kind, and fuzzes every
operation of ``/openapi.json`` with positive and negative cases (``tests/fuzzing.py``),
first with a team member's token, then with the server administrator's (half the budget
each).
Goal: 100 % of operations covered, 0 responses >= 500, 0 schema violations. Prints one JSON
document on stdout; the findings, if any, go to stderr.

    python bench/fuzz.py [--examples 25] [--budget 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import fuzzing
from servers import RunningServer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--examples", type=int, default=25, help="cases per operation and mode")
    parser.add_argument("--budget", type=float, default=400.0, help="seconds for the whole run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    # the fuzz makes the server log every refusal; the JSON on stdout is the result
    logging.disable(logging.WARNING)
    with tempfile.TemporaryDirectory(prefix="kled-fuzz-") as tmp:
        server = RunningServer(Path(tmp), None, embedded_nats=True).start()
        try:
            member = fuzzing.seed(server.url, server.admin_token)
            # The member first: the administrator's run ends by deleting the team.
            tokens = [("member", member)] if member else []
            tokens.append(("admin", server.admin_token))
            reports = {
                role: fuzzing.run(
                    server.url,
                    token,
                    max_examples=args.examples,
                    budget_seconds=args.budget / len(tokens),
                    seed_value=args.seed,
                )
                for role, token in tokens
            }
        finally:
            server.stop()
    for role, report in reports.items():
        for f in report.findings:
            line = f"[{role}] {f.operation} -> {f.status}: {f.problem} [{f.request}]"
            print(line, file=sys.stderr)
    covered = set().union(*(r.covered for r in reports.values()))
    total = max(r.operations for r in reports.values())
    result = {
        "bench": "fuzz",
        "tool": "schemathesis",
        "examples_per_operation_and_mode": args.examples,
        "operations_covered": len(covered),
        "operations_total": total,
        "coverage_percent": round(100 * len(covered) / max(total, 1), 1),
        **{
            key: sum(r.summary()[key] for r in reports.values())
            for key in ("requests", "responses_5xx", "schema_violations", "transport_errors")
        },
        "seconds": round(sum(r.seconds for r in reports.values()), 1),
        "by_token": {role: r.summary() for role, r in reports.items()},
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
