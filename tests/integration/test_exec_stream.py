"""``kled exec`` for real: a ``kled server``, a ``kled agent``, a process replica.

The command runs where the replica runs (its working dir and env), stdin reaches it,
stdout and stderr come back apart, the exit code is ``kled exec``'s; a viewer is refused
with one line, another team sees no app, and a large output arrives whole (the bus frames
and windows in between).
"""

from __future__ import annotations

import hashlib
import os
import random
import signal
import threading
from collections.abc import Iterator

import httpx
import pytest
from hostkit import Hosts, eventually, marker

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("exec")]

TEAM = f"exec-{random.randint(10**5, 10**6)}"
MARK = marker()


def user_token(hosts: Hosts, team: str, name: str, role: str, *, new_team: bool = False) -> str:
    """A user of ``team`` with ``role`` (the team made first if ``new_team``), and a token."""
    admin = {"Authorization": f"Bearer {hosts.token}"}
    with httpx.Client(base_url=hosts.url, headers=admin) as c:
        if new_team:
            c.post("/api/v1/teams", json={"metadata": {"name": team}}).raise_for_status()
        body = {"metadata": {"name": name}, "spec": {"role": role}}
        c.post(f"/api/v1/teams/{team}/users", json=body).raise_for_status()
        token = {"metadata": {"name": f"{name}-token"}, "spec": {"user": name}}
        answer = c.post(f"/api/v1/teams/{team}/tokens", json=token)
        answer.raise_for_status()
        return str(answer.json()["token"])


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hosts]:

    root = tmp_path_factory.mktemp("exec")
    h = Hosts(root, ["--embedded-nats"], TEAM)
    try:
        h.start_team_node("x1", context=True)
        work = root / "work"
        work.mkdir()
        (work / "hello.txt").write_text("hi from the replica's folder\n")
        h.apply(
            {
                "apiVersion": "kled.io/v1",
                "kind": "App",
                "metadata": {"name": "box"},
                "spec": {
                    "command": ["sleep", str(MARK)],
                    "workingDir": str(work),
                    "env": {"GREETING": "hello-from-env"},
                    "fieldEnv": {
                        "ME": "metadata.name",
                        "AT": "spec.nodeName",
                        "IP": "status.podIP",
                    },
                },
            }
        )
        eventually(lambda: h.running("box", 1), "box Running")
        yield h
    finally:
        h.close([MARK])


def test_the_replica_has_the_variables_only_its_node_knows(hosts: Hosts) -> None:
    said = hosts.cli.ok("exec", "box", "--", "sh", "-c", "echo $ME $AT $IP $GREETING")
    # (no team network on this node: the replica shares the node's, and its loopback)
    assert said.split() == ["box-0", "x1", "127.0.0.1", "hello-from-env"]


def test_exec_runs_in_the_replica_with_stdin_and_exit_code(hosts: Hosts) -> None:
    script = 'cat hello.txt; echo "$GREETING"; read line; echo "got $line"; echo oops >&2; exit 7'
    result = hosts.cli("exec", "box", "--", "sh", "-c", script, stdin="typed in\n")
    assert result.code == 7, result
    assert result.out == "hi from the replica's folder\nhello-from-env\ngot typed in\n", result
    assert result.err == "oops\n", result


def test_exec_passes_a_large_stream_both_ways_whole(hosts: Hosts) -> None:
    data = random.randbytes(5 << 20).hex()  # 10 MiB of text: many frames, many windows
    result = hosts.cli("exec", "box", "--", "sha256sum", stdin=data, timeout=120)
    assert result.code == 0, result
    assert result.out.split()[0] == hashlib.sha256(data.encode()).hexdigest()
    out = hosts.cli("exec", "box", "--no-stdin", "--", "head", "-c", "3000000", "/dev/zero")
    assert out.code == 0 and len(out.out) == 3_000_000


def test_a_command_killed_by_a_signal_exits_128_plus_it(hosts: Hosts) -> None:
    result = hosts.cli("exec", "box", "--no-stdin", "--", "sh", "-c", "kill -9 $$")
    assert result.code == 137, result


def test_a_missing_command_is_one_line_from_the_agent(hosts: Hosts) -> None:
    result = hosts.cli("exec", "box", "--no-stdin", "--", "no-such-command-here")
    assert result.code == 1, result
    assert "no-such-command-here" in result.err and len(result.err.strip().splitlines()) == 1


def test_a_viewer_may_not_exec_and_another_team_sees_no_app(hosts: Hosts) -> None:
    viewer = user_token(hosts, TEAM, "vera", "viewer")
    result = hosts.cli("--token", viewer, "exec", "box", "--", "true")
    assert result.code == 1, result
    assert "viewer" in result.err and "may not update apps" in result.err, result
    stranger = user_token(hosts, f"{TEAM}x", "sam", "owner", new_team=True)
    result = hosts.cli("--token", stranger, "exec", "box", "--", "true")
    assert result.code == 1 and "not found" in result.err, result
    member = user_token(hosts, TEAM, "mo", "member")
    assert hosts.cli("--token", member, "exec", "box", "--no-stdin", "--", "true").code == 0


def test_bad_input_is_refused_with_one_line(hosts: Hosts) -> None:
    result = hosts.cli("exec", "box")
    assert result.code == 2 and "CMD" in result.err, result
    result = hosts.cli("exec", "box", "--replica", "3", "--", "true")
    assert result.code == 2 and "replica" in result.err, result
    result = hosts.cli("exec", "nope", "--", "true")
    assert result.code == 1 and "not found" in result.err, result


