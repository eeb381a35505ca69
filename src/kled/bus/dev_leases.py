"""The leases of ``kled dev`` sessions, where every control plane replica sees them.

A dev session is renewed by its CLI on whichever replica of the control plane its request
reaches, and lapses on whichever replica sweeps first; so the renewals live in a JetStream
key-value bucket (``<prefix>kled-dev-leases``, one key ``team.env.app`` per session,
value ``{"session", "at"}`` with ``at`` in Unix seconds), not in one replica's memory.
``MemoryLeases`` is the same thing for a control plane without a Message Office.
"""

from __future__ import annotations

import json
import time
from typing import Protocol

from nats.errors import Error as NatsError
from nats.js import api
from nats.js.errors import KeyNotFoundError, NoKeysError
from nats.js.kv import KeyValue

from kled.bus.office import MessageOffice
from kled.errors import Unavailable

#: one lease: the session it belongs to, and when it was last renewed (Unix seconds)
Lease = tuple[str, float]


class Leases(Protocol):
    async def renew(self, app: str, session: str) -> None: ...
    async def drop(self, app: str) -> None: ...
    async def all(self) -> dict[str, Lease]: ...


class MemoryLeases:
    """The leases of a control plane that runs alone."""

    def __init__(self) -> None:
        self._leases: dict[str, Lease] = {}

    async def renew(self, app: str, session: str) -> None:
        self._leases[app] = (session, time.time())

    async def drop(self, app: str) -> None:
        self._leases.pop(app, None)

    async def all(self) -> dict[str, Lease]:
        return dict(self._leases)


class BucketLeases:
    """The leases in the Message Office, shared by every replica of the control plane."""

    def __init__(self, office: MessageOffice) -> None:
        self.office = office
        self.bucket = f"{office.subjects.prefix}kled-dev-leases"
        self._kv: KeyValue | None = None

    async def _store(self) -> KeyValue:
        if self._kv is None:
            try:
                self._kv = await self.office.js.create_key_value(
                    api.KeyValueConfig(bucket=self.bucket, history=1)
                )
            except (TimeoutError, NatsError) as err:
                raise Unavailable(f"cannot open the bucket {self.bucket}: {err}") from err
        return self._kv

    async def renew(self, app: str, session: str) -> None:
        kv = await self._store()
        body = json.dumps({"session": session, "at": time.time()}).encode()
        try:
            await kv.put(app, body)
        except (TimeoutError, NatsError) as err:
            raise Unavailable(f"cannot renew the dev lease of {app}: {err}") from err

    async def drop(self, app: str) -> None:
        kv = await self._store()
        try:
            await kv.delete(app)
        except KeyNotFoundError:
            return
        except (TimeoutError, NatsError) as err:
            raise Unavailable(f"cannot drop the dev lease of {app}: {err}") from err

    async def all(self) -> dict[str, Lease]:
        kv = await self._store()
        out: dict[str, Lease] = {}
        try:
            keys = await kv.keys()
        except NoKeysError:
            return out
        except (TimeoutError, NatsError) as err:
            raise Unavailable(f"cannot read the dev leases: {err}") from err
        for key in keys:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            except (TimeoutError, NatsError) as err:
                raise Unavailable(f"cannot read the dev lease of {key}: {err}") from err
            try:
                data = json.loads(entry.value or b"{}")
                out[key] = (str(data["session"]), float(data["at"]))
            except (ValueError, KeyError, TypeError):
                continue
        return out
