"""invoice full periods: the full billing-cycle period a usage invoice belongs to

Revision ID: 0010
Revises: 0009
Create Date: 2027-03-01 00:00:00

A usage invoice's ``period_start``/``period_end`` is the span it billed. A
first calendar period, or one shortened by a termination, is part of a
longer full cycle period, and its fees and period minimums are prorated
over that full period (SPEC.md section 2). Storing the full period with the
invoice lets a close rebuild the term's earlier periods from the ledger
instead of carrying them in every request (issue 13), and lets a reissue
prorate exactly as the first close did, whatever cycle the contract bills
under now. Both columns are NULL on invoices from before this revision and
on commitment and top-up invoices; readers fall back to computing the full
period from the terms (`activities.invoiced_periods`).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("invoices", sa.Column("full_period_start", sa.Date(), nullable=True))
    op.add_column("invoices", sa.Column("full_period_end", sa.Date(), nullable=True))


def downgrade() -> None:
    op.drop_column("invoices", "full_period_end")
    op.drop_column("invoices", "full_period_start")
