"""The operator's definition, written the obvious T x T way: the spec every engine is tested
against (in float64). Not used to run models.

Shapes as in plan.py: q (B, Hq, M, D); k, v (B, Hk, N, D); lam (B, Hq, N); M <= N, query i at
absolute position P + i with P = N - M; query head h reads key head h // (Hq // Hk). doc (B or 1,
N) integer document ids of the key positions, or None: with it, query i sees key j only when
doc[P+i] == doc[j] too (packed sequences).
"""
import torch


def forgetting_attention(q, k, v, lam, scale: float, doc=None) -> torch.Tensor:
    """softmax_j(scale q_i.k_j + lam[P+i] - lam[j], j <= P+i and doc[P+i] == doc[j]) v_j,
    unpruned, in q's dtype."""
    q_heads, n_queries, n_keys = q.shape[1], q.shape[2], k.shape[2]
    offset = n_keys - n_queries
    group = q_heads // k.shape[1]
    k = k.repeat_interleave(group, dim=1)
    v = v.repeat_interleave(group, dim=1)
    scores = torch.matmul(q, k.transpose(-2, -1)) * scale
    scores = scores + lam[..., offset:, None] - lam[..., None, :]
    rows = torch.arange(n_queries, device=q.device)[:, None] + offset
    cols = torch.arange(n_keys, device=q.device)[None, :]
    hidden = cols > rows                                                  # (M, N)
    if doc is not None:
        hidden = hidden | (doc[:, offset:, None] != doc[:, None, :])[:, None]  # (B, 1, M, N)
    scores = scores.masked_fill(hidden, float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)
