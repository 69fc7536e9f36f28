"""Near misses: document masks that are not the packed-sequence mask (with the causal mask).

The document mask alone, query and key ids from two different tensors, doc_i <= doc_j.

Each model is followed by its labels, `CASES.append(_nm(...))` (tests/corpus/__init__.py says what
they mean); the reference hooks return the forgetting attention a careless rewrite would produce
("differs") or, where the model is that operator, the operator itself ("equal").
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference
from .common import _causal, _nm, _qkvg

CASES: list[Case] = []


def _packed_inputs(B, H, T, D, dtype):
    """q, k, v, gate logits and the document ids (B, T) of random-length packed documents."""
    lengths = torch.randint(2, 9, (B, T))
    doc = torch.stack([torch.repeat_interleave(torch.arange(T), row)[:T] for row in lengths])
    return (*_qkvg(B, H, T, D, dtype), doc)


def ref_packed(fn, inputs):
    q, k, v, g, doc = inputs
    return Ref(fox_reference(q, k, v, cumlog(F.logsigmoid(g.double())), doc=doc))


def _packed_builder(fn, B, H, T, D):
    def build(dtype):
        return fn, _packed_inputs(B, H, T, D, dtype)

    return build


def packed_without_causal(q, k, v, g, doc):
    """The document mask alone: every key of the document, future ones too."""
    c = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + c[..., :, None] - c[..., None, :]
    same = (doc[:, :, None] == doc[:, None, :])[:, None]
    return s.masked_fill(~same, float("-inf")).softmax(-1) @ v


CASES.append(_nm(
    "nm_packed_without_causal", _packed_builder(packed_without_causal, 2, 2, 21, 8),
    "padding=packed mask=same_doc_only", "the document mask alone sees the future", ref_packed))


def packed_two_id_vectors(q, k, v, g, doc):
    """Query ids and key ids from two different vectors (keys shifted by one document)."""
    c = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + c[..., :, None] - c[..., None, :]
    key_doc = doc + (doc[:, -1:] > 100).long()   # equal values, but a different tensor
    keep = (doc[:, :, None] == key_doc[:, None, :])[:, None] & _causal(q.shape[2], q.device)
    return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v


CASES.append(_nm(
    "nm_packed_two_id_vectors", _packed_builder(packed_two_id_vectors, 2, 2, 19, 8),
    "padding=packed mask=doc_i==other_j", "ids of two different tensors compared", ref_packed,
    relation="equal"))


def packed_doc_le(q, k, v, g, doc):
    """doc_i <= doc_j with the causal mask: the packed mask only for ids that never decrease,
    which the graph cannot show."""
    c = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + c[..., :, None] - c[..., None, :]
    keep = (doc[:, :, None] <= doc[:, None, :])[:, None] & _causal(q.shape[2], q.device)
    return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v


CASES.append(_nm(
    "nm_packed_doc_le", _packed_builder(packed_doc_le, 2, 2, 23, 8),
    "padding=packed mask=doc_i<=doc_j&tril", "equal to the packed mask only for monotone ids",
    ref_packed, relation="equal"))
