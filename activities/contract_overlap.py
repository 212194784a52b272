"""Two contracts of one customer whose terms overlap must not share a meter.

Usage is attributed by customer and meter (SPEC.md section 1): if two
contracts of a customer both bill meter ``tokens`` over the same instant,
every event in that stretch is billed twice. Creating such a contract, or
extending one into such an overlap, is refused as a conflict naming the
other contract.

The check is race-free only together with the write it guards:
`overlapping_contract` takes the customer's transaction-scoped advisory lock,
so two creates (or a create and an ``extend_term``) of one customer's
contracts are serialized until the transaction that checks and then writes
the term commits.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = ["lock_customer_contracts", "overlapping_contract"]


async def lock_customer_contracts(conn: AsyncConnection, customer_id: str) -> None:
    """Serialize term changes of one customer's contracts until this transaction ends.

    Re-entrant within a transaction (PostgreSQL advisory locks stack), so a
    caller may take it before calling `overlapping_contract`.
    """
    await conn.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:key))"),
        {"key": f"billow:customer-contracts:{customer_id}"},
    )


async def overlapping_contract(
    conn: AsyncConnection,
    customer_id: str,
    meters: Iterable[str],
    start: datetime,
    end: datetime,
    exclude_id: str | None,
) -> str | None:
    """Id of another contract of ``customer_id`` billing one of ``meters`` during
    ``[start, end)`` (UTC instants), or None.

    Terms are compared as instants (each contract's local midnights in its own
    timezone), since usage is attributed by event timestamp. Every contract
    counts whatever its status: an ended or terminated contract still owns
    its term's usage (its ``term_end`` is where it actually ended). Call it in
    the transaction that writes the new or extended term; it takes the
    customer's lock (`lock_customer_contracts`).
    """
    keys = sorted(set(meters))
    if not keys or end <= start:
        return None
    await lock_customer_contracts(conn, customer_id)
    found = await conn.scalar(
        text(
            """
            SELECT c.id FROM contracts c
            WHERE c.customer_id = :customer
              AND (CAST(:exclude AS text) IS NULL OR c.id <> :exclude)
              AND (c.starts_on::timestamp AT TIME ZONE COALESCE(c.terms->>'timezone', 'UTC'))
                  < :end
              AND (c.term_end::timestamp AT TIME ZONE COALESCE(c.terms->>'timezone', 'UTC'))
                  > :start
              AND EXISTS (
                  SELECT 1 FROM jsonb_array_elements(c.terms->'meters') AS m
                  WHERE m->>'key' = ANY(CAST(:meters AS text[])))
            ORDER BY c.starts_on, c.id
            LIMIT 1
            """
        ),
        {"customer": customer_id, "exclude": exclude_id, "start": start, "end": end,
         "meters": keys},
    )
    return None if found is None else str(found)
