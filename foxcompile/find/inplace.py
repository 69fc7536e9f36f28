"""In-place ops: which value a read sees, and which changes the matcher cannot follow.

Dynamo records `s *= c`, `s.masked_fill_(m, v)` and `s[..., m] = v` as nodes that change their
first argument in place. A later read of `s`, or of any node sharing its storage, sees the change,
yet the graph edge still points at the node that made `s`. The matcher follows two safe shapes:

- a *chain*: a tensor of a fresh storage (not an input) read after in-place ops that all wrote
  that tensor itself, not another view of the storage (a row slice of the bias masked with
  `bias[..., ~keep] = -inf` is such a tensor). A read at node c then sees the chain's last
  change before c (`latest`); the score walker applies it. A read in the site's scope that
  follows a change through another view of the storage is not followed;
- a graph input changed in place only before the site first reads it (or after the site): a
  static KV cache written with index_copy_ and then attended over. Every read, and the rewrite
  where it inserts the op, see the same values. Not for buffers whose values the matcher reads
  at compile time.

Storage identity comes from Dynamo's fake tensors (views share a storage). `problem` says why a
site's values could differ from what the matcher read; the site is then declined.
"""
import operator

import torch
from torch import fx
from torch.multiprocessing.reductions import StorageWeakRef

from . import graph as g

_OPERATORS = {operator.setitem, operator.iadd, operator.isub, operator.imul, operator.itruediv,
              operator.ifloordiv, operator.imod, operator.ipow, operator.iand, operator.ior,
              operator.ixor, operator.ilshift, operator.irshift, operator.imatmul}
_PURE_OPERATORS = {operator.and_, operator.or_, operator.not_, operator.is_}


def targets(node) -> list[fx.Node]:
    """The tensors a node changes in place (none for a pure node)."""
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return []
    out = node.kwargs.get("out")
    outs = out if isinstance(out, (tuple, list)) else (out,)
    changed = [x for x in outs if isinstance(x, fx.Node)]
    name = node.target if node.op == "call_method" else getattr(node.target, "__name__", "")
    if node.target in _PURE_OPERATORS:  # `a & b`, `a | b`: named like in-place methods, pure
        name = ""
    first = node.args[0] if node.args else None
    if isinstance(first, fx.Node) and (
            node.target in _OPERATORS or node.kwargs.get("inplace") is True
            or (isinstance(name, str) and name.endswith("_") and not name.endswith("__"))):
        changed.append(first)
    return [x for x in changed if g.is_tensor(x)]


# Arguments read for their dtype, shape or device alone (a.type_as(x), x.new_full(...),
# torch.zeros_like(x)): a change of their values does not change what the op computes.
_METADATA_ARGS = {"type_as": (1,), "expand_as": (1,), "view_as": (1,), "reshape_as": (1,),
                  "new_zeros": (0,), "new_ones": (0,), "new_full": (0,), "new_empty": (0,),
                  torch.zeros_like: (0,), torch.ones_like: (0,), torch.full_like: (0,),
                  torch.empty_like: (0,)}


def reads_values(consumer: fx.Node, x: fx.Node) -> bool:
    """Whether consumer reads the values of x, not only its dtype, shape or device."""
    metadata = _METADATA_ARGS.get(consumer.target, ())
    read = []
    for index, a in enumerate(consumer.args):
        if index not in metadata:
            fx.node.map_arg(a, read.append)
    fx.node.map_arg(consumer.kwargs, read.append)
    return x in read


def _storage(node):
    v = g.value(node)
    if not isinstance(v, torch.Tensor):
        return None
    try:
        return StorageWeakRef(v.untyped_storage())
    except (RuntimeError, NotImplementedError):  # sparse and other tensors without one storage
        return None


class NotFollowed(Exception):
    """A read sees an in-place change the score walker cannot apply."""


