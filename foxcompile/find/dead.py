"""Dead code: nodes whose values nothing uses. Dynamo hands backends graphs that still hold them
(`kept = s.clone()` never read, `o, m = f(...)` with m dropped); Inductor removes them later, so
they must not count as uses of a site's scores or probabilities. The matcher reads the graph as if
they were gone (it does not change the graph itself), and the rewrite erases those hanging off a
site's own nodes with the rest of the site.

A node is dead when it is pure and every user is dead. Pure excludes in-place ops (methods and
operators that change an argument, setitem), anything FX calls impure, module calls, and random
ops (removing one would shift the random stream of the ops after it).
"""
from torch import fx

from . import graph as g
from .inplace import targets

_RANDOM = ("rand", "bernoulli", "multinomial", "normal", "uniform", "dropout", "poisson")


def _kept(node: fx.Node) -> bool:
    if node.op in ("placeholder", "output", "call_module") or targets(node):
        return True
    name = node.target if isinstance(node.target, str) else getattr(node.target, "__name__", "")
    if g.kind(node) == "dropout" or any(r in str(name).lower() for r in _RANDOM):
        return True
    try:
        return node.is_impure()
    except Exception:  # cannot tell: keep it
        return True


def dead_nodes(graph: fx.Graph) -> set[fx.Node]:
    """The nodes of `graph` that a dead-code elimination would remove."""
    dead: set[fx.Node] = set()
    for node in reversed(graph.nodes):
        if not _kept(node) and all(user in dead for user in node.users):
            dead.add(node)
    return dead
