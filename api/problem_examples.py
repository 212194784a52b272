"""OpenAPI examples of the problem documents each error status answers with.

Every error shares the `Problem` schema; without these the docs showed that
schema's one example (a 422) under 401, 403, 409 and 413 too. Each example is
what billow really answers (the same slugs, titles and field names as
`api/security.py`, `api/contracts.py`, `api/invoices.py`, ...).
"""

from __future__ import annotations

from typing import Any

_URN = "urn:billow:problem:"


def problem(status: int, slug: str, title: str, detail: str,
            errors: list[tuple[str, str]] | None = None,
            instance: str = "/v1/contracts") -> dict[str, Any]:
    return {"type": _URN + slug, "title": title, "status": status, "detail": detail,
            "instance": instance,
            "errors": [{"field": f, "reason": r} for f, r in (errors or [])]}


DEFAULT: dict[int, dict[str, Any]] = {
    400: problem(400, "bad-request", "Bad Request", "the request could not be read"),
    401: problem(401, "unauthorized", "Unauthorized",
                 "missing API key: send 'Authorization: Bearer <key>'",
                 [("header.authorization", "missing or not a Bearer token")]),
    403: problem(403, "forbidden", "Forbidden",
                 "this operation needs scope ops; the key k7Qm2x has crm",
                 [("header.authorization", "scope ops required")]),
    404: problem(404, "not-found", "Contract not found", "no contract 'acme-2027'",
                 [("path.contract_id", "no contract 'acme-2027'")],
                 "/v1/contracts/acme-2027"),
    409: problem(409, "conflict", "Conflict", "the request conflicts with the current state"),
    413: problem(413, "payload-too-large", "Content Too Large",
                 "the request body exceeds the limit of 1048576 bytes",
                 [("", "body larger than 1048576 bytes")]),
    422: problem(422, "validation", "Invalid request", "1 field is invalid",
                 [("term_months", "Input should be greater than 0")]),
    503: problem(503, "unavailable", "Service Unavailable",
                 "Temporal is unavailable (UNAVAILABLE: connection refused); nothing was "
                 "changed: retry"),
    504: problem(504, "outcome-unknown", "Gateway Timeout",
                 "the contract's workflow did not answer within 15 s: the change may still "
                 "apply; retry with the same id to learn its outcome",
                 instance="/v1/contracts/acme-2027/amendments"),
}

CONTRACT_CONFLICT = problem(
    409, "contract-conflict", "Contract exists with different terms",
    "contract 'acme-2027' already exists with different terms; differing fields: "
    "payment_terms_days", [("payment_terms_days", "differs from the existing contract")])

AMENDMENT_CONFLICT = problem(
    409, "amendment-conflict", "Conflict",
    "id: amendment 'crm-amend-0042' was sent before with other content",
    [("id", "amendment 'crm-amend-0042' was sent before with other content")],
    "/v1/contracts/acme-2027/amendments")

NO_INVOICE = problem(
    404, "not-found", "Invoice not found", "no invoice 'INV-000042'",
    [("path.number", "no invoice 'INV-000042'")], "/v1/invoices/INV-000042")

INVOICE_SETTLED = problem(
    409, "invoice-settled", "Invoice settled", "invoice INV-000002 is already paid",
    [("path.number", "invoice is paid")], "/v1/invoices/INV-000002/payments")

USAGE_TOO_LARGE = problem(
    413, "batch-too-large", "Batch too large",
    "a batch carries at most 10000 events, this one has 12000; split it",
    [("events", "12000 events; at most 10000 per batch")], "/v1/usage")

WEBHOOK_REPLAYED = problem(
    409, "replayed-delivery", "Delivery replayed",
    "delivery 'dlv_01J9Z6' was already accepted; a delivery is processed once",
    [("header.x-billow-signature", "already used")], "/v1/webhooks/crm")

WEBHOOK_SIGNATURE = problem(
    401, "invalid-signature", "Unauthorized", "signature does not match the body",
    [("header.x-billow-signature", "signature does not match the body")],
    "/v1/webhooks/crm")

RETRY_AFTER_HEADER = {"Retry-After": {
    "description": "Seconds to wait before retrying (with the same Idempotency-Key or id).",
    "schema": {"type": "integer"}}}
