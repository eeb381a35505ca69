"""``kled apply`` sends a file's documents in one request and stops at the first refusal."""

from __future__ import annotations

from pathlib import Path

from clikit import Cli


def test_apply_of_many_documents_and_a_refused_one(admin: Cli, tmp_path: Path) -> None:
    admin.ok("team", "create", "ab-many")
    admin.ok("context", "set", "--team", "ab-many")
    docs = ["kind: Environment\napiVersion: kled.io/v1\nmetadata: {name: dev}\n"] + [
        f"kind: Config\napiVersion: kled.io/v1\nmetadata: {{name: c{i:03d}}}\ndata: {{N: '{i}'}}\n"
        for i in range(600)
    ]
    path = tmp_path / "many.yaml"
    path.write_text("---\n".join(docs))
    lines = admin.ok("apply", "-f", str(path), "-e", "dev").splitlines()
    assert lines[0] == "environment/dev created"
    assert lines[1:] == [f"config/c{i:03d} created" for i in range(600)]  # two requests
    assert len(admin.ok("get", "configs", "-e", "dev", "-o", "name").split()) == 600

    # refused by the server (no such environment): the same one line as a lone apply
    mixed = tmp_path / "mixed.yaml"
    head = "kind: Config\napiVersion: kled.io/v1\nmetadata: "
    mixed.write_text(
        f"{head}{{name: ok, environment: dev}}\ndata: {{}}\n---\n"
        f"{head}{{name: lost, environment: nope}}\ndata: {{}}\n---\n"
        f"{head}{{name: later, environment: dev}}\ndata: {{}}\n"
    )
    result = admin("apply", "-f", str(mixed))
    alone = admin("apply", "-f", "-", stdin=mixed.read_text().split("---\n")[1])
    assert result.code == alone.code == 1, result
    assert result.out.splitlines() == ["config/ok created"]
    assert result.err.strip() == alone.err.strip()
    assert "nope" in result.err
    got = admin.ok("get", "configs", "-e", "dev", "-o", "name").split()
    assert "config/ok" in got and "config/later" not in got
