"""Backend side: the foxcompile::attention calls a polyfill left in the graph get fox_acp's
epsilon, a pruning mode from the decay proof, and their call site's name; each becomes a PeerSite
in the report, next to the matcher's Sites."""
from dataclasses import dataclass, field

import torch
from torch import fx

from ..contract import Prune
from ..find import graph as g
from ..find.decay import decay_verdict, sign
from ..find.site import Reported, describe
from . import trace


def _argument(node: fx.Node, name: str):
    """An argument of a foxcompile::attention node by its schema name (keyword or positional)."""
    if name in node.kwargs:
        return node.kwargs[name]
    names = [a.name for a in torch.ops.foxcompile.attention.default._schema.arguments]
    index = names.index(name)
    return node.args[index] if index < len(node.args) else None


def _set_arguments(node: fx.Node, **values) -> None:
    names = [a.name for a in torch.ops.foxcompile.attention.default._schema.arguments]
    args, kwargs = list(node.args), dict(node.kwargs)
    for name, value in values.items():
        index = names.index(name)
        if name in kwargs or index >= len(args):
            kwargs[name] = value
        else:
            args[index] = value
    node.args, node.kwargs = tuple(args), kwargs


@dataclass
class PeerSite(Reported):
    """A call into a peer's FoX kernel that now runs foxcompile::attention. Reads like a Site:
    kind, location, module, decay, prunable, scale, shapes, notes."""
    kind: str          # "fla parallel_forgetting_attn call", "FoX authors' forgetting_attention call"
    location: str      # the user's call site ("forgetting_attn.py:142 in forward")
    module: str        # the nn.Module path, "" for functions
    decay: str         # "proven" (the gates are provably <= 0 in the graph), "guarded" or "none"
    scale: float
    layout: str
    shapes: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    node: str = ""     # the op node in the graph

    def __str__(self) -> str:
        return describe(self, self.kind, f"layout {self.layout}, ")


def _is_attention(node: fx.Node) -> bool:
    return node.op == "call_function" and node.target in (
        torch.ops.foxcompile.attention.default, torch.ops.foxcompile.attention)


def _gates(lam) -> fx.Node | None:
    """The per-step log gates lam was summed from: the input of emit's cumsum."""
    if not isinstance(lam, fx.Node):
        return None
    if lam.op == "call_function" and lam.target is torch.cumsum:
        return lam.args[0] if isinstance(lam.args[0], fx.Node) else None
    if lam.op == "call_method" and lam.target == "cumsum":
        return lam.args[0] if isinstance(lam.args[0], fx.Node) else None
    return None


def decay_of(lam) -> str:
    """"proven" when the graph shows every gate <= 0 (lam never increases: logsigmoid, -softplus,
    clamp(max<=0), ... as find/decay.py reads them, padding zeroed by masked_fill included),
    "none" when it shows them >= 0, "guarded" otherwise (the gates are data to the op)."""
    gates = _gates(lam)
    s = sign(gates) if gates is not None else None
    # the scores hold -lam_j: a key-side term whose direction along j is -sign(gates)
    return decay_verdict([None if s is None else -s])


def _shape(node) -> tuple:
    value = g.value(node) if isinstance(node, fx.Node) else None
    return tuple(value.shape) if value is not None and hasattr(value, "shape") else ()


def rewrite_calls(gm: fx.GraphModule, epsilon: float) -> list[PeerSite]:
    """Finish every peer call in gm (not its nested GraphModules: the caller walks those)."""
    sites = []
    for node in gm.graph.nodes:
        if not _is_attention(node):
            continue
        parsed = trace.parse(_argument(node, "site"))
        if parsed is None:
            continue
        info, notes = parsed
        decay = decay_of(_argument(node, "lam"))
        site = PeerSite(kind=info["kind"], location=info["location"], module=info["module"],
                        decay=decay, scale=float(_argument(node, "scale")),
                        layout=_argument(node, "layout"),
                        shapes={name: _shape(_argument(node, name)) for name in "qkv"},
                        notes=notes, node=node.name)
        _set_arguments(node, epsilon=float(epsilon), prune=int(Prune.from_decay(decay)), site=site.label())
        sites.append(site)
    if sites:
        gm.recompile()
    return sites


def drain_declines():
    """The peer calls left to their peer while tracing this torch.compile() call (Declines)."""
    return trace.drain_declines()
