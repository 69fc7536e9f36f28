"""Which (i, j) positions a mask removes, proved from how the mask was built.

A boolean tensor over the last two dims (rows r, columns c) is described by a predicate on the
diagonal offset d = c - r: `Band("le", e)` holds where d <= e, `Band("ge", e)` where d >= e, with e
a sympy expression in the graph's symbolic sizes; ALL and NONE for constant masks. That covers
tril/triu (with diagonals), arange comparisons, negation, slicing (which shifts d), and registered
buffers, whose values are checked at compile time. Anything else is None: not understood.

A causal mask for M queries at the end of N keys removes exactly d >= P + 1, P = N - M.
"""
from dataclasses import dataclass

import sympy
import torch

from . import graph as g


@dataclass(frozen=True)
class Band:
    side: str          # "le", "ge", "all" or "none"
    bound: sympy.Expr = sympy.Integer(0)

    def negate(self) -> "Band":
        if self.side == "all":
            return NONE
        if self.side == "none":
            return ALL
        if self.side == "le":
            return Band("ge", self.bound + 1)
        return Band("le", self.bound - 1)

    def shift(self, offset) -> "Band":
        """The predicate in coordinates where d_new = d_old - offset."""
        if self.side in ("all", "none"):
            return self
        return Band(self.side, sympy.simplify(self.bound - offset))

    def equals(self, other: "Band") -> bool:
        return self.side == other.side and sympy.simplify(self.bound - other.bound) == 0


ALL = Band("all")
NONE = Band("none")


def both(a: Band | None, b: Band | None) -> Band | None:
    """Logical and."""
    if a is None or b is None:
        return None
    if a.side == "all":
        return b
    if b.side == "all":
        return a
    if "none" in (a.side, b.side):
        return NONE
    if a.side == b.side and a.equals(b):
        return a
    if a.side == b.side:
        diff = sympy.simplify(a.bound - b.bound)
        if diff.is_number:
            smaller = a if diff < 0 else b
            return smaller if a.side == "le" else (b if smaller is a else a)
    return None  # a band (sliding window) or unknown order


def either(a: Band | None, b: Band | None) -> Band | None:
    """Logical or."""
    if a is None or b is None:
        return None
    neither = both(a.negate(), b.negate())
    return None if neither is None else neither.negate()


def _last_two(shape) -> tuple:
    shape = tuple(shape or ())
    return (1,) * (2 - len(shape)) + shape[-2:]


def lift(band: Band | None, source, target) -> Band | None:
    """A band read on a tensor of shape `source`, as it falls on the shape `target` it is
    broadcast to. Unchanged when their last two dims agree; a tensor broadcast along a size-1 row
    or column dim is a function of one index, so its diagonal band does not carry over (None),
    while everywhere / nowhere does."""
    if band is None or band.side in ("all", "none"):
        return band
    a, b = _last_two(source), _last_two(target)
    return band if all(g.same_size(x, y) for x, y in zip(a, b)) else None


def _within(band: Band, n_queries, n_keys) -> Band:
    """The band as it falls on the scores: d = j - i runs over -(M - 1) .. N - 1, so a band
    beyond either end removes nothing or everything (when sympy can tell)."""
    if band.side in ("all", "none"):
        return band
    low, high = 1 - g.sym(n_queries), g.sym(n_keys) - 1
    if band.side == "ge":
        empty, full = (band.bound - high).is_positive, (band.bound - low).is_nonpositive
    else:
        empty, full = (low - band.bound).is_positive, (band.bound - high).is_nonnegative
    return NONE if empty else (ALL if full else band)


def same_on(a: Band, b: Band, n_queries, n_keys) -> bool:
    """Whether two bands remove the same positions of an M x N score matrix."""
    return _within(a, n_queries, n_keys).equals(_within(b, n_queries, n_keys))


def causal(n_queries, n_keys) -> Band:
    """The positions a causal mask removes: d >= N - M + 1."""
    return Band("ge", sympy.simplify(g.sym(n_keys) - g.sym(n_queries) + 1))


def _buffer_band(tensor: torch.Tensor, truth) -> Band | None:
    """Read a constant 2-D mask buffer: is truth(tensor) exactly one side of a diagonal?"""
    if tensor.dim() < 2 or any(s != 1 for s in tensor.shape[:-2]):
        return None
    held = truth(tensor.reshape(tensor.shape[-2:])).cpu()
    rows = torch.arange(held.shape[0])[:, None]
    cols = torch.arange(held.shape[1])[None, :]
    diag = cols - rows
    if bool(held.all()):
        return ALL
    if not bool(held.any()):
        return NONE
    upper, lower = int(diag[held].max()), int(diag[held].min())
    if torch.equal(held, diag <= upper):
        return Band("le", sympy.Integer(upper))
    if torch.equal(held, diag >= lower):
        return Band("ge", sympy.Integer(lower))
    return None


