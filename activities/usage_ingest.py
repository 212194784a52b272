"""Usage ingestion: validate a batch per event, store it set-based, dedup by id forever.

`ingest_usage` takes up to `MAX_BATCH` raw events (what JSON decoding gives)
and returns one `IngestResult` per input event, in input order:

- ``rejected`` (with a reason naming the field) when the event fails
  `models.usage.UsageEvent` validation (empty id, timestamp without a UTC
  offset, quantity that is not a finite decimal, non-string dimension
  values, negative quantity, unknown fields ...), names a customer
  that is not in ``customers``, or names a meter that the customer's
  contracts do not know;
- ``duplicate`` when its id is already stored (sent before, in an earlier
  batch, or concurrently by another transaction), or appeared earlier in
  this batch, with the same content: a resend, stored once;
- ``conflict`` when its id is stored (or appeared earlier in this batch)
  with other content: another customer, meter, instant, quantity (by value:
  ``10`` and ``10.0`` are one quantity) or dimensions (SPEC 3). The reason
  names each differing field (``quantity: stored 10, sent 12; ...``); the
  stored row is never updated, and the event is counted in
  ``billow_usage_events_total{status="conflict"}``;
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
- Set-based writes, never row by row through the ORM, all in one
  transaction (a savepoint if the caller already opened one): one lookup
  of the batch's customers and their meters, one of its ids already
  stored, then a plain ``INSERT ... SELECT FROM jsonb_array_elements(...)``
  of the rest per chunk of 1,000 events.
- The primary key makes dedup exact under concurrency: if another batch
  stores one of the ids after the lookup, the INSERT fails with a unique
  violation, the savepoint rolls back, and the batch is redone with ``INSERT
  ... ON CONFLICT (event_id) DO NOTHING RETURNING event_id`` (``RETURNING``
  tells accepted from already stored). Speculative insertion costs more than
  the lookup, so it is kept for the race.
- Validation runs in pydantic-core for the common shape of an event
  (`_PlainEvent`, a strict subset of `UsageEvent`); a slice holding
  anything else is decided by `UsageEvent` itself, event by event.
- The chunks are pipelined: while the server inserts chunk k this process
  validates chunk k+1, and the report is built while the last INSERT runs.
- Rows are written in ``event_id`` order: two concurrent batches that share
  ids then take the primary key's locks in the same order and cannot
  deadlock.
- ``txid`` and ``received_at`` come from column defaults (the inserting
  transaction id is what rating's watermark compares against). The batch's
  transaction is an *ingest transaction* (activities/usage_query.py): the
  table's trigger takes the ingest lock before the first row, so it must
  not have written anything else before (a caller's transaction is marked
  before the savepoint, and refused if it has).
- More than `MAX_BATCH` events is refused before anything is read or written
  (`BatchTooLarge`; the API maps it to 413).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any, Final, NotRequired

import asyncpg  # type: ignore[import-untyped, unused-ignore]  # no stubs shipped
from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    StringConstraints,
    TypeAdapter,
    ValidationError,
)
from typing_extensions import TypedDict  # pydantic needs it on Python < 3.12

from activities import metrics
from models._loading import validate_model
from models.errors import BillowValidationError
from models.usage import MAX_TEXT, UsageEvent

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
    CONFLICT = "conflict"
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
    conflict: int = 0
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

# A chunk travels as one JSON document, an array of
# ``[id, customer, meter, timestamp, quantity, dimensions]`` rows that
# pydantic serializes in Rust and the server unpacks. Measured cheaper for
# both sides than binary COPY or typed arrays (whose per-value encoding in
# Python made the client the bottleneck) and than an array of objects
# (bench/RESULTS.md). The values are validated and canonical by then (UTC ISO
# instants, finite decimals as strings), so the server's parsers accept them.
_INSERT_SQL = """
INSERT INTO usage_events (event_id, customer_id, meter, ts, quantity, dimensions)
SELECT r ->> 0, r ->> 1, r ->> 2, (r ->> 3)::timestamptz, (r ->> 4)::numeric, r -> 5
FROM jsonb_array_elements($1::text::jsonb) AS r
ON CONFLICT (event_id) DO NOTHING
RETURNING event_id
"""
# The fast path: ids already stored were found by `_STORED_SQL` first, so a
# plain INSERT stores the rest; it costs the server a fifth less than the
# speculative insertion of ON CONFLICT (bench/RESULTS.md). A batch that races
# a concurrent one for an id fails with a unique violation and is redone on
# the ON CONFLICT path.
_PLAIN_INSERT_SQL = _INSERT_SQL.replace(
    "ON CONFLICT (event_id) DO NOTHING\nRETURNING event_id\n", ""
)
# What an id already stored holds, to tell a resend from a conflict.
_STORED_SQL = """
SELECT event_id, customer_id, meter, ts, quantity, dimensions::text
FROM usage_events WHERE event_id = ANY($1::text[])
"""

# Events per INSERT statement (see the pipeline in `ingest_usage`), and per
# pydantic call while validating (the event loop runs between slices).
_CHUNK: Final = 1_000
_SLICE: Final = 250

# No NUL (PostgreSQL text cannot hold it); the Rust regex costs ~nothing.
_NonEmpty = Annotated[
    StrictStr, StringConstraints(min_length=1, max_length=MAX_TEXT, pattern=r"^[^\x00]*$")
]
_Text = Annotated[StrictStr, StringConstraints(max_length=MAX_TEXT, pattern=r"^[^\x00]*$")]


class _PlainEvent(TypedDict):
    """The common shape of a valid event, checked entirely inside pydantic-core.

    A strict subset of what `UsageEvent` accepts, with the same values:
    ``quantity`` only as a plain non-negative decimal string or a
    non-negative integer, strings only where strings go. An event outside
    the subset (``"1e3"``, ``" 5"``, a float, a bad value) is not rejected
    here: its slice is validated again by `UsageEvent`, which decides and
    words the reason. `UsageEvent`'s own validators run in Python and cost
    three times as much per event (bench/RESULTS.md).
    """

    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]
    id: _NonEmpty
    customer: _NonEmpty
    meter: _NonEmpty
    timestamp: AwareDatetime
    # At most 18 integer digits and 12 decimals: below 10^18 (SPEC 6). Wider
    # spellings of a valid quantity ("1.5000000000000") go to `UsageEvent`.
    quantity: NotRequired[
        Annotated[StrictStr, StringConstraints(pattern=r"^[0-9]{1,18}(\.[0-9]{1,12})?$")]
        | Annotated[StrictInt, Field(ge=0, lt=10**18)]
    ]
    dimensions: NotRequired[dict[_Text, _Text]]


_Row = tuple[str, str, str, datetime, str | int | Decimal, dict[str, str]]
"""A validated event as it is written: id, customer, meter, timestamp, quantity, dimensions."""

_PLAIN: Final = TypeAdapter(list[_PlainEvent])
# pydantic's serializers for these types run in Rust.
_ROWS: Final = TypeAdapter(list[_Row])
_RESULTS: Final = TypeAdapter(list[IngestResult])


def _usable(value: object) -> bool:
    """Whether ``value`` could be a valid id or name: what may be sent to the
    server in a lookup, and echoed in the report (which must encode as UTF-8)."""
    if not isinstance(value, str) or not 0 < len(value) <= MAX_TEXT or "\x00" in value:
        return False
    if value.isascii():
        return True
    try:
        value.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _raw_id(raw: object) -> str | None:
    # dict first: isinstance against the Mapping ABC is slow at 10,000 a batch.
    if type(raw) is dict or isinstance(raw, Mapping):
        value = raw.get("id")
        return value if _usable(value) else None
    if isinstance(raw, UsageEvent):
        return raw.id
    return None


def _rejection(raw: object) -> str:
    """Why ``raw`` fails `UsageEvent` validation (``field: problem; ...``)."""
    if not isinstance(raw, Mapping):
        return f"event must be a JSON object, got {type(raw).__name__}"
    try:
        validate_model(UsageEvent, raw)
    except BillowValidationError as exc:
        return "; ".join(f"{p}: {r}" if p else r for p, r in exc.problems)
    raise AssertionError("event validated on its own but not in its batch")  # pragma: no cover


def _validate_many(raws: list[object]) -> list[_Row | str]:
    """Each event as a row, or the reason it is rejected.

    The whole slice goes through pydantic-core in one call; only a slice
    holding an event outside `_PlainEvent` is validated again, event by
    event, by `UsageEvent`.
    """
    rows = _plain_rows(raws)
    return list(rows) if rows is not None else [_validate_one(r) for r in raws]


def _plain_rows(raws: list[object]) -> list[_Row] | None:
    """The slice as rows if every event has the common shape, else None."""
    if not all(type(r) is dict for r in raws):
        return None
    try:
        return [
            (
                e["id"],
                e["customer"],
                e["meter"],
                # as `UsageEvent` does; an instant outside years 1-9999 in
                # UTC overflows, and `UsageEvent` words the rejection
                e["timestamp"].astimezone(UTC),
                e.get("quantity", 1),
                e.get("dimensions", {}),
            )
            for e in _PLAIN.validate_python(raws)
        ]
    except (ValidationError, OverflowError):
        return None


def _validate_one(raw: object) -> _Row | str:
    try:
        e = raw if isinstance(raw, UsageEvent) else UsageEvent.model_validate(raw)
    except ValidationError:
        return _rejection(raw)
    return (e.id, e.customer, e.meter, e.timestamp, e.quantity, e.dimensions)


async def _load_known_meters(
    conn: asyncpg.Connection, events: Sequence[object]
) -> dict[str, set[str]]:
    """Customer -> meters their contracts know, for the customers the batch names."""
    names: set[str] = set()
    for raw in events:
        if type(raw) is dict or isinstance(raw, Mapping):
            customer = raw.get("customer")
            if isinstance(customer, str) and _usable(customer):
                names.add(customer)
        elif isinstance(raw, UsageEvent):
            names.add(raw.customer)
    known: dict[str, set[str]] = {}
    if names:
        for customer, meter in await conn.fetch(_KNOWN_METERS_SQL, list(names)):
            meters = known.setdefault(customer, set())
            if meter is not None:
                meters.add(meter)
    return known


def _meter_rejection(customer: str, meter: str, meters: set[str] | None) -> str | None:
    if meters is None:
        return f"customer: unknown customer {customer!r}"
    if meter in meters:
        return None
    if not meters:
        return f"meter: customer {customer!r} has no contract, so no meter is known"
    return f"meter: unknown meter {meter!r} for customer {customer!r}"


def _show(value: object) -> str:
    if value is None:
        return "nothing"
    if isinstance(value, datetime):
        return value.isoformat()
    text = repr(value) if isinstance(value, str) else str(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _differences(sent: _Row, stored: _Row, where: str = "") -> str | None:
    """``field: stored X, sent Y; ...`` for each field where ``sent`` differs
    from ``stored`` (same id), or None for a resend. Instants and quantities
    compare by value, dimensions key by key."""
    out = []
    names = ("id", "customer", "meter", "timestamp")
    for n in (1, 2, 3):
        if sent[n] != stored[n]:
            out.append(f"{names[n]}: stored {_show(stored[n])}{where}, sent {_show(sent[n])}")
    if Decimal(str(sent[4])) != Decimal(str(stored[4])):
        out.append(f"quantity: stored {stored[4]}{where}, sent {sent[4]}")
    if sent[5] != stored[5]:
        for key in sorted(sent[5].keys() | stored[5].keys()):
            theirs, ours = sent[5].get(key), stored[5].get(key)
            if theirs != ours:
                out.append(f"dimensions.{key}: stored {_show(ours)}{where}, sent {_show(theirs)}")
    return "; ".join(out) or None


def _stored_rows(records: Sequence[Any]) -> dict[str, _Row]:
    return {
        r[0]: (r[0], r[1], r[2], r[3], r[4], json.loads(r[5])) for r in records
    }


class _Batch:
    """Per-event outcome of one call, filled in as the batch is processed."""

    def __init__(self, events: Sequence[object]) -> None:
        self.events = events
        n = len(events)
        self.status: list[IngestStatus | None] = [None] * n
        self.reasons: list[str | None] = [None] * n
        self.ids = [_raw_id(raw) for raw in events]
        # event id -> index and row of its first valid occurrence in this batch
        self.first_index: dict[str, int] = {}
        self.first_row: dict[str, _Row] = {}
        # event id -> later occurrences with the first one's content
        self.repeats: dict[str, list[int]] = {}

    def validate(self, idx: list[int]) -> list[_Row | str]:
        """The events at ``idx`` as rows, or why each is rejected (no database needed)."""
        return _validate_many([self.events[i] for i in idx])

    def classify(
        self, idx: list[int], checked_all: list[_Row | str], known: dict[str, set[str]]
    ) -> list[_Row]:
        """Record the outcome of the validated events at ``idx``; return those to write."""
        rows: list[_Row] = []
        for i, checked in zip(idx, checked_all, strict=True):
            if isinstance(checked, str):
                self.status[i], self.reasons[i] = IngestStatus.REJECTED, checked
                continue
            event_id, customer, meter = checked[0], checked[1], checked[2]
            why = _meter_rejection(customer, meter, known.get(customer))
            if why is not None:
                self.status[i], self.reasons[i] = IngestStatus.REJECTED, why
            elif event_id in self.first_index:
                first = self.first_index[event_id]
                diff = _differences(
                    checked, self.first_row[event_id], f" by event {first} of this batch"
                )
                if diff is None:
                    self.status[i] = IngestStatus.DUPLICATE
                    self.reasons[i] = f"same id as event {first} of this batch"
                    self.repeats.setdefault(event_id, []).append(i)
                else:
                    self.status[i], self.reasons[i] = IngestStatus.CONFLICT, diff
            else:
                self.first_index[event_id] = i
                self.first_row[event_id] = checked
                rows.append(checked)
        return rows

    def settle(self, inserted: set[str], stored: Mapping[str, _Row]) -> None:
        """First occurrences: accepted if this call stored them, else a resend
        or a conflict (with their repeats) by the ``stored`` content."""
        for event_id, i in self.first_index.items():
            if event_id in inserted:
                self.status[i] = IngestStatus.ACCEPTED
                continue
            before = stored.get(event_id)
            diff = None if before is None else _differences(self.first_row[event_id], before)
            if diff is None:
                self.status[i], self.reasons[i] = IngestStatus.DUPLICATE, "already stored"
                continue
            for j in [i, *self.repeats.get(event_id, ())]:
                self.status[j], self.reasons[j] = IngestStatus.CONFLICT, diff

    def report(self) -> IngestReport:
        counts = dict.fromkeys(IngestStatus, 0)
        for st in self.status:
            assert st is not None  # every event was classified
            counts[st] += 1
        # One pydantic call for all results: 10,000 model constructions from
        # Python would cost as much as writing the rows.
        results = _RESULTS.validate_python(
            [
                {"index": i, "id": self.ids[i], "status": st, "reason": self.reasons[i]}
                for i, st in enumerate(self.status)
            ]
        )
        return IngestReport.model_construct(
            accepted=counts[IngestStatus.ACCEPTED],
            duplicate=counts[IngestStatus.DUPLICATE],
            conflict=counts[IngestStatus.CONFLICT],
            rejected=counts[IngestStatus.REJECTED],
            results=results,
        )


def _document(rows: list[_Row]) -> str:
    return _ROWS.dump_json(rows).decode()


_Lookups = tuple[dict[str, set[str]], dict[str, _Row] | None]


async def _lookups(
    conn: asyncpg.Connection, batch: _Batch, *, stored_ids: bool
) -> _Lookups:
    """The customers' known meters and (``stored_ids``) the batch's ids already
    stored, with their content."""
    known = await _load_known_meters(conn, batch.events)
    if not stored_ids:
        return known, None
    return known, _stored_rows(await conn.fetch(_STORED_SQL, [i for i in batch.ids if i]))


async def _write_pipelined(
    conn: asyncpg.Connection,
    batch: _Batch,
    order: list[int],
    lookups: asyncio.Future[_Lookups],
    before_last_result: Callable[[set[str], dict[str, _Row]], None] | None = None,
) -> tuple[set[str], dict[str, _Row]]:
    """Validate and write the batch in chunks; the ids this call stored, and
    the stored content of the batch's other ids.

    ``lookups`` (in flight on ``conn`` while the first chunk is validated)
    gives the known meters and, on the fast path, the ids found stored
    beforehand: their events are not sent and the rest go in by plain
    INSERT. Without them every event goes in by INSERT ... ON CONFLICT DO
    NOTHING RETURNING, which tells what was stored.

    While the server inserts chunk k, this process validates chunk k+1, so
    client and server CPU overlap. On the fast path ``before_last_result``
    gets the ids this call will have stored if the last INSERT succeeds,
    while that INSERT is still in flight. A connection runs one statement at a time: at
    most one statement is in flight.
    """
    inserted: set[str] = set()
    pending: asyncio.Future[Any] | None = lookups
    known: dict[str, set[str]] = {}
    stored: dict[str, _Row] | None = None
    sent: list[str] = []
    n = len(order)

    async def settle(pending: asyncio.Future[Any]) -> None:
        nonlocal known, stored
        result = await pending
        if pending is lookups:
            known, stored = result
        elif stored is None:
            inserted.update(r[0] for r in result)
        else:
            inserted.update(sent)
            sent.clear()

    try:
        for c in range(0, n, _CHUNK):
            idx = order[c : min(c + _CHUNK, n)]
            checked: list[_Row | str] = []
            for s in range(0, len(idx), _SLICE):
                # Yield between slices so the in-flight statement's task can
                # push its request to the server.
                await asyncio.sleep(0)
                checked += batch.validate(idx[s : s + _SLICE])
            if pending is not None:
                await settle(pending)  # the lookups first, then the previous INSERT
                pending = None
            rows = batch.classify(idx, checked, known)
            if stored:
                rows = [r for r in rows if r[0] not in stored]
            if not rows:
                continue
            if stored is None:
                pending = asyncio.ensure_future(conn.fetch(_INSERT_SQL, _document(rows)))
            else:
                sent.extend(r[0] for r in rows)
                pending = asyncio.ensure_future(conn.execute(_PLAIN_INSERT_SQL, _document(rows)))
        if pending is lookups:  # an empty batch
            await settle(pending)
            pending = None
        if pending is not None:
            if before_last_result is not None and stored is not None:
                await asyncio.sleep(0)  # let the INSERT's task send it first
                before_last_result(inserted | set(sent), stored)
            await settle(pending)
            pending = None
    finally:
        if pending is not None:
            # Never leave the transaction with a statement in flight.
            await asyncio.gather(pending, return_exceptions=True)
    if stored is None:
        # ON CONFLICT path: what the ids this call did not store hold (rows
        # committed by the batches it raced: a new statement sees them).
        others = [i for i in batch.first_index if i not in inserted]
        stored = _stored_rows(await conn.fetch(_STORED_SQL, others)) if others else {}
    return inserted, stored


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
    batch = _Batch(events)
    ids = batch.ids
    # Event id order (stable, so the first occurrence of an id still comes
    # first): concurrent batches then take the primary key's locks in one
    # global order and cannot deadlock on shared ids.
    order = sorted(range(n), key=lambda i: (ids[i] or "", i))

    report: IngestReport | None = None

    def report_early(inserted: set[str], stored: dict[str, _Row]) -> None:
        # Built while the server runs the last INSERT; dropped if it fails.
        nonlocal report
        batch.settle(inserted, stored)
        report = batch.report()

    if conn.is_in_transaction():
        # Mark the caller's transaction as an ingest transaction (usage_query's
        # watermark), outside the savepoint: rolling the savepoint back below
        # would drop the mark while the transaction keeps its xid. On our own
        # transaction the table's trigger marks it at the first INSERT.
        await conn.execute("SELECT billow_begin_usage_ingest()")
    try:
        async with conn.transaction():
            lookups = asyncio.ensure_future(_lookups(conn, batch, stored_ids=True))
            inserted, stored = await _write_pipelined(conn, batch, order, lookups, report_early)
    except asyncpg.UniqueViolationError:
        # A concurrent batch stored one of these ids after our look-up; the
        # savepoint (or transaction) rolled back: redo it the careful way.
        metrics.USAGE_INGEST_RACES.inc()
        batch, report = _Batch(events), None
        async with conn.transaction():
            lookups = asyncio.ensure_future(_lookups(conn, batch, stored_ids=False))
            inserted, stored = await _write_pipelined(conn, batch, order, lookups)
    if report is None:
        batch.settle(inserted, stored)
        report = batch.report()
    return metrics.usage_ingested(report)
