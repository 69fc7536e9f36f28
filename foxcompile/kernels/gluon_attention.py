"""Gluon engine (Hopper, sm90) of forgetting attention with ACP: same interface as
triton_attention.py, for the inputs it takes (unsupported_reason says which).

    forward(q, k, v, lam, plan, scale, out, doc=None) -> lse      the Gluon forward kernel
    backward(...) -> dlam                                        the Gluon backward kernel (tl's
                                                                 where backward_fallback_reason
                                                                 names a reason)
    unsupported_reason(q, k, v) -> str | None
    max_norm(x, acc)                                             as triton_attention's
    forward_only, backward_only                                  engines with the Gluon kernel of
                                                                 one direction, tl's of the other

The forward is _gluon_kernels._gluon_fwd_kernel: a loader warp streams K/V through a TMA ring
while two consumer warp groups run asynchronous wgmma, the previous tile's PV product in flight
during the current tile's softmax. The backward is _gluon_bwd_kernels._gluon_bwd_kernel: one
program per SM (at D = 64; one per item at D = 128: BWD_PERSISTENT) takes blocks of 128 keys
one after another and computes their dk, dv and their share of dq (five products per tile), dq
reduced over key blocks by TMA reduce-adds into a float32 buffer. Both skip exactly the
tiles of the plan (128 x 128 pruning grid) and read and write what the tl kernels do, so either
direction pairs with tl's other one. PREFERRED_MIN_KEYS says where each is chosen automatically.

Triton's Gluon dialect (triton.experimental.gluon) is imported only when this engine is asked
about a CUDA tensor on an sm90 GPU: its API moves between Triton versions, and a Triton without
it (or with an API this module does not know) leaves the engine unsupported, never the package
unimportable.
"""
import importlib
import types

import torch

from . import plan as plan_mod
from . import triton_attention
from .plan import Plan
from .triton_attention import (LOG2E, _capability, _device_guard, _doc_args, _f32,
                               _multiprocessors, _tma_ok, head_order)

max_norm = triton_attention.max_norm

HEAD_DIMS = (64, 128)
# Ring depth per head dim: shared memory holds Q (128 x D) and STAGES (K, V) tile pairs.
STAGES = {64: 4, 128: 2}
# The backward's ring of (Q, dO, per-query rows) tiles per head dim, beside K, V, dS, the dQ and
# row-sum buffers and the block of ones; and its K/V buffers (two: the next work item's K and V
# arrive during this one's tiles; at D = 128 one, for shared memory).
BWD_STAGES = {64: 3, 128: 2}
BWD_KV_BUFFERS = {64: 2, 128: 1}
# Whether the backward runs persistent (one program per SM taking items one after another) or
# one program per item, by head dim. Persistent at D = 64: 4-5% faster backward on an H200
# (docs/kernels.md, "The persistent backward and items without a load at their start"); at
# D = 128, with one K/V buffer, each item waits for its K and V, and pruned items (few tiles)
# ran 8% slower than one program per item.
BWD_PERSISTENT = {64: True, 128: False}
# Whether the backward writes dk and dv through shared memory and TMA stores (issued by its
# reducer warp, so that the math warps go on to the next item) where their strides allow it,
# by head dim. At D = 128 that took a work item's fixed cost from about 14,200 to 8,600 cycles
# with the tile loop unchanged; at D = 64 it took 2,300 cycles off each item but made the tile
# loop 3% slower (docs/kernels.md, "Where a work item's time goes").
KV_TMA_STORES = {64: False, 128: True}
# Whether the forward writes out through the rows' Q buffer and TMA stores (issued by the
# consumer warp group, the buffer handed back once the store has read it), by head dim. At
# D = 64 that took a work item's fixed cost from about 3,400 to 2,300 cycles and the tile loop
# from 2,520 to 2,440 (forward 0.97-0.98x with pruning); at D = 128 the forward was 2% slower
# (docs/kernels.md, "Where a work item's time goes").
OUT_TMA_STORES = {64: True, 128: False}
# Whether the backward issues a tile's dQ at the next tile's start, beside its S^T and dP^T
# (DQ_NEXT: two dS^T buffers, a K/V buffer held one tile longer, so three of them), by head
# dim; not with KV_TMA, which reuses an item's K buffer for dk, and never at D = 128, where its
# dQ accumulator does not fit beside the others (the kernel asserts it). At D = 64 it took the
# tile loop from about 3,700 to 3,500 cycles and fwd+bwd to 0.96-0.97x (H100, docs/kernels.md,
# "Where a work item's time goes"). Its first version deadlocked on runs of items with no tile;
# with the fix (such an item hands its pending dQ over at once) the GPU suite passed, and
# fwd+bwd against DQ_NEXT off was 0.97-0.98x with pruning and 0.97x dense (H100, 2026-12-07
# 14:46 UTC).
BWD_DQ_NEXT = {64: True, 128: False}
BWD_KV_BUFFERS_DQ_NEXT = 3
BLOCK_N = 128

