"""What the near-miss families share: input makers, builders of (fn, inputs) for functions of
q, k, v (and gate logits), the reference hooks of plain FoX and plain causal attention, and `_nm`,
which turns a near miss's labels into a `Case`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference

F64 = torch.float64


def _randn(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=dtype) * scale


def _gate(*shape, dtype):
    # stronger decay than the positives (about -0.9 a step) so near misses differ visibly
    return torch.randn(*shape, dtype=dtype) * 1.5


def _qkvg(B, H, T, D, dtype):
    return (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


def _causal(T, device):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def ref_fox_logsig(fn, inputs):
    """FoX on (q, k, v, logsigmoid gate) in (B, H, T, D)."""
    q, k, v, g = inputs[:4]
    lam = cumlog(F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


def ref_plain_causal(fn, inputs):
    q, k, v = inputs[:3]
    return Ref(fox_reference(q, k, v, None))


def _qkvg_builder(fn, B, H, T, D):
    def build(dtype):
        return fn, _qkvg(B, H, T, D, dtype)

    return build


def _qkv_builder(fn, B, H, T, D):
    def build(dtype):
        return fn, tuple(_randn(B, H, T, D, dtype=dtype) for _ in range(3))

    return build


def _module_qkvg_builder(cls, B, H, T, D):
    def build(dtype):
        return cls().to(dtype), _qkvg(B, H, T, D, dtype)

    return build


def _nm(name, build, axes, note, ref, relation="differs", declined_min=1, decay=(), **kw):
    return Case(
        name=name,
        build=build,
        sites=len(decay),
        decay=list(decay),
        declined_min=declined_min,
        note=note,
        axes=tuple(axes.split()),
        reference=ref,
        relation=relation,
        **kw,
    )
