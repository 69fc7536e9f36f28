"""Decode engine of forgetting attention with ACP: few queries (decode, M = 1 to a few) against a
long key cache. Same interface as triton_attention.py and reference.py:

    forward(q, k, v, lam, plan, scale, out, doc=None) -> lse
    backward(grad_out, q, k, v, lam, out, lse, plan, scale, dq, dk, dv, doc=None) -> dlam
    unsupported_reason(q, k, v) -> str | None
    max_norm(x, acc) -> (B, H)
    preferred(q, k, v) -> bool        # engine_for's automatic choice (kernels/__init__.py)

Shapes and semantics as in triton_attention.py (any strides, GQA, M < N with the queries at the
end of the keys, document ids, float16/bfloat16/float32, head dims 16..256); lse (B, Hq, M)
float32 is the same natural-log normaliser the prefill forward returns, so the backward is the
Triton engine's own (triton_attention.backward), unchanged.

Flash-decoding (split-K): the prefill forward gives each (b, query head) one program with a
block of 128 query rows, of which a decode step fills one, and that program walks every key. Here
one program per (b, kv head, split) holds the M x G query rows of the G query heads that share
the kv head (so each K/V step is read once per kv head, not G times), and the key range is cut
into `splits` shares walked in parallel; a second small kernel combines the partial softmax
states (m, l, acc) of each row. Only the unpruned key blocks are read: the range starts at the
earliest start block of the plan among the group's heads (plan.start[b, h, 0]; one query block,
M <= GRID_M), and each program computes its own share of [start, N) on the device, so the grid
depends on the shapes alone: no host synchronisation, CUDA-graph capturable
(docs/kernels.md, "Decode").
"""
import torch

from ..contract import DECODE_ROWS, MAX_HEAD_DIM
from ..contract import query_rows as _rows
from . import triton_attention as ta
from .plan import Plan, tile_sizes
from .triton_configs import decode_config, max_registers

# The most query rows (M x G) one program holds: its accumulator is ROWS x D_PAD float32.
MAX_ROWS = 128
# engine_for picks this engine automatically up to contract.DECODE_ROWS query rows per kv head.
# Up to 64 rows
# the decode tile stays small (a 64 x 128 float32 accumulator is 64 registers a thread on 4 warps)
# and the prefill forward's 128-row query block would be at least half empty, while each of its
# G programs per kv head re-reads the same keys; with more rows (chunked prefill) the prefill
# kernels' parallelism over query blocks is the better fit.
# The split count (a function of the shapes only): enough programs for about two per SM, and at
# least MIN_STEPS_PER_SPLIT key steps per split over the whole (unpruned) range.
PROGRAMS_PER_SM = 2
MIN_STEPS_PER_SPLIT = 4
MAX_SPLITS = 128
_INTERPRETER_SMS = 4   # under the interpreter: a few splits, so that the combine runs


def query_rows(q: torch.Tensor, k: torch.Tensor) -> int:
    """M x G of (B, H, T, D) q and k (contract.query_rows): the query rows one program of this
    engine holds (all query heads of a kv head)."""
    return _rows(q.shape[2], q.shape[1], k.shape[1])


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Why these inputs cannot run on the decode kernels, or None when they can: the Triton
    engine's conditions, at most MAX_ROWS query rows per kv head, and one query block of the
    pruning grid (M <= GRID_M)."""
    reason = ta.unsupported_reason(q, k, v)
    if reason is not None:
        return reason
    rows = query_rows(q, k)
    if rows > MAX_ROWS:
        return f"{rows} query rows per kv head (M x G) is more than the decode kernel's {MAX_ROWS}"
    block_m = tile_sizes(q.shape[-1])[0]
    if q.shape[2] > block_m:
        return f"{q.shape[2]} queries span more than one query block ({block_m})"
    return None


def preferred(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether engine_for picks this engine on its own for these shapes (it then still checks
    unsupported_reason): M x G <= DECODE_ROWS."""
    return q.dim() == 4 and k.dim() == 4 and k.shape[1] > 0 and query_rows(q, k) <= DECODE_ROWS


def _multiprocessors(device: torch.device) -> int:
    if device.type != "cuda":
        return _INTERPRETER_SMS
    return ta._multiprocessors(device)


