"""JSONC as devcontainer.json is written: comments, trailing commas, and errors that say
where (file, line, property) in one line."""

from __future__ import annotations

from pathlib import Path

import pytest

from kled.errors import InvalidInput
from kled.workspace import jsonc
from kled.workspace.jsonc import ConfigError

SAMPLE = """// The dev container of the shop
{
    "name": "shop", // trailing comment
    /* a block
       comment */
    "build": {
        "dockerfile": "Dockerfile",
        "args": {"VERSION": "3.12",},
    },
    "forwardPorts": [8080, "db:5432",],
    "url": "http://example.com/* not a comment */",
    "escaped": "tab\\tquote\\" \\u00e9 \\ud83d\\ude00",
}
"""


def test_comments_and_trailing_commas_parse_to_plain_values() -> None:
    doc = jsonc.parse(SAMPLE, source="devcontainer.json")
    assert doc.value == {
        "name": "shop",
        "build": {"dockerfile": "Dockerfile", "args": {"VERSION": "3.12"}},
        "forwardPorts": [8080, "db:5432"],
        "url": "http://example.com/* not a comment */",
        "escaped": 'tab\tquote" \u00e9 \U0001f600',
    }


def test_every_value_knows_its_line() -> None:
    doc = jsonc.parse(SAMPLE)
    assert doc.line_of(["name"]) == 3
    assert doc.line_of(["build"]) == 6
    assert doc.line_of(["build", "args", "VERSION"]) == 8
    assert doc.line_of(["forwardPorts", 1]) == 10
    # a property that was never written: the line of its nearest written ancestor
    assert doc.line_of(["build", "target"]) == 6


@pytest.mark.parametrize(
    ("text", "line", "field", "words"),
    [
        ('{\n  "a": 1,,\n}', 2, None, "expected a property name"),
        ('{\n  "build": {\n    "args": {"X": tru}\n  }\n}', 3, "build.args.X", "'tru'"),
        ('{\n  "image" "debian"\n}', 2, "image", "expected ':'"),
        ('{\n  "a": [1 2]\n}', 2, "a", "expected ',' or ']'"),
        ('{\n  "image": "x"\n  "name": "y"\n}', 3, "image", "found '\"name\"' (a missing comma?)"),
        ('{\n  "a": "open\n}', 2, "a", "never closed"),
        ('{\n  "a": 01\n}', 2, "a", "invalid number '01'"),
        ('{\n  "a": 1\n}\n}', 4, None, "after the end of the document"),
        ("{ /* never closed", 1, None, "comment"),
        ("  \n// only a comment\n", 3, None, "empty document"),
        ("{\n  'a': 1\n}", 2, None, "double quotes"),
    ],
)
def test_syntax_errors_name_file_line_and_property(
    text: str, line: int, field: str | None, words: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        jsonc.parse(text, source=".devcontainer/devcontainer.json")
    error = caught.value
    assert error.line == line
    assert error.field == field
    assert words in error.message
    rendered = str(error)
    assert rendered.startswith(f".devcontainer/devcontainer.json:{line}: ")
    if field:
        assert f":{line}: {field}: " in rendered
    assert "\n" not in rendered
    assert isinstance(error, InvalidInput)  # the CLI exits 2 on it


def test_repeated_keys_last_wins_and_bom_is_ignored() -> None:
    assert jsonc.parse('\ufeff{"a": 1, "a": 2}').value == {"a": 2}


def test_numbers_keep_their_json_types() -> None:
    doc = jsonc.parse('{"i": -12, "f": 1.5, "e": 2e3, "t": true, "n": null}')
    assert doc.value == {"i": -12, "f": 1.5, "e": 2000.0, "t": True, "n": None}
    assert isinstance(doc.value["i"], int)


def test_load_names_the_file_it_could_not_read(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.json: no such file"):
        jsonc.load(tmp_path / "missing.json", source="missing.json")
    bad = tmp_path / "latin1.json"
    bad.write_bytes(b'{"a": "\xe9"}')
    with pytest.raises(ConfigError, match="not UTF-8"):
        jsonc.load(bad)
