"""payment keys per contract, and each payment's first answer stored with it

Revision ID: 0006
Revises: 0005
Create Date: 2027-01-15 00:00:01

A payment's id is scoped to its contract (SPEC 10): ``UNIQUE (contract_id,
payment_key)`` replaces the global ``UNIQUE (payment_key)``. A resend answers
what the first call answered, so the payment row keeps the invoice's status,
amount paid and paid-on date as that call left them (NULL for payments
recorded before this revision: their resends answer with the invoice as it
stands).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # 0001 created the global constraint unnamed: PostgreSQL named it.
    op.drop_constraint("payments_payment_key_key", "payments", type_="unique")
    op.create_unique_constraint(
        "uq_payments_contract_payment_key", "payments", ["contract_id", "payment_key"]
    )
    op.add_column("payments", sa.Column("result_status", sa.String(), nullable=True))
    op.add_column("payments", sa.Column("result_amount_paid", sa.Numeric(), nullable=True))
    op.add_column("payments", sa.Column("result_paid_on", sa.Date(), nullable=True))


def downgrade() -> None:
    op.drop_column("payments", "result_paid_on")
    op.drop_column("payments", "result_amount_paid")
    op.drop_column("payments", "result_status")
    op.drop_constraint("uq_payments_contract_payment_key", "payments", type_="unique")
    # Fails if two contracts now share a payment id: resolve those first.
    op.create_unique_constraint("payments_payment_key_key", "payments", ["payment_key"])