def test_the_command_ends_when_the_client_is_killed(hosts: Hosts) -> None:
    from hostkit import sleepers

    mark = marker()
    proc = hosts.cli.popen("exec", "box", "--no-stdin", "--", "sleep", str(mark))
    try:
        eventually(lambda: sleepers(mark), "the exec'd command runs")
    finally:
        proc.kill()
        proc.wait()
    eventually(lambda: not sleepers(mark), "the exec'd command stopped with its client")


def test_exec_into_a_container_replica_and_its_command_ends_with_the_client(
    hosts: Hosts,
) -> None:
    from hostkit import sleepers

    from imagekit import busybox_image, podman

    mark = marker()
    applets = ("sh", "sleep", "echo", "cat", "kill", "rm", "tr")
    image = busybox_image(hosts.root, f"localhost/kled-exec-box:{mark}", applets, dirs=["tmp"])
    doc = {
        "apiVersion": "kled.io/v1",
        "kind": "App",
        "metadata": {"name": "ctr"},
        # sleep as PID 1 ignores SIGTERM: a short grace, or its removal (and the agent's
        # stop after it) waits 30 s
        "spec": {
            "runtime": "container",
            "image": image,
            "command": ["sleep", str(mark)],
            "terminationGracePeriodSeconds": 1,
        },
    }
    try:
        hosts.apply(doc)
        eventually(lambda: hosts.running("ctr", 1), "ctr Running in a container")
        result = hosts.cli("exec", "ctr", "--", "sh", "-c", "tr a-z A-Z; exit 4", stdin="shout\n")
        assert (result.code, result.out) == (4, "SHOUT\n"), result
        inner = marker()
        proc = hosts.cli.popen("exec", "ctr", "--no-stdin", "--", "sleep", str(inner))
        try:
            eventually(lambda: sleepers(inner), "the command runs in the container")
        finally:
            proc.kill()
            proc.wait()
        # podman leaves an exec'd command running when its client dies: the agent does not
        eventually(lambda: not sleepers(inner), "the command in the container stopped")
        leftovers = hosts.cli("exec", "ctr", "--no-stdin", "--", "sh", "-c", "echo /tmp/.kled*")
        # only this exec's own pid file: none is left behind by the ones before
        assert len(leftovers.out.split()) == 1, leftovers
    finally:
        hosts.cli("delete", "app", "ctr", "-e", "dev")
        podman("rm", "-f", "-t", "0", f"kled-{TEAM}.dev.ctr.0")
        eventually(lambda: podman("rmi", "-f", image).returncode == 0, "image removed", 30)


def test_exec_ends_with_its_command_while_stdin_stays_open(hosts: Hosts) -> None:
    import subprocess

    from cli.clikit import KLED

    # a terminal's stdin never reaches EOF: kled exec must not wait for one
    proc = subprocess.Popen(
        [str(KLED), "exec", "box", "--", "sh", "-c", "exit 5"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        env=hosts.cli.env,
    )
    try:
        assert proc.wait(60) == 5
    finally:
        proc.kill()
        proc.wait()
        assert proc.stdin is not None
        proc.stdin.close()


def test_exec_with_a_tty_gives_the_command_a_terminal(hosts: Hosts) -> None:
    script = "tty; stty size; test -t 0 && test -t 2 && echo on-a-terminal; echo oops >&2"
    result = hosts.cli("exec", "--tty", "box", "--no-stdin", "--", "sh", "-c", script)
    assert result.code == 0, result
    lines = result.out.replace("\r\n", "\n").splitlines()
    # no terminal here: 80 by 24; stderr comes back with stdout, as on any terminal
    assert lines[0].startswith("/dev/pts/") and lines[1:] == ["24 80", "on-a-terminal", "oops"]
    assert result.err == "", result


def test_exec_tty_from_a_terminal_is_raw_sized_and_resized(hosts: Hosts) -> None:
    import fcntl
    import struct
    import subprocess
    import termios
    import time

    from cli.clikit import KLED

    master, slave = os.openpty()
    fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 30, 100, 0, 0))
    before = termios.tcgetattr(slave)
    seen: list[bytes] = []

    def read() -> None:
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:
                return
            if not chunk:
                return
            seen.append(chunk)

    proc = subprocess.Popen(
        [str(KLED), "exec", "-T", "box", "--", "sh"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=hosts.cli.env,
    )
    threading.Thread(target=read, daemon=True).start()

    def typed(text: str, answer: str) -> None:
        os.write(master, text.encode())
        eventually(
            lambda: answer in b"".join(seen).decode(errors="replace"), f"{answer!r} in {seen}", 30
        )

    try:
        eventually(lambda: seen, "the shell's prompt")  # typed once the shell is there
        typed("echo $((6 * 7))\r", "42")
        typed("stty size\r", "30 100")
        fcntl.ioctl(master, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
        proc.send_signal(signal.SIGWINCH)  # what the terminal sends its foreground

        def resized() -> bool:  # asked until the new size has reached the command
            seen.clear()
            os.write(master, b"stty size\r")
            time.sleep(0.3)
            return "40 120" in b"".join(seen).decode(errors="replace")

        eventually(resized, "the new size inside")
        os.write(master, b"exit 5\r")
        assert proc.wait(60) == 5
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        after = termios.tcgetattr(slave)
        os.close(slave)
        os.close(master)
    assert after == before  # the laptop's terminal is as it was: not raw any more
