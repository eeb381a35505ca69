"""The bundle ``kled node add --ssh`` and ``kled ws image build`` ship: unpacked into a
fresh venv of Debian's own ``python3`` (not this venv's), it runs ``kled`` and imports
what the agent and the CLI import, with nothing from this checkout on the path."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from kled.cli import agentbundle

SYSTEM_PYTHON = "/usr/bin/python3"


def _system_tag() -> str | None:
    if not os.path.exists(SYSTEM_PYTHON):
        return None
    code = 'import platform,sys;print("%d.%d-%s" % (*sys.version_info[:2], platform.machine()))'
    done = subprocess.run([SYSTEM_PYTHON, "-c", code], capture_output=True, text=True)
    return done.stdout.strip() or None


def test_the_bundle_runs_kled_from_a_fresh_venv_of_the_system_python(tmp_path: Path) -> None:
    if _system_tag() != agentbundle.python_tag():
        pytest.skip(f"{SYSTEM_PYTHON} is not {agentbundle.python_tag()}: the bundle is not for it")
    bundle = agentbundle.build(tmp_path / "bundle.tar.gz")
    with tarfile.open(bundle) as tar:
        names = tar.getnames()
    assert "kled/__init__.py" in names
    assert not [n for n in names if "__pycache__" in n or n.startswith("..")]
    venv = tmp_path / "venv"
    subprocess.run([SYSTEM_PYTHON, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = venv / "lib" / f"python{agentbundle.python_tag().split('-')[0]}" / "site-packages"
    with tarfile.open(bundle) as tar:
        tar.extractall(site, filter="data")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)}
    python = str(venv / "bin" / "python")
    imports = "import kled.agent.agent, kled.cli.main, sqlalchemy.ext.asyncio, asyncssh, kled"
    code = f"{imports}; import importlib.metadata as m; print(kled.__file__, m.version('kled'))"
    done = subprocess.run(
        [python, "-c", code], capture_output=True, text=True, env=env, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(str(site)), "kled came from the bundle, not this checkout"
    kled = tmp_path / "kled"
    kled.write_text(agentbundle.launcher(python))
    kled.chmod(0o755)
    helped = subprocess.run(
        [str(kled), "node", "add", "--help"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    assert helped.returncode == 0, helped.stderr
    assert "--ssh" in helped.stdout
    shutil.rmtree(venv)
