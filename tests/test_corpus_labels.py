"""Check the corpus labels themselves, in eager mode, against the naive fp64 reference.

No foxcompile here: this must pass whether or not the package exists. A positive must compute
exactly the forgetting attention its reference hook describes; a near miss must differ from the
forgetting attention a careless rewrite would produce (or, where it is that operator but must be
declined or left unpruned, equal it); "proven" sites must have a non-increasing lam on the data and
"none" sites a lam that rises.
"""

from __future__ import annotations

import pytest
import torch

from corpus import DECAYS, all_cases, seed_of
from corpus.reference import is_nonincreasing
from helpers import outputs_of, trainable

CASES = all_cases()
IDS = [c.name for c in CASES]


def test_corpus_shape():
    positives = [c for c in CASES if c.positive]
    near = [c for c in CASES if not c.positive]
    assert len(CASES) >= 40
    assert len(positives) >= 40
    assert len(near) >= 20
    for c in CASES:
        assert c.note and c.axes, c.name
        if c.positive:
            assert c.relation == "equal" and c.reference is not None, c.name
            assert c.declined_min == 0, c.name
        else:
            # a near miss either must not be rewritten at all, or only as an unpruned / optional site
            assert c.sites == 0 or c.may_decline or c.declined_min > 0, c.name
    # every decay label is represented, and the "none" ones are all optional sites
    assert {d for c in CASES for d in c.decay} == set(DECAYS)
    assert all(c.may_decline for c in CASES if "none" in c.decay)
    # a handful are marked for the Inductor run
    assert 3 <= sum(c.inductor for c in CASES) <= 10


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_sizes_small_and_inputs_fresh(case):
    torch.manual_seed(seed_of(case.name, "a"))
    fn, inputs = case.build(torch.float32)
    torch.manual_seed(seed_of(case.name, "b"))
    _, inputs_b = case.build(torch.float32)
    assert isinstance(inputs, tuple) and inputs
    for t in inputs:  # floating inputs in the case's dtype; integer ones are ids (packed sequences)
        assert isinstance(t, torch.Tensor)
        assert t.dtype == torch.float32 or not t.is_floating_point(), (case.name, t.dtype)
        assert t.numel() <= 2 * 4 * 40 * 16 * 2, (case.name, t.shape)
    assert any(not torch.equal(a, b) for a, b in zip(inputs, inputs_b)), "inputs must be random per seed"
    for p in trainable(fn):
        assert p.dtype == torch.float32
    out = outputs_of(fn(*inputs))
    assert torch.isfinite(out[0]).all(), case.name
    for o in out[1:]:  # returned scores may hold the -inf mask
        assert not torch.isnan(o).any(), case.name


def _check_lams(case, ref):
    if not case.sites:
        return
    assert len(ref.lams) == case.sites, f"{case.name}: one lam per expected site"
    for decay, lam in zip(case.decay, ref.lams):
        if decay == "proven":
            assert is_nonincreasing(lam), f"{case.name}: labelled proven but lam rises on the data"
        elif decay == "none":
            assert not is_nonincreasing(lam), f"{case.name}: labelled none but lam never rises"


@pytest.mark.parametrize("case", [c for c in CASES if c.relation is not None], ids=lambda c: c.name)
def test_label_against_reference(case):
    torch.manual_seed(seed_of(case.name, "labels"))
    fn, inputs = case.build(torch.float64)
    with torch.no_grad():
        ref = case.reference(fn, inputs)
        got = ref.select(fn(*inputs))
    want = ref.output.to(got.dtype)
    assert got.shape == want.shape, (got.shape, want.shape)
    if case.rows is not None:  # the queries that see a key (the reference's others are NaN)
        keep = case.rows(inputs).expand(got.shape)
        got, want = got[keep], want[keep]
    if case.relation == "equal":
        tol = 2e-5 if case.mixed else 1e-9
        torch.testing.assert_close(got, want, rtol=tol, atol=tol)
        _check_lams(case, ref)
    else:
        rel = ((got - want).abs().max() / want.abs().max()).item()
        assert rel > 1e-2, f"{case.name}: the near miss computes forgetting attention after all (rel diff {rel:.2e})"
