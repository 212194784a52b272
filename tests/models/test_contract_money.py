"""Contract amounts invoiced as they stand must be whole minor units."""

from __future__ import annotations

import pytest

from models.catalog import load_catalog
from models.contract import load_contract, resolve_terms
from models.errors import BillowValidationError
from tests.support.scenario import PRO_CATALOG, contract_doc


@pytest.mark.parametrize(
    ("field", "doc", "message"),
    [
        ("commitment.amount", {"commitment": {"amount": "100.005"}}, "more decimals than USD has"),
        # Bought credits that round to nothing: the commitment's deferred revenue
        # would never be recognized nor expire as breakage (found by the fuzz:
        # 999999999999999999.00 paid for 0.001 credits stayed deferred for good).
        ("commitment.credits", {"commitment": {"amount": "1000.00", "credits": "0.001"}},
         "more decimals than USD has"),
        (
            "credit_grants[0].price",
            {"credit_grants": [{"id": "g", "credits": "10", "price": "9.999"}]},
            "more decimals than USD has",
        ),
    ],
)
def test_sub_cent_amounts_are_refused_naming_the_field(
    field: str, doc: dict[str, object], message: str
) -> None:
    with pytest.raises(BillowValidationError) as error:
        resolve_terms(load_contract(contract_doc(**doc)), load_catalog(PRO_CATALOG))
    assert error.value.problems == [(field, f"{message} (2)")]


def test_whole_cents_are_accepted() -> None:
    terms = resolve_terms(
        load_contract(contract_doc(commitment={"amount": "100.5"})), load_catalog(PRO_CATALOG)
    )
    assert terms.commitment is not None
