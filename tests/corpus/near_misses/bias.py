"""Near misses: the bias is not lam_i - lam_j added to the scores (or there is none).

A decay or a key gate multiplied in, a per-row temperature, a clamped bias, zero-bias sink and
memory columns, a second layer whose bias is clamped (one site, one decline), and plain causal
attention with no bias at all (nothing to gain).

Each model is followed by its labels, `CASES.append(_nm(...))` (tests/corpus/__init__.py says what
they mean); the reference hooks return the forgetting attention a careless rewrite would produce
("differs") or, where the model is that operator, the operator itself ("equal").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference
from .common import (
    _causal, _module_qkvg_builder, _nm, _qkv_builder, _qkvg, _qkvg_builder, _randn,
    ref_fox_logsig, ref_plain_causal,
)

CASES: list[Case] = []


# The decay multiplied into the scores instead of added to them.
def decay_times_scores(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    decay = torch.exp(lam[..., :, None] - lam[..., None, :])
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 * decay
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_decay_multiplied_into_scores", _qkvg_builder(decay_times_scores, 2, 2, 17, 8),
    "bias=multiplied exp(c_i-c_j)", "multiplicative decay", ref_fox_logsig))


# A per-key gate multiplied into the scores.
def key_gate_times_scores(q, k, v, g):
    f = torch.sigmoid(g)  # (B, H, T)
    T = q.shape[-2]
    s = q @ k.mT * q.shape[-1] ** -0.5 * f[..., None, :]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


CASES.append(_nm(
    "nm_key_gate_multiplied", _qkvg_builder(key_gate_times_scores, 2, 2, 13, 12),
    "gate=multiplied_per_key", "gate multiplied into the scores", ref_fox_logsig))


# A per-query-row temperature on the decay: r_i * (c_i - c_j) is not a_i - b_j.
def row_scaled_decay(q, k, v, g, r):
    lam = F.logsigmoid(g).cumsum(-1)
    temp = F.softplus(r)[..., :, None]  # (B, H, T, 1): depends on the query row
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + temp * (lam[..., :, None] - lam[..., None, :])
    T = s.shape[-1]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return F.softmax(s, dim=-1) @ v


def build_row_scaled(dtype):
    B, H, T, D = 2, 2, 17, 8
    return row_scaled_decay, _qkvg(B, H, T, D, dtype) + (_randn(B, H, T, dtype=dtype) * 2 + 1,)


CASES.append(_nm(
    "nm_per_row_temperature", build_row_scaled,
    "bias=r_i*(c_i-c_j)", "per-row gate: bias depends on i and j jointly", ref_fox_logsig))


# An elementwise clamp of the T x T bias.
def clamped_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    bias = (lam[..., :, None] - lam[..., None, :]).clamp(min=-4.0)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_clamped_bias", _qkvg_builder(clamped_decay, 2, 2, 25, 8),
    "bias=clamp(min=-4) of T x T", "non-linear function of the bias", ref_fox_logsig))


# Attention sinks: S extra key/value columns (per batch, given) with bias 0 for every query.
def fox_with_sinks(q, k, v, g, k_sink, v_sink):
    B, H, T, _ = q.shape
    S = k_sink.shape[2]
    lam = F.logsigmoid(g).cumsum(-1)
    kk, vv = torch.cat([k_sink, k], dim=2), torch.cat([v_sink, v], dim=2)
    bias = (lam[..., :, None] - lam[..., None, :]).masked_fill(~_causal(T, q.device), float("-inf"))
    bias = torch.cat([torch.zeros(B, H, T, S, dtype=bias.dtype, device=q.device), bias], dim=-1)
    s = q @ kk.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    return s.softmax(-1) @ vv


def build_sinks(dtype):
    B, H, T, D, S = 2, 2, 21, 8, 2
    return fox_with_sinks, _qkvg(B, H, T, D, dtype) + (
        _randn(B, H, S, D, dtype=dtype) * 2,
        _randn(B, H, S, D, dtype=dtype),
    )


CASES.append(_nm(
    "nm_attention_sinks", build_sinks,
    "sinks=zero_bias_columns cat", "breaks separability", ref_fox_logsig))


# Learned memory tokens (module parameters), zero bias padded in with F.pad.
class MemoryTokenForget(nn.Module):
    def __init__(self, heads=2, head_dim=12, num_mem=3):
        super().__init__()
        self.mem_k = nn.Parameter(torch.randn(heads, num_mem, head_dim) * 2)
        self.mem_v = nn.Parameter(torch.randn(heads, num_mem, head_dim))

    def forward(self, q, k, v, g):
        B, H, T, D = q.shape
        M = self.mem_k.shape[1]
        k = torch.cat([self.mem_k.expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([self.mem_v.expand(B, -1, -1, -1), v], dim=2)
        lam = F.logsigmoid(g).cumsum(-1)
        bias = lam[..., :, None] - lam[..., None, :]
        bias = F.pad(bias, (M, 0), value=0.0)
        s = torch.einsum("bhid,bhjd->bhij", q, k) * D**-0.5 + bias
        keep = F.pad(_causal(T, q.device), (M, 0), value=True)
        s = s.masked_fill(~keep, float("-inf"))
        return torch.einsum("bhij,bhjd->bhid", s.softmax(-1), v)


CASES.append(_nm(
    "nm_memory_tokens", _module_qkvg_builder(MemoryTokenForget, 1, 2, 17, 12),
    "memory=learned_kv F.pad(bias)", "zero-bias memory columns", ref_fox_logsig))


# Plain causal attention, no bias: nothing to gain.
def plain_causal(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return F.softmax(s, dim=-1) @ v


CASES.append(_nm(
    "nm_plain_causal_no_bias", _qkv_builder(plain_causal, 2, 2, 17, 8),
    "bias=none", "nothing to gain", ref_plain_causal, relation="equal"))


def plain_sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


CASES.append(_nm(
    "nm_plain_sdpa_is_causal", _qkv_builder(plain_sdpa_causal, 2, 2, 17, 8),
    "sdpa is_causal bias=none", "nothing to gain; SDPA already", ref_plain_causal, relation="equal",
    declined_min=0))


# One FoX layer, then a layer whose bias is clamped: one site, one decline.
class ForgetThenClamped(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv1 = nn.Linear(dim, 3 * dim, bias=False)
        self.f1 = nn.Linear(dim, heads)
        self.qkv2 = nn.Linear(dim, 3 * dim, bias=False)
        self.f2 = nn.Linear(dim, heads)

    def heads_of(self, proj, x):
        B, T, C = x.shape
        return [t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in proj(x).chunk(3, -1)]

    def merge(self, o):
        B, H, T, D = o.shape
        return o.transpose(1, 2).reshape(B, T, H * D)

    def second(self, x):
        q, k, v = self.heads_of(self.qkv2, x)
        lam = F.logsigmoid(self.f2(x)).transpose(1, 2).cumsum(-1)
        return x + self.merge(clamped_decay_lam(q, k, v, lam))

    def forward(self, x):
        T = x.shape[1]
        q, k, v = self.heads_of(self.qkv1, x)
        lam = F.logsigmoid(self.f1(x)).transpose(1, 2).cumsum(-1)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (lam[..., :, None] - lam[..., None, :])
        s = s.masked_fill(~_causal(T, x.device), float("-inf"))
        x = x + self.merge(s.softmax(-1) @ v)
        return self.second(x)


def clamped_decay_lam(q, k, v, lam):
    T = q.shape[-2]
    bias = (lam[..., :, None] - lam[..., None, :]).clamp(min=-3.0)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


def build_mixed(dtype):
    return ForgetThenClamped().to(dtype), (_randn(2, 15, 16, dtype=dtype),)


def ref_mixed(m, inputs):
    (x,) = inputs
    q, k, v = m.heads_of(m.qkv1, x)
    lam = cumlog(F.logsigmoid(m.f1(x).double()), dim=1).transpose(1, 2)
    x = x + m.merge(fox_reference(q, k, v, lam))
    return Ref(m.second(x), [lam])  # the second layer is a near miss: eager code


CASES.append(_nm(
    "nm_fox_then_clamped_layer", build_mixed,
    "sites=1 + clamped layer", "one site, one decline", ref_mixed, relation="equal",
    decay=["proven"], inductor=True))
