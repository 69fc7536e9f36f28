"""Views and shape ops: which dim of the input each dim of the result reads.

`sources(node)` answers for every op in VIEWS (permute, transpose, unsqueeze and x[..., None],
squeeze, expand, repeat, view / reshape / flatten, basic indexing, casts and copies) with one
entry per dim of the result: the input dim it steps along, NEW or MERGED. Each part of the matcher
follows the kinds it has a reason to: decay.py all of them, separable.py transposes and
broadcasts, operands.py permutes and new axes, masks.py views that only move, add or drop dims.
"""
import sympy

from . import graph as g

NEW = "new"        # a dim the op adds: unsqueeze, x[None], the leading dims of expand and repeat,
                   # a size-1 dim of a reshape
MERGED = "merged"  # a dim that is not one input dim read in order: merged or split by a
                   # reshape, or tiled by repeat

PERMUTES = frozenset({"transpose", "attr:mT", "attr:T", "permute"})   # dims reordered, none changed
VIEWS = PERMUTES | {"cast", "identity", "repeat_interleave", "expand", "repeat", "unsqueeze",
                    "squeeze", "getitem", "reshape", "flatten"}


def sources(node) -> list | None:
    """For a node of a kind in VIEWS, of x = node.args[0]: one entry per dim of node, the dim of x
    it reads (0-based), NEW or MERGED. An output dim that reads dim s of x steps along s as it
    steps, every other index of x fixed: by one, by a slice's step, by none where x has size 1
    (expand, a repeat of a size-1 dim), or every few steps (repeat_interleave). Dims of x that an
    integer index or squeeze drops are read by none. None for other nodes, unknown shapes, and
    forms not read here (squeeze without a dim, advanced indexing, a cast or repeat_interleave
    that changes the rank)."""
    k = g.kind(node)
    if k not in VIEWS or not node.args:
        return None
    x = node.args[0]
    in_shape, out_shape = g.shape(x), g.shape(node)
    if in_shape is None or out_shape is None:
        return None
    in_rank, out_rank = len(in_shape), len(out_shape)
    if k in ("cast", "identity", "repeat_interleave"):
        return list(range(in_rank)) if in_rank == out_rank else None
    if k in PERMUTES:
        return _order(node, k, out_rank)
    if k in ("expand", "repeat"):
        lead = out_rank - in_rank  # new leading dims
        if lead < 0:
            return None
        tiles = g.sequence_arg(node, 1, "repeats") if k == "repeat" else (1,) * out_rank
        return [NEW if d < lead else
                d - lead if tiles[d] == 1 or in_shape[d - lead] == 1 else MERGED
                for d in range(out_rank)]
    if k == "unsqueeze":
        new = g.normalize_dim(g.arg(node, 1, "dim"), out_rank)
        return [NEW if d == new else (d if d < new else d - 1) for d in range(out_rank)]
    if k == "squeeze":
        dim = g.arg(node, 1, "dim")
        if dim is None:
            return None
        picked = (g.normalize_dim(d, in_rank) for d in (dim if isinstance(dim, (tuple, list))
                                                          else (dim,)))
        gone = {d for d in picked if in_shape[d] == 1}
        return [d for d in range(in_rank) if d not in gone]
    if k in ("reshape", "flatten"):
        return [NEW if g.same_size(size, 1) else _reshape_source(in_shape, out_shape, d)
                for d, size in enumerate(out_shape)]
    dims = g.index_map(node.args[1], in_rank)  # getitem
    return None if dims is None else [NEW if e is None else e[0] for e in dims]


def _order(node, k: str, rank: int) -> list:
    """The input dim of each output dim of a transpose or permute."""
    if k == "permute":
        return [g.normalize_dim(d, rank) for d in g.sequence_arg(node, 1, "dims")]
    if k == "attr:T":  # x.T reverses every dim (the last two of a matrix)
        return list(reversed(range(rank)))
    order = list(range(rank))
    if k == "attr:mT":
        a, b = rank - 2, rank - 1
    else:
        a, b = (g.normalize_dim(g.arg(node, i, name), rank)
                for i, name in ((1, "dim0"), (2, "dim1")))
    order[a], order[b] = order[b], order[a]
    return order


def _reshape_source(in_shape, out_shape, axis: int):
    """The input dim that output dim `axis` of a reshape runs along, when the reshape keeps it:
    same size and as many elements before it (row-major), so a step along it is a step along
    that input dim with every other input index fixed. MERGED when the reshape merges or splits
    it."""
    before = g.numel(out_shape[:axis])
    for dim, size in enumerate(in_shape):
        if (g.same_size(size, out_shape[axis])
                and sympy.simplify(g.numel(in_shape[:dim]) - before) == 0):
            return dim
    return MERGED
