"""Encryption at rest for Secret values.

Secrets are encrypted with Fernet (AES-128-CBC + HMAC-SHA256, from ``cryptography``) before
they reach the database. The key is generated on first start into ``<data-dir>/secret.key``
(mode 0600) or given by the operator (``KLED_SECRET_KEY``); losing it loses the secrets, so
the server refuses to start with a key that cannot read what is stored.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from cryptography.fernet import Fernet, InvalidToken

from kled.errors import KledError

ENCRYPTED_FIELD = "encryptedData"


class SecretCipher:
    def __init__(self, key: bytes) -> None:
        self._fernet = Fernet(key)

    @classmethod
    def from_data_dir(cls, data_dir: Path, key: str | None = None) -> SecretCipher:
        if key:
            return cls(key.encode())
        path = data_dir / "secret.key"
        if not path.exists():
            data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(Fernet.generate_key())
        return cls(path.read_bytes().strip())

    def seal(self, doc: dict[str, Any]) -> dict[str, Any]:
        """The document as stored: ``data`` replaced by one encrypted blob."""
        sealed = {k: v for k, v in doc.items() if k not in ("data", "stringData")}
        payload = json.dumps(doc.get("data") or {}, sort_keys=True).encode()
        sealed[ENCRYPTED_FIELD] = self._fernet.encrypt(payload).decode()
        return sealed

    def open(self, stored: dict[str, Any]) -> dict[str, Any]:
        if ENCRYPTED_FIELD not in stored:
            return stored
        doc = {k: v for k, v in stored.items() if k != ENCRYPTED_FIELD}
        try:
            doc["data"] = json.loads(self._fernet.decrypt(stored[ENCRYPTED_FIELD].encode()))
        except InvalidToken as e:
            raise KledError("the secret key cannot decrypt stored secrets (wrong key?)") from e
        return doc


def redact(doc: dict[str, Any]) -> dict[str, Any]:
    """A Secret as shown to those who may not read its values: keys only."""
    out = dict(doc)
    out["data"] = dict.fromkeys(doc.get("data") or {}, "")
    out.pop("stringData", None)
    return out
