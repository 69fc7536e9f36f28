"""Replace a matched Site by one call of foxcompile::attention.

New nodes view q, k, v as (B, H, T, D) (permute/unsqueeze only), build the key-side vector
lam = -sum_t c_t prod(factors) w_t as (B or 1, H or 1, N), call the op, and view its output in the
order of the replaced node. The T x T nodes are then dead and removed.
"""
import operator

import torch
from torch import fx

from .find import graph as g
from .find.site import Operand, Site
from .kernels.plan import PRUNE_GUARDED, PRUNE_OFF, PRUNE_PROVEN

_PRUNE = {"proven": PRUNE_PROVEN, "guarded": PRUNE_GUARDED, "none": PRUNE_OFF}


def _call(graph: fx.Graph, fn, *args) -> fx.Node:
    return graph.call_function(fn, args)


def _method(graph: fx.Graph, name: str, *args) -> fx.Node:
    return graph.call_method(name, args)


def _four_d(graph, node, nb: int):
    """(batch..., T, D) with nb batch dims -> (B, H, T, D)."""
    if nb == 1:
        return _method(graph, "unsqueeze", node, 1)
    if nb == 0:
        return _call(graph, operator.getitem, node, (None, None))
    return node


def _operand(graph, operand: Operand, nb: int, dtype) -> fx.Node:
    node = operand.node
    if operand.perm != tuple(range(len(operand.perm))):
        node = _method(graph, "permute", node, *operand.perm)
    if g.dtype(operand.node) != dtype:
        node = _method(graph, "to", node, dtype)
    return _four_d(graph, node, nb)


def _key_vector(graph, site: Site) -> fx.Node:
    """lam (B or 1, H or 1, N) = -sum of the key-side terms, with the i axis dropped."""
    rank = site.batch_dims + 2
    total = None
    for term in site.key_terms:
        x = term.leaf
        x_rank = g.rank(term.leaf)
        for factor, power in term.factors:
            x = _call(graph, operator.mul if power == 1 else operator.truediv, x, factor)
            x_rank = max(x_rank, g.rank(factor) or 0)
        if term.coef != -1.0:  # the usual "- lam_j" needs no arithmetic
            x = _call(graph, operator.mul, x, -term.coef)
        if x_rank < rank:
            x = _call(graph, operator.getitem, x, (None,) * (rank - x_rank) + (Ellipsis,))
        x = _method(graph, "select", x, -2, 0)            # (batch..., N)
        total = x if total is None else _call(graph, operator.add, total, x)
    if site.batch_dims == 1:
        return _method(graph, "unsqueeze", total, 1)
    if site.batch_dims == 0:
        return _call(graph, operator.getitem, total, (None, None))
    return total


def rewrite(gm: fx.GraphModule, site: Site, epsilon: float) -> fx.Node:
    """Insert the op before site.output, reroute its users, and return the new output node."""
    graph = gm.graph
    nb = site.batch_dims
    dtype = torch.promote_types(torch.promote_types(g.dtype(site.q.node), g.dtype(site.k.node)),
                                g.dtype(site.v.node))
    bthd = nb == 2 and site.out_perm == (0, 2, 1, 3)
    with graph.inserting_before(site.output):
        q, k, v = (_operand(graph, x, nb, dtype) for x in (site.q, site.k, site.v))
        if bthd:
            q, k, v = (_method(graph, "transpose", x, 1, 2) for x in (q, k, v))
        lam = _key_vector(graph, site)
        result = _call(graph, torch.ops.foxcompile.attention.default, q, k, v, lam, site.scale,
                       float(epsilon), _PRUNE[site.decay], "bthd" if bthd else "bhtd", site.label())
        out = _call(graph, operator.getitem, result, 0)
        if not bthd:
            if nb == 1:
                out = _method(graph, "squeeze", out, 1)
            elif nb == 0:
                out = _call(graph, operator.getitem, out, (0, 0))
            if site.out_perm != tuple(range(nb + 2)):
                out = _method(graph, "permute", out, *site.out_perm)
        if g.dtype(site.output) is not None and g.dtype(site.output) != dtype:
            out = _method(graph, "to", out, g.dtype(site.output))
    site.output.replace_all_uses_with(out)
    before = {n.name for n in graph.nodes}
    graph.eliminate_dead_code()
    site.removed = sorted(before - {n.name for n in graph.nodes})
    gm.recompile()
    return out
