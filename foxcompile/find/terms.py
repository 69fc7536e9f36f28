"""Softmax scores as a sum of terms: S = sum_t c_t * prod(factors_t) * leaf_t, plus masks.

The walk goes down from the softmax input through everything linear (add, sub, neg, scalar or
per-head multiply and divide, dtype casts, baddbmm's beta and alpha) and through masking
(masked_fill, where, additive 0/-inf tensors, `s[..., m] = -inf`). What it cannot look through
becomes a leaf, classified later by how it varies over the last two axes (query i, key j). Each
read is of a node as its consumer sees it: an in-place change made before the consumer (a chain,
see inplace.py) is walked as the op it is.
"""
import math
from dataclasses import dataclass, field

import torch
from torch import fx

from . import graph as g
from .inplace import InPlace, NotFollowed
from .masks import Mask, MaskReader, constant_of

# A finite mask value counts as -inf when it is at least this negative (after scaling): masked
# entries then vanish from the softmax against any realistic bias.
FINITE_MASK_LIMIT = -1e4
# ...and when a bias is added after the mask, the bias could lift a mildly negative mask value.
FINITE_MASK_LIMIT_UNDER_BIAS = -1e9


@dataclass
class Term:
    coef: float
    factors: tuple  # ((node, power), ...): tensors constant over i and j (per-head scales)
    leaf: fx.Node
    masked_by: tuple = ()  # indices of the masks applied on top of this term
    rows_sliced: bool = False  # under x[..., a:b, :]: only a key-side or query-only term can be
    broadcast: bool = False    # under an expand: a q.k product there would be shared by rows of
                               # the scores it does not belong to
    split: bool = False        # under a view of (B*H, M, N) as the (B, H, M, N) scores (Bloom)


@dataclass
class MaskUse:
    node: fx.Node
    masked: Mask | None  # positions set to (near) -inf, None when not understood
    fill: float          # the fill value as the softmax sees it (times outer coefficients)
    shape: tuple         # the shape of the masked tensor (it may broadcast into the scores)


@dataclass
class Scores:
    terms: list[Term] = field(default_factory=list)
    masks: list[MaskUse] = field(default_factory=list)
    walked: list[fx.Node] = field(default_factory=list)  # the linear/mask nodes passed through
    problem: str | None = None                            # why the scores cannot be read


def _varies(node, score_rank: int) -> tuple[bool, bool] | None:
    """Whether a tensor broadcast against the (..., i, j) scores varies along i and along j."""
    if g.number(node) is not None:
        return (False, False)
    shp = g.shape(node)
    if shp is None or len(shp) > score_rank:
        return None
    along_i = len(shp) >= 2 and shp[-2] != 1
    along_j = len(shp) >= 1 and shp[-1] != 1
    return along_i, along_j


def _alpha(node) -> float:
    """add/sub's `alpha` (the second operand's multiplier); NaN, and so a decline, if not a number."""
    alpha = g.number(node.kwargs.get("alpha", 1.0))
    return math.nan if alpha is None else alpha


def _boolean_index(index, rank: int):
    """The mask of `x[index]` when index is a boolean tensor over the last two dims
    (`x[..., m]`), over all of them (`x[m]`) or over the dims after whole leading ones
    (`x[:, :, m]`), else None."""
    parts = index if isinstance(index, tuple) else (index,)
    lead = 0  # `x[:, :, m]`: whole leading dims, then a mask over the rest
    while lead < len(parts) - 1 and parts[lead] == slice(None):
        lead += 1
    if len(parts) == 2 and parts[0] is Ellipsis:
        mask = parts[1]
        want = 2
    elif len(parts) == lead + 1:
        mask = parts[lead]
        want = rank - lead
    else:
        return None
    ok = isinstance(mask, fx.Node) and g.dtype(mask) == torch.bool and g.rank(mask) == want
    return mask if ok else None