_import_errors: dict = {}


def _import_kernels(name: str):
    """The kernel module `name` of this package, or None when this Triton cannot build it (the
    reason recorded in _import_errors[name])."""
    if name in _import_errors:
        return None
    try:
        return importlib.import_module(f"{__package__}.{name}")
    except Exception as exc:  # ImportError, or an API this Triton spells differently
        _import_errors[name] = f"{type(exc).__name__}: {exc}"
        return None


def _kernels():
    """The Gluon forward's kernel module, or None (reason in _import_errors)."""
    return _import_kernels("_gluon_kernels")


def _bwd_kernels():
    """The Gluon backward's kernel module, or None (reason in _import_errors)."""
    return _import_kernels("_gluon_bwd_kernels") if _kernels() is not None else None


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Why the Gluon forward cannot run these inputs, or None when it can."""
    reason = triton_attention.unsupported_reason(q, k, v)
    if reason:
        return reason
    if q.device.type != "cuda":
        return "the Gluon engine runs on CUDA tensors only"
    major, minor = _capability(q.device)
    if major != 9:
        return f"the Gluon engine is for sm90 (Hopper); this GPU is sm{major}{minor}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"the Gluon engine takes float16 and bfloat16, not {q.dtype}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"the Gluon engine takes head dims {HEAD_DIMS}, not {q.shape[-1]}"
    if not _tma_ok(q, k, v):
        return "TMA needs unit last strides and 16-byte aligned bases and strides"
    if _kernels() is None:
        return f"this Triton has no usable Gluon: {_import_errors['_gluon_kernels']}"
    return None


# Where each Gluon kernel beat tl's, by direction: head dim -> the fewest keys from which it is
# chosen (docs/kernels.md, "The engine choice, measured"). Read off one H100 run of
# benchmarks/engine_choice.py (2026-12-07 14:53, B8-T4096 / B4-T8192 / B2-T16384 at H24-D64
# and B4-T4096 / B1-T16384 at H16-D128; dense + ACP ms, Gluon's over tl's): the forward wins
# at every length measured (0.91 / 0.90 / 0.90 at D = 64, 0.83 / 0.80 at D = 128), and so
# does the backward (0.84 / 0.81 / 0.80 at D = 64, 0.81 / 0.78 at D = 128). Below 4k keys at
# D = 64 nothing was measured, so tl stays there.
PREFERRED_MIN_KEYS = {"forward": {64: 4096, 128: 0}, "backward": {64: 4096, 128: 0}}
# The same with document ids (packed sequences), where the Gluon forward spills: at D = 64 tl's
# forward won every row of one H100 run (2026-12-07, B2-T16384-H24-D64, documents of 2048
# tokens; docs/kernels.md, "Packed sequences"): 1.23 against 1.56 ms with pruning and 1.46
# against 1.93 dense with int64 ids, 1.19 / 1.30 and 1.39 / 1.52 with int32 ids, and the tl
# forward with the Gluon backward was the fastest pair in all four. It is taken at every
# length: the Gluon forward's loss is per tile (its spills), its gain without documents at 4k
# and 8k small. At D = 128 (B1-T16384-H16, the same documents, int32 ids, a later H100 run)
# tl's forward won too: 0.99-1.01 against 1.09-1.13 ms with pruning, 0.89-0.90 against 0.94
# dense, while the Gluon backward stayed ahead (fwd+bwd - fwd: 1.06-1.11 against 1.08-1.19 ms
# with pruning, 1.60-1.61 against 1.73 dense); a run on another H100 agreed (0.77 against
# 0.81 ms with pruning). These rows are close to host-bound (docs/kernels.md, "Packed
# sequences"). So with documents the forward is tl's at every head dim.
PREFERRED_MIN_KEYS_WITH_DOCS = {"forward": {}, "backward": {64: 8192, 128: 0}}


def prefers(head_dim: int, n_keys: int, direction: str, documents: bool = False) -> bool:
    """Whether the measurements favour this engine's kernel of `direction` for this head dim
    and number of keys, with or without document ids (PREFERRED_MIN_KEYS,
    PREFERRED_MIN_KEYS_WITH_DOCS), on an sm90 GPU."""
    table = PREFERRED_MIN_KEYS_WITH_DOCS if documents else PREFERRED_MIN_KEYS
    min_keys = table[direction].get(head_dim)
    return min_keys is not None and n_keys >= min_keys


def preferred(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, direction: str,
              documents: bool = False) -> bool:
    """Whether the automatic engine choice should take this engine's kernel of `direction`
    ("forward" or "backward") for these (B, H, T, D) inputs, with or without document ids (it
    then still falls back to tl when unsupported_reason names a reason)."""
    return (q.device.type == "cuda" and q.dim() == 4
            and prefers(q.shape[-1], k.shape[2], direction, documents)
            and _capability(q.device)[0] == 9)


def _descriptor(t: torch.Tensor, rows: int):
    """Gluon TMA descriptor of a (B, H, T, D) tensor read in blocks [1, 1, rows, D]; zeros past
    the edges. A size-1 dim's stride is never stepped over, so it gets a 16-byte one."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    dtype = {torch.bfloat16: gl.bfloat16, torch.float16: gl.float16,
             torch.float32: gl.float32}[t.dtype]
    unit = 16 // t.element_size()
    strides = [st if n > 1 else unit for st, n in zip(t.stride(), t.shape)]
    strides[-1] = 1
    block = [1, 1, rows, t.shape[-1]]
    layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
    return TensorDescriptor(t, list(t.shape), strides, block, layout)


