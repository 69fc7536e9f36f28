"""The FoX authors' kernel: `forgetting_transformer.ops.forgetting_attention.forgetting_attention`
(github zhixuan-lin/forgetting-transformer, not on PyPI; its layer and model call it).

    forgetting_attention(q, k, v, log_fgate, *, head_first=False, seq_start=None, sm_scale=None)
    forgetting_attention(..., sm_scale=None, adaptive_threshold=None)     # with the authors' ACP

What it computes: q (B, M, H, D), k and v (B, N, H, D), log_fgate (B, N, H), the *per-step* log
forget gates (typically `F.logsigmoid(fgate_proj(x).float())`), or with head_first=True
q (B, H, M, D), k, v (B, H, N, D), log_fgate (B, H, N). M <= N, the queries being the last M
positions (P = N - M). sm_scale defaults to D ** -0.5. lam = cumsum(log_fgate) in fp32 and

    o_i = sum_{j <= P + i} softmax_j(sm_scale q_i.k_j + lam[P + i] - lam[j]) v_j

in q's layout and dtype. seq_start (B,) int64 marks left padding: for batch b, keys j <
seq_start[b] get no attention from any query, and their gates are set to 0 before the cumsum (so
they do not touch lam). adaptive_threshold (the ACP version) is the authors' pruning threshold
delta on lam[P + i] - lam[j], a tensor (B, H) the caller computes from its own tolerance and a
bound of the logits (their README: delta = -(2 U + log N) + log eps).

Mapping onto foxcompile::attention: layout "bthd" (head_first=False) or "bhtd" (True), lam =
cumsum(log_fgate) in fp32 along the keys, sm_scale as given or D ** -0.5, and seq_start as
document ids doc[b, j] = (j >= seq_start[b]) with the padded keys' gates zeroed: a query of the
sequence sees only its keys (the padded queries, whose outputs a model ignores, see the padding
instead of nothing, and stay finite). adaptive_threshold is superseded: foxcompile's op derives
its own delta on the device from fox.epsilon with the same bound (design.md), so the site is
pruned with `fox.epsilon` (default e^-10, the authors' recommended tolerance); the report notes it.

Declined, with the reason (the authors' kernel then runs, as without foxcompile): what their
kernel asserts against (head dims of q, k, v not equal or not in {16, 32, 64, 128}, grouped
heads H != Hk, more queries than keys, log_fgate or seq_start of the wrong shape), an unsupported
dtype, and on CUDA a head dim outside foxcompile's kernels' 16..256.
"""
import torch

from ..contract import MAX_HEAD_DIM, MIN_HEAD_DIM
from . import trace

MODULE = "forgetting_transformer.ops.forgetting_attention"
NAME = "forgetting_attention"
KIND = "FoX authors' forgetting_attention call"
_AUTHORS_HEAD_DIMS = (16, 32, 64, 128)


def decline_reason(q, k, v, log_fgate, head_first, seq_start, sm_scale) -> str | None:
    """Traced: why the op cannot stand in for this call, or None."""
    common = trace.common_decline(q, k, v, log_fgate, "log_fgate", sm_scale, "sm_scale")
    if common is not None:
        return common
    if head_first not in (True, False):
        return "head_first is not a Python bool"
    t_dim, h_dim = (2, 1) if head_first else (1, 2)
    if q.shape[3] != k.shape[3] or k.shape[3] != v.shape[3]:
        return "q, k, v have different head dims (the authors' kernel asserts them equal)"
    if q.shape[3] not in _AUTHORS_HEAD_DIMS:
        return "head dim not in {16, 32, 64, 128} (the authors' kernel asserts it)"
    if k.shape != v.shape or q.shape[0] != k.shape[0]:
        return "k and v differ in shape, or q and k in batch size"
    if q.shape[h_dim] != k.shape[h_dim]:
        return "grouped query heads (the authors' kernel asserts H == Hk)"
    if q.shape[t_dim] > k.shape[t_dim]:
        return "more queries than keys (the authors' kernel asserts M <= N)"
    gate_shape = ((k.shape[0], q.shape[1], k.shape[2]) if head_first
                  else (k.shape[0], k.shape[1], q.shape[2]))
    if log_fgate.shape != gate_shape:
        return "log_fgate is not (B, N, H) (or (B, H, N) with head_first)"
    if seq_start is not None:
        if not isinstance(seq_start, torch.Tensor) or seq_start.shape != (q.shape[0],):
            return "seq_start is not a (B,) tensor"
        if seq_start.is_floating_point():
            return "seq_start is not an integer tensor"
    if q.device.type == "cuda" and not MIN_HEAD_DIM <= q.shape[3] <= MAX_HEAD_DIM:
        return f"head dim outside the kernels' {MIN_HEAD_DIM}..{MAX_HEAD_DIM}"
    return None


def _mapped(q, k, v, log_fgate, head_first, seq_start, sm_scale, adaptive_threshold):
    """Traced: the op's output for this call under a foxcompile backend, else None (the caller
    then calls the authors' function)."""
    site = trace.call_site(KIND)
    if not site:
        return None
    reason = decline_reason(q, k, v, log_fgate, head_first, seq_start, sm_scale)
    if reason is not None:
        trace.decline(site, reason)
        return None
    layout = "bhtd" if head_first else "bthd"
    notes, doc = "", None
    if seq_start is not None:
        n_keys = k.shape[2] if head_first else k.shape[1]
        padded = torch.arange(n_keys, device=k.device)[None, :] < seq_start[:, None]   # (B, N)
        log_fgate = log_fgate.masked_fill(
            padded[:, None, :] if head_first else padded[:, :, None], 0.0)
        doc = torch.logical_not(padded).to(torch.int64)
        notes = trace.NOTES + "seq_start as left padding (document ids)"
    if adaptive_threshold is not None:
        notes = notes + trace.NOTES + "adaptive_threshold superseded: pruned with fox.epsilon"
    scale = q.shape[-1] ** -0.5 if sm_scale is None else sm_scale
    return trace.emit(site, notes, q, k, v, log_fgate, float(scale), layout, doc)


def make_polyfill(passthrough):
    """The function Dynamo traces instead of the authors', with their exact signature (with
    or without adaptive_threshold, as the installed version has it)."""
    import inspect
    if "adaptive_threshold" in inspect.signature(passthrough).parameters:

        def forgetting_attention(q, k, v, log_fgate, *, head_first=False, seq_start=None,
                                 sm_scale=None, adaptive_threshold=None):
            out = _mapped(q, k, v, log_fgate, head_first, seq_start, sm_scale,
                          adaptive_threshold)
            if out is not None:
                return out
            return passthrough(q, k, v, log_fgate, head_first=head_first, seq_start=seq_start,
                               sm_scale=sm_scale, adaptive_threshold=adaptive_threshold)
    else:

        def forgetting_attention(q, k, v, log_fgate, *, head_first=False, seq_start=None,
                                 sm_scale=None):
            out = _mapped(q, k, v, log_fgate, head_first, seq_start, sm_scale, None)
            if out is not None:
                return out
            return passthrough(q, k, v, log_fgate, head_first=head_first, seq_start=seq_start,
                               sm_scale=sm_scale)

    return forgetting_attention
