"""The database tables, one place for every backend (SQLite and PostgreSQL).

Resources are stored whole as JSON documents beside the columns the store filters on; the
event log holds one row per change with a gap-free sequence number taken from the single
``revision`` row inside the writing transaction, which also serialises writers, so events
become visible in sequence order. Migrations (Alembic, ``store/migrations``) create these
tables; the metadata here is what they are checked against.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
)

metadata = MetaData()

revision = Table(
    "revision",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("value", BigInteger, nullable=False),
)

resources = Table(
    "resources",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("uid", String(36), nullable=False, unique=True),
    Column("kind", String(40), nullable=False),
    Column("team", String(63), nullable=False),  # "" for server-wide kinds
    Column("environment", String(63), nullable=False),  # "" unless environment-scoped
    Column("name", String(63), nullable=False),
    Column("resource_version", BigInteger, nullable=False),
    Column("generation", BigInteger, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("deleted_at", DateTime(timezone=True), nullable=True),
    Column("labels", JSON, nullable=False),
    Column("doc", JSON, nullable=False),
    UniqueConstraint("kind", "team", "environment", "name", name="uq_resources_identity"),
)
Index("ix_resources_list", resources.c.kind, resources.c.team, resources.c.environment)

events = Table(
    "events",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=False),
    Column("type", String(10), nullable=False),  # ADDED | MODIFIED | DELETED
    Column("kind", String(40), nullable=False),
    Column("team", String(63), nullable=False),
    Column("environment", String(63), nullable=False),
    Column("name", String(63), nullable=False),
    Column("object", JSON, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

credentials = Table(
    "credentials",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("purpose", String(16), nullable=False),  # api | join
    Column("team", String(63), nullable=False),  # "" for the server administrator / joins
    Column("name", String(63), nullable=False),  # the Token resource's name
    Column("username", String(63), nullable=False),
    Column("secret_hash", String(64), nullable=False, unique=True),
    Column("expires_at", DateTime(timezone=True), nullable=True),
    Column("revoked", Boolean, nullable=False, default=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("purpose", "team", "name", name="uq_credentials_name"),
)

violations = Table(
    "violations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("team", String(63), nullable=False),
    Column("policy", String(63), nullable=False),
    Column("action", String(10), nullable=False),
    Column("message", Text, nullable=False),
    Column("reason", String(120), nullable=False),
    Column("code", Integer, nullable=False),
    Column("kind", String(40), nullable=False),
    Column("name", String(63), nullable=False),
    Column("environment", String(63), nullable=False),
    Column("operation", String(10), nullable=False),
    Column("username", String(63), nullable=False),
    Column("request_uid", String(64), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
Index("ix_violations_policy", violations.c.team, violations.c.policy, violations.c.id)

ip_allocations = Table(
    "ip_allocations",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("team", String(63), nullable=False),
    Column("pool", String(16), nullable=False),  # block | mesh | service | pods
    Column("address", String(43), nullable=False, unique=True),  # an address or a CIDR
    Column("owner_kind", String(40), nullable=False),
    Column("owner_name", String(160), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    UniqueConstraint("team", "pool", "owner_kind", "owner_name", name="uq_ip_owner"),
)
