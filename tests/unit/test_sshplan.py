"""The remote scripts of ``kled node add --ssh``, as data: the probe's reading, the checks
that refuse a machine, and what each script writes and starts."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import pytest

from kled.cli import sshplan
from kled.errors import InvalidInput, Unavailable

PROBE = "home=/home/ann\nhost=build-01.lan\nuid=1000\nkernel=Linux\npython=3.11-x86_64\n"


def _decide(text: str = PROBE, **kw: object) -> sshplan.Install:
    args: dict[str, object] = {
        "name": "build-01",
        "server": "http://10.0.0.1:7080",
        "prefix": None,
        "supervisor": "auto",
    }
    args.update(kw)
    return sshplan.decide(sshplan.parse_probe(text), "3.11-x86_64", **args)  # type: ignore[arg-type]


def test_the_probe_names_the_node_and_picks_a_prefix_in_home_and_a_loop_without_systemd() -> None:
    probe = sshplan.parse_probe(PROBE)
    assert sshplan.node_name(None, probe) == "build-01"
    inst = _decide()
    assert inst.prefix == "/home/ann/.kled-agent/build-01"
    assert inst.supervisor == "loop"


def test_systemd_is_chosen_only_as_root_where_it_runs() -> None:
    root = PROBE.replace("uid=1000", "uid=0") + "systemd=yes\n"
    assert _decide(root).supervisor == "systemd"
    assert _decide(PROBE + "systemd=yes\n").supervisor == "loop"
    with pytest.raises(Unavailable, match="systemd"):
        _decide(PROBE, supervisor="systemd")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (PROBE.replace("python=3.11-x86_64\n", ""), "no python3"),
        (PROBE.replace("3.11-x86_64", "3.9-x86_64"), "python3 there is 3.9-x86_64"),
        (PROBE.replace("3.11-x86_64", "3.11-aarch64"), "3.11-aarch64"),
        (PROBE.replace("kernel=Linux", "kernel=Darwin"), "not Linux"),
    ],
)
def test_a_machine_that_cannot_take_the_bundle_is_refused_by_name(text: str, message: str) -> None:
    with pytest.raises(Unavailable, match=message):
        _decide(text)


def test_bad_names_and_prefixes_are_refused() -> None:
    with pytest.raises(InvalidInput, match="node name"):
        sshplan.node_name("Bad_Name", sshplan.parse_probe(PROBE))
    with pytest.raises(InvalidInput, match="--prefix"):
        _decide(prefix="relative/dir")
    with pytest.raises(InvalidInput, match="--prefix"):
        _decide(prefix="/with space")


def test_the_token_is_read_from_stdin_into_a_0600_file_never_an_argument() -> None:
    inst = _decide(agent_args=("--network=off",))
    script = sshplan.token_script(inst)
    assert "umask 077" in script and script.endswith("cat > /home/ann/.kled-agent/build-01/token")
    run = sshplan.run_agent(inst)
    argv = shlex.split(run.splitlines()[1].removeprefix("exec "))
    assert argv[argv.index("--token-file") + 1] == f"{inst.prefix}/token"
    assert "--token" not in argv
    assert argv[argv.index("--server") + 1] == "http://10.0.0.1:7080"
    assert argv[-1] == "--network=off"
    assert argv[0] == f"{inst.prefix}/venv/bin/python"


def test_the_bundle_unpacks_into_the_venv_of_the_machines_python() -> None:
    script = sshplan.unpack_script(_decide(), "3.11-x86_64")
    assert "python3 -m venv --without-pip /home/ann/.kled-agent/build-01/venv" in script
    assert script.endswith(
        "tar -xzf - -C /home/ann/.kled-agent/build-01/venv/lib/python3.11/site-packages"
    )


def test_the_loop_and_systemd_start_and_stop_what_they_started() -> None:
    loop = _decide()
    start = sshplan.start_script(loop)
    assert "nohup setsid" in start and "supervisor.pid" in start
    stop = sshplan.stop_script(loop)
    assert "kill -TERM" in stop and stop.endswith("rm -rf /home/ann/.kled-agent/build-01")
    root = _decide(PROBE.replace("uid=1000", "uid=0") + "systemd=yes\n")
    start = sshplan.start_script(root)
    assert "systemctl enable --now kled-agent-build-01.service" in start
    assert "ExecStart=/home/ann/.kled-agent/build-01/run-agent" in sshplan.systemd_unit(root)
    stop = sshplan.stop_script(root)
    assert "systemctl disable --now kled-agent-build-01.service" in stop
    assert "rm -f /etc/systemd/system/kled-agent-build-01.service" in stop


def test_the_start_script_writes_runnable_scripts(tmp_path: Path) -> None:
    # the scripts are run by sh here, in a folder standing for the prefix, with the
    # supervisor replaced by a no-op so that nothing is started
    inst = _decide(prefix=str(tmp_path))
    script = sshplan.start_script(inst).replace("nohup setsid", "true")
    subprocess.run(["sh", "-c", script], check=True)
    assert (tmp_path / "run-agent").read_text() == sshplan.run_agent(inst)
    assert (tmp_path / "run-agent").stat().st_mode & 0o111
    assert (tmp_path / "supervise").read_text() == sshplan.supervise_loop(inst)
    subprocess.run(["sh", "-c", sshplan.stop_script(inst)], check=True)
    assert not tmp_path.exists()


def test_the_real_probe_script_reads_this_machine() -> None:
    done = subprocess.run(["sh", "-c", sshplan.PROBE_SCRIPT], capture_output=True, text=True)
    probe = sshplan.parse_probe(done.stdout)
    assert probe.kernel == "Linux" and probe.python is not None and probe.home.startswith("/")
