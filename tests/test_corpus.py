"""Compile every corpus case with the fox_acp backend and hold it to eager.

For every case: outputs and all gradients (inputs and parameters) equal eager in fp32 and fp64
with the graph run by AOTAutograd's eager compiler (`-k inductor` selects the few cases also run
with the default Inductor compiler), and `foxcompile.explain` reports exactly the expected sites,
decays and declines (see tests/corpus/__init__.py for the labels). foxcompile is imported
unconditionally: these tests fail loudly when the package is missing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

import foxcompile  # no importorskip: a missing package is a failure

sys.path.insert(0, str(Path(__file__).resolve().parent))

from corpus import (  # noqa: E402
    TOLERANCES,
    all_cases,
    assert_same_run,
    check_report,
    run_with_grads,
    seed_of,
    trainable,
)

CASES = all_cases()
DTYPES = {"fp32": torch.float32, "fp64": torch.float64}


@pytest.fixture(autouse=True)
def _fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


def _compare(case, dtype, options):
    torch.manual_seed(seed_of(case.name, str(dtype)))
    fn, inputs = case.build(dtype)
    rng = seed_of(case.name, "dropout") if case.training else None
    cot = seed_of(case.name, "cotangent")
    params = trainable(fn)
    rows = case.rows(inputs) if case.rows else None
    eager = run_with_grads(fn, inputs, cotangent_seed=cot, rng_seed=rng, params=params, rows=rows)
    compiled_fn = torch.compile(fn, backend="fox_acp", options=options)
    compiled = run_with_grads(compiled_fn, inputs, cotangent_seed=cot, rng_seed=rng, params=params,
                              rows=rows)
    rtol, atol = TOLERANCES[(dtype, case.mixed)]
    assert_same_run(eager, compiled, rtol=rtol, atol=atol, what=f"{case.name} {dtype}", rows=rows)


@pytest.mark.parametrize("dtype", list(DTYPES.values()), ids=list(DTYPES))
@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_compiled_matches_eager(case, dtype):
    _compare(case, dtype, {"fox.compiler": "aot_eager"})


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
