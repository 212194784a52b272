"""usage ingest mark: transactions that insert usage events say so before their first write

Revision ID: 0005
Revises: 0004
Create Date: 2027-01-15 00:00:00

Rating's watermark (activities/usage_query.py `read_watermark`) is held back
only by transactions that may still insert usage events. A transaction is one
exactly when it holds the shared transaction-level advisory lock
``INGEST_LOCK_KEY``, taken before it has a transaction id and kept until it
ends. ``billow_begin_usage_ingest()`` takes it (once per transaction) and
refuses a transaction that has already written something else; a statement
trigger calls it before every INSERT or COPY into ``usage_events``, so no
insert path can skip it. It also bounds how long the transaction may sit
idle (5 minutes), so a stuck producer cannot hold invoices back for good.
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# activities.usage_query.INGEST_LOCK_KEY ("usage_in"); a migration keeps its own copy.
_KEY = 0x75736167655F696E
_IDLE_MS = 300_000


def upgrade() -> None:
    op.execute(
        f"""
        CREATE FUNCTION billow_begin_usage_ingest() RETURNS void LANGUAGE plpgsql AS $$
        BEGIN
            IF current_setting('billow.usage_ingest', true) = 'on' THEN
                RETURN;
            END IF;
            -- The lock must be held from before the transaction has an xid:
            -- a close that sees neither the lock nor the commit would skip
            -- this transaction's events for good.
            IF pg_current_xact_id_if_assigned() IS NOT NULL THEN
                RAISE EXCEPTION 'usage_events: insert usage in a transaction of its own '
                    '(this one has already written something else)'
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          HINT = 'see activities/usage_query.py, read_watermark';
            END IF;
            PERFORM pg_advisory_xact_lock_shared({_KEY});
            -- Local to the transaction (and to a subtransaction that rolls
            -- back, like the lock itself).
            PERFORM set_config('billow.usage_ingest', 'on', true);
            -- An ingest transaction holds every close's watermark back while
            -- it is open: one left idle (a stuck client) is ended after
            -- {_IDLE_MS // 1000} s rather than holding invoices back for good.
            IF current_setting('idle_in_transaction_session_timeout')::interval = '0'
               OR current_setting('idle_in_transaction_session_timeout')::interval
                  > interval '{_IDLE_MS} milliseconds' THEN
                PERFORM set_config('idle_in_transaction_session_timeout', '{_IDLE_MS}', true);
            END IF;
        END $$
        """
    )
    op.execute(
        """
        CREATE FUNCTION billow_usage_ingest_trigger() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
            PERFORM billow_begin_usage_ingest();
            RETURN NULL;
        END $$
        """
    )
    op.execute(
        "CREATE TRIGGER usage_events_ingest_mark BEFORE INSERT ON usage_events "
        "FOR EACH STATEMENT EXECUTE FUNCTION billow_usage_ingest_trigger()"
    )


def downgrade() -> None:
    op.execute("DROP TRIGGER IF EXISTS usage_events_ingest_mark ON usage_events")
    op.execute("DROP FUNCTION IF EXISTS billow_usage_ingest_trigger()")
    op.execute("DROP FUNCTION IF EXISTS billow_begin_usage_ingest()")
