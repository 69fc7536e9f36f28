"""Forgetting attention written the way different codebases write it. Every case must be rewritten.

Each model is written as its own little codebase would write it (on purpose: no shared attention
helper); the reference hooks below each one restate, in canonical (B, H, T, D) form, what it computes.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from . import Case, Ref
from .reference import cumlog, fox_reference

F64 = torch.float64
LOG2E = 1.4426950408889634


def _randn(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=dtype) * scale


def _gate(*shape, dtype):
    """Forget-gate logits: logsigmoid of these spans about -4..0, so lam falls by ~0.5 a step."""
    return torch.randn(*shape, dtype=dtype) * 1.5 + 1.0


def _lam_data(*shape, dtype):
    """An already-cumulative lam, as a cache or an upstream op would hand it in (non-increasing)."""
    return torch.cumsum(F.logsigmoid(_gate(*shape, dtype=dtype)), dim=-1)


def _heads_first(x):  # (B, T, H, D) -> (B, H, T, D)
    return x.transpose(1, 2)


def _logsig_lam(g, dim=-1):
    return cumlog(F.logsigmoid(g.double()), dim=dim)


# ---------------------------------------------------------------------------------------------
# 1. The FoX paper's own layout: (B, T, H, D) projections, gate from linear(x).float(), cumsum over
#    dim 1 then transposed, c[..., :, None] - c[..., None, :], masked_fill(~tril), .softmax(-1), @.
class FoxPaperAttention(nn.Module):
    def __init__(self, hidden_size=32, num_heads=2, head_dim=16):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, head_dim
        self.q_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden_size, num_heads * head_dim, bias=False)
        self.fgate_proj = nn.Linear(hidden_size, num_heads, bias=True)
        self.o_proj = nn.Linear(num_heads * head_dim, hidden_size, bias=False)

    def forward(self, hidden_states):
        B, T, _ = hidden_states.shape
        q = self.q_proj(hidden_states).view(B, T, self.num_heads, self.head_dim)
        k = self.k_proj(hidden_states).view(B, T, self.num_heads, self.head_dim)
        v = self.v_proj(hidden_states).view(B, T, self.num_heads, self.head_dim)
        log_fgate = F.logsigmoid(self.fgate_proj(hidden_states).float())  # (B, T, H)
        log_lambda = torch.cumsum(log_fgate, dim=1).transpose(1, 2)  # (B, H, T)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))
        scores = q @ k.transpose(-2, -1) * (self.head_dim**-0.5)
        scores = scores + (log_lambda[..., :, None] - log_lambda[..., None, :]).to(scores.dtype)
        causal = torch.ones(T, T, dtype=torch.bool, device=hidden_states.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        attn = scores.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(B, T, self.num_heads * self.head_dim)
        return self.o_proj(out)


def build_fox_paper(dtype):
    m = FoxPaperAttention().to(dtype)
    return m, (_randn(2, 21, 32, dtype=dtype),)


def ref_fox_paper(m, inputs):
    (x,) = inputs
    B, T, _ = x.shape
    H, D = m.num_heads, m.head_dim
    q, k, v = (_heads_first(p(x).view(B, T, H, D)) for p in (m.q_proj, m.k_proj, m.v_proj))
    lam = _logsig_lam(m.fgate_proj(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam, D**-0.5)
    return Ref(m.o_proj(o.transpose(1, 2).reshape(B, T, H * D)), [lam])


# ---------------------------------------------------------------------------------------------
# 2. An attention-core function in (B, H, T, D): .mT, / math.sqrt(d), bias added in two steps,
#    masked_fill(triu(ones, 1).bool()), F.softmax, torch.matmul.
def fox_attn_bhtd(q, k, v, fgate_logit):
    d = q.shape[-1]
    log_f = F.logsigmoid(fgate_logit)  # (B, H, T)
    lam = torch.cumsum(log_f, dim=-1)
    s = (q @ k.mT) / math.sqrt(d)
    s = s + lam.unsqueeze(-1) - lam.unsqueeze(-2)
    T = q.shape[-2]
    future = torch.triu(torch.ones(T, T, device=q.device), diagonal=1).bool()
    s = s.masked_fill(future, float("-inf"))
    p = F.softmax(s, dim=-1)
    return torch.matmul(p, v)


def build_bhtd_mT(dtype):
    B, H, T, D = 2, 3, 17, 12
    return fox_attn_bhtd, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


def ref_bhtd_qkvg(fn, inputs, scale=None):
    q, k, v, g = inputs
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, scale), [lam])


# ---------------------------------------------------------------------------------------------
# 3. Flattened heads (B*H, T, D) with bmm, q pre-scaled by d ** -0.5, an additive -inf mask kept as
#    a registered buffer and sliced [:T, :T].
class FlatHeadsForget(nn.Module):
    def __init__(self, max_len=64):
        super().__init__()
        self.register_buffer("neg_mask", torch.full((max_len, max_len), float("-inf")).triu(1))

    def forward(self, q, k, v, g):  # q, k, v: (B*H, T, D); g: (B*H, T)
        T, d = q.shape[1], q.shape[2]
        q = q * d**-0.5
        c = F.logsigmoid(g).cumsum(dim=1)
        s = torch.bmm(q, k.transpose(1, 2))
        s = s + (c[:, :, None] - c[:, None, :]) + self.neg_mask[:T, :T]
        p = torch.softmax(s, dim=-1)
        return torch.bmm(p, v)


def build_flat_bmm(dtype):
    BH, T, D = 6, 19, 8
    m = FlatHeadsForget().to(dtype)
    return m, (
        _randn(BH, T, D, dtype=dtype),
        _randn(BH, T, D, dtype=dtype),
        _randn(BH, T, D, dtype=dtype),
        _gate(BH, T, dtype=dtype),
    )


def ref_flat(fn, inputs, lam_of=None, scale=None):
    q, k, v, g = inputs
    lam = (_logsig_lam(g) if lam_of is None else lam_of(g))[None]
    o = fox_reference(q[None], k[None], v[None], lam, scale)[0]
    return Ref(o, [lam])


# ---------------------------------------------------------------------------------------------
# 4. baddbmm(bias, q, k^T, alpha=scale) with the mask baked into the bias; gate -softplus(-x).
def fox_baddbmm(q, k, v, g):  # (B*H, T, D), g: (B*H, T)
    n, T, d = q.shape
    log_f = -F.softplus(-g)
    c = torch.cumsum(log_f, dim=-1)
    bias = c.unsqueeze(2) - c.unsqueeze(1)
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril_()
    bias = bias.masked_fill(~causal, float("-inf"))
    s = torch.baddbmm(bias, q, k.transpose(1, 2), alpha=d**-0.5)
    return torch.bmm(s.softmax(-1), v)


def build_baddbmm(dtype):
    BH, T, D = 4, 23, 16
    return fox_baddbmm, (
        _randn(BH, T, D, dtype=dtype),
        _randn(BH, T, D, dtype=dtype),
        _randn(BH, T, D, dtype=dtype),
        _gate(BH, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 5. (B, T, H, D) everywhere with einsum "bqhd,bkhd->bhqk", cumsum over dim 1 then transposed,
#    torch.where(keep, s, -inf), einsum back to (B, T, H, D).
def fox_einsum_bthd(q, k, v, fg):
    scale = 1.0 / math.sqrt(q.shape[-1])
    log_f = F.logsigmoid(fg)  # (B, T, H)
    lam = log_f.cumsum(1).transpose(1, 2)  # (B, H, T)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * scale
    s = s + lam[:, :, :, None] - lam[:, :, None, :]
    T = q.shape[1]
    pos = torch.arange(T, device=q.device)
    keep = pos[:, None] >= pos[None, :]
    s = torch.where(keep, s, float("-inf"))
    p = s.softmax(dim=-1)
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def build_einsum_bthd(dtype):
    B, T, H, D = 2, 15, 4, 8
    return fox_einsum_bthd, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _gate(B, T, H, dtype=dtype),
    )


def ref_bthd_qkvg(fn, inputs, scale=None):
    q, k, v, g = inputs
    lam = _logsig_lam(g, dim=1).transpose(1, 2)
    o = fox_reference(_heads_first(q), _heads_first(k), _heads_first(v), lam, scale)
    return Ref(o.transpose(1, 2), [lam])


# ---------------------------------------------------------------------------------------------
# 6. lucidrains-style: einsum with spaced letters, gate clamp(-10, 0) of a projection, cumsum with
#    dtype=torch.float32, mask by triu(j - i + 1) filled with -finfo.max.
class ClampGateAttend(nn.Module):
    def __init__(self, dim=24, heads=2, dim_head=12):
        super().__init__()
        self.scale = dim_head**-0.5
        self.to_gate = nn.Linear(dim, heads)
        nn.init.normal_(self.to_gate.weight, std=0.5)
        nn.init.constant_(self.to_gate.bias, -1.0)

    def forward(self, x, q, k, v):  # x: (B, T, dim); q, k, v: (B, H, T, Dh)
        log_f = self.to_gate(x).clamp(-10.0, 0.0).transpose(1, 2)
        lam = torch.cumsum(log_f, dim=-1, dtype=torch.float32)
        sim = torch.einsum("b h i d, b h j d -> b h i j", q, k) * self.scale
        sim = sim + (lam[..., :, None] - lam[..., None, :])
        i, j = sim.shape[-2:]
        causal = torch.ones((i, j), dtype=torch.bool, device=x.device).triu(j - i + 1)
        sim = sim.masked_fill(causal, -torch.finfo(sim.dtype).max)
        attn = sim.softmax(dim=-1)
        return torch.einsum("b h i j, b h j d -> b h i d", attn, v)


def build_clamp_gate(dtype):
    B, T, H, D = 2, 13, 2, 12
    m = ClampGateAttend().to(dtype)
    return m, (
        _randn(B, T, 24, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
    )


def ref_clamp_gate(m, inputs):
    x, q, k, v = inputs
    lam = cumlog(m.to_gate(x).clamp(-10.0, 0.0).transpose(1, 2))
    return Ref(fox_reference(q, k, v, lam, m.scale), [lam])


# ---------------------------------------------------------------------------------------------
# 7. GQA by grouped einsum: q viewed as (B, T, Hkv, G, D), scores (B, Hkv, G, T, T).
def fox_grouped_einsum(q, k, v, fg):  # q: (B, T, H, D); k, v: (B, T, Hkv, D); fg: (B, T, H)
    B, T, H, D = q.shape
    Hkv = k.shape[2]
    G = H // Hkv
    q = q.view(B, T, Hkv, G, D)
    lam = F.logsigmoid(fg).cumsum(dim=1).view(B, T, Hkv, G).permute(0, 2, 3, 1)  # (B, Hkv, G, T)
    s = torch.einsum("bihgd,bjhd->bhgij", q, k) * D**-0.5
    s = s + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)), float("-inf"))
    p = torch.softmax(s, dim=-1)
    o = torch.einsum("bhgij,bjhd->bihgd", p, v)
    return o.reshape(B, T, H * D)


def build_grouped_einsum(dtype):
    B, T, H, Hkv, D = 2, 11, 4, 2, 8
    return fox_grouped_einsum, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, Hkv, D, dtype=dtype),
        _randn(B, T, Hkv, D, dtype=dtype),
        _gate(B, T, H, dtype=dtype),
    )


def ref_grouped_einsum(fn, inputs):
    q, k, v, fg = inputs
    B, T, H, D = q.shape
    lam = _logsig_lam(fg, dim=1).transpose(1, 2)
    o = fox_reference(_heads_first(q), _heads_first(k), _heads_first(v), lam)
    return Ref(o.transpose(1, 2).reshape(B, T, H * D), [lam])


# ---------------------------------------------------------------------------------------------
# 8. A GQA module: k[:, :, None].expand(...).reshape(...) (head h reads kv head h // G).
class GQAForgetAttention(nn.Module):
    def __init__(self, dim=32, heads=4, kv_heads=2, head_dim=8):
        super().__init__()
        self.h, self.kv, self.hd = heads, kv_heads, head_dim
        self.scale = head_dim**-0.5
        self.wq = nn.Linear(dim, heads * head_dim, bias=False)
        self.wk = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.wv = nn.Linear(dim, kv_heads * head_dim, bias=False)
        self.wf = nn.Linear(dim, heads)
        self.wo = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, x):
        B, T, _ = x.shape
        q = self.wq(x).view(B, T, self.h, self.hd).transpose(1, 2)
        k = self.wk(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        v = self.wv(x).view(B, T, self.kv, self.hd).transpose(1, 2)
        G = self.h // self.kv
        k = k[:, :, None].expand(B, self.kv, G, T, self.hd).reshape(B, self.h, T, self.hd)
        v = v[:, :, None].expand(B, self.kv, G, T, self.hd).reshape(B, self.h, T, self.hd)
        lf = F.logsigmoid(self.wf(x)).transpose(1, 2)  # (B, H, T)
        lam = lf.cumsum(-1)
        att = torch.matmul(q, k.transpose(2, 3)) * self.scale
        att = att + lam[..., None] - lam[..., None, :]
        mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool))
        att = att.masked_fill(mask.logical_not(), float("-inf"))
        att = F.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(B, T, -1)
        return self.wo(y)


def build_gqa_expand(dtype):
    m = GQAForgetAttention().to(dtype)
    return m, (_randn(2, 19, 32, dtype=dtype),)


def ref_gqa_expand(m, inputs):
    (x,) = inputs
    B, T, _ = x.shape
    q = _heads_first(m.wq(x).view(B, T, m.h, m.hd))
    k = _heads_first(m.wk(x).view(B, T, m.kv, m.hd))
    v = _heads_first(m.wv(x).view(B, T, m.kv, m.hd))
    lam = _logsig_lam(m.wf(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam, m.scale, gqa="group")
    return Ref(m.wo(o.transpose(1, 2).reshape(B, T, -1)), [lam])


# ---------------------------------------------------------------------------------------------
# 9. GQA by repeat_interleave; softmax(dtype=float32) then cast back.
def fox_gqa_repeat_interleave(q, k, v, fg):  # q: (B, H, T, D); k, v: (B, Hkv, T, D); fg: (B, H, T)
    G = q.size(1) // k.size(1)
    k = k.repeat_interleave(G, dim=1)
    v = v.repeat_interleave(G, dim=1)
    lam = torch.cumsum(F.logsigmoid(fg), -1)
    s = q.matmul(k.transpose(-1, -2)) * q.size(-1) ** -0.5
    s = s + (lam[..., :, None] - lam[..., None, :])
    T = q.size(2)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    p = torch.softmax(s, dim=-1, dtype=torch.float32).to(q.dtype)
    return p.matmul(v)


def build_gqa_ri(dtype):
    B, H, Hkv, T, D = 1, 4, 2, 25, 16
    return fox_gqa_repeat_interleave, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 10. GQA tiled with k.repeat(1, G, 1, 1): head h reads kv head h % Hkv. Gate -softplus(-x),
#     additive mask full(-inf).triu(1) built in the function.
def fox_gqa_tiled(q, k, v, g):
    H, Hkv = q.shape[1], k.shape[1]
    k = k.repeat(1, H // Hkv, 1, 1)
    v = v.repeat(1, H // Hkv, 1, 1)
    T = q.shape[2]
    lam = (-F.softplus(-g)).cumsum(dim=-1)
    mask = torch.full((T, T), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
    s = q @ k.transpose(-2, -1) * (1 / math.sqrt(q.shape[-1])) + mask
    s = s + lam[..., :, None] - lam[..., None, :]
    return torch.softmax(s, -1) @ v


def build_gqa_tiled(dtype):
    B, H, Hkv, T, D = 2, 4, 2, 9, 8
    return fox_gqa_tiled, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


def ref_gqa_tiled(fn, inputs):
    q, k, v, g = inputs
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, gqa="tile"), [lam])


# ---------------------------------------------------------------------------------------------
# 11. Multi-query: only k is expanded to H heads, v stays (B, 1, T, D) and broadcasts in p @ v.
def fox_mqa_k_only(q, k, v, g):
    H = q.shape[1]
    k = k.expand(-1, H, -1, -1)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    lam = F.logsigmoid(g).cumsum(-1)
    scores = scores + lam[..., :, None] - lam[..., None, :]
    T = scores.shape[-1]
    causal = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device))
    scores = scores.masked_fill(~causal, float("-inf"))
    probs = scores.softmax(dim=-1)
    return probs @ v


def build_mqa(dtype):
    B, H, T, D = 2, 3, 13, 12
    return fox_mqa_k_only, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, 1, T, D, dtype=dtype),
        _randn(B, 1, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 12. Decoding: one query against a cache; the cache holds lam; the new step's gate is appended.
def fox_decode_step(q, k_cache, v_cache, lam_cache, fg_new):
    # q: (B, H, 1, D); k_cache, v_cache: (B, H, N, D) incl. the new token; lam_cache: (B, H, N-1)
    lam_new = lam_cache[..., -1:] + F.logsigmoid(fg_new)  # (B, H, 1)
    lam = torch.cat([lam_cache, lam_new], dim=-1)  # (B, H, N)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k_cache) * q.shape[-1] ** -0.5
    s = s + (lam_new[..., None] - lam[..., None, :])
    p = s.softmax(-1)
    return torch.einsum("bhqk,bhkd->bhqd", p, v_cache)


def build_decode(dtype):
    B, H, N, D = 2, 2, 27, 16
    return fox_decode_step, (
        _randn(B, H, 1, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _lam_data(B, H, N - 1, dtype=dtype),
        _gate(B, H, 1, dtype=dtype),
    )


def ref_decode(fn, inputs):
    q, k, v, lam_cache, fg = inputs
    lam = torch.cat([lam_cache, lam_cache[..., -1:] + F.logsigmoid(fg)], dim=-1)
    return Ref(fox_reference(q, k, v, lam), [lam])


# ---------------------------------------------------------------------------------------------
# 13. Chunked prefill: M queries at the end of N keys; rows sliced [-M:], tril(diagonal=N-M).
def fox_prefill_chunk(q, k, v, fg):  # q: (B, H, M, D); k, v: (B, H, N, D); fg: (B, H, N)
    M, N = q.shape[-2], k.shape[-2]
    c = F.logsigmoid(fg).cumsum(-1)
    s = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)
    s = s + c[..., -M:, None] - c[..., None, :]
    keep = torch.tril(torch.ones(M, N, dtype=torch.bool, device=q.device), diagonal=N - M)
    s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


def build_prefill_chunk(dtype):
    B, H, M, N, D = 2, 2, 7, 23, 8
    return fox_prefill_chunk, (
        _randn(B, H, M, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _gate(B, H, N, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 13b. A Python loop over query chunks (chunked prefill in one call): chunk c attends keys
#      [0, end_c), rows of lam sliced per chunk, tril(diagonal=start_c); outputs concatenated.
def fox_query_chunk_loop(q, k, v, fg, chunk=16):  # q, k, v: (B, H, T, D); fg: (B, H, T)
    T = q.shape[2]
    lam = torch.cumsum(F.logsigmoid(fg), dim=-1)
    outs = []
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        s = torch.matmul(q[:, :, start:end], k[:, :, :end].transpose(-1, -2)) / math.sqrt(q.shape[-1])
        s = s + lam[:, :, start:end].unsqueeze(-1) - lam[:, :, :end].unsqueeze(-2)
        keep = torch.ones(end - start, end, dtype=torch.bool, device=q.device).tril(diagonal=start)
        s = torch.where(keep, s, torch.finfo(s.dtype).min)
        outs.append(torch.matmul(F.softmax(s, dim=-1), v[:, :, :end]))
    return torch.cat(outs, dim=2)


def ref_query_chunk_loop(fn, inputs, chunk=16):
    """The chunks together compute the whole sequence's attention; each site reads the same lam."""
    whole = ref_bhtd_qkvg(fn, inputs)
    return Ref(whole.output, whole.lams * math.ceil(inputs[0].shape[2] / chunk))


