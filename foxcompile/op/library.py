"""The torch.library custom ops: forward and backward forgetting attention with ACP.

    foxcompile::attention(q, k, v, lam, scale, epsilon, prune, layout, site, doc=None)
        -> (out, lse, start, bound)
    foxcompile::attention_backward(grad_out, q, k, v, lam, out, lse, start, scale, layout,
                                   doc=None, bound=None) -> (dq, dk, dv, dlam)

layout "bthd": q (B, M, Hq, D), k (B, N, Hk, D), v (B, N, Hk, Dv); layout "bhtd": q (B, Hq, M, D),
k (B, Hk, N, D), v (B, Hk, N, Dv); out has v's head dim Dv, which may differ from D. Any strides.
lam (B or 1, Hq or 1, N): key-side cumulative log forget gate (broadcast over the size-1 dims). out is contiguous in q's layout; lse (B, Hq, M), the pruning plan's start blocks
(B, Hq, MB) int32 and the score bound U (B, Hq) (plan.score_bound, which places masked keys) are
saved for the backward, so both passes skip the same tiles and U is computed once (the backward
recomputes it when called without it: graphs compiled against the earlier schema, still in
Inductor's caches, keep working). `prune` is
a contract.Prune as an int; `site` names the call site for pruning_stats.
doc (B or 1, N) or (N,) int32/int64, optional: document ids of packed sequences, one per key
position (query i sits at position P + i); query i sees key j only when doc[P+i] == doc[j], on top
of the causal mask. No gradient. The tiles of earlier documents are skipped when doc never
decreases along N.
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.flop_counter import register_flop_formula

from .. import stats
from ..contract import Prune, accumulator
from ..kernels import (engine_for, full_lam, max_norm, may_prune, plan_start_blocks,
                       score_bounds)
from ..kernels.plan import (Plan, make_plan, num_blocks, score_bound, tile_counts,
                             tile_sizes)


def _bhtd(x: Tensor, layout: str) -> Tensor:
    """View a (B, T, H, D) or (B, H, T, D) tensor as (B, H, T, D)."""
    return x.transpose(1, 2) if layout == "bthd" else x


def _dims(q: Tensor, layout: str) -> tuple[int, int, int, int]:
    """(B, H, T, D) of a tensor in the given layout."""
    batch, a, b, head_dim = q.shape
    return (batch, b, a, head_dim) if layout == "bthd" else (batch, a, b, head_dim)


def engine_head_dim(q: Tensor, v: Tensor) -> int:
    """The one head dim the engines run. v's may differ from q's and k's (a value width of its
    own, or dynamic shapes that give them unrelated sizes); the narrower side is then zero-padded
    to the wider, which adds nothing to q.k and only zero output columns."""
    return max(q.shape[-1], v.shape[-1])


def _widened(x: Tensor, width: int) -> Tensor:
    """x zero-padded along its last (head) dim to `width`; x itself when it is that wide."""
    return x if x.shape[-1] == width else F.pad(x, (0, width - x.shape[-1]))


def _narrowed(x: Tensor, width: int) -> Tensor:
    """The first `width` columns of the last dim, contiguous; x itself when it is that wide."""
    return x if x.shape[-1] == width else x[..., :width].contiguous()


def _batch_doc(doc: Optional[Tensor], batch: int) -> Optional[Tensor]:
    """Document ids as (B, N), a broadcast view for (N,) or (1, N); None stays None."""
    if doc is None:
        return None
    return doc.expand(batch, doc.shape[-1])


@torch.library.custom_op("foxcompile::attention", mutates_args=())
def attention(q: Tensor, k: Tensor, v: Tensor, lam: Tensor, scale: float, epsilon: float,
              prune: int, layout: str, site: str,
              doc: Optional[Tensor] = None) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    batch, q_heads, n_queries, _ = _dims(q, layout)
    if batch * q_heads * n_queries == 0:  # nothing to attend: empty results, as eager gives
        return _empty_outputs(q, v, layout)
    width = engine_head_dim(q, v)
    qh, kh, vh = (_bhtd(_widened(x, width), layout) for x in (q, k, v))
    # a decoding-sized call runs dense unless asked (kernels.may_prune)
    dense_decoding = prune != Prune.OFF and epsilon > 0.0 and not may_prune(qh, kh)
    if dense_decoding:
        prune = Prune.OFF
    pruning = prune != Prune.OFF and epsilon > 0.0
    # the bound (saved for the backward) and, when pruning, the plan's: inf where v is not
    # finite (plan.value_checked_bound), so that make_plan needs v no more
    bound, plan_bound = score_bounds(qh, kh, vh, scale, accumulator(q.dtype), check_v=pruning)
    # the plan reads lam with masked keys forward-filled (plan.full_lam), except with documents
    filled = pruning and doc is None
    lam_full, lam_plan = (full_lam(lam, batch, q_heads, bound, filled=True) if filled
                          else (full_lam(lam, batch, q_heads, bound),) * 2)
    doc = _batch_doc(doc, batch)
    plan = make_plan(qh, kh, lam_plan, scale, epsilon, prune, doc=doc, bound=plan_bound,
                     norm=max_norm, starts=plan_start_blocks)
    out = torch.empty((*q.shape[:-1], width), dtype=q.dtype, device=q.device)
    lse = engine_for(qh, kh, vh, doc).forward(qh, kh, vh, lam_full, plan, scale,
                                              _bhtd(out, layout), doc=doc)
    if stats.recording():
        n_keys = kh.shape[2]
        counts = tile_counts(plan.start, n_queries, n_keys, plan.block_m, plan.block_n)
        stats.record(site, counts, 2 * (q.shape[-1] + v.shape[-1]),
                     (plan.block_m, plan.block_n, n_queries, n_keys), dense_decoding)
    return _narrowed(out, v.shape[-1]), lse.to(accumulator(q.dtype)), plan.start, bound


def _output_shapes(q: Tensor, v: Tensor, layout: str):
    """Shapes of the forward's (out, lse, start, bound)."""
    batch, q_heads, n_queries, _ = _dims(q, layout)
    block_m, _ = tile_sizes(engine_head_dim(q, v))
    return ((*q.shape[:-1], v.shape[-1]), (batch, q_heads, n_queries),
            (batch, q_heads, num_blocks(n_queries, block_m)), (batch, q_heads))


