"""Forgetting attention written the way different codebases write it. Every case must be rewritten.

One module per family, each a list `CASES`; in it, every model is followed by its reference hook
and its labels, `CASES.append(_case(...))`. common.py holds the input makers, the reference hooks
that several families share, and `_case`.

    layouts    (B, T, H, D) / (B, H, T, D) / flattened heads; @, matmul, bmm, baddbmm, einsum; scales
    gqa        grouped- and multi-query attention
    decoding   decoding, chunked prefill, loops over query chunks and segments
    bias       ALiBi, rows minus their transpose, cat(zeros, cumsum), segsum
    sdpa       F.scaled_dot_product_attention with a float mask
    softmax    softmax by hand, exp2, float32 round trip, NaN repair
    masks      in-place, index-assigned, finite and buffered causal masks
    gates      lam or log f handed in, gate modules, constant and per-head decays, the guard
    blocks     checkpointing, dropout in eval, two layers, the Pro block, a bound forward
    documents  packed sequences
    padding    left padding (key masks)
"""

from __future__ import annotations

import pkgutil

from . import bias, blocks, decoding, documents, gates, gqa, layouts, masks, padding, sdpa, softmax

FAMILIES = (layouts, gqa, decoding, bias, sdpa, softmax, masks, gates, blocks, documents, padding)

_listed = {family.__name__.rsplit(".", 1)[-1] for family in FAMILIES}
_found = {module.name for module in pkgutil.iter_modules(__path__)} - {"common"}
assert _listed == _found, f"positives: modules {_found - _listed} are not in FAMILIES"

POSITIVES = [case for family in FAMILIES for case in family.CASES]
