"""Positives: grouped- and multi-query attention.

Fewer key/value heads than query heads, by a grouped einsum, expand + reshape, repeat_interleave,
a tiled repeat (head h reads kv head h % Hkv), or broadcasting a single head.

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
from ..reference import fox_reference
from .common import _case, _gate, _heads_first, _logsig_lam, _randn, ref_bhtd_qkvg

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# GQA by grouped einsum: q viewed as (B, T, Hkv, G, D), scores (B, Hkv, G, T, T).
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


CASES.append(_case(
    "gqa_grouped_einsum", build_grouped_einsum,
    "layout=bthd gqa=grouped_einsum(h,g) qk=einsum(bihgd,bjhd->bhgij) pv=einsum",
    "q reshaped into groups", ref_grouped_einsum))


# ---------------------------------------------------------------------------------------------
# A GQA module: k[:, :, None].expand(...).reshape(...) (head h reads kv head h // G).
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


CASES.append(_case(
    "gqa_expand_reshape_module", build_gqa_expand,
    "gqa=expand+reshape(h//G) qk=matmul(transpose(2,3)) mask=logical_not pv=matmul",
    "GQA by expand", ref_gqa_expand, inductor=True))


# ---------------------------------------------------------------------------------------------
# GQA by repeat_interleave; softmax(dtype=float32) then cast back.
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


CASES.append(_case(
    "gqa_repeat_interleave_f32_softmax", build_gqa_ri,
    "gqa=repeat_interleave softmax=dtype_f32_then_cast mask=masked_fill_triu",
    "GQA by repeat_interleave", ref_bhtd_qkvg, mixed=True))


# ---------------------------------------------------------------------------------------------
# GQA tiled with k.repeat(1, G, 1, 1): head h reads kv head h % Hkv. Gate -softplus(-x),
# additive mask full(-inf).triu(1) built in the function.
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


CASES.append(_case(
    "gqa_tiled_repeat", build_gqa_tiled,
    "gqa=tiled(h%Hkv) gate=-softplus(-x) mask=additive_full_triu_inline",
    "head h reads kv head h % Hkv", ref_gqa_tiled))


# ---------------------------------------------------------------------------------------------
# Multi-query: only k is expanded to H heads, v stays (B, 1, T, D) and broadcasts in p @ v.
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


CASES.append(_case(
    "mqa_only_k_repeated", build_mqa,
    "gqa=mqa_only_k_expanded pv=@broadcast",
    "v broadcasts over heads in p @ v", ref_bhtd_qkvg))
