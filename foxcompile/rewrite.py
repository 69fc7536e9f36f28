"""Replace a matched Site by one call of foxcompile::attention.

New nodes view q, k, v as (B, H, T, D) (permute, flatten, unsqueeze), build the key-side vector
lam = -sum_t c_t prod(factors) w_t as (B or 1, H or 1, N), +inf on the keys of a key mask, view
packed sequences' document ids as (B, N) or (N,), call the op, and view its output in the dims of
the replaced node. Then the site's own nodes, now dead, go: its in-place changes to the scores and
every pure node that only fed the old output. Nothing else is touched (a whole-graph dead-code
pass would also drop in-place method calls whose result is unused).
"""
import dataclasses
import math
import operator

import torch
from torch import fx

from .contract import Prune, emit_attention
from .find import graph as g
from .find.inplace import targets
from .find.site import Operand, Site

_BTHD = ((0,), (2,), (1,), (3,))  # an output already in (B, T, H, D): the op writes it directly


def _call(graph: fx.Graph, fn, *args) -> fx.Node:
    return graph.call_function(fn, args)


def _method(graph: fx.Graph, name: str, *args) -> fx.Node:
    return graph.call_method(name, args)


def _size_arg(graph, node, dim: int):
    """A size to pass to a view: the int when static, else a node asking the tensor."""
    size = g.size(node, dim)
    return size if isinstance(size, int) else _method(graph, "size", node, dim)


def _four_d(graph, operand: Operand, dtype) -> fx.Node:
    """The operand as a (B, H, T, D) view."""
    node, order = operand.node, operand.order
    if order != tuple(range(len(order))):
        node = _method(graph, "permute", node, *order)
    if g.dtype(operand.node) != dtype:
        node = _method(graph, "to", node, dtype)
    for axis in reversed(range(4)):  # right to left: earlier positions stay put
        start, count = sum(map(len, operand.groups[:axis])), len(operand.groups[axis])
        if count == 0:
            node = _method(graph, "unsqueeze", node, start)
        elif count > 1:
            node = _method(graph, "flatten", node, start, start + count - 1)
    return node


def _as_output(graph, out: fx.Node, site: Site) -> fx.Node:
    """The op's (B, H, M, D) output in the dims of the replaced node."""
    for axis in reversed(range(4)):
        group = site.out.groups[axis]
        if not group:
            out = _method(graph, "squeeze", out, axis)
        elif len(group) > 1:  # (B, Hk * G) back to (B, Hk, G): sizes from q, which has them all
            sizes = [-1] + [_size_arg(graph, site.q.node, d) for d in site.q.groups[axis][1:]]
            out = _method(graph, "unflatten", out, axis, tuple(sizes))
    order = site.out.order
    inverse = tuple(order.index(d) for d in range(len(order)))
    if inverse != tuple(range(len(order))):
        out = _method(graph, "permute", out, *inverse)
    return out


def _removed_keys(graph, site: Site) -> fx.Node:
    """The masked keys as a boolean (batch..., N) tensor over the scores' batch dims (size 1 where
    the mask does not vary): the flag tensor with its other size-1 dims dropped and new ones
    added where the scores have batch dims it lacks."""
    keys = site.masked_keys
    x, places = keys.node, dict(keys.batch)
    places[keys.key] = -1
    for dim in reversed(range(g.rank(x))):
        if dim not in places:
            x = _method(graph, "select", x, dim, 0)
    present = sorted(at + 1 if at < -2 else -1 for at in places.values())  # the row dim is gone
    width = site.batch_dims + 1
    for position in range(width):  # left to right: the dims placed so far stay put
        if position - width not in present:
            x = _method(graph, "unsqueeze", x, position)
    return x if keys.removed_when else _call(graph, operator.invert, x)


def _key_vector(graph, site: Site) -> fx.Node:
    """lam (B or 1, H or 1, N) = -sum of the key-side terms, with the i axis dropped; +inf on the
    masked keys (the op keeps them out of every other query's row)."""
    rank = site.batch_dims + 2
    total = None
    for term in site.key_terms:
        x = term.leaf
        x_rank = g.rank(term.leaf)
        if term.split:  # (B*H, 1, N) -> (B, H, 1, N)
            sizes = tuple(_size_arg(graph, site.merged, d) for d in (0, 1))
            x, x_rank = _method(graph, "unflatten", x, 0, sizes), x_rank + 1
        for factor, power in term.factors:
            x = _call(graph, operator.mul if power == 1 else operator.truediv, x, factor)
            x_rank = max(x_rank, g.rank(factor) or 0)
        if term.coef != -1.0:  # the usual "- lam_j" needs no arithmetic
            x = _call(graph, operator.mul, x, -term.coef)
        if x_rank < rank:
            x = _call(graph, operator.getitem, x, (None,) * (rank - x_rank) + (Ellipsis,))
        x = _method(graph, "select", x, term.pick, 0)      # (batch..., N)
        if term.cumulative:
            x = _method(graph, "cumsum", x, -1)
        total = x if total is None else _call(graph, operator.add, total, x)
    if site.masked_keys is not None:
        total = _call(graph, torch.where, _removed_keys(graph, site), math.inf, total)
    if site.batch_dims == 0:
        return _call(graph, operator.getitem, total, (None, None))
    if site.batch_dims == 1:
        return _method(graph, "unsqueeze", total, 1)
    if site.merged is not None:  # (B, H, N) -> (B*H, 1, N): the op's B*H sequences of one head
        sizes = [_size_arg(graph, site.merged, d) for d in (0, 1)]
        total = _method(graph, "expand", total, *sizes, -1)
        return _method(graph, "unsqueeze", _method(graph, "flatten", total, 0, 1), 1)
    if site.batch_dims == 3:  # (B, Hk, G, N) -> (B, Hk * G, N)
        heads = [_size_arg(graph, site.q.node, d) for d in site.q.groups[1]]
        total = _method(graph, "expand", total, -1, *heads, -1)
        return _method(graph, "flatten", total, 1, 2)
    return total


