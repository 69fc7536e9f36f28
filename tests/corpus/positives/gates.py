"""Positives: where lam comes from.

lam or the per-step log f handed in as data (guarded), nn.LogSigmoid in a Sequential, a gate times
a positive constant, a per-head learned decay, and a lam with spikes that the guard must catch.

Each model is written as its own little codebase would write it (on purpose: no shared attention
helper); below it, its reference hook restates in canonical (B, H, T, D) form what it computes, and
`CASES.append(_case(...))` gives its labels (tests/corpus/__init__.py says what they mean).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference
from .common import _case, _gate, _heads_first, _lam_data, _logsig_lam, _randn

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# lam handed in, (B, T, H, D) einsum with other letters. The graph cannot prove lam falls.
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


CASES.append(_case(
    "lam_input_einsum_bthd", build_from_lam,
    "gate=lam_input layout=bthd qk=einsum(bthd,bshd->bhts)",
    "lam is data: guarded", ref_from_lam, decay="guarded"))


# ---------------------------------------------------------------------------------------------
# The FoX reference API: forgetting_attention(q, k, v, log_fgate) with per-step log f handed in
# (B, T, H), cumsum(dtype=float32). log f is data: guarded.
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


CASES.append(_case(
    "fox_reference_api_log_fgate", build_fox_api,
    "gate=log_fgate_input cumsum=dim1_dtype_f32",
    "per-step log f handed in: guarded", ref_fox_api, decay="guarded", mixed=True))


# ---------------------------------------------------------------------------------------------
# Gate as nn.Sequential(nn.Linear, nn.LogSigmoid()); qkv split with view + permute + unbind.
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


CASES.append(_case(
    "sequential_logsigmoid_gate", build_sequential_gate,
    "gate=nn.Sequential(Linear,LogSigmoid) qkv=view+permute+unbind",
    "LogSigmoid module", ref_sequential_gate))


# ---------------------------------------------------------------------------------------------
# A gate temperature: log f = logsigmoid(x) * 0.5 (a positive Python constant).
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


CASES.append(_case(
    "gate_times_positive_constant", build_tempered,
    "gate=logsigmoid*0.5",
    "a non-negative constant keeps the sign", ref_tempered))


# ---------------------------------------------------------------------------------------------
# A learned per-head decay only (no input dependence): logsigmoid(param) expanded over time.
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


CASES.append(_case(
    "per_head_learned_decay", build_per_head,
    "gate=logsigmoid(per-head param).expand bias=(H,T,T)",
    "data-independent decay", ref_per_head))


# ---------------------------------------------------------------------------------------------
# lam handed in with upward spikes at tile edges (columns 7, 15, 23, 31): a kernel that prunes
# from tile corners without the monotonicity guard would skip tiles that carry real weight.
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


CASES.append(_case(
    "lam_input_spiky_guard", build_spiky_lam,
    "gate=lam_input(non-monotone spikes at tile edges) mask=where",
    "the guard must switch pruning off", ref_lam_bhtd, decay="guarded"))