def _lam_descriptor(lam: torch.Tensor):
    """Gluon TMA descriptor of a contiguous (B, H, N) float32 lam seen as (B * H, N), read in
    blocks [1, BLOCK_N] (zeros past the end). N is padded to 4 in the descriptor's row stride
    only when it already is (TMA wants 16-byte strides): otherwise lam is copied padded."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    rows, n_keys = lam.shape[0] * lam.shape[1], lam.shape[2]
    view = lam.view(rows, n_keys)
    if n_keys % 4:
        padded = torch.zeros(rows, n_keys + 4 - n_keys % 4, dtype=lam.dtype, device=lam.device)
        padded[:, :n_keys] = view
        view = padded[:, :n_keys]
    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    return TensorDescriptor(view, [rows, n_keys], [view.stride(0), 1], [1, BLOCK_N], layout)


def forward(q, k, v, lam, plan: Plan, scale: float, out: torch.Tensor, doc=None,
            stamps: torch.Tensor | None = None) -> torch.Tensor:
    """Writes out (B, Hq, M, D) through its strides and returns lse (B, Hq, M) float32.
    stamps: an int64 (items, 2, 8) tensor (items = blocks of 128 queries x B x Hq, in the
    kernel's order) that gets each work item's timeline, benchmarks/item_timeline.py's input:
    the kernel then reads the SM's cycle counter at each step of an item (the TIMELINE build)."""
    batch, q_heads, n_queries, head_dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    lse = torch.empty((batch, q_heads, n_queries), dtype=torch.float32, device=q.device)
    if batch * q_heads * n_queries == 0:
        return lse
    assert (plan.block_m, plan.block_n) == (128, BLOCK_N), "the Gluon kernel walks 128 x 128 tiles"
    lam = _f32(lam).contiguous()   # its tiles come through a (B * Hq, N) descriptor
    if doc is not None and doc.stride(-1) != 1:
        doc = doc.contiguous()
    assert out.stride(-1) == 1, "out must have a unit stride along the head dim"
    doc, doc_strides, has_doc = _doc_args(doc, lam)
    out_align, out_strides = _store_strides(out)
    # out through TMA stores from the Q buffers where it allows them (OUT_TMA)
    out_tma = OUT_TMA_STORES[head_dim] and out.dtype == q.dtype and _tma_ok(out)
    q_desc = _descriptor(q, 64)
    order, ordered = head_order(plan.start, 1, has_doc, backward=False)
    kern = _kernels()
    n_items = -(-n_queries // 128) * batch * q_heads
    grid = (min(n_items, _multiprocessors(q.device)),)   # persistent: one program per SM
    with _device_guard(q):
        kern._gluon_fwd_kernel[grid](
            q_desc, _descriptor(k, BLOCK_N), _descriptor(v, BLOCK_N),
            _lam_descriptor(lam), _descriptor(out, 64) if out_tma else q_desc, lam, out, lse,
            plan.start, doc,
            torch.zeros(1, dtype=torch.int32, device=q.device), order,
            _stamps(stamps, lse, n_items),
            lam.stride(0), lam.stride(1), out_strides[0], out_strides[1], lse.stride(0),
            lse.stride(1), *plan.start.stride(), doc_strides[0], out_strides[2],
            n_items, q_heads, q_heads // kv_heads, n_queries, n_keys, float(scale),
            HEAD_DIM=head_dim, BLOCK_N=BLOCK_N, STAGES=STAGES[head_dim], HAS_DOC=has_doc,
            OUT_ALIGN=out_align, OUT_TMA=out_tma, ORDERED=ordered,
            TIMELINE=stamps is not None, num_warps=4)
    return lse


def _stamps(stamps: torch.Tensor | None, unused: torch.Tensor, n_items: int) -> torch.Tensor:
    """The kernels' STAMPS argument: stamps, checked (int64, contiguous, n_items rows), or, with
    no timeline asked for, any tensor of the call (the kernel then never reads it)."""
    if stamps is None:
        return unused
    assert stamps.dtype == torch.int64 and stamps.is_contiguous() and stamps.shape[0] == n_items, \
        f"stamps: int64, contiguous, {n_items} rows"
    return stamps


def _store_strides(*tensors):
    """(ALIGN, the strides over batch, head and time of each tensor, divided by ALIGN), for the
    kernels' plain stores: ALIGN = 8 when every such stride is a multiple of 8 elements (the
    kernels multiply them back, so the compiler knows each row starts 16-byte aligned), else 1.
    A dim of size 1 is never stepped over: its stride is passed as 0, so it does not decide."""
    strides = [[0 if size == 1 else stride for size, stride in zip(t.shape[:3], t.stride()[:3])]
               for t in tensors]
    align = 8 if all(s % 8 == 0 for st in strides for s in st) else 1
    return align, [s // align for st in strides for s in st]


def _rows_descriptor(rows: torch.Tensor):
    """Gluon TMA descriptor of triton_attention.query_rows' buffer, read in blocks [2, 64]
    (both rows of a (b, h) at 64 queries)."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    return TensorDescriptor(rows, list(rows.shape), list(rows.stride()), [2, 64], layout)


def backward_fallback_reason(q: torch.Tensor, plan: Plan):
    """Why this engine's backward hands a call (that its forward takes) to the tl kernels, or
    None: deterministic algorithms (dq is reduced by float32 adds in any order), no queries, or
    a Triton without the backward's Gluon pieces."""
    if torch.are_deterministic_algorithms_enabled():
        return "deterministic algorithms requested: the Gluon backward reduces dq in any order"
    if q.shape[2] == 0:
        return "no queries"
    if (plan.block_m, plan.block_n) != (128, BLOCK_N):
        return "the Gluon backward walks the 128 x 128 pruning grid"
    if _bwd_kernels() is None:
        return ("this Triton cannot build the Gluon backward: "
                f"{_import_errors.get('_gluon_bwd_kernels', _import_errors.get('_gluon_kernels'))}")
    return None


def backward(grad_out, q, k, v, lam, out, lse, plan: Plan, scale: float,
             dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, doc=None,
             stamps: torch.Tensor | None = None) -> torch.Tensor:
    """Writes dq, dk, dv through their strides and returns dlam (B, Hq, N) float32: the Gluon
    backward (_gluon_bwd_kernels), or tl's where backward_fallback_reason names a reason.
    stamps: an int64 (items, 8) tensor (items = blocks of 128 keys x B x Hk) that gets each
    work item's timeline, as forward's (Gluon backward only)."""
    if backward_fallback_reason(q, plan):
        assert stamps is None, "a timeline needs the Gluon backward"
        return triton_attention.backward(grad_out, q, k, v, lam, out, lse, plan, scale,
                                         dq, dk, dv, doc=doc)
    batch, q_heads, n_queries, head_dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    if not _tma_ok(grad_out):
        grad_out = grad_out.contiguous()
    lam = _f32(lam)
    if lam.stride(-1) != 1:
        lam = lam.contiguous()
    if doc is not None and doc.stride(-1) != 1:
        doc = doc.contiguous()
    assert dk.stride(-1) == 1 and dv.stride(-1) == 1, "dk, dv need a unit stride along the head dim"
    rows = triton_attention.query_rows(lam, lse, out, grad_out, LOG2E)
    # the float32 sums the kernel reduce-adds into (dq and the dS row sums) and its work
    # counter, zeroed by one fill
    dq_size, sums_size = (batch * q_heads * n_queries * w for w in (head_dim, 16))
    zeroed = torch.zeros(dq_size + sums_size + 1, dtype=torch.float32, device=q.device)
    dq_acc = zeroed[:dq_size].view(batch, q_heads, n_queries, head_dim)
    row_sums = zeroed[dq_size:dq_size + sums_size].view(batch, q_heads, n_queries, 16)
    counter = zeroed[-1:].view(torch.int32)
    # (zeros: the kernel writes only the heads that compute some tile of a key block)
    dlam = torch.zeros((batch, q_heads, n_keys), dtype=torch.float32, device=q.device)
    end = plan_mod.end_blocks(plan.start, n_keys, plan.block_n)
    doc, doc_strides, has_doc = _doc_args(doc, lam)
    kv_align, kv_strides = _store_strides(dk, dv)
    # dk and dv through TMA stores from shared memory where they allow it (KV_TMA)
    kv_tma = KV_TMA_STORES[head_dim] and dk.dtype == dv.dtype == k.dtype and _tma_ok(dk, dv)
    dk_strides, dv_strides = kv_strides[:3], kv_strides[3:]
    dq_next = BWD_DQ_NEXT[head_dim] and not kv_tma
    kv_buffers = BWD_KV_BUFFERS_DQ_NEXT if dq_next else BWD_KV_BUFFERS[head_dim]
    order, ordered = head_order(plan.start, q_heads // kv_heads, has_doc, backward=True)
    kern = _bwd_kernels()
    k_desc, v_desc = _descriptor(k, BLOCK_N), _descriptor(v, BLOCK_N)
    n_items = -(-n_keys // BLOCK_N) * batch * kv_heads
    programs = min(n_items, _multiprocessors(q.device)) if BWD_PERSISTENT[head_dim] else n_items
    with _device_guard(q):
        kern._gluon_bwd_kernel[(programs,)](
            k_desc, v_desc, _descriptor(q, 64),
            _descriptor(grad_out, 64), _descriptor(dq_acc, 64), _rows_descriptor(rows),
            _descriptor(row_sums, 64), *((_descriptor(dk, BLOCK_N), _descriptor(dv, BLOCK_N))
                                         if kv_tma else (k_desc, v_desc)),
            lam, dk, dv, dlam, end, doc, counter, order, _stamps(stamps, dlam, n_items),
            lam.stride(0), lam.stride(1), *dk_strides, *dv_strides, dlam.stride(0),
            dlam.stride(1),
            end.stride(0), end.stride(1), end.stride(2), doc_strides[0],
            n_items, kv_heads, q_heads // kv_heads, n_queries, n_keys, float(scale) * LOG2E,
            float(scale),
            HEAD_DIM=head_dim, GRID_M=plan.block_m, GRID_N=plan.block_n,
            STAGES=BWD_STAGES[head_dim], KV_BUFFERS=kv_buffers, HAS_DOC=has_doc,
            KV_ALIGN=kv_align, KV_TMA=kv_tma, DQ_NEXT=dq_next, ORDERED=ordered,
            TIMELINE=stamps is not None, num_warps=8)
    # the kernel sums dS K: the scale once, here, with the dS row sums' part of dlam
    triton_attention.finish_dq(dq_acc, row_sums, float(scale), dq, dlam)
    return dlam


def _one_direction(direction: str) -> types.SimpleNamespace:
    """An engine that runs the Gluon kernel of one direction and tl's of the other."""
    gluon = {"forward": forward, "backward": backward}
    tl = {"forward": triton_attention.forward, "backward": triton_attention.backward}
    other = "backward" if direction == "forward" else "forward"
    return types.SimpleNamespace(
        __name__=f"{__name__}.{direction}_only", unsupported_reason=unsupported_reason,
        max_norm=max_norm, **{direction: gluon[direction], other: tl[other]})


# The Gluon forward with the tl backward, and the tl forward with the Gluon backward.
forward_only = _one_direction("forward")
backward_only = _one_direction("backward")

__all__ = ["forward", "backward", "unsupported_reason", "max_norm", "forward_only",
           "backward_only"]
