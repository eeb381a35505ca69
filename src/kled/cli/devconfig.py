"""``kled.yaml``: what ``kled dev`` syncs, runs and restarts, per app.

```yaml
dev:
  api:                                   # an App of the current environment, or ws/NAME
    sync: [{local: ./api, remote: /app, exclude: [".git", "*.pyc"]}]
    command: ["python", "-m", "api"]     # run from the first sync's remote folder
    onChange: {restart: ["**/*.py"], exec: [{glob: "package.json", run: "npm install"}]}
    ports: ["8080:80"]
```

Validated with pydantic, and a bad file is one line naming the field path
(``kled.yaml: dev.api.sync[0].remote: …``). Local folders are relative to the file;
remote folders are absolute, or relative to the replica's working dir, and never climb
with ``..``.
"""

from __future__ import annotations

import fnmatch
import re
from pathlib import Path, PurePosixPath
from typing import Annotated, Any, Literal

import yaml
from pydantic import Field, ValidationError, field_validator

from kled.errors import InvalidInput
from kled.resources.meta import KledModel, schema_error
from kled.sync.plan import Strategy

_PORT = re.compile(r"^(\d{1,5}):(\d{1,5})\Z")
NonEmpty = Annotated[str, Field(min_length=1)]


class SyncRule(KledModel):
    local: NonEmpty
    remote: NonEmpty
    exclude: list[NonEmpty] = []
    #: the first sync's merge rule (``kled.sync.plan.Strategy``)
    strategy: Literal[
        "mirrorLocal", "mirrorRemote", "preferLocal", "preferRemote", "preferNewest", "keepAll"
    ] = "mirrorLocal"
    #: honour the local folder's ``.gitignore``
    gitignore: bool = True

    @field_validator("remote")
    @classmethod
    def _remote_stays(cls, value: str) -> str:
        if "\x00" in value or ".." in PurePosixPath(value).parts:
            raise ValueError("a remote folder may not contain '..'")
        return value

    @field_validator("local")
    @classmethod
    def _local_ok(cls, value: str) -> str:
        if "\x00" in value:
            raise ValueError("a local folder may not contain NUL")
        return value

    def strategy_value(self) -> Strategy:
        return Strategy(self.strategy)


class ExecOnChange(KledModel):
    glob: NonEmpty
    run: NonEmpty


class OnChange(KledModel):
    #: globs of synced paths whose change restarts the dev command
    restart: list[NonEmpty] = []
    #: commands run (in the remote folder, by ``sh -c``) when a path matching ``glob`` changed
    exec: list[ExecOnChange] = []


class DevTarget(KledModel):
    sync: list[SyncRule] = Field(min_length=1)
    command: list[NonEmpty] = []
    on_change: OnChange = Field(default_factory=OnChange)
    ports: list[str] = []
    reverse_ports: list[str] = []
    #: seconds from SIGTERM to SIGKILL when the dev command is restarted
    restart_grace_seconds: Annotated[float, Field(ge=0, le=300)] = 5.0

    @field_validator("ports", "reverse_ports")
    @classmethod
    def _ports(cls, value: list[str]) -> list[str]:
        for item in value:
            found = _PORT.match(item)
            if found is None or not all(0 < int(p) < 65536 for p in found.groups()):
                raise ValueError(f"{item!r} is not LOCAL:REMOTE (ports 1-65535)")
        return value


class DevFile(KledModel):
    dev: dict[NonEmpty, DevTarget] = Field(min_length=1)


def load(path: Path) -> DevFile:
    """``path`` parsed and validated; InvalidInput naming the file and field otherwise."""
    try:
        text = path.read_text()
    except OSError as err:
        raise InvalidInput(f"cannot read {path}: {err.strerror or err}", field="-f") from err
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise InvalidInput(f"{path.name}: not YAML: {err}".splitlines()[0]) from err
    try:
        return DevFile.model_validate(doc)
    except ValidationError as err:
        problem = schema_error(err)
        raise InvalidInput(f"{path.name}: {problem}") from err


def target(config: DevFile, name: str | None, path: Path) -> tuple[str, DevTarget]:
    """The app to develop: ``name``, or the only one the file names."""
    if name is None:
        if len(config.dev) != 1:
            raise InvalidInput(
                f"{path.name} names {len(config.dev)} apps: say which (kled dev APP)", field="APP"
            )
        name = next(iter(config.dev))
    if name not in config.dev:
        known = ", ".join(sorted(config.dev))
        raise InvalidInput(f"{path.name} has no dev.{name} (it has: {known})", field="APP")
    return name, config.dev[name]


def matches(patterns: list[str], paths: tuple[str, ...]) -> bool:
    """Whether any path matches any glob (``**/*.py`` also matches ``a.py`` at the top)."""
    for pattern in patterns:
        bare = pattern[3:] if pattern.startswith("**/") else None
        for path in paths:
            name = path.rsplit("/", 1)[-1]
            if fnmatch.fnmatchcase(path, pattern) or (
                bare is not None
                and (fnmatch.fnmatchcase(path, bare) or fnmatch.fnmatchcase(name, bare))
            ):
                return True
            if "/" not in pattern and fnmatch.fnmatchcase(name, pattern):
                return True
    return False


#: the app annotation naming more folders (comma-separated, absolute) a process replica's
#: dev session may sync into, besides its workingDir
SYNC_ROOTS_ANNOTATION = "kled.io/dev-sync-roots"


def allowed_roots(app: dict[str, Any]) -> list[str] | None:
    """Where a dev session may sync into the app's replica: None for a container (its
    own filesystem), else the process app's workingDir and its declared roots."""
    spec = app.get("spec") or {}
    if spec.get("runtime", "process") != "process":
        return None
    roots = [str(spec["workingDir"])] if spec.get("workingDir") else []
    declared = ((app.get("metadata") or {}).get("annotations") or {}).get(SYNC_ROOTS_ANNOTATION)
    roots += [r.strip() for r in str(declared or "").split(",") if r.strip()]
    return [str(PurePosixPath(r)) for r in roots if r.startswith("/")]


def check_roots(name: str, dev: DevTarget, app: dict[str, Any], config: str) -> None:
    """Each sync's remote folder inside the allowed roots of ``app``, or one line naming
    the rule. A relative folder stays in the replica's working dir (``..`` is refused)."""
    roots = allowed_roots(app)
    if roots is None:
        return
    for i, rule in enumerate(dev.sync):
        remote = PurePosixPath(rule.remote)
        if not remote.is_absolute() or any(remote.is_relative_to(r) for r in roots):
            continue
        where = " or ".join(roots) if roots else "relative folders only, in its working dir"
        raise InvalidInput(
            f"{config}: dev.{name}.sync[{i}].remote: {rule.remote} is outside what app {name}"
            f" lets a dev session sync into ({where}): a process replica writes the node's"
            f" own files; add the folder to the app's {SYNC_ROOTS_ANNOTATION} annotation"
        )
