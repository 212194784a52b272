"""Pure billing domain: pydantic types and the math that decides every number.

Money, catalogs and rate cards, contracts and amendments, billing periods,
price resolution and rating, fee proration, the credit engine and revenue
journal entries live here. Nothing in this package performs I/O, reads
settings or the clock: every function takes what it needs as arguments, so the
same code runs inside Temporal's workflow sandbox, in activities and in tests.
"""