def build_query_chunk_loop(dtype):
    B, H, T, D = 2, 2, 41, 8
    return fox_query_chunk_loop, (_randn(B, H, T, D, dtype=dtype), _randn(B, H, T, D, dtype=dtype),
                                  _randn(B, H, T, D, dtype=dtype), _gate(B, H, T, dtype=dtype))


# 13c. A Python loop over equal segments (documents of a fixed length): each segment is its own
#      sequence, with its own cumsum, in (B, T, H, D) through einsum.
def fox_segment_loop(q, k, v, fg, segment=12):  # q, k, v: (B, T, H, D); fg: (B, T, H)
    T, D = q.shape[1], q.shape[-1]
    outs = []
    for start in range(0, T, segment):
        part = slice(start, min(start + segment, T))
        lam = F.logsigmoid(fg[:, part]).cumsum(1).transpose(1, 2)            # (B, H, L)
        s = torch.einsum("bihd,bjhd->bhij", q[:, part], k[:, part]) * D ** -0.5
        s = s + (lam[..., :, None] - lam[..., None, :])
        length = s.shape[-1]
        s = s.masked_fill(torch.triu(torch.ones(length, length, dtype=torch.bool, device=q.device), 1),
                          float("-inf"))
        outs.append(torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v[:, part]))
    return torch.cat(outs, dim=1)