def _document_ids(graph, site: Site) -> fx.Node | None:
    """The op's doc input: the site's document ids as (B, N) or (N,) (its size-1 dims dropped),
    int64 unless already int32 or int64."""
    docs = site.documents
    if docs is None:
        return None
    x = docs.node
    for dim in reversed(range(g.rank(x))):
        if dim not in (docs.seq, docs.batch):
            x = _method(graph, "select", x, dim, 0)
    if docs.batch is not None and docs.batch > docs.seq:
        x = _method(graph, "transpose", x, 0, 1)
    if g.dtype(docs.node) not in (torch.int32, torch.int64):
        x = _method(graph, "to", x, torch.int64)
    return x


def _impure(node: fx.Node) -> bool:
    try:
        return node.is_impure()
    except Exception:  # a call_module whose module cannot be found: keep it
        return True


def _remove_dead(graph: fx.Graph, site: Site) -> list[str]:
    """Erase the old output and what only it used: the site's in-place changes, and every pure
    node left without users, walking back from them."""
    changes = set(site.changes)
    pending, removed = [site.output, *site.changes], []
    while pending:
        node = pending.pop()
        if (node.name in removed or node.users or node.op in ("placeholder", "output")
                or node not in changes and (targets(node) or _impure(node))):
            continue
        pending.extend(node.all_input_nodes)
        graph.erase_node(node)
        removed.append(node.name)
    return sorted(removed)


def _rerouted(value, replaced: dict):
    """value with every node in `replaced` swapped for its replacement: nodes, tuples and lists
    are returned anew, the site's dataclasses changed in place."""
    if isinstance(value, fx.Node):
        return replaced.get(value, value)
    if isinstance(value, (tuple, list)):
        return type(value)(_rerouted(x, replaced) for x in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        for f in dataclasses.fields(value):
            setattr(value, f.name, _rerouted(getattr(value, f.name), replaced))
    return value


def rewrite(gm: fx.GraphModule, site: Site, epsilon: float, replaced: dict | None = None) -> fx.Node:
    """Insert the op before site.output, reroute its users, and return the new output node.
    replaced: {old output: new output} of the sites of this graph rewritten before; a site that
    reads one of them (its q is the previous site's output) is pointed at the new node first,
    and this site's own pair is added."""
    if replaced:
        _rerouted(site, replaced)
    graph = gm.graph
    dtype = torch.promote_types(torch.promote_types(g.dtype(site.q.node), g.dtype(site.k.node)),
                                g.dtype(site.v.node))
    bthd = site.batch_dims == 2 and site.out.groups == _BTHD
    existing = set(graph.nodes)
    try:
        out = _insert(graph, site, dtype, bthd, epsilon)
    except Exception:  # leave the graph as it was
        for node in reversed([n for n in graph.nodes if n not in existing]):
            graph.erase_node(node)
        raise
    site.output.replace_all_uses_with(out)
    for key in ("example_value", "val"):   # what later sites of the graph read about it
        if key in site.output.meta:
            out.meta.setdefault(key, site.output.meta[key])
    for node in reversed(site.dead):  # dead code on the site's nodes (find/dead.py): unused, pure
        if not node.users:
            graph.erase_node(node)
    site.removed = _remove_dead(graph, site)
    gm.recompile()
    if replaced is not None:
        replaced[site.output] = out
    return out


def _insert(graph: fx.Graph, site: Site, dtype, bthd: bool, epsilon: float) -> fx.Node:
    """The new nodes, before site.output; returns the one that replaces it."""
    with graph.inserting_before(site.output):
        q, k, v = (_four_d(graph, x, dtype) for x in (site.q, site.k, site.v))
        if bthd:
            q, k, v = (_method(graph, "transpose", x, 1, 2) for x in (q, k, v))
        lam = _key_vector(graph, site)
        result = emit_attention(graph, q, k, v, lam, scale=site.scale, epsilon=epsilon,
                                prune=Prune.from_decay(site.decay),
                                layout="bthd" if bthd else "bhtd", site=site.label(),
                                doc=_document_ids(graph, site))
        out = _call(graph, operator.getitem, result, 0)
        if not bthd:
            out = _as_output(graph, out, site)
        if g.dtype(site.output) is not None and g.dtype(site.output) != dtype:
            out = _method(graph, "to", out, g.dtype(site.output))
    return out
