"""Deterministic Temporal orchestration.

Each contract is one long-lived ``ContractWorkflow``: it sleeps until billing
boundaries, calls activities for every side effect, accepts amendments as
validated updates and carries its state across continue-as-new. Code here
uses only ``workflow.now()``, the pure ``models`` package and activity calls;
it never touches the database, the network, settings or the wall clock.
"""
