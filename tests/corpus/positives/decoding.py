"""Positives: queries at the end of the keys.

Decoding one query against a cache of lam, chunked prefill (M < N, the mask's diagonal offset),
and Python loops over query chunks or fixed-length segments (one site per iteration).

Each model is written as its own little codebase would write it (on purpose: no shared attention
helper); below it, its reference hook restates in canonical (B, H, T, D) form what it computes, and
`CASES.append(_case(...))` gives its labels (tests/corpus/__init__.py says what they mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import fox_reference
from .common import _case, _gate, _lam_data, _logsig_lam, _randn, ref_bhtd_qkvg

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# Decoding: one query against a cache; the cache holds lam; the new step's gate is appended.
def fox_decode_step(q, k_cache, v_cache, lam_cache, fg_new):
    # q: (B, H, 1, D); k_cache, v_cache: (B, H, N, D) incl. the new token; lam_cache: (B, H, N-1)
    lam_new = lam_cache[..., -1:] + F.logsigmoid(fg_new)  # (B, H, 1)
    lam = torch.cat([lam_cache, lam_new], dim=-1)  # (B, H, N)
    s = torch.einsum("bhqd,bhkd->bhqk", q, k_cache) * q.shape[-1] ** -0.5
    s = s + (lam_new[..., None] - lam[..., None, :])
    p = s.softmax(-1)
    return torch.einsum("bhqk,bhkd->bhqd", p, v_cache)


def build_decode(dtype):
    B, H, N, D = 2, 2, 27, 16
    return fox_decode_step, (
        _randn(B, H, 1, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _lam_data(B, H, N - 1, dtype=dtype),
        _gate(B, H, 1, dtype=dtype),
    )


def ref_decode(fn, inputs):
    q, k, v, lam_cache, fg = inputs
    lam = torch.cat([lam_cache, lam_cache[..., -1:] + F.logsigmoid(fg)], dim=-1)
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_case(
    "decode_lam_cache", build_decode,
    "decode=M1 gate=lam_cache_input+logsigmoid cat qk=einsum mask=none_needed",
    "one query at the end needs no mask; the cached lam is data", ref_decode, decay="guarded"))


# ---------------------------------------------------------------------------------------------
# Chunked prefill: M queries at the end of N keys; rows sliced [-M:], tril(diagonal=N-M).
def fox_prefill_chunk(q, k, v, fg):  # q: (B, H, M, D); k, v: (B, H, N, D); fg: (B, H, N)
    M, N = q.shape[-2], k.shape[-2]
    c = F.logsigmoid(fg).cumsum(-1)
    s = q @ k.transpose(-2, -1) * (q.shape[-1] ** -0.5)
    s = s + c[..., -M:, None] - c[..., None, :]
    keep = torch.tril(torch.ones(M, N, dtype=torch.bool, device=q.device), diagonal=N - M)
    s = s.masked_fill(~keep, float("-inf"))
    return torch.softmax(s, -1) @ v


def build_prefill_chunk(dtype):
    B, H, M, N, D = 2, 2, 7, 23, 8
    return fox_prefill_chunk, (
        _randn(B, H, M, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _randn(B, H, N, D, dtype=dtype),
        _gate(B, H, N, dtype=dtype),
    )


CASES.append(_case(
    "prefill_chunk_tril_offset", build_prefill_chunk,
    "M<N bias=rows_sliced[-M:] mask=tril(diagonal=N-M)",
    "queries at the end", ref_bhtd_qkvg))


# ---------------------------------------------------------------------------------------------
# A Python loop over query chunks (chunked prefill in one call): chunk c attends keys
# [0, end_c), rows of lam sliced per chunk, tril(diagonal=start_c); outputs concatenated.
def fox_query_chunk_loop(q, k, v, fg, chunk=16):  # q, k, v: (B, H, T, D); fg: (B, H, T)
    T = q.shape[2]
    lam = torch.cumsum(F.logsigmoid(fg), dim=-1)
    outs = []
    for start in range(0, T, chunk):
        end = min(start + chunk, T)
        s = torch.matmul(q[:, :, start:end], k[:, :, :end].transpose(-1, -2)) / math.sqrt(q.shape[-1])
        s = s + lam[:, :, start:end].unsqueeze(-1) - lam[:, :, :end].unsqueeze(-2)
        keep = torch.ones(end - start, end, dtype=torch.bool, device=q.device).tril(diagonal=start)
        s = torch.where(keep, s, torch.finfo(s.dtype).min)
        outs.append(torch.matmul(F.softmax(s, dim=-1), v[:, :, :end]))
    return torch.cat(outs, dim=2)


def ref_query_chunk_loop(fn, inputs, chunk=16):
    """The chunks together compute the whole sequence's attention; each site reads the same lam."""
    whole = ref_bhtd_qkvg(fn, inputs)
    return Ref(whole.output, whole.lams * math.ceil(inputs[0].shape[2] / chunk))


