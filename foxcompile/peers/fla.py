"""flash-linear-attention's `fla.ops.forgetting_attn.parallel.parallel_forgetting_attn`.

    parallel_forgetting_attn(q, k, v, g, scale=None, window_size=None, cu_seqlens=None)

What it computes (fla 0.6.0; `fla.ops.forgetting_attn.naive.naive_forgetting_attn` is its
reference): q (B, T, HQ, K), k (B, T, H, K), v (B, T, H, V), g (B, T, HQ) the *per-step* log
forget gates (its layer passes `F.logsigmoid(f_proj(x).float())`); query head hq reads key head
hq // (HQ // H) (GQA); scale defaults to K ** -0.5;

    o[b, i, hq] = sum_{j <= i} softmax_j(scale q_i.k_j + G[i] - G[j]) v_j,   G = cumsum_t g

returned as (B, T, HQ, V) in q's dtype. `cu_seqlens` (N + 1,) = [0, l1, l1 + l2, ...] packs N
sequences along T with B = 1 (the gate sum restarts in each); `window_size` W keeps only keys
j > i - W. It calls `fla.ops.attn.parallel.parallel_attn`, an autograd.Function over Triton
kernels whose gate cumsum (`chunk_global_cumsum`) is wrapped in torch.compiler.disable: Dynamo
breaks the graph there, so fox_acp would never see the attention without the polyfill below.

Mapping onto foxcompile::attention: layout "bthd" (q, k, v as they are, GQA included: the op
reads head h // G too), lam = cumsum(g) in fp32 along T, scale as given or K ** -0.5, and
cu_seqlens as document ids doc[t] = searchsorted(cu_seqlens, t, right=True) - 1 (on the device,
no host sync). A global cumsum equals fla's per-sequence one on every visible pair: both ends of
a pair lie in one sequence, where the two differ by a constant.

Declined (the call then runs fla's own kernel, as without foxcompile), with the reason: a
window (the op has no sliding window yet), and whatever fla itself would reject (cu_seqlens with
B != 1, HQ not a multiple of H, q and k of different lengths, K > 256), an unsupported dtype,
and on CUDA a head dim outside the kernels' 16..256.
"""
import torch

from ..contract import MAX_HEAD_DIM, MIN_HEAD_DIM
from . import trace

MODULE = "fla.ops.forgetting_attn.parallel"
NAME = "parallel_forgetting_attn"
KIND = "fla parallel_forgetting_attn call"
_MAX_FLA_HEAD_DIM = 256


def decline_reason(q, k, v, g, scale, window_size, cu_seqlens) -> str | None:
    """Traced: why the op cannot stand in for this call, or None."""
    if window_size is not None:
        return (f"sliding window (window_size={window_size}): foxcompile's op has no window "
                f"yet; fla's kernel runs it")
    common = trace.common_decline(q, k, v, g, "g", scale, "scale")
    if common is not None:
        return common
    if k.shape[:3] != v.shape[:3] or q.shape[0] != k.shape[0] or q.shape[1] != k.shape[1]:
        return "q, k, v do not share (B, T), or k and v their heads (fla's kernel needs that)"
    if k.shape[2] == 0 or q.shape[2] % k.shape[2] != 0:
        return "query heads are not a multiple of key/value heads (fla raises)"
    if g.shape != q.shape[:3]:
        return "g is not (B, T, HQ)"
    if q.shape[3] != k.shape[3]:
        return "q and k have different head dims"
    if q.shape[3] > _MAX_FLA_HEAD_DIM:
        return "head dim above 256 (fla's kernel rejects it)"
    if cu_seqlens is not None:
        if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dim() != 1:
            return "cu_seqlens is not a 1-D tensor"
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            return "cu_seqlens is not int32/int64"
        if q.shape[0] != 1:
            return "cu_seqlens with batch size != 1 (fla raises)"
    if q.device.type == "cuda":
        for dim in (q.shape[3], v.shape[3]):
            if not MIN_HEAD_DIM <= dim <= MAX_HEAD_DIM:
                return f"head dim outside the kernels' {MIN_HEAD_DIM}..{MAX_HEAD_DIM}"
    return None


def document_ids(cu_seqlens: torch.Tensor, length: int, device) -> torch.Tensor:
    """Traced: (T,) int64 id of the packed sequence each position belongs to."""
    positions = torch.arange(length, device=device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, positions, right=True) - 1


def _mapped(q, k, v, g, scale, window_size, cu_seqlens):
    """Traced: the op's output for this call under a foxcompile backend, else None (the caller
    then calls fla's function)."""
    site = trace.call_site(KIND)
    if not site:
        return None
    reason = decline_reason(q, k, v, g, scale, window_size, cu_seqlens)
    if reason is not None:
        trace.decline(site, reason)
        return None
    notes, doc = "", None
    if cu_seqlens is not None:
        doc = document_ids(cu_seqlens, q.shape[1], q.device)
        notes = trace.NOTES + "cu_seqlens as document ids (packed sequences)"
    if q.shape[2] != k.shape[2]:
        notes = notes + trace.NOTES + "grouped query heads"
    if scale is None:
        scale = k.shape[-1] ** -0.5
    return trace.emit(site, notes, q, k, v, g, float(scale), "bthd", doc)


def make_polyfill(passthrough):
    """The function Dynamo traces instead of fla's, with fla's exact signature."""

    def parallel_forgetting_attn(q, k, v, g, scale=None, window_size=None, cu_seqlens=None):
        out = _mapped(q, k, v, g, scale, window_size, cu_seqlens)
        if out is not None:
            return out
        return passthrough(q, k, v, g, scale=scale, window_size=window_size,
                           cu_seqlens=cu_seqlens)

    return parallel_forgetting_attn