def splits_batch(node, rank: int) -> bool:
    """node = x.view(B, H, M, N) of x (B*H, M, N): the first dim split in two, the last two kept.
    The walk follows it only onto a matrix product (Bloom's baddbmm); any other such view is a
    leaf, as before (Falcon's ALiBi `(B*H, 1, N)` viewed as `(B, H, 1, N)` is a key-side term)."""
    x = node.args[0] if node.args else None
    inner, outer = g.shape(x), g.shape(node)
    return (rank == 4 and inner is not None and outer is not None and len(inner) == 3
            and len(outer) == 4 and g.same_size(inner[1], outer[2])
            and g.same_size(inner[2], outer[3]) and g.same_size(inner[0], outer[0] * outer[1])
            and not g.same_size(outer[1], 1))


def merges_batch(node) -> bool:
    """node = p.view(B*H, M, N) of p (B, H, M, N): the first two dims merged, the last two kept."""
    x = node.args[0] if node.args else None
    inner, outer = g.shape(x), g.shape(node)
    return (g.kind(node) == "reshape" and inner is not None and outer is not None
            and len(inner) == 4 and len(outer) == 3 and g.same_size(outer[1], inner[2])
            and g.same_size(outer[2], inner[3]) and g.same_size(outer[0], inner[0] * inner[1]))


def _zero_width(node) -> bool:
    """F.pad(x, (0, 0, ...)): every width 0 (any mode and value), so x itself."""
    widths = g.arg(node, 1, "pad")
    return (isinstance(widths, (tuple, list)) and len(widths) > 0
            and all(g.number(w) == 0.0 for w in widths))


def _slices_rows_only(node) -> bool:
    """x[..., a:b, :]: the same dims, only the query rows selected (a key-side term stays one)."""
    x = node.args[0]
    rank = g.rank(x)
    dims = g.index_map(node.args[1], rank) if rank is not None and rank >= 2 else None
    if dims is None or len(dims) != rank or None in dims:
        return False
    whole = slice(None)
    return (all(d == n for n, (d, _) in enumerate(dims))
            and all(part == whole for d, part in dims if d != rank - 2))