def _empty_outputs(q: Tensor, v: Tensor, layout: str):
    """The forward's outputs when there is no query row (B, H or M is 0)."""
    out, lse, start, bound = _output_shapes(q, v, layout)
    acc = accumulator(q.dtype)
    return (q.new_zeros(out), q.new_zeros(lse, dtype=acc), q.new_zeros(start, dtype=torch.int32),
            q.new_zeros(bound, dtype=acc))


@attention.register_fake
def _(q, k, v, lam, scale, epsilon, prune, layout, site, doc=None):
    out, lse, start, bound = _output_shapes(q, v, layout)
    acc = accumulator(q.dtype)
    return (q.new_empty(out), q.new_empty(lse, dtype=acc), q.new_empty(start, dtype=torch.int32),
            q.new_empty(bound, dtype=acc))


@torch.library.custom_op("foxcompile::attention_backward", mutates_args=())
def attention_backward(grad_out: Tensor, q: Tensor, k: Tensor, v: Tensor, lam: Tensor,
                       out: Tensor, lse: Tensor, start: Tensor, scale: float, layout: str,
                       doc: Optional[Tensor] = None, bound: Optional[Tensor] = None
                       ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    batch, q_heads, n_queries, _ = _dims(q, layout)
    if batch * q_heads * n_queries == 0:  # no query row: every gradient is zero
        return q.new_zeros(q.shape), k.new_zeros(k.shape), v.new_zeros(v.shape), torch.zeros_like(lam)
    width = engine_head_dim(q, v)
    q_wide, k_wide, v_wide = (_widened(x, width) for x in (q, k, v))
    qh, kh, vh = (_bhtd(x, layout) for x in (q_wide, k_wide, v_wide))
    if bound is None:
        bound = score_bound(qh, kh, scale, accumulator(q.dtype), max_norm)
    lam_full = full_lam(lam, batch, q_heads, bound)
    plan = Plan(*tile_sizes(width), start)
    dq, dk, dv = (torch.empty(x.shape, dtype=x.dtype, device=x.device)
                  for x in (q_wide, k_wide, v_wide))
    grad_out, out = _widened(grad_out, width), _widened(out, width)
    doc = _batch_doc(doc, batch)
    dlam = engine_for(qh, kh, vh, doc).backward(
        _bhtd(grad_out, layout), qh, kh, vh, lam_full, _bhtd(out, layout), lse, plan, scale,
        _bhtd(dq, layout), _bhtd(dk, layout), _bhtd(dv, layout), doc=doc)
    dq, dk, dv = (_narrowed(d, x.shape[-1]) for d, x in ((dq, q), (dk, k), (dv, v)))
    # sum over the dims lam was broadcast along
    broadcast_dims = [d for d in (0, 1) if lam.shape[d] == 1 and dlam.shape[d] != 1]
    if broadcast_dims:
        dlam = dlam.sum(dim=broadcast_dims, keepdim=True)
    return dq, dk, dv, dlam.to(lam.dtype).contiguous()


@attention_backward.register_fake
def _(grad_out, q, k, v, lam, out, lse, start, scale, layout, doc=None, bound=None):
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), lam.new_empty(lam.shape)


