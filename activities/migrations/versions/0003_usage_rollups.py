"""usage rollups: daily pre-aggregates that rating reads instead of raw events

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-24 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "usage_compactions",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("from_txid", sa.BigInteger(), nullable=False),
        sa.Column("upto_txid", sa.BigInteger(), nullable=False),
        sa.Column("folded_from", sa.DateTime(timezone=True), nullable=True),
        sa.Column("folded_before", sa.DateTime(timezone=True), nullable=False),
        sa.Column("events", sa.BigInteger(), nullable=False),
        sa.Column("rollup_rows", sa.BigInteger(), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("upto_txid", "folded_before"),
    )
    op.create_table(
        "usage_rollups",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("customer_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("meter", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("day", sa.DateTime(timezone=True), nullable=False),
        sa.Column("compaction_id", sa.BigInteger(), nullable=False),
        sa.Column("dimensions", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("quantity_sum", sa.Numeric(), nullable=False),
        sa.Column("event_count", sa.BigInteger(), nullable=False),
        sa.Column("quantity_max", sa.Numeric(), nullable=False),
        sa.Column("first_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_ts", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_event_id", sqlmodel.sql.sqltypes.AutoString(), nullable=False),
        sa.Column("last_quantity", sa.Numeric(), nullable=False),
        sa.ForeignKeyConstraint(["compaction_id"], ["usage_compactions.id"]),
        # A surrogate key: dimensions are unbounded (a b-tree entry holds at
        # most 2,704 bytes), and rows are unique by construction (GROUP BY).
        sa.PrimaryKeyConstraint("id"),
    )
    # Rating reads one customer's meter over a range of days.
    op.create_index(
        "ix_usage_rollups_customer_meter_day",
        "usage_rollups",
        ["customer_id", "meter", "day", "compaction_id"],
    )
    # The events a compaction has not folded yet ("the tail": inserted after
    # the last compaction) are found per customer by inserting transaction;
    # late-usage queries (a range of txids) use the same index. BRIN on txid
    # lets a compaction read only the block ranges written since the last one
    # (txids grow with the append-only table's physical order).
    op.execute("CREATE INDEX ix_usage_events_customer_txid ON usage_events (customer_id, txid)")
    op.execute("CREATE INDEX ix_usage_events_txid_brin ON usage_events USING brin (txid)")


def downgrade() -> None:
    op.execute("DROP INDEX IF EXISTS ix_usage_events_txid_brin")
    op.execute("DROP INDEX IF EXISTS ix_usage_events_customer_txid")
    op.drop_table("usage_rollups")
    op.drop_table("usage_compactions")
