"""What the matcher found: a Site to rewrite, or a Decline with the reason."""
from dataclasses import dataclass, field

from torch import fx

from ..contract import site_label


@dataclass
class Operand:
    """A graph tensor as the op's (B, H, T, D): `groups[a]` lists the node dims that form dim a,
    merged in order (none: size 1). Every node dim is in exactly one group."""
    node: fx.Node
    groups: tuple[tuple[int, ...], ...]

    @property
    def order(self) -> tuple[int, ...]:
        return tuple(d for group in self.groups for d in group)


@dataclass
class KeyTerm:
    """coef * prod(factor ** power) * w_j: a key-side part of the scores. w = leaf.select(pick, 0)
    with leaf aligned to the scores from the right (size 1 along its dim `pick`), or the cumsum of
    that along the keys when `cumulative`."""
    coef: float
    factors: tuple
    leaf: fx.Node
    pick: int = -2
    cumulative: bool = False
    split: bool = False  # leaf laid out (B*H, ...), its first dim to be viewed as (B, H)


@dataclass
class Documents:
    """Document ids of packed sequences: the graph tensor `node`, whose dim `seq` runs along the
    N key positions and whose dim `batch` (None: none) along the op's batch; every other dim has
    size 1. Query i sees key j only when the ids at positions P + i and j agree."""
    node: fx.Node
    seq: int
    batch: int | None = None


@dataclass
class MaskedKeys:
    """Keys masked (-inf) for every query: those where the boolean graph tensor `node` equals
    `removed_when` (False for a validity mask such as `attention_mask.bool()`). Its dim `key` runs
    along the N keys and `batch` pairs each other dim of size > 1 with the scores' dim (counted
    from the right, < -2) it runs along, in the same order; every other dim has size 1."""
    node: fx.Node
    key: int
    batch: tuple[tuple[int, int], ...]
    removed_when: bool


class Reported:
    """What the reports read from a rewritten site, Site or peers.PeerSite alike: whether it
    prunes (its decay is "proven" or "guarded") and its label (module path or call site)."""
    decay: str
    module: str
    location: str

    @property
    def prunable(self) -> bool:
        return self.decay != "none"

    def label(self) -> str:
        return site_label(self.module, self.location)


@dataclass
class Site(Reported):
    """One forgetting-attention computation the backend replaces by foxcompile::attention."""
    kind: str                 # how it was written: "matmul", "einsum", "bmm", "sdpa", ...
    location: str             # the user's source line
    module: str               # the nn.Module path ("layers.3.attn"), "" for functions
    decay: str                # "proven", "guarded" or "none"
    q: Operand
    k: Operand
    v: Operand
    out: Operand              # the node whose value the op replaces, as (B, H, M, D)
    batch_dims: int           # leading (batch/head) dims of the scores: 0 to 3
    scale: float
    key_terms: list[KeyTerm]
    shapes: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    changes: list[fx.Node] = field(default_factory=list)  # in-place ops on the site's own tensors
    dead: list[fx.Node] = field(default_factory=list)  # dead code hanging off the site's own nodes
    removed: list[str] = field(default_factory=list)  # T x T nodes the rewrite makes dead
    merged: tuple | None = None  # (B, H): q, k, v and out are (B*H, ...) tensors (Bloom), the op
                                 # runs them as B*H sequences of one head, lam viewed to match
    documents: Documents | None = None  # packed sequences: the op's doc input
    masked_keys: MaskedKeys | None = None  # padding: keys lam sets to +inf

    @property
    def output(self) -> fx.Node:
        return self.out.node

    def __str__(self) -> str:
        return describe(self, f"{self.kind} forgetting attention")


def describe(site, what: str, details: str = "") -> str:
    """A rewritten site as the reports print it: "<label>: <what>, decay <label> (prunable or
    runs dense), scale <s>, <details><shapes>; <notes>". site: a Site or a peers.PeerSite."""
    shapes = ", ".join(f"{k}{tuple(v)}" for k, v in site.shapes.items())
    notes = "".join(f"; {n}" for n in site.notes)
    return (f"{site.label()}: {what}, decay {site.decay}"
            f"{' (prunable)' if site.prunable else ' (runs dense)'}, scale {site.scale:.6g}, "
            f"{details}{shapes}{notes}")


@dataclass
class Decline:
    """A softmax (or SDPA) the matcher considered and left alone."""
    location: str
    module: str
    reason: str
    node: str = ""

    def __str__(self) -> str:
        return f"{site_label(self.module, self.location)}: {self.reason}"
