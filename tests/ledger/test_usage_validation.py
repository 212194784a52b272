"""Ingestion's fast validation path never accepts what `UsageEvent` refuses,
and stores the same values (property test; no database)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from activities.usage_ingest import _plain_rows, _validate_many
from models.usage import UsageEvent

_quantities = st.one_of(
    st.sampled_from(["1", "0", "007.50", "1.", ".5", "1e3", " 5", "-1", "NaN", "Infinity", "1_000",
                     "+2", "0x10", "", "١٢", "2.5\n"]),
    st.decimals(allow_nan=False, allow_infinity=False).map(str),
    st.integers(min_value=-5, max_value=10**30),
    st.sampled_from([str(10**18), str(10**18 - 1), "0.1234567890123", "0.123456789012",
                     "999999999999999999.999999999999", "1.50000000000000", "0" * 19 + "1"]),
    st.floats(allow_nan=True),
    st.booleans(),
    st.none(),
)
_timestamps = st.one_of(
    st.sampled_from(["2027-01-01T00:00:00Z", "2027-01-01T02:00:00+02:00", "2027-02-30T00:00:00Z",
                     "2027-01-01T00:00:00", "2027-01-01", "2027-01-01 10:00:00+00:00", "yesterday",
                     "2027-01-01T00:00:00.123456789Z", "9999-12-31T23:00:00-02:00",
                     "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59Z"]),
    st.datetimes(timezones=st.just(UTC)).map(datetime.isoformat),
    st.integers(min_value=0, max_value=2**33),
)
_texts = st.one_of(st.text(max_size=4), st.integers(), st.none(),
                   st.text(min_size=255, max_size=257))  # around the 256-character bound


@st.composite
def raw_events(draw: st.DrawFn) -> dict[str, Any]:
    event: dict[str, Any] = {}
    for key, values in (("id", _texts), ("customer", _texts), ("meter", _texts),
                        ("timestamp", _timestamps), ("quantity", _quantities),
                        ("dimensions", st.dictionaries(st.text(max_size=3), _texts, max_size=2)),
                        ("extra", _texts)):
        # Mostly well-formed fields, so that both paths accept often enough.
        if key == "extra" and draw(st.integers(0, 9)):
            continue
        if key in ("quantity", "dimensions") and draw(st.booleans()):
            continue
        if key in ("id", "customer", "meter") and draw(st.integers(0, 4)):
            event[key] = draw(st.text(min_size=1, max_size=4) | st.text(min_size=255, max_size=257))
            continue
        event[key] = draw(values)
    return event


@settings(max_examples=400, deadline=None)
@given(raw_events())
def test_the_fast_path_accepts_a_subset_with_the_same_values(raw: dict[str, Any]) -> None:
    fast_ok = _plain_rows([raw]) is not None
    try:
        model: UsageEvent | None = UsageEvent.model_validate(raw)
    except ValidationError:
        model = None
    if fast_ok:
        assert model is not None, raw
        row = _validate_many([raw])[0]
        assert not isinstance(row, str)
        event_id, customer, meter, ts, qty, dims = row
        assert (event_id, customer, meter, dims) == (model.id, model.customer, model.meter,
                                                    model.dimensions)
        assert ts == model.timestamp
        assert Decimal(qty) == model.quantity and str(Decimal(qty)) == str(model.quantity)
    # Whatever path decides, the batch's verdict is the model's.
    verdict = _validate_many([raw])[0]
    assert isinstance(verdict, str) == (model is None)


def test_a_slice_with_one_odd_event_is_decided_event_by_event() -> None:
    good = {"id": "a", "customer": "c", "meter": "m", "timestamp": "2027-01-01T00:00:00Z",
            "quantity": "2.50"}
    odd = {**good, "id": "b", "quantity": " 3 "}  # outside the fast subset, still valid
    bad = {**good, "id": "x", "quantity": 1.5}
    rows = _validate_many([good, odd, bad])
    assert rows[0][4] == Decimal("2.50") and rows[1][4] == Decimal(3)
    assert isinstance(rows[2], str) and "quantity" in rows[2]


def test_instants_outside_the_utc_calendar_are_rejected_by_either_path() -> None:
    good = {"id": "a", "customer": "c", "meter": "m", "timestamp": "2027-01-01T00:00:00Z"}
    for ts in ("9999-12-31T23:00:00-02:00", "0001-01-01T00:00:00+01:00"):
        odd = {**good, "quantity": " 1"}  # forces the slow path for the whole slice
        for batch in ([{**good, "timestamp": ts}], [{**good, "timestamp": ts}, odd]):
            verdict = _validate_many(batch)[0]
            assert isinstance(verdict, str) and "timestamp" in verdict and "range" in verdict
