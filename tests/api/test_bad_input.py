"""Bad input on every endpoint: a 4xx problem+json naming the field, nothing stored."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.api.helpers import ApiServer, counts, fields, problem
from tests.support.paths import ACME

TABLES = ("customers", "contracts", "usage_events", "catalog_versions", "amendments",
          "payments", "invoices", "webhook_deliveries")

CONTRACT: dict[str, Any] = {
    "id": "bad-input-1", "customer": {"id": "bad-co", "name": "Bad Co"}, "plan": "pro",
    "starts_on": "2030-01-01", "term_months": 12,
}
AMENDMENT: dict[str, Any] = {"id": "a-1", "kind": "change_payment_terms",
                             "payment_terms_days": 60}

# (method, path, scope that may call it, a valid body or None)
ENDPOINTS: list[tuple[str, str, str, Any]] = [
    ("POST", "/v1/contracts", "crm", CONTRACT),
    ("GET", "/v1/contracts", "crm", None),
    ("GET", "/v1/contracts/bad-input-1", "crm", None),
    ("POST", "/v1/contracts/bad-input-1/amendments", "crm", AMENDMENT),
    ("POST", "/v1/usage", "usage", {"events": []}),
    ("GET", "/v1/invoices", "crm", None),
    ("GET", "/v1/invoices/INV-000001", "crm", None),
    ("POST", "/v1/invoices/INV-000001/payments", "ops", {"amount": "1.00"}),
    ("PUT", "/v1/catalog", "ops", {"meters": [], "plans": []}),
    ("GET", "/v1/catalog", "ops", None),
]
BODY_ENDPOINTS = [(m, p) for m, p, _, body in ENDPOINTS if body is not None]
OTHER_SCOPE = {"crm": "usage", "usage": "crm", "ops": "crm"}


async def _nothing_stored(api: ApiServer) -> None:
    assert await counts(api.deps.engine, *TABLES) == dict.fromkeys(TABLES, 0)


@pytest.mark.parametrize(("method", "path", "scope", "body"), ENDPOINTS,
                         ids=[f"{m} {p}" for m, p, _, _ in ENDPOINTS])
async def test_auth_is_required_and_scoped(
    api: ApiServer, method: str, path: str, scope: str, body: Any
) -> None:
    async with api.http(None) as http:
        missing = problem(await http.request(method, path, json=body), 401)
        assert missing["errors"][0]["field"] == "header.authorization"
        bad = await http.request(method, path, json=body,
                                 headers={"Authorization": "Bearer bk_0123456789ab_wrong"})
        problem(bad, 401)
        assert bad.headers["www-authenticate"].startswith("Bearer")
        basic = await http.request(method, path, json=body,
                                   headers={"Authorization": "Basic dXNlcjpwYXNz"})
        problem(basic, 401)
        # a malformed body without a key is still a 401, not a 422
        raw = await http.request(method, path, content=b"{nope",
                                 headers={"content-type": "application/json"})
        problem(raw, 401)
    async with api.http(OTHER_SCOPE[scope]) as http:
        forbidden = problem(await http.request(method, path, json=body), 403)
        assert "scope" in forbidden["detail"]
    await _nothing_stored(api)


async def test_revoked_key_is_refused(api: ApiServer) -> None:
    from activities.api_keys import parse_key, revoke_api_key

    parsed = parse_key(api.keys["ops"])
    assert parsed is not None
    async with api.deps.engine.begin() as conn:
        assert await revoke_api_key(conn, parsed[0])
    async with api.http("ops") as http:
        problem(await http.get("/v1/contracts"), 401)


@pytest.mark.parametrize(("method", "path"), BODY_ENDPOINTS,
                         ids=[f"{m} {p}" for m, p in BODY_ENDPOINTS])
async def test_malformed_json_is_422(api: ApiServer, method: str, path: str) -> None:
    async with api.http("ops") as http:
        r = await http.request(method, path, content=b'{"id": "x",',
                               headers={"content-type": "application/json"})
        body = problem(r, 422)
        assert body["errors"][0]["field"] == ""
        assert "malformed JSON" in body["errors"][0]["reason"]
        empty = problem(await http.request(method, path), 422)
        assert "body is required" in empty["errors"][0]["reason"]
        listed = problem(await http.request(method, path, json=[1, 2]), 422)
        assert listed["errors"]
        plain = problem(await http.request(method, path, content=b"amount=5",
                                           headers={"content-type": "text/plain"}), 422)
        assert "Content-Type: application/json" in plain["errors"][0]["reason"]
    await _nothing_stored(api)


@pytest.mark.parametrize(
    ("method", "path", "body", "expected"),
    [
        ("POST", "/v1/contracts", {**CONTRACT, "term_months": "twelve"}, ["term_months"]),
        ("POST", "/v1/contracts", {**CONTRACT, "starts_on": 20300101}, ["starts_on"]),
        ("POST", "/v1/contracts", {**CONTRACT, "customer": {"name": "No Id"}}, ["customer.id"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "commitment": {"amount": 100.5}}, ["commitment.amount"]),
        ("POST", "/v1/contracts", {**CONTRACT, "colour": "red"}, ["colour"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "rate_overrides": [{"meter": "tokens", "unit_price": "0.1",
                                          "discount_percent": "5"}]},
         ["rate_overrides[0].discount_percent"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {**AMENDMENT, "payment_terms_days": "sixty"}, ["payment_terms_days"]),
        ("POST", "/v1/contracts/bad-input-1/amendments", {**AMENDMENT, "extra": 1}, ["extra"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {"id": "a-2", "kind": "upgrade"}, ["kind"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {"id": "a-3", "kind": "rate_override", "override": {"meter": "tokens"}},
         ["override"]),
        ("POST", "/v1/usage", {"events": "all of them"}, ["events"]),
        ("POST", "/v1/usage", {"events": [], "dry_run": True}, ["dry_run"]),
        ("POST", "/v1/invoices/INV-000001/payments", {"amount": "-5"}, ["amount"]),
        ("POST", "/v1/invoices/INV-000001/payments", {"amount": 10.5}, ["amount"]),
        ("POST", "/v1/invoices/INV-000001/payments", {"amount": "5", "memo": "x"}, ["memo"]),
        ("POST", "/v1/invoices/INV-000001/payments", {}, ["amount"]),
        ("PUT", "/v1/catalog", {"meters": [{"key": "m"}], "plans": []},
         ["meters[0].name", "meters[0].aggregation"]),
        ("PUT", "/v1/catalog", {"meters": [], "plans": [], "version": 3}, ["version"]),
        ("PUT", "/v1/catalog",
         {"meters": [], "plans": [{"key": "p", "name": "P", "currency": "USD",
                                   "meters": ["ghost"]}]}, ["plans[0].meters[0]"]),
        # bounds (SPEC.md section 6) and windows inside the term (section 1)
        ("POST", "/v1/contracts", {**CONTRACT, "term_months": 1201}, ["term_months"]),
        ("POST", "/v1/contracts", {**CONTRACT, "payment_terms_days": 3_000_000},
         ["payment_terms_days"]),
        ("POST", "/v1/contracts", {**CONTRACT, "id": "x" * 257}, ["id"]),
        ("POST", "/v1/contracts", {**CONTRACT, "starts_on": "9999-01-01"}, ["starts_on"]),
        ("POST", "/v1/contracts", {**CONTRACT, "usage_grace_hours": "1E+20"},
         ["usage_grace_hours"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "commitment": {"amount": "1000000000000000000"}}, ["commitment.amount"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "commitment": {"amount": "100.00", "expires_on": "2030-01-01"}},
         ["commitment.expires_on"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "credit_grants": [{"id": "g", "credits": "10", "effective": "2030-03-01",
                                         "expires": "2030-03-01"}]},
         ["credit_grants[0].expires"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "credit_grants": [{"id": "g", "credits": "10",
                                         "effective": "2029-12-31T23:59:59Z"}]},
         ["credit_grants[0].effective"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {**AMENDMENT, "payment_terms_days": 3_000_000}, ["payment_terms_days"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {"id": "a-4", "kind": "extend_term", "term_months": 12_000}, ["term_months"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {"id": "a-5", "kind": "grant_credits", "credits": "0.0000000000001"}, ["credits"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {**AMENDMENT, "id": "a" * 257}, ["id"]),
        ("POST", "/v1/invoices/INV-000001/payments", {"amount": "1000000000000000000"},
         ["amount"]),
        ("POST", "/v1/invoices/INV-000001/payments", {"amount": "1", "payment_id": "p" * 257},
         ["payment_id"]),
        ("PUT", "/v1/catalog",
         {"meters": [], "plans": [{"key": "p", "name": "P", "currency": "USD",
                                   "payment_terms_days": 3651}]},
         ["plans[0].payment_terms_days"]),
        # minimum commitments and spend limits (SPEC.md section 12)
        ("POST", "/v1/contracts",
         {**CONTRACT, "minimum_commitment": {"amount": "-5", "per": "term"}},
         ["minimum_commitment.amount"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "minimum_commitment": {"amount": "5", "per": "year"}},
         ["minimum_commitment.per"]),
        ("POST", "/v1/contracts",
         {**CONTRACT, "rate_overrides": [{"meter": "tokens", "minimum_amount": "5",
                                          "maximum_amount": "1"}]},
         ["rate_overrides[0].minimum_amount"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {"id": "a-6", "kind": "set_minimum_commitment", "minimum_commitment": {"amount": "5"}},
         ["minimum_commitment.per"]),
        ("POST", "/v1/contracts/bad-input-1/amendments",
         {"id": "a-7", "kind": "set_minimum_commitment"}, ["minimum_commitment"]),
        ("PUT", "/v1/catalog",
         {"meters": [{"key": "m", "name": "M", "aggregation": "sum"}],
          "plans": [{"key": "p", "name": "P", "currency": "USD", "meters": ["m"],
                     "meter_limits": [{"meter": "m", "minimum_amount": "9",
                                       "maximum_amount": "1"}]}]},
         ["plans[0].meter_limits[0].minimum_amount"]),
        ("GET", "/v1/contracts?overdue=maybe", None, ["query.overdue"]),
        ("GET", "/v1/contracts?status=happy", None, ["query.status"]),
        ("GET", "/v1/contracts?limit=0", None, ["query.limit"]),
        ("GET", "/v1/invoices?status=bogus", None, ["query.status"]),
        ("GET", "/v1/catalog?version=zero", None, ["query.version"]),
    ],
)
async def test_invalid_fields_are_named(
    api: ApiServer, method: str, path: str, body: Any, expected: list[str]
) -> None:
    async with api.http("ops") as http:
        r = await http.request(method, path, json=body)
    doc = problem(r, 422)
    assert fields(doc) == expected, doc
    await _nothing_stored(api)


async def test_oversized_bodies_and_batches_are_413(api: ApiServer) -> None:
    async with api.http("ops") as http:
        big = {**CONTRACT, "customer": {"id": "x", "name": "x" * (1024 * 1024)}}
        problem(await http.post("/v1/contracts", json=big), 413)
        problem(await http.put("/v1/catalog", json={"meters": [], "plans": [],
                                                   "pad": "x" * (1024 * 1024)}), 413)
        event = {"id": "e", "customer": "c", "meter": "tokens",
                 "timestamp": "2030-01-01T00:00:00Z"}
        too_many = problem(await http.post("/v1/usage", json={"events": [event] * 10_001}), 413)
        assert too_many["errors"][0]["field"] == "events"
        assert "10000" in too_many["detail"]
        # exactly the limit is one batch: every event judged, none stored (unknown customer)
        full = await http.post("/v1/usage", json={"events": [
            {**event, "id": f"e{i}"} for i in range(10_000)]})
        assert full.status_code == 200, full.text
        assert full.json()["rejected"] == 10_000
        huge = {"events": [{**event, "id": f"e{i}", "dimensions": {"pad": "x" * 600}}
                           for i in range(9_000)]}
        assert len(json.dumps(huge)) > 5 * 1024 * 1024
        problem(await http.post("/v1/usage", json=huge), 413)
        # chunked (no Content-Length) is limited too
        async def chunks() -> Any:
            for _ in range(3):
                yield b" " * (512 * 1024)
        problem(await http.post("/v1/contracts", content=chunks(),
                                headers={"content-type": "application/json"}), 413)
    await _nothing_stored(api)


async def test_unknown_routes_and_methods_are_problems(api: ApiServer) -> None:
    async with api.http("ops") as http:
        assert problem(await http.get("/v1/nothing-here"), 404)["title"] == "Not Found"
        r = await http.delete("/v1/catalog")
        doc = problem(r, 405)
        assert "DELETE" in doc["detail"]
        problem(await http.get("/v1/contracts/nobody"), 404)
        problem(await http.post("/v1/contracts/nobody/amendments", json=AMENDMENT), 404)
        problem(await http.get("/v1/invoices/INV-999999"), 404)
        problem(await http.post("/v1/invoices/INV-999999/payments",
                                json={"amount": "1.00"}), 404)
        problem(await http.get("/v1/catalog"), 404)
    async with api.http(None) as http:
        assert (await http.get("/healthz")).status_code == 200
        assert (await http.get("/docs")).status_code == 200
        assert (await http.get("/openapi.json")).status_code == 200
    await _nothing_stored(api)


async def test_contract_semantics_errors(api: ApiServer) -> None:
    async with api.http("crm") as http:
        no_catalog = problem(await http.post("/v1/contracts", json=CONTRACT), 409)
        assert no_catalog["type"].endswith("no-catalog")
    async with api.http("ops") as http:
        catalog = (ACME / "catalog.yaml").read_text()
        import yaml

        r = await http.put("/v1/catalog", json=yaml.safe_load(catalog))
        assert r.status_code == 201, r.text
        unknown_plan = problem(await http.post("/v1/contracts",
                                               json={**CONTRACT, "plan": "gold"}), 422)
        assert fields(unknown_plan) == ["plan"]
        bad_override = problem(await http.post("/v1/contracts", json={
            **CONTRACT, "rate_overrides": [{"meter": "sms", "unit_price": "1"}]}), 422)
        assert fields(bad_override) == ["rate_overrides[0].meter"]
        wrong_version = problem(await http.post("/v1/contracts?catalog_version=7",
                                                json=CONTRACT), 422)
        assert fields(wrong_version) == ["query.catalog_version"]
        # usage for nobody: per-event rejection, nothing stored
        r = await http.post("/v1/usage", json={"events": [
            {"id": "u1", "customer": "ghost", "meter": "tokens",
             "timestamp": "2030-01-01T00:00:00Z"},
            {"id": "u2", "customer": "ghost", "meter": "tokens", "timestamp": "2030-01-01"},
            {"id": "u3", "customer": "ghost", "meter": "tokens",
             "timestamp": "2030-01-01T00:00:00Z", "colour": "red"},
            "not an event",
        ]})
        assert r.status_code == 200, r.text
        report = r.json()
        assert (report["accepted"], report["duplicate"], report["rejected"]) == (0, 0, 4)
        reasons = [res["reason"] for res in report["results"]]
        assert reasons[0].startswith("customer:")
        assert reasons[1].startswith("timestamp:")
        assert "colour: unknown field" in reasons[2]
        assert "JSON object" in reasons[3]
    after = await counts(api.deps.engine, *TABLES)
    assert after == {**dict.fromkeys(TABLES, 0), "catalog_versions": 1}


async def test_openapi_is_documented(api: ApiServer) -> None:
    async with api.http(None) as http:
        spec = (await http.get("/openapi.json")).json()
    ops = [(p, m, op) for p, item in spec["paths"].items() for m, op in item.items()]
    assert {(m.upper(), p) for p, m, _ in ops} == {
        ("GET", "/healthz"),
        ("POST", "/v1/contracts"), ("GET", "/v1/contracts"),
        ("GET", "/v1/contracts/{contract_id}"), ("GET", "/v1/contracts/{contract_id}/draft"),
        ("GET", "/v1/contracts/{contract_id}/credits"),
        ("GET", "/v1/contracts/{contract_id}/revenue"),
        ("GET", "/v1/contracts/{contract_id}/collection"),
        ("GET", "/v1/invoices/{number}/collection"),
        ("POST", "/v1/contracts/{contract_id}/amendments"),
        ("POST", "/v1/usage"),
        ("GET", "/v1/invoices"), ("GET", "/v1/invoices/{number}"),
        ("POST", "/v1/invoices/{number}/payments"),
        ("POST", "/v1/invoices/{number}/void"), ("POST", "/v1/invoices/{number}/reissue"),
        ("POST", "/v1/invoices/{number}/credit-notes"),
        ("GET", "/v1/credit-notes"), ("GET", "/v1/credit-notes/{number}"),
        ("GET", "/v1/credit-notes/{number}/document.{fmt}"),
        ("PUT", "/v1/catalog"), ("GET", "/v1/catalog"),
        ("POST", "/v1/webhooks/crm"),
        # documents, events and exports (SPEC.md section 13)
        ("GET", "/v1/invoices/{number}/document.{fmt}"),
        ("GET", "/v1/contracts/{contract_id}/draft/document.{fmt}"),
        ("GET", "/v1/events"), ("GET", "/v1/webhook-endpoints"),
        ("POST", "/v1/webhook-endpoints"), ("GET", "/v1/webhook-endpoints/{endpoint_id}"),
        ("DELETE", "/v1/webhook-endpoints/{endpoint_id}"),
        ("POST", "/v1/webhook-endpoints/{endpoint_id}/replay"),
        ("GET", "/v1/journal"), ("GET", "/v1/deferred-revenue"),
        ("GET", "/v1/contracts/{contract_id}/credits"),
    }
    for path, method, op in ops:
        assert op.get("summary") and op.get("tags"), (path, method)
        assert op.get("description"), (path, method)
        if path.startswith("/v1/"):
            for status in ("422",) if method != "get" or "{" in path else ():
                assert "application/problem+json" in op["responses"][status]["content"]
        body = op.get("requestBody")
        if body:
            content = body["content"]["application/json"]
            assert content.get("examples") or content.get("example") or (
                "$ref" in content["schema"]), (path, method)
    schemas = spec["components"]["schemas"]
    for name in ("Problem", "ContractCreated", "ContractState", "UsageReport", "PaymentOut",
                 "CatalogApplied", "CrmWebhookPayload", "InvoiceDetail"):
        assert name in schemas
    for name in ("ContractCreated", "UsageReport", "PaymentIn", "Problem"):
        assert "example" in schemas[name], name
    assert "ApiKey" in spec["components"]["securitySchemes"]


async def test_a_failed_workflow_start_leaves_no_contract_behind(api: ApiServer) -> None:
    from temporalio.client import Client
    from temporalio.contrib.pydantic import pydantic_data_converter

    async with api.http("ops") as http:
        import yaml

        catalog = yaml.safe_load((ACME / "catalog.yaml").read_text())
        assert (await http.put("/v1/catalog", json=catalog)).status_code == 201
        # a Temporal client whose namespace does not exist: the start fails after
        # start_contract registered the rows, which must be removed again
        good = api.deps.client
        api.deps.client = await Client.connect(
            api.client.service_client.config.target_host, namespace="no-such-namespace",
            data_converter=pydantic_data_converter)
        try:
            r = await http.post("/v1/contracts", json=CONTRACT)
        finally:
            api.deps.client = good
        assert r.status_code >= 500
        assert r.headers["content-type"].startswith("application/problem+json")
    after = await counts(api.deps.engine, *TABLES)
    assert after == {**dict.fromkeys(TABLES, 0), "catalog_versions": 1}


async def test_unbounded_payment_terms_are_refused_and_nothing_changes(
    api: ApiServer, worker: None
) -> None:
    """Known case 3 of issue 11: a 3,000,000-day ``change_payment_terms`` was accepted and
    raised OverflowError in workflow code at the next close. It is refused naming
    ``payment_terms_days`` by the API and by the workflow's own update, and nothing changes."""
    import yaml
    from temporalio.client import WorkflowUpdateFailedError

    from workflows.contract import AmendmentResult

    contract = {**CONTRACT, "payment_terms_days": 45}
    async with api.http("ops") as http:
        catalog = yaml.safe_load((ACME / "catalog.yaml").read_text())
        assert (await http.put("/v1/catalog", json=catalog)).status_code == 201
        r = await http.post("/v1/contracts", json=contract)
        assert r.status_code == 201, r.text
        huge = {**AMENDMENT, "payment_terms_days": 3_000_000}
        doc = problem(await http.post("/v1/contracts/bad-input-1/amendments", json=huge), 422)
        assert fields(doc) == ["payment_terms_days"], doc
        assert "3650" in doc["errors"][0]["reason"]
        # A client that skips the API's validation gets the same refusal from the
        # workflow: the update payload itself is bounded.
        handle = api.client.get_workflow_handle("contract:bad-input-1")
        with pytest.raises(WorkflowUpdateFailedError) as info:
            await handle.execute_update("amend", huge, id="amend:raw",
                                        result_type=AmendmentResult)
        chain: list[str] = []
        cause: BaseException | None = info.value.cause
        while cause is not None:
            chain.append(str(cause))
            cause = cause.__cause__
        assert any("payment_terms_days" in c and "3650" in c for c in chain), chain
        state = (await http.get("/v1/contracts/bad-input-1")).json()
    assert state["terms"]["payment_terms_days"] == 45
    assert state["amendments"] == [] and state["pending_amendments"] == []
    assert (await counts(api.deps.engine, "amendments"))["amendments"] == 0