def _setup_context(ctx, inputs, output):
    q, k, v, lam, scale, _epsilon, _prune, layout, _site, doc = inputs
    out, lse, start, bound = output
    ctx.save_for_backward(q, k, v, lam, out, lse, start, bound, doc)
    ctx.scale, ctx.layout = scale, layout


def _backward(ctx, grad_out, _grad_lse, _grad_start, _grad_bound):
    q, k, v, lam, out, lse, start, bound, doc = ctx.saved_tensors
    dq, dk, dv, dlam = attention_backward(grad_out, q, k, v, lam, out, lse, start, ctx.scale,
                                          ctx.layout, doc, bound)
    return dq, dk, dv, dlam, None, None, None, None, None, None


attention.register_autograd(_backward, setup_context=_setup_context)


def _computed_pairs(q: Tensor, k: Tensor, v: Tensor, start: Tensor, layout: str) -> float:
    """(i, j) pairs the launch computes: data-dependent where start is real (this reads it back,
    which synchronises: FlopCounterMode is a measuring tool), the dense causal count otherwise."""
    n_queries, n_keys = _dims(q, layout)[2], _dims(k, layout)[2]
    block_m, block_n = tile_sizes(engine_head_dim(q, v))
    if isinstance(start, torch._subclasses.FakeTensor) or start.device.type == "meta":
        start = torch.zeros(start.shape, dtype=torch.int32)
    counts = tile_counts(start, n_queries, n_keys, block_m, block_n)
    return float(counts.computed_pairs.sum())


@register_flop_formula(torch.ops.foxcompile.attention, get_raw=True)
def _attention_flops(q, k, v, lam, scale, epsilon, prune, layout, site, doc=None, *,
                     out_val=None, **_):
    # QK^T and PV: 2 D and 2 Dv per computed (i, j) pair
    return int(2 * (q.shape[-1] + v.shape[-1]) * _computed_pairs(q, k, v, out_val[2], layout))


@register_flop_formula(torch.ops.foxcompile.attention_backward, get_raw=True)
def _attention_backward_flops(grad_out, q, k, v, lam, out, lse, start, scale, layout, doc=None,
                              bound=None, *, out_val=None, **_):
    # recomputed QK^T, dQ and dK: 2 D each per computed pair; dV and dP: 2 Dv each
    return int(2 * (3 * q.shape[-1] + 2 * v.shape[-1]) * _computed_pairs(q, k, v, start, layout))
