"""Random contract lifecycles through the real workflow keep every invariant
(billow issue 11, "The proof").

Hypothesis draws a contract and a timeline (tests/support/lifecycle_gen.py),
runs it on a fresh time-skipping server against the emptied test database
(tests/support/lifecycle_run.py) and checks the run
(tests/support/lifecycle_checks.py). The CI configuration is bounded and
derandomized: the same examples on every run, a couple of minutes on two
cores. ``BILLOW_FUZZ_EXAMPLES`` raises the count; ``BILLOW_FUZZ_SHRINK=1``
shrinks a failure (minutes: every candidate is a whole run). The long run is
``python -m bench lifecycle-fuzz --examples N``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import given

from tests.support.lifecycle_fuzz import Harness, describe, fuzz_settings, summary_of
from tests.support.lifecycle_gen import Lifecycle, lifecycles

CI_EXAMPLES = int(os.environ.get("BILLOW_FUZZ_EXAMPLES", "25"))
SHRINK = os.environ.get("BILLOW_FUZZ_SHRINK") == "1"


@pytest.fixture(scope="module")
def harness(database_url: str) -> Iterator[Harness]:
    h = Harness(database_url, budget_s=90.0)
    yield h
    h.close()


def test_random_lifecycles_keep_every_invariant(harness: Harness) -> None:
    @fuzz_settings(CI_EXAMPLES, shrink=SHRINK, derandomize=True)
    @given(lifecycles())
    def lifecycle_keeps_every_invariant(lc: Lifecycle) -> None:
        found = harness.found(lc)
        assert not found, describe(lc, found, summary_of(harness, lc))

    lifecycle_keeps_every_invariant()
