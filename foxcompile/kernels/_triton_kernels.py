"""Triton kernels of forgetting attention with Adaptive Computation Pruning.

Imported only by triton_attention.py, which loads this file twice where needed: once compiled
(CUDA) and once under TRITON_INTERPRET=1 (CPU tensors), because Triton decides between the two
when a function is decorated.

Notation (plan.py): query row i sits at absolute position P + i, P = N - M; key j is visible iff
j <= P + i; the score is scale q_i.k_j + lam[P+i] - lam[j]. Everything runs in the exp2 domain:
s2 = qk * (scale log2 e) + (lam_ref - lam_j) log2 e, with lam_ref the lam of a row or key near the
program's own block, so the gate's large absolute values cancel before they meet the scores
(precision as good as computing lam[P+i] - lam[j] directly). The row's own lam enters only the
log-normaliser (a per-row constant does not change a softmax).

Tiles: the pruning grid is GRID_M queries x GRID_N keys (plan.tile_sizes). Forward and dq walk a
query block (BLOCK_M divides GRID_M) over key steps of BLOCK_N (divides GRID_N) from the block's
first computed key block START[m] * GRID_N; dkdv walks a key block (BLOCK_N divides GRID_N) over
query steps of BLOCK_M (divides GRID_M) up to END[n] * GRID_M rows. Steps that cross the causal
diagonal or an edge take the masked path; all others load and compute with no masks at all.

Loads (TMA, a constexpr per launch): the streamed tiles come either through TMA tensor
descriptors (zeros past the edges, no per-element addresses; Hopper) or through pointers.

Packed sequences (HAS_DOC): DOC holds a document id per key position (B, N); key j is visible to
query i only when DOC[P+i] == DOC[j] too. Every step applies that equality mask (START / END
already leave out the tiles that hold only earlier documents), and the forward keeps a row that
has seen no key of its document yet at m = -inf without computing -inf - (-inf).
"""
import triton
import triton.language as tl
# The standard library's own combine functions: tl.max / tl.sum are themselves @jit functions,
# decorated when triton is imported, so under the interpreter they only work if triton was
# imported with TRITON_INTERPRET=1. tl.reduce with these combiners works in both modes (the
# interpreter recognises them and reduces with numpy) and compiles to exactly tl.max / tl.sum.
from triton.language.standard import _elementwise_max, _sum_combine

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


@triton.jit
def _max_rows(x):
    return tl.reduce(x, 1, _elementwise_max)


@triton.jit
def _sum_rows(x):
    return tl.reduce(x, 1, _sum_combine)


@triton.jit
def _load(ptrs, row_ok, col_ok, ROW_MASK: tl.constexpr, COL_MASK: tl.constexpr):
    """Load a tile, masking (with zeros) only along the dimensions that need it."""
    if ROW_MASK:
        if COL_MASK:
            x = tl.load(ptrs, mask=row_ok & col_ok, other=0.0)
        else:
            x = tl.load(ptrs, mask=row_ok, other=0.0)
    else:
        if COL_MASK:
            x = tl.load(ptrs, mask=col_ok, other=0.0)
        else:
            x = tl.load(ptrs)
    return x


@triton.jit
def _key_tile(X, XD, b32, hk32, start, offs_n, n_ok, offs_d, d_ok, stride_n, stride_d,
              BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr,
              D_MASK: tl.constexpr, TMA: tl.constexpr, TRANSPOSE: tl.constexpr):
    """Keys [start, start + BLOCK_N) of k or v: a (BLOCK_N, D_PAD) tile, (D_PAD, BLOCK_N) with
    TRANSPOSE, zeros past the edges. TMA: through the descriptor XD at (b, kv head); else through
    X, already offset to (b, kv head)."""
    if TMA:
        x = XD.load([b32, hk32, start, 0]).reshape([BLOCK_N, D_PAD])
        if TRANSPOSE:
            x = tl.trans(x)
    elif TRANSPOSE:
        x = _load(X + offs_n[None, :] * stride_n + offs_d[:, None] * stride_d,
                  n_ok[None, :], d_ok[:, None], MASKED, D_MASK)
    else:
        x = _load(X + offs_n[:, None] * stride_n + offs_d[None, :] * stride_d,
                  n_ok[:, None], d_ok[None, :], MASKED, D_MASK)
    return x


