"""Side effects: PostgreSQL ledger, usage ingestion and payment gateways.

Activities are thin and idempotent. Every write is keyed on a business key
(``invoice:<contract>:<key>``, ``grant:<contract>:<id>`` ...) enforced by a
unique constraint, so a retry, a worker crash or a continue-as-new never bills
twice. SQLModel table classes live here and never cross a Temporal boundary:
activities take and return plain pydantic models from ``models``.
"""
