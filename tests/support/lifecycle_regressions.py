"""Shrunk examples the random-lifecycle fuzz found, replayed first by the CI
property test (hypothesis ``@example``) so they stay fixed.

Each entry is a hypothesis-shrunk (or hand-minimized) `Lifecycle` with what it
broke when it was found (/work/notes/fuzz_findings.md has the catalogue).
"""

from __future__ import annotations

from typing import Any

from tests.support.lifecycle_gen import Lifecycle


def _contract(**extra: Any) -> dict[str, Any]:
    return {"id": "c1", "customer": {"id": "cust1", "name": "Fuzz customer"}, "plan": "p",
            "starts_on": "2027-03-01", "term_months": 1, "timezone": "UTC"} | extra


def _amend(at: str, **amendment: Any) -> dict[str, Any]:
    return {"at": at, "do": "amend", "via": "update", "amendment": amendment}


REGRESSIONS: dict[str, Lifecycle] = {
    # F1: an invoice without lines (no fees, no usage) failed close_period forever.
    "invoice without lines": Lifecycle(currency="USD", fee=None, contract=_contract(),
                                       actions=()),
    # F2 (known case 3): an empty commitment grant window retried grant_credits forever.
    "commitment expiring at the start": Lifecycle(
        currency="USD", fee="500.00", actions=(),
        contract=_contract(commitment={"amount": "1000.00", "expires_on": "2027-03-01"})),
    # F3 (known case 5): a priced contract grant was recognized but never invoiced.
    "priced contract grant": Lifecycle(
        currency="USD", fee="500.00", actions=(),
        contract=_contract(credit_grants=[{"id": "g0", "credits": "500.00",
                                           "price": "400.00"}])),
    # F4 (known case 3): extend_term of 10,000 years failed the update's workflow task.
    "extend_term of 10,000 years": Lifecycle(
        currency="USD", fee="500.00", contract=_contract(term_months=6),
        actions=(_amend("2027-04-10T00:00:00Z", id="a0", kind="extend_term",
                        term_months=120_000),)),
    # F6 (known case 13): the same amendment id with other content was answered.
    "amendment id reused": Lifecycle(
        currency="USD", fee="500.00", contract=_contract(term_months=3),
        actions=(_amend("2027-03-10T00:00:00Z", id="a0", kind="set_auto_pay", auto_pay=True),
                 _amend("2027-03-11T00:00:00Z", id="a0", kind="change_payment_terms",
                        payment_terms_days=15))),
    # F9: grant_credits with price "0" was refused with an internal error.
    "free grant by amendment": Lifecycle(
        currency="USD", fee=None, contract=_contract(),
        actions=(_amend("2027-03-01T00:00:00Z", id="a0", kind="grant_credits",
                        credits="100.00", price="0"),)),
    # F11 (issue 14): 0.001 paid (amounts may have 12 decimals), then the whole invoice
    # credited: the note rounded 499.999 owed up to 500.00 and left -0.001 owed, unpaid.
    "credit after a fraction of a cent was paid": Lifecycle(
        currency="USD", fee="500.00", contract=_contract(),
        actions=({"at": "2027-04-02T00:00:00Z", "do": "pay", "invoice": "latest",
                  "amount": "0.001", "payment_id": "p0", "via": "update"},
                 {"at": "2027-04-03T00:00:00Z", "do": "correct", "kind": "credit", "id": "k0",
                  "invoice": "latest", "reason": "goodwill", "amount": "all"})),
    # F12 (issue 14): a period shortened by a termination, voided and reissued after the
    # workflow completed (the ledger takes it): its minimum's true-up came back unprorated.
    "ledger reissue of a terminated period": Lifecycle(
        currency="USD", fee=None,
        contract=_contract(term_months=12,
                           minimum_commitment={"amount": "3100.00", "per": "billing_period"}),
        actions=(_amend("2027-03-05T00:00:00Z", id="a0", kind="terminate",
                        effective="2027-03-11T00:00:00Z"),
                 {"at": "2027-06-15T00:00:00Z", "do": "correct", "kind": "void", "id": "k0",
                  "invoice": "latest", "reissue": True})),
    # F10: a priced contract grant and a top-up on its day: the grant was never invoiced.
    "contract grant and top-up on one day": Lifecycle(
        currency="USD", fee="500.00",
        contract=_contract(credit_grants=[{"id": "g1", "credits": "500.00",
                                           "price": "400.00"}]),
        actions=(_amend("2027-02-20T00:00:00Z", id="t1", kind="grant_credits",
                        credits="100.00", price="90.00"),)),
    # F13 (session 6): commitment credits rounding to nothing (0.001 for 1,000.00): the
    # grant held 0.00 credits, so nothing ever expired and its deferred revenue stayed.
    # Refused at the door now, naming commitment.credits.
    "commitment credits below a cent": Lifecycle(
        currency="USD", fee=None, actions=(),
        contract=_contract(commitment={"amount": "1000.00", "credits": "0.001"})),
}
