"""Where a repository keeps its devcontainer.json, in the spec's order.

The spec looks in three places: ``.devcontainer/devcontainer.json``, then
``.devcontainer.json``, then ``.devcontainer/<folder>/devcontainer.json`` one level down
(a monorepo keeps one per project there). ``find_configs`` lists every one found, in that
order, so ``kled ws configs`` can show them; ``select_config`` picks the one to use.

One departure from the reference CLI, which never looks in subfolders unless given
``--config``: when the only configs are in subfolders and there is exactly one, Kled uses
it (VS Code does the same); with several, Kled asks for ``--config`` and names them.
"""

from __future__ import annotations

from pathlib import Path

from kled.errors import InvalidInput

DEVCONTAINER_DIR = ".devcontainer"
CONFIG_NAME = "devcontainer.json"


def find_configs(workspace: Path) -> list[Path]:
    """Every devcontainer.json of ``workspace``, in the spec's order of precedence."""
    found: list[Path] = []
    folder = workspace / DEVCONTAINER_DIR
    for candidate in (folder / CONFIG_NAME, workspace / f".{CONFIG_NAME}"):
        if candidate.is_file():
            found.append(candidate)
    if folder.is_dir():
        for sub in sorted(folder.iterdir(), key=lambda p: p.name):
            candidate = sub / CONFIG_NAME
            if sub.is_dir() and candidate.is_file():
                found.append(candidate)
    return found


def relative_name(workspace: Path, config: Path) -> str:
    """``config`` as a user names it: relative to the workspace where it lies inside."""
    try:
        return config.relative_to(workspace).as_posix()
    except ValueError:
        return str(config)


def select_config(workspace: Path, config: str | Path | None = None) -> Path | None:
    """The devcontainer.json to use for ``workspace``, or None when it has none.

    ``config`` is the user's ``--config``: absolute, or relative to the workspace folder.
    """
    if config is not None:
        path = Path(config)
        if not path.is_absolute():
            path = workspace / path
        if not path.is_file():
            raise InvalidInput(f"{config}: no such file", field="config")
        return path
    found = find_configs(workspace)
    preferred = (workspace / DEVCONTAINER_DIR / CONFIG_NAME, workspace / f".{CONFIG_NAME}")
    top = [p for p in found if p in preferred]
    if top:
        return top[0]
    if len(found) == 1:
        return found[0]
    if found:
        names = ", ".join(relative_name(workspace, p) for p in found)
        raise InvalidInput(
            f"{workspace} has {len(found)} dev container configs ({names}): "
            "choose one with --config PATH",
            field="config",
        )
    return None


def git_root(folder: Path) -> Path | None:
    """The top of the git work tree holding ``folder``, or None outside one.

    By default the folder mounted into the container is this root, so that a project
    inside a monorepo sees the whole repository (the reference's
    ``--mount-workspace-git-root``). Symlinks in ``folder`` are kept, as the reference
    keeps them (``git rev-parse --show-cdup``).
    """
    for candidate in (folder, *folder.parents):
        if (candidate / ".git").exists():
            return candidate
    return None


def not_found(workspace: Path, shown: str | None = None) -> InvalidInput:
    """The one-line error for a source with no config, naming where Kled looked."""
    where = shown or str(workspace)
    return InvalidInput(
        f"no devcontainer.json in {where}: looked for {DEVCONTAINER_DIR}/{CONFIG_NAME}, "
        f".{CONFIG_NAME} and {DEVCONTAINER_DIR}/<folder>/{CONFIG_NAME}",
        field="source",
    )
