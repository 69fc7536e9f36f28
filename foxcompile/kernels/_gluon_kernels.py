"""Gluon (sm90) forward kernel of forgetting attention with ACP: warp-specialised, asynchronous
wgmma, TMA loads into shared memory behind mbarriers.

Imported only by gluon_attention.py, and only where Triton has Gluon's Hopper pieces (a GPU of
compute capability 9.x, or an offline compile for one).

Semantics as in _triton_kernels.py (query i at absolute position P + i, P = N - M; key j visible
iff j <= P + i; score scale q_i.k_j + lam[P+i] - lam[j], computed in the exp2 domain against a
reference lam_ref near the rows). One program owns BLOCK_M = 128 query rows of one (b, query
head) and walks the key blocks [START * 128, diagonal] of the pruning grid (plan.tile_sizes:
128 x 128 at head dims 64 and 128, so program and grid tiles coincide).

Who does what (three partitions of one program, docs/kernels.md "The Gluon engine"):

    loader (1 warp)      Q halves once; then for each key tile t, stage t % STAGES:
                           wait k_free, TMA K_t and lam_t -> k_ready
                           wait v_free, TMA V_t -> v_ready
    consumer 0 (4 warps) rows [0, 64) of the block      } each, for tile t: issue S_t = Q K_t^T
    consumer 1 (4 warps) rows [64, 128) of the block    } and P_{t-1} V_{t-1} (async), wait for
                                                        } S_t only (arrive k_free), softmax of
                                                        } S_t, wait for PV (arrive v_free),
                                                        } rescale the accumulator

Across the two groups the SM's schedulers interleave one group's softmax with the other's
products (explicit turn-taking, as in FlashAttention-3's ping-pong, measured no faster here);
within a group ptxas puts the wait for PV before the softmax, so the two do not overlap there
(docs/kernels.md). Every buffer of the ring is released by both consumers (the free barriers
count 2 arrivals) before the loader refills it; K is released as soon as the scores are in
registers, V after its product.
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


@gluon.jit
def _as_desc_block(buf):
    """A (rows, D) shared buffer seen as the descriptors' [1, 1, rows, D] block."""
    return buf.reshape([1, 1, buf.shape[0], buf.shape[1]])


