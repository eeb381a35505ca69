"""``userEnvProbe`` as the reference reads it (``workspace/userenv.py``): the probe's argv,
its output, the merge of PATH, and the user's shell from /etc/passwd."""

from __future__ import annotations

import subprocess

import pytest

from kled.workspace.userenv import (
    login_shell,
    merge_path,
    parse_probe,
    probe_argv,
    user_env,
)


@pytest.mark.parametrize(
    ("mode", "flags"),
    [
        (None, "-lic"),
        ("loginInteractiveShell", "-lic"),
        ("loginShell", "-lc"),
        ("interactiveShell", "-ic"),
    ],
)
def test_the_probe_runs_the_shell_as_the_mode_asks(mode: str | None, flags: str) -> None:
    argv = probe_argv("/bin/bash", mode, "M")
    assert argv is not None and argv[:2] == ["/bin/bash", flags]
    assert argv[2] == "echo -n M; cat /proc/self/environ; echo -n M"
    assert probe_argv("/bin/bash", "none", "M") is None


def test_a_real_shell_probe_parses_back_to_its_environment() -> None:
    argv = probe_argv("/bin/sh", "loginShell", "MARK42")
    assert argv is not None
    done = subprocess.run(
        argv,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "ODD": "a=b c", "HOME": "/nonexistent"},
        check=True,
    )
    env = parse_probe("noise before" + done.stdout + "after", "MARK42")
    assert env["ODD"] == "a=b c" and "/usr/bin" in env["PATH"].split(":")
    # a login shell's /etc/profile may set PATH afresh (Debian's does): the container's
    # own entries come back in the merged environment
    merged = user_env(env, {"PATH": "/opt/tool/bin:/usr/bin:/bin"}, "root")
    assert merged["PATH"].split(":")[0] == "/opt/tool/bin" and "PWD" not in merged


def test_no_markers_no_environment() -> None:
    assert parse_probe("sh: cannot run", "M") == {}
    assert parse_probe("M only one", "M") == {}


def test_path_keeps_the_containers_entries_where_they_were() -> None:
    # the shell's start-up files replaced PATH; the container's own entries come back,
    # each after the last one found before it
    probed = "/usr/local/bin:/usr/bin:/bin"
    container = "/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/bin:/sbin:/bin:/opt/late"
    assert merge_path(probed, container, root=True) == (
        "/opt/tool/bin:/usr/local/sbin:/usr/local/bin:/usr/bin:/sbin:/bin:/opt/late"
    )
    assert merge_path(probed, container, root=False) == (
        "/opt/tool/bin:/usr/local/bin:/usr/bin:/bin:/opt/late"
    )
    assert merge_path("/a:/b", "/a:/b", root=False) == "/a:/b"


def test_the_user_env_drops_pwd_and_merges_path() -> None:
    env = user_env(
        {"PWD": "/root", "PATH": "/p:/bin", "PROFILE": "1"},
        {"PATH": "/bin:/c"},
        "vscode",
    )
    assert env == {"PATH": "/p:/bin:/c", "PROFILE": "1"}
    odd = {"BASH_FUNC_f%%": "() { :; }", "MULTI": "a\nb", "OK": "x"}
    assert user_env(odd, {}, None) == {"OK": "x"}
    assert user_env({}, {"PATH": "/bin"}, None) == {}


def test_the_login_shell_comes_from_passwd_by_name_or_uid() -> None:
    passwd = "root:x:0:0:root:/root:/bin/bash\nann:x:1000:1000::/home/ann:/usr/bin/zsh\nb:x:5:5\n"
    assert login_shell(passwd, None) == "/bin/bash"
    assert login_shell(passwd, "ann") == "/usr/bin/zsh"
    assert login_shell(passwd, "1000") == "/usr/bin/zsh"
    assert login_shell(passwd, "nobody") == "/bin/sh"
    assert login_shell("", "root") == "/bin/sh"
