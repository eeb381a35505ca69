"""kled.yaml: valid files load, bad ones are one line naming the field path; globs."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from kled.cli.devconfig import DevTarget, check_roots, load, matches, target
from kled.errors import InvalidInput
from kled.sync.plan import Strategy

GOOD = {
    "dev": {
        "api": {
            "sync": [{"local": "./api", "remote": "/app", "exclude": [".git", "*.pyc"]}],
            "command": ["python", "-m", "api"],
            "onChange": {
                "restart": ["**/*.py"],
                "exec": [{"glob": "package.json", "run": "npm i"}],
            },
            "ports": ["8080:80"],
        }
    }
}


def _write(tmp_path: Path, doc: object) -> Path:
    path = tmp_path / "kled.yaml"
    path.write_text(yaml.safe_dump(doc))
    return path


def test_the_issue_example_loads(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    name, dev = target(load(path), None, path)
    assert name == "api" and dev.command == ["python", "-m", "api"]
    assert dev.sync[0].strategy_value() is Strategy.MIRROR_LOCAL
    assert dev.on_change.exec[0].run == "npm i" and dev.ports == ["8080:80"]


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"sync": []}, "dev.api.sync"),
        ({"sync": [{"local": ".", "remote": "/a/../b"}]}, "dev.api.sync[0].remote"),
        (
            {"sync": [{"local": ".", "remote": "/a", "strategy": "newest"}]},
            "dev.api.sync[0].strategy",
        ),
        ({"ports": ["80"]}, "dev.api.ports"),
        ({"ports": ["70000:80"]}, "dev.api.ports"),
        ({"onChange": {"restart": "*.py"}}, "dev.api.onChange.restart"),
        ({"comand": ["x"]}, "dev.api.comand"),
    ],
)
def test_a_bad_file_names_the_field(tmp_path: Path, change: dict[str, object], field: str) -> None:
    doc = {"dev": {"api": {**GOOD["dev"]["api"], **change}}}
    with pytest.raises(InvalidInput) as err:
        load(_write(tmp_path, doc))
    assert f"kled.yaml: {field}" in str(err.value) and "\n" not in str(err.value)


def test_an_app_the_file_does_not_name_is_bad_input(tmp_path: Path) -> None:
    path = _write(tmp_path, GOOD)
    with pytest.raises(InvalidInput, match=r"no dev\.web \(it has: api\)"):
        target(load(path), "web", path)


def test_not_yaml_and_a_missing_file_are_one_line(tmp_path: Path) -> None:
    path = tmp_path / "kled.yaml"
    path.write_text("dev: [unclosed\n")
    with pytest.raises(InvalidInput, match="not YAML"):
        load(path)
    with pytest.raises(InvalidInput, match="cannot read"):
        load(tmp_path / "missing.yaml")


@pytest.mark.parametrize(
    ("patterns", "paths", "expected"),
    [
        (["**/*.py"], ("app.py",), True),
        (["**/*.py"], ("pkg/deep/mod.py",), True),
        (["**/*.py"], ("notes.txt",), False),
        (["package.json"], ("web/package.json",), True),
        (["src/*.js"], ("src/a.js",), True),
        (["src/*.js"], ("lib/a.js",), False),
        ([], ("app.py",), False),
    ],
)
def test_change_globs(patterns: list[str], paths: tuple[str, ...], expected: bool) -> None:
    assert matches(patterns, paths) is expected


def _target(*remotes: str) -> DevTarget:
    return DevTarget.model_validate({"sync": [{"local": ".", "remote": r} for r in remotes]})


def _app(runtime: str = "process", working_dir: str | None = None, roots: str = "") -> dict:
    spec: dict[str, object] = {"runtime": runtime}
    if working_dir:
        spec["workingDir"] = working_dir
    annotations = {"kled.io/dev-sync-roots": roots} if roots else {}
    return {"metadata": {"name": "api", "annotations": annotations}, "spec": spec}


@pytest.mark.parametrize(
    ("remotes", "app"),
    [
        (("src", "./lib"), _app()),  # relative: in the replica's working dir
        (("/srv/api", "/srv/api/static"), _app(working_dir="/srv/api")),
        (("/data/cache",), _app(working_dir="/srv/api", roots="/tmp/x, /data")),
        (("/etc",), _app(runtime="container")),  # a container's own files
    ],
)
def test_sync_folders_inside_the_allowed_roots(remotes: tuple[str, ...], app: dict) -> None:
    check_roots("api", _target(*remotes), app, "kled.yaml")


@pytest.mark.parametrize(
    ("remotes", "app", "index", "where"),
    [
        (("/etc",), _app(), 0, "relative folders only, in its working dir"),
        (("src", "/srv/apiary"), _app(working_dir="/srv/api"), 1, "/srv/api"),
        (("/srv",), _app(working_dir="/srv/api", roots="/data"), 0, "/srv/api or /data"),
    ],
)
def test_a_sync_folder_outside_the_roots_is_one_line(
    remotes: tuple[str, ...], app: dict, index: int, where: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        check_roots("api", _target(*remotes), app, "kled.yaml")
    message = str(caught.value)
    assert message.startswith(
        f"kled.yaml: dev.api.sync[{index}].remote: {remotes[index]} is outside"
    )
    assert f"({where})" in message and "\n" not in message
