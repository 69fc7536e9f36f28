"""Which tiles the forget gate lets us skip: the ACP threshold and the tile boundaries.

Shapes (canonical, the op views user layouts this way):
    q   (B, Hq, M, D)       k, v (B, Hk, N, D), Hq = G * Hk, query head h reads key head h // G
    lam (B, Hq, N)          key-side cumulative log forget gate, float32 (float64 for float64 inputs)
Query i sits at absolute position P + i, P = N - M. Its scores against key j <= P + i get the bias
lam[P + i] - lam[j]; keys j > P + i are masked.

The rule (docs/acp.md): with U = |scale| max_i ||q_i|| max_j ||k_j|| per (b, h),
delta = min(log(eps) - 2U - log(N), 0). A tile of BLOCK_M queries x BLOCK_N keys is skipped when
lam[first query row] - lam[last key column] < delta; for a non-increasing lam that corner holds
the largest bias of the tile, so every dropped weight is below eps / N.

Robustness: a parallel cumsum can make lam rise by a few ulps. With R = the largest rise of lam
(max over s < t of lam_t - lam_s) the true largest bias of a tile is at most the corner value + 2R,
so using delta - 2R keeps the bound exact for any lam. Under the guard, a rise larger than rounding
turns pruning off for that (b, h). A NaN or inf anywhere in q, k, v or lam turns pruning off
for that (b, h), so it stays visible exactly as in eager.

Packed sequences: with document ids doc (B, N) a query sees only keys of its own document. When
doc never decreases along the sequence (checked on the device), the first key block that can share
a document with a query block is the first whose last key's id reaches the block's first query's
id; the blocks before it are skipped too (document_start_blocks), whatever the gate does.

Everything here runs on the tensors' device with no host synchronisation (CUDA-graph safe), and
is plain torch, the reference for the engines' faster versions, which make_plan takes as
arguments: `norm` (triton_attention.max_norm) and `starts` (triton_attention.plan_start_blocks,
the threshold and start blocks in one kernel); full_lam's one-kernel twin is
triton_attention.full_lam. Those two equal their torch functions bit for bit; the norm agrees to
float32 rounding (tests/test_kernels.py).
"""
import math
from typing import NamedTuple

import torch
import torch.nn.functional as F

from ..contract import Prune

# A rise of lam below this (relative to its magnitude) is rounding, not a rising gate.
_GUARD_RELATIVE_TOLERANCE = 1e-5


def tile_sizes(head_dim: int) -> tuple[int, int]:
    """(BLOCK_M, BLOCK_N) of the pruning grid for a head dim; every kernel and the reference
    skip on exactly this grid, so forward and backward drop the same (i, j) pairs."""
    # 128 x 128 lets every Triton kernel (forward, dq over query blocks of 128; dkdv over key
    # blocks of 128) walk whole grid tiles, and skips about as much as 128 x 64 (a tile's skip
    # test depends on its span, BLOCK_M + BLOCK_N; docs/kernels.md, "The pruning grid").
    if head_dim <= 128:
        return 128, 128
    return 64, 64


def num_blocks(length, block: int):
    """ceil(length / block); works on SymInts."""
    return (length + block - 1) // block


