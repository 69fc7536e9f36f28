"""What the positive families share: input makers, the reference hooks of the common layouts
(q, k, v and gate logits in (B, H, T, D), flattened (B*H, T, D) or (B, T, H, D)), and `_case`, which
turns a positive's labels into a `Case` (every site rewritten, nothing declined).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import Case, Ref
from ..reference import cumlog, fox_reference

F64 = torch.float64
LOG2E = 1.4426950408889634


def _randn(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=dtype) * scale


def _gate(*shape, dtype):
    """Forget-gate logits: logsigmoid of these spans about -4..0, so lam falls by ~0.5 a step."""
    return torch.randn(*shape, dtype=dtype) * 1.5 + 1.0


def _lam_data(*shape, dtype):
    """An already-cumulative lam, as a cache or an upstream op would hand it in (non-increasing)."""
    return torch.cumsum(F.logsigmoid(_gate(*shape, dtype=dtype)), dim=-1)


def _heads_first(x):  # (B, T, H, D) -> (B, H, T, D)
    return x.transpose(1, 2)


def _logsig_lam(g, dim=-1):
    return cumlog(F.logsigmoid(g.double()), dim=dim)


def ref_bhtd_qkvg(fn, inputs, scale=None):
    q, k, v, g = inputs
    lam = _logsig_lam(g)
    return Ref(fox_reference(q, k, v, lam, scale), [lam])


def ref_flat(fn, inputs, lam_of=None, scale=None):
    q, k, v, g = inputs
    lam = (_logsig_lam(g) if lam_of is None else lam_of(g))[None]
    o = fox_reference(q[None], k[None], v[None], lam, scale)[0]
    return Ref(o, [lam])


def ref_bthd_qkvg(fn, inputs, scale=None):
    q, k, v, g = inputs
    lam = _logsig_lam(g, dim=1).transpose(1, 2)
    o = fox_reference(_heads_first(q), _heads_first(k), _heads_first(v), lam, scale)
    return Ref(o.transpose(1, 2), [lam])


def _case(name, build, axes, note, ref, decay="proven", sites=1, **kw):
    return Case(
        name=name,
        build=build,
        sites=sites,
        decay=[decay] * sites if isinstance(decay, str) else decay,
        declined_min=0,
        note=note,
        axes=tuple(axes.split()),
        reference=ref,
        **kw,
    )