class ScoreWalker:
    def __init__(self, score_rank: int, reader: MaskReader, inplace: InPlace):
        self.rank = score_rank
        self.reader = reader
        self.inplace = inplace
        self.out = Scores()
        self.reads: set = set()  # (node, consumer): reads made with in-place changes applied
        self._enclosing: tuple = ()
        self._rows_sliced = False
        self._broadcast = False
        self._split = False

    def _per_head(self, x) -> bool:
        varies = _varies(x, self.rank)
        return varies is not None and not any(varies)

    def walk(self, node, at, coef: float = 1.0, factors: tuple = ()) -> None:
        """Add the terms and masks of `node` as read by its consumer `at`."""
        if isinstance(node, fx.Node):
            self.reads.add((node, at))
            try:
                changed = self.inplace.latest(node, at)
            except NotFollowed as why:
                self.out.problem = str(why)
                return None
            node = node if changed is None else changed
        k = g.kind(node)
        if k == "identity" or k == "cast" and g.floating(node):  # not to int: that rounds
            self._through(node)
            return self.walk(node.args[0], node, coef, factors)
        if k in ("add", "sub", "mul", "div") and not factors and self._two_valued(node, None, coef):
            return None   # `(1 - tril(ones(T, T))) * -1e9`: a mask, not a sum of terms
        if k == "add":
            self._through(node)
            self._operand(node.args[0], node, coef, factors)
            self._operand(node.args[1], node, coef * _alpha(node), factors)
            return None
        if k == "sub":
            self._through(node)
            self._operand(node.args[0], node, coef, factors)
            self._operand(node.args[1], node, -coef * _alpha(node), factors)
            return None
        if k == "neg":
            self._through(node)
            return self.walk(node.args[0], node, -coef, factors)
        if k == "mul" or k == "div" and g.arg(node, 2, "rounding_mode") is None:
            return self._product(node, k, coef, factors)
        if k == "masked_fill":
            return self._masked_fill(node, coef, factors)
        if k == "where":
            return self._where(node, coef, factors)
        if k == "setitem":
            return self._setitem(node, coef, factors)
        if k == "getitem" and _slices_rows_only(node):
            self._through(node)
            outer, self._rows_sliced = self._rows_sliced, True
            self.walk(node.args[0], node, coef, factors)
            self._rows_sliced = outer
            return None
        if k == "pad" and _zero_width(node):
            self._through(node)
            return self.walk(node.args[0], node, coef, factors)
        if (k == "reshape" and not self._split and splits_batch(node, self.rank)
                and g.kind(node.args[0]) in ("baddbmm", "matmul")):
            self._through(node)  # (B*H, M, N) viewed as (B, H, M, N): Bloom's baddbmm scores
            self._split = True
            self.walk(node.args[0], node, coef, factors)
            self._split = False
            return None
        if k == "expand":  # x.expand(...) + s is x + s: broadcasting does the same
            self._through(node)
            outer, self._broadcast = self._broadcast, True
            self.walk(node.args[0], node, coef, factors)
            self._broadcast = outer
            return None
        if k == "baddbmm":
            beta = g.number(g.arg(node, 3, "beta", 1.0))
            alpha = g.number(g.arg(node, 4, "alpha", 1.0))
            if beta is None or alpha is None:
                return self._leaf(node, coef, factors)
            self.out.terms.append(Term(coef * alpha, factors, node, self._enclosing,
                                       self._rows_sliced, self._broadcast, self._split))
            if beta != 0.0:
                self._operand(g.arg(node, 0, "input"), node, coef * beta, factors)
            return None
        return self._leaf(node, coef, factors)

    def _through(self, node) -> None:
        self.out.walked.append(node)

    def _operand(self, x, at, coef, factors):
        shift = None if self._changed(x, at) else g.constant(x)
        if shift is None:
            return self.walk(x, at, coef, factors)
        return self._shift(shift, coef)

    def _changed(self, x, at) -> bool:
        """Whether `at` reads x after an in-place change of it (walk applies the change, or says
        why it cannot): `m = torch.empty(T, T).fill_(-inf); m.triu_(1)` is no constant."""
        if not isinstance(x, fx.Node):
            return False
        try:
            return self.inplace.latest(x, at) is not None
        except NotFollowed:
            return True

    def _shift(self, shift: float, coef: float) -> None:
        """A constant added to every score."""
        if not math.isfinite(shift * coef):
            self.out.problem = f"adds the constant {shift * coef:g} to every score"
        elif abs(shift * coef) >= -FINITE_MASK_LIMIT:  # (1 - m) * finfo.min = finfo.min - ...
            self.out.problem = (f"adds the constant {shift * coef:g} to every score: a mask "
                                "written as arithmetic, such as (1 - m) * finfo.min, where the "
                                "rest would be lost in the rounding; mask with masked_fill or "
                                "where instead")
        return None  # a moderate constant shift: softmax ignores it

    def _product(self, node, k, coef, factors):
        a, b = node.args[0], node.args[1]
        for tensor, scale, power in ((a, b, 1), (b, a, 1)) if k == "mul" else ((a, b, -1),):
            num = g.number(scale)
            if num is not None and (power == 1 or num != 0.0):
                self._through(node)
                return self.walk(tensor, node, coef * (num if power == 1 else 1.0 / num), factors)
            if num is None and self._per_head(scale) and not self._per_head(tensor):
                self._through(node)
                return self.walk(tensor, node, coef, factors + ((scale, power),))
        return self._leaf(node, coef, factors)

    def _mask(self, node, masked: Mask | None, fill: float | None, coef: float, inner) -> None:
        if self._rows_sliced:
            self.out.problem = f"a mask at {g.location(node)} inside a slice of the score rows"
            return None
        if self._split:
            self.out.problem = (f"a mask at {g.location(node)} on the (B*H, M, N) scores before "
                                "their view as (B, H, M, N): not followed")
            return None
        self._through(node)
        fill = fill * coef if fill is not None else math.nan
        shape = g.shape(node) if g.is_tensor(node) else g.shape(inner)  # setitem returns None
        self.out.masks.append(MaskUse(node, masked, fill, shape))
        outer = self._enclosing
        self._enclosing = outer + (len(self.out.masks) - 1,)
        self._operand(inner, node, coef, ())  # a constant inner (zeros.masked_fill) shifts nothing
        self._enclosing = outer

    def _two_valued(self, node, fill, coef) -> bool:
        """Read node whole when it is a tensor of two values built from constants and masks alone
        (MaskReader.levels) and its fill, if it has one, masks nothing (the old PyTorch
        tutorial's mask ends with `.masked_fill(m == 1, 0.0)`): a constant shift when its values
        agree, a mask where one of them, times coef, is 0 (the other is then the fill, as the
        softmax sees it: `s - 1e9 * (1 - tril(ones))` too), else a leaf. False, reading
        nothing, otherwise."""
        if fill is not None and fill * coef <= FINITE_MASK_LIMIT:   # a mask of its input
            return False
        found = self.reader.levels(node)
        if found is None:
            return False
        value = constant_of(found)
        if value is not None:
            self._through(node)
            self._shift(value, coef)
            return True
        held, on, off = found
        if on * coef == 0.0 or off * coef == 0.0:
            masked, fill = (held.negate(), off) if on * coef == 0.0 else (held, on)
            self.reader.notes.append(f"{g.name(node)} read as a mask (0 and {fill * coef:g}) "
                                     "from how it was built")
            self._mask(node, masked, fill, coef, 0.0)
        else:
            self._through(node)
            self._leaf(node, coef, ())
        return True

    def _masked_fill(self, node, coef, factors):
        if factors:
            return self._leaf(node, coef, factors)
        fill = g.constant(g.arg(node, 2, "value"))   # a number, or a 0-d torch.tensor(number)
        if self._two_valued(node, fill, coef):
            return None
        return self._mask(node, self.reader.truth_on(node.args[1], node), fill, coef, node.args[0])

    def _where(self, node, coef, factors):
        cond, a, b = node.args[0], node.args[1], node.args[2]
        if factors:
            return self._leaf(node, coef, factors)
        fill_a, fill_b = g.constant(a), g.constant(b)
        one_fill = fill_a if fill_b is None else fill_b
        if (fill_a is None) != (fill_b is None) and self._two_valued(node, one_fill, coef):
            return None
        if fill_b is not None and fill_a is None:
            keep = self.reader.truth_on(cond, node)
            return self._mask(node, None if keep is None else keep.negate(), fill_b, coef, a)
        if fill_a is not None and fill_b is None:
            return self._mask(node, self.reader.truth_on(cond, node), fill_a, coef, b)
        return self._leaf(node, coef, factors)

    def _setitem(self, node, coef, factors):
        """`s[..., m] = v` (Dynamo's operator.setitem): masked_fill(s, m, v)."""
        base, index, fill = node.args
        mask = _boolean_index(index, g.rank(base) or 0)
        value = g.constant(fill)  # a number, or a constant tensor: torch.tensor(-inf)
        if factors or mask is None or value is None or (g.is_tensor(fill) and g.rank(fill) != 0):
            self.out.problem = (f"index assignment at {g.location(node)} is not a boolean mask "
                                "filled with a number")
            return None
        return self._mask(node, self.reader.truth_on(mask, base), value, coef, base)

    def _leaf(self, node, coef, factors):
        self.out.terms.append(Term(coef, factors, node, self._enclosing, self._rows_sliced,
                                   self._broadcast, self._split))
        return None
