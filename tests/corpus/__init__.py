"""A corpus of small models for the FoX matcher: forgetting attention written many ways, and near misses.

Every case is a `Case`. `build(dtype)` returns `(fn, inputs)`: `fn` is an nn.Module, a bound method
or a plain function, already in `dtype` and in the mode (train/eval) the case is about; `inputs` is a
tuple of fresh random tensors drawn from torch's global RNG (the tests seed it per case): floating
tensors in `dtype`, integer ones for ids (packed sequences' cu_seqlens, token or document ids).

Layout
------
positives/     forgetting attention that must be rewritten, one module per family (layouts, gqa,
               decoding, bias, sdpa, softmax, masks, gates, blocks, documents, padding)
near_misses/   look-alikes that must not be rewritten as prunable FoX, one module per family
reference.py   the naive fp64 forgetting attention the reference hooks call

In each family module every model is followed by its reference hook and its labels,
`CASES.append(_case(...))` (positives) or `CASES.append(_nm(...))` (near misses); the package's
`__init__` lists the families (POSITIVES, NEAR_MISSES) and `all_cases()` joins them.

Labels
------
sites        how many attention sites the backend must rewrite.
decay        one entry per expected site (order-free):
               "proven"  the per-step log forget gate is <= 0 by construction visible in the graph
                         (logsigmoid, -softplus, clamp(max<=0), a non-positive constant, a non-negative
                         constant times one of these, ALiBi with a positive Python-constant slope);
               "guarded" the gate or lam reaches the graph as tensor data whose sign the graph does
                         not fix (lam or log f passed in, ALiBi slopes in a buffer): prune only under the
                         on-device monotonicity guard;
               "none"    lam provably rises (softplus gate, c_i + c_j, flipped ALiBi, a negative
                         constant times logsigmoid): the kernel may run it, but never pruned.
may_decline  each expected site may instead be declined (with a reason) rather than rewritten; used
             where running the kernel is allowed but not required (a bias that grows toward the past,
             a sliding window the kernel may or may not support).
declined_min lower bound on len(report.declined): a softmax attention the matcher must look at and
             refuse, saying why.
mixed        the model downcasts inside (`.float()`, `dtype=torch.float32`), so fp64 runs carry fp32
             rounding and are compared with fp32-level tolerances.
training     dropout is active: outputs are random; compiled and eager are compared under one seed.
inductor     also run with the default Inductor compiler (tests select these with `-k inductor`).
rows         for key-padding masks: `rows(inputs)` is a boolean broadcast to the first output, True
             on the queries that see at least one key. Only those are compared (eager's other rows
             are NaN or an average over masked keys; the op's are finite, docs/design.md), and the
             loss is taken over those rows only, so every gradient is compared in full.

Reference hook
--------------
`reference(fn, inputs) -> Ref` recomputes what the model should output with the naive fp64
forgetting attention in tests/corpus/reference.py (called in fp64, under no_grad). `relation` says
how the eager model relates to it: "equal" (it is that operator), "differs" (a near miss that a
careless rewrite would turn into that operator: the outputs must differ), or None (not meaningful).
`Ref.lams` lists the lam of each expected site in `decay` order, to check "proven" sites really are
non-increasing and "none" sites really rise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Optional

import torch
from torch import Tensor

DECAYS = ("proven", "guarded", "none")


def _first(out: Any) -> Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


@dataclass
class Ref:
    output: Tensor
    lams: list[Tensor] = field(default_factory=list)
    # picks the tensor to compare out of the model's output (the model may return several)
    select: Callable[[Any], Tensor] = _first


@dataclass(frozen=True)
class Case:
    name: str
    build: Callable[[torch.dtype], tuple[Callable, tuple[Tensor, ...]]]
    sites: int
    decay: list[str]
    declined_min: int
    note: str
    axes: tuple[str, ...] = ()
    reference: Optional[Callable[[Callable, tuple[Tensor, ...]], Ref]] = None
    relation: Optional[str] = "equal"
    may_decline: bool = False
    mixed: bool = False
    training: bool = False
    inductor: bool = False
    rows: Optional[Callable[[tuple[Tensor, ...]], Tensor]] = None

    def __post_init__(self):
        assert len(self.decay) == self.sites, self.name
        assert all(d in DECAYS for d in self.decay), self.name
        assert self.relation in ("equal", "differs", None), self.name
        assert self.relation is None or self.reference is not None, self.name

    @property
    def positive(self) -> bool:
        """Pure forgetting attention: every site rewritten, nothing to decline."""
        return self.sites > 0 and not self.may_decline and self.declined_min == 0

    def __repr__(self) -> str:  # short ids in pytest output
        return f"Case({self.name})"


def all_cases() -> list[Case]:
    from .near_misses import NEAR_MISSES
    from .positives import POSITIVES

    cases = POSITIVES + NEAR_MISSES
    names = [c.name for c in cases]
    dup = {n for n in names if names.count(n) > 1}
    assert not dup, f"duplicate case names {dup}"
    return cases


def seed_of(name: str, salt: str = "") -> int:
    import zlib

    return zlib.crc32(f"{name}/{salt}".encode())


# ---------------------------------------------------------------------------------------------
# Shared by tests/test_corpus.py and tests/test_generated.py (the comparison itself is
# helpers.assert_compiled_matches_eager).

TOLERANCES = {
    # (dtype, mixed) -> (rtol, atol)
    (torch.float32, False): (2e-4, 1e-4),
    (torch.float32, True): (2e-4, 1e-4),
    (torch.float64, False): (1e-8, 1e-8),
    (torch.float64, True): (1e-5, 1e-5),  # the model itself rounds through fp32
}


def check_report(report: Any, *, sites: int, decay: list[str], declined_min: int, may_decline: bool,
                 what: str = "") -> None:
    """Check a foxcompile.explain report against a label (see the module docstring)."""
    from collections import Counter

    got = list(report.sites)
    declined = list(report.declined)
    for s in got:
        assert s.decay in DECAYS, f"{what}: site decay {s.decay!r}"
        assert s.prunable == (s.decay != "none"), f"{what}: prunable={s.prunable} with decay {s.decay!r}"
        assert isinstance(s.location, str) and s.location, f"{what}: site without a location"
        assert isinstance(s.kind, str), f"{what}: site kind {s.kind!r}"
    for d in declined:
        assert isinstance(d.reason, str) and d.reason.strip(), f"{what}: a decline without a reason"
        assert isinstance(d.location, str), f"{what}: decline location {d.location!r}"
    want, have = Counter(decay), Counter(s.decay for s in got)
    if may_decline:
        extra = have - want
        assert not extra, f"{what}: unexpected sites {dict(extra)} (expected at most {dict(want)})\n{report}"
        missing = sum((want - have).values())
        assert len(declined) >= declined_min + missing, (
            f"{what}: {missing} expected site(s) neither rewritten nor declined\n{report}"
        )
    else:
        assert len(got) == sites, f"{what}: {len(got)} sites rewritten, expected {sites}\n{report}"
        assert have == want, f"{what}: site decays {dict(have)}, expected {dict(want)}\n{report}"
        assert len(declined) >= declined_min, (
            f"{what}: {len(declined)} declines reported, expected at least {declined_min}\n{report}"
        )
    assert str(report).strip(), f"{what}: empty str(report)"