class InPlace:
    """The in-place ops of one graph, grouped by the storage they change (a node whose storage
    is unknown is its own group)."""

    def __init__(self, graph: fx.Graph):
        self.order = {node: index for index, node in enumerate(graph.nodes)}
        self.key = {}
        self.members = {}    # storage -> nodes holding it, in graph order
        for node in graph.nodes:
            storage = _storage(node)
            if storage is not None:
                self.key[node] = storage
                self.members.setdefault(storage, []).append(node)
        self.changes = {}    # storage -> in-place nodes changing it, in graph order
        for node in graph.nodes:
            for x in targets(node):
                key = self.key.get(x, x)
                self.members.setdefault(key, [x])
                self.changes.setdefault(key, []).append(node)

    def _between(self, key, start, stop) -> list[fx.Node]:
        lo, hi = self.order[start], self.order[stop]
        return [m for m in self.changes.get(key, ()) if lo < self.order[m] < hi]

    def _fresh(self, key) -> bool:
        """A storage the graph made: the first node holding it made it (it is no input)."""
        nodes = self.members[key]
        return isinstance(key, StorageWeakRef) and nodes[0].op not in ("placeholder", "get_attr")

    @staticmethod
    def _own(x, changes) -> bool:
        """Every change in `changes` writes x itself, not another view of its storage."""
        tensor = g.value(x)
        return all(any(g.value(t) is tensor for t in targets(m)) for m in changes)

    def latest(self, node, at) -> fx.Node | None:
        """The last in-place change of node's chain before `at` reads it, or None (no change,
        or an input's storage: `problem` judges those). Raises NotFollowed where a change since
        node was made wrote another view of node's fresh storage."""
        key = self.key.get(node)
        if key not in self.changes or not self._fresh(key):
            return None
        found = self._between(key, node, at)
        if found and not self._own(node, found):
            raise NotFollowed(f"{_name(at)} reads {_name(node)} after the in-place "
                              f"{_name(found[-1])}, which wrote another view of its storage: "
                              "not followed")
        return found[-1] if found else None

    def hidden_edges(self):
        """(m, c) for every node c that reads, after the in-place node m, the tensor m changed:
        data flow the graph's edges do not show."""
        for key, changes in self.changes.items():
            holders = set(self.members[key])
            for m in changes:
                for c in self.order:
                    if self.order[c] > self.order[m] and holders.intersection(c.all_input_nodes):
                        yield m, c

    def _written_before_reads(self, key, scope: set, at, constants) -> bool:
        """An input's storage (a graph input, not a buffer whose value the matcher reads at
        compile time) that the graph changes in place only before the site first reads it, or
        after `at`: every read, and the rewrite at `at`, then see the same values. A static KV
        cache written with index_copy_ and then attended over is this shape."""
        holders = self.members[key]
        if holders[0].op != "placeholder" or any(x in constants for x in holders):
            return False
        changes = set(self.changes[key])
        first = min((self.order[c] for x in holders for c in x.users
                     if c in scope and c not in changes), default=None)
        return first is None or not any(first <= self.order[m] < self.order[at] for m in changes)

    def problem(self, scope: set, resolved: set, reads, at, constants=()) -> str | None:
        """Why in-place ops could change a site's values, or None. scope: the nodes the site's
        output depends on (hidden edges included); resolved: (node, consumer) reads the score
        walker applied changes to; reads: nodes the rewrite reads at `at` instead of where the
        graph read them; constants: placeholders whose values the matcher read at compile
        time."""
        written_before = set()
        for key, changes in self.changes.items():
            holders = self.members[key]
            if not scope.intersection(holders):
                continue
            if not self._fresh(key):
                if self._written_before_reads(key, scope, at, constants):
                    written_before.add(key)
                    continue
                return (f"in-place {_name(changes[0])} changes {_name(holders[0])}, which this "
                        "attention reads (an input or an aliased input) after that change or "
                        "in between its reads: not followed")
            for x in holders:
                for c in x.users:
                    stale = self._between(key, x, c)
                    if c in scope and stale and reads_values(c, x) and (
                            (x, c) not in resolved or not self._own(x, stale)):
                        return (f"{_name(c)} reads {_name(x)} after the in-place "
                                f"{_name(stale[-1])}: not followed")
        for x in reads:
            if self.key.get(x, x) in written_before:
                continue
            stale = self._between(self.key.get(x, x), x, at)
            if stale:
                return (f"in-place {_name(stale[-1])} changes {_name(x)} between its use and the "
                        "value product: the rewrite would read the changed tensor")
        return None


def _name(node) -> str:
    return f"{g.name(node)} ({g.location(node)})"
