"""The first schema: resources, event log, credentials, violations, IP allocations."""

from __future__ import annotations

from alembic import op

from kled.store.schema import metadata

revision = "0001"
down_revision = None


def upgrade() -> None:
    bind = op.get_bind()
    metadata.create_all(bind)
    op.execute("INSERT INTO revision (id, value) VALUES (1, 0)")


def downgrade() -> None:
    metadata.drop_all(op.get_bind())
