"""Pure billing domain: pydantic types and the math that decides every number.

Money, catalogs and rate cards, contracts and amendments, billing periods,
price resolution and rating, fee proration, the credit engine and revenue
journal entries live here. Nothing in this package performs I/O, reads
settings or the clock: every function takes what it needs as arguments, so the
same code runs inside Temporal's workflow sandbox, in activities and in tests.

Modules (each states its invariants in its docstring):

- `money`: decimal pydantic types (strings in, strings out, no floats), ISO 4217
  minor units, ``ROUND_HALF_UP`` rounding.
- `errors`: `BillowValidationError` (``path: reason`` problems), `BusinessError`.
- `catalog`: meters, rate cards, price forms, plans; `load_catalog*`.
- `contract`: contracts, rate overrides, commitments, `resolve_terms` ->
  `ContractTerms` (the self-contained terms a workflow carries).
- `usage`, `amendments`, `timeline`: the other input formats (SPEC 7 and 8).
- `periods`: billing calendar -> `Period` with UTC instants (uses zoneinfo).
- `pricing`: unit / graduated / volume / package math and `resolve_price`.
- `rating`: reference aggregation, `rate_period`, `fee_lines`; `proration`.
- `invoices`: invoice lines and documents, keys, due dates.
- `credits`: grants, burn order, `CreditState`.
- `revenue`: balanced journal entries and the revenue summary.
- `limits`, `spend_limits`: per-meter minimum and maximum spend per period
  (SPEC 12): the limits in force, their proration, minimum/maximum lines.
- `minimum_terms`, `minimum_commitment`: a contract's minimum commitment,
  spend against it and its ``true_up`` line (SPEC 12).
"""
