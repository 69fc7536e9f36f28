"""Positives: how the T x T bias c_i - c_j is built.

ALiBi slopes (from a buffer: guarded; a Python constant: proven), rows minus their transpose, a
lam that starts with cat(zeros, ...), and a Mamba-2 style segsum.

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
from .common import F64, _case, _gate, _randn, ref_bhtd_qkvg

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# BLOOM-style ALiBi: key-only slope * j from a slopes buffer, alibi.baddbmm(q, k^T, alpha),
# finfo.min mask, softmax in fp32 then cast. Slopes are tensor data: guarded.
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


CASES.append(_case(
    "bloom_alibi_baddbmm", build_bloom,
    "alibi=key_only_slope*j(buffer) qk=baddbmm(alpha,beta) mask=finfo.min softmax=dtype_f32",
    "ALiBi slopes from a buffer: guarded", ref_bloom, decay="guarded", mixed=True))


# ---------------------------------------------------------------------------------------------
# ALiBi as a distance matrix -slope * (i - j) with one Python-float slope; torch.where mask.
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


CASES.append(_case(
    "alibi_distance_scalar_slope", build_alibi_scalar,
    "alibi=-slope*(i-j)(python float) mask=where(full_like)",
    "constant-rate decay", ref_alibi_scalar))


# ---------------------------------------------------------------------------------------------
# Bias by repeat + transpose: rows[..., i, j] = lam_i, bias = rows - rows^T.
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


CASES.append(_case(
    "bias_repeat_transpose", build_repeat_transpose,
    "bias=repeat+transpose mask=tril.bool()",
    "rows minus their transpose", ref_bhtd_qkvg))


# ---------------------------------------------------------------------------------------------
# lam = cat(zeros, cumsum(log f[1:])): the first step's gate is never used.
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


CASES.append(_case(
    "cat_zeros_cumsum", build_cat_zero,
    "cumsum=cat(zeros,cumsum(lf[1:]))",
    "first gate unused", ref_cat_zero))


# ---------------------------------------------------------------------------------------------
# The bias from a Mamba-2 style segsum (a masked T x T cumsum over the query axis of a broadcast
# vector: exactly c_i - c_j, causal mask included), fed to a softmax.
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


CASES.append(_case(
    "segsum_softmax", build_segsum,
    "cumsum=segsum(T x T over the query axis of a broadcast) mask=built_in",
    "segsum is c_i - c_j", ref_bhtd_qkvg))
