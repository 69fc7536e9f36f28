"""Near misses: the mask or the softmax axis is not causal attention's.

No causal mask, softmax over the queries, a sliding window on top of the decay, the diagonal
excluded.

Each model is followed by its labels, `CASES.append(_nm(...))` (tests/corpus/__init__.py says what
they mean); the reference hooks return the forgetting attention a careless rewrite would produce
("differs") or, where the model is that operator, the operator itself ("equal").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference
from .common import _causal, _nm, _qkvg, _qkvg_builder, ref_fox_logsig

CASES: list[Case] = []


# No causal mask: the bias grows into the future.
def bidirectional_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    s = s + lam[..., :, None] - lam[..., None, :]
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_no_causal_mask", _qkvg_builder(bidirectional_decay, 2, 2, 15, 8),
    "mask=none", "the bias grows into the future", ref_fox_logsig))


# Softmax over the query axis.
def softmax_over_queries(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(dim=-2) @ v


CASES.append(_nm(
    "nm_softmax_over_queries", _qkvg_builder(softmax_over_queries, 1, 3, 13, 8),
    "softmax=dim-2", "wrong axis", ref_fox_logsig))


# A sliding window on top of the decay: a full-causal rewrite would be wrong.
def windowed_decay(q, k, v, g, window=4):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    i = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    keep = (j <= i) & (i - j < window)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~keep, float("-inf"))
    return s.softmax(-1) @ v


def build_window(dtype):
    q, k, v, g = _qkvg(2, 2, 21, 8, dtype)
    return windowed_decay, (q, k, v, g + 2.0)


def ref_window(fn, inputs):
    q, k, v, g = inputs
    lam = cumlog(F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_nm(
    "nm_sliding_window", build_window,
    "mask=sliding_window(4)", "may be run only by a kernel that honours the window", ref_window,
    declined_min=0, decay=["proven"], may_decline=True))


# Diagonal excluded from the mask (j < i), first row repaired with nan_to_num.
def strict_causal_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=-1)
    p = torch.nan_to_num(s.masked_fill(~strict, float("-inf")).softmax(-1))
    return p @ v


CASES.append(_nm(
    "nm_strict_causal_nan_repair", _qkvg_builder(strict_causal_decay, 2, 2, 13, 8),
    "mask=tril(-1) nan_to_num", "the diagonal is excluded", ref_fox_logsig))
