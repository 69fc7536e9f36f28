"""Near misses that are forgetting attention, but whose lam rises: "none" sites, which may run
unpruned but must never be pruned (a softplus gate, c_i + c_j, flipped ALiBi, a negative constant
times logsigmoid).

Each model is followed by its labels, `CASES.append(_nm(...))` (tests/corpus/__init__.py says what
they mean); the reference hooks return the forgetting attention a careless rewrite would produce
("differs") or, where the model is that operator, the operator itself ("equal").
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference
from .common import F64, _causal, _nm, _qkvg, _qkvg_builder, _randn

CASES: list[Case] = []


# A gate built with softplus (>= 0): lam rises, weights grow toward the past.
def softplus_gate(q, k, v, g):
    lam = F.softplus(g).cumsum(-1)
    T = q.shape[-2]
    s = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    s = s + (lam[..., :, None] - lam[..., None, :])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return torch.matmul(s.softmax(-1), v)


def build_softplus_gate(dtype):
    q, k, v, g = _qkvg(2, 2, 11, 8, dtype)
    return softplus_gate, (q, k, v, g - 2.0)


def ref_softplus_gate(fn, inputs):
    q, k, v, g = inputs
    lam = cumlog(F.softplus(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_nm(
    "nm_softplus_gate", build_softplus_gate,
    "gate=softplus(>=0)", "lam rises: may run, never pruned", ref_softplus_gate,
    relation="equal", declined_min=0, decay=["none"], may_decline=True))


# c_i + c_j: separable, but the key side is -c_j, which rises.
def c_plus_c(q, k, v, g):
    c = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (c[..., :, None] + c[..., None, :])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


def ref_c_plus_c(fn, inputs):
    q, k, v, g = inputs
    lam = -cumlog(F.logsigmoid(g.double()))  # c_i + c_j = (-c_j) - (-c_i) + 2 c_i: row term drops
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_nm(
    "nm_c_plus_c", _qkvg_builder(c_plus_c, 2, 2, 15, 8),
    "bias=c_i+c_j", "separable, key side rises", ref_c_plus_c,
    relation="equal", declined_min=0, decay=["none"], may_decline=True))


# ALiBi with the sign flipped: +slope * (i - j) favours the distant past.
class FlippedAlibi(nn.Module):
    def __init__(self, slope=0.25):
        super().__init__()
        self.slope = slope

    def forward(self, q, k, v):
        T = q.shape[-2]
        pos = torch.arange(T, device=q.device)
        rel = (pos[:, None] - pos[None, :]).to(q.dtype)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + self.slope * rel
        s = s.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        return s.softmax(-1) @ v


def build_flipped_alibi(dtype):
    return FlippedAlibi(), tuple(_randn(1, 2, 19, 12, dtype=dtype) for _ in range(3))


def ref_flipped_alibi(m, inputs):
    q, k, v = inputs
    lam = (m.slope * torch.arange(q.shape[-2], dtype=F64)).expand(q.shape[0], q.shape[1], -1)
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_nm(
    "nm_alibi_sign_flipped", build_flipped_alibi,
    "alibi=+slope*(i-j)", "favours the distant past", ref_flipped_alibi,
    relation="equal", declined_min=0, decay=["none"], may_decline=True))


# A negative constant times logsigmoid: log f >= 0.
def negated_gate(q, k, v, g):
    lam = (-0.5 * F.logsigmoid(g)).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


def ref_negated_gate(fn, inputs):
    q, k, v, g = inputs
    lam = cumlog(-0.5 * F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_nm(
    "nm_negative_constant_gate", _qkvg_builder(negated_gate, 2, 2, 11, 12),
    "gate=-0.5*logsigmoid", "a negative constant flips the sign", ref_negated_gate,
    relation="equal", declined_min=0, decay=["none"], may_decline=True))