class MaskReader:
    """Reads boolean masks (and 0/-inf additive masks) built in a graph. `constants` maps
    placeholder nodes of buffers to their real values, when the backend has them."""

    def __init__(self, constants: dict | None = None):
        self.constants = constants or {}
        self.notes: list[str] = []

    def truth(self, node) -> Band | None:
        """Where a boolean (or 0/1) tensor is true."""
        if isinstance(node, bool):
            return ALL if node else NONE
        k = g.kind(node)
        if k in ("ones", "ones_like"):
            return ALL
        if k in ("zeros", "zeros_like"):
            return NONE
        if k == "full":
            fill = g.number(g.arg(node, 1, "fill_value"))
            if fill is None and isinstance(g.arg(node, 1, "fill_value"), bool):
                fill = float(g.arg(node, 1, "fill_value"))
            return None if fill is None else (ALL if fill else NONE)
        if k in ("tril", "triu"):
            diagonal = g.arg(node, 1, "diagonal", 0)
            inner = self.truth(node.args[0])
            side = Band("le" if k == "tril" else "ge", g.sym(diagonal))
            return both(inner, side)
        if k == "invert":
            inner = self.truth(node.args[0])
            return None if inner is None else inner.negate()
        if k in ("bool", "cast", "identity"):
            return self.truth(node.args[0])
        if k == "expand":
            return self._lifted(self.truth, node.args[0], node)
        if k in ("eq", "ne") and g.number(node.args[1]) == 0.0:
            inner = self.truth(node.args[0])
            return None if inner is None else (inner.negate() if k == "eq" else inner)
        if k in ("eq", "gt", "ge", "lt", "le", "ne"):
            return self._compare(k, node.args[0], node.args[1])
        if k in ("and", "or"):
            a, b = (self._lifted(self.truth, x, node) for x in node.args[:2])
            return both(a, b) if k == "and" else either(a, b)
        if k == "getitem":
            return self._sliced(node, self.truth)
        if k == "unsqueeze" and g.normalize_dim(node.args[1], g.rank(node)) < g.rank(node) - 2:
            return self.truth(node.args[0])
        if k == "placeholder" and node in self.constants:
            band = _buffer_band(self.constants[node], lambda t: t.bool())
            if band is not None:
                self.notes.append(f"mask buffer {node.name} checked by value at compile time")
            return band
        return None

    def negative_infinity(self, node, threshold: float) -> Band | None:
        """Where an additive mask holds a value <= threshold (and 0 elsewhere)."""
        k = g.kind(node)
        if k in ("tril", "triu"):
            fill = g.constant(node.args[0])
            if fill is None or fill > threshold:
                return None
            diagonal = g.arg(node, 1, "diagonal", 0)
            return Band("le" if k == "tril" else "ge", g.sym(diagonal))
        if k == "masked_fill":
            base, fill = node.args[0], g.number(node.args[2])
            if g.constant(base) == 0.0 and fill is not None and fill <= threshold:
                return self._lifted(self.truth, node.args[1], node)
            return None
        if k == "where":
            a, b = g.constant(node.args[1]), g.constant(node.args[2])
            cond = self._lifted(self.truth, node.args[0], node)
            if cond is None:
                return None
            if a == 0.0 and b is not None and b <= threshold:
                return cond.negate()
            if b == 0.0 and a is not None and a <= threshold:
                return cond
            return None
        if k in ("cast", "identity"):
            return self.negative_infinity(node.args[0], threshold)
        if k == "expand":
            return self._lifted(lambda x: self.negative_infinity(x, threshold), node.args[0], node)
        if k == "getitem":
            return self._sliced(node, lambda n: self.negative_infinity(n, threshold))
        if k == "unsqueeze" and g.normalize_dim(node.args[1], g.rank(node)) < g.rank(node) - 2:
            return self.negative_infinity(node.args[0], threshold)
        if k == "placeholder" and node in self.constants:
            t = self.constants[node]
            if not t.is_floating_point():
                return None
            zero_or_masked = ((t == 0) | (t <= threshold)).all()
            band = _buffer_band(t, lambda x: x <= threshold) if bool(zero_or_masked) else None
            if band is not None:
                self.notes.append(f"additive mask buffer {node.name} checked by value at compile time")
            return band
        return None

    def truth_on(self, mask, target) -> Band | None:
        """Where `mask` is true, as it falls on the tensor `target` it masks."""
        return self._lifted(self.truth, mask, target)

    @staticmethod
    def _lifted(read, x, into) -> Band | None:
        return lift(read(x), g.shape(x), g.shape(into))

    def _sliced(self, node, read) -> Band | None:
        """x[..., a:, b:] (leading dims indexed or new axes added at will): d shifts by b - a."""
        base, index = node.args
        band = read(base)
        if band is None:
            return None
        base_shape = g.shape(base)
        if base_shape is None or len(base_shape) < 2:
            return None
        starts = _last_two_starts(index, base_shape)
        if starts is None:
            return None
        row_start, col_start = starts
        return band.shift(-(col_start - row_start))

    def _compare(self, op: str, a, b) -> Band | None:
        """Comparisons of row and column index tensors: a OP b over (r, c)."""
        fa, fb = _index_form(a), _index_form(b)
        if fa is None or fb is None:
            return None
        # (alpha_r * r + alpha_c * c + gamma)  OP  0
        ar, ac, ga = (x - y for x, y in zip(fa, fb))
        if sympy.simplify(ar + ac) != 0 or ac == 0:
            return None
        # ac * (c - r) + ga OP 0  ->  d OP' -ga / ac
        if not ac.is_number:
            return None
        flip = ac < 0
        bound = sympy.simplify(-ga / ac)
        if not bound.is_integer and bound.is_number:
            return None
        ops = {"ge": ("ge", 0), "gt": ("ge", 1), "le": ("le", 0), "lt": ("le", -1)}
        if op not in ops:
            return None
        side, step = ops[op]
        if flip:
            side, step = ("le", -step) if side == "ge" else ("ge", -step)
        return Band(side, sympy.simplify(bound + step))