def build_segment_loop(dtype):
    B, T, H, D = 2, 30, 2, 8
    return fox_segment_loop, (_randn(B, T, H, D, dtype=dtype), _randn(B, T, H, D, dtype=dtype),
                              _randn(B, T, H, D, dtype=dtype), _gate(B, T, H, dtype=dtype))


def ref_segment_loop(fn, inputs, segment=12):
    q, k, v, g = (x.transpose(1, 2) for x in inputs)  # (B, H, T, .)
    T = q.shape[2]
    outs, lams = [], []
    for start in range(0, T, segment):
        part = slice(start, min(start + segment, T))
        lam = _logsig_lam(g[..., part])
        outs.append(fox_reference(q[:, :, part], k[:, :, part], v[:, :, part], lam))
        lams.append(lam)
    return Ref(torch.cat(outs, dim=2).transpose(1, 2), lams)


# ---------------------------------------------------------------------------------------------
# 14. BLOOM-style ALiBi: key-only slope * j from a slopes buffer, alibi.baddbmm(q, k^T, alpha),
#     finfo.min mask, softmax in fp32 then cast. Slopes are tensor data: guarded.
class BloomAlibiCore(nn.Module):
    def __init__(self, num_heads=4, head_dim=8):
        super().__init__()
        self.num_heads = num_heads
        self.inv_norm_factor = 1.0 / math.sqrt(head_dim)
        slopes = torch.tensor([2 ** (-8.0 * (i + 1) / num_heads) for i in range(num_heads)])
        self.register_buffer("slopes", slopes)

    def forward(self, query_layer, key_layer, value_layer):  # (B*H, T, D)
        BH, T, _ = query_layer.shape
        batch = BH // self.num_heads
        pos = torch.arange(T, device=query_layer.device, dtype=query_layer.dtype)
        alibi = (self.slopes[:, None] * pos[None, :]).repeat(batch, 1)[:, None, :]  # (B*H, 1, T)
        scores = alibi.baddbmm(
            batch1=query_layer, batch2=key_layer.transpose(-1, -2), beta=1.0, alpha=self.inv_norm_factor
        )
        causal = torch.ones(T, T, dtype=torch.bool, device=query_layer.device).triu(1)
        scores = scores.masked_fill(causal, torch.finfo(scores.dtype).min)
        probs = F.softmax(scores, dim=-1, dtype=torch.float32).to(query_layer.dtype)
        return torch.bmm(probs, value_layer)


def build_bloom(dtype):
    B, H, T, D = 2, 4, 21, 8
    m = BloomAlibiCore(H, D).to(dtype)
    return m, tuple(_randn(B * H, T, D, dtype=dtype) for _ in range(3))


def ref_bloom(m, inputs):
    q, k, v = inputs
    BH, T, D = q.shape
    slopes = m.slopes.double().repeat(BH // m.num_heads)
    lam = (-slopes[:, None] * torch.arange(T, dtype=F64)[None, :])[None]  # lam_t = -slope * t
    o = fox_reference(q[None], k[None], v[None], lam, m.inv_norm_factor)[0]
    return Ref(o, [lam])


# ---------------------------------------------------------------------------------------------
# 15. ALiBi as a distance matrix -slope * (i - j) with one Python-float slope; torch.where mask.
class ScalarSlopeAlibi(nn.Module):
    def __init__(self, slope=0.375):
        super().__init__()
        self.slope = slope

    def forward(self, q, k, v):  # (B, H, T, D)
        T = q.shape[-2]
        i = torch.arange(T, device=q.device)[:, None]
        j = torch.arange(T, device=q.device)[None, :]
        dist = (i - j).to(q.dtype)
        s = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5 - self.slope * dist
        s = torch.where(i >= j, s, torch.full_like(s, float("-inf")))
        return torch.matmul(s.softmax(-1), v)


def build_alibi_scalar(dtype):
    B, H, T, D = 1, 3, 25, 12
    return ScalarSlopeAlibi(), tuple(_randn(B, H, T, D, dtype=dtype) for _ in range(3))


def ref_alibi_scalar(m, inputs):
    q, k, v = inputs
    lam = -m.slope * torch.arange(q.shape[-2], dtype=F64)
    return Ref(fox_reference(q, k, v, lam), [lam.expand(q.shape[0], q.shape[1], -1)])


# ---------------------------------------------------------------------------------------------
# 16. The scale applied to (QK + bias), which rescales the gate as well.
def fox_scale_on_sum(q, k, v, fg):
    lam = F.logsigmoid(fg).cumsum(-1)
    T = q.size(-2)
    logits = (q @ k.transpose(-1, -2) + lam[..., :, None] - lam[..., None, :]) / math.sqrt(q.size(-1))
    logits = logits.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    return logits.softmax(-1) @ v


def build_scale_on_sum(dtype):
    B, H, T, D = 2, 2, 29, 16
    return fox_scale_on_sum, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype) - 1.0,
    )


def ref_scale_on_sum(fn, inputs):
    q, k, v, g = inputs
    D = q.shape[-1]
    lam = _logsig_lam(g) / math.sqrt(D)
    return Ref(fox_reference(q, k, v, lam, 1 / math.sqrt(D)), [lam])


# ---------------------------------------------------------------------------------------------
# 17. SDPA with a float attn_mask = bias + full(-inf).triu(1), and an explicit scale=.
def fox_sdpa_scale(q, k, v, fg):
    T = q.shape[-2]
    lam = torch.cumsum(F.logsigmoid(fg), dim=-1)
    mask = torch.full((T, T), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
    bias = lam[..., :, None] - lam[..., None, :] + mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)


def build_sdpa_scale(dtype):
    B, H, T, D = 2, 2, 17, 16
    return fox_sdpa_scale, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 18. A module on SDPA with the default scale: fused qkv, gate -softplus(-x) over (B, T, H),
#     bias.masked_fill(~tril, -inf) as attn_mask.
class SdpaForgetBlock(nn.Module):
    def __init__(self, dim=24, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.fgate = nn.Linear(dim, heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        log_f = -F.softplus(-self.fgate(x))  # (B, T, H)
        lam = log_f.cumsum(dim=1).transpose(1, 2)
        bias = lam.unsqueeze(-1) - lam.unsqueeze(-2)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        bias = bias.masked_fill(~causal, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def build_sdpa_block(dtype):
    m = SdpaForgetBlock().to(dtype)
    return m, (_randn(2, 15, 24, dtype=dtype),)


def ref_sdpa_block(m, inputs):
    (x,) = inputs
    B, T, C = x.shape
    H = m.heads
    q, k, v = (_heads_first(t.reshape(B, T, H, C // H)) for t in m.qkv(x).split(C, dim=-1))
    lam = _logsig_lam(m.fgate(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.proj(o.transpose(1, 2).reshape(B, T, C)), [lam])


# ---------------------------------------------------------------------------------------------
# 19. Softmax by hand: amax, subtract, exp, sum, divide.
def fox_manual_softmax(q, k, v, g):
    lam = torch.cumsum(F.logsigmoid(g), -1)
    s = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(q.shape[-1]))
    s = s + lam[..., :, None] - lam[..., None, :]
    T = s.shape[-1]
    s = s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=s.device)), float("-inf"))
    m = s.amax(dim=-1, keepdim=True)
    e = torch.exp(s - m)
    p = e / e.sum(dim=-1, keepdim=True)
    return torch.matmul(p, v)


def build_manual_softmax(dtype):
    B, H, T, D = 1, 4, 21, 8
    return fox_manual_softmax, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 20. The log2 domain: scores and lam times 1/ln 2, exp2, a detached running max.
def fox_exp2(q, k, v, g):  # q, k, v: (B, T, H, D); g: (B, T, H)
    q, k, v = [t.transpose(1, 2) for t in (q, k, v)]
    lam = F.logsigmoid(g).cumsum(dim=1).transpose(1, 2) * LOG2E
    s2 = (q @ k.transpose(-2, -1)) * (q.shape[-1] ** -0.5 * LOG2E)
    s2 = s2 + (lam[..., :, None] - lam[..., None, :])
    T = q.shape[-2]
    s2 = s2.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool, device=q.device), 1), float("-inf"))
    m = s2.max(dim=-1, keepdim=True).values.detach()
    p = torch.exp2(s2 - m)
    p = p / p.sum(-1, keepdim=True)
    return (p @ v).transpose(1, 2)


def build_exp2(dtype):
    B, T, H, D = 2, 31, 2, 12
    return fox_exp2, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _gate(B, T, H, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 21. softmax(s.float()).to(dtype) round trip, gate upcast with .float(), nan_to_num afterwards.
def fox_float_roundtrip(q, k, v, g):
    lam = F.logsigmoid(g.float()).cumsum(-1)
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    T = s.shape[-1]
    s = s.float() + (lam[..., :, None] - lam[..., None, :])
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=s.device).tril(), float("-inf"))
    p = torch.softmax(s, dim=-1).to(v.dtype)
    p = torch.nan_to_num(p, nan=0.0)
    return torch.matmul(p, v)