@triton.jit
def _key_lams(LAM, LD, b32, h32, start, offs_n, n_ok, stride_ln, BLOCK_N: tl.constexpr,
              MASKED: tl.constexpr, TMA: tl.constexpr):
    """lam of keys [start, start + BLOCK_N) (zeros past the edge)."""
    if TMA:
        lam_k = LD.load([b32, h32, start]).reshape([BLOCK_N])
    elif MASKED:
        lam_k = tl.load(LAM + offs_n * stride_ln, mask=n_ok, other=0.0)
    else:
        lam_k = tl.load(LAM + offs_n * stride_ln)
    return lam_k


@triton.jit
def _fwd_steps(acc, l_i, m_i, q, K, V, LAM, stride_kn, stride_kd, stride_vn, stride_vd, stride_ln,
               lam_ref, qk_scale, pos_q, lo, hi, n_keys, offs_d, d_ok, DOC, stride_dn, doc_q,
               KD, VD, LD, b32, hk32, h32,
               BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr,
               D_MASK: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
               HAS_DOC: tl.constexpr, TMA: tl.constexpr):
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        kt = _key_tile(K, KD, b32, hk32, start, offs_n, n_ok, offs_d, d_ok, stride_kn, stride_kd,
                       BLOCK_N, D_PAD, MASKED, D_MASK, TMA, True)
        lam_k = _key_lams(LAM, LD, b32, h32, start, offs_n, n_ok, stride_ln, BLOCK_N, MASKED, TMA)
        if CAST_F32:
            kt = kt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale + ((lam_ref - lam_k) * LOG2E)[None, :]
        if MASKED:
            s = tl.where(offs_n[None, :] <= pos_q[:, None], s, float("-inf"))
        if HAS_DOC:
            doc_k = tl.load(DOC + offs_n * stride_dn, mask=n_ok, other=-1)
            s = tl.where(doc_q[:, None] == doc_k[None, :], s, float("-inf"))
        m_new = tl.maximum(m_i, _max_rows(s))
        m_ref = m_new
        if HAS_DOC:  # a row with no key of its document so far: alpha = p = 0, not NaN
            m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp2(m_i - m_ref)
        p = tl.exp2(s - m_ref[:, None])
        l_i = l_i * alpha + _sum_rows(p)
        v = _key_tile(V, VD, b32, hk32, start, offs_n, n_ok, offs_d, d_ok, stride_vn, stride_vd,
                      BLOCK_N, D_PAD, MASKED, D_MASK, TMA, False)
        if CAST_F32:
            v = v.to(tl.float32)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, LAM, OUT, LSE, START, DOC, KD, VD, LD,
                stride_qb, stride_qh, stride_qm, stride_qd,
                stride_kb, stride_kh, stride_kn, stride_kd,
                stride_vb, stride_vh, stride_vn, stride_vd,
                stride_lb, stride_lh, stride_ln,
                stride_ob, stride_oh, stride_om, stride_od,
                stride_eb, stride_eh, stride_em,
                stride_sb, stride_sh, stride_sm,
                stride_db, stride_dn,
                n_heads, group, n_queries, n_keys, qk_scale,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                GRID_M: tl.constexpr, GRID_N: tl.constexpr,
                CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
                TMA: tl.constexpr):
    """OUT and LSE of one (b, query head, block of BLOCK_M queries). TMA: k, v and lam are read
    through the tensor descriptors KD, VD ((B, Hk, N, D), blocks [1, 1, BLOCK_N, D_PAD]) and LD
    ((B, Hq, N), blocks [1, 1, BLOCK_N]), zeros past the edges; otherwise through pointers."""
    # One flat grid (no 65535 limit on B * H); within a head the heavy (late) query blocks,
    # which have the most key blocks under the causal mask, start first.
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    pid = tl.program_id(0)
    pid_m = m_blocks - 1 - pid % m_blocks
    pid_bh = pid // m_blocks
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    hk = h // group
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    LAM += b * stride_lb + h * stride_lh
    OUT += b * stride_ob + h * stride_oh
    LSE += b * stride_eb + h * stride_eh
    START += b * stride_sb + h * stride_sh

    D_MASK: tl.constexpr = HEAD_DIM != D_PAD
    offset = n_keys - n_queries
    row0 = pid_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    m_ok = offs_m < n_queries
    d_ok = offs_d < HEAD_DIM
    pos_q = offset + offs_m
    pos0 = offset + row0

    q = _load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
              m_ok[:, None], d_ok[None, :], True, D_MASK)
    if CAST_F32:
        q = q.to(tl.float32)
    lam_ref = tl.load(LAM + pos0 * stride_ln)
    lam_q = tl.load(LAM + pos_q * stride_ln, mask=m_ok, other=0.0)
    DOC += b * stride_db
    doc_q = tl.load(DOC + pos_q * stride_dn, mask=m_ok, other=-1) if HAS_DOC else 0

    # Key blocks [0, START) are pruned; START never passes the block of the first row's diagonal.
    lo = tl.load(START + (row0 // GRID_M) * stride_sm) * GRID_N
    mid = lo + ((pos0 + 1 - lo) // BLOCK_N) * BLOCK_N   # steps entirely left of the diagonal
    hi = tl.minimum(pos0 + BLOCK_M, n_keys)             # one past the last row's last key

    b32, hk32, h32 = b.to(tl.int32), hk.to(tl.int32), h.to(tl.int32)   # descriptor indices
    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, D_PAD], 0.0, dtype=tl.float32)
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, q, K, V, LAM, stride_kn, stride_kd, stride_vn,
                               stride_vd, stride_ln, lam_ref, qk_scale, pos_q, lo, mid, n_keys,
                               offs_d, d_ok, DOC, stride_dn, doc_q, KD, VD, LD, b32, hk32, h32,
                               BLOCK_N, D_PAD, False, D_MASK, CAST_F32, DOT_PREC, HAS_DOC, TMA)
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, q, K, V, LAM, stride_kn, stride_kd, stride_vn,
                               stride_vd, stride_ln, lam_ref, qk_scale, pos_q, mid, hi, n_keys,
                               offs_d, d_ok, DOC, stride_dn, doc_q, KD, VD, LD, b32, hk32, h32,
                               BLOCK_N, D_PAD, True, D_MASK, CAST_F32, DOT_PREC, HAS_DOC, TMA)

    out = acc / l_i[:, None]
    tl.store(OUT + offs_m[:, None] * stride_om + offs_d[None, :] * stride_od,
             out.to(OUT.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    lse = (m_i + tl.log2(l_i)) * LN2 + (lam_q - lam_ref)
    tl.store(LSE + offs_m * stride_em, lse, mask=m_ok)


@triton.jit
def _row_dot_kernel(OUT, DO, DELTA,
                    stride_ob, stride_oh, stride_om, stride_od,
                    stride_gb, stride_gh, stride_gm, stride_gd,
                    n_heads, n_queries,
                    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr):
    """DELTA[b, h, i] = sum_d dO * O, float32, contiguous (B, H, M)."""
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    pid = tl.program_id(0)
    pid_m = pid % m_blocks
    pid_bh = pid // m_blocks
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    mask = (offs_m < n_queries)[:, None] & (offs_d < HEAD_DIM)[None, :]
    o = tl.load(OUT + b * stride_ob + h * stride_oh + offs_m[:, None] * stride_om
                + offs_d[None, :] * stride_od, mask=mask, other=0.0)
    do = tl.load(DO + b * stride_gb + h * stride_gh + offs_m[:, None] * stride_gm
                 + offs_d[None, :] * stride_gd, mask=mask, other=0.0)
    delta = _sum_rows(o.to(tl.float32) * do.to(tl.float32))
    tl.store(DELTA + pid_bh.to(tl.int64) * n_queries + offs_m, delta, mask=offs_m < n_queries)


@triton.jit
def _dq_steps(dq, ds_rows, q, do, a_row, delta, K, V, LAM, stride_kn, stride_kd, stride_vn, stride_vd,
              stride_ln, lam_ref, qk_scale, pos_q, lo, hi, n_keys, offs_d, d_ok, DOC, stride_dn,
              doc_q, KD, VD, LD, b32, hk32, h32,
              BLOCK_N: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr,
              D_MASK: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
              HAS_DOC: tl.constexpr, TMA: tl.constexpr):
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        kt = _key_tile(K, KD, b32, hk32, start, offs_n, n_ok, offs_d, d_ok, stride_kn, stride_kd,
                       BLOCK_N, D_PAD, MASKED, D_MASK, TMA, True)
        vt = _key_tile(V, VD, b32, hk32, start, offs_n, n_ok, offs_d, d_ok, stride_vn, stride_vd,
                       BLOCK_N, D_PAD, MASKED, D_MASK, TMA, True)
        lam_k = _key_lams(LAM, LD, b32, h32, start, offs_n, n_ok, stride_ln, BLOCK_N, MASKED, TMA)
        if CAST_F32:
            kt = kt.to(tl.float32)
            vt = vt.to(tl.float32)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale + a_row[:, None]
        s = s + ((lam_ref - lam_k) * LOG2E)[None, :]
        if MASKED:
            s = tl.where(offs_n[None, :] <= pos_q[:, None], s, float("-inf"))
        if HAS_DOC:
            doc_k = tl.load(DOC + offs_n * stride_dn, mask=n_ok, other=-1)
            s = tl.where(doc_q[:, None] == doc_k[None, :], s, float("-inf"))
        p = tl.exp2(s)
        dp = tl.dot(do, vt, input_precision=DOT_PREC)
        ds = p * (dp - delta[:, None])
        ds_rows += _sum_rows(ds)
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PREC)
    return dq, ds_rows


@triton.jit
def _dq_kernel(Q, K, V, LAM, DO, LSE, DELTA, DQ, DLAM_ROW, START, DOC, KD, VD, LD,
               stride_qb, stride_qh, stride_qm, stride_qd,
               stride_kb, stride_kh, stride_kn, stride_kd,
               stride_vb, stride_vh, stride_vn, stride_vd,
               stride_lb, stride_lh, stride_ln,
               stride_gb, stride_gh, stride_gm, stride_gd,
               stride_eb, stride_eh, stride_em,
               stride_xb, stride_xh, stride_xm, stride_xd,
               stride_rb, stride_rh, stride_rn,
               stride_sb, stride_sh, stride_sm,
               stride_db, stride_dn,
               n_heads, group, n_queries, n_keys, qk_scale, scale,
               HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               GRID_M: tl.constexpr, GRID_N: tl.constexpr,
               CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
               TMA: tl.constexpr):
    """dq and the dS row sums of one (b, query head, block of BLOCK_M queries). TMA: k, v and
    lam through descriptors, as in _fwd_kernel."""
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    pid = tl.program_id(0)
    pid_m = m_blocks - 1 - pid % m_blocks
    pid_bh = pid // m_blocks
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    hk = h // group
    Q += b * stride_qb + h * stride_qh
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    LAM += b * stride_lb + h * stride_lh
    DO += b * stride_gb + h * stride_gh
    LSE += b * stride_eb + h * stride_eh
    DELTA += pid_bh.to(tl.int64) * n_queries
    DQ += b * stride_xb + h * stride_xh
    DLAM_ROW += b * stride_rb + h * stride_rh
    START += b * stride_sb + h * stride_sh

    D_MASK: tl.constexpr = HEAD_DIM != D_PAD
    offset = n_keys - n_queries
    row0 = pid_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D_PAD)
    m_ok = offs_m < n_queries
    d_ok = offs_d < HEAD_DIM
    pos_q = offset + offs_m
    pos0 = offset + row0

    q = _load(Q + offs_m[:, None] * stride_qm + offs_d[None, :] * stride_qd,
              m_ok[:, None], d_ok[None, :], True, D_MASK)
    do = _load(DO + offs_m[:, None] * stride_gm + offs_d[None, :] * stride_gd,
               m_ok[:, None], d_ok[None, :], True, D_MASK)
    if CAST_F32:
        q = q.to(tl.float32)
        do = do.to(tl.float32)
    lam_ref = tl.load(LAM + pos0 * stride_ln)
    lam_q = tl.load(LAM + pos_q * stride_ln, mask=m_ok, other=0.0)
    lse = tl.load(LSE + offs_m * stride_em, mask=m_ok, other=float("inf"))
    delta = tl.load(DELTA + offs_m, mask=m_ok, other=0.0)
    DOC += b * stride_db
    doc_q = tl.load(DOC + pos_q * stride_dn, mask=m_ok, other=-1) if HAS_DOC else 0
    # p = exp2(qk * qk_scale + a_row + (lam_ref - lam_k) log2 e); padded rows get p = 0.
    a_row = (lam_q - lam_ref - lse) * LOG2E

    lo = tl.load(START + (row0 // GRID_M) * stride_sm) * GRID_N
    mid = lo + ((pos0 + 1 - lo) // BLOCK_N) * BLOCK_N
    hi = tl.minimum(pos0 + BLOCK_M, n_keys)

    b32, hk32, h32 = b.to(tl.int32), hk.to(tl.int32), h.to(tl.int32)   # descriptor indices
    dq = tl.full([BLOCK_M, D_PAD], 0.0, dtype=tl.float32)
    ds_rows = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    dq, ds_rows = _dq_steps(dq, ds_rows, q, do, a_row, delta, K, V, LAM, stride_kn, stride_kd,
                            stride_vn, stride_vd, stride_ln, lam_ref, qk_scale, pos_q, lo, mid,
                            n_keys, offs_d, d_ok, DOC, stride_dn, doc_q, KD, VD, LD, b32, hk32, h32,
                            BLOCK_N, D_PAD, False, D_MASK, CAST_F32, DOT_PREC, HAS_DOC, TMA)
    dq, ds_rows = _dq_steps(dq, ds_rows, q, do, a_row, delta, K, V, LAM, stride_kn, stride_kd,
                            stride_vn, stride_vd, stride_ln, lam_ref, qk_scale, pos_q, mid, hi,
                            n_keys, offs_d, d_ok, DOC, stride_dn, doc_q, KD, VD, LD, b32, hk32, h32,
                            BLOCK_N, D_PAD, True, D_MASK, CAST_F32, DOT_PREC, HAS_DOC, TMA)
    dq = dq * scale
    tl.store(DQ + offs_m[:, None] * stride_xm + offs_d[None, :] * stride_xd,
             dq.to(DQ.dtype.element_ty), mask=m_ok[:, None] & d_ok[None, :])
    # Row sums of dS: analytically zero, but adding them to dlam (at the query's own position)
    # makes sum_t dlam_t cancel exactly, so the gates' gradient (a reverse cumsum of dlam) does
    # not accumulate the rounding of dS over the sequence.
    tl.store(DLAM_ROW + pos_q * stride_rn, ds_rows, mask=m_ok)


@triton.jit
def _row_stats(LSE, DELTA, LAM, offs_m, pos_q, m_ok, stride_em, stride_ln, ROW_MASK: tl.constexpr):
    """lse, delta and lam of a step's query rows through pointers (padded rows: lse = +inf)."""
    if ROW_MASK:
        lse = tl.load(LSE + offs_m * stride_em, mask=m_ok, other=float("inf"))
        delta = tl.load(DELTA + offs_m, mask=m_ok, other=0.0)
        lam_q = tl.load(LAM + pos_q * stride_ln, mask=m_ok, other=0.0)
    else:
        lse = tl.load(LSE + offs_m * stride_em)
        delta = tl.load(DELTA + offs_m)
        lam_q = tl.load(LAM + pos_q * stride_ln)
    return lse, delta, lam_q


@triton.jit
def _dkdv_steps(dk, dv, colsum, k, v, Q, DO, LAM, LSE, DELTA,
                stride_qm, stride_qd, stride_gm, stride_gd, stride_ln, stride_em,
                lam_ref, b_key, qk_scale, offs_n, offset, lo, hi, n_queries, offs_d, d_ok,
                DOC, stride_dn, doc_k, QD, GD, LD, ED, XD, b32, h32,
                BLOCK_M: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr,
                ROW_MASK: tl.constexpr, D_MASK: tl.constexpr, CAST_F32: tl.constexpr,
                DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr, TMA: tl.constexpr):
    for start in range(lo, hi, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < n_queries
        pos_q = offset + offs_m
        if TMA:  # zeros past the edges; a padded row's lse must be +inf (p = 0), not 0
            qt = tl.trans(QD.load([b32, h32, start, 0]).reshape([BLOCK_M, D_PAD]))
            do = GD.load([b32, h32, start, 0]).reshape([BLOCK_M, D_PAD])
            lse = ED.load([b32, h32, start]).reshape([BLOCK_M])
            delta = XD.load([b32, h32, start]).reshape([BLOCK_M])
            lam_q = LD.load([b32, h32, offset + start]).reshape([BLOCK_M])
            if ROW_MASK:
                lse = tl.where(m_ok, lse, float("inf"))
        else:
            qt = _load(Q + offs_m[None, :] * stride_qm + offs_d[:, None] * stride_qd,
                       m_ok[None, :], d_ok[:, None], ROW_MASK, D_MASK)
            do = _load(DO + offs_m[:, None] * stride_gm + offs_d[None, :] * stride_gd,
                       m_ok[:, None], d_ok[None, :], ROW_MASK, D_MASK)
            lse, delta, lam_q = _row_stats(LSE, DELTA, LAM, offs_m, pos_q, m_ok, stride_em,
                                           stride_ln, ROW_MASK)
        if CAST_F32:
            qt = qt.to(tl.float32)
            do = do.to(tl.float32)
        a_row = (lam_q - lam_ref - lse) * LOG2E
        st = tl.dot(k, qt, input_precision=DOT_PREC) * qk_scale + b_key[:, None]
        st = st + a_row[None, :]
        if MASKED:
            st = tl.where(offs_n[:, None] <= pos_q[None, :], st, float("-inf"))
        if HAS_DOC:
            doc_q = tl.load(DOC + pos_q * stride_dn, mask=m_ok, other=-1)
            st = tl.where(doc_k[:, None] == doc_q[None, :], st, float("-inf"))
        pt = tl.exp2(st)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dst = pt * (dpt - delta[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PREC)
        colsum += _sum_rows(dst)
    return dk, dv, colsum


@triton.jit
def _dkdv_kernel(Q, K, V, LAM, DO, LSE, DELTA, DK, DV, DLAM, END, DOC, QD, GD, LD, ED, XD,
                 stride_qb, stride_qh, stride_qm, stride_qd,
                 stride_kb, stride_kh, stride_kn, stride_kd,
                 stride_vb, stride_vh, stride_vn, stride_vd,
                 stride_lb, stride_lh, stride_ln,
                 stride_gb, stride_gh, stride_gm, stride_gd,
                 stride_eb, stride_eh, stride_em,
                 stride_ykb, stride_ykh, stride_ykn, stride_ykd,
                 stride_yvb, stride_yvh, stride_yvn, stride_yvd,
                 stride_zb, stride_zh, stride_zn,
                 stride_nb, stride_nh, stride_nn,
                 stride_db, stride_dn,
                 n_kv_heads, group, n_queries, n_keys, qk_scale, scale,
                 HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                 GRID_M: tl.constexpr, GRID_N: tl.constexpr, ROW_EDGE: tl.constexpr,
                 CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
                 TMA: tl.constexpr):
    """dk, dv of one (b, kv head, block of BLOCK_N keys), summed over the group's query heads,
    and the dS column sums of each of them. TMA: the streamed q, dO, lam, lse and delta come
    through the descriptors QD, GD ((B, Hq, M, D), blocks [1, 1, BLOCK_M, D_PAD]), LD (lam),
    ED (lse) and XD (delta) ((B, Hq, .), blocks [1, 1, BLOCK_M]); otherwise through pointers."""
    # Key block 0 sees every query: launch in key order, heavy first.
    n_blocks = (n_keys + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_n = pid % n_blocks
    pid_bh = pid // n_blocks
    b = (pid_bh // n_kv_heads).to(tl.int64)
    hk = (pid_bh % n_kv_heads).to(tl.int64)
    K += b * stride_kb + hk * stride_kh
    V += b * stride_vb + hk * stride_vh
    DK += b * stride_ykb + hk * stride_ykh
    DV += b * stride_yvb + hk * stride_yvh

    D_MASK: tl.constexpr = HEAD_DIM != D_PAD
    offset = n_keys - n_queries
    key0 = pid_n * BLOCK_N
    offs_n = key0 + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D_PAD)
    n_ok = offs_n < n_keys
    d_ok = offs_d < HEAD_DIM
    k = _load(K + offs_n[:, None] * stride_kn + offs_d[None, :] * stride_kd,
              n_ok[:, None], d_ok[None, :], True, D_MASK)
    v = _load(V + offs_n[:, None] * stride_vn + offs_d[None, :] * stride_vd,
              n_ok[:, None], d_ok[None, :], True, D_MASK)
    if CAST_F32:
        k = k.to(tl.float32)
        v = v.to(tl.float32)
    DOC += b * stride_db
    doc_k = tl.load(DOC + offs_n * stride_dn, mask=n_ok, other=-1) if HAS_DOC else 0

    # Query steps: [lo, mid) cross the diagonal (masked), [mid, END * GRID_M) see the whole block.
    lo = (tl.maximum(key0 - offset, 0) // BLOCK_M) * BLOCK_M
    full = tl.maximum(key0 + BLOCK_N - 1 - offset, 0)
    mid = tl.maximum(((full + BLOCK_M - 1) // BLOCK_M) * BLOCK_M, lo)
    key_grid = key0 // GRID_N

    dk = tl.full([BLOCK_N, D_PAD], 0.0, dtype=tl.float32)
    dv = tl.full([BLOCK_N, D_PAD], 0.0, dtype=tl.float32)
    for g in range(0, group):
        h = hk * group + g
        b32, h32 = b.to(tl.int32), h.to(tl.int32)   # descriptor indices
        Qh = Q + b * stride_qb + h * stride_qh
        DOh = DO + b * stride_gb + h * stride_gh
        LAMh = LAM + b * stride_lb + h * stride_lh
        LSEh = LSE + b * stride_eb + h * stride_eh
        DELTAh = DELTA + (b * (n_kv_heads * group) + h) * n_queries
        end = tl.load(END + b * stride_nb + h * stride_nh + key_grid * stride_nn)
        hi = tl.minimum(end * GRID_M, n_queries)
        lam_ref = tl.load(LAMh + key0 * stride_ln)
        lam_k = tl.load(LAMh + offs_n * stride_ln, mask=n_ok, other=0.0)
        b_key = (lam_ref - lam_k) * LOG2E
        colsum = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
        dk, dv, colsum = _dkdv_steps(dk, dv, colsum, k, v, Qh, DOh, LAMh, LSEh, DELTAh,
                                     stride_qm, stride_qd, stride_gm, stride_gd, stride_ln,
                                     stride_em, lam_ref, b_key, qk_scale, offs_n, offset,
                                     lo, tl.minimum(mid, hi), n_queries, offs_d, d_ok,
                                     DOC, stride_dn, doc_k, QD, GD, LD, ED, XD, b32, h32,
                                     BLOCK_M, D_PAD, True, True, D_MASK, CAST_F32, DOT_PREC,
                                     HAS_DOC, TMA)
        dk, dv, colsum = _dkdv_steps(dk, dv, colsum, k, v, Qh, DOh, LAMh, LSEh, DELTAh,
                                     stride_qm, stride_qd, stride_gm, stride_gd, stride_ln,
                                     stride_em, lam_ref, b_key, qk_scale, offs_n, offset,
                                     mid, hi, n_queries, offs_d, d_ok, DOC, stride_dn, doc_k,
                                     QD, GD, LD, ED, XD, b32, h32,
                                     BLOCK_M, D_PAD, False, ROW_EDGE, D_MASK, CAST_F32, DOT_PREC,
                                     HAS_DOC, TMA)
        tl.store(DLAM + b * stride_zb + h * stride_zh + offs_n * stride_zn, -colsum, mask=n_ok)

    dk = dk * scale
    tl.store(DK + offs_n[:, None] * stride_ykn + offs_d[None, :] * stride_ykd,
             dk.to(DK.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])
    tl.store(DV + offs_n[:, None] * stride_yvn + offs_d[None, :] * stride_yvd,
             dv.to(DV.dtype.element_ty), mask=n_ok[:, None] & d_ok[None, :])


@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _max_norm_kernel(X, PARTIAL, stride_b, stride_h, stride_t, stride_d, n_heads, n_rows, n_tiles,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """PARTIAL[bh, tile] = max over the tile's rows of ||x_row|| (float32; NaN and inf kept)."""
    pid = tl.program_id(0)
    tile = pid % n_tiles
    bh = pid // n_tiles
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, D_PAD)
    x = tl.load(X + b * stride_b + h * stride_h + rows[:, None] * stride_t + cols[None, :] * stride_d,
                mask=(rows < n_rows)[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
    x = x.to(tl.float32)
    norm = tl.sqrt(_sum_rows(x * x))
    tl.store(PARTIAL + pid.to(tl.int64), tl.reduce(norm, 0, _max_nan))
