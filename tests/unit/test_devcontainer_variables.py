"""${…} variables: the reference's rules, phase by phase."""

from __future__ import annotations

import hashlib
import re

import pytest

from kled.workspace.variables import (
    LocalContext,
    SubstitutionError,
    devcontainer_id,
    id_labels,
    substitute,
    substitute_container_env,
    substitute_devcontainer_id,
)

CTX = LocalContext(
    env={"HOME": "/home/ann", "EMPTY": "", "PORT": "8080"},
    local_workspace_folder="/src/shop",
    container_workspace_folder="/workspaces/${localWorkspaceFolderBasename}/app",
)


def sub(value: object) -> object:
    return substitute(value, CTX)


@pytest.mark.parametrize(
    ("written", "resolved"),
    [
        ("${localEnv:HOME}", "/home/ann"),
        ("${env:HOME}/x", "/home/ann/x"),  # env is an alias of localEnv
        ("${localEnv:MISSING}", ""),  # unset, no default: empty, as a shell does
        ("${localEnv:MISSING:fallback}", "fallback"),
        ("${localEnv:EMPTY:fallback}", ""),  # set but empty: the default does not apply
        ("${localEnv:MISSING:a:b}", "a"),  # a default cannot hold ':'
        ("${localWorkspaceFolder}", "/src/shop"),
        ("${localWorkspaceFolderBasename}", "shop"),
        # the container folder's own variables are resolved first
        ("${containerWorkspaceFolder}", "/workspaces/shop/app"),
        ("${containerWorkspaceFolderBasename}", "app"),
        ("${containerEnv:PATH}", "${containerEnv:PATH}"),  # not before the container
        ("${devcontainerId}", "${devcontainerId}"),
        ("${unknownVariable}", "${unknownVariable}"),
        ("a${localEnv:PORT}b${localEnv:PORT}c", "a8080b8080c"),
        ("$HOME and ${localEnv:HOME", "$HOME and ${localEnv:HOME"),  # not variables
    ],
)
def test_client_side_variables(written: str, resolved: str) -> None:
    assert sub(written) == resolved


def test_values_are_substituted_everywhere_keys_never() -> None:
    value = {"${localEnv:PORT}": ["${localEnv:PORT}", {"k": "${localEnv:HOME}"}, 3, True, None]}
    assert sub(value) == {"${localEnv:PORT}": ["8080", {"k": "/home/ann"}, 3, True, None]}


def test_a_variable_with_no_name_is_an_error_at_its_property() -> None:
    with pytest.raises(SubstitutionError) as caught:
        sub({"containerEnv": {"A": "${localEnv}"}})
    assert caught.value.loc == ("containerEnv", "A")
    assert "${localEnv}" in caught.value.message


def test_unknown_folders_stay_literal() -> None:
    bare = LocalContext(env={})
    assert substitute("${localWorkspaceFolder}", bare) == "${localWorkspaceFolder}"
    assert substitute("${containerWorkspaceFolderBasename}", bare) == (
        "${containerWorkspaceFolderBasename}"
    )


def test_container_env_once_the_container_is_known() -> None:
    env = {"PATH": "/usr/bin", "EMPTY": ""}
    value = {
        "a": "${containerEnv:PATH}:/opt",
        "b": "${containerEnv:NOPE:dflt}",
        "c": "${containerEnv:EMPTY:x}",
    }
    assert substitute_container_env(value, env) == {"a": "/usr/bin:/opt", "b": "dflt", "c": ""}


def test_devcontainer_id_is_sha256_of_sorted_compact_json_in_base_32() -> None:
    labels = id_labels("/src/shop", "/src/shop/.devcontainer/devcontainer.json")
    ident = devcontainer_id(labels)
    assert re.fullmatch(r"[0-9a-v]{52}", ident)
    text = (
        '{"devcontainer.config_file":"/src/shop/.devcontainer/devcontainer.json",'
        '"devcontainer.local_folder":"/src/shop"}'
    )
    number = int(hashlib.sha256(text.encode()).hexdigest(), 16)
    assert int(ident, 32) == number
    # label order does not matter; every label does
    assert devcontainer_id(dict(reversed(list(labels.items())))) == ident
    assert devcontainer_id({**labels, "extra": "1"}) != ident
    assert devcontainer_id(id_labels("/src/shop", "/src/shop/.devcontainer.json")) != ident


def test_devcontainer_id_pads_small_hashes_with_zeros() -> None:
    # Find labels whose hash starts with a zero digit in base 32; it must stay 52 long.
    for i in range(2000):
        ident = devcontainer_id({"n": str(i)})
        assert len(ident) == 52
        if ident.startswith("0"):
            break
    else:
        pytest.fail("no hash with a leading zero digit among 2000")


def test_devcontainer_id_substitution() -> None:
    labels = {"a": "b"}
    assert substitute_devcontainer_id({"v": "vol-${devcontainerId}"}, labels) == {
        "v": f"vol-{devcontainer_id(labels)}"
    }
