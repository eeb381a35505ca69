"""Local features: metadata, options as environment, install order; remote ids refused."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from kled.workspace.devcontainer import ResolvedConfig, load_config
from kled.workspace.features import (
    FeatureUnavailable,
    resolve_features,
    safe_env_name,
    source_kind,
)
from kled.workspace.jsonc import ConfigError
from kled.workspace.properties import ShellCommand


def feature(ws: Path, name: str, **meta: Any) -> Path:
    folder = ws / ".devcontainer" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "devcontainer-feature.json").write_text(json.dumps({"id": name, **meta}))
    (folder / "install.sh").write_text("#!/bin/sh\n")
    return folder


def config(ws: Path, **props: Any) -> ResolvedConfig:
    path = ws / ".devcontainer" / "devcontainer.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"image": "debian:12", **props}))
    return load_config(ws, path, env={})


def order(ws: Path, **props: Any) -> list[str]:
    return [f.user_id for f in resolve_features(config(ws, **props))]


def test_options_become_upper_cased_env_with_defaults(tmp_path: Path) -> None:
    feature(
        tmp_path,
        "tools",
        version="1.2.0",
        options={
            "flavour": {"type": "string", "default": "slim", "enum": ["slim", "full"]},
            "with-docs": {"type": "boolean", "default": False},
            "install.path": {"type": "string", "default": "/opt"},
            "9lives": {"type": "string", "default": "cat"},
            "noDefault": {"type": "string"},
        },
        containerEnv={"TOOLS_HOME": "/opt/tools"},
        postCreateCommand="tools --init",
    )
    (f,) = resolve_features(
        config(tmp_path, features={"./tools": {"flavour": "full", "with-docs": True}})
    )
    assert f.id == "tools"
    assert f.version == "1.2.0"
    assert f.install_script == tmp_path / ".devcontainer" / "tools" / "install.sh"
    assert f.env() == {
        "FLAVOUR": "full",
        "WITH_DOCS": "true",
        "INSTALL_PATH": "/opt",
        "_LIVES": "cat",
    }
    assert f.container_env == {"TOOLS_HOME": "/opt/tools"}
    assert f.hooks == {"postCreateCommand": ShellCommand(script="tools --init")}


def test_a_bare_string_sets_the_version_option(tmp_path: Path) -> None:
    feature(tmp_path, "node", options={"version": {"type": "string", "default": "lts"}})
    feature(tmp_path, "plain", options={"x": {"type": "boolean", "default": True}})
    by_id = {
        f.id: f
        for f in resolve_features(config(tmp_path, features={"./node": "20", "./plain": "ignored"}))
    }
    assert by_id["node"].env() == {"VERSION": "20"}
    # the reference's rule, to the letter: a bare true is the version too; {} is the default
    as_true = resolve_features(config(tmp_path, features={"./node": True}))[0]
    assert as_true.env() == {"VERSION": "true"}
    assert resolve_features(config(tmp_path, features={"./node": {}}))[0].env() == {
        "VERSION": "lts"
    }
    assert by_id["plain"].env() == {"X": "true"}


def test_safe_env_names() -> None:
    assert safe_env_name("opt-x") == "OPT_X"
    assert safe_env_name("__private") == "_PRIVATE"
    assert safe_env_name("123abc") == "_ABC"
    assert safe_env_name("ünï") == "_N_"


def test_installs_after_orders_features_present_and_ignores_absent_ones(tmp_path: Path) -> None:
    feature(tmp_path, "a")
    feature(tmp_path, "b", installsAfter=["./c", "./not-used"])
    feature(tmp_path, "c")
    feature(tmp_path, "not-used")
    # without the soft dependency: rounds sorted by path; with it: c before b
    assert order(tmp_path, features={"./b": True, "./a": True, "./c": True}) == [
        "./a",
        "./c",
        "./b",
    ]


def test_depends_on_pulls_in_the_dependency_first(tmp_path: Path) -> None:
    feature(tmp_path, "app", dependsOn={"./base": {"level": "2"}})
    feature(tmp_path, "base", options={"level": {"type": "string", "default": "1"}})
    feats = resolve_features(config(tmp_path, features={"./app": True}))
    assert [f.user_id for f in feats] == ["./base", "./app"]
    assert feats[0].env() == {"LEVEL": "2"}


def test_override_install_order_goes_first_within_what_is_ready(tmp_path: Path) -> None:
    for name in ("a", "b", "c"):
        feature(tmp_path, name)
    feats = {"./a": True, "./b": True, "./c": True}
    assert order(tmp_path, features=feats) == ["./a", "./b", "./c"]
    assert order(tmp_path, features=feats, overrideFeatureInstallOrder=["./c", "./b"]) == [
        "./c",
        "./b",
        "./a",
    ]


def test_override_cannot_break_a_dependency(tmp_path: Path) -> None:
    feature(tmp_path, "a")
    feature(tmp_path, "b", dependsOn={"./a": True})
    assert order(tmp_path, features={"./b": True}, overrideFeatureInstallOrder=["./b"]) == [
        "./a",
        "./b",
    ]


def test_a_cycle_is_an_error_naming_the_features(tmp_path: Path) -> None:
    feature(tmp_path, "a", dependsOn={"./b": True})
    feature(tmp_path, "b", dependsOn={"./a": True})
    with pytest.raises(ConfigError, match=r"cycle: \./a, \./b"):
        resolve_features(config(tmp_path, features={"./a": True}))


@pytest.mark.parametrize(
    ("ident", "words"),
    [
        ("ghcr.io/devcontainers/features/node:1", "OCI registry"),
        ("https://example.com/devcontainer-feature-x.tgz", "a URL"),
        ("node", "short id"),
    ],
)
def test_remote_features_fail_fast_in_one_line_naming_them(
    tmp_path: Path, ident: str, words: str
) -> None:
    feature(tmp_path, "local")
    started = time.monotonic()
    with pytest.raises(FeatureUnavailable) as caught:
        resolve_features(config(tmp_path, features={"./local": True, ident: {}}))
    assert time.monotonic() - started < 1.0  # nothing was fetched
    assert caught.value.feature == ident
    assert f"feature {ident!r} is unavailable" in str(caught.value)
    assert words in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_remote_dependency_names_who_wanted_it(tmp_path: Path) -> None:
    feature(tmp_path, "app", dependsOn={"ghcr.io/x/y/z:1": {}})
    with pytest.raises(FeatureUnavailable, match=r"dependency of '\./app'"):
        resolve_features(config(tmp_path, features={"./app": True}))


def test_source_kinds() -> None:
    assert source_kind("./x") == "local"
    assert source_kind("../x") == "local"
    assert source_kind("ghcr.io/a/b:1") == "oci"
    assert source_kind("https://h/devcontainer-feature-x.tgz") == "tarball"
    assert source_kind("docker-in-docker") == "legacy"


def test_local_feature_problems_name_the_property(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"features\['\./missing'\]: no feature folder"):
        resolve_features(config(tmp_path, features={"./missing": True}))
    with pytest.raises(ConfigError, match=r"must be inside \.devcontainer/"):
        resolve_features(config(tmp_path, features={"../../elsewhere": True}))
    folder = feature(tmp_path, "noscript")
    (folder / "install.sh").unlink()
    with pytest.raises(ConfigError, match=r"has no install\.sh"):
        resolve_features(config(tmp_path, features={"./noscript": True}))
    bad = feature(tmp_path, "bad")
    (bad / "devcontainer-feature.json").write_text(
        '{\n "id": "bad",\n "options": {"x": {"type": "int"}}\n}'
    )
    with pytest.raises(ConfigError) as caught:
        resolve_features(config(tmp_path, features={"./bad": True}))
    assert caught.value.line == 3
    assert caught.value.field == "options.x.type"
    assert str(caught.value).startswith(str(bad / "devcontainer-feature.json"))


def test_one_feature_with_different_options_installs_once_per_options_in_the_references_order(
    tmp_path: Path,
) -> None:
    feature(tmp_path, "x", options={"version": {"type": "string", "default": "1"}})
    feature(tmp_path, "y", dependsOn={"./x": True})
    feature(tmp_path, "z", dependsOn={"./x": {"version": "3"}})
    feats = resolve_features(config(tmp_path, features={"./x": "2", "./y": {}, "./z": {}}))
    # the three x's are ready together: boolean, then object, then string (optionsCompareTo)
    assert [(f.user_id, f.env()) for f in feats] == [
        ("./x", {"VERSION": "true"}),
        ("./x", {"VERSION": "3"}),
        ("./x", {"VERSION": "2"}),
        ("./y", {}),
        ("./z", {}),
    ]
