"""float64 references for the peers' FoX kernels, and the CPU stand-ins for fla's Triton ops.

fla's Triton kernels do not run on a CPU (no Triton driver; its autotuner fails even under
TRITON_INTERPRET=1), so the "eager" side of the fla tests runs fla's own Python (its layer, its
model, its `parallel_forgetting_attn` wrapper: scale default, cu_seqlens checks) with the two
Triton calls underneath replaced by these: `parallel_attn` (fla.ops.attn.parallel, what
parallel_forgetting_attn calls) by `fox_reference_attn`, a float64 FoX attention with
cu_seqlens and window_size, and the MLP's `swiglu` by silu(x) * y.
"""
import torch
import torch.nn.functional as F


def fox_attention_reference(q, k, v, log_fgate, scale, *, doc=None, window=None,
                            key_valid=None, threshold=None):
    """o_i = sum_j softmax_j(scale q_i.k_j + lam_{P+i} - lam_j) v_j in float64, (B, H, T, D)
    layout, log_fgate (B, H, N) per step, queries the last M of N positions, GQA by h // G.
    doc (B, N) ids: only same-document keys; window W: only j > P + i - W; key_valid (B, N):
    only valid keys; threshold (B, H): pairs with lam_{P+i} - lam_j < threshold dropped (the
    FoX authors' ACP, never the diagonal). Rows with no key get 0. Returns float64."""
    batch, heads, m, _ = q.shape
    n, groups = k.shape[2], heads // k.shape[1]
    q, k, v = q.double(), k.double(), v.double()
    k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
    lam = torch.cumsum(log_fgate.double(), dim=-1)
    rows = torch.arange(n - m, n, device=q.device)[:, None]
    cols = torch.arange(n, device=q.device)[None, :]
    keep = (cols <= rows)[None, None]
    if window is not None:
        keep = keep & (cols > rows - window)[None, None]
    if doc is not None:
        keep = keep & (doc[:, None, n - m:, None] == doc[:, None, None, :])
    if key_valid is not None:
        keep = keep & key_valid[:, None, None, :]
    bias = lam[..., n - m:, None] - lam[..., None, :]
    if threshold is not None:
        thr = torch.as_tensor(threshold, dtype=torch.float64, device=q.device)
        thr = thr.expand(batch, heads)[..., None, None]
        keep = keep & ((bias >= thr) | (cols == rows)[None, None])
    scores = scale * q @ k.transpose(-1, -2) + bias
    scores = scores.masked_fill(~keep, float("-inf"))
    p = torch.softmax(scores, dim=-1).nan_to_num(0.0)
    return p @ v


def cu_seqlens_doc(cu_seqlens, length):
    """(T,) document id of each position of a packed sequence."""
    positions = torch.arange(length, device=cu_seqlens.device, dtype=cu_seqlens.dtype)
    return torch.searchsorted(cu_seqlens, positions, right=True) - 1


def fox_reference_attn(q, k, v, g=None, scale=None, window_size=None, cu_seqlens=None,
                       chunk_indices=None, *, sink_bias=None):
    """Stand-in for fla.ops.attn.parallel.parallel_attn on the CPU: q (B, T, HQ, K), k, v
    (B, T, H, *), g (B, T, HQ) per-step log gates (restarting in each cu_seqlens sequence, as
    fla's chunk_global_cumsum does), output (B, T, HQ, V) in q's dtype."""
    assert sink_bias is None
    if scale is None:
        scale = k.shape[-1] ** -0.5
    qh, kh, vh = (x.transpose(1, 2) for x in (q, k, v))
    gates = torch.zeros(q.shape[:3], dtype=torch.float64) if g is None else g
    doc = None
    if cu_seqlens is not None:
        doc = cu_seqlens_doc(cu_seqlens, q.shape[1])[None].expand(q.shape[0], -1)
    out = fox_attention_reference(qh, kh, vh, gates.transpose(1, 2), scale, doc=doc,
                                  window=window_size)
    return out.transpose(1, 2).to(q.dtype)


def swiglu_reference(x, y):
    return F.silu(x) * y
