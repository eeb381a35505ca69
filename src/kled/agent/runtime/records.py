"""The runtimes' files on disk: private folders, and replica records with no secret in clear.

A runtime keeps one folder per replica under its state folder, holding ``record.json``
(what a restarted agent needs to adopt the replica) and the replica's captured output.
Those folders are the agent's, never a replica's working directory, and are private: the
folders 0700, the files 0600, fixed at start for files an older version left open.

A replica's environment is resolved by the control plane, Secrets included, so a record
never holds it in clear: ``record.json`` keeps the spec without ``env`` and the environment
as one Fernet token, under a key of the runtime's own (``<state_dir>/record.key``, 0600),
which lets a restarted agent compare the spec it adopted with the desired one exactly and
restart a crashed adopted replica with its environment, before any desired state arrives.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from kled.resources.hoststate import ReplicaSpec

log = logging.getLogger(__name__)

DIR_MODE = 0o700
FILE_MODE = 0o600
RECORD = "record.json"
#: the spec's fields that may hold Secret values besides ``env``
_POD = ("sidecars", "init_containers", "volumes")
_KEY = "record.key"


def private_dir(path: Path) -> Path:
    """``path`` as a folder only the agent's user can enter (made, or fixed if it exists)."""
    path.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    if path.stat().st_mode & 0o777 != DIR_MODE:
        os.chmod(path, DIR_MODE)
    return path


def write_private(path: Path, data: bytes) -> None:
    """Replace ``path`` atomically by a 0600 file holding ``data``."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    try:
        os.fchmod(fd, FILE_MODE)  # a stale .tmp from an older version may be 0644
        os.write(fd, data)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def tighten(state_dir: Path) -> None:
    """Make an existing state folder private: every folder 0700, every file 0600."""
    private_dir(state_dir)
    for root, dirs, files in os.walk(state_dir):
        for name in dirs:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), DIR_MODE)
        for name in files:
            with contextlib.suppress(OSError):
                os.chmod(os.path.join(root, name), FILE_MODE)


class RecordBook:
    """Reads and writes the ``record.json`` of each replica under one state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        tighten(state_dir)
        key_path = state_dir / _KEY
        if not key_path.exists():
            with contextlib.suppress(FileExistsError):
                fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, FILE_MODE)
                with os.fdopen(fd, "wb") as f:
                    f.write(Fernet.generate_key())
        self._fernet = Fernet(key_path.read_bytes().strip())

    def folder(self, replica_id: str) -> Path:
        return private_dir(self.state_dir / replica_id)

    def records(self) -> list[Path]:
        return sorted(self.state_dir.glob(f"*/{RECORD}"))

    def write(self, directory: Path, spec: ReplicaSpec, **fields: Any) -> None:
        """Write the record of the replica in ``directory``: ``spec`` sealed, ``fields`` as is.
        The pod's other containers (their environments) and volumes (Secret files) are
        sealed as one more token, ``sealedPod``."""
        plain = spec.model_dump(mode="json", exclude={"env", *_POD})
        env = json.dumps(spec.env, sort_keys=True).encode()
        record = {"spec": plain, "sealedEnv": self._fernet.encrypt(env).decode(), **fields}
        pod = spec.model_dump(mode="json", include=set(_POD))
        if any(pod.values()):
            record["sealedPod"] = self._fernet.encrypt(json.dumps(pod).encode()).decode()
        write_private(directory / RECORD, json.dumps(record).encode())

    def read(self, path: Path) -> tuple[ReplicaSpec, dict[str, Any]]:
        """The spec (environment opened) and the other fields of a record.

        A record of an older version, with the environment in clear, is read as it is; the
        runtime writes it again sealed at once. An environment that does not open (its key
        lost) is read as empty: the replica is still adopted, not orphaned, and replaced as
        soon as the desired state shows its spec differs. ValueError if it cannot be read."""
        raw = json.loads(path.read_text())
        if not isinstance(raw, dict) or not isinstance(raw.get("spec"), dict):
            raise ValueError("not a replica record")
        spec = dict(raw.pop("spec"))
        pod = raw.pop("sealedPod", None)
        if pod is not None:
            try:
                spec.update(json.loads(self._fernet.decrypt(str(pod).encode())))
            except InvalidToken:
                log.warning("%s: its pod does not open with %s; read without it", path, _KEY)
        sealed = raw.pop("sealedEnv", None)
        if sealed is not None:
            try:
                spec["env"] = json.loads(self._fernet.decrypt(str(sealed).encode()))
            except InvalidToken:
                log.warning("%s: its environment does not open with %s; read as empty", path, _KEY)
                spec["env"] = {}
        return ReplicaSpec.model_validate(spec), raw