def max_norm(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """max over t of ||x[b, h, t]|| in acc, (B, H); NaN and inf propagate. Plain torch (dtype=
    accumulates in acc without materialising an upcast copy). An engine may bring a faster
    one (triton_attention.max_norm): score_bound, threshold and make_plan take it as `norm`."""
    return torch.linalg.vector_norm(x, dim=-1, dtype=acc).amax(dim=-1)


# A key whose lam is +inf (a -inf key-side bias: a padding mask folded into the bias) is masked
# for every query. The op adds lam at the query's own position too, which for such a query would
# be +inf - lam_j = NaN where eager still attends the other keys (right padding). Such keys get
# lam = (largest finite lam) + 2U + margin instead, U = score_bound: every other query's score for
# them then trails its best real key's by at least the margin (exp(-128) is 0 in float32), and
# the padded query's own row stays finite and, with lam values this close to the real ones,
# keeps float32 precision. Where U is not finite (NaN or inf in q or k) the offset is a flat 1e4.
MASKED_KEY_MARGIN = 128.0
MASKED_KEY_FALLBACK = 1e4


def full_lam(lam: torch.Tensor, batch: int, q_heads: int, bound: torch.Tensor,
             filled: bool = False):
    """The lam the kernels read: (B, Hq, N) contiguous in bound's dtype (the accumulator's),
    from lam (B or 1, Hq or 1, N), +inf replaced as above; bound (B, Hq) is score_bound(q, k,
    scale). The kernels read lam rows with unit stride (a strided lam made them ~40% slower), and
    the copy is only B x Hq x N floats. An engine may bring a one-kernel version
    (triton_attention.full_lam, equal bit for bit).

    filled=True returns (that lam, the plan's lam): the same with every masked key's stand-in
    replaced by the lam of the last unmasked key before it (forward fill; masked keys before any
    unmasked one keep their stand-in). make_plan on the filled lam measures each query's bound
    against the last unmasked key at or before it, which it sees, so a masked tail (a static
    cache's unfilled slots, right padding) neither reads as a rising gate nor hides the real
    query's lam (docs/generation.md, "Why the static cache does not prune"). Only without
    document ids: with them that key may belong to another document."""
    n_keys = lam.shape[-1]
    lam = lam.to(bound.dtype).expand(batch, q_heads, n_keys)
    masked = lam == torch.inf
    finite_max = torch.where(torch.isfinite(lam), lam, -torch.inf).amax(dim=-1, keepdim=True)
    offset = torch.where(torch.isfinite(bound), 2.0 * bound + MASKED_KEY_MARGIN,
                         MASKED_KEY_FALLBACK)[..., None]
    full = torch.where(masked, finite_max + offset, lam).contiguous()
    if not filled:
        return full
    positions = torch.arange(n_keys, device=lam.device)
    last = torch.where(masked, -1, positions).cummax(dim=-1).values     # last unmasked key <= t
    return full, torch.where(last >= 0, full.gather(-1, last.clamp(min=0)), full)


def score_bound(q: torch.Tensor, k: torch.Tensor, scale: float, acc: torch.dtype,
                norm=max_norm) -> torch.Tensor:
    """U = |scale| max_i ||q_i|| max_j ||k_j|| per (b, h), (B, Hq) in acc: no scaled score
    scale q_i.k_j of that head is larger than U in magnitude (NaN and inf propagate). norm:
    the max_norm to use (the engine's)."""
    q_heads = q.shape[1]
    k_norm = norm(k, acc).repeat_interleave(q_heads // k.shape[1], dim=1)           # (B, Hq)
    return abs(scale) * norm(q, acc) * k_norm


def value_checked_bound(q: torch.Tensor, k: torch.Tensor, scale: float, acc: torch.dtype,
                        v: torch.Tensor | None = None, bound: torch.Tensor | None = None,
                        norm=max_norm) -> torch.Tensor:
    """score_bound(q, k, ...) (or the bound given), made inf for each (b, h) whose v holds a NaN
    or inf: a non-finite value must reach every row that attends to it, as in eager, so such a
    head prunes nothing. (B, Hq) in acc."""
    bound = score_bound(q, k, scale, acc, norm) if bound is None else bound
    if v is not None:
        v_finite = torch.isfinite(norm(v, acc))
        bound = torch.where(v_finite.repeat_interleave(q.shape[1] // v.shape[1], dim=1), bound,
                            math.inf)
    return bound


def threshold(q: torch.Tensor, k: torch.Tensor, lam: torch.Tensor, scale: float,
              epsilon: float, prune: int, v: torch.Tensor | None = None,
              bound: torch.Tensor | None = None, norm=max_norm) -> torch.Tensor:
    """delta per (b, h) as lam's dtype, shape (B, Hq); -inf where the guard turns pruning off.
    Call only with pruning on (prune != Prune.OFF, epsilon > 0). bound: score_bound(q, k, ...)
    when the caller has it; norm: the max_norm to use (the engine's)."""
    bound = value_checked_bound(q, k, scale, lam.dtype, v, bound, norm)
    return threshold_from_bound(lam, bound, epsilon, prune)


def threshold_from_bound(lam: torch.Tensor, bound: torch.Tensor, epsilon: float,
                         prune: int) -> torch.Tensor:
    """threshold's delta from value_checked_bound's bound (B, Hq)."""
    n_keys = lam.shape[-1]
    delta = (math.log(epsilon) - math.log(n_keys) - 2.0 * bound).clamp(max=0.0)
    rise = largest_rise(lam)                                                      # (B, Hq), >= 0
    delta = delta - 2.0 * rise
    if prune == Prune.GUARDED:
        tolerance = _GUARD_RELATIVE_TOLERANCE * (1.0 + lam.abs().amax(dim=-1))
        delta = torch.where(rise <= tolerance, delta, -math.inf)  # NaN rise fails the test too
    return torch.nan_to_num(delta, nan=-math.inf)


_RISE_BLOCK = 256


def largest_rise(lam: torch.Tensor) -> torch.Tensor:
    """max over s <= t of lam_t - lam_s along the last dim (>= 0; NaN if lam has a NaN).

    Equal, bit for bit, to (lam - cummin(lam)).amax(-1), but computed as a two-level scan:
    torch's cummin over a long innermost dim runs a few thread blocks sequentially, while cummin
    within blocks of 256 plus a cummin over the block minima is fully parallel (docs/kernels.md,
    "The plan on the device"). min is exact, so no rounding differs."""
    n = lam.shape[-1]
    if n <= _RISE_BLOCK:
        return (lam - torch.cummin(lam, dim=-1).values).amax(dim=-1)
    n_blocks = num_blocks(n, _RISE_BLOCK)
    blocks = F.pad(lam, (0, n_blocks * _RISE_BLOCK - n)).unflatten(-1, (n_blocks, _RISE_BLOCK))
    local = torch.cummin(blocks, dim=-1).values                   # running min within a block
    before = torch.cummin(local[..., -1], dim=-1).values          # min of blocks 0..b
    before = F.pad(before[..., :-1], (1, 0), value=math.inf)      # min of blocks 0..b-1
    running = torch.minimum(local, before[..., None]).flatten(-2)[..., :n]
    return (lam - running).amax(dim=-1)


def _block_corners(n_queries: int, n_keys: int, block_m: int, block_n: int, device):
    """(last key position of each key block (NB,), absolute position of each query block's first
    query (MB,)): the two corners a skip test reads."""
    key_blocks = torch.arange(num_blocks(n_keys, block_n), device=device)
    last_col = (key_blocks * block_n + block_n - 1).clamp(max=n_keys - 1)
    offset = n_keys - n_queries
    first_row = offset + torch.arange(num_blocks(n_queries, block_m), device=device) * block_m
    return last_col, first_row


def start_blocks(lam: torch.Tensor, delta: torch.Tensor, n_queries: int,
                 block_m: int, block_n: int) -> torch.Tensor:
    """First key block each query block computes, (B, Hq, MB) int32, non-decreasing in the
    query block. Key blocks [0, start) are skipped; start never passes the block holding the
    first row's diagonal, so no row is ever empty."""
    last_col, first_row = _block_corners(n_queries, lam.shape[-1], block_m, block_n, lam.device)
    # -lam at each key block's last column, made non-decreasing so searchsorted is valid; a
    # larger value only makes a tile harder to skip.
    key_side = torch.cummax(torch.nan_to_num(-lam[..., last_col], nan=math.inf), dim=-1).values
    limit = delta[..., None] - lam[..., first_row]                       # skip while key_side < limit
    limit = torch.nan_to_num(limit, nan=-math.inf)
    start = torch.searchsorted(key_side.contiguous(), limit.contiguous(), side="left")
    start = torch.minimum(start, first_row // block_n)
    # non-decreasing in the query block (only ever lowers a start, so only skips less)
    start = torch.flip(torch.cummin(torch.flip(start, (-1,)), dim=-1).values, (-1,))
    return start.to(torch.int32)


def document_start_blocks(doc: torch.Tensor, n_queries: int, block_m: int,
                          block_n: int) -> torch.Tensor:
    """First key block that can hold a key of the same document as some query of each query
    block, (B, MB) int64: for a doc (B, N) that never decreases along N, key block n holds only
    documents before every query of query block m when doc[last key of n] < doc[first query of m].
    0 for every block of a batch row whose doc decreases anywhere (nothing skipped, still exact).
    Non-decreasing in the query block and never past the block of the first query's diagonal."""
    # the ids at _block_corners' positions, read through strided views (no index tensors: a
    # few small kernels fewer per call, which the host pays for at every step)
    n_keys = doc.shape[-1]
    last_keys = doc[:, block_n - 1::block_n]
    if n_keys % block_n:                                      # the last key block is partial
        last_keys = torch.cat((last_keys, doc[:, -1:]), dim=-1)
    first_queries = doc[:, n_keys - n_queries::block_m]
    start = torch.searchsorted(last_keys.contiguous(), first_queries.contiguous(), side="left")
    monotone = (doc[:, 1:] >= doc[:, :-1]).all(dim=-1, keepdim=True)
    return torch.where(monotone, start, 0)


def end_blocks(start: torch.Tensor, n_keys: int, block_n: int) -> torch.Tensor:
    """For each key block n, one past the last query block that computes it, (B, Hq, NB) int32:
    query blocks [causal start, end) use key block n (start is non-decreasing)."""
    key_blocks = torch.arange(num_blocks(n_keys, block_n), device=start.device, dtype=start.dtype)
    key_blocks = key_blocks.expand(*start.shape[:-1], -1).contiguous()
    return torch.searchsorted(start.contiguous(), key_blocks, side="right").to(torch.int32)


class TileCounts(NamedTuple):
    """Per (b, h) float64 counts: tiles and (i, j) pairs, causal versus actually computed.
    skippable_tiles: the most the tile grid lets any gate skip (every causal tile left of the
    block holding each query block's first diagonal element; diagonal tiles always run).
    distant_tiles: those of them whose nearest corner lies two or more steps from the diagonal;
    the others (a corner one step away) go only when a single gate value is below delta, so a
    real gate skips at most distant_tiles."""
    skipped_tiles: torch.Tensor
    causal_tiles: torch.Tensor
    skippable_tiles: torch.Tensor
    distant_tiles: torch.Tensor
    computed_pairs: torch.Tensor
    causal_pairs: torch.Tensor


def tile_counts(start: torch.Tensor, n_queries: int, n_keys: int,
                block_m: int, block_n: int) -> TileCounts:
    """What a launch with these start blocks skips; pure device arithmetic, no sync."""
    device = start.device
    offset = n_keys - n_queries
    first = torch.arange(start.shape[-1], device=device, dtype=torch.float64) * block_m
    rows = (n_queries - first).clamp(max=block_m)                        # rows in each block
    last = first + rows - 1
    causal_tiles = torch.floor((offset + last) / block_n) + 1            # key blocks up to the diagonal
    # pairs of a block: sum over rows r of (offset + r + 1)
    causal_pairs = rows * (offset + 1) + (first + last) * rows / 2
    skipped_keys = start.to(torch.float64) * block_n
    start_f = start.to(torch.float64)
    first_abs = offset + first
    skippable_tiles = torch.floor(first_abs / block_n)                   # start's upper bound
    one_step = (first_abs > 0) & (torch.remainder(first_abs, block_n) == 0)
    distant_tiles = skippable_tiles - one_step.to(torch.float64)
    return TileCounts(
        skipped_tiles=start_f.sum(-1),
        causal_tiles=causal_tiles.sum().expand(start.shape[:-1]),
        skippable_tiles=skippable_tiles.sum().expand(start.shape[:-1]),
        distant_tiles=distant_tiles.sum().expand(start.shape[:-1]),
        computed_pairs=(causal_pairs - rows * skipped_keys).sum(-1),
        causal_pairs=causal_pairs.sum().expand(start.shape[:-1]),
    )


def unread_key_fraction(start: torch.Tensor, n_keys: int, block_n: int,
                        group: int = 1) -> torch.Tensor:
    """Per head, the fraction of the key cache (keys [0, N)) that a call never reads: the keys
    before its first query block's start block, start[..., 0] * block_n / N (start is
    non-decreasing in the query block, so no query of the call reads them; a decode step has a
    single query block). start: the plan's start blocks (B, Hq, MB) (Plan.start, or the third
    output of foxcompile::attention), block_n: the grid's (Plan.block_n, tile_sizes(D)[1]).
    Returns (B, Hq) float64 on start's device, with no host synchronisation.

    group = G (query heads per kv head) gives what the decode engine leaves unread of each kv
    head's k and v instead, (B, Hk): it reads a kv head's keys once for all G query heads, from
    the earliest of their start blocks."""
    first = start[..., 0].to(torch.float64) * block_n                      # (B, Hq)
    if group > 1:
        first = first.unflatten(1, (-1, group)).amin(dim=-1)               # (B, Hk)
    return (first / max(n_keys, 1)).clamp(max=1.0)


def heads_by_work(start: torch.Tensor, group: int = 1) -> torch.Tensor:
    """The order in which a kernel should take the heads of a plan: the (b, head) numbers
    b * H + h, the heads with the most tiles to compute first, ties (a dense plan: every head)
    in their own order. start: the plan's start blocks (B, Hq, MB); with group = G > 1 the
    heads are the kv heads (H = Hq / G), each with the tiles of its G query heads. Every head
    has the same causal tiles, so the most work is the fewest skipped blocks (a stable sort of
    start's sums). Returns int32 (B * H,) on start's device, with no host synchronisation.

    Why: the kernels take (b, head) after (b, head), and when the last heads are the heaviest
    (a gate whose decay slows with the head index) the programs that drew their light blocks
    wait for the one with the heaviest at the end (docs/kernels.md, "The order of the
    heads")."""
    skipped = start.sum(-1, dtype=torch.int64)                           # (B, Hq)
    if group > 1:
        skipped = skipped.unflatten(1, (-1, group)).sum(-1)              # (B, Hk)
    return torch.sort(skipped.flatten(), stable=True).indices.to(torch.int32)


class Plan(NamedTuple):
    """Everything a launch needs to know about pruning."""
    block_m: int
    block_n: int
    start: torch.Tensor  # (B, Hq, MB) int32


def bound_start_blocks(lam: torch.Tensor, bound: torch.Tensor, epsilon: float, prune: int,
                       n_queries: int, block_m: int, block_n: int) -> torch.Tensor:
    """start_blocks for threshold_from_bound's delta: what make_plan computes once it has the
    bound (value_checked_bound). An engine may bring one that runs as a single kernel
    (triton_attention.plan_start_blocks, equal bit for bit): make_plan takes it as `starts`."""
    delta = threshold_from_bound(lam, bound, epsilon, prune)
    return start_blocks(lam, delta, n_queries, block_m, block_n)


def make_plan(q: torch.Tensor, k: torch.Tensor, lam: torch.Tensor, scale: float,
              epsilon: float, prune: int, v: torch.Tensor | None = None,
              doc: torch.Tensor | None = None, bound: torch.Tensor | None = None,
              norm=max_norm, starts=bound_start_blocks) -> Plan:
    """The pruning plan of one launch; pass v so that a non-finite value turns pruning off, the
    document ids doc (B, N) of packed sequences to skip the tiles of other documents,
    score_bound(q, k, scale, ...) as bound when it is already known, and the engine's max_norm
    as norm (triton_attention.max_norm: one Triton pass on CUDA; default: torch) and its
    bound_start_blocks as starts (triton_attention.plan_start_blocks: one kernel on CUDA)."""
    block_m, block_n = tile_sizes(q.shape[-1])
    n_queries = q.shape[2]
    if prune == Prune.OFF or epsilon <= 0.0:
        start = torch.zeros(*lam.shape[:2], num_blocks(n_queries, block_m),
                            dtype=torch.int32, device=lam.device)
    else:
        bound = value_checked_bound(q, k, scale, lam.dtype, v, bound, norm)
        start = starts(lam, bound, epsilon, prune, n_queries, block_m, block_n)
    if doc is not None:  # both starts are non-decreasing, so their maximum is too
        other_documents = document_start_blocks(doc, n_queries, block_m, block_n)
        start = torch.maximum(start, other_documents[:, None, :].to(start.dtype))
    return Plan(block_m, block_n, start)
