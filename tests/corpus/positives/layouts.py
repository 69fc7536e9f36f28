"""Positives: layouts and score products.

(B, T, H, D) and (B, H, T, D) tensors and flattened heads; q k^T by @, .mT, torch.matmul, bmm,
baddbmm or einsum; the scale on q, on the product or on the biased scores.

Each model is written as its own little codebase would write it (on purpose: no shared attention
helper); below it, its reference hook restates in canonical (B, H, T, D) form what it computes, and
`CASES.append(_case(...))` gives its labels (tests/corpus/__init__.py says what they mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference
from .common import (
    _case, _gate, _heads_first, _logsig_lam, _randn, ref_bhtd_qkvg, ref_bthd_qkvg, ref_flat,
)

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# The FoX paper's own layout: (B, T, H, D) projections, gate from linear(x).float(), cumsum over
# dim 1 then transposed, c[..., :, None] - c[..., None, :], masked_fill(~tril), .softmax(-1), @.
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


CASES.append(_case(
    "fox_paper_module", build_fox_paper,
    "layout=bthd gate=logsigmoid(linear.float()) cumsum=dim1+transpose bias=index_none mask=masked_fill_tril softmax=method pv=@",
    "the FoX paper's layout", ref_fox_paper, mixed=True, inductor=True))


# ---------------------------------------------------------------------------------------------
# An attention-core function in (B, H, T, D): .mT, / math.sqrt(d), bias added in two steps,
# masked_fill(triu(ones, 1).bool()), F.softmax, torch.matmul.
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


CASES.append(_case(
    "core_bhtd_mT_sqrt", build_bhtd_mT,
    "layout=bhtd qk=mT scale=/sqrt bias=unsqueeze_two_steps mask=masked_fill_triu softmax=F pv=matmul",
    "attention-core function", ref_bhtd_qkvg))


# ---------------------------------------------------------------------------------------------
# Flattened heads (B*H, T, D) with bmm, q pre-scaled by d ** -0.5, an additive -inf mask kept as
# a registered buffer and sliced [:T, :T].
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


CASES.append(_case(
    "flat_bmm_buffer_mask", build_flat_bmm,
    "layout=3d qk=bmm scale=q_prescaled_pow mask=additive_buffer_sliced softmax=torch pv=bmm",
    "heads flattened into the batch", ref_flat))


# ---------------------------------------------------------------------------------------------
# baddbmm(bias, q, k^T, alpha=scale) with the mask baked into the bias; gate -softplus(-x).
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


CASES.append(_case(
    "baddbmm_alpha_softplus", build_baddbmm,
    "layout=3d qk=baddbmm(alpha) gate=-softplus(-x) mask=baked_into_bias tril_ pv=bmm",
    "mask baked into the baddbmm input",
    lambda fn, inp: ref_flat(fn, inp, lam_of=lambda g: cumlog(-F.softplus(-g)))))


# ---------------------------------------------------------------------------------------------
# (B, T, H, D) everywhere with einsum "bqhd,bkhd->bhqk", cumsum over dim 1 then transposed,
# torch.where(keep, s, -inf), einsum back to (B, T, H, D).
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


CASES.append(_case(
    "einsum_bthd_where", build_einsum_bthd,
    "layout=bthd qk=einsum(bqhd,bkhd->bhqk) cumsum=dim1+transpose mask=where pv=einsum",
    "einsum everywhere", ref_bthd_qkvg))


# ---------------------------------------------------------------------------------------------
# lucidrains-style: einsum with spaced letters, gate clamp(-10, 0) of a projection, cumsum with
# dtype=torch.float32, mask by triu(j - i + 1) filled with -finfo.max.
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


CASES.append(_case(
    "lucidrains_clamp_gate", build_clamp_gate,
    "qk=einsum_spaced gate=clamp(-10,0) cumsum=dtype_f32 mask=triu(j-i+1) -finfo.max",
    "clamp(max=0) proves log f <= 0", ref_clamp_gate, mixed=True))


# ---------------------------------------------------------------------------------------------
# The scale applied to (QK + bias), which rescales the gate as well.
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


CASES.append(_case(
    "scale_on_qk_plus_bias", build_scale_on_sum,
    "scale=applied_to(qk+bias) scale=/sqrt",
    "scale rescales the gate too", ref_scale_on_sum))


# ---------------------------------------------------------------------------------------------
# einops-rearrange written as views: (B, T, H*D) inputs, view + permute, lam.view(B, H, T, 1).
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


CASES.append(_case(
    "rearrange_as_views", build_rearranged,
    "layout=(B,T,H*D) views permute bias=view(B,H,T,1)-view(B,H,1,T)",
    "einops written out", ref_rearranged))
