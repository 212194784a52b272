"""Usage ingestion: validate a batch per event, store it set-based, dedup by id forever.

`ingest_usage` takes up to `MAX_BATCH` raw events (what JSON decoding gives)
and returns one `IngestResult` per input event, in input order:

- ``rejected`` (with a reason naming the field) when the event fails
  `models.usage.UsageEvent` validation (empty id, timestamp without a UTC
  offset, quantity that is not a finite decimal, non-string dimension
  values, unknown fields ...), has a negative quantity, names a customer
  that is not in ``customers``, or names a meter that the customer's
  contracts do not know;
- ``duplicate`` when its id is already stored (sent before, in an earlier
  batch, or concurrently by another transaction), or appeared earlier in
  this batch: the first occurrence wins and the stored row is never updated,
  even if the resent payload differs;
- ``accepted`` when it was stored by this call.

Decisions:

- *Known meter* = a meter key in ``catalog_meters`` of any catalog version
  pinned by one of the customer's contracts (``contracts.catalog_version``),
  whatever the contract's status. Usage for an ended contract is still stored
  (SPEC 3: late events after the final invoice are recorded as unbilled and
  visible to ops); a customer with no contract has no known meter. The
  plan's meter list is not consulted: rating only bills the plan's meters,
  and a meter of the pinned catalog is a meter the customer may legitimately
  report.
- Validation comes before deduplication: only an event that passes every
  check claims its id, so a rejected event followed by its corrected resend
  in the same batch stores the resend. An event that is both invalid and a
  repeat is reported ``rejected``.
- Negative quantities are rejected here although `UsageEvent` allows them:
  corrections are new documents (credit notes), never negative usage.
- Set-based writes: one lookup of the batch's customers and their meters,
  then one ``INSERT ... SELECT FROM unnest(...) ON CONFLICT (event_id) DO
  NOTHING RETURNING event_id`` of the batch's distinct valid events, both in
  one transaction (a savepoint if the caller already opened one). Never row
  by row through the ORM: at 10,000 events per batch the round trips and the
  ORM's per-object work would dominate. ``unnest`` of binary-encoded arrays
  was measured against ``COPY`` into a temporary staging table (see
  bench/RESULTS.md): same server work, one round trip fewer, and no
  temporary-table catalog churn per batch.
- Rows are inserted in ``event_id`` order: two concurrent batches that share
  ids then take the unique-index locks in the same order and cannot deadlock.
- ``txid`` and ``received_at`` come from column defaults (the inserting
  transaction id is what rating's watermark compares against).
- More than `MAX_BATCH` events is refused before anything is read or written
  (`BatchTooLarge`; the API maps it to 413).
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from decimal import Decimal
from enum import StrEnum
from typing import Any, Final

import asyncpg
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from models._loading import validate_model
from models.errors import BillowValidationError
from models.usage import UsageEvent

__all__ = [
    "MAX_BATCH",
    "BatchTooLarge",
    "IngestReport",
    "IngestResult",
    "IngestStatus",
    "RawUsageEvent",
    "ingest_usage",
]

MAX_BATCH: Final = 10_000

RawUsageEvent = Mapping[str, Any]
"""One event as JSON gives it: ``{id, customer, meter, timestamp, quantity?, dimensions?}``."""


class BatchTooLarge(ValueError):
    """More events than one batch may carry; nothing was stored."""

    def __init__(self, size: int, limit: int = MAX_BATCH) -> None:
        self.size = size
        self.limit = limit
        super().__init__(
            f"events: batch of {size} events exceeds the limit of {limit}; "
            "split it into smaller batches"
        )


class IngestStatus(StrEnum):
    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    REJECTED = "rejected"


class IngestResult(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    index: int
    id: str | None  # None when the event had no usable id
    status: IngestStatus
    reason: str | None = None


class IngestReport(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    accepted: int = 0
    duplicate: int = 0
    rejected: int = 0
    results: list[IngestResult] = Field(default_factory=list)


# Customers of the batch and every meter their contracts' pinned catalogs know.
# LEFT JOINs keep a customer without contracts (meter NULL): known customer,
# no known meter.
_KNOWN_METERS_SQL = """
SELECT DISTINCT c.id, m.key
FROM customers c
LEFT JOIN contracts k ON k.customer_id = c.id
LEFT JOIN catalog_meters m ON m.version = k.catalog_version
WHERE c.id = ANY($1::text[])
"""

# ROWS FROM zips the arrays and the JSON array of dimensions element by element.
_INSERT_SQL = """
INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions)
SELECT * FROM ROWS FROM (
    unnest($1::text[]), unnest($2::text[]), unnest($3::text[]),
    unnest($4::text[]::timestamptz[]), unnest($5::text[]::numeric[]),
    jsonb_array_elements($6::jsonb)
)
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""

# Events validated per INSERT statement (see the pipeline in `ingest_usage`)
# and how often validation yields to the event loop meanwhile.
_CHUNK: Final = 2_000
_YIELD_EVERY: Final = 250
_DIMENSIONS: Final = TypeAdapter(list[dict[str, str]])

_ZERO = Decimal(0)


def _raw_id(raw: object) -> str | None:
    if isinstance(raw, UsageEvent):
        return raw.id
    if isinstance(raw, Mapping):
        value = raw.get("id")
        if isinstance(value, str) and value:
            return value
    return None


def _validate(raw: object) -> UsageEvent | str:
    """The event, or the reason it is rejected (``field: problem``)."""
    if isinstance(raw, UsageEvent):
        event = raw
    elif not isinstance(raw, Mapping):
        return f"event must be a JSON object, got {type(raw).__name__}"
    else:
        try:
            event = validate_model(UsageEvent, raw)
        except BillowValidationError as exc:
            return "; ".join(f"{p}: {r}" if p else r for p, r in exc.problems)
    if event.quantity < _ZERO:
        return f"quantity: must not be negative (got {event.quantity})"
    return event


