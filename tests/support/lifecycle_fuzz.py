"""Drive random lifecycles from hypothesis: the CI test and ``python -m bench
lifecycle-fuzz`` share this (no pytest in here).

Hypothesis calls a plain function per example, so the async run happens on
a `Harness`: one event loop in a background thread with one database engine,
to which each example is submitted and waited for. Outcomes are memoized by
the example's content, so replaying an example (hypothesis' final replay, or
the shrink pass of the bench re-walking the survey) costs nothing.

The bench runs in two passes:
1. survey: ``--examples N`` examples with a fixed seed, nothing raised, every
   violated invariant counted (hypothesis would stop generating soon after
   the first failure);
2. shrink: for each failure class (invariant + the first violation with
   digits blanked), the same seed again with hypothesis' shrinker on; the
   memo answers the survey's examples, so only the shrink candidates run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TextIO

from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed

from activities.db import make_engine
from tests.support.lifecycle_checks import violations
from tests.support.lifecycle_gen import Lifecycle, lifecycles
from tests.support.lifecycle_outcome import Outcome
from tests.support.lifecycle_run import run_lifecycle
from worker.temporal_envs import quiet_runtime

Found = dict[str, list[str]]


class Harness:
    """Runs examples synchronously on a private event loop (thread)."""

    def __init__(self, database_url: str, budget_s: float = 120.0,
                 log: TextIO | None = None) -> None:
        self.budget_s = budget_s
        self.log = log  # one JSON line per example run
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="lifecycle-fuzz",
                                       daemon=True)
        self.thread.start()
        self.engine = make_engine(database_url)
        self.runtime = quiet_runtime()
        self.memo: dict[str, tuple[Found, str]] = {}
        self.coverage: dict[str, int] = {}
        self.runs = 0

    def run(self, lc: Lifecycle) -> tuple[Outcome, Found]:
        future = asyncio.run_coroutine_threadsafe(
            run_lifecycle(self.engine, lc, budget_s=self.budget_s, runtime=self.runtime),
            self.loop)
        outcome = future.result(timeout=self.budget_s + 120)
        self.runs += 1
        found = violations(outcome)
        summary = outcome_summary(outcome)
        for feature in features(outcome):
            self.coverage[feature] = self.coverage.get(feature, 0) + 1
        self.memo[lc.fingerprint()] = (found, summary)
        if self.log is not None:
            self.log.write(json.dumps({"example": lc.to_json(), "violations": found,
                                       "summary": summary}, default=str) + "\n")
            self.log.flush()
        return outcome, found

    def found(self, lc: Lifecycle) -> Found:
        """Violations of ``lc``, from the memo when it ran before."""
        known = self.memo.get(lc.fingerprint())
        return known[0] if known is not None else self.run(lc)[1]

    def close(self) -> None:
        asyncio.run_coroutine_threadsafe(self.engine.dispose(), self.loop).result(30)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)


def features(o: Outcome) -> set[str]:
    """What a run exercised, for the bench's coverage table."""
    out = {"created" if o.created else "refused at creation"}
    for a in o.answers:
        act = o.lifecycle.actions[a.index]
        kind = act.get("amendment", {}).get("kind", "") or (
            act.get("kind", "") if a.do == "correct" else "")
        out.add(f"{a.do}{' ' + kind if kind else ''}: {a.status}")
        if a.do == "correct" and a.status == "ok" and isinstance(a.result, dict):
            out.add(f"correct via {a.result.get('recorded_via')}")
    if len(o.histories) > 1:
        out.add("continued as new")
    if o.horizon_capped:
        out.add("horizon capped")
    if o.view is not None:
        if o.view.get("attention"):
            out.add("held at the end")
        if o.view.get("dropped_amendments"):
            out.add("amendment dropped")
    snap = o.ledger
    if snap is not None and snap.contract is not None:
        out.add(f"contract {snap.contract['status']}")
        for inv in snap.invoices:
            if inv["number"] is not None:
                out.add(f"invoice {inv['kind']} {inv['status']}")
        out |= {f"line {ln['kind']}" for ln in snap.lines}
        out |= {f"journal {e['kind']}" for e in snap.journal}
        out |= {f"payment {p['method']}" for p in snap.payments}
        if snap.unbilled_events:
            out.add("unbilled usage")
        for n in snap.credit_notes:
            out.add("credit note automatic" if n["automatic"] else f"credit note {n['reason']}")
            out |= {f"credit note {part}" for part in ("credits_returned", "outstanding_reduced",
                                                        "refunded", "customer_credit") if n[part]}
        if any(i["reissue_of"] for i in snap.invoices):
            out.add("invoice reissued")
    return out


