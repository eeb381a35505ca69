"""The first schema: resources, event log, credentials, violations, IP allocations.

Written out table by table (not from ``schema.metadata``) so that this revision keeps
describing the first schema when later revisions change the tables.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "revision",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("value", sa.BigInteger, nullable=False),
    )
    op.execute("INSERT INTO revision (id, value) VALUES (1, 0)")
    op.create_table(
        "resources",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("uid", sa.String(36), nullable=False, unique=True),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("environment", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("resource_version", sa.BigInteger, nullable=False),
        sa.Column("generation", sa.BigInteger, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.Column("deleted_at", TS, nullable=True),
        sa.Column("labels", sa.JSON, nullable=False),
        sa.Column("doc", sa.JSON, nullable=False),
        sa.UniqueConstraint("kind", "team", "environment", "name", name="uq_resources_identity"),
    )
    op.create_index("ix_resources_list", "resources", ["kind", "team", "environment"])
    op.create_table(
        "events",
        sa.Column("seq", sa.BigInteger, primary_key=True, autoincrement=False),
        sa.Column("type", sa.String(10), nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("environment", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("object", sa.JSON, nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_table(
        "credentials",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("purpose", sa.String(16), nullable=False),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("username", sa.String(63), nullable=False),
        sa.Column("secret_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("expires_at", TS, nullable=True),
        sa.Column("revoked", sa.Boolean, nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("purpose", "team", "name", name="uq_credentials_name"),
    )
    op.create_table(
        "violations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("policy", sa.String(63), nullable=False),
        sa.Column("action", sa.String(10), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("reason", sa.String(120), nullable=False),
        sa.Column("code", sa.Integer, nullable=False),
        sa.Column("kind", sa.String(40), nullable=False),
        sa.Column("name", sa.String(63), nullable=False),
        sa.Column("environment", sa.String(63), nullable=False),
        sa.Column("operation", sa.String(10), nullable=False),
        sa.Column("username", sa.String(63), nullable=False),
        sa.Column("request_uid", sa.String(64), nullable=False),
        sa.Column("created_at", TS, nullable=False),
    )
    op.create_index("ix_violations_policy", "violations", ["team", "policy", "id"])
    op.create_table(
        "ip_allocations",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("team", sa.String(63), nullable=False),
        sa.Column("pool", sa.String(16), nullable=False),
        sa.Column("address", sa.String(43), nullable=False, unique=True),
        sa.Column("owner_kind", sa.String(40), nullable=False),
        sa.Column("owner_name", sa.String(160), nullable=False),
        sa.Column("created_at", TS, nullable=False),
        sa.UniqueConstraint("team", "pool", "owner_kind", "owner_name", name="uq_ip_owner"),
    )


def downgrade() -> None:
    for table in ("ip_allocations", "violations", "credentials", "events", "resources", "revision"):
        op.drop_table(table)
