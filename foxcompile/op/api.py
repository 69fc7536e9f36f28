"""foxcompile.forgetting_attention: the op for direct use, with input checks."""
import torch

from ..contract import DEFAULT_EPSILON, Prune, accumulator, check_epsilon, check_layout
from .library import _dims, attention

_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)
_DOC_DTYPES = (torch.int32, torch.int64)


def _check_doc(doc, batch: int, n_keys: int, device: torch.device) -> None:
    """Document ids: an int32/int64 tensor (B, N) or (N,) on q's device."""
    if not isinstance(doc, torch.Tensor):
        raise TypeError(f"doc must be a tensor, got {type(doc).__name__}")
    if doc.dtype not in _DOC_DTYPES:
        raise TypeError(f"doc must be int32 or int64 document ids, got {doc.dtype}")
    if tuple(doc.shape) not in ((batch, n_keys), (n_keys,)):
        raise ValueError(f"doc must have shape ({batch}, {n_keys}) or ({n_keys},) (batch, keys), "
                         f"got {tuple(doc.shape)}")
    if doc.device != device:
        raise ValueError(f"doc must be on q's device {device}, got {doc.device}")


def _check(q, k, v, log_fgate, layout, scale, epsilon, doc) -> float:
    """Raise a TypeError or ValueError that names the problem; returns epsilon as a float."""
    check_layout(layout)
    for name, x in (("q", q), ("k", k), ("v", v), ("log_fgate", log_fgate)):
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a tensor, got {type(x).__name__}")
    for name, x in (("q", q), ("k", k), ("v", v)):
        if x.dim() != 4:
            raise ValueError(f"{name} must be 4-D in layout {layout!r}, got shape {tuple(x.shape)}")
    if q.dtype not in _DTYPES:
        raise TypeError(f"q must be one of {_DTYPES}, got {q.dtype}")
    if k.dtype != q.dtype or v.dtype != q.dtype:
        raise TypeError(f"q, k, v must share a dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    if not log_fgate.is_floating_point():
        raise TypeError(f"log_fgate must be floating point, got {log_fgate.dtype}")
    devices = {x.device for x in (q, k, v, log_fgate)}
    if len(devices) > 1:
        raise ValueError(f"q, k, v and log_fgate must be on one device, got {sorted(map(str, devices))}")
    batch, q_heads, n_queries, head_dim = _dims(q, layout)
    k_batch, kv_heads, n_keys, k_dim = _dims(k, layout)
    if k.shape[:-1] != v.shape[:-1]:
        raise ValueError(f"k and v must agree on all but the head dim, got {tuple(k.shape)} and "
                         f"{tuple(v.shape)}")
    if k_batch != batch or k_dim != head_dim:
        raise ValueError(f"q {tuple(q.shape)} and k {tuple(k.shape)} disagree on batch or head dim "
                         f"(layout {layout!r})")
    if kv_heads == 0 and q_heads != 0 or kv_heads and q_heads % kv_heads:
        raise ValueError(f"query heads ({q_heads}) must be a multiple of key/value heads ({kv_heads})")
    if n_queries > n_keys:
        raise ValueError(f"need queries <= keys (the queries sit at the last positions), got "
                         f"{n_queries} queries and {n_keys} keys (layout {layout!r})")
    gate_shape = (batch, n_keys, q_heads) if layout == "bthd" else (batch, q_heads, n_keys)
    if tuple(log_fgate.shape) != gate_shape:
        raise ValueError(f"log_fgate must have shape {gate_shape} (batch, keys, query heads in "
                         f"layout {layout!r}), got {tuple(log_fgate.shape)}")
    if head_dim == 0 and scale is None:
        raise ValueError("q and k have head dim 0: the default scale D ** -0.5 is undefined; "
                         "pass scale= explicitly")
    if scale is not None and (isinstance(scale, bool) or not isinstance(scale, (int, float))):
        raise TypeError(f"scale must be a number or None, got {scale!r}")
    if doc is not None:
        _check_doc(doc, batch, n_keys, q.device)
    return check_epsilon(epsilon)


def forgetting_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                         log_fgate: torch.Tensor, *, layout: str, scale: float | None = None,
                         epsilon: float = DEFAULT_EPSILON,
                         doc: torch.Tensor | None = None) -> torch.Tensor:
    """Causal softmax attention with a forget gate (FoX), pruned by ACP.

    layout (required, keyword): which dim is time. The shapes cannot tell, since (B, H, T) also
    reads as (B, T, H):
      "bthd": q (B, M, Hq, D), k (B, N, Hk, D), v (B, N, Hk, Dv), log_fgate (B, N, Hq);
      "bhtd": q (B, Hq, M, D), k (B, Hk, N, D), v (B, Hk, N, Dv), log_fgate (B, Hq, N).
    v's head dim Dv may differ from D (the narrower side is zero-padded for the kernels).
    log_fgate holds log f_t <= 0 per key step and query head (lam = its cumulative sum, in fp32).
    Query head h reads key head h // (Hq // Hk); M <= N with the queries at the last M positions.
    scale defaults to D ** -0.5. epsilon in [0, 1) bounds the attention mass each query may lose
    to pruning (default e^-10; 0 turns pruning off). Pruning is guarded: it stays off for any
    (batch, head) whose gates are positive anywhere. doc: packed sequences, int32/int64 document
    ids of the N key positions, (B, N) or (N,); query i (at position N - M + i) then sees only
    the keys of its own document. Ids that never decrease along N also skip the tiles of earlier
    documents; ids that fit pass best as int32 (the kernels compare them in their dtype). Empty
    inputs (B, H, M or N of 0) give empty results.
    Returns (B, M, Hq, Dv) or (B, Hq, M, Dv), contiguous.
    """
    epsilon = _check(q, k, v, log_fgate, layout, scale, epsilon, doc)
    if scale is None:
        scale = q.shape[-1] ** -0.5
    if layout == "bthd":  # scan along a contiguous last dim: a strided cumsum is ~100x slower
        log_fgate = log_fgate.transpose(1, 2)
    lam = torch.cumsum(log_fgate.to(accumulator(q.dtype)).contiguous(), dim=-1)   # (B, Hq, N)
    out, *_ = attention(q, k, v, lam, float(scale), epsilon, Prune.GUARDED, layout,
                        "forgetting_attention", doc=doc)
    return out
