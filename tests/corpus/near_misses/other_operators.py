"""Near misses: other operators that look like attention with a decay.

Contextual positions, stick-breaking, selective attention, RetNet retention, Mamba-2's quadratic
form, mLSTM's normaliser, sigmoid attention: a decay over T x T, but not softmax(q.k + lam_i - lam_j).

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
    F64, _causal, _nm, _qkv_builder, _qkvg, _qkvg_builder, _randn, ref_fox_logsig,
    ref_plain_causal,
)

CASES: list[Case] = []


# Contextual positions (CoPE-like): gates sigmoid(q_i . k_j), positions = sum of gates from j to i.
def contextual_position_bias(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    causal = _causal(T, q.device)
    gates = torch.sigmoid(s).masked_fill(~causal, 0.0)
    pos = gates.flip(-1).cumsum(-1).flip(-1)  # pos[i, j] = sum_{l >= j} gate[i, l]
    s = (s - 0.5 * pos).masked_fill(~causal, float("-inf"))
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_contextual_position", _qkv_builder(contextual_position_bias, 2, 2, 15, 8),
    "bias=cumsum over keys of sigmoid(q.k)", "q.k-dependent gate", ref_plain_causal))


# Stick-breaking attention: A_ij = beta_ij prod_{j<l<i} (1 - beta_il); no softmax.
def stick_breaking(q, k, v):
    z = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    T = z.shape[-1]
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=z.device), diagonal=-1)
    log_beta = F.logsigmoid(z)
    log_1m = F.logsigmoid(-z).masked_fill(~strict, 0.0)
    between = log_1m.flip(-1).cumsum(-1).flip(-1) - log_1m  # sum over j < l < i
    log_att = (log_beta + between).masked_fill(~strict, float("-inf"))
    return log_att.exp() @ v


CASES.append(_nm(
    "nm_stick_breaking", _qkv_builder(stick_breaking, 2, 2, 13, 8),
    "softmax=none stick_breaking", "no softmax", ref_plain_causal, declined_min=0))


# Selective attention: a cumsum over the query axis of a T x T selection matrix.
def selective_attention(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    causal = _causal(T, q.device)
    eye = torch.eye(T, dtype=torch.bool, device=q.device)
    sel = F.relu(s).masked_fill(~causal | eye, 0.0)
    forget = torch.cumsum(sel, dim=-2) - sel  # sum over earlier queries l < i of sel[l, j]
    s = (s - forget).masked_fill(~causal, float("-inf"))
    return torch.softmax(s, -1) @ v


CASES.append(_nm(
    "nm_selective_attention", _qkv_builder(selective_attention, 1, 2, 17, 8),
    "cumsum=query_axis_of_TxT", "selective attention", ref_plain_causal))


# RetNet retention: gamma^(i-j) decay, no softmax.
class Retention(nn.Module):
    def __init__(self, heads=3):
        super().__init__()
        gammas = 1 - 2.0 ** (-2 - torch.arange(heads, dtype=torch.float32))
        self.register_buffer("log_gamma", torch.log(gammas))

    def forward(self, q, k, v):
        T = q.shape[2]
        n = torch.arange(T, device=q.device)
        dist = (n[:, None] - n[None, :]).to(q.dtype)
        decay = torch.exp(self.log_gamma[:, None, None] * dist).masked_fill(~_causal(T, q.device), 0.0)
        ret = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * decay
        return ret @ v


def build_retention(dtype):
    B, H, T, D = 2, 3, 15, 8
    return Retention(H).to(dtype), tuple(_randn(B, H, T, D, dtype=dtype) for _ in range(3))


def ref_retention(m, inputs):
    q, k, v = inputs
    lam = m.log_gamma.double()[:, None] * torch.arange(q.shape[2], dtype=F64)
    return Ref(fox_reference(q, k, v, lam))


CASES.append(_nm(
    "nm_retnet_retention", build_retention,
    "softmax=none decay=gamma^(i-j)", "retention: decay without softmax", ref_retention, declined_min=0))


# Mamba-2's quadratic (SSD) form: exp(segsum(A)) * (C B^T) X, no softmax.
def _ssd_segsum(x):
    T = x.size(-1)
    x_cumsum = torch.cumsum(x, dim=-1)
    seg = x_cumsum[..., :, None] - x_cumsum[..., None, :]
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=0)
    return seg.masked_fill(~mask, -torch.inf)


def ssd_quadratic(X, A, B, C):  # X: (b, l, h, p); A: (b, h, l) <= 0; B, C: (b, l, h, n)
    L = torch.exp(_ssd_segsum(A))
    return torch.einsum("blhn,bshn,bhls,bshp->blhp", C, B, L, X)


def build_ssd(dtype):
    b, l, h, p, n = 2, 13, 2, 8, 8
    A = -F.softplus(_randn(b, h, l, dtype=dtype))
    return ssd_quadratic, (
        _randn(b, l, h, p, dtype=dtype),
        A,
        _randn(b, l, h, n, dtype=dtype),
        _randn(b, l, h, n, dtype=dtype),
    )


def ref_ssd(fn, inputs):
    X, A, B, C = inputs
    lam = cumlog(A)
    o = fox_reference(C.transpose(1, 2), B.transpose(1, 2), X.transpose(1, 2), lam, 1.0)
    return Ref(o.transpose(1, 2))


CASES.append(_nm(
    "nm_mamba2_quadratic", build_ssd,
    "softmax=none segsum einsum4", "SSD quadratic form", ref_ssd, declined_min=0))


# mLSTM parallel form: exp(D - m) decay matrix with a max-stabiliser that looks like a hand-written
# softmax, but the normaliser is max(|row sum|, exp(-m)).
def mlstm_parallel(q, k, v, i_gate, f_gate):
    lam = F.logsigmoid(f_gate).cumsum(-1)
    T = q.shape[-2]
    logD = lam[..., :, None] - lam[..., None, :] + i_gate[..., None, :]
    logD = logD.masked_fill(~_causal(T, q.device), float("-inf"))
    m = logD.amax(-1, keepdim=True)
    C = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * torch.exp(logD - m)
    n = torch.maximum(C.sum(-1, keepdim=True).abs(), torch.exp(-m))
    return (C / (n + 1e-6)) @ v


def build_mlstm(dtype):
    B, H, T, D = 2, 2, 13, 8
    q, k, v, f = _qkvg(B, H, T, D, dtype)
    return mlstm_parallel, (q, k, v, _randn(B, H, T, dtype=dtype), f)


def ref_mlstm(fn, inputs):
    q, k, v, _, f = inputs
    return Ref(fox_reference(q, k, v, cumlog(F.logsigmoid(f))))


CASES.append(_nm(
    "nm_mlstm_normaliser", build_mlstm,
    "softmax=none(max|sum|,exp(-m)) amax_exp", "looks like a hand-written softmax", ref_mlstm,
    declined_min=0))


# Sigmoid attention with a FoX bias: no softmax.
def sigmoid_attention_with_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    w = torch.sigmoid(s - math.log(T)).masked_fill(~_causal(T, q.device), 0.0)
    return w @ v


CASES.append(_nm(
    "nm_sigmoid_attention_decay", _qkvg_builder(sigmoid_attention_with_decay, 2, 2, 13, 8),
    "softmax=none(sigmoid)", "sigmoid attention", ref_fox_logsig, declined_min=0))
