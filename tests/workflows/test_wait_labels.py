"""The labels of a contract's waits say what it waits for and when (pure)."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from models.catalog import load_catalog
from models.contract import load_contract, resolve_terms
from tests.support.scenario import PRO_CATALOG, contract_doc
from workflows.contract_state import CollectionState, ContractState, initial_state
from workflows.wait_labels import grace_text, wait_label


def _state(created: datetime, **doc: object) -> ContractState:
    contract = load_contract(contract_doc(**doc))
    terms = resolve_terms(contract, load_catalog(PRO_CATALOG))
    st = initial_state(contract, terms, 1, "")
    st.created_at = created
    return st


def test_a_catch_up_names_its_periods_and_its_real_time() -> None:
    st = _state(datetime(2027, 3, 10, 9, 34, 20, tzinfo=UTC), starts_on="2027-01-01")
    assert wait_label(st, held=False) == (
        "closing 2 past periods at 2027-03-10 10:34 UTC, after the 1 h usage grace window")
    st.periods = st.periods[1:]  # January closed: February is the last past period
    assert wait_label(st, held=False) == (
        "closing 1 past period (2027-02) at 2027-03-10 10:34 UTC, after the 1 h usage "
        "grace window")


def test_an_on_time_close_names_its_boundary_and_grace() -> None:
    st = _state(datetime(2026, 12, 1, tzinfo=UTC), starts_on="2027-01-01",
                billing_cycle="quarterly", usage_grace_hours="0.5")
    assert wait_label(st, held=False) == (
        "sleep until 2027-04-01 boundary + 30 min usage grace, then close 2027-Q1")


def test_the_earliest_wake_is_the_one_labelled() -> None:
    st = _state(datetime(2026, 12, 1, tzinfo=UTC), starts_on="2027-01-01")
    st.collections.append(CollectionState(
        invoice_key="commitment:2027-01-01", due_on=date(2027, 1, 1),
        overdue_at=datetime(2027, 1, 2, tzinfo=UTC)))
    assert wait_label(st, held=False) == (
        "mark commitment:2027-01-01 overdue (due 2027-01-01) at 2027-01-02 00:00 UTC")
    st.collections[0].steps_done.append(st.collections[0].next_steps("UTC")[0][1])
    assert wait_label(st, held=True) == (
        "send the 1-day reminder for commitment:2027-01-01 (due 2027-01-01) at 2027-01-02 "
        "00:00 UTC (held: an amendment resolves needs_attention)")
    st.collections.clear()
    assert wait_label(st, held=True) == "wait for an amendment to resolve needs_attention"


def test_grace_windows_read_in_whole_units() -> None:
    assert [grace_text(timedelta(seconds=s)) for s in (3600, 7200, 1800, 7)] == [
        "1 h", "2 h", "30 min", "7 s"]
