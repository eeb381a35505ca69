"""Bearer credentials: API, node join and metrics tokens, stored only as SHA-256 hashes.

A token is ``kled_<random>``; the database keeps its hash, so a copy of the database does
not let anyone in. Each credential names who it speaks for (the server administrator, or a
user of one team) and may expire or be revoked. This table, not a Token document, is the
truth about whether a token works: the API shows a Token's ``revoked`` and ``expiresAt``
from here. A ``metrics`` credential reads ``/metrics`` and nothing else.
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, insert, select, update
from sqlalchemy.exc import IntegrityError

from kled.errors import Conflict, NotFound
from kled.store.database import Database
from kled.store.schema import credentials

ADMIN_USER = "admin"
#: a workspace's token: its owner's, named after the workspace, good while it exists
WORKSPACE_PURPOSE = "workspace"


@dataclass(frozen=True)
class Credential:
    purpose: str  # api | join | metrics | kube | workspace
    team: str  # "" for the server administrator and for node joins
    name: str
    username: str
    expires_at: datetime | None
    revoked: bool
    created_at: datetime

    @property
    def expires(self) -> datetime | None:
        """``expires_at`` in UTC (SQLite hands timestamps back without a zone)."""
        expires = self.expires_at
        if expires is not None and expires.tzinfo is None:
            expires = expires.replace(tzinfo=UTC)
        return expires

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        expires = self.expires
        return not self.revoked and (expires is None or expires > now)


def new_secret(prefix: str = "kled") -> str:
    return f"{prefix}_{secrets.token_urlsafe(32)}"


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


class Credentials:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def issue(
        self,
        *,
        purpose: str,
        team: str,
        name: str,
        username: str,
        expires_at: datetime | None = None,
        prefix: str = "kled",
    ) -> str:
        """Create a credential and return its secret, which is never stored."""
        secret = new_secret(prefix)
        try:
            async with self.db.read() as conn:
                await conn.execute(
                    insert(credentials).values(
                        purpose=purpose,
                        team=team,
                        name=name,
                        username=username,
                        secret_hash=hash_secret(secret),
                        expires_at=expires_at,
                        revoked=False,
                        created_at=datetime.now(UTC),
                    )
                )
                await conn.commit()
        except IntegrityError as e:
            raise Conflict(f"token {name!r} already exists") from e
        return secret

    async def reissue(self, *, purpose: str, team: str, name: str, username: str) -> str:
        """A new secret for the credential ``(purpose, team, name)``, made if it is not
        there: the one it had stops working (revoked or not, it works again)."""
        secret = new_secret()
        where = and_(
            credentials.c.purpose == purpose,
            credentials.c.team == team,
            credentials.c.name == name,
        )
        async with self.db.read() as conn:
            result = await conn.execute(
                update(credentials)
                .where(where)
                .values(
                    secret_hash=hash_secret(secret),
                    username=username,
                    expires_at=None,
                    revoked=False,
                    created_at=datetime.now(UTC),
                )
            )
            await conn.commit()
        if result.rowcount:
            return secret
        try:
            return await self.issue(purpose=purpose, team=team, name=name, username=username)
        except Conflict:  # made meanwhile by another caller: take it over
            return await self.reissue(purpose=purpose, team=team, name=name, username=username)

    async def lookup(self, secret: str) -> Credential | None:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(credentials).where(credentials.c.secret_hash == hash_secret(secret))
                )
            ).first()
        return None if row is None else _credential(row)

    async def listed(self, purpose: str, team: str) -> list[Credential]:
        """Every credential of ``purpose`` in ``team``, revoked and expired ones included."""
        async with self.db.read() as conn:
            rows = (
                await conn.execute(
                    select(credentials)
                    .where(and_(credentials.c.purpose == purpose, credentials.c.team == team))
                    .order_by(credentials.c.name)
                )
            ).all()
        return [_credential(row) for row in rows]

    async def revoke(self, purpose: str, team: str, name: str) -> None:
        async with self.db.read() as conn:
            result = await conn.execute(
                update(credentials)
                .where(
                    and_(
                        credentials.c.purpose == purpose,
                        credentials.c.team == team,
                        credentials.c.name == name,
                    )
                )
                .values(revoked=True)
            )
            await conn.commit()
        if result.rowcount == 0:
            raise NotFound(f"token {name!r} not found")

    async def revoke_user(self, team: str, username: str) -> None:
        async with self.db.read() as conn:
            await conn.execute(
                update(credentials)
                .where(and_(credentials.c.team == team, credentials.c.username == username))
                .values(revoked=True)
            )
            await conn.commit()

    async def exists(self, purpose: str, team: str) -> bool:
        async with self.db.read() as conn:
            row = (
                await conn.execute(
                    select(credentials.c.id)
                    .where(and_(credentials.c.purpose == purpose, credentials.c.team == team))
                    .limit(1)
                )
            ).first()
        return row is not None

    async def revoke_team(self, team: str) -> None:
        async with self.db.read() as conn:
            await conn.execute(
                update(credentials).where(credentials.c.team == team).values(revoked=True)
            )
            await conn.commit()


def _credential(row: Any) -> Credential:
    return Credential(
        row.purpose,
        row.team,
        row.name,
        row.username,
        row.expires_at,
        row.revoked,
        row.created_at,
    )
