"""The kept record of policy violations: bounded per policy, newest first.

kPolicy reports every deny, warn and dry-run finding here; ``kled policy report`` and
``kled describe policy`` read it back. Each policy keeps its newest ``per_policy`` entries so
a noisy policy cannot fill the database.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import and_, delete, insert, select

from kled.store.database import Database
from kled.store.schema import violations

COLUMNS = ("action", "message", "reason", "code", "kind", "name", "operation")


class ViolationLog:
    def __init__(self, db: Database, per_policy: int = 100) -> None:
        self.db = db
        self.per_policy = per_policy

    async def record(self, entry: dict[str, Any]) -> None:
        when = entry.get("time")
        created = (
            datetime.fromisoformat(str(when).replace("Z", "+00:00")) if when else datetime.now(UTC)
        )
        team, policy = str(entry["team"]), str(entry["policy"])
        values: dict[str, Any] = {c: entry.get(c) or ("" if c != "code" else 403) for c in COLUMNS}
        values["message"] = str(values["message"])[:4000]
        values["reason"] = str(values["reason"])[:120]
        async with self.db.read() as conn:
            await conn.execute(
                insert(violations).values(
                    team=team,
                    policy=policy,
                    environment=entry.get("environment") or "",
                    username=entry.get("user") or "",
                    request_uid=entry.get("request_uid") or "",
                    created_at=created,
                    **values,
                )
            )
            keep = (
                select(violations.c.id)
                .where(and_(violations.c.team == team, violations.c.policy == policy))
                .order_by(violations.c.id.desc())
                .limit(self.per_policy)
            )
            oldest_kept = (
                await conn.execute(select(keep.subquery().c.id).order_by("id").limit(1))
            ).scalar()
            if oldest_kept is not None:
                await conn.execute(
                    delete(violations).where(
                        and_(
                            violations.c.team == team,
                            violations.c.policy == policy,
                            violations.c.id < oldest_kept,
                        )
                    )
                )
            await conn.commit()

    async def list(self, team: str, policy: str | None, limit: int) -> list[dict[str, Any]]:
        query = select(violations).where(violations.c.team == team)
        if policy is not None:
            query = query.where(violations.c.policy == policy)
        query = query.order_by(violations.c.id.desc()).limit(max(0, limit))
        async with self.db.read() as conn:
            rows = (await conn.execute(query)).all()
        return [
            {
                "team": r.team,
                "policy": r.policy,
                "action": r.action,
                "message": r.message,
                "reason": r.reason,
                "code": r.code,
                "kind": r.kind,
                "name": r.name,
                "environment": r.environment or None,
                "operation": r.operation,
                "user": r.username,
                "request_uid": r.request_uid,
                "time": _utc(r.created_at).isoformat().replace("+00:00", "Z"),
            }
            for r in rows
        ]


def _utc(ts: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything stored here is UTC.
    return ts if ts.tzinfo else ts.replace(tzinfo=UTC)
