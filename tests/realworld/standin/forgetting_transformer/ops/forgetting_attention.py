"""Stand-in for `forgetting_transformer.ops.forgetting_attention` (the FoX authors' Triton
kernel), in pure PyTorch with their signature, semantics and assertions:

    forgetting_attention(q, k, v, log_fgate, *, head_first=False, seq_start=None, sm_scale=None,
                         adaptive_threshold=None)

q (B, M, H, D), k, v (B, N, H, D), log_fgate (B, N, H) per-step log forget gates, or (B, H, *, *)
and (B, H, N) with head_first; M <= N (queries are the last M positions); sm_scale defaults to
D ** -0.5; seq_start (B,): keys before seq_start[b] get no attention and their gates are zeroed
before the cumsum (left padding); adaptive_threshold (B, H): the authors' ACP threshold delta,
pairs with lam_i - lam_j < delta are dropped. Output in q's layout and dtype (computed in
float64, where their kernel accumulates in float32).
"""
import math

import torch

CALLS = [0]   # how often this function ran (eagerly, or at run time after a graph break)


def forgetting_attention(q, k, v, log_fgate, *, head_first=False, seq_start=None, sm_scale=None,
                         adaptive_threshold=None):
    CALLS[0] += 1
    if not head_first:
        q, k, v = (x.transpose(1, 2) for x in (q, k, v))
        log_fgate = log_fgate.transpose(1, 2)
    batch, heads, m, dim = q.shape
    n = k.shape[2]
    assert q.shape[-1] == k.shape[-1] == v.shape[-1], "feature size of q, k, v should be equal"
    assert dim in {16, 32, 64, 128}, "We only support head dims in {16, 32, 64, 128}"
    assert k.shape[1] == v.shape[1] == heads, "groupped query attention has not been tested"
    assert m <= n, "The key/value tensors must be longer than the query tensor"
    assert log_fgate.shape == (batch, heads, n)
    gates = log_fgate.double()   # float64 throughout: the tests' eager side is exact
    cols = torch.arange(n, device=q.device)
    if seq_start is not None:
        assert seq_start.shape == (batch,)
        gates = gates.masked_fill(cols[None, None, :] < seq_start[:, None, None], 0.0)
    lam = torch.cumsum(gates, dim=-1)
    if sm_scale is None:
        sm_scale = 1.0 / math.sqrt(dim)
    rows = torch.arange(n - m, n, device=q.device)[:, None]
    bias = lam[..., n - m:, None] - lam[..., None, :]
    keep = (cols[None, :] <= rows)[None, None]
    if seq_start is not None:
        keep = keep & (cols[None, None, None, :] >= seq_start[:, None, None, None])
    if adaptive_threshold is not None:
        delta = torch.as_tensor(adaptive_threshold, dtype=bias.dtype, device=q.device)
        keep = keep & ((bias >= delta.expand(batch, heads)[..., None, None])
                       | (cols[None, :] == rows)[None, None])
    scores = sm_scale * (q.double() @ k.double().transpose(-1, -2)) + bias
    p = torch.softmax(scores.masked_fill(~keep, float("-inf")), dim=-1).nan_to_num(0.0)
    out = (p @ v.double()).to(q.dtype)
    return out if head_first else out.transpose(1, 2)
