"""Does the forget gate provably decay? Sign and monotonicity read off the graph.

ACP may prune only where the key-side vector lam never increases. `direction(node, axis)` returns
+1 if the tensor provably never decreases along `axis`, -1 if it never increases, 0 if it is
constant along it, None if the graph does not say; `sign(node)` returns +1 (>= 0), -1 (<= 0) or
None. Both are sound: every rule below is a theorem (logsigmoid <= 0, cumsum of x <= 0 never
increases, an arange with a positive step increases, ...); whatever no rule covers is None, and
the site is then guarded at run time instead of proven.
"""
import torch

from . import graph as g
from .views import VIEWS, sources

_NON_NEGATIVE = {"sigmoid", "exp", "exp2", "softplus", "abs", "relu", "square"}


def _combine(a, b):
    """Sign of a product."""
    if a is None or b is None:
        return None
    return a * b


def _either(a, b):
    """Sign of a value that is one of two values, of signs a and b."""
    if a is None or b is None:
        return None
    if a == b or b == 0:
        return a
    return b if a == 0 else None


def sign(node) -> int | None:
    num = g.number(node)
    if num is not None:
        return 1 if num > 0 else (-1 if num < 0 else (0 if num == 0 else None))   # NaN: none
    if g.dtype(node) == torch.bool:  # 0 or 1
        return 1
    k = g.kind(node)
    if k == "logsigmoid":
        return -1
    if k in _NON_NEGATIVE:
        return 1
    if k == "log" and g.kind(node.args[0]) == "sigmoid":
        return -1
    if k == "neg":
        s = sign(node.args[0])
        return None if s is None else -s
    if k in ("mul", "div"):
        return _combine(sign(node.args[0]), sign(node.args[1]))
    if k == "add":
        a, b = sign(node.args[0]), sign(node.args[1])
        return a if a is not None and a == b else None
    if k in ("clamp", "clamp_max", "clamp_min"):
        low = g.number(g.arg(node, 1, "min")) if k != "clamp_max" else None
        high = g.number(g.arg(node, 2, "max")) if k == "clamp" else (
            g.number(g.arg(node, 1, "max")) if k == "clamp_max" else None)
        if high is not None and high <= 0:
            return -1
        if low is not None and low >= 0:
            return 1
        return sign(node.args[0])
    if k == "minimum":
        a, b = sign(node.args[0]), sign(node.args[1])
        return -1 if -1 in (a, b) else None
    if k == "masked_fill":  # x, or the fill where the mask holds
        return _either(sign(node.args[0]), sign(g.arg(node, 2, "value")))
    if k == "where":
        return _either(sign(node.args[1]), sign(node.args[2]))
    if k in g.FILLS:
        return sign(g.fill_value(node))
    if k in ("zeros", "zeros_like"):
        return 0
    if k in ("ones", "ones_like"):
        return 1
    if k == "cumsum":
        s = sign(node.args[0])
        return s if s in (1, -1, 0) else None
    if k == "arange":
        start = g.number(g.arg(node, 0)) if len(node.args) > 1 else 0.0
        return 1 if start is not None and start >= 0 and g.arg(node, 2, "step", 1) == 1 else None
    if k in VIEWS and (k != "cast" or g.floating(node)):  # bool, uint8 casts do not
        return sign(node.args[0])
    return None


def _source_axis(node, axis: int) -> int | None:
    """The input dim that a view's dim `axis` reads in order (views.sources), so that the view
    keeps the input's direction along it; None for a new dim, a merged or tiled one, a slice
    whose step is not a positive int, and squeeze's keyword form (never followed here)."""
    dims = sources(node)
    if dims is None or g.kind(node) == "squeeze" and len(node.args) < 2:
        return None
    axis = g.normalize_dim(axis, len(dims))
    source = dims[axis]
    if not isinstance(source, int):
        return None
    if g.kind(node) == "getitem":
        step = g.index_map(node.args[1], g.rank(node.args[0]))[axis][1].step
        return source if step is None or isinstance(step, int) and step > 0 else None
    return source


def direction(node, axis: int) -> int | None:
    """+1 non-decreasing, -1 non-increasing, 0 constant along axis; None if unproven. A negative
    axis past the node's rank is one it broadcasts along (a broadcast operand): constant."""
    if g.number(node) is not None:
        return 0
    shp = g.shape(node)
    if shp is None:
        return None
    if len(shp) < -axis:
        return 0
    axis = g.normalize_dim(axis, len(shp))
    if shp[axis] == 1:
        return 0
    k = g.kind(node)
    if k == "cumsum":
        dim = g.normalize_dim(g.arg(node, 1, "dim"), len(shp))
        if dim != axis:
            return None
        return sign(node.args[0])
    if k == "arange":
        step = g.arg(node, 2, "step", 1)
        return 1 if g.number(step) is not None and g.number(step) > 0 else None
    if k in ("zeros", "zeros_like", "ones", "ones_like", *g.FILLS):
        return 0
    if k == "neg":
        d = direction(node.args[0], axis - len(shp))
        return None if d is None else -d
    if k in ("add", "sub"):
        a = direction(node.args[0], axis - len(shp))
        b = direction(node.args[1], axis - len(shp))
        if a is None or b is None:
            return None
        if k == "sub":
            b = -b
        if a == 0 or b == 0 or a == b:
            return a if a != 0 else b
        return None
    if k in ("mul", "div"):
        for tensor, scale in ((node.args[0], node.args[1]), (node.args[1], node.args[0])):
            if k == "div" and tensor is node.args[1]:
                continue
            if direction(scale, axis - len(shp)) != 0:
                continue
            d, s = direction(tensor, axis - len(shp)), sign(scale)
            if d is None or s is None:
                return None
            return d * s
        return None
    if k == "cat":
        return _cat_direction(node, axis)
    source = _source_axis(node, axis) if k in VIEWS and (k != "cast" or g.floating(node)) else None
    if source is not None:
        return direction(node.args[0], source)
    return None


def _cat_direction(node, axis: int) -> int | None:
    """cat([zeros, cumsum(x)], axis): prepending the empty sum keeps a cumsum monotone."""
    pieces = list(g.arg(node, 0, "tensors"))
    dim = g.normalize_dim(g.arg(node, 1, "dim", 0), g.rank(node))
    if dim != axis:
        agreed = {direction(p, axis - g.rank(node)) for p in pieces}
        return agreed.pop() if len(agreed) == 1 else None
    if len(pieces) != 2 or g.constant(pieces[0]) != 0.0:
        return None
    d = direction(pieces[1], axis - g.rank(node))
    second = pieces[1]
    while g.kind(second) in ("cast", "identity"):
        second = second.args[0]
    if g.kind(second) == "cumsum" and d in (1, -1):
        return d
    return None


def decay_verdict(directions: list[int | None], masked_keys: bool = False) -> str:
    """From the direction along j of each key-side term c_t w_t (scores = ... + sum_t c_t w_t),
    decide the decay of lam = -sum_t c_t w_t: proven, guarded, or none (it grows to the past).
    masked_keys: a key mask adds +inf to lam on the masked keys, so lam rises where right padding
    starts, which only the run-time guard can see: never proven; a gate that grows stays none."""
    if all(d is not None and d >= 0 for d in directions):
        return "guarded" if masked_keys else "proven"
    if all(d is not None and d <= 0 for d in directions) and any(d == -1 for d in directions):
        return "none"
    return "guarded"