def num_splits(programs: int, n_keys: int, block_n: int, multiprocessors: int) -> int:
    """Key splits per (b, kv head): about PROGRAMS_PER_SM programs per SM in all, at least
    MIN_STEPS_PER_SPLIT steps of block_n keys per split over [0, N), at most MAX_SPLITS. From the
    shapes alone: pruning moves where each program's share starts, never the grid."""
    steps = -(-n_keys // block_n)
    want = -(-PROGRAMS_PER_SM * multiprocessors // max(programs, 1))
    return max(1, min(want, -(-steps // MIN_STEPS_PER_SPLIT), MAX_SPLITS))


def _pow2(n: int) -> int:
    return 1 << max(n - 1, 0).bit_length()


def forward(q, k, v, lam, plan: Plan, scale: float, out: torch.Tensor, doc=None) -> torch.Tensor:
    """Writes out (B, Hq, M, D) through its strides and returns lse (B, Hq, M) float32."""
    batch, q_heads, n_queries, head_dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    lse = torch.empty((batch, q_heads, n_queries), dtype=torch.float32, device=q.device)
    if batch * q_heads * n_queries == 0:
        return lse
    assert n_queries <= plan.block_m and head_dim <= MAX_HEAD_DIM, "see unsupported_reason"
    interpret = ta._mode(q)
    kern = ta._kernels(interpret)
    d_pad = ta._d_pad(head_dim)
    cap = ta._capability(q.device)
    group = q_heads // kv_heads
    rows = query_rows(q, k)
    rows_pad = max(16, _pow2(rows))                      # tl.dot needs 16 rows
    config, splits = decode_config(d_pad, rows_pad, plan.block_n, cap, interpret,
                                   q.element_size())
    if splits <= 0:
        splits = num_splits(batch * kv_heads, n_keys, config[1], _multiprocessors(q.device))
    lam = ta._f32(lam)
    doc, doc_strides, has_doc = ta._doc_args(doc, lam)
    direct = splits == 1
    if direct:   # the one split writes out and lse itself (pointers never read)
        part_m = part_l = part_acc = lse
    else:
        part_m = torch.empty((batch, q_heads, n_queries, splits), dtype=torch.float32,
                             device=q.device)
        part_l = torch.empty_like(part_m)
        part_acc = torch.empty((batch, q_heads, n_queries, splits, d_pad), dtype=torch.float32,
                               device=q.device)

    def launch(config):
        rows_pad, block_n, warps, stages = config
        kern._decode_kernel[(batch * kv_heads * splits,)](
            q, k, v, lam, out, lse, plan.start, doc, part_m, part_l, part_acc,
            q.stride(), k.stride(), v.stride(), lam.stride(), out.stride(), lse.stride(),
            plan.start.stride(), doc_strides,
            kv_heads, group, n_queries, n_keys, splits, float(scale) * ta.LOG2E,
            HEAD_DIM=head_dim, D_PAD=d_pad, ROWS=rows_pad, BLOCK_N=block_n,
            GRID_N=plan.block_n, ROW_EDGE=rows != rows_pad, DIRECT=direct,
            CAST_F32=interpret, DOT_PREC=ta._dot_precision(q.dtype, interpret), HAS_DOC=has_doc,
            num_warps=warps, num_stages=stages, **max_registers("decode", d_pad, cap, interpret))

    with ta._device_guard(q):
        ta._launch("decode", config, (d_pad, q.dtype, q.device), launch)
        if not direct:
            kern._decode_combine_kernel[(batch * q_heads * n_queries,)](
                part_m, part_l, part_acc, out, lse, out.stride(), lse.stride(),
                q_heads, n_queries, splits, HEAD_DIM=head_dim, D_PAD=d_pad,
                SPLITS=max(2, _pow2(splits)), num_warps=4 if d_pad * splits >= 2048 else 1)
    return lse


def backward(grad_out, q, k, v, lam, out, lse, plan: Plan, scale: float,
             dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, doc=None) -> torch.Tensor:
    """The Triton engine's backward (triton_attention.backward): it needs only out and lse, which
    this forward computes exactly as the prefill forward does."""
    return ta.backward(grad_out, q, k, v, lam, out, lse, plan, scale, dq, dk, dv, doc=doc)


max_norm = ta.max_norm

__all__ = ["forward", "backward", "unsupported_reason", "max_norm", "preferred"]