def build_float_roundtrip(dtype):
    B, H, T, D = 2, 2, 19, 16
    return fox_float_roundtrip, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 22. NaN repair with masked_fill(isnan(p), 0) after the softmax; gate from a module.
class NanSafeForget(nn.Module):
    def __init__(self, dim=16, heads=2, head_dim=8):
        super().__init__()
        self.scale = head_dim**-0.5
        self.gate = nn.Linear(dim, heads)

    def forward(self, x, q, k, v):  # x: (B, T, dim); q, k, v: (B, H, T, Dh)
        lam = F.logsigmoid(self.gate(x)).transpose(-1, -2).cumsum(-1)
        s = q @ k.transpose(-2, -1) * self.scale + (lam[..., :, None] - lam[..., None, :])
        T = s.size(-1)
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=s.device).triu(1), float("-inf"))
        p = s.softmax(-1)
        p = p.masked_fill(torch.isnan(p), 0.0)
        return p @ v


def build_nan_safe(dtype):
    B, H, T, D = 2, 2, 17, 8
    m = NanSafeForget().to(dtype)
    return m, (
        _randn(B, T, 16, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
    )


def ref_nan_safe(m, inputs):
    x, q, k, v = inputs
    lam = _logsig_lam(m.gate(x), dim=1).transpose(1, 2)
    return Ref(fox_reference(q, k, v, lam, m.scale), [lam])


# ---------------------------------------------------------------------------------------------
# 23. In-place: scores *= scale; scores += bias; scores.masked_fill_(...).
def fox_inplace(q, k, v, g):
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    scores = torch.matmul(q, k.transpose(-2, -1))
    scores *= q.shape[-1] ** -0.5
    scores += lam[..., :, None] - lam[..., None, :]
    T = scores.shape[-1]
    scores.masked_fill_(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    return torch.matmul(torch.softmax(scores, dim=-1), v)


def build_inplace(dtype):
    B, H, T, D = 2, 3, 15, 12
    return fox_inplace, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 24. Bias by repeat + transpose: rows[..., i, j] = lam_i, bias = rows - rows^T.
def fox_repeat_transpose(q, k, v, g):
    T = q.shape[-2]
    lam = F.logsigmoid(g).cumsum(-1)  # (B, H, T)
    rows = lam.unsqueeze(-1).repeat(1, 1, 1, T)
    bias = rows - rows.transpose(-1, -2)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    causal = torch.tril(torch.ones(T, T, device=q.device)).bool()
    s = s.masked_fill(~causal, float("-inf"))
    return F.softmax(s, dim=-1) @ v


def build_repeat_transpose(dtype):
    B, H, T, D = 1, 2, 23, 16
    return fox_repeat_transpose, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 25. lam = cat(zeros, cumsum(log f[1:])): the first step's gate is never used.
def fox_cat_zero_cumsum(q, k, v, g):
    lf = F.logsigmoid(g)  # (B, H, T)
    lam = torch.cat([torch.zeros_like(lf[..., :1]), torch.cumsum(lf[..., 1:], dim=-1)], dim=-1)
    s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    s = s + (lam[..., :, None] - lam[..., None, :])
    T = s.shape[-1]
    s = s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)), float("-inf"))
    return torch.matmul(torch.softmax(s, -1), v)


def build_cat_zero(dtype):
    B, H, T, D = 2, 2, 13, 8
    return fox_cat_zero_cumsum, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


def ref_cat_zero(fn, inputs):
    q, k, v, g = inputs
    lf = F.logsigmoid(g.double()).clone()
    lf[..., 0] = 0.0
    lam = cumlog(lf)
    return Ref(fox_reference(q, k, v, lam), [lam])


# ---------------------------------------------------------------------------------------------
# 26. Boolean index assignment: s[..., ~keep] = -inf.
def fox_index_assign_mask(q, k, v, g):
    T = q.shape[-2]
    lam = F.logsigmoid(g).cumsum(dim=-1)
    s = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    s = s + lam[..., :, None] - lam[..., None, :]
    keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    s[..., ~keep] = float("-inf")
    return F.softmax(s, -1) @ v


def build_index_assign(dtype):
    B, H, T, D = 2, 2, 11, 12
    return fox_index_assign_mask, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 27. Masked with finfo.min before the bias is added.
def fox_mask_then_bias(q, k, v, g):
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), torch.finfo(s.dtype).min)
    lam = F.logsigmoid(g).cumsum(-1)
    s = s + (lam[..., :, None] - lam[..., None, :])
    return s.softmax(-1) @ v


def build_mask_then_bias(dtype):
    B, H, T, D = 1, 4, 27, 8
    return fox_mask_then_bias, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 28. (B, T, H, D) module with a -finfo.max additive mask buffer and lam in (B, T, H).
class NegMaxMaskForget(nn.Module):
    def __init__(self, max_len=48):
        super().__init__()
        self.register_buffer("mask", torch.full((max_len, max_len), -torch.finfo(torch.float32).max).triu(1))

    def forward(self, q, k, v, fg):  # q, k, v: (B, T, H, D); fg: (B, T, H)
        T = q.shape[1]
        lam = F.logsigmoid(fg).cumsum(1)  # (B, T, H)
        q, k, v = q.permute(0, 2, 1, 3), k.permute(0, 2, 1, 3), v.permute(0, 2, 1, 3)
        lam = lam.permute(0, 2, 1)
        s = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5 + self.mask[:T, :T]
        s = s + lam[:, :, :, None] - lam[:, :, None, :]
        o = torch.matmul(F.softmax(s, dim=-1), v)
        return o.permute(0, 2, 1, 3)


def build_neg_max(dtype):
    B, T, H, D = 2, 9, 2, 16
    m = NegMaxMaskForget().to(dtype)
    return m, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _gate(B, T, H, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 29. nanoGPT with a forget gate: tril "bias" buffer sliced [:, :, :T, :T] == 0 -> -1e9.
class NanoGPTForget(nn.Module):
    def __init__(self, n_embd=24, n_head=3, block_size=40):
        super().__init__()
        self.n_embd, self.n_head = n_embd, n_head
        self.c_attn = nn.Linear(n_embd, 3 * n_embd)
        self.c_fgate = nn.Linear(n_embd, n_head)
        self.c_proj = nn.Linear(n_embd, n_embd)
        self.register_buffer("bias", torch.tril(torch.ones(block_size, block_size)).view(1, 1, block_size, block_size))

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd, dim=2)
        k = k.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        q = q.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        v = v.view(B, T, self.n_head, C // self.n_head).transpose(1, 2)
        fg = F.logsigmoid(self.c_fgate(x)).permute(0, 2, 1)
        fg = torch.cumsum(fg, dim=-1)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(k.size(-1)))
        att = att + fg[:, :, :, None] - fg[:, :, None, :]
        att = att.masked_fill(self.bias[:, :, :T, :T] == 0, -1e9)
        att = F.softmax(att, dim=-1)
        y = att @ v
        y = y.transpose(1, 2).contiguous().view(B, T, C)
        return self.c_proj(y)


def build_nanogpt(dtype):
    m = NanoGPTForget().to(dtype)
    return m, (_randn(2, 33, 24, dtype=dtype),)


def ref_nanogpt(m, inputs):
    (x,) = inputs
    B, T, C = x.shape
    H = m.n_head
    q, k, v = (_heads_first(t.reshape(B, T, H, C // H)) for t in m.c_attn(x).split(C, dim=2))
    lam = _logsig_lam(m.c_fgate(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.c_proj(o.transpose(1, 2).reshape(B, T, C)), [lam])


# ---------------------------------------------------------------------------------------------
# 30. lam handed in, (B, T, H, D) einsum with other letters. The graph cannot prove lam falls.
def fox_from_lam(q, k, v, lam):  # q, k, v: (B, T, H, D); lam: (B, T, H)
    T = q.shape[1]
    s = torch.einsum("bthd,bshd->bhts", q, k) * q.shape[-1] ** -0.5
    lam = lam.transpose(1, 2)
    s = s + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=1), float("-inf"))
    return torch.einsum("bhts,bshd->bthd", s.softmax(-1), v)


def build_from_lam(dtype):
    B, T, H, D = 2, 21, 2, 8
    return fox_from_lam, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _lam_data(B, H, T, dtype=dtype).transpose(1, 2).contiguous(),
    )


def ref_from_lam(fn, inputs):
    q, k, v, lam = inputs
    lam = lam.transpose(1, 2)
    o = fox_reference(_heads_first(q), _heads_first(k), _heads_first(v), lam)
    return Ref(o.transpose(1, 2), [lam])


# ---------------------------------------------------------------------------------------------
# 31. The FoX reference API: forgetting_attention(q, k, v, log_fgate) with per-step log f handed in
#     (B, T, H), cumsum(dtype=float32). log f is data: guarded.
def forgetting_attention(q, k, v, log_fgate, sm_scale=None):
    B, T, H, D = q.shape
    if sm_scale is None:
        sm_scale = D**-0.5
    q, k, v = (t.permute(0, 2, 1, 3) for t in (q, k, v))
    log_lambda = torch.cumsum(log_fgate, dim=1, dtype=torch.float32).transpose(1, 2)
    scores = torch.matmul(q, k.transpose(-1, -2)) * sm_scale
    scores = scores + log_lambda[:, :, :, None] - log_lambda[:, :, None, :]
    mask = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    scores = scores.masked_fill(~mask, float("-inf"))
    out = torch.matmul(torch.softmax(scores, dim=-1), v)
    return out.permute(0, 2, 1, 3)


def build_fox_api(dtype):
    B, T, H, D = 2, 25, 2, 12
    return forgetting_attention, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        F.logsigmoid(_gate(B, T, H, dtype=dtype)),
    )


def ref_fox_api(fn, inputs):
    q, k, v, log_f = inputs
    lam = cumlog(log_f, dim=1).transpose(1, 2)
    o = fox_reference(_heads_first(q), _heads_first(k), _heads_first(v), lam)
    return Ref(o.transpose(1, 2), [lam])


