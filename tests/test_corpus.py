"""Compile every corpus case with the fox_acp backend and hold it to eager.

For every case: outputs and all gradients (inputs and parameters) equal eager in fp32 and fp64
with the graph run by AOTAutograd's eager compiler (`-k inductor` selects the few cases also run
with the default Inductor compiler), and `foxcompile.explain` reports exactly the expected sites,
decays and declines (see tests/corpus/__init__.py for the labels). foxcompile is imported
unconditionally: these tests fail loudly when the package is missing.
"""

from __future__ import annotations

import pytest
import torch

import foxcompile  # no importorskip: a missing package is a failure
from corpus import TOLERANCES, all_cases, check_report, seed_of
from helpers import AOT, assert_compiled_matches_eager

CASES = all_cases()
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


pytestmark = pytest.mark.usefixtures("fresh_dynamo")


def _compare(case, dtype, options):
    torch.manual_seed(seed_of(case.name, str(dtype)))
    fn, inputs = case.build(dtype)
    rtol, atol = TOLERANCES[(dtype, case.mixed)]
    assert_compiled_matches_eager(
        fn, inputs, rtol=rtol, atol=atol, options=options,
        rows=case.rows(inputs) if case.rows else None,
        rng_seed=seed_of(case.name, "dropout") if case.training else None,
        cotangent_seed=seed_of(case.name, "cotangent"),
        what=f"{case.name} {dtype}",
    )


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compiled_matches_eager(case, dtype):
    _compare(case, dtype, AOT)


INDUCTOR_CASES = [c for c in CASES if c.inductor]


@pytest.mark.parametrize("case", INDUCTOR_CASES, ids=[c.name for c in INDUCTOR_CASES])
def test_compiled_matches_eager_inductor(case):
    _compare(case, torch.float32, None)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_explain_report(case):
    torch.manual_seed(seed_of(case.name, "explain"))
    fn, inputs = case.build(torch.float32)
    report = foxcompile.explain(fn, *inputs)
    check_report(
        report,
        sites=case.sites,
        decay=case.decay,
        declined_min=case.declined_min,
        may_decline=case.may_decline,
        what=case.name,
    )