def build_query_chunk_loop(dtype):
    B, H, T, D = 2, 2, 41, 8
    return fox_query_chunk_loop, (_randn(B, H, T, D, dtype=dtype), _randn(B, H, T, D, dtype=dtype),
                                  _randn(B, H, T, D, dtype=dtype), _gate(B, H, T, dtype=dtype))


CASES.append(_case(
    "query_chunk_loop", build_query_chunk_loop,
    "M<N loop=query_chunks bias=rows_sliced mask=tril(diagonal=start) where_finfo_min",
    "a Python loop over query chunks: one site per chunk", ref_query_chunk_loop, sites=3))


# ---------------------------------------------------------------------------------------------
# A Python loop over equal segments (documents of a fixed length): each segment is its own
# sequence, with its own cumsum, in (B, T, H, D) through einsum.
def fox_segment_loop(q, k, v, fg, segment=12):  # q, k, v: (B, T, H, D); fg: (B, T, H)
    T, D = q.shape[1], q.shape[-1]
    outs = []
    for start in range(0, T, segment):
        part = slice(start, min(start + segment, T))
        lam = F.logsigmoid(fg[:, part]).cumsum(1).transpose(1, 2)            # (B, H, L)
        s = torch.einsum("bihd,bjhd->bhij", q[:, part], k[:, part]) * D ** -0.5
        s = s + (lam[..., :, None] - lam[..., None, :])
        length = s.shape[-1]
        s = s.masked_fill(torch.triu(torch.ones(length, length, dtype=torch.bool, device=q.device), 1),
                          float("-inf"))
        outs.append(torch.einsum("bhij,bjhd->bihd", s.softmax(-1), v[:, part]))
    return torch.cat(outs, dim=1)


def build_segment_loop(dtype):
    B, T, H, D = 2, 30, 2, 8
    return fox_segment_loop, (_randn(B, T, H, D, dtype=dtype), _randn(B, T, H, D, dtype=dtype),
                              _randn(B, T, H, D, dtype=dtype), _gate(B, T, H, dtype=dtype))


def ref_segment_loop(fn, inputs, segment=12):
    q, k, v, g = (x.transpose(1, 2) for x in inputs)  # (B, H, T, .)
    T = q.shape[2]
    outs, lams = [], []
    for start in range(0, T, segment):
        part = slice(start, min(start + segment, T))
        lam = _logsig_lam(g[..., part])
        outs.append(fox_reference(q[:, :, part], k[:, :, part], v[:, :, part], lam))
        lams.append(lam)
    return Ref(torch.cat(outs, dim=2).transpose(1, 2), lams)


CASES.append(_case(
    "segment_loop_bthd_einsum", build_segment_loop,
    "layout=bthd loop=segments qk=einsum cumsum=dim1+transpose mask=masked_fill_triu",
    "a Python loop over fixed-length segments: one site per segment", ref_segment_loop,
    sites=3))