@gluon.jit
def _loader(q_desc, k_desc, v_desc, lam_desc, q_smem, k_smem, v_smem, lam_smem, q_ready,
            k_ready, v_ready, kv_free, b32, h32, hk32, lam_row, q_row0, lo, n_tiles,
            BLOCK_N: gl.constexpr, STAGES: gl.constexpr):
    """The loader warp: both Q halves, then the key tiles through the ring."""
    for half in gl.static_range(2):
        mbarrier.expect(q_ready.index(half), q_desc.block_type.nbytes)
        tma.async_copy_global_to_shared(q_desc, [b32, h32, q_row0 + half * HALF_M, 0],
                                        q_ready.index(half), _as_desc_block(q_smem.index(half)))
    for t in range(n_tiles):
        stage = t % STAGES
        # the first round finds every buffer free (parity 1 of a fresh barrier has completed)
        free_phase = ((t // STAGES) & 1) ^ 1
        key0 = lo + t * BLOCK_N
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
def _scores(s, keys, key0, mid, pos_q, qk_scale, doc_q, lam_ref, HAS_DOC: gl.constexpr):
    """The exp2-domain scores of one tile: s = QK^T (fp32, mma layout) scaled, plus the gate's
    bias (lam_ref - lam_j) log2 e; masked past the diagonal (tiles from `mid` on) and across
    documents. keys: _key_row's."""
    offs_n, lam_k, doc_k = keys
    s = s * qk_scale + gl.expand_dims((lam_ref - lam_k) * LOG2E, 0)
    if key0 >= mid:
        s = gl.where(gl.expand_dims(offs_n, 0) <= gl.expand_dims(pos_q, 1), s, float("-inf"))
    if HAS_DOC:
        s = gl.where(gl.expand_dims(doc_q, 1) == gl.expand_dims(doc_k, 0), s, float("-inf"))
    return s


@gluon.jit
def _softmax_step(s, m_i, l_i, HAS_DOC: gl.constexpr):
    """Online softmax over one tile: (p, new m, new l, alpha = rescale of the old rows)."""
    m_new = gl.maximum(m_i, gl.max(s, 1))
    m_ref = m_new
    if HAS_DOC:  # a row with no key of its document so far: alpha = p = 0, not NaN
        m_ref = gl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = gl.exp2(m_i - m_ref)
    p = gl.exp2(s - gl.expand_dims(m_ref, 1))
    l_i = l_i * alpha + gl.sum(p, 1)
    return p, m_new, l_i, alpha


@gluon.jit
def _consumer(q_smem, k_smem, v_smem, lam_smem, q_ready, k_ready, v_ready, kv_free,
              LAM, OUT, LSE, DOC, out_row, row0, lo, mid, n_tiles, n_queries, n_keys, qk_scale,
              HALF: gl.constexpr, HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr,
              STAGES: gl.constexpr, HAS_DOC: gl.constexpr):
    """One warp group: rows [row0 + HALF * 64, +64) of the block, every key tile. LAM, OUT,
    LSE and DOC are at (b, h) (DOC at b) with unit strides along time and the head dim; out_row
    is OUT's stride between rows."""
    # wgmma accumulators of (64, BLOCK_N) scores and the (64, HEAD_DIM) output over 4 warps
    s_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, BLOCK_N, 16])
    o_layout: gl.constexpr = gl.NVMMADistributedLayout(version=[3, 0], warps_per_cta=[4, 1],
                                                       instr_shape=[16, HEAD_DIM, 16])
    p_layout: gl.constexpr = gl.DotOperandLayout(operand_index=0, parent=o_layout, k_width=2)
    row_layout: gl.constexpr = gl.SliceLayout(1, s_layout)
    col_layout: gl.constexpr = gl.SliceLayout(0, s_layout)
    dtype: gl.constexpr = k_smem.dtype

    offset = n_keys - n_queries
    offs_m = row0 + HALF * HALF_M + gl.arange(0, HALF_M, layout=row_layout)
    m_ok = offs_m < n_queries
    pos_q = offset + offs_m
    pos0 = offset + row0 + HALF * HALF_M
    lam_ref = gl.load(LAM + pos0, mask=pos0 < n_keys, other=0.0)
    doc_q = 0
    if HAS_DOC:
        doc_q = gl.load(DOC + pos_q, mask=m_ok, other=-1)

    m_i = gl.full([HALF_M], float("-inf"), gl.float32, layout=row_layout)
    l_i = gl.full([HALF_M], 0.0, gl.float32, layout=row_layout)
    acc = gl.zeros([HALF_M, HEAD_DIM], gl.float32, layout=o_layout)
    zero_s = gl.zeros([HALF_M, BLOCK_N], gl.float32, layout=s_layout)

    q = q_smem.index(HALF)
    mbarrier.wait(q_ready.index(HALF), 0)

    # tile 0: its scores alone
    mbarrier.wait(k_ready.index(0), 0)
    keys = _key_row(lam_smem.index(0), DOC, lo, n_keys, s_layout, BLOCK_N, HAS_DOC)
    s = warpgroup_mma(q, k_smem.index(0).permute((1, 0)), zero_s, use_acc=False, is_async=True)
    s = warpgroup_mma_wait(0, deps=(s,))
    mbarrier.arrive(kv_free.index(0))
    s = _scores(s, keys, lo, mid, pos_q, qk_scale, doc_q, lam_ref, HAS_DOC)
    p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, HAS_DOC)

    for t in range(1, n_tiles):
        stage = t % STAGES
        prev = (t - 1) % STAGES
        key0 = lo + t * BLOCK_N
        p_op = gl.convert_layout(p.to(dtype), p_layout)
        mbarrier.wait(k_ready.index(stage), (t // STAGES) & 1)
        keys = _key_row(lam_smem.index(stage), DOC, key0, n_keys, s_layout, BLOCK_N, HAS_DOC)
        mbarrier.wait(v_ready.index(prev), ((t - 1) // STAGES) & 1)
        # S_t in flight, then P_{t-1} V_{t-1} behind it
        s = warpgroup_mma(q, k_smem.index(stage).permute((1, 0)), zero_s, use_acc=False,
                          is_async=True)
        acc = warpgroup_mma(p_op, v_smem.index(prev), acc, is_async=True)
        s = warpgroup_mma_wait(1, deps=(s,))
        mbarrier.arrive(kv_free.index(stage))             # K_t (and lam_t) read
        s = _scores(s, keys, key0, mid, pos_q, qk_scale, doc_q, lam_ref, HAS_DOC)
        p, m_i, l_i, alpha = _softmax_step(s, m_i, l_i, HAS_DOC)
        acc = warpgroup_mma_wait(0, deps=(acc,))
        mbarrier.arrive(kv_free.index(STAGES + prev))     # V_{t-1} read
        acc = acc * gl.expand_dims(gl.convert_layout(alpha, gl.SliceLayout(1, o_layout)), 1)

    last = (n_tiles - 1) % STAGES
    p_op = gl.convert_layout(p.to(dtype), p_layout)
    mbarrier.wait(v_ready.index(last), ((n_tiles - 1) // STAGES) & 1)
    acc = warpgroup_mma(p_op, v_smem.index(last), acc, is_async=True)
    acc = warpgroup_mma_wait(0, deps=(acc,))
    mbarrier.arrive(kv_free.index(STAGES + last))

    # out = acc / l, lse = natural-log normaliser of the true scores
    o_rows: gl.constexpr = gl.SliceLayout(1, o_layout)
    o_cols: gl.constexpr = gl.SliceLayout(0, o_layout)
    l_o = gl.convert_layout(l_i, o_rows)
    out = acc / gl.expand_dims(l_o, 1)
    offs_mo = row0 + HALF * HALF_M + gl.arange(0, HALF_M, layout=o_rows)
    offs_d = gl.arange(0, HEAD_DIM, layout=o_cols)
    ptrs = OUT + gl.expand_dims(offs_mo.to(gl.int64) * out_row, 1) + gl.expand_dims(offs_d, 0)
    gl.store(ptrs, out.to(OUT.dtype.element_ty), mask=gl.expand_dims(offs_mo < n_queries, 1))
    lam_q = gl.load(LAM + pos_q, mask=m_ok, other=0.0)
    lse = (m_i + gl.log2(l_i)) * LN2 + (lam_q - lam_ref)
    gl.store(LSE + offs_m, lse, mask=m_ok)


@gluon.jit(do_not_specialize=["out_row", "n_queries", "n_keys"])
def _gluon_fwd_kernel(q_desc, k_desc, v_desc, lam_desc, LAM, OUT, LSE, START, DOC,
                lam_str, out_str, lse_str, start_str, doc_str, out_row,
                n_heads, group, n_queries, n_keys, qk_scale,
                HEAD_DIM: gl.constexpr, BLOCK_N: gl.constexpr, STAGES: gl.constexpr,
                HAS_DOC: gl.constexpr):
    """OUT and LSE of one (b, query head, block of 128 queries); q, k and v through the tensor
    descriptors q_desc (B, Hq, M, D) in blocks [1, 1, 64, D], k_desc and v_desc (B, Hk, N, D)
    in blocks [1, 1, BLOCK_N, D]. LAM, OUT, LSE and DOC have unit strides along time (and
    OUT along the head dim); out_row = OUT's stride along time, given again apart from out_str
    so that the partitions get it as a value (a stride of 1 would arrive as a constant, which
    warp_specialize cannot pass on)."""
    BLOCK_M: gl.constexpr = 2 * HALF_M
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    pid = gl.program_id(0)
    pid_m = m_blocks - 1 - pid % m_blocks         # heavy (late) blocks first
    pid_bh = pid // m_blocks
    b = (pid_bh // n_heads).to(gl.int64)
    h = (pid_bh % n_heads).to(gl.int64)
    hk = h // group
    LAM += b * lam_str[0] + h * lam_str[1]
    OUT += b * out_str[0] + h * out_str[1]
    LSE += b * lse_str[0] + h * lse_str[1]
    START += b * start_str[0] + h * start_str[1]
    DOC += b * doc_str[0]

    row0 = pid_m * BLOCK_M
    pos0 = n_keys - n_queries + row0
    lo = gl.load(START + pid_m * start_str[2]) * BLOCK_N
    mid = lo + ((pos0 + 1 - lo) // BLOCK_N) * BLOCK_N   # tiles before mid need no mask
    hi = gl.minimum(pos0 + BLOCK_M, n_keys)
    n_tiles = (hi - lo + BLOCK_N - 1) // BLOCK_N

    dtype: gl.constexpr = q_desc.dtype
    q_smem = gl.allocate_shared_memory(dtype, [2, HALF_M, HEAD_DIM],
                                       gl.NVMMASharedLayout.get_default_for([HALF_M, HEAD_DIM],
                                                                            dtype))
    kv_layout: gl.constexpr = gl.NVMMASharedLayout.get_default_for([BLOCK_N, HEAD_DIM], dtype)
    k_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    v_smem = gl.allocate_shared_memory(dtype, [STAGES, BLOCK_N, HEAD_DIM], kv_layout)
    lam_smem = gl.allocate_shared_memory(gl.float32, [STAGES, 1, BLOCK_N], lam_desc.layout)
    bar_layout: gl.constexpr = mbarrier.MBarrierLayout()
    q_ready = gl.allocate_shared_memory(gl.int64, [2, 1], bar_layout)
    k_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    v_ready = gl.allocate_shared_memory(gl.int64, [STAGES, 1], bar_layout)
    kv_free = gl.allocate_shared_memory(gl.int64, [2 * STAGES, 1], bar_layout)
    for i in gl.static_range(2):
        mbarrier.init(q_ready.index(i), count=1)
    for i in gl.static_range(STAGES):
        mbarrier.init(k_ready.index(i), count=1)
        mbarrier.init(v_ready.index(i), count=1)
        mbarrier.init(kv_free.index(i), count=2)
        mbarrier.init(kv_free.index(STAGES + i), count=2)
    fence_async_shared()

    b32, h32, hk32 = b.to(gl.int32), h.to(gl.int32), hk.to(gl.int32)
    gl.warp_specialize([
        (_consumer, (q_smem, k_smem, v_smem, lam_smem, q_ready, k_ready, v_ready, kv_free,
                     LAM, OUT, LSE, DOC, out_row, row0, lo, mid, n_tiles, n_queries, n_keys,
                     qk_scale, FIRST_HALF, HEAD_DIM, BLOCK_N, STAGES, HAS_DOC)),
        (_consumer, (q_smem, k_smem, v_smem, lam_smem, q_ready, k_ready, v_ready, kv_free,
                     LAM, OUT, LSE, DOC, out_row, row0, lo, mid, n_tiles, n_queries, n_keys,
                     qk_scale, SECOND_HALF, HEAD_DIM, BLOCK_N, STAGES, HAS_DOC)),
        (_loader, (q_desc, k_desc, v_desc, lam_desc, q_smem, k_smem, v_smem, lam_smem, q_ready,
                   k_ready, v_ready, kv_free, b32, h32, hk32, (b * n_heads + h).to(gl.int32),
                   row0, lo, n_tiles, BLOCK_N, STAGES)),
    ], [4, 1], [232, 24])
