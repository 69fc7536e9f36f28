"""Positives: softmax spellings.

By hand (amax, exp, sum, divide), in the log2 domain with exp2, through a float32 round trip, and
with the NaN rows repaired afterwards.

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
from .common import LOG2E, _case, _gate, _logsig_lam, _randn, ref_bhtd_qkvg, ref_bthd_qkvg

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# Softmax by hand: amax, subtract, exp, sum, divide.
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


CASES.append(_case(
    "softmax_by_hand_amax", build_manual_softmax,
    "softmax=by_hand(amax,exp,sum,div)",
    "hand-written softmax", ref_bhtd_qkvg))


# ---------------------------------------------------------------------------------------------
# The log2 domain: scores and lam times 1/ln 2, exp2, a detached running max.
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


CASES.append(_case(
    "exp2_log2_domain", build_exp2,
    "softmax=exp2_log2_domain max_detached layout=bthd",
    "scores and lam in log2 units", ref_bthd_qkvg))


# ---------------------------------------------------------------------------------------------
# softmax(s.float()).to(dtype) round trip, gate upcast with .float(), nan_to_num afterwards.
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


CASES.append(_case(
    "float_roundtrip_nan_to_num", build_float_roundtrip,
    "softmax=.float()_roundtrip nan_repair=nan_to_num gate=.float()",
    "upcast, softmax, cast back, repair", ref_bhtd_qkvg, mixed=True))


# ---------------------------------------------------------------------------------------------
# NaN repair with masked_fill(isnan(p), 0) after the softmax; gate from a module.
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


CASES.append(_case(
    "nan_repair_masked_fill_isnan", build_nan_safe,
    "nan_repair=masked_fill(isnan) gate=module",
    "NaN repair after softmax", ref_nan_safe))
