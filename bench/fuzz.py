"""Schemathesis over the whole OpenAPI document: coverage, server errors, schema violations.

Starts a control plane (with its embedded NATS, so that log and device routes answer for
real) in a thread, seeds team ``fuzz`` with an object of every kind, and fuzzes every
operation of ``/openapi.json`` with positive and negative cases (``tests/fuzzing.py``).
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
            fuzzing.seed(server.url, server.admin_token)
            report = fuzzing.run(
                server.url,
                server.admin_token,
                max_examples=args.examples,
                budget_seconds=args.budget,
                seed_value=args.seed,
            )
        finally:
            server.stop()
    for finding in report.findings:
        print(
            f"{finding.operation} -> {finding.status}: {finding.problem} [{finding.request}]",
            file=sys.stderr,
        )
    result = {
        "bench": "fuzz",
        "tool": "schemathesis",
        "examples_per_operation_and_mode": args.examples,
        **report.summary(),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
