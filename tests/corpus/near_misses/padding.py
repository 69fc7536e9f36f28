"""Near misses: padding masks that are not key masks.

The careless rewrite would read the validity vector as a mask of the keys (lam = +inf on them).

Each model is followed by its labels, `CASES.append(_nm(...))` (tests/corpus/__init__.py says what
they mean); the reference hooks return the forgetting attention a careless rewrite would produce
("differs") or, where the model is that operator, the operator itself ("equal").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference
from .common import _nm, _qkvg, ref_fox_logsig

CASES: list[Case] = []


def _padded_builder(fn, B, H, T, D):
    def build(dtype):
        starts = torch.randint(3, T // 2, (B, 1))
        return fn, (*_qkvg(B, H, T, D, dtype), torch.arange(T)[None, :] >= starts)

    return build


def query_padding_mask(q, k, v, g, valid):  # valid[:, None, :, None]: masks queries, not keys
    T = q.shape[2]
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.mT * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() & valid[:, None, :, None]
    return s.masked_fill(~keep, torch.finfo(s.dtype).min).softmax(-1) @ v


def ref_fox_key_masked(fn, inputs):
    """FoX with the validity vector as a key mask (its padded rows NaN: compared on `rows`)."""
    q, k, v, g, valid = inputs
    lam = cumlog(F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam, keys=valid), [lam])


CASES.append(_nm(
    "nm_query_padding_mask", _padded_builder(query_padding_mask, 2, 2, 17, 8),
    "padding=valid[:,None,:,None](queries) mask=tril&valid finfo.min",
    "a mask of the queries is not a key mask", ref_fox_key_masked,
    rows=lambda inputs: inputs[-1][:, None, :, None]))


def prefix_lm_mask(q, k, v, g, valid):  # bidirectional over each row's prefix: varies along i and j
    T = q.shape[2]
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.mT * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    prefix = ~valid                      # the first positions of each row
    keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() | (
        prefix[:, None, :, None] & prefix[:, None, None, :])
    return torch.where(keep, s, float("-inf")).softmax(-1) @ v


CASES.append(_nm(
    "nm_prefix_lm_data_mask", _padded_builder(prefix_lm_mask, 2, 2, 19, 8),
    "padding=prefix_lm mask=tril|(prefix_i&prefix_j) where",
    "a mask from data varying along i and j (the prefix sees its future)", ref_fox_logsig))