# ---------------------------------------------------------------------------------------------
# 32. Gate as nn.Sequential(nn.Linear, nn.LogSigmoid()); qkv split with view + permute + unbind.
class SequentialGateAttention(nn.Module):
    def __init__(self, dim=32, heads=4, head_dim=8):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.fgate = nn.Sequential(nn.Linear(dim, heads), nn.LogSigmoid())
        self.out = nn.Linear(heads * head_dim, dim)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        lam = self.fgate(x).cumsum(1).transpose(1, 2)
        s = torch.matmul(q, k.transpose(-1, -2)) * self.head_dim**-0.5
        s = s + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        o = torch.matmul(s.softmax(dim=-1), v)
        return self.out(o.transpose(1, 2).flatten(2))


def build_sequential_gate(dtype):
    m = SequentialGateAttention().to(dtype)
    return m, (_randn(1, 29, 32, dtype=dtype),)


def ref_sequential_gate(m, inputs):
    (x,) = inputs
    B, T, _ = x.shape
    q, k, v = m.qkv(x).view(B, T, 3, m.heads, m.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
    lam = _logsig_lam(m.fgate[0](x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.out(o.transpose(1, 2).flatten(2)), [lam])


# ---------------------------------------------------------------------------------------------
# 33. A gate temperature: log f = logsigmoid(x) * 0.5 (a positive Python constant).
class TemperedGate(nn.Module):
    def __init__(self):
        super().__init__()
        self.gate_scale = 0.5

    def forward(self, q, k, v, g):
        log_f = F.logsigmoid(g) * self.gate_scale
        lam = log_f.cumsum(-1)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
        s = s + lam[..., :, None] - lam[..., None, :]
        T = q.shape[-2]
        s = s.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)), float("-inf"))
        return torch.softmax(s, dim=-1) @ v


def build_tempered(dtype):
    B, H, T, D = 2, 2, 19, 12
    return TemperedGate(), (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype) - 2.0,
    )


def ref_tempered(m, inputs):
    q, k, v, g = inputs
    lam = cumlog(F.logsigmoid(g) * 0.5)
    return Ref(fox_reference(q, k, v, lam), [lam])


# ---------------------------------------------------------------------------------------------
# 34. A learned per-head decay only (no input dependence): logsigmoid(param) expanded over time.
class PerHeadDecay(nn.Module):
    def __init__(self, heads=3):
        super().__init__()
        self.decay_logit = nn.Parameter(torch.randn(heads) * 0.5 + 1.0)

    def forward(self, q, k, v):  # (B, H, T, D)
        T = q.shape[2]
        log_f = F.logsigmoid(self.decay_logit)[:, None].expand(-1, T)  # (H, T)
        lam = log_f.cumsum(-1)
        bias = lam[:, :, None] - lam[:, None, :]  # (H, T, T)
        s = q @ k.mT * q.shape[-1] ** -0.5 + bias
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        return F.softmax(s, dim=-1) @ v


def build_per_head(dtype):
    B, H, T, D = 2, 3, 21, 8
    m = PerHeadDecay(H).to(dtype)
    return m, tuple(_randn(B, H, T, D, dtype=dtype) for _ in range(3))


def ref_per_head(m, inputs):
    q, k, v = inputs
    T = q.shape[2]
    lam = cumlog(F.logsigmoid(m.decay_logit.double())[:, None].expand(-1, T))
    lam = lam.expand(q.shape[0], -1, -1)
    return Ref(fox_reference(q, k, v, lam), [lam])


# ---------------------------------------------------------------------------------------------
# 35. Activation checkpointing: the attention core (gate included) runs in torch.utils.checkpoint.
class CheckpointedForget(nn.Module):
    def __init__(self, dim=32, heads=2, head_dim=16):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_f = nn.Linear(dim, heads)
        self.to_out = nn.Linear(heads * head_dim, dim)

    @staticmethod
    def _core(q, k, v, f_logit):
        lam = F.logsigmoid(f_logit).cumsum(-1)
        T = q.shape[-2]
        s = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        s = s + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1), v)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        f_logit = self.to_f(x).transpose(1, 2)
        o = torch.utils.checkpoint.checkpoint(self._core, q, k, v, f_logit, use_reentrant=False)
        return self.to_out(o.transpose(1, 2).reshape(B, T, -1))


def build_checkpoint(dtype):
    m = CheckpointedForget().to(dtype)
    return m, (_randn(2, 17, 32, dtype=dtype),)


