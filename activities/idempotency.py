"""Idempotency keys of mutating API requests (SPEC.md section 10).

A request sent with an ``Idempotency-Key`` first *claims* the key (scoped to
the caller's API key and the route) in the ``idempotency_keys`` table, whose
unique constraint decides between concurrent senders:

- ``Claimed``: this request runs; afterwards `complete` stores its response
  (a known outcome) or `release` gives the claim back (an unknown outcome:
  the retry runs the request again, which the request's own business ids make
  safe);
- ``Completed``: a retry, answered with the stored first response;
- ``InProgress``: the first request is still running;
- ``Mismatch``: the key was used for another request (a conflict).

Each step is its own short transaction: nothing is held open while the
request talks to Temporal. A claim expires (``lease``) so that a retry can
take over from an API process that died mid-request; the process running the
request keeps a short lease alive with `renew_key`, so a dead one's claim
lapses within one lease (not after the longest a request may take).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

__all__ = [
    "Claim",
    "Claimed",
    "Completed",
    "InProgress",
    "Mismatch",
    "claim_key",
    "complete_key",
    "release_key",
    "renew_key",
]


@dataclass(frozen=True)
class Claimed:
    row_id: int
    token: str


@dataclass(frozen=True)
class Completed:
    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True)
class InProgress:
    pass


@dataclass(frozen=True)
class Mismatch:
    pass


Claim = Claimed | Completed | InProgress | Mismatch


async def claim_key(
    conn: AsyncConnection, principal: str, route: str, key: str, request_hash: str,
    lease: timedelta,
) -> Claim:
    """Claim ``key`` for this request, or report what holds it. Commit right after."""
    token = uuid.uuid4().hex
    params = {"p": principal, "r": route, "k": key, "h": request_hash, "t": token,
              "lease": lease.total_seconds()}
    inserted = await conn.scalar(
        text(
            """
            INSERT INTO idempotency_keys (principal, route, key, request_hash, claim_token,
                claimed_until)
            VALUES (:p, :r, :k, :h, :t, now() + make_interval(secs => :lease))
            ON CONFLICT (principal, route, key) DO NOTHING RETURNING id
            """
        ),
        params,
    )
    if inserted is not None:
        return Claimed(int(inserted), token)
    row = (
        await conn.execute(
            text(
                "SELECT id, request_hash, status, content_type, response_body FROM "
                "idempotency_keys WHERE principal = :p AND route = :r AND key = :k"
            ),
            params,
        )
    ).one()
    if row.request_hash != request_hash:
        return Mismatch()
    if row.status is not None:
        return Completed(int(row.status), row.content_type, bytes(row.response_body or b""))
    # Free (released after an unknown outcome) or its holder's lease ran out.
    taken = await conn.scalar(
        text(
            """
            UPDATE idempotency_keys
            SET claim_token = :t, claimed_until = now() + make_interval(secs => :lease)
            WHERE id = :id AND status IS NULL
              AND (claim_token IS NULL OR claimed_until < now())
            RETURNING id
            """
        ),
        {**params, "id": row.id},
    )
    return InProgress() if taken is None else Claimed(int(row.id), token)


async def complete_key(
    conn: AsyncConnection, claim: Claimed, status: int, content_type: str | None, body: bytes
) -> bool:
    """Store the response of a known outcome; False if the claim was lost meanwhile."""
    stored = await conn.scalar(
        text(
            """
            UPDATE idempotency_keys
            SET status = :s, content_type = :ct, response_body = :b, completed_at = now(),
                claim_token = NULL, claimed_until = NULL
            WHERE id = :id AND claim_token = :t RETURNING id
            """
        ),
        {"id": claim.row_id, "t": claim.token, "s": status, "ct": content_type, "b": body},
    )
    return stored is not None


async def renew_key(conn: AsyncConnection, claim: Claimed, lease: timedelta) -> bool:
    """Extend a claim this process still holds by ``lease`` from now; False once it
    was lost (its lease ran out and a retry took over) or completed."""
    renewed = await conn.scalar(
        text(
            """
            UPDATE idempotency_keys SET claimed_until = now() + make_interval(secs => :lease)
            WHERE id = :id AND claim_token = :t AND status IS NULL RETURNING id
            """
        ),
        {"id": claim.row_id, "t": claim.token, "lease": lease.total_seconds()},
    )
    return renewed is not None


async def release_key(conn: AsyncConnection, claim: Claimed) -> None:
    """Give the claim back (the outcome is unknown): a retry runs the request again."""
    await conn.execute(
        text(
            "UPDATE idempotency_keys SET claim_token = NULL, claimed_until = NULL "
            "WHERE id = :id AND claim_token = :t"
        ),
        {"id": claim.row_id, "t": claim.token},
    )
