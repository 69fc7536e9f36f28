"""Positives: F.scaled_dot_product_attention with the gate bias and the causal mask in a float
attn_mask (explicit and default scale, and chunked prefill on 3-D tensors).

Each model is written as its own little codebase would write it (on purpose: no shared attention
helper); below it, its reference hook restates in canonical (B, H, T, D) form what it computes, and
`CASES.append(_case(...))` gives its labels (tests/corpus/__init__.py says what they mean).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import fox_reference
from .common import _case, _gate, _heads_first, _logsig_lam, _randn, ref_bhtd_qkvg, ref_flat

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# SDPA with a float attn_mask = bias + full(-inf).triu(1), and an explicit scale=.
def fox_sdpa_scale(q, k, v, fg):
    T = q.shape[-2]
    lam = torch.cumsum(F.logsigmoid(fg), dim=-1)
    mask = torch.full((T, T), float("-inf"), device=q.device, dtype=q.dtype).triu(1)
    bias = lam[..., :, None] - lam[..., None, :] + mask
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=0.3)


def build_sdpa_scale(dtype):
    B, H, T, D = 2, 2, 17, 16
    return fox_sdpa_scale, (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


CASES.append(_case(
    "sdpa_float_mask_scale_kw", build_sdpa_scale,
    "sdpa attn_mask=bias+full(-inf).triu(1) scale=kw",
    "SDPA with a float mask", lambda fn, inp: ref_bhtd_qkvg(fn, inp, scale=0.3), inductor=True))


# ---------------------------------------------------------------------------------------------
# A module on SDPA with the default scale: fused qkv, gate -softplus(-x) over (B, T, H),
# bias.masked_fill(~tril, -inf) as attn_mask.
class SdpaForgetBlock(nn.Module):
    def __init__(self, dim=24, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.fgate = nn.Linear(dim, heads)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        B, T, C = x.shape
        q, k, v = self.qkv(x).split(C, dim=-1)
        q = q.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        k = k.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        v = v.view(B, T, self.heads, C // self.heads).transpose(1, 2)
        log_f = -F.softplus(-self.fgate(x))  # (B, T, H)
        lam = log_f.cumsum(dim=1).transpose(1, 2)
        bias = lam.unsqueeze(-1) - lam.unsqueeze(-2)
        causal = torch.ones(T, T, dtype=torch.bool, device=x.device).tril()
        bias = bias.masked_fill(~causal, float("-inf"))
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.proj(y.transpose(1, 2).reshape(B, T, C))


def build_sdpa_block(dtype):
    m = SdpaForgetBlock().to(dtype)
    return m, (_randn(2, 15, 24, dtype=dtype),)


def ref_sdpa_block(m, inputs):
    (x,) = inputs
    B, T, C = x.shape
    H = m.heads
    q, k, v = (_heads_first(t.reshape(B, T, H, C // H)) for t in m.qkv(x).split(C, dim=-1))
    lam = _logsig_lam(m.fgate(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.proj(o.transpose(1, 2).reshape(B, T, C)), [lam])


CASES.append(_case(
    "sdpa_module_default_scale", build_sdpa_block,
    "sdpa attn_mask=bias.masked_fill default_scale gate=-softplus(-x) qkv=fused_split",
    "SDPA in a module", ref_sdpa_block))


# ---------------------------------------------------------------------------------------------
# Chunked prefill through SDPA on 3-D (B*H, M, D) tensors: rows c[:, -M:], torch.where mask.
def fox_sdpa_chunk(q, k, v, g):  # q: (B*H, M, D); k, v: (B*H, N, D); g: (B*H, N)
    M, N = q.shape[1], k.shape[1]
    c = torch.cumsum(F.logsigmoid(g), dim=1)
    bias = c[:, -M:].unsqueeze(-1) - c.unsqueeze(1)  # (B*H, M, N)
    rows = torch.arange(N - M, N, device=q.device)[:, None]
    cols = torch.arange(N, device=q.device)[None, :]
    bias = torch.where(cols <= rows, bias, torch.full_like(bias, float("-inf")))
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def build_sdpa_chunk(dtype):
    BH, M, N, D = 4, 5, 17, 12
    return fox_sdpa_chunk, (
        _randn(BH, M, D, dtype=dtype),
        _randn(BH, N, D, dtype=dtype),
        _randn(BH, N, D, dtype=dtype),
        _gate(BH, N, dtype=dtype),
    )


CASES.append(_case(
    "sdpa_prefill_chunk_3d", build_sdpa_chunk,
    "sdpa layout=3d M<N bias=rows_sliced mask=where(cols<=rows)",
    "SDPA chunked prefill",
    lambda fn, inp: ref_flat(fn, inp)))