def ref_checkpoint(m, inputs):
    (x,) = inputs
    B, T, _ = x.shape
    q, k, v = (_heads_first(t.reshape(B, T, m.heads, m.head_dim)) for t in m.to_qkv(x).chunk(3, dim=-1))
    lam = _logsig_lam(m.to_f(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.to_out(o.transpose(1, 2).reshape(B, T, -1)), [lam])


# ---------------------------------------------------------------------------------------------
# 36. nn.Dropout on the probabilities, module in eval mode: dropout is the identity.
class DropoutForget(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.fgate = nn.Linear(dim, heads)
        self.attn_drop = nn.Dropout(0.1)

    def forward(self, x, q, k, v):
        lam = torch.cumsum(F.logsigmoid(self.fgate(x)), dim=1).transpose(1, 2)
        T = q.shape[2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        att = att + lam[:, :, :, None] - lam[:, :, None, :]
        att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device)), float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        return att @ v


def build_dropout_eval(dtype):
    B, H, T, D = 2, 2, 15, 12
    m = DropoutForget().to(dtype).eval()
    return m, (
        _randn(B, T, 16, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
    )


def ref_dropout_eval(m, inputs):
    x, q, k, v = inputs
    lam = _logsig_lam(m.fgate(x), dim=1).transpose(1, 2)
    return Ref(fox_reference(q, k, v, lam), [lam])


# ---------------------------------------------------------------------------------------------
# 37. Two pre-norm FoX layers with residuals: two sites.
class ForgetLayer(nn.Module):
    def __init__(self, dim=24, heads=2):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.f = nn.Linear(dim, heads)
        self.o = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        h = self.norm(x)
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        lam = F.logsigmoid(self.f(h)).transpose(1, 2).cumsum(-1)
        s = q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5
        s = s + lam.unsqueeze(-1) - lam.unsqueeze(-2)
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        return x + self.o(y)

    def reference(self, x):
        B, T, C = x.shape
        h = self.norm(x)
        q, k, v = (t.transpose(1, 2) for t in self.qkv(h).view(B, T, 3, self.heads, C // self.heads).unbind(2))
        lam = _logsig_lam(self.f(h), dim=1).transpose(1, 2)
        y = fox_reference(q, k, v, lam).transpose(1, 2).reshape(B, T, C)
        return x + self.o(y), lam


class TwoForgetLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([ForgetLayer(), ForgetLayer()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def build_two_layers(dtype):
    m = TwoForgetLayers().to(dtype)
    return m, (_randn(2, 13, 24, dtype=dtype),)


def ref_two_layers(m, inputs):
    (x,) = inputs
    lams = []
    for layer in m.layers:
        x, lam = layer.reference(x)
        lams.append(lam)
    return Ref(x, lams)


# ---------------------------------------------------------------------------------------------
# 38. einops-rearrange written as views: (B, T, H*D) inputs, view + permute, lam.view(B, H, T, 1).
def fox_rearranged(xq, xk, xv, fg):  # xq, xk, xv: (B, T, H*D); fg: (B, T, H)
    B, T, HD = xq.shape
    H = fg.shape[-1]
    D = HD // H
    q = xq.view(B, T, H, D).permute(0, 2, 1, 3)
    k = xk.view(B, T, H, D).permute(0, 2, 1, 3)
    v = xv.view(B, T, H, D).permute(0, 2, 1, 3)
    lam = F.logsigmoid(fg).cumsum(1).permute(0, 2, 1).contiguous()
    bias = lam.view(B, H, T, 1) - lam.view(B, H, 1, T)
    s = torch.matmul(q, k.permute(0, 1, 3, 2)) * D**-0.5 + bias
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=xq.device).triu(1), float("-inf"))
    o = torch.matmul(s.softmax(-1), v)
    return o.permute(0, 2, 1, 3).reshape(B, T, HD)


def build_rearranged(dtype):
    B, T, H, D = 2, 11, 2, 16
    return fox_rearranged, (
        _randn(B, T, H * D, dtype=dtype),
        _randn(B, T, H * D, dtype=dtype),
        _randn(B, T, H * D, dtype=dtype),
        _gate(B, T, H, dtype=dtype),
    )


def ref_rearranged(fn, inputs):
    xq, xk, xv, fg = inputs
    B, T, HD = xq.shape
    H = fg.shape[-1]
    q, k, v = (_heads_first(t.view(B, T, H, HD // H)) for t in (xq, xk, xv))
    lam = _logsig_lam(fg, dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(o.transpose(1, 2).reshape(B, T, HD), [lam])


# ---------------------------------------------------------------------------------------------
# 39. The FoX "Pro" block: key/value shift, per-head RMSNorm on q and k, sigmoid output gate with a
#     per-head RMSNorm before the output projection.
class HeadRMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ForgettingProAttention(nn.Module):
    def __init__(self, dim=32, heads=2, head_dim=16):
        super().__init__()
        self.h, self.d = heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.fgate_proj = nn.Linear(dim, heads)
        self.shift_proj = nn.Linear(dim, heads)
        self.ogate_proj = nn.Linear(dim, heads * head_dim)
        self.q_norm, self.k_norm, self.o_norm = HeadRMSNorm(head_dim), HeadRMSNorm(head_dim), HeadRMSNorm(head_dim)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def shift(self, t, a):  # t_t <- a_t t_{t-1} + (1 - a_t) t_t, along dim 1 of (B, T, H, D)
        prev = F.pad(t, (0, 0, 0, 0, 1, 0))[:, :-1]
        return a * prev + (1 - a) * t

    def project(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.d)
        k = self.k_proj(x).view(B, T, self.h, self.d)
        v = self.v_proj(x).view(B, T, self.h, self.d)
        a = torch.sigmoid(self.shift_proj(x))[..., None]
        k, v = self.shift(k, a), self.shift(v, a)
        return self.q_norm(q), self.k_norm(k), v

    def finish(self, x, o):  # o: (B, H, T, D)
        B, T, _ = x.shape
        o = self.o_norm(o.transpose(1, 2)) * torch.sigmoid(self.ogate_proj(x)).view(B, T, self.h, self.d)
        return self.o_proj(o.reshape(B, T, self.h * self.d))

    def forward(self, x):
        T = x.shape[1]
        q, k, v = (t.transpose(1, 2) for t in self.project(x))
        lam = F.logsigmoid(self.fgate_proj(x)).cumsum(1).transpose(1, 2)
        s = q @ k.transpose(-1, -2) * self.d**-0.5 + (lam[..., :, None] - lam[..., None, :])
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        return self.finish(x, s.softmax(-1) @ v)


def build_pro(dtype):
    m = ForgettingProAttention().to(dtype)
    return m, (_randn(2, 19, 32, dtype=dtype),)


def ref_pro(m, inputs):
    (x,) = inputs
    q, k, v = (_heads_first(t) for t in m.project(x))
    lam = _logsig_lam(m.fgate_proj(x), dim=1).transpose(1, 2)
    return Ref(m.finish(x, fox_reference(q, k, v, lam)), [lam])


# ---------------------------------------------------------------------------------------------
# 40. The bias from a Mamba-2 style segsum (a masked T x T cumsum over the query axis of a broadcast
#     vector: exactly c_i - c_j, causal mask included), fed to a softmax.
def segsum(x):
    T = x.size(-1)
    x = x[..., None].repeat(*([1] * x.dim()), T)  # x[..., i, j] = x_i
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=-1)
    x = x.masked_fill(~mask, 0)
    x_segsum = torch.cumsum(x, dim=-2)
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=0)
    return x_segsum.masked_fill(~mask, -torch.inf)


def fox_segsum_softmax(q, k, v, g):
    bias = segsum(F.logsigmoid(g))  # (B, H, T, T)
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5 + bias
    return s.softmax(-1) @ v


def build_segsum(dtype):
    B, H, T, D = 2, 2, 15, 8
    return fox_segsum_softmax, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 41. torch.compile on a bound forward of a LLaMA-like attention (mask built inside).
class LlamaLikeForget(nn.Module):
    def __init__(self, hidden_size=24, num_heads=3):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.f_proj = nn.Linear(hidden_size, num_heads, bias=True)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states):
        bsz, q_len, _ = hidden_states.size()
        shape = (bsz, q_len, self.num_heads, self.head_dim)
        query_states = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        log_lambda = torch.cumsum(F.logsigmoid(self.f_proj(hidden_states)), dim=1).transpose(1, 2)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        attn_weights = attn_weights + log_lambda[:, :, :, None] - log_lambda[:, :, None, :]
        min_value = torch.finfo(attn_weights.dtype).min
        causal_mask = torch.full((q_len, q_len), min_value, dtype=attn_weights.dtype, device=hidden_states.device)
        causal_mask = torch.triu(causal_mask, diagonal=1)
        attn_weights = attn_weights + causal_mask[None, None]
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, -1)
        return self.o_proj(attn_output)


def build_bound_forward(dtype):
    m = LlamaLikeForget().to(dtype)
    return m.forward, (_randn(1, 27, 24, dtype=dtype),)


def ref_bound_forward(fwd, inputs):
    m = fwd.__self__
    (x,) = inputs
    B, T, C = x.shape
    shape = (B, T, m.num_heads, m.head_dim)
    q, k, v = (_heads_first(p(x).view(shape)) for p in (m.q_proj, m.k_proj, m.v_proj))
    lam = _logsig_lam(m.f_proj(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.o_proj(o.transpose(1, 2).reshape(B, T, C)), [lam])


# ---------------------------------------------------------------------------------------------
# 42. lam handed in with upward spikes at tile edges (columns 7, 15, 23, 31): a kernel that prunes
#     from tile corners without the monotonicity guard would skip tiles that carry real weight.
def fox_lam_bhtd(q, k, v, lam):
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    s = s + lam[:, :, :, None] - lam[:, :, None, :]
    T = s.shape[-1]
    keep = torch.arange(T, device=q.device)[:, None] >= torch.arange(T, device=q.device)[None, :]
    s = torch.where(keep, s, float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def build_spiky_lam(dtype):
    B, H, T, D = 1, 2, 39, 16
    lam = torch.zeros(B, H, T, dtype=dtype) - 0.01 * torch.rand(B, H, T, dtype=dtype).cumsum(-1)
    lam[..., [7, 15, 23, 31, 38]] += 50.0
    return fox_lam_bhtd, (
        _randn(B, H, T, D, dtype=dtype, scale=0.5),
        _randn(B, H, T, D, dtype=dtype, scale=0.5),
        _randn(B, H, T, D, dtype=dtype),
        lam,
    )


def ref_lam_bhtd(fn, inputs):
    q, k, v, lam = inputs
    return Ref(fox_reference(q, k, v, lam), [lam])


# ---------------------------------------------------------------------------------------------
# 43. Chunked prefill through SDPA on 3-D (B*H, M, D) tensors: rows c[:, -M:], torch.where mask.
def fox_sdpa_chunk(q, k, v, g):  # q: (B*H, M, D); k, v: (B*H, N, D); g: (B*H, N)
    M, N = q.shape[1], k.shape[1]
    c = torch.cumsum(F.logsigmoid(g), dim=1)
    bias = c[:, -M:].unsqueeze(-1) - c.unsqueeze(1)  # (B*H, M, N)
    rows = torch.arange(N - M, N, device=q.device)[:, None]
    cols = torch.arange(N, device=q.device)[None, :]
    bias = torch.where(cols <= rows, bias, torch.full_like(bias, float("-inf")))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def build_sdpa_chunk(dtype):
    BH, M, N, D = 4, 5, 17, 12
    return fox_sdpa_chunk, (
        _randn(BH, M, D, dtype=dtype),
        _randn(BH, N, D, dtype=dtype),
        _randn(BH, N, D, dtype=dtype),
        _gate(BH, N, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# 44. Packed sequences, flash-attn style: cu_seqlens handed in, document of each position by
#     searchsorted, keep = same document & tril, masked_fill(~keep).
def _cu_seqlens(T, n_docs):
    """Random document boundaries 0 = c_0 < c_1 < ... < c_n = T (int32)."""
    inner = torch.randperm(T - 1)[: n_docs - 1].sort().values + 1
    return torch.cat([torch.tensor([0]), inner, torch.tensor([T])]).to(torch.int32)


def fox_packed_cu_seqlens(q, k, v, g, cu_seqlens):  # q, k, v (B, H, T, D); g (B, H, T)
    T = q.shape[2]
    pos = torch.arange(T, device=q.device, dtype=torch.int32)
    doc = torch.searchsorted(cu_seqlens, pos, right=True)  # (T,)
    same_doc = doc[:, None] == doc[None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~(same_doc & causal), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def build_packed_cu_seqlens(dtype):
    B, H, T, D = 2, 2, 29, 16
    return fox_packed_cu_seqlens, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
        _cu_seqlens(T, 4),
    )


def ref_packed_cu_seqlens(fn, inputs):
    q, k, v, g, cu = inputs
    doc = torch.searchsorted(cu, torch.arange(q.shape[2], dtype=cu.dtype), right=True)
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, doc=doc), [lam])


# ---------------------------------------------------------------------------------------------
# 45. Packed token stream, (B, T, H, D) module: documents counted by a cumsum of BOS tokens per
#     batch row, bool product of the document mask with an arange causal mask, torch.where.
class PackedBosForget(nn.Module):
    BOS = 0

    def __init__(self, hidden=24, heads=2, head_dim=12):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(hidden, 3 * heads * head_dim, bias=False)
        self.fgate = nn.Linear(hidden, heads)
        self.out = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x, input_ids):  # x (B, T, C), input_ids (B, T)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        log_f = F.logsigmoid(self.fgate(x).float())                  # (B, T, H)
        lam = torch.cumsum(log_f, dim=1).transpose(1, 2)             # (B, H, T)
        doc = torch.cumsum((input_ids == self.BOS).int(), dim=1)     # (B, T)
        same_doc = doc.unsqueeze(-1) == doc.unsqueeze(-2)            # (B, T, T)
        pos = torch.arange(T, device=x.device)
        keep = same_doc[:, None] * (pos[:, None] >= pos[None, :])    # (B, 1, T, T)
        s = torch.einsum("bihd,bjhd->bhij", q, k) * self.head_dim ** -0.5
        s = s + (lam[..., :, None] - lam[..., None, :]).to(s.dtype)
        s = torch.where(keep, s, float("-inf"))
        o = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)
        return self.out(o.reshape(B, T, -1))


def _token_ids(B, T, bos_rate=0.2):
    ids = torch.randint(1, 50, (B, T))
    return ids.masked_fill(torch.rand(B, T) < bos_rate, PackedBosForget.BOS)


def build_packed_bos(dtype):
    m = PackedBosForget().to(dtype)
    return m, (_randn(2, 23, 24, dtype=dtype), _token_ids(2, 23))


def ref_packed_bos(m, inputs):
    x, ids = inputs
    B, T, C = x.shape
    q, k, v = (_heads_first(t) for t in m.qkv(x).view(B, T, 3, m.heads, m.head_dim).unbind(2))
    lam = _logsig_lam(m.fgate(x), dim=1).transpose(1, 2)
    doc = torch.cumsum((ids == m.BOS).long(), dim=1)
    o = fox_reference(q, k, v, lam, doc=doc)
    return Ref(m.out(o.transpose(1, 2).reshape(B, T, -1)), [lam])


# ---------------------------------------------------------------------------------------------
# 46. SDPA with a float mask: the gate bias kept where logical_and(same document, tril), -inf
#     elsewhere; documents by bucketize of the positions on the boundaries.
def fox_packed_sdpa(q, k, v, g, starts):  # starts: first position of documents 1.. (int64)
    T = q.shape[-2]
    pos = torch.arange(T, device=q.device)
    doc = torch.bucketize(pos, starts, right=True)
    keep = torch.logical_and(doc[None, :, None] == doc[None, None, :],
                             torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)))
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    bias = torch.where(keep, lam.unsqueeze(-1) - lam.unsqueeze(-2), float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def build_packed_sdpa(dtype):
    B, H, T, D = 2, 2, 31, 16
    return fox_packed_sdpa, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
        _cu_seqlens(T, 4)[1:-1].long(),
    )


def ref_packed_sdpa(fn, inputs):
    q, k, v, g, starts = inputs
    doc = torch.bucketize(torch.arange(q.shape[-2]), starts, right=True)
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, doc=doc), [lam])


