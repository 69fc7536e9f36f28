"""What the matcher found: a Site to rewrite, or a Decline with the reason."""
from dataclasses import dataclass, field

from torch import fx


@dataclass
class Operand:
    """A graph tensor and how to view it as (batch..., T, D): `perm` reorders its dims into
    (batch dims in score order..., time, feature)."""
    node: fx.Node
    perm: tuple[int, ...]


@dataclass
class KeyTerm:
    """coef * prod(factor ** power) * leaf: a key-side part of the scores (leaf broadcasts
    against the (..., i, j) scores with size 1 along i)."""
    coef: float
    factors: tuple
    leaf: fx.Node


@dataclass
class Site:
    """One forgetting-attention computation the backend replaces by foxcompile::attention."""
    kind: str                 # how it was written: "matmul", "einsum", "bmm", "sdpa", ...
    location: str             # the user's source line
    module: str               # the nn.Module path ("layers.3.attn"), "" for functions
    decay: str                # "proven", "guarded" or "none"
    q: Operand
    k: Operand
    v: Operand
    batch_dims: int           # leading (batch/head) dims of the scores: 0, 1 or 2
    scale: float
    key_terms: list[KeyTerm]
    output: fx.Node           # the node whose value the op replaces
    out_perm: tuple[int, ...]  # canonical (batch..., i, e) -> output dim order
    shapes: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)  # T x T nodes the rewrite makes dead

    @property
    def prunable(self) -> bool:
        return self.decay != "none"

    def label(self) -> str:
        return f"{self.module} ({self.location})" if self.module else self.location

    def __str__(self) -> str:
        shapes = ", ".join(f"{k}{tuple(v)}" for k, v in self.shapes.items())
        extra = "".join(f"; {n}" for n in self.notes)
        return (f"{self.label()}: {self.kind} forgetting attention, decay {self.decay}"
                f"{' (prunable)' if self.prunable else ' (runs dense)'}, scale {self.scale:.6g}, "
                f"{shapes}{extra}")


@dataclass
class Decline:
    """A softmax (or SDPA) the matcher considered and left alone."""
    location: str
    module: str
    reason: str
    node: str = ""

    def __str__(self) -> str:
        where = f"{self.module} ({self.location})" if self.module else self.location
        return f"{where}: {self.reason}"
