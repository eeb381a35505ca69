"""A repository with no devcontainer.json: its subprojects, and the configs Kled writes.

Two cases need a config the repository does not have:

- **The preload image.** A repository with no devcontainer.json anywhere discovery looks
  runs in ``kled/preload`` (``kled ws image build`` makes it on a node) as its user
  ``dev``: ``preload_config``.
- **A subproject's Dockerfile.** ``find_projects`` lists the folders that hold a
  ``Dockerfile`` (or ``Containerfile``), for ``kled ws configs``; ``kled ws up --project
  DIR`` runs the workspace from the image built of ``DIR``'s Dockerfile, with ``DIR`` as
  its context, in ``/workspaces/<repository>/DIR``: ``project_config``.

A config made here is written by the node beside the workspace's source, never into it
(the user's files stay as they are), so its paths are absolute: ``project_config`` is
given the folder the repository is at on the node.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from kled.errors import InvalidInput

#: the image ``kled ws image build`` makes, and its non-root user
PRELOAD_IMAGE = "kled/preload"
PRELOAD_USER = "dev"
DOCKERFILE_NAMES = ("Dockerfile", "Containerfile")
#: how deep below the repository's top ``find_projects`` looks
MAX_DEPTH = 4
#: folders that hold dependencies or build output, not projects
_SKIPPED = frozenset(
    {"node_modules", "vendor", "target", "dist", "build", "venv", "__pycache__", "site-packages"}
)


@dataclass(frozen=True)
class Project:
    """A folder of the repository with a Dockerfile: ``path`` relative to the top ("."
    for the top itself), ``dockerfile`` the file's name in it."""

    path: str
    dockerfile: str


def preload_config(image: str = PRELOAD_IMAGE, user: str = PRELOAD_USER) -> dict[str, Any]:
    """The config of a repository without one: the preload image, as its user."""
    return {"name": "preload", "image": image, "remoteUser": user}


def _dockerfile_in(folder: Path) -> str | None:
    for name in DOCKERFILE_NAMES:
        if (folder / name).is_file():
            return name
    return None


def find_projects(root: Path, max_depth: int = MAX_DEPTH) -> list[Project]:
    """Every folder under ``root`` with a Dockerfile, sorted by path.

    Hidden folders (``.git``, ``.devcontainer``, …) and dependency or build folders
    (``node_modules``, ``vendor``, …) are not looked into; nor are symlinks.
    """
    found: list[Project] = []
    for here, dirs, _files in os.walk(root):
        folder = Path(here)
        rel = folder.relative_to(root)
        depth = len(rel.parts)
        dirs[:] = sorted(
            d
            for d in dirs
            if depth < max_depth
            and not d.startswith(".")
            and d not in _SKIPPED
            and not (folder / d).is_symlink()
        )
        name = _dockerfile_in(folder)
        if name is not None:
            found.append(Project(rel.as_posix() if rel.parts else ".", name))
    return sorted(found, key=lambda p: (p.path != ".", p.path))


def check_project(root: Path, project: str) -> Project:
    """``project`` (the user's ``--project``) as a folder of ``root`` with a Dockerfile;
    a one-line ``InvalidInput`` naming ``--project`` otherwise."""
    rel = PurePosixPath(project.strip().replace("\\", "/"))
    if not project.strip() or rel.is_absolute() or ".." in rel.parts:
        raise InvalidInput(
            f"--project {project!r}: must be a folder inside the repository, relative to its top",
            field="--project",
        )
    folder = root.joinpath(*rel.parts)
    if not folder.is_dir():
        raise InvalidInput(f"--project {project}: no such folder", field="--project")
    name = _dockerfile_in(folder)
    if name is None:
        raise InvalidInput(
            f"--project {project}: no {' or '.join(DOCKERFILE_NAMES)} in it", field="--project"
        )
    return Project(rel.as_posix() or ".", name)


def project_config(root: Path, project: str) -> dict[str, Any]:
    """The config that runs ``project``'s Dockerfile, for the repository at ``root``
    (absolute: the config lives outside the repository)."""
    found = check_project(root, project)
    folder = root if found.path == "." else root / found.path
    workspace_folder = "/workspaces/${localWorkspaceFolderBasename}"
    if found.path != ".":
        workspace_folder += f"/{found.path}"
    return {
        "name": PurePosixPath(found.path).name if found.path != "." else root.name,
        "build": {"dockerfile": str(folder / found.dockerfile), "context": str(folder)},
        "workspaceFolder": workspace_folder,
    }