# ---------------------------------------------------------------------------------------------
# 47. Additive masks, document ids handed in per batch row: -1e9 where doc_i != doc_j, plus the
#     usual full(-inf).triu(1), both added to the scores (GQA by repeat_interleave).
def fox_packed_additive(q, k, v, g, doc_ids):  # q (B, H, T, D); k, v (B, Hkv, T, D); doc (B, T)
    T = q.shape[2]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    other_doc = (doc_ids[:, :, None] != doc_ids[:, None, :])[:, None]   # (B, 1, T, T)
    doc_mask = torch.zeros(other_doc.shape, dtype=q.dtype, device=q.device).masked_fill(other_doc, -1e9)
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s + future + doc_mask + lam[..., :, None] - lam[..., None, :]
    return torch.matmul(torch.softmax(s, dim=-1), v)


def build_packed_additive(dtype):
    B, H, Hkv, T, D = 2, 4, 2, 27, 8
    lengths = torch.randint(1, 9, (B, T))
    doc = torch.stack([torch.repeat_interleave(torch.arange(T), row)[:T] for row in lengths])
    return fox_packed_additive, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
        doc,
    )


def ref_packed_additive(fn, inputs):
    q, k, v, g, doc = inputs
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, doc=doc), [lam])


def _left_padding(B, T, longest_pad):
    """(B, T) bool, False on a random number (0 to longest_pad) of leading positions per row."""
    starts = torch.randint(0, longest_pad + 1, (B, 1))
    return torch.arange(T)[None, :] >= starts


