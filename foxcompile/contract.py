"""The op's contract: the facts the matcher, the rewrite, the public API, the options and the
engines must agree on, in one place.

- Prune: how a call may prune, and the matcher's decay labels it comes from.
- DEFAULT_EPSILON and check_epsilon: the pruning tolerance and its one validation.
- LAYOUTS, MIN_HEAD_DIM / MAX_HEAD_DIM, accumulator(): layouts, the head dims the Triton engine
  runs, the dtype every engine accumulates in.
- emit_attention(): the one builder of a foxcompile::attention call in an FX graph, by keyword;
  site_label() / split_site_label(): the call site's name it carries, for pruning_stats.

Plain Python and torch: importing this module imports no other part of foxcompile.
"""
import enum
import math
import numbers

import torch

DEFAULT_EPSILON = math.exp(-10.0)
LAYOUTS = ("bthd", "bhtd")
MIN_HEAD_DIM = 16   # the Triton engine's head dims; others run on the PyTorch reference
MAX_HEAD_DIM = 256
# A call with at most this many query rows per kv head (M x G) is decoding-sized: the decode
# engine takes it (kernels/decode.py) and it runs dense unless FOXCOMPILE_DECODE_PRUNING=1
# (kernels.may_prune); the matcher notes it on sites whose shapes say so.
DECODE_ROWS = 64


def query_rows(n_queries, q_heads, kv_heads):
    """M x G: the query rows per kv head of a call with M queries, Hq query heads and Hk kv
    heads (G = Hq // Hk), what the decode engine holds in one program and DECODE_ROWS bounds.
    Works on ints and SymInts."""
    return n_queries * (q_heads // max(kv_heads, 1))


class Prune(enum.IntEnum):
    """How a call may prune. The op takes it as an int (custom-op schemas have no enums)."""
    OFF = 0       # run dense
    PROVEN = 1    # the graph proves lam never increases: prune with the data bound
    GUARDED = 2   # gates from outside the graph: prune only where lam never rises (device check)

    @classmethod
    def from_decay(cls, label: str) -> "Prune":
        """The matcher's decay label ("proven", "guarded" or "none") as a Prune."""
        try:
            return _FROM_DECAY[label]
        except KeyError:
            raise ValueError(f"unknown decay label {label!r}; expected one of "
                             f"{tuple(_FROM_DECAY)}") from None


_FROM_DECAY = {"proven": Prune.PROVEN, "guarded": Prune.GUARDED, "none": Prune.OFF}


def check_epsilon(value, name: str = "epsilon") -> float:
    """value as a float if it is a valid pruning tolerance (a real number, 0 <= value < 1: each
    query may lose at most this fraction of its attention mass; 0 turns pruning off), else a
    TypeError or ValueError naming `name`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number in [0, 1) (the attention mass a query may "
                        f"lose to pruning; 0 turns pruning off), got {value!r}")
    value = float(value)
    if not 0.0 <= value < 1.0:  # NaN fails too
        raise ValueError(f"{name} must be in [0, 1) (the attention mass a query may lose to "
                         f"pruning; 0 turns pruning off), got {value!r}")
    return value


def check_layout(layout) -> str:
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS} ('bthd': (batch, time, heads, dim); "
                         f"'bhtd': (batch, heads, time, dim)), got {layout!r}")
    return layout


def accumulator(dtype: torch.dtype) -> torch.dtype:
    """The dtype of lam, the softmax statistics and every accumulator: float64 for float64
    inputs (gradcheck), float32 otherwise."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def site_label(module: str, location: str) -> str:
    """The op's `site` argument: "layers.0.attn (model.py:42 in forward)", or the location
    alone outside a module."""
    return f"{module} ({location})" if module else location


def split_site_label(label: str) -> tuple[str, str]:
    """(module, location) of a site_label; ("", label) when it names no module."""
    module, sep, rest = label.partition(" (")
    if sep and rest.endswith(")") and " " not in module:
        return module, rest[:-1]
    return "", label


def emit_attention(graph, q, k, v, lam, *, scale: float, epsilon: float, prune: Prune,
                   layout: str, site: str, doc=None):
    """Insert torch.ops.foxcompile.attention(q, k, v, lam, ...) into graph at its current
    insertion point, every argument after lam by keyword; returns the call node (its value is
    the op's tuple (out, lse, start, bound)). q, k, v, lam and doc are FX nodes."""
    kwargs = {"scale": float(scale), "epsilon": check_epsilon(epsilon), "prune": int(prune),
              "layout": check_layout(layout), "site": site}
    if doc is not None:
        kwargs["doc"] = doc
    return graph.call_function(torch.ops.foxcompile.attention.default, (q, k, v, lam), kwargs)
