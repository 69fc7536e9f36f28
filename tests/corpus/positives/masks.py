"""Positives: causal mask spellings.

In-place (masked_fill_, +=, *=), boolean index assignment, finfo.min before the bias, finite
additive buffers (-finfo.max), and nanoGPT's tril buffer == 0 -> -1e9.

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
from .common import _case, _gate, _heads_first, _logsig_lam, _randn, ref_bhtd_qkvg, ref_bthd_qkvg

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# In-place: scores *= scale; scores += bias; scores.masked_fill_(...).
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


CASES.append(_case(
    "inplace_scale_bias_mask", build_inplace,
    "bias=inplace(+=) scale=inplace(*=) mask=masked_fill_",
    "in-place everything", ref_bhtd_qkvg))


# ---------------------------------------------------------------------------------------------
# Boolean index assignment: s[..., ~keep] = -inf.
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


CASES.append(_case(
    "bool_index_assign_mask", build_index_assign,
    "mask=s[...,~keep]=-inf",
    "index_put mask", ref_bhtd_qkvg))


# ---------------------------------------------------------------------------------------------
# Masked with finfo.min before the bias is added.
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


CASES.append(_case(
    "finfo_min_mask_before_bias", build_mask_then_bias,
    "mask=finfo.min_before_bias",
    "masked before the bias add", ref_bhtd_qkvg))


# ---------------------------------------------------------------------------------------------
# (B, T, H, D) module with a -finfo.max additive mask buffer and lam in (B, T, H).
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


CASES.append(_case(
    "neg_finfo_max_buffer_bthd", build_neg_max,
    "layout=bthd(permute) mask=-finfo.max_buffer_sliced",
    "finite additive mask", ref_bthd_qkvg))


# ---------------------------------------------------------------------------------------------
# nanoGPT with a forget gate: tril "bias" buffer sliced [:, :, :T, :T] == 0 -> -1e9.
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


CASES.append(_case(
    "nanogpt_minus_1e9", build_nanogpt,
    "mask=buffer[:,:,:T,:T]==0->-1e9 module=nanogpt",
    "nanoGPT with a gate", ref_nanogpt, inductor=True))
