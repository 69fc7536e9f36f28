"""Softmax scores as a sum of terms: S = sum_t c_t * prod(factors_t) * leaf_t, plus masks.

The walk goes down from the softmax input through everything linear (add, sub, neg, scalar or
per-head multiply and divide, dtype casts, baddbmm's beta and alpha) and through masking
(masked_fill, where, additive 0/-inf tensors). What it cannot look through becomes a leaf. Each
leaf is then classified by how it varies over the last two axes (query i, key j): the QK product,
query-only (softmax ignores it), key-only (the gate), or joint (not separable).
"""
from dataclasses import dataclass, field

from torch import fx

from . import graph as g
from .masks import Band, MaskReader

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


@dataclass
class MaskUse:
    node: fx.Node
    masked: Band | None  # positions set to (near) -inf, None when not understood
    fill: float          # the fill value as the softmax sees it (times outer coefficients)


@dataclass
class Scores:
    terms: list[Term] = field(default_factory=list)
    masks: list[MaskUse] = field(default_factory=list)
    walked: list[fx.Node] = field(default_factory=list)  # the linear/mask nodes passed through
    problem: str | None = None


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


class ScoreWalker:
    def __init__(self, score_rank: int, reader: MaskReader):
        self.rank = score_rank
        self.reader = reader
        self.out = Scores()
        self._enclosing: tuple = ()

    def _per_head(self, x) -> bool:
        varies = _varies(x, self.rank)
        return varies is not None and not any(varies)

    def walk(self, node, coef: float = 1.0, factors: tuple = ()) -> None:
        k = g.kind(node)
        if k in ("cast", "identity") and isinstance(node, fx.Node):
            self._through(node)
            return self.walk(node.args[0], coef, factors)
        if k == "add":
            alpha = g.number(node.kwargs.get("alpha", 1.0))
            self._through(node)
            self._operand(node.args[0], coef, factors)
            self._operand(node.args[1], coef * (alpha if alpha is not None else float("nan")), factors)
            return None
        if k == "sub":
            self._through(node)
            self._operand(node.args[0], coef, factors)
            self._operand(node.args[1], -coef, factors)
            return None
        if k == "neg":
            self._through(node)
            return self.walk(node.args[0], -coef, factors)
        if k in ("mul", "div"):
            return self._product(node, k, coef, factors)
        if k == "masked_fill":
            return self._masked_fill(node, coef, factors)
        if k == "where":
            return self._where(node, coef, factors)
        if k == "baddbmm":
            beta = g.number(g.arg(node, 3, "beta", 1.0))
            alpha = g.number(g.arg(node, 4, "alpha", 1.0))
            if beta is None or alpha is None:
                return self._leaf(node, coef, factors)
            self.out.terms.append(Term(coef * alpha, factors, node, self._enclosing))
            if beta != 0.0:
                self._operand(node.args[0], coef * beta, factors)
            return None
        return self._leaf(node, coef, factors)

    def _through(self, node) -> None:
        self.out.walked.append(node)

    def _operand(self, x, coef, factors):
        if g.number(x) is not None:
            return None  # a constant shift: softmax ignores it
        return self.walk(x, coef, factors)

    def _product(self, node, k, coef, factors):
        a, b = node.args[0], node.args[1]
        for tensor, scale, power in ((a, b, 1), (b, a, 1)) if k == "mul" else ((a, b, -1),):
            num = g.number(scale)
            if num is not None:
                if num == 0.0:
                    return None
                self._through(node)
                return self.walk(tensor, coef * (num if power == 1 else 1.0 / num), factors)
            if self._per_head(scale) and not self._per_head(tensor):
                self._through(node)
                return self.walk(tensor, coef, factors + ((scale, power),))
        return self._leaf(node, coef, factors)

    def _mask(self, node, masked: Band | None, fill: float | None, coef: float, inner) -> None:
        self._through(node)
        self.out.masks.append(MaskUse(node, masked, fill * coef if fill is not None else float("nan")))
        outer = self._enclosing
        self._enclosing = outer + (len(self.out.masks) - 1,)
        self.walk(inner, coef, ())
        self._enclosing = outer

    def _masked_fill(self, node, coef, factors):
        if factors:
            return self._leaf(node, coef, factors)
        fill = g.number(g.arg(node, 2, "value"))
        return self._mask(node, self.reader.truth(node.args[1]), fill, coef, node.args[0])

    def _where(self, node, coef, factors):
        cond, a, b = node.args[0], node.args[1], node.args[2]
        if factors:
            return self._leaf(node, coef, factors)
        if g.number(b) is not None and g.number(a) is None:
            keep = self.reader.truth(cond)
            return self._mask(node, None if keep is None else keep.negate(), g.number(b), coef, a)
        if g.number(a) is not None and g.number(b) is None:
            return self._mask(node, self.reader.truth(cond), g.number(a), coef, b)
        return self._leaf(node, coef, factors)

    def _leaf(self, node, coef, factors):
        self.out.terms.append(Term(coef, factors, node, self._enclosing))
        return None
