"""Engines for forgetting attention: the Triton kernels where they can run (CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1), else the blockwise PyTorch reference (CPU, float64, head dims
or dtypes the kernels do not take). All skip the tiles of plan.py's rule.

Every engine is a module with the same interface (forward, backward, unsupported_reason,
max_norm; reference.py runs anything and has no unsupported_reason):

    reference          reference.py          blockwise PyTorch
    tl                 triton_attention.py   the Triton prefill kernels (forward, dq, dk/dv)
    gluon              gluon_attention.py    Hopper (sm90) forward and backward in Triton's Gluon
                                             dialect; bf16/fp16, head dims 64 and 128
    gluon-fwd          gluon_attention.py    the Gluon forward, the tl backward
    gluon-bwd          gluon_attention.py    the tl forward, the Gluon backward
    decode             decode.py             split-K decode forward for few queries (M x G <= 64
                                             by default), the tl backward

engine_for(q, k, v, doc) picks one per call: FOXCOMPILE_ENGINE (auto, or an engine's name; read
at each call, parsed by requested_engine() only) names the engine to try first, `auto` lets
_automatic() choose from the shapes and whether there are document ids; an engine that cannot
run the inputs hands them to its fallback (decode, gluon* -> tl -> reference), so a forced
engine never makes a call fail. A new engine is one more ENGINES entry (and, to be chosen
automatically, a line in _automatic).

may_prune(q, k) says whether a call of these shapes prunes at all: decoding-sized calls do not,
unless FOXCOMPILE_DECODE_PRUNING=1 (read at each call, like FOXCOMPILE_ENGINE).
"""
import os
from typing import NamedTuple, Optional

import torch

from ..contract import DECODE_ROWS
from . import decode, gluon_attention, reference, triton_attention

ENGINE_ENV = "FOXCOMPILE_ENGINE"
DECODE_PRUNING_ENV = "FOXCOMPILE_DECODE_PRUNING"

# The norm the plan's score bound is computed with (plan.make_plan's `norm`) and its start blocks
# from that bound (make_plan's `starts`): one Triton kernel each on CUDA, torch elsewhere,
# whichever engine then runs the attention.
max_norm = triton_attention.max_norm
plan_start_blocks = triton_attention.plan_start_blocks
# The op's score bound and the plan's value-checked one (plan.score_bound and
# value_checked_bound): two Triton kernels on CUDA, torch elsewhere.
score_bounds = triton_attention.score_bounds
# The lam the plan and every engine read (plan.full_lam): one Triton kernel on CUDA, else torch.
full_lam = triton_attention.full_lam


class Engine(NamedTuple):
    module: object             # forward / backward / unsupported_reason / max_norm
    fallback: Optional[str]    # tried next when unsupported_reason names a reason; None: runs all


ENGINES = {
    "reference": Engine(reference, None),
    "tl": Engine(triton_attention, "reference"),
    "gluon": Engine(gluon_attention, "tl"),
    "gluon-fwd": Engine(gluon_attention.forward_only, "tl"),
    "gluon-bwd": Engine(gluon_attention.backward_only, "tl"),
    "decode": Engine(decode, "tl"),
}


def requested_engine() -> str:
    """FOXCOMPILE_ENGINE as an engine name, or "auto" (unset, empty or "auto"); any other value
    is a ValueError naming the valid ones."""
    text = os.environ.get(ENGINE_ENV, "").strip().lower()
    if text in ("", "auto"):
        return "auto"
    if text not in ENGINES:
        raise ValueError(f"{ENGINE_ENV}={text!r}: expected auto or one of {', '.join(ENGINES)}")
    return text


def decode_pruning_requested() -> bool:
    """FOXCOMPILE_DECODE_PRUNING as a bool: "1" (or "true", "on") lets decoding-sized calls
    prune, unset, "", "0" (or "false", "off") keeps them dense; any other value is a
    ValueError."""
    text = os.environ.get(DECODE_PRUNING_ENV, "").strip().lower()
    if text in ("", "0", "false", "off"):
        return False
    if text in ("1", "true", "on"):
        return True
    raise ValueError(f"{DECODE_PRUNING_ENV}={text!r}: expected 1 (decoding steps prune) or 0")


def may_prune(q: torch.Tensor, k: torch.Tensor) -> bool:
    """Whether a call with these (B, H, T, D) queries and keys prunes: every call except a
    decoding-sized one (at most DECODE_ROWS query rows per kv head, M x G), which prunes
    only under FOXCOMPILE_DECODE_PRUNING=1. The plan of a call reads every key (the score bound)
    and every value (the finiteness check) and scans lam; for a few query rows that costs more
    than the key blocks it lets the kernel skip, so pruned decoding ran at 0.48-0.83x the speed
    of dense decoding in every measured case (H100; docs/generation.md, "Pruning while
    decoding")."""
    return decode.query_rows(q, k) > DECODE_ROWS or decode_pruning_requested()


def _automatic(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               doc: Optional[torch.Tensor] = None) -> str:
    """The engine to try first when none is requested: decode for a few query rows per kv head
    (decode.preferred: M x G <= DECODE_ROWS), else the prefill kernels: in each direction the
    Gluon kernel where it was measured faster than tl's (gluon_attention.preferred: sm90 and
    its tables of head dims and lengths, without and with document ids), tl elsewhere."""
    if decode.preferred(q, k, v):
        return "decode"
    documents = doc is not None
    gluon = (gluon_attention.preferred(q, k, v, "forward", documents),
             gluon_attention.preferred(q, k, v, "backward", documents))
    return {(True, True): "gluon", (True, False): "gluon-fwd", (False, True): "gluon-bwd",
            (False, False): "tl"}[gluon]


def engine_name(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                doc: Optional[torch.Tensor] = None) -> str:
    """The name of the engine that runs these inputs (see engine_for)."""
    name = requested_engine()
    if name == "auto":
        name = _automatic(q, k, v, doc)
    while True:
        engine = ENGINES[name]
        if engine.fallback is None or engine.module.unsupported_reason(q, k, v) is None:
            return name
        name = engine.fallback


def engine_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
               doc: Optional[torch.Tensor] = None):
    """The module (forward/backward) that runs these inputs (doc: their document ids or None):
    FOXCOMPILE_ENGINE's engine or the automatic choice, else the first of its fallbacks that
    can run them."""
    return ENGINES[engine_name(q, k, v, doc)].module
