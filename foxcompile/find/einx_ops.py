"""einx calls in Dynamo's graph, written out as the torch ops they stand for.

Dynamo records `einx.subtract("b h i, b h j -> b h i j", lam, lam)` as one call of einx's
function, which the score walker cannot look into. `lower(graph)` replaces each einx call it can
spell exactly in torch by those ops, before matching:

- elementwise ops (subtract, add, multiply, divide) whose operands are broadcast into the output:
  every operand axis is an output axis, the output may add axes (and size-1 axes "1"), and "..."
  stands for the same leading dims everywhere. Each operand becomes a permute (where its axes come
  in another order) and unsqueezes, then one torch op: the broadcast einx itself performs.
- dot with plain axis names (no "...", "1" or compositions): torch.einsum on the same axes.

Anything else (compositions like "(h d)", brackets, reductions, other ops) stays as it is. The
values are the same ops einx runs, so the graph computes exactly what it did.
"""
import re

import torch
from torch import fx

from . import graph as g

_ELEMENTWISE = {"subtract": torch.sub, "add": torch.add, "multiply": torch.mul,
                "divide": torch.div}
_NAME = re.compile(r"^[A-Za-z_]\w*$")


def _einx_op(node) -> str | None:
    if node.op != "call_function" or node.kwargs:
        return None
    module = getattr(node.target, "__module__", "") or ""
    name = getattr(node.target, "__name__", "")
    if not module.startswith("einx") or name not in (*_ELEMENTWISE, "dot"):
        return None
    if len(node.args) != 3 or not isinstance(node.args[0], str):
        return None
    return name


def _parse(expr: str):
    """('b h i, b h j -> b h i j') -> ([['b', 'h', 'i'], ['b', 'h', 'j']], ['b', 'h', 'i', 'j'])."""
    if expr.count("->") != 1:
        return None
    lhs, rhs = expr.split("->")
    inputs = [part.split() for part in lhs.split(",")]
    output = rhs.split()
    for axes in (*inputs, output):
        if not all(t == "..." or t == "1" or _NAME.match(t) for t in axes):
            return None
        named = [t for t in axes if t not in ("1", "...")]
        if len(set(named)) != len(named) or axes.count("...") > 1:
            return None
        if "..." in axes and axes[0] != "...":
            return None
    return inputs, output


def _expanded(axes, ellipsis: int):
    """Axes with "..." written out as that many numbered leading axes."""
    if "..." not in axes:
        return list(axes)
    return [f"...{n}" for n in range(ellipsis)] + list(axes[1:])


def _broadcast_plan(axes, rank, output, ellipsis):
    """(permutation or None, positions of the output that the operand lacks) to bring an operand
    with `axes` into the output's layout; None when it does not broadcast into it."""
    axes = _expanded(axes, ellipsis)
    if "1" in axes or len(axes) != rank:
        return None
    out = _expanded(output, ellipsis)
    if not set(axes) <= set(out):
        return None
    order = sorted(range(rank), key=lambda d: out.index(axes[d]))
    missing = [p for p, t in enumerate(out) if t not in axes]
    return (None if order == list(range(rank)) else order), missing


def _set_meta(new: fx.Node, old: fx.Node, value) -> None:
    for key in ("stack_trace", "nn_module_stack", "source_fn_stack", "from_node"):
        if key in old.meta:
            new.meta[key] = old.meta[key]
    new.meta["example_value"] = value


def _lower_elementwise(graph, node, op, inputs, output) -> fx.Node | None:
    operands = node.args[1:]
    ranks = [g.rank(x) if isinstance(x, fx.Node) else None for x in operands]
    if len(inputs) != 2 or None in ranks:
        return None
    named_out = len([t for t in output if t != "..."])
    ellipses = {rank - len([t for t in axes if t != "..."]) for axes, rank in zip(inputs, ranks)
                if "..." in axes}
    if len(ellipses) > 1 or ("..." in output) != bool(ellipses):
        return None
    ellipsis = ellipses.pop() if ellipses else 0
    plans = [_broadcast_plan(axes, rank, output, ellipsis)
             for axes, rank in zip(inputs, ranks)]
    if None in plans or named_out + ellipsis != g.rank(node):
        return None
    made = []
    with graph.inserting_before(node):
        views = []
        for x, (order, missing) in zip(operands, plans):
            value = g.value(x)
            if order is not None:
                value = value.permute(order)
                x = graph.call_method("permute", (x, order))
                _set_meta(x, node, value)
                made.append(x)
            for position in missing:
                value = value.unsqueeze(position)
                x = graph.call_method("unsqueeze", (x, position))
                _set_meta(x, node, value)
                made.append(x)
            views.append((x, value))
        value = op(views[0][1], views[1][1])
        out = graph.call_function(op, (views[0][0], views[1][0]))
        _set_meta(out, node, value)
        made.append(out)
    if tuple(value.shape) != g.shape(node) or value.dtype != g.dtype(node):
        for new in reversed(made):
            graph.erase_node(new)
        return None
    return out


def _lower_dot(graph, node, inputs, output) -> fx.Node | None:
    axes = [t for part in (*inputs, output) for t in part]
    if len(inputs) != 2 or any(t in ("1", "...") for t in axes):
        return None
    names = list(dict.fromkeys(axes))
    if len(names) > 26:
        return None
    letter = {name: chr(ord("a") + n) for n, name in enumerate(names)}
    equation = ",".join("".join(letter[t] for t in part) for part in inputs)
    equation += "->" + "".join(letter[t] for t in output)
    a, b = node.args[1:]
    if not (isinstance(a, fx.Node) and isinstance(b, fx.Node)):
        return None
    value = torch.einsum(equation, g.value(a), g.value(b))
    if tuple(value.shape) != g.shape(node) or value.dtype != g.dtype(node):
        return None
    with graph.inserting_before(node):
        out = graph.call_function(torch.einsum, (equation, a, b))
    _set_meta(out, node, value)
    return out


def lower(graph: fx.Graph) -> int:
    """Replace the einx calls that have an exact torch spelling; returns how many."""
    count = 0
    for node in list(graph.nodes):
        name = _einx_op(node)
        parsed = _parse(node.args[0]) if name else None
        if parsed is None:
            continue
        try:
            if name == "dot":
                new = _lower_dot(graph, node, *parsed)
            else:
                new = _lower_elementwise(graph, node, _ELEMENTWISE[name], *parsed)
        except Exception:  # a form these rules did not foresee: leave the call as it is
            new = None
        if new is None:
            continue
        node.replace_all_uses_with(new)
        graph.erase_node(node)
        count += 1
    return count
