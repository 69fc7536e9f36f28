"""Piecewise-linear distances: ALiBi written as `-slope * abs(j - i)`, `(i - j).clamp_min(0)` or
`relu(i - j)`.

Such a leaf is f(x) with x = a * (j - i) + b an index expression (arange vectors along the rows and
the columns, masks.py) and f one of abs, max(x, 0) (relu, clamp_min(0), clamp(min=0)) and
min(x, 0) (clamp_max(0), clamp(max=0)). It is not linear in (i, j), but on the positions a causal
mask leaves visible, d = j - i from -(M - 1) to P = N - M, x has one sign when it does at both
ends (sympy decides, sizes may be symbols), and there f(x) is x, -x or 0: a key-side term
(the column vectors of x) plus a query-only one (dropped). The matcher applies this only after
it has proven the site's masks causal, and declines when x changes sign on the visible region.
"""
from dataclasses import dataclass

import sympy

from . import graph as g
from .masks import _index_form, _is_offset, _position_vector


@dataclass
class Piecewise:
    shape: str       # "abs", "max0" or "min0"
    slope: sympy.Expr   # x = slope * (j - i) + shift
    shift: sympy.Expr
    columns: list    # (sign, node): the column vectors whose signed sum is slope * j + const


def _shape(leaf) -> tuple[str, object] | None:
    """(f, x) for f(x) among the forms read here."""
    k = g.kind(leaf)
    if k == "abs":
        return "abs", leaf.args[0]
    if k == "relu":
        return "max0", leaf.args[0]
    if k in ("clamp_min", "clamp_max") and g.number(g.arg(leaf, 1, "min" if k == "clamp_min" else "max")) == 0.0:
        return ("max0" if k == "clamp_min" else "min0"), leaf.args[0]
    if k == "clamp":
        low, high = g.arg(leaf, 1, "min"), g.arg(leaf, 2, "max")
        if high is None and g.number(low) == 0.0:
            return "max0", leaf.args[0]
        if low is None and g.number(high) == 0.0:
            return "min0", leaf.args[0]
    return None


def _columns(node, sign: int):
    """The column position vectors of an index expression, with their signs; None when the
    expression is not a signed sum of position vectors and numbers."""
    if _is_offset(node):
        return []
    found = _position_vector(node)
    if found is not None:
        return [(sign, node)] if found[0] == "col" else []  # rows and single positions: no j
    k = g.kind(node)
    if k in ("add", "sub") and g.number(node.kwargs.get("alpha", 1)) == 1.0:
        a, b = _columns(node.args[0], sign), _columns(node.args[1], sign if k == "add" else -sign)
        return None if a is None or b is None else a + b
    if k == "neg":
        return _columns(node.args[0], -sign)
    return None


def read(leaf) -> Piecewise | None:
    found = _shape(leaf)
    if found is None:
        return None
    shape, x = found
    form = _index_form(x)
    if form is None:
        return None
    along_rows, along_cols, shift = form
    if sympy.simplify(along_rows + along_cols) != 0 or along_cols == 0 or not along_cols.is_number:
        return None  # not a function of j - i alone
    columns = _columns(x, 1)
    if not columns or sympy.simplify(sum(s for s, _ in columns) - along_cols) != 0:
        return None
    return Piecewise(shape, along_cols, shift, columns)


def multiplier(pw: Piecewise, low, high) -> int | None:
    """f(x) = m * x for every d in [low, high]: m (1, -1 or 0), or None when x changes sign there
    (or sympy cannot tell)."""
    ends = [sympy.simplify(pw.slope * d + pw.shift) for d in (low, high)]
    nonneg = all(e.is_nonnegative for e in ends)
    nonpos = all(e.is_nonpositive for e in ends)
    if pw.shape == "abs":
        return 1 if nonneg else (-1 if nonpos else None)
    if pw.shape == "max0":
        return 1 if nonneg else (0 if nonpos else None)
    return 1 if nonpos else (0 if nonneg else None)  # min0
