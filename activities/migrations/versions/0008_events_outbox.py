"""events outbox and webhook endpoints (SPEC.md section 13)

Revision ID: 0008
Revises: 0007
Create Date: 2027-02-01 00:00:00

``event_outbox``: one row per event, inserted in the same transaction as the
ledger change it reports (activities/events.py), so an event exists exactly
when its change committed. ``id`` is allocated at insert; ``seq`` is assigned
after commit by one sequencer at a time (an advisory lock), in ``id`` order
over the rows it can see: a reader paging with ``seq > cursor`` never misses
an event that commits late, and a contract's events (written under its row
lock) get their ``seq`` in commit order.

``webhook_endpoints``: receivers registered through the API, each delivered
in ``seq`` order by its own Temporal workflow, which advances ``cursor_seq``
after the receiver acknowledged. The signing secret is kept to sign with
(Standard Webhooks secrets are symmetric) and shown once, at creation.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "event_outbox",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("event_id", sa.String(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=True),
        sa.Column("type", sa.String(), nullable=False),
        sa.Column("contract_id", sa.String(), nullable=True),
        sa.Column("occurred_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.Column("payload", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("event_id", name="uq_event_outbox_event_id"),
        sa.UniqueConstraint("seq", name="uq_event_outbox_seq"),
    )
    # What the sequencer reads: rows without a seq yet (few at any time).
    op.execute("CREATE INDEX ix_event_outbox_unsequenced ON event_outbox (id) WHERE seq IS NULL")
    op.create_index("ix_event_outbox_contract", "event_outbox", ["contract_id", "seq"])
    op.create_table(
        "webhook_endpoints",
        sa.Column("id", sa.String(), nullable=False),
        sa.Column("url", sa.String(), nullable=False),
        sa.Column("description", sa.String(), nullable=False, server_default=""),
        sa.Column("event_types", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("secret", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("cursor_seq", sa.BigInteger(), nullable=False),
        sa.Column("delivered", sa.BigInteger(), nullable=False, server_default="0"),
        sa.Column("last_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_error", sa.String(), nullable=True),
        sa.Column("failing_since", sa.DateTime(timezone=True), nullable=True),
        sa.Column("disabled_reason", sa.String(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("webhook_endpoints")
    op.drop_table("event_outbox")
