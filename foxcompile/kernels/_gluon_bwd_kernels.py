"""Gluon (sm90) backward kernel of forgetting attention with ACP: dq, dk, dv and the dS sums in
one pass, five products per tile, asynchronous wgmma, TMA loads and TMA reduce-adds.

Imported only by gluon_attention.py, and only where Triton has Gluon's Hopper pieces.

Semantics as in _triton_kernels.py's _dkdv_kernel and _dq_kernel together (query i at absolute
position P + i, P = N - M; key j visible iff j <= P + i; p_ij = exp(scale q_i.k_j + lam[P+i]
- lam[j] - lse_i); dS = P (dP - do_o)). A work item is a block of BLOCK_N = 128 keys of one
(b, kv head) (the pruning grid's column): its dk, dv and its share of dq from the query tiles
of TILE_M = 64 rows of each query head of its group, from the diagonal to the plan's last
query block that computes the block (plan.end_blocks). The kernel is persistent: one program
per SM takes the items one after another from an atomic counter (as the forward does, sharing
its item queue). Three partitions (gl.warp_specialize): a loader warp, the scheduler, streams
each item's K and V (KV_BUFFERS of them, so the next item's arrive during this one's tiles)
and then Q, dO and the per-query rows of each tile through a ring that runs on across items;
eight math warps, each warp group owning 64 of the keys (S^T, dP^T, dK, dV) and half of the
head dim (dQ), compute per tile

    S^T = K Q^T, dP^T = V dO^T, dV += P^T dO, dK += dS^T Q, dQ = dS K, R = dS 1 (row sums)

each product waited for inside the tile (ptxas serialises wgmma groups left pending across the
loop's back-edge), but at D = 64 (DQ_NEXT) a tile's dQ and R are issued at the next tile's
start, beside its S^T and dP^T, and waited for there; dV and dK take P^T and dS^T from
registers, and dS^T also goes through shared memory, since both warp groups' halves feed dQ
and R; a reducer warp adds each tile's dQ and R, handed over in shared memory, into float32
buffers summed over key blocks by TMA reduce-adds (in any order: not deterministic bit for
bit), and with KV_TMA (D = 128) also stores each item's dk and dv from shared memory by TMA. The dS column sums (per key, for
dlam): dS^T (registers) times ones on the tensor cores at D = 64; at D = 128, where the
accumulators crowd the registers, summed in registers, and dV's product issued only after dS.
docs/kernels.md, "The Gluon backward", has the diagram of who waits on whom.
"""
from triton._C.libtriton import ir
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language._core import builtin
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

from ._gluon_kernels import (LOG2E, _as_desc_block, _item_queue, _publish_item,
                             _scheduled_item, _stamp, _take_item)

TILE_M = gl.constexpr(64)     # query rows per step (one wgmma M for dQ)
BLOCK_N = gl.constexpr(128)   # keys per program: two warp groups of 64


@builtin
def _tma_reduce_add(desc, coord, src, _semantic=None):
    """TMA reduce-add of the shared buffer src into desc's tensor at coord (Triton 3.6's Gluon
    has the op but no function for it; later Tritons call it tma.async_atomic_add)."""
    coord = _semantic._convert_to_ir_values(coord, require_i64=False)
    _semantic.builder.create_async_tma_reduce(ir.DESCRIPTOR_REDUCE_KIND.ADD, desc.handle, coord,
                                              src.handle)


@gluon.jit
def _head_end(END, end_head, h, n_queries, GRID_M: gl.constexpr):
    """One past the last query row whose block computes this program's key block, for head h
    (END already at (b, key block); end_head: its stride between heads)."""
    return gl.minimum(gl.load(END + h * end_head) * GRID_M, n_queries)


@gluon.jit
def _next_tile(g, q0, hi, lo, hk, group, END, end_head, n_queries, GRID_M: gl.constexpr):
    """The tile after (head g of the group, query row q0): the next row tile of the head, else
    the first tile [lo, ...) of the next head that has one; g == group when none is left. hi:
    the current head's end (_head_end), returned updated."""
    q0 += TILE_M
    while (q0 >= hi) & (g < group):
        g += 1
        q0 = lo
        hi = _head_end(END, end_head, hk * group + gl.minimum(g, group - 1), n_queries, GRID_M)
        hi = gl.where(g < group, hi, 0)
    return g, q0, hi


@gluon.jit
def _first_tile(lo, hk, group, END, end_head, n_queries, GRID_M: gl.constexpr):
    """(head g of the group, query row q0, that head's end) of the first tile; g == group when
    no head has one."""
    hi = _head_end(END, end_head, hk * group, n_queries, GRID_M)
    g = 0
    q0 = lo
    if q0 >= hi:
        g, q0, hi = _next_tile(g, lo - TILE_M, hi, lo, hk, group, END, end_head, n_queries,
                               GRID_M)
    return g, q0, hi


@gluon.jit
def _head_keys(LAM, lam_head, h, key0, offs_n, n_ok):
    """lam_ref = lam[key0] and the keys' bias (lam_ref - lam_j) log2 e of head h (LAM at b)."""
    LAMh = LAM + h * lam_head
    lam_ref = gl.load(LAMh + key0)
    lam_k = gl.load(LAMh + offs_n, mask=n_ok, other=0.0)
    return lam_ref, (lam_ref - lam_k) * LOG2E


