"""corrections: void, reissue, credit notes and refunds (SPEC.md section 11)

Revision ID: 0008
Revises: 0007
Create Date: 2027-02-01 00:00:00

Finalized invoices never change their lines; a correction is a document of
its own. This revision adds:

- ``corrections``: one row per void, reissue or credit, idempotent on
  ``(contract_id, correction_id)`` (one id space for the three), with the
  request's digest (the same id with other content is a conflict) and the
  first answer, which a resend gets again;
- ``credit_notes`` and ``credit_note_lines``: numbered at issue in their own
  gapless series (``invoice_number_series`` row ``credit_notes``, ``CN-``),
  with the allocation of each note;
- ``refunds``: money paid back through the payment gateway, idempotent on
  ``(contract_id, refund_key)``;
- on ``invoices``: ``credited`` (sum of its notes), ``credit_allocated``
  (what its notes took off the amount owed), ``voided_on`` and
  ``reissue_of`` (the voided invoice a reissue replaces);
- on ``journal_lines``: ``grant_id``, so one reversing entry can move the
  deferred revenue of several grants;
- on ``credit_ledger``: ``price_amount``, the change of a grant's amount paid
  on a ``revoke`` row (credits that leave ``granted``).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _now() -> sa.Column[sa.DateTime]:
    return sa.Column("created_at", sa.DateTime(timezone=True), server_default=sa.text("now()"),
                     nullable=False)


def upgrade() -> None:
    op.create_table(
        "corrections",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("contract_id", sa.String(), sa.ForeignKey("contracts.id"), nullable=False),
        sa.Column("correction_id", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("invoice_key", sa.String(), nullable=False),
        sa.Column("digest", sa.String(), nullable=False),
        sa.Column("document", postgresql.JSONB(), nullable=False),
        sa.Column("result", postgresql.JSONB(), nullable=False),
        _now(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("contract_id", "correction_id", name="uq_corrections_contract_id"),
    )
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("contract_id", sa.String(), sa.ForeignKey("contracts.id"), nullable=False),
        sa.Column("correction_id", sa.String(), nullable=False),
        sa.Column("number", sa.String(), nullable=True, unique=True),
        sa.Column("invoice_id", sa.BigInteger(), sa.ForeignKey("invoices.id"), nullable=False),
        sa.Column("invoice_key", sa.String(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("issued_on", sa.Date(), nullable=False),
        sa.Column("reason", sa.String(), nullable=False),
        sa.Column("total", sa.Numeric(), nullable=False),
        sa.Column("credits_returned", sa.Numeric(), nullable=False),
        sa.Column("outstanding_reduced", sa.Numeric(), nullable=False),
        sa.Column("refunded", sa.Numeric(), nullable=False),
        sa.Column("customer_credit", sa.Numeric(), nullable=False),
        sa.Column("automatic", sa.Boolean(), nullable=False, server_default=sa.false()),
        _now(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("contract_id", "correction_id", name="uq_credit_notes_contract_id"),
    )
    op.create_index("ix_credit_notes_invoice_id", "credit_notes", ["invoice_id"])
    op.create_table(
        "credit_note_lines",
        sa.Column("credit_note_id", sa.BigInteger(), sa.ForeignKey("credit_notes.id"),
                  nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        # 1-based position of the credited line on its invoice (SPEC.md section 11).
        sa.Column("invoice_line", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        # Set on automatic notes (a fall in late usage): the quantity taken back,
        # which later late-usage comparisons subtract from what was billed.
        sa.Column("quantity", sa.Numeric(), nullable=True),
        sa.PrimaryKeyConstraint("credit_note_id", "position"),
    )
    op.create_table(
        "refunds",
        sa.Column("id", sa.BigInteger(), sa.Identity(always=False), nullable=False),
        sa.Column("contract_id", sa.String(), sa.ForeignKey("contracts.id"), nullable=False),
        sa.Column("refund_key", sa.String(), nullable=False),
        sa.Column("credit_note_id", sa.BigInteger(), sa.ForeignKey("credit_notes.id"),
                  nullable=False),
        sa.Column("amount", sa.Numeric(), nullable=False),
        sa.Column("currency", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),  # pending | refunded
        sa.Column("method", sa.String(), nullable=True),
        sa.Column("gateway_ref", sa.String(), nullable=True),
        sa.Column("refunded_on", sa.Date(), nullable=True),
        _now(),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("contract_id", "refund_key", name="uq_refunds_contract_key"),
    )
    op.add_column("invoices", sa.Column("credited", sa.Numeric(), nullable=False,
                                        server_default="0"))
    op.add_column("invoices", sa.Column("credit_allocated", sa.Numeric(), nullable=False,
                                        server_default="0"))
    op.add_column("invoices", sa.Column("voided_on", sa.Date(), nullable=True))
    op.add_column("invoices", sa.Column("reissue_of", sa.String(), nullable=True))
    op.add_column("journal_lines", sa.Column("grant_id", sa.String(), nullable=True))
    op.add_column("credit_ledger", sa.Column("price_amount", sa.Numeric(), nullable=True))
    op.execute(
        "INSERT INTO invoice_number_series (series, prefix, next_value) "
        "VALUES ('credit_notes', 'CN-', 1) ON CONFLICT (series) DO NOTHING"
    )


def downgrade() -> None:
    op.execute("DELETE FROM invoice_number_series WHERE series = 'credit_notes'")
    op.drop_column("credit_ledger", "price_amount")
    op.drop_column("journal_lines", "grant_id")
    op.drop_column("invoices", "reissue_of")
    op.drop_column("invoices", "voided_on")
    op.drop_column("invoices", "credit_allocated")
    op.drop_column("invoices", "credited")
    op.drop_table("refunds")
    op.drop_table("credit_note_lines")
    op.drop_index("ix_credit_notes_invoice_id", "credit_notes")
    op.drop_table("credit_notes")
    op.drop_table("corrections")
