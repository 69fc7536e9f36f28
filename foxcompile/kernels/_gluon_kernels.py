"""Gluon (sm90) forward kernel of forgetting attention with ACP: warp-specialised, asynchronous
wgmma, TMA loads into shared memory behind mbarriers.

Imported only by gluon_attention.py, and only where Triton has Gluon's Hopper pieces (a GPU of
compute capability 9.x, or an offline compile for one).

Semantics as in _triton_kernels.py (query i at absolute position P + i, P = N - M; key j visible
iff j <= P + i; score scale q_i.k_j + lam[P+i] - lam[j], taken against a reference lam_ref near
the rows, in the natural-log domain; p = exp2(s log2 e - m log2 e), one FFMA per score). A work
item is a block of BLOCK_M = 128 query rows of one (b, query head); it walks the key blocks
[START * 128, diagonal] of the pruning grid (plan.tile_sizes: 128 x 128 at head dims 64 and
128, so item and grid tiles coincide). The kernel is persistent: one program per SM takes the
items one after another from an atomic counter.

Who does what (three partitions of one program, docs/kernels.md "The Gluon engine"):

    loader (1 warp)      per item: take it (COUNTER), hand it to the consumers (item queue),
                           the Q halves into Q buffer jj % 2; then per key tile t, stage t % STAGES
                           (the ring runs on across items):
                           wait k_free, TMA K_t and lam_t -> k_ready
                           wait v_free, TMA V_t -> v_ready
    consumer 0 (4 warps) rows [0, 64) of the item       } each, for tile t: issue S_t = Q K_t^T
    consumer 1 (4 warps) rows [64, 128) of the item     } and P_{t-1} V_{t-1} (async), wait for
                                                        } S_t only (arrive k_free), scores of
                                                        } S_t, wait for PV (arrive v_free),
                                                        } online softmax, rescale the accumulator

Within a warp group ptxas puts the wait for PV before the row maximum and the exponentials, so
only the scores' arithmetic runs beside the product; across the two groups the SM's schedulers
interleave one group's softmax with the other's products (explicit turn-taking, as in
FlashAttention-3's ping-pong, measured no faster here: docs/kernels.md). At D = 64 without
documents the row sums of P come from the tensor cores (P x ones beside P V). Every buffer of
the ring is released by both consumers (the free barriers count 2 arrivals) before the loader
refills it; K is released as soon as the scores are in registers, V after its product.
"""
from triton.experimental import gluon
from triton.experimental.gluon import language as gl
from triton.experimental.gluon.language.nvidia.hopper import (
    fence_async_shared, mbarrier, tma, warpgroup_mma, warpgroup_mma_wait)

LOG2E = gl.constexpr(1.4426950408889634)
LN2 = gl.constexpr(0.6931471805599453)
HALF_M = gl.constexpr(64)      # rows per consumer warp group
FIRST_HALF = gl.constexpr(0)
SECOND_HALF = gl.constexpr(1)
ROWS_N = gl.constexpr(16)     # columns of the row sums' product (P x ones, _pv)


@gluon.jit
def _clock():
    """The SM's cycle counter (%clock64), int64: the timeline's stamps (TIMELINE)."""
    return gl.inline_asm_elementwise("mov.u64 $0, %clock64;", "=l,r", [gl.program_id(0)],
                                     dtype=gl.int64, is_pure=False, pack=1)


@gluon.jit
def _stamp(STAMPS, slot: gl.constexpr, TIMELINE: gl.constexpr):
    """With TIMELINE, the cycle counter into STAMPS[slot] (the timeline's row of one work item
    and partition, docs/kernels.md "Where a work item's time goes"); nothing otherwise."""
    if TIMELINE:
        gl.store(STAMPS + slot, _clock())


@gluon.jit
def _as_desc_block(buf):
    """A (rows, D) shared buffer seen as the descriptors' [1, 1, rows, D] block."""
    return buf.reshape([1, 1, buf.shape[0], buf.shape[1]])