@gluon.jit
def _issue_t(a_smem, b_smem, st_layout: gl.constexpr):
    """A transposed score tile, asynchronous (one wgmma group): S^T = K Q^T from (K, Q) or
    dP^T = V dO^T from (V, dO)."""
    shape: gl.constexpr = [a_smem.shape[0], b_smem.shape[0]]
    return warpgroup_mma(a_smem, b_smem.permute((1, 0)),
                         gl.zeros(shape, gl.float32, layout=st_layout), use_acc=False,
                         is_async=True)


@gluon.jit
def _issue_dq(ds_smem, k_smem, ones_smem):
    """dQ = dS K (64 x D, each warp group half of the head dim) and the dS row sums R = dS 1
    (64 x 16) from dS^T in shared memory, both asynchronous (two wgmma groups)."""
    HEAD_DIM: gl.constexpr = k_smem.shape[1]
    dq_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                        instr_shape=[16, HEAD_DIM // 2, 16])
    rs_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 2],
                                                        instr_shape=[16, 8, 16])
    ds = ds_smem.permute((1, 0))
    dq_shape: gl.constexpr = [ds_smem.shape[1], HEAD_DIM]
    rs_shape: gl.constexpr = [ds_smem.shape[1], ones_smem.shape[1]]
    dq = warpgroup_mma(ds, k_smem, gl.zeros(dq_shape, gl.float32, layout=dq_layout),
                       use_acc=False, is_async=True)
    rs = warpgroup_mma(ds, ones_smem, gl.zeros(rs_shape, gl.float32, layout=rs_layout),
                       use_acc=False, is_async=True)
    return dq, rs


@gluon.jit
def _store_dq(dq, rs, dq_smem, rs_smem, dq_free, n):
    """dQ and the row sums of the program's n-th tile into the reducer's buffers, once it has
    read the tile before's (dq_free). The caller fences, meets the math warps' barrier and
    arrives dq_ready."""
    mbarrier.wait(dq_free, (n & 1) ^ 1)
    dq_smem.store(dq)                            # unscaled: the host scales the sum
    rs_smem.store(rs)


@gluon.jit
def _flush_dq(ds_smem, k_smem, ones_smem, dq_smem, rs_smem, dq_free, dq_ready, n):
    """DQ_NEXT: the left-over dQ and row sums of the program's n-th tile (its dS^T in ds_smem,
    its K in k_smem), computed and handed to the reducer now."""
    dq, rs = _issue_dq(ds_smem, k_smem, ones_smem)
    dq, rs = warpgroup_mma_wait(0, deps=(dq, rs))
    _store_dq(dq, rs, dq_smem, rs_smem, dq_free, n)
    fence_async_shared()
    gl.thread_barrier()
    mbarrier.arrive(dq_ready)


@gluon.jit
def _load_tile(q_desc, do_desc, rows_desc, q_smem, do_smem, rows_smem, q_ready, slot, b32,
               h32, n_heads, q0):
    """TMA loads of Q, dO and the per-query rows of queries [q0, q0 + 64) of (b, h) into ring
    slot `slot`."""
    bar = q_ready.index(slot)
    mbarrier.expect(bar, 2 * q_desc.block_type.nbytes + rows_desc.block_type.nbytes)
    tma.async_copy_global_to_shared(q_desc, [b32, h32, q0, 0], bar,
                                    _as_desc_block(q_smem.index(slot)))
    tma.async_copy_global_to_shared(do_desc, [b32, h32, q0, 0], bar,
                                    _as_desc_block(do_smem.index(slot)))
    tma.async_copy_global_to_shared(rows_desc, [(b32 * n_heads + h32) * 2, q0], bar,
                                    rows_smem.index(slot))


