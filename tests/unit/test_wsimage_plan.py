"""The preload image's build plan, as data: the mirror read from apt's sources, the
packages, the user ``dev`` with user-writable pip and npm prefixes, the kled CLI, and the
settings ``podman import`` gives the image."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from kled.cli import wsimage
from kled.cli.workspaces import pack

DEB822 = """# comment
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm bookworm-updates

Types: deb
URIs: http://deb.debian.org/debian-security
"""


def test_the_mirror_comes_from_apt_sources_in_either_form(tmp_path: Path) -> None:
    assert wsimage.mirror_from(DEB822) == "http://deb.debian.org/debian"
    one_line = "deb [arch=amd64] http://mirror.example/debian bookworm main\n"
    assert wsimage.mirror_from(one_line) == "http://mirror.example/debian"
    assert wsimage.mirror_from("# deb http://x/debian bookworm main\n") is None
    (tmp_path / "sources.list.d").mkdir()
    (tmp_path / "sources.list.d" / "debian.sources").write_text(DEB822)
    assert wsimage.read_mirror(tmp_path) == "http://deb.debian.org/debian"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(Exception, match="no Debian mirror"):
        wsimage.read_mirror(empty)


def test_the_plan_bootstraps_the_tools_makes_dev_and_imports_the_tree() -> None:
    root, bundle = Path("/tmp/r/root"), Path("/tmp/r/bundle.tar.gz")
    plan = wsimage.plan(root, "http://deb.debian.org/debian", bundle, "kled/preload")
    first = plan.steps[0]
    assert first[0] == "debootstrap" and first[-3:] == ["bookworm", str(root), plan.mirror]
    install = plan.steps[2][-1]
    assert plan.steps[1][:2] == ["mount", "-t"] and plan.steps[3][0] == "umount"
    for package in ("git", "python3", "python3-pip", "python3-venv", "nodejs", "npm",
                    "build-essential"):  # fmt: skip
        assert f" {package} " in f"{install} "
    user_setup = plan.steps[4][-1]
    assert "useradd --create-home --shell /bin/bash --uid 1000 dev" in user_setup
    assert "user = true" in user_setup and "prefix=%s" in user_setup
    assert "/home/dev/.npm-global" in user_setup
    assert plan.steps[5] == ["cp", str(bundle), "/tmp/r/root/tmp/kled-bundle.tar.gz"]
    assert "/opt/kled" in plan.steps[6][-1]
    assert "/tmp/r/root/usr/local/bin/kled" in plan.steps[7][-1]
    last = plan.steps[-1][-1]
    assert last.startswith("tar -C /tmp/r/root -c . | podman import") and last.endswith(
        "- kled/preload"
    )
    assert "USER dev" in plan.changes and "WORKDIR /home/dev" in plan.changes
    path = next(c for c in plan.changes if c.startswith("ENV PATH="))
    assert path.startswith("ENV PATH=/home/dev/.local/bin:/home/dev/.npm-global/bin:")


def test_a_bad_tag_is_refused_before_anything_runs() -> None:
    kled = Path(sys.executable).parent / "kled"
    done = subprocess.run(
        [str(kled), "ws", "image", "build", "--tag", "Bad Tag"], capture_output=True, text=True
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--tag 'Bad Tag'" in done.stderr


def test_a_folder_without_devcontainer_json_gets_the_preload_config_in_its_upload(
    tmp_path: Path,
) -> None:
    (tmp_path / "app.py").write_text("print('hi')\n")
    assert wsimage.wants_preload(tmp_path, None)
    assert not wsimage.wants_preload(tmp_path, "custom/devcontainer.json")
    data = wsimage.with_preload_config(pack(tmp_path))
    assert data == wsimage.with_preload_config(pack(tmp_path)), "the same bytes every time"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) as tar:
        assert sorted(tar.getnames()) == [".devcontainer.json", "app.py"]
        member = tar.extractfile(".devcontainer.json")
        assert member is not None
        config = json.loads(member.read())
    assert config == {"name": "preload", "image": "kled/preload", "remoteUser": "dev"}
    assert not (tmp_path / ".devcontainer.json").exists(), "the user's folder is untouched"

    (tmp_path / ".devcontainer").mkdir()
    (tmp_path / ".devcontainer" / "devcontainer.json").write_text('{"image": "x"}')
    assert not wsimage.wants_preload(tmp_path, None)
