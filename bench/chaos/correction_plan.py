"""Corrections in the chaos workload (issue 14): which contracts, which actions (pure).

About a quarter of the contracts get corrections: in every block of
``len(KINDS)`` consecutive contracts (one of each kind) three of the eligible
kinds are drawn from the seed. Their actions are planned here, against the
invoices the plan knows will exist (the past usage invoices, the commitment
and top-up invoices) and what the workload pays on them; the amounts are
fractions, resolved once the contract has settled (`bench.chaos.correcting`).

What makes control and fault run comparable:

* a correction is sent only once its contract has caught up, every payment
  the workload makes on it is answered, and its workflow sleeps until a
  future instant (nothing else can change the invoice it names meanwhile);
* the actions of a contract are sent one after the other, in plan order;
* eligible are contracts whose workflow runs all through the run (not
  ``ended`` or ``terminate``: once one completes, a correction goes to the
  ledger instead, and when that happens is timing) and that do not auto-pay
  (their charge retries run on their own schedule).

Every action has its own correction id and ``Idempotency-Key``, is sent twice
with them (some pairs concurrently) and once more with a fresh key (the
correction id alone must then give the first answer).
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from decimal import Decimal
from typing import Literal

from models.corrections import REASONS, reissue_key

Action = Literal["void", "reissue", "credit"]
Form = Literal["amount", "lines"]
# Truly invalid variants (billow must answer 4xx and change nothing):
# "id_reuse": an earlier correction's id with other content (409);
# "credit_void": a credit note on a void invoice (409);
# "void_paid": a void of a paid invoice (409);
# "over_credit": more than the invoice has uncredited (422).
Invalid = Literal["id_reuse", "credit_void", "void_paid", "over_credit"]

INELIGIBLE = frozenset({"ended", "terminate", "auto_pay"})
PICKED_PER_BLOCK = 3


@dataclass(frozen=True)
class CorrectionPlan:
    action: Action
    invoice_key: str
    correction_id: str
    key: str  # Idempotency-Key
    concurrent: bool
    reissue: bool = False  # a void that reissues at once (`reissue: true`)
    form: Form = "amount"
    # Of the base (total, or the positive lines of a credit-paid invoice) or of each
    # credited line; resolved to whole cents when sent.
    fraction: Decimal = Decimal(0)
    reason: str = "billing_error"
    remainder: Literal["refund", "credit"] = "refund"
    invalid: Invalid | None = None
    reuses: str | None = None  # id_reuse: the correction id sent again

    @property
    def valid(self) -> bool:
        return self.invalid is None


def picked_indexes(seed: int, contracts: int, kinds: list[str]) -> set[int]:
    """The contracts that get corrections: per block of ``len(kinds)`` contracts,
    `PICKED_PER_BLOCK` of the eligible kinds drawn from the seed."""
    eligible = [k for k in kinds if k not in INELIGIBLE]
    out: set[int] = set()
    for block in range(0, contracts, len(kinds)):
        chosen = set(random.Random(f"{seed}:corrections:{block}").sample(
            eligible, min(PICKED_PER_BLOCK, len(eligible))))
        out |= {i for i in range(block, min(block + len(kinds), contracts))
                if kinds[i % len(kinds)] in chosen}
    return out


@dataclass(frozen=True)
class PaidTargets:
    """What the workload pays, per invoice key."""

    full: list[str]  # paid in full by the workload
    part: list[str]  # paid in part only

    @staticmethod
    def of(payments: list[tuple[str, Decimal | None, bool]]) -> PaidTargets:
        """``payments``: (invoice key, fraction or None for "the rest", valid)."""
        fractions: dict[str, list[Decimal | None]] = {}
        for key, fraction, valid in payments:
            if valid:
                fractions.setdefault(key, []).append(fraction)
        full = [k for k, fs in fractions.items() if any(f is None or f >= 1 for f in fs)]
        part = [k for k in fractions if k not in full]
        return PaidTargets(full=full, part=part)


def plan_corrections(seed: int, contract_id: str, past_usage_keys: list[str],
                     grant_invoice_keys: list[str], paid: PaidTargets) -> list[CorrectionPlan]:
    """The actions of one picked contract, in the order they are sent."""
    rng = random.Random(f"{seed}:corrections:{contract_id}")
    n = 0

    def ids() -> tuple[str, str]:
        nonlocal n
        n += 1
        return f"corr-{contract_id}-{n}", f"key-corr-{contract_id}-{n}"

    def make(action: Action, invoice: str, **kw: object) -> CorrectionPlan:
        cid, key = ids()
        return CorrectionPlan(action=action, invoice_key=invoice, correction_id=cid, key=key,
                              concurrent=rng.random() < 0.35, **kw)  # type: ignore[arg-type]

    def credit(invoice: str, form: Form, fraction: str, **kw: object) -> CorrectionPlan:
        return make("credit", invoice, form=form, fraction=Decimal(fraction),
                    reason=rng.choice(REASONS), remainder=rng.choice(["refund", "credit"]), **kw)

    out: list[CorrectionPlan] = []
    paid_keys = set(paid.full) | set(paid.part)
    unpaid = [k for k in past_usage_keys if k not in paid_keys]
    # A commitment or top-up invoice first: its note takes unused credits from the grant.
    if grant_invoice_keys:
        out.append(credit(rng.choice(grant_invoice_keys), "amount", "0.02"))
    if unpaid:
        voided = unpaid[-1]
        inline = rng.random() < 0.5
        out.append(make("void", voided, reissue=inline))
        if not inline:
            out.append(make("reissue", voided))
        if rng.random() < 0.5:
            out.append(credit(voided, "amount", "0.5", invalid="credit_void"))
        if rng.random() < 0.6:
            out.append(credit(reissue_key(voided, 0), "amount", rng.choice(["0.5", "1"])))
    if len(unpaid) >= 2:
        out.append(credit(unpaid[0], "amount", rng.choice(["0.3", "1"])))
    full_usage = [k for k in paid.full if k.startswith("usage:")]
    if full_usage:
        target = rng.choice(full_usage)
        out.append(credit(target, "lines", rng.choice(["0.2", "0.5"])))
        if rng.random() < 0.4:
            out.append(make("void", target, invalid="void_paid"))
    for key in paid.part:
        out.append(credit(key, "amount", "0.8"))
    notes = [c for c in out if c.action == "credit" and c.valid]
    if notes and rng.random() < 0.4:
        first = notes[0]
        other = next(r for r in REASONS if r != first.reason)
        out.append(CorrectionPlan(
            action="credit", invoice_key=first.invoice_key, correction_id=first.correction_id,
            key=ids()[1], concurrent=False, form=first.form, fraction=first.fraction,
            reason=other, remainder=first.remainder, invalid="id_reuse",
            reuses=first.correction_id))
    if past_usage_keys and rng.random() < 0.3:
        target = next((k for k in past_usage_keys if k != (unpaid[-1] if unpaid else None)),
                      past_usage_keys[0])
        out.append(credit(target, "amount", "1", invalid="over_credit"))
    return out
