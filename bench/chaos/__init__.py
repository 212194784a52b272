"""``python -m bench chaos``: billow's own fault-injection run (issue 12, "The proof").

A seeded workload (backdated contracts of every kind, usage, amendments and
payments, each mutating request sent twice with the same ids) runs twice
against the whole stack started as separate processes (PostgreSQL, the
Temporal dev server, the API, two workers): once without faults (the
control) and once while workers, the API, PostgreSQL and Temporal are killed
and restarted. The two ledgers must come out identical and pass the
invariants of `checks`; the client must never see a 500.

Modules: `workload` (the seeded plan, pure), `processes` (the supervised
stack and its faults), `client` (HTTP with billow's retry contract),
`driver` (runs the plan, waits for quiescence), `faults` (when to kill
what), `compare` and `checks` (the verdict), `run` (both runs, the report).
"""
