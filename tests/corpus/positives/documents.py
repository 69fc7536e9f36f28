"""Positives: packed sequences.

Several documents in one row, attention kept within each document: cu_seqlens with searchsorted,
a cumsum of BOS tokens, bucketize of the positions on the boundaries, document ids handed in.

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
from .common import _case, _gate, _heads_first, _logsig_lam, _randn

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# Packed sequences, flash-attn style: cu_seqlens handed in, document of each position by
# searchsorted, keep = same document & tril, masked_fill(~keep).
def _cu_seqlens(T, n_docs):
    """Random document boundaries 0 = c_0 < c_1 < ... < c_n = T (int32)."""
    inner = torch.randperm(T - 1)[: n_docs - 1].sort().values + 1
    return torch.cat([torch.tensor([0]), inner, torch.tensor([T])]).to(torch.int32)


def fox_packed_cu_seqlens(q, k, v, g, cu_seqlens):  # q, k, v (B, H, T, D); g (B, H, T)
    T = q.shape[2]
    pos = torch.arange(T, device=q.device, dtype=torch.int32)
    doc = torch.searchsorted(cu_seqlens, pos, right=True)  # (T,)
    same_doc = doc[:, None] == doc[None, :]
    causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~(same_doc & causal), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


def build_packed_cu_seqlens(dtype):
    B, H, T, D = 2, 2, 29, 16
    return fox_packed_cu_seqlens, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
        _cu_seqlens(T, 4),
    )


def ref_packed_cu_seqlens(fn, inputs):
    q, k, v, g, cu = inputs
    doc = torch.searchsorted(cu, torch.arange(q.shape[2], dtype=cu.dtype), right=True)
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, doc=doc), [lam])


CASES.append(_case(
    "packed_cu_seqlens_searchsorted", build_packed_cu_seqlens,
    "padding=packed(cu_seqlens input, searchsorted) mask=masked_fill(~(same&tril))",
    "packed sequences, flash-attn style", ref_packed_cu_seqlens))


# ---------------------------------------------------------------------------------------------
# Packed token stream, (B, T, H, D) module: documents counted by a cumsum of BOS tokens per
# batch row, bool product of the document mask with an arange causal mask, torch.where.
class PackedBosForget(nn.Module):
    BOS = 0

    def __init__(self, hidden=24, heads=2, head_dim=12):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.qkv = nn.Linear(hidden, 3 * heads * head_dim, bias=False)
        self.fgate = nn.Linear(hidden, heads)
        self.out = nn.Linear(heads * head_dim, hidden, bias=False)

    def forward(self, x, input_ids):  # x (B, T, C), input_ids (B, T)
        B, T, _ = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.heads, self.head_dim).unbind(2)
        log_f = F.logsigmoid(self.fgate(x).float())                  # (B, T, H)
        lam = torch.cumsum(log_f, dim=1).transpose(1, 2)             # (B, H, T)
        doc = torch.cumsum((input_ids == self.BOS).int(), dim=1)     # (B, T)
        same_doc = doc.unsqueeze(-1) == doc.unsqueeze(-2)            # (B, T, T)
        pos = torch.arange(T, device=x.device)
        keep = same_doc[:, None] * (pos[:, None] >= pos[None, :])    # (B, 1, T, T)
        s = torch.einsum("bihd,bjhd->bhij", q, k) * self.head_dim ** -0.5
        s = s + (lam[..., :, None] - lam[..., None, :]).to(s.dtype)
        s = torch.where(keep, s, float("-inf"))
        o = torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v)
        return self.out(o.reshape(B, T, -1))


def _token_ids(B, T, bos_rate=0.2):
    ids = torch.randint(1, 50, (B, T))
    return ids.masked_fill(torch.rand(B, T) < bos_rate, PackedBosForget.BOS)


def build_packed_bos(dtype):
    m = PackedBosForget().to(dtype)
    return m, (_randn(2, 23, 24, dtype=dtype), _token_ids(2, 23))


def ref_packed_bos(m, inputs):
    x, ids = inputs
    B, T, C = x.shape
    q, k, v = (_heads_first(t) for t in m.qkv(x).view(B, T, 3, m.heads, m.head_dim).unbind(2))
    lam = _logsig_lam(m.fgate(x), dim=1).transpose(1, 2)
    doc = torch.cumsum((ids == m.BOS).long(), dim=1)
    o = fox_reference(q, k, v, lam, doc=doc)
    return Ref(m.out(o.transpose(1, 2).reshape(B, T, -1)), [lam])


CASES.append(_case(
    "packed_bos_cumsum_module", build_packed_bos,
    "padding=packed(cumsum of BOS per row) layout=bthd qk=einsum mask=where(same*arange)",
    "packed token stream, ids per batch row", ref_packed_bos, mixed=True, inductor=True))


# ---------------------------------------------------------------------------------------------
# SDPA with a float mask: the gate bias kept where logical_and(same document, tril), -inf
# elsewhere; documents by bucketize of the positions on the boundaries.
def fox_packed_sdpa(q, k, v, g, starts):  # starts: first position of documents 1.. (int64)
    T = q.shape[-2]
    pos = torch.arange(T, device=q.device)
    doc = torch.bucketize(pos, starts, right=True)
    keep = torch.logical_and(doc[None, :, None] == doc[None, None, :],
                             torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)))
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    bias = torch.where(keep, lam.unsqueeze(-1) - lam.unsqueeze(-2), float("-inf"))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def build_packed_sdpa(dtype):
    B, H, T, D = 2, 2, 31, 16
    return fox_packed_sdpa, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
        _cu_seqlens(T, 4)[1:-1].long(),
    )


def ref_packed_sdpa(fn, inputs):
    q, k, v, g, starts = inputs
    doc = torch.bucketize(torch.arange(q.shape[-2]), starts, right=True)
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, doc=doc), [lam])


CASES.append(_case(
    "packed_sdpa_bucketize", build_packed_sdpa,
    "sdpa padding=packed(bucketize) mask=where(logical_and(same,tril),bias,-inf)",
    "packed sequences through SDPA's float mask", ref_packed_sdpa))


# ---------------------------------------------------------------------------------------------
# Additive masks, document ids handed in per batch row: -1e9 where doc_i != doc_j, plus the
# usual full(-inf).triu(1), both added to the scores (GQA by repeat_interleave).
def fox_packed_additive(q, k, v, g, doc_ids):  # q (B, H, T, D); k, v (B, Hkv, T, D); doc (B, T)
    T = q.shape[2]
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    v = v.repeat_interleave(q.shape[1] // v.shape[1], dim=1)
    other_doc = (doc_ids[:, :, None] != doc_ids[:, None, :])[:, None]   # (B, 1, T, T)
    doc_mask = torch.zeros(other_doc.shape, dtype=q.dtype, device=q.device).masked_fill(other_doc, -1e9)
    future = torch.full((T, T), float("-inf"), dtype=q.dtype, device=q.device).triu(1)
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = torch.matmul(q, k.transpose(-1, -2)) * q.shape[-1] ** -0.5
    s = s + future + doc_mask + lam[..., :, None] - lam[..., None, :]
    return torch.matmul(torch.softmax(s, dim=-1), v)


def build_packed_additive(dtype):
    B, H, Hkv, T, D = 2, 4, 2, 27, 8
    lengths = torch.randint(1, 9, (B, T))
    doc = torch.stack([torch.repeat_interleave(torch.arange(T), row)[:T] for row in lengths])
    return fox_packed_additive, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _randn(B, Hkv, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
        doc,
    )


def ref_packed_additive(fn, inputs):
    q, k, v, g, doc = inputs
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, doc=doc), [lam])


CASES.append(_case(
    "packed_additive_doc_input", build_packed_additive,
    "padding=packed(doc ids input, !=) mask=additive(-1e9 doc + full(-inf).triu) gqa=repeat_interleave",
    "additive document mask", ref_packed_additive))