@gluon.jit
def _item_block(item, m_blocks, n_heads):
    """(b, h, query block) of work item `item`: query block m_blocks - 1 - item % m_blocks of
    (b, query head) item // m_blocks, so that the heads come one after another (their K and V
    shared in L2 by the programs at work) and each head's late, heavy blocks first."""
    pid_bh = item // m_blocks
    return ((pid_bh // n_heads).to(gl.int64), (pid_bh % n_heads).to(gl.int64),
            m_blocks - 1 - item % m_blocks)


@gluon.jit
def _scheduled_item(position, ORDER, blocks, ORDERED: gl.constexpr):
    """The work item at position `position` of the schedule, items being `blocks` blocks of
    one (b, head) after another: with ORDERED the heads go in ORDER's order (ORDER[i] the i-th
    (b, head) to take, plan.heads_by_work: most tiles first), each head's blocks in their own
    order; otherwise position itself."""
    if ORDERED:
        return gl.load(ORDER + position // blocks) * blocks + position % blocks
    return position


@gluon.jit
def _start_block(item, m_blocks, n_heads, START, start_b, start_h, start_m):
    """The plan's first key block of work item `item` (the loader reads it, and hands it to the
    consumers with the item: no global load between two items in the math)."""
    b, h, pid_m = _item_block(item, m_blocks, n_heads)
    return gl.load(START + b * start_b + h * start_h + pid_m * start_m)


@gluon.jit
def _item(item, start_block, m_blocks, n_heads, group, n_queries, n_keys,
          BLOCK_N: gl.constexpr):
    """(b, h, hk, row0, lo, mid, n_tiles) of work item `item` (_item_block), whose keys start
    at block start_block (_start_block): keys from lo; tiles from mid on cross the diagonal;
    n_tiles key tiles in all (at least one: the diagonal's)."""
    BLOCK_M: gl.constexpr = 2 * HALF_M
    b, h, pid_m = _item_block(item, m_blocks, n_heads)
    row0 = pid_m * BLOCK_M
    pos0 = n_keys - n_queries + row0
    lo = start_block * BLOCK_N
    mid = lo + ((pos0 + 1 - lo) // BLOCK_N) * BLOCK_N
    hi = gl.minimum(pos0 + BLOCK_M, n_keys)
    n_tiles = (hi - lo + BLOCK_N - 1) // BLOCK_N
    return b, h, h // group, row0, lo, mid, n_tiles


@gluon.jit
def _item_queue(READERS: gl.constexpr):
    """The item queue's shared memory, initialised: two slots of two int32 (an item and a value
    that goes with it) the scheduling partition writes (_publish_item) and READERS partitions
    read (_take_item), with their ready and free barriers (a slot is free once all READERS
    have taken its item)."""
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    items = gl.allocate_shared_memory(gl.int32, [4, 1],
                                      gl.SwizzledSharedLayout(1, 1, 1, order=[0]))
    item_ready = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
    item_free = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
    for i in gl.static_range(2):
        mbarrier.init(item_ready.index(i), count=1)
        mbarrier.init(item_free.index(i), count=READERS)
    return items, item_ready, item_free


@gluon.jit
def _publish_item(items, item_ready, item_free, jj, item, value):
    """The scheduler's side of the item queue: the program's item number jj (>= n_items: none
    left) and its value into slot jj % 2, once every reader has taken what that slot held
    before."""
    slot = jj % 2
    mbarrier.wait(item_free.index(slot), ((jj // 2) & 1) ^ 1)
    one_warp: gl.constexpr = gl.BlockedLayout([1], [32], [1], [0])
    items.index(2 * slot).store(gl.full([1], item, gl.int32, layout=one_warp))
    items.index(2 * slot + 1).store(gl.full([1], value, gl.int32, layout=one_warp))
    mbarrier.arrive(item_ready.index(slot))


@gluon.jit
def _take_item(items, item_ready, item_free, jj, WARPS: gl.constexpr):
    """A reader's side of the item queue (a partition of WARPS warps): the program's item
    number jj and its value; the slot is handed back once every warp of the partition has
    read it."""
    slot = jj % 2
    mbarrier.wait(item_ready.index(slot), (jj // 2) & 1)
    layout: gl.constexpr = gl.BlockedLayout([1], [32], [WARPS], [0])
    item = gl.max(items.index(2 * slot).load(layout), 0)
    value = gl.max(items.index(2 * slot + 1).load(layout), 0)
    gl.thread_barrier()
    mbarrier.arrive(item_free.index(slot))
    return item, value


@gluon.jit
def _loader(q_desc, k_desc, v_desc, lam_desc, q_smem, k_smem, v_smem, lam_smem, q_ready, q_free,
            k_ready, v_ready, kv_free, items, item_ready, item_free, COUNTER, ORDER, START,
            start_b, start_h, start_m, n_items, m_blocks, n_heads, group, n_queries, n_keys,
            BLOCK_N: gl.constexpr, STAGES: gl.constexpr, ORDERED: gl.constexpr):
    """The loader warp, and the scheduler: the work item at schedule position program_id
    first, then at the next free one (COUNTER, an int32 zero at launch, plus num_programs;
    _scheduled_item), each published to the consumers with its start block (_publish_item)
    before its loads. Per item: its two Q halves into Q buffer jj % 2 (a half once its consumer
    is done with that buffer's last item: q_free), then its key tiles through the ring of
    STAGES stages (t counts the tiles of all the program's items)."""
    t = 0
    jj = 0
    position = gl.program_id(0)
    while position < n_items:
        item = _scheduled_item(position, ORDER, m_blocks, ORDERED)
        start_block = _start_block(item, m_blocks, n_heads, START, start_b, start_h, start_m)
        _publish_item(items, item_ready, item_free, jj, item, start_block)
        b, h, hk, row0, lo, mid, n_tiles = _item(item, start_block, m_blocks, n_heads, group,
                                                 n_queries, n_keys, BLOCK_N)
        b32, h32, hk32 = b.to(gl.int32), h.to(gl.int32), hk.to(gl.int32)
        lam_row = (b * n_heads + h).to(gl.int32)
        for half in gl.static_range(2):
            q_buf = 2 * (jj % 2) + half
            mbarrier.wait(q_free.index(q_buf), ((jj // 2) & 1) ^ 1)
            mbarrier.expect(q_ready.index(q_buf), q_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(q_desc, [b32, h32, row0 + half * HALF_M, 0],
                                            q_ready.index(q_buf),
                                            _as_desc_block(q_smem.index(q_buf)))
        for i in range(n_tiles):
            stage = t % STAGES
            # the first round finds every buffer free (parity 1 of a fresh barrier has completed)
            free_phase = ((t // STAGES) & 1) ^ 1
            key0 = lo + i * BLOCK_N
            mbarrier.wait(kv_free.index(stage), free_phase)
            mbarrier.expect(k_ready.index(stage),
                            k_desc.block_type.nbytes + lam_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(k_desc, [b32, hk32, key0, 0], k_ready.index(stage),
                                            _as_desc_block(k_smem.index(stage)))
            tma.async_copy_global_to_shared(lam_desc, [lam_row, key0], k_ready.index(stage),
                                            lam_smem.index(stage))
            mbarrier.wait(kv_free.index(STAGES + stage), free_phase)
            mbarrier.expect(v_ready.index(stage), v_desc.block_type.nbytes)
            tma.async_copy_global_to_shared(v_desc, [b32, hk32, key0, 0], v_ready.index(stage),
                                            _as_desc_block(v_smem.index(stage)))
            t += 1
        position = gl.atomic_add(COUNTER, 1) + gl.num_programs(0)
        jj += 1
    _publish_item(items, item_ready, item_free, jj, n_items, 0)


@gluon.jit
def _key_row(lam_tile, DOC, key0, n_keys, s_layout: gl.constexpr, BLOCK_N: gl.constexpr,
             HAS_DOC: gl.constexpr):
    """Positions, lam (from the tile's (1, BLOCK_N) shared buffer, zeros past the end) and
    document ids (from global memory, ahead of the tile's product so that their latency hides
    behind it) of the keys [key0, key0 + BLOCK_N), as columns of s_layout."""
    layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    offs_n = key0 + gl.arange(0, BLOCK_N, layout=layout)
    lam_k = gl.max(lam_tile.load(s_layout), 0)     # one row, seen by every row of the layout
    doc_k = 0
    if HAS_DOC:
        doc_k = gl.load(DOC + offs_n, mask=offs_n < n_keys, other=-1)
    return offs_n, lam_k, doc_k


@gluon.jit
def _scores(s, keys, key0, mid, pos_q, sm_scale, doc_q, lam_ref, HAS_DOC: gl.constexpr):
    """The scores of one tile (natural-log domain, so that the gate's bias is one FADD per
    key and its scale folds into the FFMA): s = QK^T (fp32, mma layout) * sm_scale plus
    (lam_ref - lam_j); masked past the diagonal (tiles from `mid` on) and across documents.
    keys: _key_row's."""
    offs_n, lam_k, doc_k = keys
    s = s * sm_scale + gl.expand_dims(lam_ref - lam_k, 0)
    if key0 >= mid:
        s = gl.where(gl.expand_dims(offs_n, 0) <= gl.expand_dims(pos_q, 1), s, float("-inf"))
    if HAS_DOC:
        s = gl.where(gl.expand_dims(doc_q, 1) == gl.expand_dims(doc_k, 0), s, float("-inf"))
    return s


@gluon.jit
def _halve_columns(x, IS_MAX: gl.constexpr):
    """max (or sum) of x[:, :n/2] and x[:, n/2:] for a (rows, n) tile whose top column bit is a
    register bit (n >= 16 in the wgmma accumulator layout): n/2 independent ops per row."""
    ROWS: gl.constexpr = x.shape[0]
    HALF: gl.constexpr = x.shape[1] // 2
    lower, upper = gl.split(x.reshape([ROWS, 2, HALF]).permute((0, 2, 1)))
    if IS_MAX:
        return gl.maximum(lower, upper)
    else:
        return lower + upper


@gluon.jit
def _row_reduce(s, IS_MAX: gl.constexpr):
    """The row maxima (or sums) of a (rows, 128) wgmma-accumulator tile, as a tree: gl.max and
    gl.sum reduce a thread's 32 columns of a row in one chain of 31 dependent instructions;
    halving the columns while the halves lie in one thread's registers (column bits 6 .. 3)
    leaves a chain of 5, then gl.max / gl.sum finish the columns spread over lanes (bits
    0 .. 2). The result is in a layout of its own (convert it to the rows' layout)."""
    x = _halve_columns(s, IS_MAX)
    x = _halve_columns(x, IS_MAX)
    x = _halve_columns(x, IS_MAX)
    x = _halve_columns(x, IS_MAX)
    if IS_MAX:
        return gl.max(x, 1)
    else:
        return gl.sum(x, 1)


@gluon.jit
def _softmax_step(s, m_i, l_i, HAS_DOC: gl.constexpr, ROWSUM_MMA: gl.constexpr):
    """Online softmax over one tile of natural-log scores s (_scores): (p, new m, alpha =
    rescale of the old rows, new l); p = 2^(s log2 e - m log2 e), one FFMA and one MUFU.
    With ROWSUM_MMA the row sums l are left to the tensor cores (_pv) and l_i passes as is."""
    m_new = gl.maximum(m_i, gl.convert_layout(_row_reduce(s, True), m_i.type.layout))
    m_ref = m_new
    if HAS_DOC:  # a row with no key of its document so far: alpha = p = 0, not NaN
        m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2((m_i - m_ref) * LOG2E)
    p = gl.exp2(s * LOG2E - gl.expand_dims(m_ref * LOG2E, 1))
    if not ROWSUM_MMA:
        l_i = l_i * alpha + gl.convert_layout(_row_reduce(p, False), l_i.type.layout)
    return p, m_new, alpha, l_i


@gluon.jit
def _pv(p_op, v, ones, acc, acc_l, ROWSUM_MMA: gl.constexpr):
    """Issue acc += P V and, with ROWSUM_MMA, acc_l += P ones (the row sums of P on the
    tensor cores, saving the softmax one FADD per score)."""
    acc = warpgroup_mma(p_op, v, acc, is_async=True)
    if ROWSUM_MMA:
        pl_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=acc_l.type.layout,
                                                      k_width=2)
        acc_l = warpgroup_mma(gl.convert_layout(p_op, pl_layout), ones.permute((1, 0)), acc_l,
                              is_async=True)
    return acc, acc_l


@gluon.jit
def _attend_block(q, q_ready, q_phase, q_free, k_smem, v_smem, lam_smem, ones, k_ready, v_ready,
                  kv_free,
                  LAM, OUT, LSE, DOC, STAMPS, out_desc, out_b, out_h, out_row, row0, lo, mid,
                  n_tiles, t0, n_queries, n_keys, sm_scale, HALF: gl.constexpr,
                  HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                  HAS_DOC: gl.constexpr, OUT_TMA: gl.constexpr, TIMELINE: gl.constexpr):
    """One warp group's share of one work item: rows [row0 + HALF * 64, +64) against its
    n_tiles key tiles, which are tiles t0, t0 + 1, ... of the program's ring. q: the rows' Q
    buffer (ready at q_ready's phase q_phase; q_free is arrived once its last product has read
    it). LAM, OUT, LSE and DOC are at (b, h) (DOC at b) with unit strides along time and the
    head dim; out_row is OUT's stride between rows. With OUT_TMA the rows' out goes through
    their Q buffer (its last product has read it) and a TMA store to out_desc at (out_b, out_h)
    instead, and the buffer is handed back (q_free) once the store has read it. STAMPS: the
    item's timeline row for this warp group (TIMELINE: slots 1-5, after the Q wait, the first
    tile's scores, the tile loop, the last product and the stores)."""
    # wgmma accumulators of (64, BLOCK_N) scores and the (64, HEAD_DIM) output over 4 warps
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    # the row sums of P at D = 64 without documents: P x ones (BLOCK_N, ROWS_N) accumulated
    # beside the output, all columns equal (the sum of the 16-bit P that the output's product
    # reads); elsewhere in registers (at D = 128, or with documents, acc_l made ptxas spill)
    ROWSUM_MMA: gl.constexpr = HEAD_DIM == 64 and not HAS_DOC
    l_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, ROWS_N, 16])
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    dtype: gl.constexpr = k_smem.dtype

    offset = n_keys - n_queries
    offs_m = row0 + HALF * HALF_M + gl.arange(0, HALF_M, layout=row_layout)
    m_ok = offs_m < n_queries
    pos_q = offset + offs_m
    pos0 = offset + row0 + HALF * HALF_M
    lam_ref = gl.load(LAM + pos0, mask=pos0 < n_keys, other=0.0)
    lam_q = gl.load(LAM + pos_q, mask=m_ok, other=0.0)     # for lse, read now: no load at the end
    doc_q = 0
    if HAS_DOC:
        doc_q = gl.load(DOC + pos_q, mask=m_ok, other=-1)

    m_i = gl.full([HALF_M], float("-inf"), gl.float32, layout=row_layout)
    acc_l = gl.zeros([HALF_M, ROWS_N], gl.float32, layout=l_layout)
    l_i = gl.full([HALF_M], 0.0, gl.float32, layout=row_layout)
    acc = gl.zeros([HALF_M, HEAD_DIM], gl.float32, layout=o_layout)
    zero_s = gl.zeros([HALF_M, BLOCK_N], gl.float32, layout=s_layout)

    mbarrier.wait(q_ready, q_phase)
    _stamp(STAMPS, 1, TIMELINE)

    # tile 0: its scores alone
    first = t0 % STAGES
    mbarrier.wait(k_ready.index(first), (t0 // STAGES) & 1)
    keys = _key_row(lam_smem.index(first), DOC, lo, n_keys, s_layout, BLOCK_N, HAS_DOC)
    s = warpgroup_mma(q, k_smem.index(first).permute((1, 0)), zero_s, use_acc=False,
                      is_async=True)
    s = warpgroup_mma_wait(0, deps=(s,))
    mbarrier.arrive(kv_free.index(first))
    s = _scores(s, keys, lo, mid, pos_q, sm_scale, doc_q, lam_ref, HAS_DOC)
    p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, HAS_DOC, ROWSUM_MMA)
    _stamp(STAMPS, 2, TIMELINE)

    for t in range(1, n_tiles):
        ring = t0 + t
        stage = ring % STAGES
        prev = (ring - 1) % STAGES
        key0 = lo + t * BLOCK_N
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        mbarrier.wait(k_ready.index(stage), (ring // STAGES) & 1)
        keys = _key_row(lam_smem.index(stage), DOC, key0, n_keys, s_layout, BLOCK_N, HAS_DOC)
        mbarrier.wait(v_ready.index(prev), ((ring - 1) // STAGES) & 1)
        # S_t in flight, then P_{t-1} V_{t-1} behind it
        s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), zero_s, use_acc=False,
                          is_async=True)
        acc, acc_l = _pv(p_op, v_smem.index(prev), ones, acc, acc_l, ROWSUM_MMA)
        s = warpgroup_mma_wait(2 if ROWSUM_MMA else 1, deps=(s,))
        mbarrier.arrive(kv_free.index(stage))             # K_t (and lam_t) read
        s = _scores(s, keys, key0, mid, pos_q, sm_scale, doc_q, lam_ref, HAS_DOC)
        p, m_i, alpha, l_i = _softmax_step(s, m_i, l_i, HAS_DOC, ROWSUM_MMA)
        acc, acc_l = warpgroup_mma_wait(0, deps=(acc, acc_l))
        mbarrier.arrive(kv_free.index(STAGES + prev))     # V_{t-1} read
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)
        if ROWSUM_MMA:
            acc_l = acc_l * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, l_layout)),
                                           1)

    _stamp(STAMPS, 3, TIMELINE)
    if not OUT_TMA:
        mbarrier.arrive(q_free)                           # Q read by its last product
    last = (t0 + n_tiles - 1) % STAGES
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    mbarrier.wait(v_ready.index(last), ((t0 + n_tiles - 1) // STAGES) & 1)
    acc, acc_l = _pv(p_op, v_smem.index(last), ones, acc, acc_l, ROWSUM_MMA)
    acc, acc_l = warpgroup_mma_wait(0, deps=(acc, acc_l))
    mbarrier.arrive(kv_free.index(STAGES + last))
    _stamp(STAMPS, 4, TIMELINE)

    # out = acc / l, lse = natural-log normaliser of the true scores
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)
    if ROWSUM_MMA:
        l_i = gl.convert_layout(gl.max(acc_l, 1), row_layout)
    l_o = gl.convert_layout(l_i, o_rows)
    out = acc / gl.expand_dims(l_o, 1)
    if OUT_TMA:
        q.store(out.to(dtype))
        fence_async_shared()
        tma.async_copy_shared_to_global(out_desc, [out_b, out_h, row0 + HALF * HALF_M, 0],
                                        _as_desc_block(q))
        tma.store_wait(0)
        mbarrier.arrive(q_free)                           # the store has read the buffer
    else:
        offs_mo = row0 + HALF * HALF_M + gl.arange(0, HALF_M, layout=o_rows)
        offs_d = gl.arange(0, HEAD_DIM, layout=o_cols)
        ptrs = OUT + gl.expand_dims(offs_mo.to(gl.int64) * out_row, 1) + gl.expand_dims(offs_d, 0)
        gl.store(ptrs, out.to(OUT.dtype.element_ty), mask=gl.expand_dims(offs_mo < n_queries, 1))
    lse = m_i + gl.log2(l_i) * LN2 + (lam_q - lam_ref)
    gl.store(LSE + offs_m, lse, mask=m_ok)
    _stamp(STAMPS, 5, TIMELINE)


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, lam_smem, ones, q_ready, q_free, k_ready, v_ready, kv_free,
              items, item_ready, item_free, LAM, OUT, LSE, DOC, STAMPS, out_desc, lam_b, lam_h,
              out_b, out_h, lse_b, lse_h, doc_b, out_row, n_items, m_blocks, n_heads, group,
              n_queries, n_keys, sm_scale, HALF: gl.constexpr, HEAD_DIM: gl.constexpr,
              BLOCK_N: gl.constexpr, STAGES: gl.constexpr, HAS_DOC: gl.constexpr,
              OUT_TMA: gl.constexpr, TIMELINE: gl.constexpr):
    """One warp group: rows [HALF * 64, +64) of each work item's block, items from the loader
    (_take_item) until none is left; t0 counts the ring's tiles of the items before. With
    TIMELINE, each item's row of STAMPS (n_items, 2, 8) for this half: slot 0 the stamp when
    the item is taken, 1-5 _attend_block's, 6 the item's tiles, 7 the program."""
    t0 = 0
    jj = 0
    item, start_block = _take_item(items, item_ready, item_free, jj, 4)
    while item < n_items:
        stamps = STAMPS + (item.to(gl.int64) * 2 + HALF) * 8
        _stamp(stamps, 0, TIMELINE)
        b, h, hk, row0, lo, mid, n_tiles = _item(item, start_block, m_blocks, n_heads, group,
                                                 n_queries, n_keys, BLOCK_N)
        if TIMELINE:
            gl.store(stamps + 6, n_tiles.to(gl.int64))
            gl.store(stamps + 7, gl.program_id(0).to(gl.int64))
        q_buf = 2 * (jj % 2) + HALF
        _attend_block(q_smem.index(q_buf), q_ready.index(q_buf), (jj // 2) & 1,
                      q_free.index(q_buf), k_smem, v_smem, lam_smem, ones, k_ready, v_ready,
                      kv_free,
                      LAM + b * lam_b + h * lam_h, OUT + b * out_b + h * out_h,
                      LSE + b * lse_b + h * lse_h, DOC + b * doc_b, stamps, out_desc,
                      b.to(gl.int32), h.to(gl.int32), out_row, row0, lo, mid, n_tiles, t0,
                      n_queries, n_keys, sm_scale, HALF, HEAD_DIM, BLOCK_N, STAGES, HAS_DOC,
                      OUT_TMA, TIMELINE)
        t0 += n_tiles
        jj += 1
        item, start_block = _take_item(items, item_ready, item_free, jj, 4)


@gluon.jit(do_not_specialize=["lam_b", "lam_h", "out_b", "out_h", "lse_b", "lse_h", "start_b",
                             "start_h", "start_m", "doc_b", "out_row", "n_items", "n_heads",
                             "group", "n_queries", "n_keys"])
def _gluon_fwd_kernel(q_desc, k_desc, v_desc, lam_desc, out_desc, LAM, OUT, LSE, START, DOC,
                      COUNTER, ORDER, STAMPS, lam_b, lam_h, out_b, out_h, lse_b, lse_h, start_b,
                      start_h, start_m, doc_b, out_row, n_items, n_heads, group, n_queries, n_keys,
                      sm_scale, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
                      STAGES: gl.constexpr, HAS_DOC: gl.constexpr, OUT_ALIGN: gl.constexpr,
                      OUT_TMA: gl.constexpr, ORDERED: gl.constexpr, TIMELINE: gl.constexpr):
    """Persistent, scheduled dynamically: each program takes the work item at schedule
    position program_id, then at the next free one (COUNTER, an int32 zero at launch, counts
    the items taken after the first wave) of the n_items = blocks of 128 queries x (b, query
    head) (_item); with ORDERED the (b, head)s in ORDER's order (int32 (B * Hq,), most tiles
    first: _scheduled_item), otherwise in their own (ORDER not read); per item OUT and LSE of
    its rows. q, k and v through the tensor descriptors q_desc (B, Hq, M, D) in blocks
    [1, 1, 64, D], k_desc and v_desc (B, Hk, N, D) in blocks [1, 1, BLOCK_N, D]. LAM, OUT, LSE
    and DOC have unit strides along time (and OUT along the head dim). Strides come as plain
    values (*_b: between batches, *_h: between heads, start_m: between START's query blocks,
    out_row: OUT's along time), never specialised, nor are the sizes: a 1 would arrive as a
    constant, which warp_specialize cannot pass on. OUT's three strides come divided by
    OUT_ALIGN (8 where they allow it): multiplied back here, they tell the compiler that each
    thread's two adjacent outputs can go out as one 4-byte store. With OUT_TMA, out goes
    instead through out_desc ((B, Hq, M, D) in blocks [1, 1, 64, D], as q_desc) by TMA stores
    from the rows' Q buffer, and OUT is not written. With TIMELINE, STAMPS
    (n_items, 2, 8) int64 gets each item's timeline (_consumer); otherwise it is not read.

    Q has two buffers of two halves, so the loader fetches the next item's Q while the
    consumers finish the current one, and the K/V ring runs on across items: the launch and
    the loads' fill are paid once per SM; each item still pays its first tile's scores alone
    and its epilogue (docs/kernels.md, "Per tile faster than `tl`, per work item slower")."""
    BLOCK_M: gl.constexpr = 2 * HALF_M
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    out_b = out_b * OUT_ALIGN
    out_h = out_h * OUT_ALIGN
    out_row = out_row * OUT_ALIGN
    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [4, HALF_M, HEAD_DIM],
                                       gl.NVMMASharedLayout.get_default_for([HALF_M, HEAD_DIM],
                                                                            dtype))
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    lam_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_N], lam_desc.layout)
    # ones (ROWS_N, BLOCK_N), K-major like K: the B operand (BLOCK_N, ROWS_N) of the row sums
    ones = gl.allocate_shared_memory(dtype, [ROWS_N, BLOCK_N],
                                     gl.NVMMASharedLayout.get_default_for([ROWS_N, BLOCK_N], dtype))
    ones.store(gl.full([ROWS_N, BLOCK_N], 1.0, dtype,
                       gl.BlockedLayout([1, 8], [2, 16], [4, 1], [1, 0])))
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_ready = gl.allocate_shared_memory(gl.int64, [4, 1], bar_layout)
    q_free = gl.allocate_shared_memory(gl.int64, [4, 1], bar_layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    kv_free = gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], bar_layout)
    # the item queue: the loader writes it, both consumers read it
    items, item_ready, item_free = _item_queue(2)
    for i in gl.static_range(4):
        mbarrier.init(q_ready.index(i), count=1)
        mbarrier.init(q_free.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_free.index(i), count=2)
        mbarrier.init(kv_free.index(STAGES + i), count=2)
    fence_async_shared()
    gl.thread_barrier()

    gl.warp_specialize([
        (_consumer, (q_smem, k_smem, v_smem, lam_smem, ones, q_ready, q_free, k_ready, v_ready,
                     kv_free, items, item_ready, item_free, LAM, OUT, LSE, DOC, STAMPS,
                     out_desc, lam_b, lam_h, out_b, out_h, lse_b, lse_h, doc_b, out_row, n_items,
                     m_blocks, n_heads, group, n_queries, n_keys, sm_scale,
                     FIRST_HALF, HEAD_DIM, BLOCK_N, STAGES, HAS_DOC, OUT_TMA, TIMELINE)),
        (_consumer, (q_smem, k_smem, v_smem, lam_smem, ones, q_ready, q_free, k_ready, v_ready,
                     kv_free, items, item_ready, item_free, LAM, OUT, LSE, DOC, STAMPS,
                     out_desc, lam_b, lam_h, out_b, out_h, lse_b, lse_h, doc_b, out_row, n_items,
                     m_blocks, n_heads, group, n_queries, n_keys, sm_scale,
                     SECOND_HALF, HEAD_DIM, BLOCK_N, STAGES, HAS_DOC, OUT_TMA, TIMELINE)),
        (_loader, (q_desc, k_desc, v_desc, lam_desc, q_smem, k_smem, v_smem, lam_smem, q_ready,
                   q_free, k_ready, v_ready, kv_free, items, item_ready, item_free, COUNTER,
                   ORDER, START, start_b, start_h, start_m, n_items, m_blocks, n_heads, group,
                   n_queries, n_keys, BLOCK_N, STAGES, ORDERED)),
    ], [4, 1], [232, 40])
