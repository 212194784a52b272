"""What a contract is waiting for, in words ops can trust.

The contract workflow labels every wait (the Temporal UI shows the label on
its timer), shows the next invoice close in its current details and its
``state`` query, and ``contract create`` prints it. All of them come from
here, so the label, the UI and the CLI say the same thing.

Why a separate label for a catch-up: a contract created with a start in the
past closes its past periods one usage grace window after it was created
(late usage of those periods still has a window to arrive), not at their
boundaries, which are long gone. "sleep until 2025-11-01 boundary" would name
a date in the past and hide when the closes actually run.

Pure and deterministic (workflow code calls it): plain ``strftime`` on UTC
instants, no locale data, no clock.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, timedelta

from pydantic import AwareDatetime, BaseModel

from models.periods import Period
from workflows.contract_state import ContractState


class NextClose(BaseModel):
    """When the next billing period closes (is rated and invoiced)."""

    at: AwareDatetime  # the instant the close runs: boundary (or creation) + usage grace
    boundary: AwareDatetime  # end of the first period that closes then
    boundary_date: date  # the same boundary as a local date
    period: str  # the first closing period, e.g. 2027-Q1
    periods: int  # periods closed at that instant: more than one when catching up
    catch_up: bool  # the boundary had passed when the contract was created
    grace_seconds: int
    label: str


def grace_text(grace: timedelta) -> str:
    """``1 h``, ``30 min``, ``7 s``: the usage grace window as people say it."""
    seconds = int(grace.total_seconds())
    if seconds % 3600 == 0:
        return f"{seconds // 3600} h"
    if seconds % 60 == 0:
        return f"{seconds // 60} min"
    return f"{seconds} s"


def utc_text(instant: datetime) -> str:
    """``2026-12-01 10:34 UTC`` (a timer's instant to the minute, in UTC)."""
    return instant.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def period_label(period: Period, months: int) -> str:
    """Human label for summaries: ``2027-Q1``, ``2027-03`` or a date range."""
    s = period.start_date
    if not period.is_partial and s.day == 1:
        if months == 1:
            return f"{s:%Y-%m}"
        if months == 3 and s.month in (1, 4, 7, 10):
            return f"{s.year}-Q{(s.month - 1) // 3 + 1}"
        if months == 12 and s.month == 1:
            return str(s.year)
    return f"{s.isoformat()}..{period.end_date.isoformat()}"


def next_close(
    periods: Sequence[Period], created_at: datetime | None, grace: timedelta, cycle_months: int
) -> NextClose | None:
    """The next close of ``periods`` (not yet invoiced, in order); None when none are left.

    Mirrors ``ContractState.close_at``: a period closes at ``max(end, created) +
    grace``. Every period that ended before the contract was created closes at
    the same instant, one after the other.
    """
    if not periods:
        return None
    first = periods[0]
    if created_at is None or first.end > created_at:
        at = first.end + grace
        after = (f" + the {grace_text(grace)} usage grace window" if grace > timedelta(0)
                 else "")
        label = (f"close {period_label(first, cycle_months)} at {utc_text(at)}: the "
                 f"{first.end_date} boundary{after}")
        return NextClose(at=at, boundary=first.end, boundary_date=first.end_date,
                         period=period_label(first, cycle_months), periods=1, catch_up=False,
                         grace_seconds=int(grace.total_seconds()), label=label)
    past = [p for p in periods if p.end <= created_at]
    at = created_at + grace
    n = len(past)
    what = f"{n} past periods" if n > 1 else f"1 past period ({period_label(first, cycle_months)})"
    after = (f", after the {grace_text(grace)} usage grace window" if grace > timedelta(0)
             else ", at once (no usage grace window)")
    label = f"closing {what} at {utc_text(at)}{after}"
    return NextClose(at=at, boundary=first.end, boundary_date=first.end_date,
                     period=period_label(first, cycle_months), periods=n, catch_up=True,
                     grace_seconds=int(grace.total_seconds()), label=label)


def state_next_close(st: ContractState) -> NextClose | None:
    """The contract's next close as its carried state schedules it."""
    if st.term_closed:
        return None
    return next_close(st.periods, st.created_at, st.grace, st.terms.billing_cycle.months)


def close_timer_text(close: NextClose) -> str:
    """``sleep until 2027-04-01 boundary + 1 h usage grace, then close 2027-Q1``."""
    grace = (f" + {grace_text(timedelta(seconds=close.grace_seconds))} usage grace"
             if close.grace_seconds else "")
    return f"sleep until {close.boundary_date} boundary{grace}, then close {close.period}"


_STEP_WORDS = {
    "overdue": "mark {key} overdue (due {due})",
    "reminder_1": "send the 1-day reminder for {key} (due {due})",
    "reminder_7": "send the 7-day reminder for {key} (due {due})",
    "reminder_30": "send the 30-day reminder for {key} (due {due})",
}


def wait_label(st: ContractState, *, held: bool) -> str:
    """The label of the workflow's main wait: what wakes it first, and when.

    Follows the workflow's choice of wake-up (`ContractWorkflow._next_wake`):
    the earliest of a scheduled amendment, a collection step and (unless the
    contract is held) the open period's close. At one instant they run in the
    order SPEC.md section 7 fixes (amendments, invoicing, collection), and the
    first of them names the wait.
    """
    candidates: list[tuple[datetime, str]] = []
    pending = sorted(st.pending_amendments, key=lambda p: p.effective)
    if pending:
        p = pending[0]
        candidates.append((p.effective, f"apply amendment {p.amendment.id} "
                                         f"({p.amendment.kind}) at {utc_text(p.effective)}"))
    close = None if held else state_next_close(st)
    if close is not None:
        text = close.label if close.catch_up else close_timer_text(close)
        candidates.append((close.at, text))
    tz = st.terms.timezone
    for c in st.collections:
        at = c.next_instant(tz)
        if at is None:
            continue
        if c.next_charge_at is not None and c.next_charge_at == at:
            what = f"charge {c.invoice_key} (auto-pay)"
        else:
            step = min(c.next_steps(tz))[1]
            what = _STEP_WORDS[step.value].format(key=c.invoice_key, due=c.due_on)
        candidates.append((at, f"{what} at {utc_text(at)}"))
    if not candidates:
        if held:
            return "wait for an amendment to resolve needs_attention"
        return "wait for a payment or an amendment"
    at, text = min(candidates, key=lambda c: c[0])
    if held:
        text += " (held: an amendment resolves needs_attention)"
    return text
