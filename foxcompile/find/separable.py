"""T x T leaves that are separable after all: copies of a vector, and Mamba-2's segment sum.

A leaf with both score axes (query i, key j) in its shape may still vary along one only: a vector
repeated or expanded along the other axis, perhaps transposed (`rows - rows.mT`). `constant_along`
finds the vector in the graph. `segsum` recognises a cumulative sum over the query axis that equals
c_i - c_j on and below the diagonal, with c the cumsum of a vector, and sympy proves it.
"""
import sympy

from . import graph as g, views
from .masks import Band, MaskReader


_BROADCASTS = ("expand", "identity", "repeat")


def _source(node, axis: int) -> int | None:
    """The axis (-2 or -1) of node.args[0] that `axis` of node reads, when node keeps the input's
    other dims in place: a transpose of the last two dims (the other axis), or an expand, a copy
    or a repeat that only broadcasts (the same axis). None for any other node, and for
    transpose's keyword form (dim0=, dim1=), which this never followed."""
    k = g.kind(node)
    dims = views.sources(node) if k in views.PERMUTES or k in _BROADCASTS else None
    if dims is None or k == "transpose" and len(node.args) < 3:
        return None
    rank = len(dims)
    if k in views.PERMUTES and dims == [*range(rank - 2), rank - 1, rank - 2]:
        return -3 - axis
    if k in _BROADCASTS and views.MERGED not in dims:
        return axis
    return None


def constant_along(node, axis: int):
    """For a tensor broadcast against the (..., i, j) scores and constant along `axis` (-2 or -1):
    (src, pick), an existing node src of size 1 along its dim `pick`, such that src.select(pick, 0)
    (src aligned to the scores from the right) is the tensor along the other axis. None when the
    graph does not show the tensor constant along `axis`."""
    shp = g.shape(node)
    if shp is None:
        return None
    if len(shp) < -axis or shp[axis] == 1:
        return node, axis
    source = _source(node, axis)
    return None if source is None else constant_along(node.args[0], source)


def _cumulative_identity(keep_bound) -> bool:
    """sum_{l <= i, j - l <= e} x_l = c_i - c_j for every 0 <= j <= i, with c_k = sum_{l <= k} x_l:
    for e <= 0 the kept l run from j - e >= 0 to i (an empty run, sum 0, when i = j - e - 1), so
    the identity holds for all j <= i when e + 1 >= 0 and the two sums agree."""
    e = sympy.sympify(keep_bound)
    if not (e.is_nonpositive and (e + 1).is_nonnegative):
        return False
    i, j, l = sympy.symbols("i j l", integer=True, nonnegative=True)
    x = sympy.IndexedBase("x")
    def c(k):
        return sympy.Sum(x[l], (l, 0, k))
    return sympy.simplify(sympy.Sum(x[l], (l, j - e, i)) - (c(i) - c(j))) == 0


def segsum(leaf, reader: MaskReader):
    """Mamba-2's segsum: cumsum over the query axis of masked_fill(R, ~keep, 0), where R[l, j] = x_l
    is constant along the key axis and keep holds where j - l <= -1. On and below the diagonal it
    is c_i - c_j with c = cumsum(x); above it it is 0, so a causal mask must hide that part (the
    matcher checks the masks separately). Returns (src, pick) of x, as constant_along does, or None.
    The caller makes sure the scores are square (the row l of R is key position l)."""
    rank = g.rank(leaf)
    if (g.kind(leaf) != "cumsum" or rank is None or rank < 2 or g.arg(leaf, 2, "dtype") is not None
            or g.normalize_dim(g.arg(leaf, 1, "dim"), rank) != rank - 2):
        return None
    filled = leaf.args[0]
    if g.kind(filled) != "masked_fill" or g.number(g.arg(filled, 2, "value")) != 0.0:
        return None
    zeroed = reader.truth_on(filled.args[1], filled)
    keep = None if zeroed is None else zeroed.negate()
    if not isinstance(keep, Band) or keep.side != "le" or not _cumulative_identity(keep.bound):
        return None
    return constant_along(filled.args[0], -1)
