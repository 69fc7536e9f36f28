"""An independent, deliberately naive fp64 forgetting attention.

Used only to check the corpus labels in eager mode (tests/test_corpus_labels.py and the generator
self-test in tests/test_generated.py); nothing here imports foxcompile. It is written for clarity,
not speed: one (batch, head, query) at a time.

    o[b, h, i] = sum_{j <= P + i} softmax_j( scale * q[b,h,i] . k[b,kv(h),j] + lam[b,h,P+i] - lam[b,h,j] ) v[b,kv(h),j]

with P = N - M (the M queries are the last M of the N positions), kv(h) = h // (H // Hkv) for
grouped-query attention ("group") or h % Hkv for the tiled order ("tile"). Packed sequences
(`doc` given) keep only the keys j with doc[b, j] == doc[b, P + i]; a key mask (`keys` given) only
the keys j with keys[b, j], and a query that sees no key then gets a NaN row (as eager with -inf).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def cumlog(log_f: Tensor, dim: int = -1) -> Tensor:
    """lam_t = sum_{l <= t} log_f_l along `dim`, accumulated in fp64 with a plain loop."""
    x = log_f.double().movedim(dim, -1)
    out = torch.empty_like(x)
    acc = torch.zeros_like(x[..., 0])
    for t in range(x.shape[-1]):
        acc = acc + x[..., t]
        out[..., t] = acc
    return out.movedim(-1, dim)


def kv_head(h: int, heads: int, kv_heads: int, gqa: str = "group") -> int:
    if heads % kv_heads:
        raise ValueError(f"{heads} query heads do not divide into {kv_heads} kv heads")
    if gqa == "group":
        return h // (heads // kv_heads)
    if gqa == "tile":
        return h % kv_heads
    raise ValueError(gqa)


def fox_reference(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    lam: Tensor | None,
    scale: float | None = None,
    *,
    gqa: str = "group",
    doc: Tensor | None = None,
    keys: Tensor | None = None,
) -> Tensor:
    """Naive forgetting attention in fp64.

    q: (B, H, M, D); k: (B, Hkv, N, D); v: (B, Hkv, N, Dv); lam: cumulative log forget gate over
    the N positions, anything broadcastable to (B, H, N), or None for no decay. scale defaults to
    D ** -0.5. doc: document ids of the N positions, (N,) or (B, N), or None. keys: which of the
    N keys may be attended, bool (N,) or (B, N), or None for all. Returns
    (B, H, M, Dv) in fp64.
    """
    q, k, v = q.double(), k.double(), v.double()
    B, H, M, D = q.shape
    Bk, Hkv, N, Dk = k.shape
    if Dk != D or v.shape[:3] != (Bk, Hkv, N) or Bk != B:
        raise ValueError(f"shapes q{tuple(q.shape)} k{tuple(k.shape)} v{tuple(v.shape)}")
    if M > N:
        raise ValueError("more queries than keys")
    if scale is None:
        scale = 1.0 / math.sqrt(D)
    if lam is None:
        lam = torch.zeros(B, H, N, dtype=torch.float64)
    lam = lam.double().expand(B, H, N)
    P = N - M
    doc = torch.zeros(B, N, dtype=torch.long) if doc is None else doc.expand(B, N)
    keys = torch.ones(B, N, dtype=torch.bool) if keys is None else keys.expand(B, N)
    out = torch.zeros(B, H, M, v.shape[-1], dtype=torch.float64)
    for b in range(B):
        for h in range(H):
            g = kv_head(h, H, Hkv, gqa)
            for i in range(M):
                last = P + i  # keys 0..last of the query's own document are visible
                seen = [j for j in range(last + 1) if doc[b, j] == doc[b, last] and keys[b, j]]
                if not seen:
                    out[b, h, i] = math.nan
                    continue
                logits = []
                for j in seen:
                    logits.append(scale * float(q[b, h, i] @ k[b, g, j]) + float(lam[b, h, last] - lam[b, h, j]))
                top = max(logits)
                w = [math.exp(x - top) for x in logits]
                z = math.fsum(w)
                acc = torch.zeros(v.shape[-1], dtype=torch.float64)
                for j, wj in zip(seen, w):
                    acc = acc + (wj / z) * v[b, g, j]
                out[b, h, i] = acc
    return out


def is_nonincreasing(lam: Tensor, tol: float = 1e-12) -> bool:
    """True when lam never rises along its last axis (the ACP pruning precondition)."""
    d = lam.double().diff(dim=-1)
    return bool((d <= tol).all())
