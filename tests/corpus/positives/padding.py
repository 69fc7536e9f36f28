"""Positives: left padding.

A key mask from attention_mask or validity flags, the padding's gates zeroed so each sequence's lam
starts at its first token; full sequences and prefill after a left-padded cache. The queries that
see no key are left out of the comparison (`rows`).

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
from .common import _case, _gate, _heads_first, _lam_data, _logsig_lam, _randn

CASES: list[Case] = []


def _left_padding(B, T, longest_pad):
    """(B, T) bool, False on a random number (0 to longest_pad) of leading positions per row."""
    starts = torch.randint(0, longest_pad + 1, (B, 1))
    return torch.arange(T)[None, :] >= starts


# ---------------------------------------------------------------------------------------------
# HF-style batch with left padding: attention_mask (B, T) of 0/1 ints, a causal buffer sliced
# and ANDed with attention_mask[:, None, None, :].bool(), finfo.min fill, F.softmax; the
# gates of the padding zeroed so each sequence's lam starts at its first token.
class LeftPaddedHFForget(nn.Module):
    def __init__(self, hidden=32, heads=2, head_dim=16, max_len=64):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.q_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(hidden, heads * head_dim, bias=False)
        self.f_proj = nn.Linear(hidden, heads)
        self.o_proj = nn.Linear(heads * head_dim, hidden, bias=False)
        causal = torch.tril(torch.ones(max_len, max_len, dtype=torch.bool))
        self.register_buffer("causal_mask", causal[None, None], persistent=False)

    def forward(self, hidden_states, attention_mask):
        B, T, _ = hidden_states.shape
        shape = (B, T, self.heads, self.head_dim)
        q = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        k = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        v = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        log_f = F.logsigmoid(self.f_proj(hidden_states).float())             # (B, T, H)
        log_f = log_f.masked_fill(attention_mask[..., None] == 0, 0.0)
        lam = torch.cumsum(log_f, dim=1).transpose(1, 2)                     # (B, H, T)
        keep = self.causal_mask[:, :, :T, :T] & attention_mask[:, None, None, :].bool()
        attn = torch.matmul(q, k.transpose(2, 3)) / math.sqrt(self.head_dim)
        attn = attn + (lam[..., :, None] - lam[..., None, :]).to(attn.dtype)
        attn = attn.masked_fill(~keep, torch.finfo(attn.dtype).min)
        attn = F.softmax(attn, dim=-1)
        out = torch.matmul(attn, v).transpose(1, 2).reshape(B, T, -1)
        return self.o_proj(out)


def build_left_padded_hf(dtype):
    m = LeftPaddedHFForget().to(dtype)
    return m, (_randn(2, 19, 32, dtype=dtype), _left_padding(2, 19, 8).long())


def ref_left_padded_hf(m, inputs):
    x, attention_mask = inputs
    B, T, _ = x.shape
    valid = attention_mask.bool()
    q, k, v = (proj(x).view(B, T, m.heads, m.head_dim).transpose(1, 2)
               for proj in (m.q_proj, m.k_proj, m.v_proj))
    lam = cumlog(F.logsigmoid(m.f_proj(x).double()) * valid[..., None], dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam, keys=valid)
    return Ref(m.o_proj(o.transpose(1, 2).reshape(B, T, -1).to(x.dtype)), [lam])


def _valid_rows_bt(inputs):
    """The queries of a (B, T, ...) output that see a key: the valid positions (left padding)."""
    return inputs[1].bool()[:, :, None]


CASES.append(_case(
    "left_padded_hf_attention_mask", build_left_padded_hf,
    "padding=left(attention_mask 0/1 ints, [:,None,None,:].bool()) mask=buffer&pad finfo.min "
    "gate=masked_fill(mask==0,0).float() softmax=F",
    "HF-style left padding: a key mask", ref_left_padded_hf, decay="guarded", mixed=True,
    inductor=True,
    rows=_valid_rows_bt))


# ---------------------------------------------------------------------------------------------
# Prefill of M new tokens after a left-padded cache: lam = cat(cache, last + cumsum(new)),
# einsum, the causal mask tril(N - M) and then the padding as a second masked_fill, -inf.
def fox_prefill_left_padded(q, k, v, lam_cache, fg_new, valid):
    # q (B, H, M, D); k, v (B, H, N, D) incl. the new tokens; lam_cache (B, H, N - M); valid (B, N)
    M, N = q.shape[2], k.shape[2]
    lam_new = lam_cache[..., -1:] + torch.cumsum(F.logsigmoid(fg_new), dim=-1)
    lam = torch.cat([lam_cache, lam_new], dim=-1)                              # (B, H, N)
    s = torch.einsum("bhid,bhjd->bhij", q, k) / math.sqrt(q.shape[-1])
    s = s + lam_new[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~torch.ones(M, N, dtype=torch.bool, device=q.device).tril(N - M), float("-inf"))
    s = s.masked_fill(~valid[:, None, None, :], float("-inf"))
    return torch.einsum("bhij,bhjd->bhid", torch.softmax(s, dim=-1), v)


def build_prefill_left_padded(dtype):
    B, H, M, N, D = 2, 2, 5, 17, 16
    return fox_prefill_left_padded, (
        _randn(B, H, M, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _lam_data(B, H, N - M, dtype=dtype),
        _gate(B, H, M, dtype=dtype),
        _left_padding(B, N, N - M - 1),   # every new token sees itself
    )


def ref_prefill_left_padded(fn, inputs):
    q, k, v, lam_cache, g, valid = inputs
    lam_new = lam_cache[..., -1:].double() + _logsig_lam(g)
    lam = torch.cat([lam_cache.double(), lam_new], dim=-1)
    return Ref(fox_reference(q, k, v, lam, keys=valid), [lam])


CASES.append(_case(
    "prefill_left_padded_cache", build_prefill_left_padded,
    "padding=left(valid (B,N)) decode=prefill(M<N) mask=tril(N-M)_then_masked_fill(~valid) qk=einsum",
    "chunked prefill after a left-padded cache", ref_prefill_left_padded, decay="guarded"))


# ---------------------------------------------------------------------------------------------
# (B, T, H, D) einsums, gates where(valid, logsigmoid, 0), keep = tril & valid.view(B, 1, 1, T)
# in torch.where around the biased scores, -inf, NaN rows of the padding repaired by nan_to_num.
def fox_einsum_padded_where(q, k, v, g, valid):  # q, k, v (B, T, H, D); g (B, T, H); valid (B, T)
    B, T = valid.shape
    log_f = torch.where(valid[..., None], F.logsigmoid(g), 0.0)
    lam = torch.cumsum(log_f, dim=1).transpose(1, 2)                            # (B, H, T)
    keep = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device)) & valid.view(B, 1, 1, T)
    s = torch.einsum("bqhd,bkhd->bhqk", q, k) * q.shape[-1] ** -0.5
    s = torch.where(keep, s + lam.unsqueeze(-1) - lam.unsqueeze(-2), float("-inf"))
    p = torch.nan_to_num(s.softmax(dim=-1))
    return torch.einsum("bhqk,bkhd->bqhd", p, v)


def build_einsum_padded_where(dtype):
    B, T, H, D = 2, 23, 2, 8
    return fox_einsum_padded_where, (
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _randn(B, T, H, D, dtype=dtype),
        _gate(B, T, H, dtype=dtype),
        _left_padding(B, T, 10),
    )


def ref_einsum_padded_where(fn, inputs):
    q, k, v, g, valid = inputs
    lam = cumlog(F.logsigmoid(g.double()) * valid[..., None], dim=1).transpose(1, 2)
    o = fox_reference(_heads_first(q), _heads_first(k), _heads_first(v), lam, keys=valid)
    return Ref(o.transpose(1, 2), [lam])


def _valid_rows_bthd(inputs):
    return inputs[-1][:, :, None, None]


CASES.append(_case(
    "einsum_padded_where_nan_to_num", build_einsum_padded_where,
    "padding=left(valid.view(B,1,1,T)) layout=bthd qk=einsum mask=where(tril&valid) -inf "
    "nan_repair=nan_to_num gate=where(valid,logsigmoid,0)",
    "padding through torch.where", ref_einsum_padded_where, decay="guarded",
    rows=_valid_rows_bthd))
