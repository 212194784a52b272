"""HTTP API (FastAPI): the CRM, usage producers and ops talk to billow here.

Handlers validate input, start or signal contract workflows through the
Temporal client and read the ledger; they never compute billing math
themselves.
"""