def _sort_key(events: Sequence[object]) -> Any:
    def key(i: int) -> tuple[str, int]:
        return (_raw_id(events[i]) or "", i)

    return key


async def _load_known_meters(
    conn: asyncpg.Connection, events: Sequence[object]
) -> dict[str, set[str]]:
    """Customer -> meters their contracts know, for the customers the batch names."""
    names: set[str] = set()
    for raw in events:
        if isinstance(raw, UsageEvent):
            names.add(raw.customer)
        elif isinstance(raw, Mapping):
            customer = raw.get("customer")
            if isinstance(customer, str):
                names.add(customer)
    known: dict[str, set[str]] = {}
    if names:
        for customer, meter in await conn.fetch(_KNOWN_METERS_SQL, list(names)):
            meters = known.setdefault(customer, set())
            if meter is not None:
                meters.add(meter)
    return known


def _insert_args(rows: list[UsageEvent]) -> tuple[Any, ...]:
    # Text, parsed by the server: asyncpg's binary encoding of timestamptz,
    # numeric and jsonb arrays costs more client CPU than the whole INSERT
    # costs the server (bench/RESULTS.md). The values are already validated
    # and canonical (UTC ISO instants, finite decimals), so the server's
    # parsers accept exactly what pydantic accepted.
    return (
        [e.id for e in rows],
        [e.customer for e in rows],
        [e.meter for e in rows],
        [e.timestamp.isoformat() for e in rows],
        [str(e.quantity) for e in rows],
        _DIMENSIONS.dump_json([e.dimensions for e in rows]).decode(),
    )


async def ingest_usage(
    conn: asyncpg.Connection, events: Sequence[RawUsageEvent | UsageEvent]
) -> IngestReport:
    """Validate, deduplicate and store one batch in one transaction.

    ``events`` may also hold already validated `UsageEvent` objects (the CLI
    and the simulator parse JSONL with `models.usage.parse_usage_jsonl`).
    Raises `BatchTooLarge` for more than `MAX_BATCH` events, before touching
    the database.
    """
    n = len(events)
    if n > MAX_BATCH:
        raise BatchTooLarge(n)
    status: list[IngestStatus | None] = [None] * n
    reasons: list[str | None] = [None] * n
    first_index: dict[str, int] = {}  # event id -> index of its winning occurrence
    inserted: set[str] = set()
    # Event id order (stable, so the first occurrence of an id still comes
    # first): concurrent batches then take the primary key's locks in one
    # global order and cannot deadlock on shared ids.
    order = sorted(range(n), key=_sort_key(events))

    async with conn.transaction():
        known = await _load_known_meters(conn, events)
        # Pipeline: while the server inserts chunk k, this process validates
        # chunk k+1 (client and server CPU overlap). One connection runs one
        # statement at a time, so at most one INSERT is in flight.
        pending: asyncio.Future[list[asyncpg.Record]] | None = None
        try:
            for c in range(0, n, _CHUNK):
                rows: list[UsageEvent] = []
                for pos, i in enumerate(order[c : c + _CHUNK]):
                    if pos % _YIELD_EVERY == _YIELD_EVERY - 1:
                        # let the in-flight INSERT's task flush its request
                        await asyncio.sleep(0)
                    checked = _validate(events[i])
                    if isinstance(checked, str):
                        status[i], reasons[i] = IngestStatus.REJECTED, checked
                        continue
                    e = checked
                    meters = known.get(e.customer)
                    if meters is None:
                        status[i] = IngestStatus.REJECTED
                        reasons[i] = f"customer: unknown customer {e.customer!r}"
                    elif e.meter not in meters:
                        status[i] = IngestStatus.REJECTED
                        reasons[i] = (
                            f"meter: unknown meter {e.meter!r} for customer {e.customer!r}"
                            if meters
                            else f"meter: customer {e.customer!r} has no contract, "
                            "so no meter is known"
                        )
                    elif e.id in first_index:
                        status[i] = IngestStatus.DUPLICATE
                        reasons[i] = f"same id as event {first_index[e.id]} of this batch"
                    else:
                        first_index[e.id] = i
                        rows.append(e)
                if pending is not None:
                    inserted.update(r[0] for r in await pending)
                    pending = None
                if rows:
                    pending = asyncio.ensure_future(conn.fetch(_INSERT_SQL, *_insert_args(rows)))
                    await asyncio.sleep(0)  # start sending it before validating on
            if pending is not None:
                inserted.update(r[0] for r in await pending)
                pending = None
        finally:
            if pending is not None:
                # Never leave the transaction with a statement in flight.
                await asyncio.gather(pending, return_exceptions=True)

    for event_id, i in first_index.items():
        if event_id in inserted:
            status[i] = IngestStatus.ACCEPTED
        else:
            status[i], reasons[i] = IngestStatus.DUPLICATE, "already stored"

    results: list[IngestResult] = []
    counts = dict.fromkeys(IngestStatus, 0)
    for i, raw in enumerate(events):
        st = status[i]
        assert st is not None  # every index was classified above
        counts[st] += 1
        # model_construct: the fields are built here, not user input, and
        # validating 10,000 result objects would cost more than the INSERT.
        results.append(
            IngestResult.model_construct(index=i, id=_raw_id(raw), status=st, reason=reasons[i])
        )
    return IngestReport(
        accepted=counts[IngestStatus.ACCEPTED],
        duplicate=counts[IngestStatus.DUPLICATE],
        rejected=counts[IngestStatus.REJECTED],
        results=results,
    )