@gluon.jit
def _bwd_item(item, n_blocks, n_kv_heads, n_queries, n_keys):
    """(b, hk, key0, lo, mid) of work item `item`: key block item % n_blocks of (b, kv head)
    item // n_blocks, so that a head's blocks come one after another (its Q and dO shared in L2
    by the programs at work) and its heavy blocks first (key block 0 sees every query). Query
    tiles from lo on see a key of the block; tiles before mid cross the diagonal (masked)."""
    pid_n = item % n_blocks
    pid_bh = item // n_blocks
    b = (pid_bh // n_kv_heads).to(gl.int64)
    hk = (pid_bh % n_kv_heads).to(gl.int64)
    offset = n_keys - n_queries
    key0 = pid_n * BLOCK_N
    lo = (gl.maximum(key0 - offset, 0) // TILE_M) * TILE_M
    full = gl.maximum(key0 + BLOCK_N - 1 - offset, 0)
    mid = gl.maximum(((full + TILE_M - 1) // TILE_M) * TILE_M, lo)
    return b, hk, key0, lo, mid


@gluon.jit
def _bwd_loader(k_desc, v_desc, q_desc, do_desc, rows_desc, k_smem, v_smem, q_smem, do_smem,
                rows_smem, kv_ready, kv_free, q_ready, q_free, items, item_ready, item_free,
                COUNTER, ORDER, END, end_b, end_head, end_n, n_items, n_blocks, n_kv_heads,
                group, n_queries, n_keys, GRID_M: gl.constexpr, GRID_N: gl.constexpr,
                STAGES: gl.constexpr, KV_BUFFERS: gl.constexpr, ORDERED: gl.constexpr):
    """The loader warp, and the scheduler: the work item at schedule position program_id
    first, then at the next free one (COUNTER, an int32 zero at launch, plus num_programs;
    _scheduled_item), each published to the other partitions (_publish_item) before its
    loads. Per item: K and V into buffer jj % KV_BUFFERS (once the math is done with that
    buffer's last item: kv_free), then Q, dO and the per-query rows of every tile through the
    ring, a slot refilled once the math has finished with it (q_free; `it` counts the tiles of
    all the program's items)."""
    n_heads = n_kv_heads * group
    it = 0
    jj = 0
    position = gl.program_id(0)
    while position < n_items:
        item = _scheduled_item(position, ORDER, n_blocks, ORDERED)
        _publish_item(items, item_ready, item_free, jj, item, 0)
        b, hk, key0, lo, mid = _bwd_item(item, n_blocks, n_kv_heads, n_queries, n_keys)
        b32, hk32 = b.to(gl.int32), hk.to(gl.int32)
        kv = jj % KV_BUFFERS
        # the first round finds every buffer free (parity 1 of a fresh barrier has completed)
        mbarrier.wait(kv_free.index(kv), ((jj // KV_BUFFERS) & 1) ^ 1)
        mbarrier.expect(kv_ready.index(kv), 2 * k_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(k_desc, [b32, hk32, key0, 0], kv_ready.index(kv),
                                        _as_desc_block(k_smem.index(kv)))
        tma.async_copy_global_to_shared(v_desc, [b32, hk32, key0, 0], kv_ready.index(kv),
                                        _as_desc_block(v_smem.index(kv)))
        item_end = END + b * end_b + (key0 // GRID_N) * end_n
        g, q0, hi = _first_tile(lo, hk, group, item_end, end_head, n_queries, GRID_M)
        while g < group:
            slot = it % STAGES
            mbarrier.wait(q_free.index(slot), ((it // STAGES) & 1) ^ 1)
            _load_tile(q_desc, do_desc, rows_desc, q_smem, do_smem, rows_smem, q_ready, slot,
                       b32, (hk * group + g).to(gl.int32), n_heads, q0)
            g, q0, hi = _next_tile(g, q0, hi, lo, hk, group, item_end, end_head, n_queries,
                                   GRID_M)
            it += 1
        position = gl.atomic_add(COUNTER, 1) + gl.num_programs(0)
        jj += 1
    _publish_item(items, item_ready, item_free, jj, n_items, 0)


@gluon.jit
def _bwd_reducer(dq_desc, rs_desc, dk_desc, dv_desc, dq_smem, rs_smem, k_smem, v_smem, dq_ready,
                 dq_free, kv_out, kv_free, items, item_ready, item_free, END, end_b, end_head,
                 end_n, n_items, n_blocks, n_kv_heads, group, n_queries, n_keys,
                 GRID_M: gl.constexpr, GRID_N: gl.constexpr, KV_BUFFERS: gl.constexpr,
                 KV_TMA: gl.constexpr):
    """The reducer warp: each tile's dQ and row sums, once in shared memory (dq_ready), added
    into the float32 buffers by TMA; the buffers handed back (dq_free) once the adds have read
    them. With KV_TMA, after an item's tiles, its dk and dv (in its K and V buffers: kv_out)
    stored by TMA, and the buffers handed back to the loader (kv_free) once the stores have
    read them. Items from the loader (_take_item) until none is left."""
    it = 0
    jj = 0
    item = _take_item(items, item_ready, item_free, jj, 1)[0]
    while item < n_items:
        b, hk, key0, lo, mid = _bwd_item(item, n_blocks, n_kv_heads, n_queries, n_keys)
        b32 = b.to(gl.int32)
        item_end = END + b * end_b + (key0 // GRID_N) * end_n
        g, q0, hi = _first_tile(lo, hk, group, item_end, end_head, n_queries, GRID_M)
        while g < group:
            mbarrier.wait(dq_ready, it & 1)
            h32 = (hk * group + g).to(gl.int32)
            _tma_reduce_add(dq_desc, [b32, h32, q0, 0], _as_desc_block(dq_smem))
            _tma_reduce_add(rs_desc, [b32, h32, q0, 0], _as_desc_block(rs_smem))
            tma.store_wait(0)
            mbarrier.arrive(dq_free)
            g, q0, hi = _next_tile(g, q0, hi, lo, hk, group, item_end, end_head, n_queries,
                                   GRID_M)
            it += 1
        if KV_TMA:
            kv = jj % KV_BUFFERS
            mbarrier.wait(kv_out.index(kv), (jj // KV_BUFFERS) & 1)
            hk32 = hk.to(gl.int32)
            tma.async_copy_shared_to_global(dk_desc, [b32, hk32, key0, 0],
                                            _as_desc_block(k_smem.index(kv)))
            tma.async_copy_shared_to_global(dv_desc, [b32, hk32, key0, 0],
                                            _as_desc_block(v_smem.index(kv)))
            tma.store_wait(0)
            mbarrier.arrive(kv_free.index(kv))
        jj += 1
        item = _take_item(items, item_ready, item_free, jj, 1)[0]


@gluon.jit
def _bwd_block(k_all, v_all, kv, q_smem, do_smem, rows_smem, ds_smem, dq_smem, rs_smem, ones_smem,
               q_ready, q_free, dq_ready, dq_free, kv_free, LAM, DK, DV, DLAM, END, DOC, STAMPS,
               lam_head, dlam_head, end_head, dk_row, dv_row, hk, group, key0, lo, mid, it,
               pend, pend_kv, n_queries, n_keys, qk_scale, scale, HEAD_DIM: gl.constexpr,
               GRID_M: gl.constexpr, STAGES: gl.constexpr, HAS_DOC: gl.constexpr,
               KV_TMA: gl.constexpr, DQ_NEXT: gl.constexpr, TIMELINE: gl.constexpr):
    """The math warps' share of one work item (K and V in buffer kv of k_all, v_all, ready): per
    tile, the five products and the dS math, every product waited for inside the tile (ptxas
    serialises groups left pending across the loop's back-edge); dS^T through ds_smem (both
    warp groups' halves feed dQ), dQ and the row sums handed to the reducer; then dk, dv of the
    block. LAM, DLAM, DOC at b; DK, DV at (b, kv head); END at (b, key block). `it`: the ring's
    tiles of the items before; returned advanced past this item's. dk and dv go out through
    global stores, or with KV_TMA into the item's K and V buffers (their last product has read
    them) for the reducer's TMA stores.

    DQ_NEXT: a tile's dQ and row sums are issued at the next tile's start, between its S^T and
    dP^T (from dS^T in ds_smem buffer it % 2 and the K of buffer pend_kv, which stay until
    then), so that the tensor cores run them while the scores wait, and their hand-over shares
    the tile's one barrier with dS^T's. pend (0 or 1): whether a tile's dQ is left over from
    before (with its K in buffer pend_kv); that buffer goes back to the loader (kv_free) once
    the dQ is done; an item with no tile hands it over at once (_flush_dq). Returns (it, pend,
    pend_kv) advanced; the caller flushes the program's last one.
    STAMPS: the item's timeline row (TIMELINE: slots 2-5, once the first tile is known, after
    the first tile, after the last, after the dk, dv stores)."""
    st_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                        instr_shape=[16, TILE_M, 16])
    kd_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                        instr_shape=[16, HEAD_DIM, 16])
    # the dS column sums (per key, over a head's query tiles): dS^T x ones (TILE_M, 16) on the
    # tensor cores, accumulated across the head's tiles, all 16 columns equal
    cs_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[8, 1],
                                                        instr_shape=[16, 16, 16])
    op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=kd_layout, k_width=2)
    cs_op_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=cs_layout, k_width=2)
    key_layout: gl.constexpr = gl.SliceLayout(1, st_layout)
    query_layout: gl.constexpr = gl.SliceLayout(0, st_layout)
    k_smem = k_all.index(kv)
    v_smem = v_all.index(kv)
    dtype: gl.constexpr = k_smem.dtype
    ROWS_EARLY: gl.constexpr = HEAD_DIM == 64 and not HAS_DOC
    # at D = 128 (where the accumulators crowd the registers): dV's product issued after dS,
    # so that P's operand registers are not held across the dP wait, and the dS column sums
    # added up in registers (2 per thread, not a (128, 16) accumulator); at D = 64 both cost
    # time (docs/kernels.md, "Registers at D = 128")
    LATE_DV: gl.constexpr = HEAD_DIM == 128
    # DQ_NEXT's dQ accumulator, live across the exponentials, does not fit beside D = 128's
    # (offline: ptxas serialises the products and spills)
    gl.static_assert(not (DQ_NEXT and LATE_DV), "DQ_NEXT is for D = 64")
    offset = n_keys - n_queries

    offs_n = key0 + gl.arange(0, BLOCK_N, layout=key_layout)
    n_ok = offs_n < n_keys
    doc_k = 0
    if HAS_DOC:
        doc_k = gl.load(DOC + offs_n, mask=n_ok, other=-1)
    dk = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=kd_layout)
    dv = gl.zeros([BLOCK_N, HEAD_DIM], gl.float32, layout=kd_layout)
    if LATE_DV:
        colsum = gl.zeros([BLOCK_N], gl.float32, layout=key_layout)
    else:
        colsum = gl.zeros([BLOCK_N, 16], gl.float32, layout=cs_layout)
    g, q0, hi = _first_tile(lo, hk, group, END, end_head, n_queries, GRID_M)
    if DQ_NEXT:
        if (g >= group) & (pend != 0):
            # no tile: the left-over dQ goes now. The reducer takes the next items only once
            # it has it, and the loader publishes an item only once the reducer has taken the
            # one two before, so leaving it for a later item could deadlock.
            _flush_dq(ds_smem.index((it + 1) % 2), k_all.index(pend_kv), ones_smem, dq_smem,
                      rs_smem, dq_free, dq_ready, it - 1)
            mbarrier.arrive(kv_free.index(pend_kv))
            pend = 0
    lam_ref, b_key = _head_keys(LAM, lam_head, hk * group + gl.minimum(g, group - 1), key0,
                                offs_n, n_ok)
    _stamp(STAMPS, 2, TIMELINE)
    it_first = it
    while g < group:
        slot = it % STAGES
        h = hk * group + g
        q = q_smem.index(slot)
        do = do_smem.index(slot)
        tile_rows = rows_smem.index(slot)
        doc_q = 0
        if HAS_DOC:
            pos_doc = offset + q0 + gl.arange(0, TILE_M, layout=query_layout)
            doc_q = gl.load(DOC + pos_doc, mask=pos_doc < n_keys, other=-2)

        mbarrier.wait(q_ready.index(slot), (it // STAGES) & 1)
        st = _issue_t(k_smem, q, st_layout)
        if DQ_NEXT:
            # the tile before's dQ and row sums (when pend is 0, a product nobody reads, from
            # whatever the buffers hold, so that the wgmma groups are the same in every tile)
            dq, rs = _issue_dq(ds_smem.index((it + 1) % 2), k_all.index(pend_kv), ones_smem)
        dpt = _issue_t(v_smem, do, st_layout)
        # the rows: (lam_q - lse) log2 e (-inf on padded rows, so p = 0 there; exp2 first,
        # then the masks zero P: docs/kernels.md) and dO.O; at D = 64 read while the products
        # run (at D = 128 held across the wait they make ptxas spill more), else where used
        if ROWS_EARLY:
            a_row = tile_rows.slice(0, 1).load(st_layout) - lam_ref * LOG2E
            do_o = tile_rows.slice(1, 1).load(st_layout)
        st = warpgroup_mma_wait(3 if DQ_NEXT else 1, deps=(st,))
        if not ROWS_EARLY:
            a_row = tile_rows.slice(0, 1).load(st_layout) - lam_ref * LOG2E
        pt = gl.exp2(st * qk_scale + gl.expand_dims(b_key, 1) + a_row)
        if q0 < mid:
            pos_q = offset + q0 + gl.arange(0, TILE_M, layout=query_layout)
            pt = gl.where(gl.expand_dims(offs_n, 1) <= gl.expand_dims(pos_q, 0), pt, 0.0)
        if HAS_DOC:
            pt = gl.where(gl.expand_dims(doc_k, 1) == gl.expand_dims(doc_q, 0), pt, 0.0)
        if LATE_DV:
            dpt = warpgroup_mma_wait(0, deps=(dpt,))
            do_o = tile_rows.slice(1, 1).load(st_layout)
            dst16 = (pt * (dpt - do_o)).to(dtype)
            dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), op_layout), do, dv, is_async=True)
        else:
            dv = warpgroup_mma(gl.convert_layout(pt.to(dtype), op_layout), do, dv, is_async=True)
            # dV's product still running
            if DQ_NEXT:
                dpt, dq, rs = warpgroup_mma_wait(1, deps=(dpt, dq, rs))
            else:
                dpt = warpgroup_mma_wait(1, deps=(dpt,))
            if not ROWS_EARLY:
                do_o = tile_rows.slice(1, 1).load(st_layout)
            dst16 = (pt * (dpt - do_o)).to(dtype)
        # dK (and at D = 64 the dS column sums, times (TILE_M, 16) ones) from the warp group's
        # own dS^T in registers: issued before the store and barrier below, and without
        # reading dS^T back from shared memory (only dQ and R need the other group's half)
        ds_op = gl.convert_layout(dst16, op_layout)
        dk = warpgroup_mma(ds_op, q, dk, is_async=True)
        if not LATE_DV:
            colsum = warpgroup_mma(gl.convert_layout(ds_op, cs_op_layout),
                                   ones_smem.slice(0, TILE_M), colsum, is_async=True)
        if DQ_NEXT:
            if pend != 0:
                _store_dq(dq, rs, dq_smem, rs_smem, dq_free, it - 1)
            ds_smem.index(it % 2).store(dst16)
            fence_async_shared()
            gl.thread_barrier()    # dS^T's halves (and the tile before's dQ, R) written, its
            if pend != 0:          # dQ done in both warp groups
                mbarrier.arrive(dq_ready)
                if pend_kv != kv:
                    mbarrier.arrive(kv_free.index(pend_kv))
            dv, dk, colsum = warpgroup_mma_wait(0, deps=(dv, dk, colsum))
            mbarrier.arrive(q_free.index(slot))      # Q, dO and the rows of this slot read
            pend = 1
            pend_kv = kv
        else:
            ds_smem.index(0).store(dst16)
            if LATE_DV:
                colsum += gl.sum(dst16.to(gl.float32), 1)
            fence_async_shared()
            gl.thread_barrier()    # both warp groups' halves of dS^T in shared memory
            dq, rs = _issue_dq(ds_smem.index(0), k_smem, ones_smem)
            if LATE_DV:
                dv, dk, dq, rs = warpgroup_mma_wait(0, deps=(dv, dk, dq, rs))
            else:
                dv, dk, colsum, dq, rs = warpgroup_mma_wait(0, deps=(dv, dk, colsum, dq, rs))
            mbarrier.arrive(q_free.index(slot))      # Q, dO and the rows of this slot read
            _store_dq(dq, rs, dq_smem, rs_smem, dq_free, it)
            fence_async_shared()
            gl.thread_barrier()    # all of dQ and R written (and every product read ds_smem)
            mbarrier.arrive(dq_ready)
        if TIMELINE:
            if it == it_first:
                _stamp(STAMPS, 3, TIMELINE)

        next_g, next_q0, next_hi = _next_tile(g, q0, hi, lo, hk, group, END, end_head,
                                              n_queries, GRID_M)
        if next_g != g:            # the head's last tile: its dS column sums
            if LATE_DV:
                gl.store(DLAM + h * dlam_head + offs_n, -colsum, mask=n_ok)
                colsum = gl.zeros([BLOCK_N], gl.float32, layout=key_layout)
            else:
                head_colsum = gl.convert_layout(gl.max(colsum, 1), key_layout)
                gl.store(DLAM + h * dlam_head + offs_n, -head_colsum, mask=n_ok)
                colsum = gl.zeros([BLOCK_N, 16], gl.float32, layout=cs_layout)
            lam_ref, b_key = _head_keys(LAM, lam_head,
                                        hk * group + gl.minimum(next_g, group - 1), key0,
                                        offs_n, n_ok)
        g, q0, hi = next_g, next_q0, next_hi
        it += 1

    if TIMELINE:
        if it == it_first:         # no tile (M < N with every head's tiles pruned): slot 3 too
            _stamp(STAMPS, 3, TIMELINE)
    _stamp(STAMPS, 4, TIMELINE)
    if KV_TMA:
        k_smem.store((dk * scale).to(dtype))
        v_smem.store(dv.to(dtype))
        fence_async_shared()
        gl.thread_barrier()        # all of dk and dv in shared memory before kv_out
    else:
        # through a layout of 8 consecutive entries per thread (a shared-memory round trip),
        # so that each thread's stores are 16 bytes where the strides allow it, not 4
        store_layout: gl.constexpr = gl.BlockedLayout([1, 8], [32 * 8 // HEAD_DIM, HEAD_DIM // 8],
                                                      [8, 1], [1, 0])
        kd_rows: gl.constexpr = gl.SliceLayout(1, store_layout)
        kd_cols: gl.constexpr = gl.SliceLayout(0, store_layout)
        rows = key0 + gl.arange(0, BLOCK_N, layout=kd_rows)
        cols = gl.arange(0, HEAD_DIM, layout=kd_cols)
        ok = gl.expand_dims(rows < n_keys, 1)
        gl.store(DK + gl.expand_dims(rows.to(gl.int64) * dk_row, 1) + gl.expand_dims(cols, 0),
                 gl.convert_layout((dk * scale).to(DK.dtype.element_ty), store_layout), mask=ok)
        gl.store(DV + gl.expand_dims(rows.to(gl.int64) * dv_row, 1) + gl.expand_dims(cols, 0),
                 gl.convert_layout(dv.to(DV.dtype.element_ty), store_layout), mask=ok)
    _stamp(STAMPS, 5, TIMELINE)
    if TIMELINE:
        gl.store(STAMPS + 6, (it - it_first).to(gl.int64))
    return it, pend, pend_kv


@gluon.jit
def _bwd_math(k_smem, v_smem, q_smem, do_smem, rows_smem, ds_smem, dq_smem, rs_smem, ones_smem,
              kv_ready, kv_free, kv_out, q_ready, q_free, dq_ready, dq_free, items, item_ready,
              item_free, LAM, DK, DV, DLAM, END, DOC, STAMPS, lam_b, lam_head, dk_b, dk_head,
              dk_row, dv_b, dv_head, dv_row, dlam_b, dlam_head, end_b, end_head, end_n, doc_b,
              n_items, n_blocks, n_kv_heads, group, n_queries, n_keys, qk_scale, scale,
              HEAD_DIM: gl.constexpr, GRID_M: gl.constexpr, GRID_N: gl.constexpr,
              STAGES: gl.constexpr, KV_BUFFERS: gl.constexpr, HAS_DOC: gl.constexpr,
              KV_TMA: gl.constexpr, DQ_NEXT: gl.constexpr, TIMELINE: gl.constexpr):
    """The eight math warps: items from the loader (_take_item) until none is left, each
    (_bwd_block) once its K and V are in buffer jj % KV_BUFFERS (kv_ready), the buffer handed
    back (kv_free) once its last product has read it, or with KV_TMA handed to the reducer
    (kv_out) holding dk and dv. With DQ_NEXT the last tile's dQ of an item is left for the
    next item (its K buffer held until then: three buffers keep the next items' loads ahead),
    whose first tile, or at once if it has none, hands it over; the program's last one goes
    at the end. With TIMELINE, each item's row of STAMPS (n_items, 8): slot 0 the stamp when
    the item is taken, 1 when its K and V are there, 2-5 _bwd_block's, 6 its tiles, 7 the
    program."""
    it = 0
    jj = 0
    pend = 0
    pend_kv = 0
    item = _take_item(items, item_ready, item_free, jj, 8)[0]
    while item < n_items:
        stamps = STAMPS + item.to(gl.int64) * 8
        _stamp(stamps, 0, TIMELINE)
        b, hk, key0, lo, mid = _bwd_item(item, n_blocks, n_kv_heads, n_queries, n_keys)
        kv = jj % KV_BUFFERS
        mbarrier.wait(kv_ready.index(kv), (jj // KV_BUFFERS) & 1)
        _stamp(stamps, 1, TIMELINE)
        if TIMELINE:
            gl.store(stamps + 7, gl.program_id(0).to(gl.int64))
        it, pend, pend_kv = _bwd_block(
            k_smem, v_smem, kv, q_smem, do_smem, rows_smem, ds_smem, dq_smem, rs_smem, ones_smem,
            q_ready, q_free, dq_ready, dq_free, kv_free, LAM + b * lam_b,
            DK + b * dk_b + hk * dk_head, DV + b * dv_b + hk * dv_head, DLAM + b * dlam_b,
            END + b * end_b + (key0 // GRID_N) * end_n, DOC + b * doc_b, stamps, lam_head,
            dlam_head, end_head, dk_row, dv_row, hk, group, key0, lo, mid, it, pend, pend_kv,
            n_queries, n_keys, qk_scale, scale, HEAD_DIM, GRID_M, STAGES, HAS_DOC, KV_TMA,
            DQ_NEXT, TIMELINE)
        if KV_TMA:
            mbarrier.arrive(kv_out.index(kv))
        elif DQ_NEXT:
            if (pend == 0) | (pend_kv != kv):      # no tile: nothing left over in this buffer
                mbarrier.arrive(kv_free.index(kv))
        else:
            mbarrier.arrive(kv_free.index(kv))
        jj += 1
        item = _take_item(items, item_ready, item_free, jj, 8)[0]
    if DQ_NEXT:
        if pend != 0:
            _flush_dq(ds_smem.index((it + 1) % 2), k_smem.index(pend_kv), ones_smem, dq_smem,
                      rs_smem, dq_free, dq_ready, it - 1)


@gluon.jit(do_not_specialize=["lam_b", "lam_head", "dk_b", "dk_head", "dk_row", "dv_b",
                              "dv_head", "dv_row", "dlam_b", "dlam_head", "end_b", "end_head",
                              "end_n", "doc_b", "n_items", "n_kv_heads", "group", "n_queries",
                              "n_keys"])
def _gluon_bwd_kernel(k_desc, v_desc, q_desc, do_desc, dq_desc, rows_desc, rs_desc, dk_desc,
                      dv_desc, LAM, DK, DV, DLAM, END, DOC, COUNTER, ORDER, STAMPS,
                      lam_b, lam_head, dk_b, dk_head, dk_row, dv_b, dv_head, dv_row,
                      dlam_b, dlam_head, end_b, end_head, end_n, doc_b,
                      n_items, n_kv_heads, group, n_queries, n_keys, qk_scale, scale,
                      HEAD_DIM: gl.constexpr, GRID_M: gl.constexpr, GRID_N: gl.constexpr,
                      STAGES: gl.constexpr, KV_BUFFERS: gl.constexpr, HAS_DOC: gl.constexpr,
                      KV_ALIGN: gl.constexpr, KV_TMA: gl.constexpr, DQ_NEXT: gl.constexpr,
                      ORDERED: gl.constexpr, TIMELINE: gl.constexpr):
    """Persistent, scheduled dynamically: each program takes the work item at schedule
    position program_id, then at the next free one (COUNTER, an int32 zero at launch, counts
    the items taken after the first wave) of the n_items = blocks of 128 keys x (b, kv head)
    (_bwd_item); with ORDERED the (b, kv head)s in ORDER's order (int32 (B * Hk,), most tiles
    first: _scheduled_item), otherwise in their own (ORDER not read). Per item: dk, dv of
    its keys, summed over the group's query heads; its share of dq and of the dS row sums,
    reduce-added into the float32 buffers of dq_desc ((B, Hq, M, D), not yet multiplied by
    scale) and rs_desc ((B, Hq, M, 16), every column the row sum); the dS column sums of each
    head that computes a tile of the block, negated, into DLAM (the other heads' entries are
    left as they are: zeros from the host). k, v through (B, Hk, N, D) descriptors in blocks
    [1, 1, 128, D]; q, dO through (B, Hq, M, D) descriptors in blocks [1, 1, 64, D]; rows_desc:
    the per-query rows (B * Hq * 2, M64) (triton_attention.query_rows) in blocks [2, 64].
    LAM, DLAM (B, Hq, N), END (B, Hq, GRID_N blocks) and DOC (B, N): unit strides along time;
    DK, DV: unit stride along the head dim. Strides come as plain values (*_b: between
    batches, *_head: between heads, end_n: END's between key blocks, dk_row, dv_row: along
    time), never specialised, nor are the sizes: a 1 would arrive as a constant, which
    warp_specialize cannot pass on. DK's and DV's strides come divided by KV_ALIGN (8 where
    they allow it): multiplied back here, they tell the compiler that each thread's two
    adjacent entries can go out as one 4-byte store; with KV_TMA they go out instead through
    dk_desc and dv_desc ((B, Hk, N, D) in blocks [1, 1, 128, D], as k_desc), from the item's K
    and V buffers, by TMA stores from the reducer warp, and DK, DV are not read. With
    TIMELINE, STAMPS (n_items, 8) int64 gets each item's timeline (_bwd_math); otherwise it is
    not read.

    Three partitions: the eight math warps (_bwd_math), the loader warp (_bwd_loader, also the
    scheduler) and a reducer warp (_bwd_reducer), so that no TMA is issued from the math warps
    (Triton puts a CTA barrier before each one there)."""
    # DQ_NEXT holds an item's K buffer into the next item, which must load into another one
    gl.static_assert(not DQ_NEXT or KV_BUFFERS >= 2, "DQ_NEXT needs two K/V buffers or more")
    n_blocks = (n_keys + BLOCK_N - 1) // BLOCK_N
    dk_b = dk_b * KV_ALIGN
    dk_head = dk_head * KV_ALIGN
    dk_row = dk_row * KV_ALIGN
    dv_b = dv_b * KV_ALIGN
    dv_head = dv_head * KV_ALIGN
    dv_row = dv_row * KV_ALIGN
    dtype: gl.constexpr = k_desc.dtype
    kv_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    q_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([TILE_M, HEAD_DIM], dtype)
    ds_smem_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, TILE_M], dtype)
    k_smem = gl.allocate_shared_memory(dtype, [KV_BUFFERS, BLOCK_N, HEAD_DIM], kv_smem_layout)
    v_smem = gl.allocate_shared_memory(dtype, [KV_BUFFERS, BLOCK_N, HEAD_DIM], kv_smem_layout)
    q_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_M, HEAD_DIM], q_smem_layout)
    do_smem = gl.allocate_shared_memory(dtype, [STAGES, TILE_M, HEAD_DIM], q_smem_layout)
    # dS^T: one buffer, or two with DQ_NEXT (a tile's dQ reads its dS^T during the next tile)
    ds_smem = gl.allocate_shared_memory(dtype, [2 if DQ_NEXT else 1, BLOCK_N, TILE_M],
                                        ds_smem_layout)
    rows_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 2, TILE_M], rows_desc.layout)
    dq_smem = gl.allocate_shared_memory(gl.float32, [TILE_M, HEAD_DIM],
                                        gl.NVMMASharedLayout.get_default_for([TILE_M, HEAD_DIM],
                                                                             gl.float32))
    # dS row sums on the tensor cores: dS (64 x 128) times a (128, 16) block of ones, each of the
    # 16 columns the sum (the host keeps column 0)
    ones_smem = gl.allocate_shared_memory(
        dtype, [BLOCK_N, 16], gl.NVMMASharedLayout.get_default_for([BLOCK_N, 16], dtype))
    ones_smem.store(gl.full([BLOCK_N, 16], 1.0, dtype,
                            layout=gl.BlockedLayout([1, 8], [16, 2], [8, 1], [1, 0])))
    rs_smem = gl.allocate_shared_memory(
        gl.float32, [TILE_M, 16], gl.NVMMASharedLayout.get_default_for([TILE_M, 16], gl.float32))
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    kv_ready = gl.allocate_shared_memory(gl.int64, [KV_BUFFERS, 1], bar_layout)
    kv_free = gl.allocate_shared_memory(gl.int64, [KV_BUFFERS, 1], bar_layout)
    kv_out = gl.allocate_shared_memory(gl.int64, [KV_BUFFERS, 1], bar_layout)   # dk, dv in K, V
    q_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    q_free = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    dq_ready = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    dq_free = gl.allocate_shared_memory(gl.int64, [1], bar_layout)
    # the item queue: the loader writes it, the math and the reducer read it
    items, item_ready, item_free = _item_queue(2)
    mbarrier.init(dq_ready, count=1)
    mbarrier.init(dq_free, count=1)
    for i in gl.static_range(KV_BUFFERS):
        mbarrier.init(kv_ready.index(i), count=1)
        mbarrier.init(kv_free.index(i), count=1)
        mbarrier.init(kv_out.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_free.index(i), count=1)
    fence_async_shared()
    gl.thread_barrier()

    gl.warp_specialize([
        (_bwd_math, (k_smem, v_smem, q_smem, do_smem, rows_smem, ds_smem, dq_smem, rs_smem,
                     ones_smem, kv_ready, kv_free, kv_out, q_ready, q_free, dq_ready, dq_free,
                     items, item_ready, item_free, LAM, DK, DV, DLAM, END, DOC, STAMPS, lam_b,
                     lam_head, dk_b, dk_head, dk_row, dv_b, dv_head, dv_row, dlam_b, dlam_head,
                     end_b, end_head, end_n, doc_b, n_items, n_blocks, n_kv_heads, group,
                     n_queries, n_keys, qk_scale, scale, HEAD_DIM, GRID_M, GRID_N, STAGES,
                     KV_BUFFERS, HAS_DOC, KV_TMA, DQ_NEXT, TIMELINE)),
        (_bwd_loader, (k_desc, v_desc, q_desc, do_desc, rows_desc, k_smem, v_smem, q_smem,
                       do_smem, rows_smem, kv_ready, kv_free, q_ready, q_free, items, item_ready,
                       item_free, COUNTER, ORDER, END, end_b, end_head, end_n, n_items,
                       n_blocks, n_kv_heads, group, n_queries, n_keys, GRID_M, GRID_N, STAGES,
                       KV_BUFFERS, ORDERED)),
        (_bwd_reducer, (dq_desc, rs_desc, dk_desc, dv_desc, dq_smem, rs_smem, k_smem, v_smem,
                        dq_ready, dq_free, kv_out, kv_free, items, item_ready, item_free, END,
                        end_b, end_head, end_n, n_items, n_blocks, n_kv_heads, group, n_queries,
                        n_keys, GRID_M, GRID_N, KV_BUFFERS, KV_TMA)),
    ], [1, 1], [24, 24])