# ---------------------------------------------------------------------------------------------
# 48. HF-style batch with left padding: attention_mask (B, T) of 0/1 ints, a causal buffer sliced
#     and ANDed with attention_mask[:, None, None, :].bool(), finfo.min fill, F.softmax; the
#     gates of the padding zeroed so each sequence's lam starts at its first token.
class LeftPaddedHFForget(nn.Module):
    def __init__(self, hidden=32, heads=2, head_dim=16, max_len=64):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.f_proj = nn.Linear(hidden, heads)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("causal_mask", causal[None, None], persistent=False)

    def forward(self, hidden_states, attention_mask):
        B, T, _ = hidden_states.shape
        shape = (B, T, self.heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        log_f = F.logsigmoid(self.f_proj(hidden_states).float())             # (B, T, H)
        log_f = log_f.masked_fill(attention_mask[..., None] == 0, 0.0)
        lam = torch.cumsum(log_f, dim=1).transpose(1, 2)                     # (B, H, T)
        keep = self.causal_mask[:, :, :T, :T] & attention_mask[:, None, None, :].bool()
        attn = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        attn = attn + (lam[..., :, None] - lam[..., None, :]).to(attn.dtype)
        attn = attn.masked_fill(~keep, torch.finfo(attn.dtype).min)
        attn = F.softmax(attn, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out)


def build_left_padded_hf(dtype):
    m = LeftPaddedHFForget().to(dtype)
    return m, (_randn(2, 19, 32, dtype=dtype), _left_padding(2, 19, 8).long())


def ref_left_padded_hf(m, inputs):
    x, attention_mask = inputs
    B, T, _ = x.shape
    valid = attention_mask.bool()
    q, k, v = (proj(x).view(B, T, m.heads, m.head_dim).transpose(1, 2)
               for proj in (m.q_proj, m.k_proj, m.v_proj))
    lam = cumlog(F.logsigmoid(m.f_proj(x).double()) * valid[..., None], dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam, keys=valid)
    return Ref(m.o_proj(o.transpose(1, 2).reshape(B, T, -1).to(x.dtype)), [lam])


def _valid_rows_bt(inputs):
    """The queries of a (B, T, ...) output that see a key: the valid positions (left padding)."""
    return inputs[1].bool()[:, :, None]


# ---------------------------------------------------------------------------------------------
# 49. Prefill of M new tokens after a left-padded cache: lam = cat(cache, last + cumsum(new)),
#     einsum, the causal mask tril(N - M) and then the padding as a second masked_fill, -inf.
def fox_prefill_left_padded(q, k, v, lam_cache, fg_new, valid):
    # q (B, H, M, D); k, v (B, H, N, D) incl. the new tokens; lam_cache (B, H, N - M); valid (B, N)
    M, N = q.shape[2], k.shape[2]
    lam_new = lam_cache[..., -1:] + torch.cumsum(F.logsigmoid(fg_new), dim=-1)
    lam = torch.cat([lam_cache, lam_new], dim=-1)                              # (B, H, N)
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    s = s + lam_new[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~torch.ones(M, N, dtype=torch.bool, device=q.device).tril(N - M), float("-inf"))
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.einsum("bhij,bhjd->bhid", torch.softmax(s, dim=-1), v)


def build_prefill_left_padded(dtype):
    B, H, M, N, D = 2, 2, 5, 17, 16
    return fox_prefill_left_padded, (
        _randn(B, H, M, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _lam_data(B, H, N - M, dtype=dtype),
        _gate(B, H, M, dtype=dtype),
        _left_padding(B, N, N - M - 1),   # every new token sees itself
    )


def ref_prefill_left_padded(fn, inputs):
    q, k, v, lam_cache, g, valid = inputs
    lam_new = lam_cache[..., -1:].double() + _logsig_lam(g)
    lam = torch.cat([lam_cache.double(), lam_new], dim=-1)
    return Ref(fox_reference(q, k, v, lam, keys=valid), [lam])


# ---------------------------------------------------------------------------------------------
# 50. (B, T, H, D) einsums, gates where(valid, logsigmoid, 0), keep = tril & valid.view(B, 1, 1, T)
#     in torch.where around the biased scores, -inf, NaN rows of the padding repaired by nan_to_num.
def fox_einsum_padded_where(q, k, v, g, valid):  # q, k, v (B, T, H, D); g (B, T, H); valid (B, T)
    B, T = valid.shape
    log_f = torch.where(valid[..., None], F.logsigmoid(g), 0.0)
    lam = torch.cumsum(log_f, dim=1).transpose(1, 2)                            # (B, H, T)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)) & valid.view(B, 1, 1, T)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    s = torch.where(keep, s + lam.unsqueeze(-1) - lam.unsqueeze(-2), float("-inf"))
    p = torch.nan_to_num(s.softmax(dim=-1))
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def build_einsum_padded_where(dtype):
    B, T, H, D = 2, 23, 2, 8
    return fox_einsum_padded_where, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _gate(B, T, H, dtype=dtype),
        _left_padding(B, T, 10),
    )


def ref_einsum_padded_where(fn, inputs):
    q, k, v, g, valid = inputs
    lam = cumlog(F.logsigmoid(g.double()) * valid[..., None], dim=1).transpose(1, 2)
    o = fox_reference(_heads_first(q), _heads_first(k), _heads_first(v), lam, keys=valid)
    return Ref(o.transpose(1, 2), [lam])


def _valid_rows_bthd(inputs):
    return inputs[-1][:, :, None, None]


def _case(name, build, axes, note, ref, decay="proven", sites=1, **kw):
    return Case(
        name=name,
        build=build,
        sites=sites,
        decay=[decay] * sites if isinstance(decay, str) else decay,
        declined_min=0,
        note=note,
        axes=tuple(axes.split()),
        reference=ref,
        **kw,
    )


POSITIVES: list[Case] = [
    _case("fox_paper_module", build_fox_paper,
          "layout=bthd gate=logsigmoid(linear.float()) cumsum=dim1+transpose bias=index_none mask=masked_fill_tril softmax=method pv=@",
          "the FoX paper's layout", ref_fox_paper, mixed=True, inductor=True),
    _case("core_bhtd_mT_sqrt", build_bhtd_mT,
          "layout=bhtd qk=mT scale=/sqrt bias=unsqueeze_two_steps mask=masked_fill_triu softmax=F pv=matmul",
          "attention-core function", ref_bhtd_qkvg),
    _case("flat_bmm_buffer_mask", build_flat_bmm,
          "layout=3d qk=bmm scale=q_prescaled_pow mask=additive_buffer_sliced softmax=torch pv=bmm",
          "heads flattened into the batch", ref_flat),
    _case("baddbmm_alpha_softplus", build_baddbmm,
          "layout=3d qk=baddbmm(alpha) gate=-softplus(-x) mask=baked_into_bias tril_ pv=bmm",
          "mask baked into the baddbmm input",
          lambda fn, inp: ref_flat(fn, inp, lam_of=lambda g: cumlog(-F.softplus(-g)))),
    _case("einsum_bthd_where", build_einsum_bthd,
          "layout=bthd qk=einsum(bqhd,bkhd->bhqk) cumsum=dim1+transpose mask=where pv=einsum",
          "einsum everywhere", ref_bthd_qkvg),
    _case("lucidrains_clamp_gate", build_clamp_gate,
          "qk=einsum_spaced gate=clamp(-10,0) cumsum=dtype_f32 mask=triu(j-i+1) -finfo.max",
          "clamp(max=0) proves log f <= 0", ref_clamp_gate, mixed=True),
    _case("gqa_grouped_einsum", build_grouped_einsum,
          "layout=bthd gqa=grouped_einsum(h,g) qk=einsum(bihgd,bjhd->bhgij) pv=einsum",
          "q reshaped into groups", ref_grouped_einsum),
    _case("gqa_expand_reshape_module", build_gqa_expand,
          "gqa=expand+reshape(h//G) qk=matmul(transpose(2,3)) mask=logical_not pv=matmul",
          "GQA by expand", ref_gqa_expand, inductor=True),
    _case("gqa_repeat_interleave_f32_softmax", build_gqa_ri,
          "gqa=repeat_interleave softmax=dtype_f32_then_cast mask=masked_fill_triu",
          "GQA by repeat_interleave", ref_bhtd_qkvg, mixed=True),
    _case("gqa_tiled_repeat", build_gqa_tiled,
          "gqa=tiled(h%Hkv) gate=-softplus(-x) mask=additive_full_triu_inline",
          "head h reads kv head h % Hkv", ref_gqa_tiled),
    _case("mqa_only_k_repeated", build_mqa,
          "gqa=mqa_only_k_expanded pv=@broadcast",
          "v broadcasts over heads in p @ v", ref_bhtd_qkvg),
    _case("decode_lam_cache", build_decode,
          "decode=M1 gate=lam_cache_input+logsigmoid cat qk=einsum mask=none_needed",
          "one query at the end needs no mask; the cached lam is data", ref_decode, decay="guarded"),
    _case("prefill_chunk_tril_offset", build_prefill_chunk,
          "M<N bias=rows_sliced[-M:] mask=tril(diagonal=N-M)",
          "queries at the end", ref_bhtd_qkvg),
    _case("query_chunk_loop", build_query_chunk_loop,
          "M<N loop=query_chunks bias=rows_sliced mask=tril(diagonal=start) where_finfo_min",
          "a Python loop over query chunks: one site per chunk", ref_query_chunk_loop, sites=3),
    _case("segment_loop_bthd_einsum", build_segment_loop,
          "layout=bthd loop=segments qk=einsum cumsum=dim1+transpose mask=masked_fill_triu",
          "a Python loop over fixed-length segments: one site per segment", ref_segment_loop,
          sites=3),
    _case("bloom_alibi_baddbmm", build_bloom,
          "alibi=key_only_slope*j(buffer) qk=baddbmm(alpha,beta) mask=finfo.min softmax=dtype_f32",
          "ALiBi slopes from a buffer: guarded", ref_bloom, decay="guarded", mixed=True),
    _case("alibi_distance_scalar_slope", build_alibi_scalar,
          "alibi=-slope*(i-j)(python float) mask=where(full_like)",
          "constant-rate decay", ref_alibi_scalar),
    _case("scale_on_qk_plus_bias", build_scale_on_sum,
          "scale=applied_to(qk+bias) scale=/sqrt",
          "scale rescales the gate too", ref_scale_on_sum),
    _case("sdpa_float_mask_scale_kw", build_sdpa_scale,
          "sdpa attn_mask=bias+full(-inf).triu(1) scale=kw",
          "SDPA with a float mask", lambda fn, inp: ref_bhtd_qkvg(fn, inp, scale=0.3), inductor=True),
    _case("sdpa_module_default_scale", build_sdpa_block,
          "sdpa attn_mask=bias.masked_fill default_scale gate=-softplus(-x) qkv=fused_split",
          "SDPA in a module", ref_sdpa_block),
    _case("softmax_by_hand_amax", build_manual_softmax,
          "softmax=by_hand(amax,exp,sum,div)",
          "hand-written softmax", ref_bhtd_qkvg),
    _case("exp2_log2_domain", build_exp2,
          "softmax=exp2_log2_domain max_detached layout=bthd",
          "scores and lam in log2 units", ref_bthd_qkvg),
    _case("float_roundtrip_nan_to_num", build_float_roundtrip,
          "softmax=.float()_roundtrip nan_repair=nan_to_num gate=.float()",
          "upcast, softmax, cast back, repair", ref_bhtd_qkvg, mixed=True),
    _case("nan_repair_masked_fill_isnan", build_nan_safe,
          "nan_repair=masked_fill(isnan) gate=module",
          "NaN repair after softmax", ref_nan_safe),
    _case("inplace_scale_bias_mask", build_inplace,
          "bias=inplace(+=) scale=inplace(*=) mask=masked_fill_",
          "in-place everything", ref_bhtd_qkvg),
    _case("bias_repeat_transpose", build_repeat_transpose,
          "bias=repeat+transpose mask=tril.bool()",
          "rows minus their transpose", ref_bhtd_qkvg),
    _case("cat_zeros_cumsum", build_cat_zero,
          "cumsum=cat(zeros,cumsum(lf[1:]))",
          "first gate unused", ref_cat_zero),
    _case("bool_index_assign_mask", build_index_assign,
          "mask=s[...,~keep]=-inf",
          "index_put mask", ref_bhtd_qkvg),
    _case("finfo_min_mask_before_bias", build_mask_then_bias,
          "mask=finfo.min_before_bias",
          "masked before the bias add", ref_bhtd_qkvg),
    _case("neg_finfo_max_buffer_bthd", build_neg_max,
          "layout=bthd(permute) mask=-finfo.max_buffer_sliced",
          "finite additive mask", ref_bthd_qkvg),
    _case("nanogpt_minus_1e9", build_nanogpt,
          "mask=buffer[:,:,:T,:T]==0->-1e9 module=nanogpt",
          "nanoGPT with a gate", ref_nanogpt, inductor=True),
    _case("lam_input_einsum_bthd", build_from_lam,
          "gate=lam_input layout=bthd qk=einsum(bthd,bshd->bhts)",
          "lam is data: guarded", ref_from_lam, decay="guarded"),
    _case("fox_reference_api_log_fgate", build_fox_api,
          "gate=log_fgate_input cumsum=dim1_dtype_f32",
          "per-step log f handed in: guarded", ref_fox_api, decay="guarded", mixed=True),
    _case("sequential_logsigmoid_gate", build_sequential_gate,
          "gate=nn.Sequential(Linear,LogSigmoid) qkv=view+permute+unbind",
          "LogSigmoid module", ref_sequential_gate),
    _case("gate_times_positive_constant", build_tempered,
          "gate=logsigmoid*0.5",
          "a non-negative constant keeps the sign", ref_tempered),
    _case("per_head_learned_decay", build_per_head,
          "gate=logsigmoid(per-head param).expand bias=(H,T,T)",
          "data-independent decay", ref_per_head),
    _case("checkpointed_core", build_checkpoint,
          "host=torch.utils.checkpoint",
          "attention in a checkpoint subgraph", ref_checkpoint, inductor=True),
    _case("dropout_eval_mode", build_dropout_eval,
          "dropout=nn.Dropout(eval)",
          "dropout is the identity in eval", ref_dropout_eval),
    _case("two_layers", build_two_layers,
          "sites=2 layernorm residual",
          "two sites", ref_two_layers, sites=2),
    _case("rearrange_as_views", build_rearranged,
          "layout=(B,T,H*D) views permute bias=view(B,H,T,1)-view(B,H,1,T)",
          "einops written out", ref_rearranged),
    _case("fox_pro_block", build_pro,
          "block=pro kv_shift qk_norm output_gate",
          "the FoX Pro block", ref_pro),
    _case("segsum_softmax", build_segsum,
          "cumsum=segsum(T x T over the query axis of a broadcast) mask=built_in",
          "segsum is c_i - c_j", ref_bhtd_qkvg),
    _case("compiled_bound_forward", build_bound_forward,
          "host=bound_forward mask=full(finfo.min).triu additive softmax=dtype_f32",
          "LLaMA-like", ref_bound_forward, mixed=True),
    _case("lam_input_spiky_guard", build_spiky_lam,
          "gate=lam_input(non-monotone spikes at tile edges) mask=where",
          "the guard must switch pruning off", ref_lam_bhtd, decay="guarded"),
    _case("sdpa_prefill_chunk_3d", build_sdpa_chunk,
          "sdpa layout=3d M<N bias=rows_sliced mask=where(cols<=rows)",
          "SDPA chunked prefill",
          lambda fn, inp: ref_flat(fn, inp)),
    _case("packed_cu_seqlens_searchsorted", build_packed_cu_seqlens,
          "padding=packed(cu_seqlens input, searchsorted) mask=masked_fill(~(same&tril))",
          "packed sequences, flash-attn style", ref_packed_cu_seqlens),
    _case("packed_bos_cumsum_module", build_packed_bos,
          "padding=packed(cumsum of BOS per row) layout=bthd qk=einsum mask=where(same*arange)",
          "packed token stream, ids per batch row", ref_packed_bos, mixed=True, inductor=True),
    _case("packed_sdpa_bucketize", build_packed_sdpa,
          "sdpa padding=packed(bucketize) mask=where(logical_and(same,tril),bias,-inf)",
          "packed sequences through SDPA's float mask", ref_packed_sdpa),
    _case("packed_additive_doc_input", build_packed_additive,
          "padding=packed(doc ids input, !=) mask=additive(-1e9 doc + full(-inf).triu) gqa=repeat_interleave",
          "additive document mask", ref_packed_additive),
    _case("left_padded_hf_attention_mask", build_left_padded_hf,
          "padding=left(attention_mask 0/1 ints, [:,None,None,:].bool()) mask=buffer&pad finfo.min "
          "gate=masked_fill(mask==0,0).float() softmax=F",
          "HF-style left padding: a key mask", ref_left_padded_hf, decay="guarded", mixed=True,
          inductor=True,
          rows=_valid_rows_bt),
    _case("prefill_left_padded_cache", build_prefill_left_padded,
          "padding=left(valid (B,N)) decode=prefill(M<N) mask=tril(N-M)_then_masked_fill(~valid) qk=einsum",
          "chunked prefill after a left-padded cache", ref_prefill_left_padded, decay="guarded"),
    _case("einsum_padded_where_nan_to_num", build_einsum_padded_where,
          "padding=left(valid.view(B,1,1,T)) layout=bthd qk=einsum mask=where(tril&valid) -inf "
          "nan_repair=nan_to_num gate=where(valid,logsigmoid,0)",
          "padding through torch.where", ref_einsum_padded_where, decay="guarded",
          rows=_valid_rows_bthd),
]