def _last_two_starts(index, shape: tuple):
    """Start offsets of a basic index along the last two dims, when it keeps them as the last two
    dims with unit steps; else None."""
    dims = g.index_map(index, len(shape))
    if dims is None or len(dims) < 2 or None in dims[-2:]:
        return None
    rank = len(shape)
    if [d for d, _ in dims[-2:]] != [rank - 2, rank - 1]:
        return None
    starts = []
    for (dim, part) in dims[-2:]:
        if part.step not in (None, 1):
            return None
        start = g.value(part.start) if part.start is not None else 0
        if isinstance(start, int) and start < 0:
            start = g.sym(shape[dim]) + start
        starts.append(start if isinstance(start, sympy.Expr) else g.sym(start))
    return starts


def _index_form(node):
    """arange(...) broadcast as a row (r) or column (c) index: (alpha_r, alpha_c, gamma) meaning
    alpha_r * r + alpha_c * c + gamma, or None."""
    if g.number(node) is not None or isinstance(node, torch.SymInt):
        return (sympy.Integer(0), sympy.Integer(0), g.sym(node) if isinstance(node, torch.SymInt)
                else sympy.nsimplify(g.number(node)))
    k = g.kind(node)
    if k in ("add", "sub"):
        fa, fb = _index_form(node.args[0]), _index_form(node.args[1])
        if fa is None or fb is None:
            return None
        sign = 1 if k == "add" else -1
        return tuple(x + sign * y for x, y in zip(fa, fb))
    if k == "getitem" or k in ("unsqueeze", "reshape"):
        axis = _arange_axis(node)
        if axis is None:
            return None
        base = _arange_of(node)
        start = g.sym(g.arg(base, 0)) if len(base.args) > 1 else sympy.Integer(0)
        one, zero = sympy.Integer(1), sympy.Integer(0)
        return (one, zero, start) if axis == "row" else (zero, one, start)
    return None


def _arange_of(node):
    while g.kind(node) in ("getitem", "unsqueeze", "reshape", "cast"):
        node = node.args[0]
    return node if g.kind(node) == "arange" and g.arg(node, 2, "step", 1) == 1 else None


def _arange_axis(node) -> str | None:
    """Whether a broadcast arange varies along the rows or the columns of the last two dims."""
    if _arange_of(node) is None:
        return None
    shape = g.shape(node)
    if shape is None or len(shape) < 2:
        return None
    if shape[-1] == 1 and shape[-2] != 1:
        return "row"
    if shape[-2] == 1 and shape[-1] != 1:
        return "col"
    return None
