"""unapplied payments: money a gateway took that no invoice could take

Revision ID: 0007
Revises: 0006
Create Date: 2027-01-15 00:00:02

An auto-pay charge runs outside the contract's lock, so the invoice can be
paid another way (a wire) while the card is charged. The gateway then took
money the ledger refuses to put on the invoice. It is recorded here, with its
journal entry (cash against receivable: the customer's credit balance), and
flagged for ops to refund or apply - never only logged. Idempotent on
``(contract_id, payment_key)``, the charge's gateway key.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "unapplied_payments",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("contract_id", sa.String(), sa.ForeignKey("contracts.id"), nullable=False),
        sa.Column("payment_key", sa.String(), nullable=False),
        sa.Column("invoice_key", sa.String(), nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("received_on", sa.Date(), nullable=False),
        sa.Column("method", sa.String(), nullable=False),
        sa.Column("gateway_ref", sa.String(), nullable=True),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                  nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("contract_id", "payment_key",
                            name="uq_unapplied_payments_contract_key"),
    )


def downgrade() -> None:
    op.drop_table("unapplied_payments")
