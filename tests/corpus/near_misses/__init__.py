"""Things that look like forgetting attention but are not (or are, but must not be pruned).

None of these may be rewritten as prunable FoX, and the compiled model must still equal eager. The
reference hooks return the forgetting attention a careless rewrite would produce from the same
q / k / v / lam ("differs": eager must not equal it), or, where the model really is that operator
but must be declined or left unpruned for another reason, the operator itself ("equal").

One module per family, each a list `CASES`; in it, every model is followed by its labels,
`CASES.append(_nm(...))`. common.py holds the input makers, the (fn, inputs) builders, the plain
reference hooks and `_nm`.

    other_operators  retention, SSD, mLSTM, stick-breaking, selective, contextual, sigmoid attention
    bias             a decay multiplied in, per-row or clamped biases, sinks, memory, no bias at all
    masks            no causal mask, softmax over queries, a sliding window, the diagonal excluded
    rising           lam rises: "none" sites, never pruned
    outputs          probabilities or scores used outside the site, dropout in training
    documents        document masks that are not the packed-sequence mask
    padding          padding masks that are not key masks
    library          near misses of the rules for third-party code (tests/realworld)
"""

from __future__ import annotations

import pkgutil

from . import bias, documents, library, masks, other_operators, outputs, padding, rising

FAMILIES = (other_operators, bias, masks, rising, outputs, documents, padding, library)

_listed = {family.__name__.rsplit(".", 1)[-1] for family in FAMILIES}
_found = {module.name for module in pkgutil.iter_modules(__path__)} - {"common"}
assert _listed == _found, f"near_misses: modules {_found - _listed} are not in FAMILIES"

NEAR_MISSES = [case for family in FAMILIES for case in family.CASES]
