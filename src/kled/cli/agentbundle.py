"""The Kled that this CLI runs, as one tar that installs with no network on the far side.

``kled node add --ssh`` and ``kled ws image build`` both put Kled on a machine that may
have no internet and no package index: what they ship is this bundle, made from the
installation the CLI itself runs from — the ``kled`` package and every distribution in its
dependency closure (files as ``importlib.metadata`` lists them, relative to site-packages),
plus a small ``kled-*.dist-info`` so that ``importlib.metadata.version("kled")`` answers.
It unpacks into the site-packages of a fresh ``python3 -m venv``. Compiled extensions
(pydantic-core, …) tie it to this Python's minor version and machine: ``python_tag()`` says
which, and the installers check the far side's ``python3`` against it before they copy.
"""

from __future__ import annotations

import importlib.metadata
import io
import platform
import shlex
import sys
import tarfile
import tomllib
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement


def python_tag() -> str:
    """``3.11-x86_64``: what the far side's python3 must report to take the bundle."""
    return f"{sys.version_info.major}.{sys.version_info.minor}-{platform.machine()}"


def closure(root: str = "kled") -> list[importlib.metadata.Distribution]:
    """``root``'s installed distribution and the ones it needs, recursively, with the
    extras its requirements ask for (``sqlalchemy[asyncio]`` brings greenlet)."""
    seen: dict[str, importlib.metadata.Distribution] = {}
    done: set[tuple[str, str]] = set()
    todo: list[tuple[str, str]] = [(root, "")]
    if root == "kled":
        seen["kled"] = importlib.metadata.distribution("kled")
        done.add(("kled", ""))
        todo = []
        for line in kled_requirements():
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo += [(req.name, "")] + [(req.name, e) for e in sorted(req.extras)]
    while todo:
        name, extra = todo.pop()
        key = name.lower().replace("_", "-")
        if (key, extra) in done:
            continue
        done.add((key, extra))
        try:
            dist = seen.get(key) or importlib.metadata.distribution(name)
        except importlib.metadata.PackageNotFoundError:
            continue
        seen[key] = dist
        for line in dist.requires or []:
            try:
                req = Requirement(line)
            except InvalidRequirement:
                continue
            if req.marker is not None and not req.marker.evaluate({"extra": extra}):
                continue
            if req.marker is None and extra:
                continue  # asked for with the base requirements already
            todo += [(req.name, "")] + [(req.name, e) for e in sorted(req.extras)]
    return list(seen.values())


def kled_requirements() -> list[str]:
    """Kled's own requirements: from the checkout's pyproject.toml when this runs from one
    (an editable install's metadata is as old as its last ``pip install -e``), else from
    the installed metadata."""
    pyproject = _kled_package().parents[1] / "pyproject.toml"
    if pyproject.is_file():
        project = tomllib.loads(pyproject.read_text()).get("project") or {}
        if project.get("name") == "kled":
            return [str(r) for r in project.get("dependencies") or []]
    return importlib.metadata.requires("kled") or []


def _kled_package() -> Path:
    import kled

    return Path(kled.__file__).parent


def build(out: Path) -> Path:
    """Write the bundle to ``out`` (a .tar.gz) and return it."""
    version = importlib.metadata.version("kled")
    with tarfile.open(out, "w:gz", compresslevel=1) as tar:
        for dist in closure():
            if dist.metadata["Name"].lower() == "kled":
                continue
            base = Path(str(dist.locate_file("")))
            for rel in dist.files or []:
                if (rel.parts and rel.parts[0] == "..") or "__pycache__" in rel.parts:
                    continue
                path = base / rel
                if path.is_file():
                    tar.add(path, arcname=str(rel), recursive=False)
        package = _kled_package()
        tar.add(
            package,
            arcname="kled",
            filter=lambda info: None if "__pycache__" in info.name else info,
        )
        meta = f"Metadata-Version: 2.1\nName: kled\nVersion: {version}\n".encode()
        info = tarfile.TarInfo(f"kled-{version}.dist-info/METADATA")
        info.size = len(meta)
        tar.addfile(info, io.BytesIO(meta))
    return out


def launcher(python: str) -> str:
    """A ``kled`` command for an unpacked bundle (a console script needs pip to make)."""
    code = 'import sys; from kled.cli.main import run; sys.argv[0] = "kled"; run()'
    return f'#!/bin/sh\nexec {shlex.quote(python)} -c {shlex.quote(code)} "$@"\n'
