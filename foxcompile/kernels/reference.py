"""Blockwise pure-PyTorch forgetting attention: the reference the Triton kernels are checked
against, and the engine wherever they cannot run (CPU, float64, unsupported head dims).

It walks query blocks of BLOCK_M rows and skips exactly the key tiles the Triton kernels skip
(plan.start_blocks), so pruned results agree tile for tile. Memory is O(BLOCK_M x N) per (b, h),
never N x N. Arithmetic is float32, or float64 for float64 inputs (gradcheck).

Shapes as in plan.py: q (B, Hq, M, D); k, v (B, Hk, N, D); lam (B, Hq, N); any strides.
doc (B, N) integer document ids or None: with it, query i sees key j only when doc[P+i] == doc[j].
"""
import torch

from ..contract import accumulator
from .plan import Plan


def _expand_heads(x: torch.Tensor, q_heads: int, dtype: torch.dtype) -> torch.Tensor:
    """(B, Hk, N, D) -> (B, Hq, N, D): query head h reads key head h // G."""
    return x.to(dtype).repeat_interleave(q_heads // x.shape[1], dim=1)


def _sum_groups(x: torch.Tensor, kv_heads: int) -> torch.Tensor:
    """(B, Hq, N, D) -> (B, Hk, N, D), summing each group of G query heads."""
    batch, q_heads, n, d = x.shape
    return x.view(batch, kv_heads, q_heads // kv_heads, n, d).sum(dim=2)


def _block_scores(q_blk, k_all, lam, rows, start_blk, scale, block_n, offset, doc):
    """Scores of query rows [row_lo, row_hi) against keys [key_lo, key_hi), with the causal mask,
    the document mask (doc not None) and the pruned tiles set to -inf. Returns (scores (B, H, R,
    K), key_lo, key_hi)."""
    row_lo, row_hi = rows
    abs_rows = offset + torch.arange(row_lo, row_hi, device=q_blk.device)  # (R,)
    key_hi = offset + row_hi
    # On the CPU a host read is free: start at the first key block any (b, h) computes.
    key_lo = int(start_blk.min()) * block_n if not start_blk.is_cuda else 0
    keys = torch.arange(key_lo, key_hi, device=q_blk.device)
    s = torch.matmul(q_blk, k_all[:, :, key_lo:key_hi].transpose(-2, -1)) * scale
    s = s + lam[..., abs_rows, None] - lam[..., None, key_lo:key_hi]
    dropped = keys[None, :] > abs_rows[:, None]                           # causal (R, K)
    if doc is not None:
        dropped = dropped | (doc[:, abs_rows, None] != doc[:, None, key_lo:key_hi])[:, None]
    pruned = (keys // block_n)[None, None, :] < start_blk[..., None].to(keys.dtype)  # (B, H, K)
    s = s.masked_fill(dropped | pruned[..., None, :], float("-inf"))
    return s, key_lo, key_hi


def forward(q, k, v, lam, plan: Plan, scale: float, out: torch.Tensor, doc=None) -> torch.Tensor:
    """Writes out (B, Hq, M, D), any strides, and returns lse (B, Hq, M) float32 (float64 for
    float64 inputs): the natural log of each row's normaliser."""
    acc = accumulator(q.dtype)
    batch, q_heads, n_queries = q.shape[:3]
    n_keys = k.shape[2]
    offset = n_keys - n_queries
    k_all, v_all = _expand_heads(k, q_heads, acc), _expand_heads(v, q_heads, acc)
    lam = lam.to(acc)
    lse = torch.empty(batch, q_heads, n_queries, dtype=acc, device=q.device)
    for m in range(plan.start.shape[-1]):
        rows = slice(m * plan.block_m, min((m + 1) * plan.block_m, n_queries))
        s, key_lo, key_hi = _block_scores(q[:, :, rows].to(acc), k_all, lam, (rows.start, rows.stop),
                                          plan.start[..., m], scale, plan.block_n, offset, doc)
        row_lse = torch.logsumexp(s, dim=-1)
        p = torch.exp(s - row_lse[..., None])
        out[:, :, rows] = torch.matmul(p, v_all[:, :, key_lo:key_hi])
        lse[:, :, rows] = row_lse
    return lse


def backward(grad_out, q, k, v, lam, out, lse, plan: Plan, scale: float,
             dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, doc=None) -> torch.Tensor:
    """Gradients of the pruned forward: writes dq, dk, dv (shapes of q, k, v, any strides) and
    returns dlam (B, Hq, N) float32 (float64 for float64 inputs): dlam_t = (row sum of dS of the
    query at t) - (column sum of dS at key t). The row sums vanish analytically (softmax is blind
    to a query-only bias) but keep sum_t dlam_t exactly zero under rounding."""
    acc = accumulator(q.dtype)
    batch, q_heads, n_queries, _ = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    offset = n_keys - n_queries
    k_all, v_all = _expand_heads(k, q_heads, acc), _expand_heads(v, q_heads, acc)
    lam = lam.to(acc)
    grad_out = grad_out.to(acc)
    row_dot = (grad_out * out.to(acc)).sum(-1)                             # (B, H, M)
    dk_all = torch.zeros_like(k_all)
    dv_all = torch.zeros_like(v_all)
    dlam = torch.zeros(batch, q_heads, n_keys, dtype=acc, device=q.device)
    for m in range(plan.start.shape[-1]):
        rows = slice(m * plan.block_m, min((m + 1) * plan.block_m, n_queries))
        q_blk = q[:, :, rows].to(acc)
        s, key_lo, key_hi = _block_scores(q_blk, k_all, lam, (rows.start, rows.stop),
                                          plan.start[..., m], scale, plan.block_n, offset, doc)
        p = torch.exp(s - lse[:, :, rows, None].to(acc))
        do_blk = grad_out[:, :, rows]
        dv_all[:, :, key_lo:key_hi] += torch.matmul(p.transpose(-2, -1), do_blk)
        dp = torch.matmul(do_blk, v_all[:, :, key_lo:key_hi].transpose(-2, -1))
        ds = p * (dp - row_dot[:, :, rows, None])
        dq[:, :, rows] = torch.matmul(ds, k_all[:, :, key_lo:key_hi]) * scale
        dk_all[:, :, key_lo:key_hi] += torch.matmul(ds.transpose(-2, -1), q_blk) * scale
        dlam[..., key_lo:key_hi] -= ds.sum(dim=-2)
        dlam[..., offset + rows.start:offset + rows.stop] += ds.sum(dim=-1)
    dk.copy_(_sum_groups(dk_all, kv_heads))
    dv.copy_(_sum_groups(dv_all, kv_heads))
    return dlam
