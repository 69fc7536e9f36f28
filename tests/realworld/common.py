"""Shared by the real-world suite (tests/realworld/test_*.py) and its table script
(tests/realworld/table.py).

A `Case` is one third-party model (unmodified, from the `realworld` extra) on one attention path.
`build(length, train)` returns `(fn, inputs, rows)`: a module (or function) in train or eval mode,
its positional inputs (floating ones get gradients: embeddings, not token ids, so input gradients
are compared too) and, for left-padded batches, `rows`: a boolean broadcast to the first output,
True on the queries that see at least one key (eager's other rows are an average over masked keys,
the op's a finite row of their causal keys: docs/design.md); None compares everything.

Labels: `sites` (the decay label of every site the backend must rewrite, order-free) and, for a
case the matcher does not read yet, `blocker`: why, in a word or two. The site-count test of such
a case is `xfail(strict=True)`, so it starts failing (and must be relabelled) the day the matcher
reads it; the comparison with eager holds either way. `decline` is a substring the first decline
reason must contain when no site is expected (a control or a near miss that must stay declined).
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Callable

import pytest
import torch

import foxcompile

from corpus import seed_of  # tests/ is on sys.path (tests/conftest.py, or table.py)
from helpers import AOT, assert_same_run, run_with_grads

LENGTHS = {"eval": 77, "train": 300}   # odd lengths: no tile or power-of-two coincidence
EXPLAIN_LENGTH = 77
RTOL, ATOL = 2e-4, 1e-4               # fp32, as the corpus: the op accumulates in another order


@dataclass(frozen=True)
class Case:
    id: str
    library: str
    model: str
    path: str                          # attention path: "math", "flash (SDPA)", "eager", ...
    build: Callable                    # (length, train) -> (fn, inputs, rows)
    sites: tuple = ()                  # decay labels of the sites it must have
    blocker: str | None = None         # why it is not matched yet (xfail on the site count)
    decline: str | None = None         # substring of the first decline reason (no sites expected)
    control: bool = False              # must be declined and bit-identical to plain Inductor
    note: str = ""
    runs: tuple = ("eval", "train")    # which comparisons with eager to run
    extra: dict = field(default_factory=dict, hash=False, compare=False)

    def __repr__(self):
        return f"Case({self.id})"


def explain(case: Case, length: int = EXPLAIN_LENGTH):
    torch._dynamo.reset()
    torch.manual_seed(seed_of(case.id, "explain"))
    fn, inputs, _rows = case.build(length, False)
    with torch.no_grad():
        return foxcompile.explain(fn, *inputs)


def check_sites(case: Case) -> None:
    report = explain(case)
    want = Counter(case.sites)
    have = Counter(s.decay for s in report.sites)
    assert have == want, f"{case.id}: sites {dict(have)}, expected {dict(want)}\n{report}"
    if not case.sites:
        assert report.declined, f"{case.id}: nothing declined\n{report}"
        if case.decline:
            assert case.decline in report.declined[0].reason, f"{case.id}:\n{report}"
    for decline in report.declined:  # no Dynamo-internal names in what the user reads
        assert "L[" not in str(decline) and "_modules_" not in str(decline), str(decline)


def compare_with_eager(case: Case, mode: str, options=AOT) -> None:
    """Compiled (fox_acp) versus eager: outputs (on `rows`) and the gradients of every floating
    input and every parameter, in train or eval mode."""
    torch._dynamo.reset()
    torch.manual_seed(seed_of(case.id, mode))
    fn, inputs, rows = case.build(LENGTHS[mode], mode == "train")
    dtype = case.extra.get("dtype")  # fp64 where fp32 rounding alone would exceed RTOL / ATOL
    if dtype is not None:
        fn = fn.to(dtype)
        inputs = tuple(x.to(dtype) if x.is_floating_point() else x for x in inputs)
    params = [p for p in fn.parameters() if p.requires_grad] if isinstance(fn, torch.nn.Module) else []
    cot = seed_of(case.id, "cotangent")
    eager = run_with_grads(fn, inputs, cotangent_seed=cot, params=params, rows=rows)
    compiled = torch.compile(fn, backend="fox_acp", options=options)
    got = run_with_grads(compiled, inputs, cotangent_seed=cot, params=params, rows=rows)
    assert_same_run(eager, got, rtol=RTOL, atol=ATOL, what=f"{case.id} {mode}", rows=rows)


def compare_with_inductor(case: Case) -> None:
    """A declined model compiled by fox_acp is bit-identical to plain Inductor: the graph it hands
    over is untouched. Outputs and gradients when `case.extra["grads"]`, else the forward only
    (an Inductor compile of the backward costs tens of seconds on 2 cores)."""
    grads = case.extra.get("grads", False)
    torch.manual_seed(seed_of(case.id, "inductor"))
    fn, inputs, rows = case.build(EXPLAIN_LENGTH, grads)
    params = [p for p in fn.parameters() if p.requires_grad]
    cot = seed_of(case.id, "cotangent")
    runs = []
    for backend in ("fox_acp", "inductor"):
        torch._dynamo.reset()
        compiled = torch.compile(fn, backend=backend)
        if grads:
            runs.append(run_with_grads(compiled, inputs, cotangent_seed=cot, params=params, rows=rows))
        else:
            with torch.no_grad():
                runs.append(([compiled(*inputs)], [], []))
    assert_same_run(runs[1], runs[0], rtol=0, atol=0, what=f"{case.id} vs inductor")


def site_test(case: Case):
    """The site-count test's parameter, xfail(strict) while the case has a blocker."""
    marks = [pytest.mark.xfail(strict=True, reason=case.blocker)] if case.blocker else []
    return pytest.param(case, id=case.id, marks=marks)


def left_padding(batch: int, length: int, pad: int = 5) -> torch.Tensor:
    """(B, T) validity mask, True on the tokens: batch row 1 has `pad` padding tokens on the left."""
    valid = torch.ones(batch, length, dtype=torch.bool)
    valid[1, :pad] = False
    return valid


def rows_of(valid: torch.Tensor) -> torch.Tensor:
    """The queries that see a key under left padding, broadcast to (B, T, C) outputs."""
    return valid[:, :, None]