def signature(check: str, found: Found) -> str:
    """A failure class: the invariant and its first violation, digits and ids blanked."""
    text = re.sub(r"x{5,}", "x…", found[check][0])
    text = re.sub(r"\d+(\.\d+)?", "#", text)
    return f"{check}: {text[:110]}"


def classes(found: Found) -> list[str]:
    return [signature(check, found) for check in found]


def outcome_summary(o: Outcome) -> str:
    """A few lines on what happened: answers, final status, invoices."""
    lines = [f"created: {o.created}" + (f" ({o.creation.status}: {o.creation.message})"
                                        if o.creation and o.creation.status != "ok" else "")]
    for a in o.answers:
        what = a.result.get("status") if isinstance(a.result, dict) else ""
        extra = f" {a.message[:160]}" if a.message and a.status != "ok" else ""
        lines.append(f"  #{a.index} {a.at} {a.do}: {a.status} {what}{extra}")
    if o.aborted:
        lines.append(f"aborted: {o.aborted}")
    lines.append(f"workflow: {o.status}; contract: "
                 f"{(o.ledger.contract or {}).get('status') if o.ledger else None}; "
                 f"horizon {o.horizon}{' (capped)' if o.horizon_capped else ''}; "
                 f"{o.wall_s:.1f} s")
    if o.ledger:
        lines.append("invoices: " + ", ".join(
            f"{i['key']}={i['total']}/{i['status']}" for i in o.ledger.invoices
            if i["status"] != "draft"))
    return "\n".join(lines)


def describe(lc: Lifecycle, found: Found, summary: str = "") -> str:
    """The example as JSON, what happened, and what it broke."""
    parts = ["example:", json.dumps(lc.to_json(), indent=1, default=str)]
    if summary:
        parts += ["what happened:", summary]
    parts.append("violations:")
    for check, vs in found.items():
        parts += [f"- {check}:"] + [f"    {v}" for v in vs[:6]]
    return "\n".join(parts)


def fuzz_settings(examples: int, *, shrink: bool, derandomize: bool) -> settings:
    phases = [Phase.explicit, Phase.generate] + ([Phase.shrink] if shrink else [])
    return settings(max_examples=examples, deadline=None, database=None, phases=phases,
                    derandomize=derandomize, report_multiple_bugs=False,
                    suppress_health_check=list(HealthCheck), print_blob=False)


class Falsified(AssertionError):
    pass


# --- the bench's two passes ---------------------------------------------------------


@dataclass
class ClassReport:
    signature: str
    count: int = 0
    first: Lifecycle | None = None
    first_found: Found = field(default_factory=dict)
    shrunk: Lifecycle | None = None
    shrunk_found: Found = field(default_factory=dict)


@dataclass
class Survey:
    examples: int = 0
    failing: int = 0
    by_check: dict[str, int] = field(default_factory=dict)
    by_class: dict[str, ClassReport] = field(default_factory=dict)


def survey(h: Harness, examples: int, seed: int,
           progress: Callable[[int, Found], None] | None = None) -> Survey:
    result = Survey()

    @fuzz_settings(examples, shrink=False, derandomize=False)
    @hypothesis_seed(seed)
    @given(lifecycles())
    def explore(lc: Lifecycle) -> None:
        found = h.found(lc)
        result.examples += 1
        result.failing += bool(found)
        for check in found:
            result.by_check[check] = result.by_check.get(check, 0) + 1
        for sig in classes(found):
            rep = result.by_class.setdefault(sig, ClassReport(sig))
            rep.count += 1
            if rep.first is None:
                rep.first, rep.first_found = lc, found
        if progress is not None:
            progress(result.examples, found)

    explore()
    return result


def shrink_class(h: Harness, sig: str, examples: int, seed: int) -> tuple[Lifecycle, Found] | None:
    """The smallest example hypothesis finds that still shows failure class ``sig``."""
    last: list[tuple[Lifecycle, Found]] = []

    @fuzz_settings(examples, shrink=True, derandomize=False)
    @hypothesis_seed(seed)
    @given(lifecycles())
    def falsify(lc: Lifecycle) -> None:
        found = h.found(lc)
        if sig in classes(found):
            last.append((lc, found))
            raise Falsified(sig)

    with contextlib.suppress(Falsified):
        falsify()
    return last[-1] if last else None


def summary_of(h: Harness, lc: Lifecycle) -> str:
    known = h.memo.get(lc.fingerprint())
    return known[1] if known else ""


def as_data(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))
