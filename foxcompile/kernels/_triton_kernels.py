"""Triton kernels of forgetting attention with Adaptive Computation Pruning.

Imported (lazily) by triton_attention.py, which launches them: compiled for CUDA tensors, through
Triton's interpreter for CPU tensors (triton_attention._kernels).

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

Arguments: every tensor comes as its pointer (upper case) and its strides as one tuple
(`q_str` = q.stride(): batch, head, then time and, for (B, H, T, D) tensors, the head dim;
document ids (B, N): batch, position). Triton specialises each element of the tuple as it does a
scalar argument (a stride of 1 becomes a constant, one divisible by 16 is marked so), so a tuple
compiles as the separate strides did. The exception is DO_O, the backward's own contiguous
(B, Hq, M) float32 buffer, indexed as such.

Loads (TMA, a constexpr per launch): the streamed tiles come either through TMA tensor
descriptors (the *_D arguments, None without TMA; zeros past the edges, no per-element
addresses; Hopper) or through pointers. A streamed tensor travels as a "source", the tuple
(pointer at (b, h), strides, descriptor or None, b and h as int32); the step helpers read tiles
(_step_tile) and rows (_step_row) from sources, either way. (Sources are built where they are
used: Triton 3.6 cannot return a tuple that holds None or a constant from a @jit function.)

Packed sequences (HAS_DOC): DOC holds a document id per key position; key j is visible to
query i only when DOC[P+i] == DOC[j] too. Every step applies that equality mask (START / END
already leave out the tiles that hold only earlier documents), and the forward keeps a row that
has seen no key of its document yet at m = -inf without computing -inf - (-inf).

Decode (decode.py, the last section): few queries (M x G rows per kv head, M <= GRID_M) against
a long key range, split over programs (split-K, flash-decoding) and combined by a second kernel.

Names: `do_o` is the backward's row sum of dO * O (FlashAttention's D or delta); `delta` is
reserved for ACP's pruning threshold (plan.py) and appears nowhere here.
"""
import triton
import triton.language as tl
# The standard library's own combine functions: tl.max / tl.sum are themselves @jit functions,
# decorated when triton is imported, so under the interpreter they only work if triton was
# imported with TRITON_INTERPRET=1. tl.reduce with these combiners works in both modes (the
# interpreter recognises them and reduces with numpy) and compiles to exactly tl.max / tl.sum.
from triton.language.standard import _elementwise_max, _elementwise_min, _sum_combine

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)


# ----------------------------------------------------------------------------- small helpers

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
def _at(X, strides, b, h):
    """X offset to batch b, head h (int64 offsets)."""
    return X + b * strides[0] + h * strides[1]


@triton.jit
def _tile(X, strides, offs, ok, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
          ROW_MASK: tl.constexpr, TRANSPOSE: tl.constexpr, CAST_F32: tl.constexpr):
    """Rows offs of a (B, H, T, D) tensor, X at (b, h), through pointers: a (rows, D_PAD) tile,
    (D_PAD, rows) with TRANSPOSE; zeros past HEAD_DIM and, with ROW_MASK, where not ok."""
    offs_d = tl.arange(0, D_PAD)
    d_ok = offs_d < HEAD_DIM
    if TRANSPOSE:
        x = _load(X + offs[None, :] * strides[2] + offs_d[:, None] * strides[3],
                  ok[None, :], d_ok[:, None], ROW_MASK, HEAD_DIM != D_PAD)
    else:
        x = _load(X + offs[:, None] * strides[2] + offs_d[None, :] * strides[3],
                  ok[:, None], d_ok[None, :], ROW_MASK, HEAD_DIM != D_PAD)
    if CAST_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _store_tile(X, strides, offs, ok, x, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr):
    """Store the (rows, D_PAD) tile x at rows offs of a (B, H, T, D) tensor, X at (b, h), in its
    dtype; only the rows that are ok and the first HEAD_DIM columns."""
    offs_d = tl.arange(0, D_PAD)
    tl.store(X + offs[:, None] * strides[2] + offs_d[None, :] * strides[3],
             x.to(X.dtype.element_ty), mask=ok[:, None] & (offs_d < HEAD_DIM)[None, :])


@triton.jit
def _step_tile(src, start, offs, ok, BLOCK: tl.constexpr, HEAD_DIM: tl.constexpr,
               D_PAD: tl.constexpr, MASKED: tl.constexpr, TRANSPOSE: tl.constexpr,
               TMA: tl.constexpr, CAST_F32: tl.constexpr):
    """Rows [start, start + BLOCK) (offs; ok: which exist) of a streamed (B, H, T, D) source:
    a (BLOCK, D_PAD) tile, (D_PAD, BLOCK) with TRANSPOSE, zeros past the edges (through the
    descriptor with TMA, else through pointers, masking the rows only when MASKED)."""
    X, strides, XD, b32, h32 = src
    if TMA:
        x = XD.load([b32, h32, start, 0]).reshape([BLOCK, D_PAD])
        if TRANSPOSE:
            x = tl.trans(x)
        if CAST_F32:
            x = x.to(tl.float32)
    else:
        x = _tile(X, strides, offs, ok, HEAD_DIM, D_PAD, MASKED, TRANSPOSE, CAST_F32)
    return x


@triton.jit
def _step_row(src, start, offs, ok, other, BLOCK: tl.constexpr, MASKED: tl.constexpr,
              TMA: tl.constexpr):
    """Entries [start, start + BLOCK) (at offs; ok: which exist) of a streamed (B, H, T) source:
    through the descriptor with TMA (zeros past the edge), else through pointers (`other`
    where not ok when MASKED)."""
    X, strides, XD, b32, h32 = src
    if TMA:
        x = XD.load([b32, h32, start]).reshape([BLOCK])
    elif MASKED:
        x = tl.load(X + offs * strides[2], mask=ok, other=other)
    else:
        x = tl.load(X + offs * strides[2])
    return x


# ----------------------------------------------------------------------------- forward and dq

@triton.jit
def _scheduled_head(position, ORDER, ORDERED: tl.constexpr):
    """The (b, head) number b * H + h that the grid's position-th head of programs runs:
    ORDER[position] with ORDERED (plan.heads_by_work, the heads with the most tiles first:
    the hardware starts programs in grid order as slots free up, so the heaviest are not left
    for the end), otherwise position (ORDER not read)."""
    if ORDERED:
        return tl.load(ORDER + position)
    return position


@triton.jit
def _query_program(n_heads, group, n_queries, ORDER, BLOCK_M: tl.constexpr,
                   ORDERED: tl.constexpr):
    """(b, query head, kv head, query block, b * n_heads + h) of a forward or dq program. One
    flat grid (no 65535 limit on B * H), the (b, head)s in the order _scheduled_head gives;
    within a head the heavy (late) query blocks, which have the most key blocks under the
    causal mask, start first."""
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    pid = tl.program_id(0)
    pid_m = m_blocks - 1 - pid % m_blocks
    pid_bh = _scheduled_head(pid // m_blocks, ORDER, ORDERED)
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    return b, h, h // group, pid_m, pid_bh


@triton.jit
def _query_rows(pid_m, n_queries, n_keys, BLOCK_M: tl.constexpr):
    """The rows of query block pid_m: (first row, rows, which exist, first row's absolute
    position, each row's absolute position)."""
    offset = n_keys - n_queries
    row0 = pid_m * BLOCK_M
    offs_m = row0 + tl.arange(0, BLOCK_M)
    m_ok = offs_m < n_queries
    pos_q = offset + offs_m
    pos0 = offset + row0
    return row0, offs_m, m_ok, pos0, pos_q


@triton.jit
def _lams(LAM, lam_str, first, offs, ok):
    """(lam at position first, lam at positions offs (0 where not ok)) of a (B, H, N) row, LAM
    at (b, h): the reference lam_ref a program measures the gate's bias from, and its rows' or
    keys' own lam."""
    return tl.load(LAM + first * lam_str[2]), tl.load(LAM + offs * lam_str[2], mask=ok, other=0.0)


@triton.jit
def _doc_ids(DOC, doc_str, offs, ok):
    """Document ids at positions offs (-1 where not ok) of a (B, N) tensor, DOC at batch b."""
    return tl.load(DOC + offs * doc_str[1], mask=ok, other=-1)


@triton.jit
def _key_walk(START, start_str, row0, pos0, n_keys, BLOCK_M: tl.constexpr,
              BLOCK_N: tl.constexpr, GRID_M: tl.constexpr, GRID_N: tl.constexpr):
    """The key steps of query rows [row0, row0 + BLOCK_M) (START at (b, h)): [lo, mid) lie
    entirely left of the diagonal (no masks), [mid, hi) cross it. Key blocks [0, START) are
    pruned; START never passes the block of the first row's diagonal."""
    lo = tl.load(START + (row0 // GRID_M) * start_str[2]) * GRID_N
    mid = lo + ((pos0 + 1 - lo) // BLOCK_N) * BLOCK_N
    hi = tl.minimum(pos0 + BLOCK_M, n_keys)             # one past the last row's last key
    return lo, mid, hi


@triton.jit
def _softmax_step(s, m_i, l_i, ROW_MAY_BE_EMPTY: tl.constexpr):
    """One step of the online softmax (exp2 domain) over scores s (rows x keys): returns the new
    running max m_new, alpha = exp2(m_i - m_new) that rescales what came before, p = exp2(s -
    m_new) and the new row sums. ROW_MAY_BE_EMPTY: a row may have seen only -inf scores so far
    (m_new = -inf); its alpha and p are then 0, not NaN."""
    m_new = tl.maximum(m_i, _max_rows(s))
    m_ref = m_new
    if ROW_MAY_BE_EMPTY:
        m_ref = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2(m_i - m_ref)
    p = tl.exp2(s - m_ref[:, None])
    return m_new, alpha, p, l_i * alpha + _sum_rows(p)


@triton.jit
def _fwd_steps(acc, l_i, m_i, rows, keys, lo, hi, n_keys, qk_scale, BLOCK_N: tl.constexpr,
               HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr,
               CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
               TMA: tl.constexpr):
    """Key steps [lo, hi) of the online softmax. rows: (q, pos_q, lam_ref, doc_q) of the query
    block; keys: the sources of k, v and lam, then the document ids (DOC at b, their strides).
    MASKED: the steps cross the diagonal or the end of the keys."""
    q, pos_q, lam_ref, doc_q = rows
    k_src, v_src, lam_src, DOC, doc_str = keys
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        kt = _step_tile(k_src, start, offs_n, n_ok, BLOCK_N, HEAD_DIM, D_PAD, MASKED, True, TMA,
                        CAST_F32)
        lam_k = _step_row(lam_src, start, offs_n, n_ok, 0.0, BLOCK_N, MASKED, TMA)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale
        s += ((lam_ref - lam_k) * LOG2E)[None, :]
        if MASKED:
            s = tl.where(offs_n[None, :] <= pos_q[:, None], s, float("-inf"))
        if HAS_DOC:
            doc_k = _doc_ids(DOC, doc_str, offs_n, n_ok)
            s = tl.where(doc_q[:, None] == doc_k[None, :], s, float("-inf"))
        # a row may have no key of its document so far (HAS_DOC)
        m_new, alpha, p, l_i = _softmax_step(s, m_i, l_i, HAS_DOC)
        v = _step_tile(v_src, start, offs_n, n_ok, BLOCK_N, HEAD_DIM, D_PAD, MASKED, False, TMA,
                       CAST_F32)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _fwd_kernel(Q, K, V, LAM, OUT, LSE, START, DOC, ORDER, K_D, V_D, LAM_D,
                q_str, k_str, v_str, lam_str, out_str, lse_str, start_str, doc_str,
                n_heads, group, n_queries, n_keys, qk_scale,
                HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                GRID_M: tl.constexpr, GRID_N: tl.constexpr,
                CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
                TMA: tl.constexpr, ORDERED: tl.constexpr):
    """OUT and LSE of one (b, query head, block of BLOCK_M queries); with ORDERED the (b, query
    head)s in ORDER's order (_scheduled_head). TMA: k, v and lam are read through the tensor
    descriptors K_D, V_D ((B, Hk, N, D), blocks [1, 1, BLOCK_N, D_PAD]) and LAM_D ((B, Hq, N),
    blocks [1, 1, BLOCK_N]), zeros past the edges; otherwise through pointers."""
    b, h, hk, pid_m, _ = _query_program(n_heads, group, n_queries, ORDER, BLOCK_M, ORDERED)
    Q, K, V = _at(Q, q_str, b, h), _at(K, k_str, b, hk), _at(V, v_str, b, hk)
    LAM, OUT, LSE = _at(LAM, lam_str, b, h), _at(OUT, out_str, b, h), _at(LSE, lse_str, b, h)
    START = _at(START, start_str, b, h)
    row0, offs_m, m_ok, pos0, pos_q = _query_rows(pid_m, n_queries, n_keys, BLOCK_M)
    q = _tile(Q, q_str, offs_m, m_ok, HEAD_DIM, D_PAD, True, False, CAST_F32)
    lam_ref, lam_q = _lams(LAM, lam_str, pos0, pos_q, m_ok)
    DOC += b * doc_str[0]
    doc_q = _doc_ids(DOC, doc_str, pos_q, m_ok) if HAS_DOC else 0
    lo, mid, hi = _key_walk(START, start_str, row0, pos0, n_keys, BLOCK_M, BLOCK_N, GRID_M,
                            GRID_N)
    rows = (q, pos_q, lam_ref, doc_q)
    b32, h32, hk32 = b.to(tl.int32), h.to(tl.int32), hk.to(tl.int32)   # descriptor indices
    keys = ((K, k_str, K_D, b32, hk32), (V, v_str, V_D, b32, hk32),    # sources (see top)
            (LAM, lam_str, LAM_D, b32, h32), DOC, doc_str)

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    acc = tl.full([BLOCK_M, D_PAD], 0.0, dtype=tl.float32)
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, rows, keys, lo, mid, n_keys, qk_scale, BLOCK_N,
                               HEAD_DIM, D_PAD, False, CAST_F32, DOT_PREC, HAS_DOC, TMA)
    acc, l_i, m_i = _fwd_steps(acc, l_i, m_i, rows, keys, mid, hi, n_keys, qk_scale, BLOCK_N,
                               HEAD_DIM, D_PAD, True, CAST_F32, DOT_PREC, HAS_DOC, TMA)

    _store_tile(OUT, out_str, offs_m, m_ok, acc / l_i[:, None], HEAD_DIM, D_PAD)
    lse = (m_i + tl.log2(l_i)) * LN2 + (lam_q - lam_ref)
    tl.store(LSE + offs_m * lse_str[2], lse, mask=m_ok)


@triton.jit
def _dq_steps(dq, ds_rows, rows, keys, lo, hi, n_keys, qk_scale, BLOCK_N: tl.constexpr,
              HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, MASKED: tl.constexpr,
              CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
              TMA: tl.constexpr):
    """Key steps [lo, hi) of dq and the dS row sums. rows: (q, dO, pos_q, lam_ref, a_row, do_o,
    doc_q) of the query block; keys: as in _fwd_steps."""
    q, do, pos_q, lam_ref, a_row, do_o, doc_q = rows
    k_src, v_src, lam_src, DOC, doc_str = keys
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        kt = _step_tile(k_src, start, offs_n, n_ok, BLOCK_N, HEAD_DIM, D_PAD, MASKED, True, TMA,
                        CAST_F32)
        vt = _step_tile(v_src, start, offs_n, n_ok, BLOCK_N, HEAD_DIM, D_PAD, MASKED, True, TMA,
                        CAST_F32)
        lam_k = _step_row(lam_src, start, offs_n, n_ok, 0.0, BLOCK_N, MASKED, TMA)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale + a_row[:, None]
        s = s + ((lam_ref - lam_k) * LOG2E)[None, :]
        if MASKED:
            s = tl.where(offs_n[None, :] <= pos_q[:, None], s, float("-inf"))
        if HAS_DOC:
            doc_k = _doc_ids(DOC, doc_str, offs_n, n_ok)
            s = tl.where(doc_q[:, None] == doc_k[None, :], s, float("-inf"))
        p = tl.exp2(s)
        dp = tl.dot(do, vt, input_precision=DOT_PREC)
        ds = p * (dp - do_o[:, None])
        ds_rows += _sum_rows(ds)
        dq = tl.dot(ds.to(kt.dtype), tl.trans(kt), dq, input_precision=DOT_PREC)
    return dq, ds_rows


@triton.jit
def _dq_kernel(Q, K, V, LAM, DO, LSE, DO_O, DQ, DLAM_ROW, START, DOC, ORDER, K_D, V_D, LAM_D,
               q_str, k_str, v_str, lam_str, do_str, lse_str, dq_str, dlam_row_str, start_str,
               doc_str,
               n_heads, group, n_queries, n_keys, qk_scale, scale,
               HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
               BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
               GRID_M: tl.constexpr, GRID_N: tl.constexpr,
               CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
               TMA: tl.constexpr, ORDERED: tl.constexpr):
    """dq and the dS row sums of one (b, query head, block of BLOCK_M queries); ORDER and
    ORDERED, and with TMA k, v and lam through descriptors, as in _fwd_kernel."""
    b, h, hk, pid_m, pid_bh = _query_program(n_heads, group, n_queries, ORDER, BLOCK_M,
                                             ORDERED)
    Q, K, V = _at(Q, q_str, b, h), _at(K, k_str, b, hk), _at(V, v_str, b, hk)
    LAM, DO, LSE = _at(LAM, lam_str, b, h), _at(DO, do_str, b, h), _at(LSE, lse_str, b, h)
    DO_O += pid_bh.to(tl.int64) * n_queries   # our own contiguous (B, Hq, M) buffer
    DQ, DLAM_ROW = _at(DQ, dq_str, b, h), _at(DLAM_ROW, dlam_row_str, b, h)
    START = _at(START, start_str, b, h)
    row0, offs_m, m_ok, pos0, pos_q = _query_rows(pid_m, n_queries, n_keys, BLOCK_M)
    q = _tile(Q, q_str, offs_m, m_ok, HEAD_DIM, D_PAD, True, False, CAST_F32)
    do = _tile(DO, do_str, offs_m, m_ok, HEAD_DIM, D_PAD, True, False, CAST_F32)
    lam_ref, lam_q = _lams(LAM, lam_str, pos0, pos_q, m_ok)
    lse = tl.load(LSE + offs_m * lse_str[2], mask=m_ok, other=float("inf"))
    do_o = tl.load(DO_O + offs_m, mask=m_ok, other=0.0)
    DOC += b * doc_str[0]
    doc_q = _doc_ids(DOC, doc_str, pos_q, m_ok) if HAS_DOC else 0
    # p = exp2(qk * qk_scale + a_row + (lam_ref - lam_k) log2 e); padded rows get p = 0.
    a_row = (lam_q - lam_ref - lse) * LOG2E
    lo, mid, hi = _key_walk(START, start_str, row0, pos0, n_keys, BLOCK_M, BLOCK_N, GRID_M,
                            GRID_N)
    rows = (q, do, pos_q, lam_ref, a_row, do_o, doc_q)
    b32, h32, hk32 = b.to(tl.int32), h.to(tl.int32), hk.to(tl.int32)   # descriptor indices
    keys = ((K, k_str, K_D, b32, hk32), (V, v_str, V_D, b32, hk32),    # sources (see top)
            (LAM, lam_str, LAM_D, b32, h32), DOC, doc_str)

    dq = tl.full([BLOCK_M, D_PAD], 0.0, dtype=tl.float32)
    ds_rows = tl.full([BLOCK_M], 0.0, dtype=tl.float32)
    dq, ds_rows = _dq_steps(dq, ds_rows, rows, keys, lo, mid, n_keys, qk_scale, BLOCK_N,
                            HEAD_DIM, D_PAD, False, CAST_F32, DOT_PREC, HAS_DOC, TMA)
    dq, ds_rows = _dq_steps(dq, ds_rows, rows, keys, mid, hi, n_keys, qk_scale, BLOCK_N,
                            HEAD_DIM, D_PAD, True, CAST_F32, DOT_PREC, HAS_DOC, TMA)
    _store_tile(DQ, dq_str, offs_m, m_ok, dq * scale, HEAD_DIM, D_PAD)
    # Row sums of dS: analytically zero, but adding them to dlam (at the query's own position)
    # makes sum_t dlam_t cancel exactly, so the gates' gradient (a reverse cumsum of dlam) does
    # not accumulate the rounding of dS over the sequence.
    tl.store(DLAM_ROW + pos_q * dlam_row_str[2], ds_rows, mask=m_ok)


@triton.jit
def _row_dot_kernel(OUT, DO, DO_O, LAM, LSE, out_str, do_str, lam_str, lse_str, n_heads,
                    n_queries, n_keys, padded, log2e,
                    HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_M: tl.constexpr,
                    QUERY_ROWS: tl.constexpr):
    """DO_O[b, h, i] = sum_d dO * O, float32, contiguous (B, H, M): the row dots of
    dS = P (dP - do_o). QUERY_ROWS (the Gluon backward's per-query buffer): DO_O is instead
    (B, H, 2, padded) contiguous, padded a multiple of BLOCK_M >= M, with row 0 = (lam_q - lse)
    * log2e (lam_q = LAM[b, h, N - M + i]) and row 1 = the dots; past M -inf and 0."""
    rows = padded if QUERY_ROWS else n_queries
    m_blocks = (rows + BLOCK_M - 1) // BLOCK_M
    pid = tl.program_id(0)
    pid_m = pid % m_blocks
    pid_bh = pid // m_blocks
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < n_queries
    o = _tile(_at(OUT, out_str, b, h), out_str, offs_m, m_ok, HEAD_DIM, D_PAD, True, False, True)
    do = _tile(_at(DO, do_str, b, h), do_str, offs_m, m_ok, HEAD_DIM, D_PAD, True, False, True)
    dots = _sum_rows(o * do)
    if QUERY_ROWS:
        lam_q = tl.load(LAM + b * lam_str[0] + h * lam_str[1]
                        + (n_keys - n_queries + offs_m) * lam_str[2], mask=m_ok, other=0.0)
        lse = tl.load(LSE + b * lse_str[0] + h * lse_str[1] + offs_m * lse_str[2], mask=m_ok,
                      other=0.0)
        base = DO_O + pid_bh.to(tl.int64) * 2 * padded
        tl.store(base + offs_m, tl.where(m_ok, (lam_q - lse) * log2e, float("-inf")))
        tl.store(base + padded + offs_m, tl.where(m_ok, dots, 0.0))
    else:
        tl.store(DO_O + pid_bh.to(tl.int64) * n_queries + offs_m, dots, mask=m_ok)


@triton.jit
def _dq_finish_kernel(DQ_ACC, DQ, ROW_SUMS, DLAM, acc_str, dq_str, sums_str, dlam_str, n_heads,
                      n_queries, n_keys, scale, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                      BLOCK_M: tl.constexpr):
    """The Gluon backward's last pass over its float32 sums, one program per BLOCK_M queries of
    a (b, h): DQ = DQ_ACC * scale in DQ's dtype (through DQ's strides), and
    DLAM[b, h, N - M + i] += ROW_SUMS[b, h, i, 0] (the dS row sums: the queries' part of
    dlam). DQ_ACC (B, H, M, D) and ROW_SUMS (B, H, M, 16) float32, DLAM (B, H, N) float32."""
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    pid = tl.program_id(0)
    pid_bh = pid // m_blocks
    b = (pid_bh // n_heads).to(tl.int64)
    h = (pid_bh % n_heads).to(tl.int64)
    offs_m = (pid % m_blocks) * BLOCK_M + tl.arange(0, BLOCK_M)
    m_ok = offs_m < n_queries
    acc = _tile(_at(DQ_ACC, acc_str, b, h), acc_str, offs_m, m_ok, HEAD_DIM, D_PAD, True, False,
                False)
    _store_tile(_at(DQ, dq_str, b, h), dq_str, offs_m, m_ok, acc * scale, HEAD_DIM, D_PAD)
    row_sums = tl.load(_at(ROW_SUMS, sums_str, b, h) + offs_m * sums_str[2], mask=m_ok)
    dlam = _at(DLAM, dlam_str, b, h) + (n_keys - n_queries + offs_m) * dlam_str[2]
    tl.store(dlam, tl.load(dlam, mask=m_ok) + row_sums, mask=m_ok)


# ----------------------------------------------------------------------------- dk, dv

@triton.jit
def _dkdv_steps(dk, dv, colsum, keys, queries, lo, hi, offset, n_queries, qk_scale,
                BLOCK_M: tl.constexpr, HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                MASKED: tl.constexpr, ROW_MASK: tl.constexpr, CAST_F32: tl.constexpr,
                DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr, TMA: tl.constexpr):
    """Query steps [lo, hi) of one query head for dk, dv and the dS column sums. keys: (k, v,
    offs_n, lam_ref, b_key, doc_k) of the key block; queries: the sources of q, dO, lam, lse and
    do_o, then the document ids (DOC at b, their strides). MASKED: the steps cross the diagonal;
    ROW_MASK: they may pass the last query."""
    k, v, offs_n, lam_ref, b_key, doc_k = keys
    q_src, do_src, lam_src, lse_src, do_o_src, DOC, doc_str = queries
    for start in range(lo, hi, BLOCK_M):
        offs_m = start + tl.arange(0, BLOCK_M)
        m_ok = offs_m < n_queries
        pos_q = offset + offs_m
        qt = _step_tile(q_src, start, offs_m, m_ok, BLOCK_M, HEAD_DIM, D_PAD, ROW_MASK, True, TMA,
                        CAST_F32)
        do = _step_tile(do_src, start, offs_m, m_ok, BLOCK_M, HEAD_DIM, D_PAD, ROW_MASK, False,
                        TMA, CAST_F32)
        lse = _step_row(lse_src, start, offs_m, m_ok, float("inf"), BLOCK_M, ROW_MASK, TMA)
        do_o = _step_row(do_o_src, start, offs_m, m_ok, 0.0, BLOCK_M, ROW_MASK, TMA)
        lam_q = _step_row(lam_src, offset + start, pos_q, m_ok, 0.0, BLOCK_M, ROW_MASK, TMA)
        if TMA:  # zeros past the edges; a padded row's lse must be +inf (p = 0), not 0
            if ROW_MASK:
                lse = tl.where(m_ok, lse, float("inf"))
        a_row = (lam_q - lam_ref - lse) * LOG2E
        st = tl.dot(k, qt, input_precision=DOT_PREC) * qk_scale + b_key[:, None]
        st = st + a_row[None, :]
        if MASKED:
            st = tl.where(offs_n[:, None] <= pos_q[None, :], st, float("-inf"))
        if HAS_DOC:
            doc_q = _doc_ids(DOC, doc_str, pos_q, m_ok)
            st = tl.where(doc_k[:, None] == doc_q[None, :], st, float("-inf"))
        pt = tl.exp2(st)
        dv = tl.dot(pt.to(do.dtype), do, dv, input_precision=DOT_PREC)
        dpt = tl.dot(v, tl.trans(do), input_precision=DOT_PREC)
        dst = pt * (dpt - do_o[None, :])
        dk = tl.dot(dst.to(qt.dtype), tl.trans(qt), dk, input_precision=DOT_PREC)
        colsum += _sum_rows(dst)
    return dk, dv, colsum


@triton.jit
def _dkdv_kernel(Q, K, V, LAM, DO, LSE, DO_O, DK, DV, DLAM, END, DOC, ORDER,
                 Q_D, DO_D, LAM_D, LSE_D, DO_O_D,
                 q_str, k_str, v_str, lam_str, do_str, lse_str, dk_str, dv_str, dlam_str,
                 end_str, doc_str,
                 n_kv_heads, group, n_queries, n_keys, qk_scale, scale,
                 HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr,
                 BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr,
                 GRID_M: tl.constexpr, GRID_N: tl.constexpr, ROW_EDGE: tl.constexpr,
                 CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr, HAS_DOC: tl.constexpr,
                 TMA: tl.constexpr, ORDERED: tl.constexpr):
    """dk, dv of one (b, kv head, block of BLOCK_N keys), summed over the group's query heads,
    and the dS column sums of each of them; with ORDERED the (b, kv head)s in ORDER's order
    (_scheduled_head). TMA: the streamed q, dO, lam, lse and do_o come
    through the descriptors Q_D, DO_D ((B, Hq, M, D), blocks [1, 1, BLOCK_M, D_PAD]), LAM_D,
    LSE_D and DO_O_D ((B, Hq, .), blocks [1, 1, BLOCK_M]); otherwise through pointers."""
    # Key block 0 sees every query: launch in key order, heavy first.
    n_blocks = (n_keys + BLOCK_N - 1) // BLOCK_N
    pid = tl.program_id(0)
    pid_n = pid % n_blocks
    pid_bh = _scheduled_head(pid // n_blocks, ORDER, ORDERED)
    b = (pid_bh // n_kv_heads).to(tl.int64)
    hk = (pid_bh % n_kv_heads).to(tl.int64)
    K, V = _at(K, k_str, b, hk), _at(V, v_str, b, hk)
    DK, DV = _at(DK, dk_str, b, hk), _at(DV, dv_str, b, hk)

    offset = n_keys - n_queries
    key0 = pid_n * BLOCK_N
    offs_n = key0 + tl.arange(0, BLOCK_N)
    n_ok = offs_n < n_keys
    k = _tile(K, k_str, offs_n, n_ok, HEAD_DIM, D_PAD, True, False, CAST_F32)
    v = _tile(V, v_str, offs_n, n_ok, HEAD_DIM, D_PAD, True, False, CAST_F32)
    DOC += b * doc_str[0]
    doc_k = _doc_ids(DOC, doc_str, offs_n, n_ok) if HAS_DOC else 0

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
        Qh, DOh, LAMh = _at(Q, q_str, b, h), _at(DO, do_str, b, h), _at(LAM, lam_str, b, h)
        LSEh = _at(LSE, lse_str, b, h)
        DO_Oh = DO_O + (b * (n_kv_heads * group) + h) * n_queries   # contiguous (B, Hq, M)
        queries = ((Qh, q_str, Q_D, b32, h32), (DOh, do_str, DO_D, b32, h32),  # sources (see top)
                   (LAMh, lam_str, LAM_D, b32, h32), (LSEh, lse_str, LSE_D, b32, h32),
                   (DO_Oh, (0, 0, 1), DO_O_D, b32, h32), DOC, doc_str)
        end = tl.load(END + b * end_str[0] + h * end_str[1] + key_grid * end_str[2])
        hi = tl.minimum(end * GRID_M, n_queries)
        lam_ref, lam_k = _lams(LAMh, lam_str, key0, offs_n, n_ok)
        keys = (k, v, offs_n, lam_ref, (lam_ref - lam_k) * LOG2E, doc_k)
        colsum = tl.full([BLOCK_N], 0.0, dtype=tl.float32)
        dk, dv, colsum = _dkdv_steps(dk, dv, colsum, keys, queries, lo, tl.minimum(mid, hi),
                                     offset, n_queries, qk_scale, BLOCK_M, HEAD_DIM, D_PAD,
                                     True, True, CAST_F32, DOT_PREC, HAS_DOC, TMA)
        dk, dv, colsum = _dkdv_steps(dk, dv, colsum, keys, queries, mid, hi,
                                     offset, n_queries, qk_scale, BLOCK_M, HEAD_DIM, D_PAD,
                                     False, ROW_EDGE, CAST_F32, DOT_PREC, HAS_DOC, TMA)
        tl.store(DLAM + b * dlam_str[0] + h * dlam_str[1] + offs_n * dlam_str[2], -colsum,
                 mask=n_ok)

    _store_tile(DK, dk_str, offs_n, n_ok, dk * scale, HEAD_DIM, D_PAD)
    _store_tile(DV, dv_str, offs_n, n_ok, dv, HEAD_DIM, D_PAD)


# ----------------------------------------------------------------------------- plan

@triton.jit
def _max_nan(a, b):
    return tl.maximum(a, b, propagate_nan=tl.PropagateNan.ALL)


@triton.jit
def _tile_max_norm(X, x_str, tile_id, n_heads, n_rows, n_tiles,
                   HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """max over the rows of tile tile_id (of (b, h) tile_id // n_tiles) of ||x_row||, float32
    (NaN and inf kept)."""
    tile = tile_id % n_tiles
    bh = tile_id // n_tiles
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    rows = tile * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, D_PAD)
    x = tl.load(X + b * x_str[0] + h * x_str[1] + rows[:, None] * x_str[2]
                + cols[None, :] * x_str[3],
                mask=(rows < n_rows)[:, None] & (cols < HEAD_DIM)[None, :], other=0.0)
    x = x.to(tl.float32)
    norm = tl.sqrt(_sum_rows(x * x))
    return tl.reduce(norm, 0, _max_nan)


@triton.jit
def _max_norm_kernel(X, PARTIAL, x_str, n_heads, n_rows, n_tiles,
                     HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """PARTIAL[bh, tile] = max over the tile's rows of ||x_row|| (float32; NaN and inf kept)."""
    pid = tl.program_id(0)
    tl.store(PARTIAL + pid.to(tl.int64),
             _tile_max_norm(X, x_str, pid, n_heads, n_rows, n_tiles, HEAD_DIM, D_PAD, BLOCK_T))


@triton.jit
def _qkv_norms_kernel(Q, K, V, PARTIAL, q_str, k_str, v_str, q_heads, kv_heads, n_queries,
                      n_keys, q_tiles, k_tiles, n_q, n_k,
                      HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, V_DIM: tl.constexpr,
                      V_PAD: tl.constexpr, BLOCK_T: tl.constexpr):
    """_max_norm_kernel's partial maxima of q (B, Hq, M, D), k (B, Hk, N, D) and v (B, Hk, N,
    Dv) in one launch: PARTIAL holds q's n_q = B Hq q_tiles tiles, then k's n_k = B Hk k_tiles,
    then v's n_k (the grid leaves v's out when it has only n_q + n_k programs)."""
    pid = tl.program_id(0)
    if pid < n_q:
        value = _tile_max_norm(Q, q_str, pid, q_heads, n_queries, q_tiles, HEAD_DIM, D_PAD,
                               BLOCK_T)
    elif pid < n_q + n_k:
        value = _tile_max_norm(K, k_str, pid - n_q, kv_heads, n_keys, k_tiles, HEAD_DIM, D_PAD,
                               BLOCK_T)
    else:
        value = _tile_max_norm(V, v_str, pid - n_q - n_k, kv_heads, n_keys, k_tiles, V_DIM, V_PAD,
                               BLOCK_T)
    tl.store(PARTIAL + pid.to(tl.int64), value)


@triton.jit
def _partial_max(PARTIAL, first, count, CHUNK: tl.constexpr):
    """max of PARTIAL[first:first + count] (float32, NaN kept; -inf when count is 0)."""
    offs = tl.arange(0, CHUNK)
    best = tl.full([CHUNK], float("-inf"), tl.float32)
    for start in range(0, count, CHUNK):
        x = tl.load(PARTIAL + first + start + offs, mask=start + offs < count,
                    other=float("-inf"))
        best = _max_nan(best, x)
    return tl.reduce(best, 0, _max_nan)


@triton.jit
def _score_bound_kernel(PARTIAL, BOUND, CHECKED, scale_abs, q_heads, group, q_tiles, k_tiles,
                        n_q, n_k, CHECK_V: tl.constexpr, CHUNK: tl.constexpr):
    """plan.score_bound and value_checked_bound of one (b, h) from _qkv_norms_kernel's partial
    maxima, equal bit for bit: BOUND[b, h] = scale_abs * max ||q|| * max ||k of head h // group||
    (float32, in that order), CHECKED[b, h] = BOUND[b, h], or +inf where that head's v holds a
    NaN or inf (CHECK_V; else CHECKED is not written). BOUND and CHECKED contiguous (B, Hq)."""
    bh = tl.program_id(0)
    b = bh // q_heads
    hk = (bh % q_heads) // group
    kv_row = b * (q_heads // group) + hk
    q_max = _partial_max(PARTIAL, bh.to(tl.int64) * q_tiles, q_tiles, CHUNK)
    k_max = _partial_max(PARTIAL, n_q + kv_row.to(tl.int64) * k_tiles, k_tiles, CHUNK)
    bound = scale_abs * q_max * k_max
    tl.store(BOUND + bh, bound)
    if CHECK_V:
        v_max = _partial_max(PARTIAL, n_q + n_k + kv_row.to(tl.int64) * k_tiles, k_tiles, CHUNK)
        v_finite = (v_max == v_max) & (v_max != float("inf"))
        tl.store(CHECKED + bh, tl.where(v_finite, bound, float("inf")))


@triton.jit
def _last_valid(a_value, a_valid, b_value, b_valid):
    """Combine of a forward fill: the later of two (value, valid) pairs that is valid."""
    return tl.where(b_valid != 0, b_value, a_value), a_valid | b_valid


@triton.jit
def _full_lam_kernel(LAM, BOUND, OUT, FILLED, lam_str, bound_str, n_heads, n_keys, margin,
                     fallback, CHUNK: tl.constexpr, FILL: tl.constexpr):
    """plan.full_lam of one (b, h), equal bit for bit: OUT[b, h] (contiguous float32
    (B, H, N)) = lam[b, h] (any strides, 0 for broadcast dims, any float dtype) in float32, its
    +inf entries replaced by (largest finite entry) + (2 U + margin, or fallback where the bound
    U = BOUND[b, h] is not finite). FILL: also FILLED[b, h] (contiguous like OUT), the same with
    each +inf entry taking the value of the last entry before it that was not +inf."""
    pid = tl.program_id(0)
    b = pid // n_heads
    h = pid % n_heads
    LAM += b.to(tl.int64) * lam_str[0] + h.to(tl.int64) * lam_str[1]
    OUT += pid.to(tl.int64) * n_keys
    finite_max = float("-inf")
    for t0 in range(0, n_keys, CHUNK):
        offs = t0 + tl.arange(0, CHUNK)
        x = tl.load(LAM + offs * lam_str[2], mask=offs < n_keys, other=float("-inf"))
        x = x.to(tl.float32)
        finite = (x == x) & (tl.abs(x) != float("inf"))
        finite_max = tl.maximum(finite_max,
                                tl.reduce(tl.where(finite, x, float("-inf")), 0, _elementwise_max))
    bound = tl.load(BOUND + b * bound_str[0] + h * bound_str[1])
    bound_finite = (bound == bound) & (tl.abs(bound) != float("inf"))
    offset = tl.where(bound_finite, 2.0 * bound + margin, fallback)
    replacement = finite_max + offset
    carry = 0.0           # the last unmasked value of the chunks before (FILL)
    carried = 0           # whether there was one
    if FILL:
        FILLED += pid.to(tl.int64) * n_keys
    for t0 in range(0, n_keys, CHUNK):
        offs = t0 + tl.arange(0, CHUNK)
        ok = offs < n_keys
        x = tl.load(LAM + offs * lam_str[2], mask=ok, other=0.0).to(tl.float32)
        full = tl.where(x == float("inf"), replacement, x)
        tl.store(OUT + offs, full, mask=ok)
        if FILL:
            valid = ((x != float("inf")) & ok).to(tl.int32)
            last, seen = tl.associative_scan((full, valid), 0, _last_valid)
            filled = tl.where(seen != 0, last, tl.where(carried != 0, carry, full))
            tl.store(FILLED + offs, filled, mask=ok)
            # the chunk's last scanned pair (the sum of zeros keeps the value, -0.0 aside)
            at_end = tl.arange(0, CHUNK) == CHUNK - 1
            end_seen = tl.reduce(tl.where(at_end, seen, 0), 0, _sum_combine)
            end_value = tl.reduce(tl.where(at_end, last, 0.0), 0, _sum_combine)
            carry = tl.where(end_seen != 0, end_value, carry)
            carried = carried | end_seen


@triton.jit
def _min_scan(a, b):
    """Combine of the running minima (a module function, so that the interpreter's twin of the
    module has one: its generic scan calls it)."""
    return tl.minimum(a, b)


@triton.jit
def _max_scan(a, b):
    return tl.maximum(a, b)


@triton.jit
def _plan_start_kernel(LAM, BOUND, START, lam_str, bound_str, start_str, n_heads, n_queries,
                       n_keys, log_eps_over_n, GUARDED: tl.constexpr, BLOCK_M: tl.constexpr,
                       BLOCK_N: tl.constexpr, CHUNK: tl.constexpr, M_CHUNK: tl.constexpr,
                       N_CHUNK: tl.constexpr):
    """plan.threshold (from its bound) and plan.start_blocks of one (b, h) in one program, equal
    bit for bit: the same float32 operations in the same order, min and max being exact.
    LAM (B, H, N) float32, BOUND (B, H) float32: the score bound with v's finiteness folded in
    (inf where v is not finite); START (B, H, MB) int32; log_eps_over_n: float32(log(eps) -
    log(N)), rounded once as torch rounds the Python scalar."""
    pid = tl.program_id(0)
    b = pid // n_heads
    h = pid % n_heads
    LAM += b.to(tl.int64) * lam_str[0] + h.to(tl.int64) * lam_str[1]
    START += b.to(tl.int64) * start_str[0] + h.to(tl.int64) * start_str[1]

    # largest_rise: max over t of lam_t - min_{s <= t} lam_s; max |lam|; any NaN (a NaN rise
    # turns pruning off in both branches of threshold)
    running = float("inf")
    rise = 0.0
    abs_max = 0.0
    nan = 0
    for t0 in range(0, n_keys, CHUNK):
        offs = t0 + tl.arange(0, CHUNK)
        ok = offs < n_keys
        x = tl.load(LAM + offs * lam_str[2], mask=ok, other=float("inf"))
        low = tl.minimum(tl.associative_scan(x, 0, _min_scan), running)
        diff = tl.where(ok, x - low, 0.0)
        nan += tl.reduce(((diff != diff) | (x != x)).to(tl.int32), 0, _sum_combine)
        rise = tl.maximum(rise, tl.reduce(diff, 0, _elementwise_max))
        abs_max = tl.maximum(abs_max, tl.reduce(tl.where(ok, tl.abs(x), 0.0), 0, _elementwise_max))
        running = tl.minimum(running, tl.reduce(x, 0, _elementwise_min))

    # threshold: min(log eps - log N - 2U, 0) - 2 rise; the guard; then torch.nan_to_num(delta,
    # nan=-inf), which also maps -inf to float32's lowest and inf to its largest
    rise = tl.where(nan > 0, float("nan"), rise)
    bound = tl.load(BOUND + b * bound_str[0] + h * bound_str[1])
    delta = log_eps_over_n - 2.0 * bound
    delta = tl.where(delta > 0.0, 0.0, delta)           # clamp(max=0), NaN kept
    delta = delta - 2.0 * rise
    if GUARDED:
        tolerance = 1e-5 * (1.0 + abs_max)
        delta = tl.where(rise <= tolerance, delta, float("-inf"))
    delta = tl.where(delta == float("-inf"), -3.4028234663852886e38, delta)
    delta = tl.where(delta == float("inf"), 3.4028234663852886e38, delta)
    delta = tl.where(delta != delta, float("-inf"), delta)

    # start_blocks: count the key blocks whose key side (cummax of -lam at their last column,
    # NaN -> inf) is below each query block's limit (searchsorted, left), cap at the diagonal's
    # block, then the suffix minimum over query blocks; from the last query chunk back
    n_blocks = (n_keys + BLOCK_N - 1) // BLOCK_N
    m_blocks = (n_queries + BLOCK_M - 1) // BLOCK_M
    offset = n_keys - n_queries
    later = 2147483647                                      # min start of the later chunks
    for c in range(0, (m_blocks + M_CHUNK - 1) // M_CHUNK):
        offs_m = ((m_blocks + M_CHUNK - 1) // M_CHUNK - 1 - c) * M_CHUNK + tl.arange(0, M_CHUNK)
        m_ok = offs_m < m_blocks
        first_row = offset + offs_m * BLOCK_M
        limit = delta - tl.load(LAM + first_row * lam_str[2], mask=m_ok, other=0.0)
        limit = tl.where(limit != limit, float("-inf"), limit)
        count = tl.full([M_CHUNK], 0, dtype=tl.int32)
        key_max = float("-inf")
        for n0 in range(0, n_blocks, N_CHUNK):
            offs_n = n0 + tl.arange(0, N_CHUNK)
            n_ok = offs_n < n_blocks
            last_col = tl.minimum(offs_n * BLOCK_N + BLOCK_N - 1, n_keys - 1)
            key = -tl.load(LAM + last_col * lam_str[2], mask=n_ok, other=0.0)
            key = tl.where(key != key, float("inf"), key)
            key = tl.where(n_ok, key, float("-inf"))
            key = tl.maximum(tl.associative_scan(key, 0, _max_scan), key_max)
            key_max = tl.reduce(key, 0, _elementwise_max)
            below = n_ok[None, :] & (key[None, :] < limit[:, None])
            count += _sum_rows(below.to(tl.int32))
        start = tl.minimum(count, first_row // BLOCK_N)
        start = tl.where(m_ok, start, 2147483647)
        suffix = tl.minimum(tl.associative_scan(start, 0, _min_scan, reverse=True), later)
        tl.store(START + offs_m * start_str[2], suffix, mask=m_ok)
        later = tl.minimum(later, tl.reduce(start, 0, _elementwise_min))


@triton.jit
def _skipped_of(SKIPS, heads, n_heads, row_len, BLOCK: tl.constexpr, CHUNK: tl.constexpr):
    """The skipped blocks of each head in `heads` (BLOCK head numbers; 0 past n_heads): the
    sum of its row of SKIPS (n_heads, row_len) int32, contiguous, in int64 (G x MB starts,
    each below MB, can pass int32's range on long sequences)."""
    total = tl.full([BLOCK], 0, dtype=tl.int64)
    for c0 in range(0, row_len, CHUNK):
        cols = c0 + tl.arange(0, CHUNK)
        ok = (heads[:, None] < n_heads) & (cols[None, :] < row_len)
        x = tl.load(SKIPS + heads[:, None].to(tl.int64) * row_len + cols[None, :], mask=ok, other=0)
        total += _sum_rows(x.to(tl.int64))
    return total


@triton.jit
def _heads_by_work_kernel(SKIPS, ORDER, n_heads, row_len, BLOCK: tl.constexpr,
                          CHUNK: tl.constexpr):
    """plan.heads_by_work in one launch: ORDER (n_heads,) int32 lists the heads by their skipped
    blocks (rows of SKIPS (n_heads, row_len) int32: a head's start blocks, all G query heads'
    for a kv head), fewest first, ties by head number (a stable sort). Each program ranks a block
    of heads by counting the heads that go before each, and writes each to its rank."""
    mine = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    skipped = _skipped_of(SKIPS, mine, n_heads, row_len, BLOCK, CHUNK)
    rank = tl.full([BLOCK], 0, dtype=tl.int32)
    for j0 in range(0, n_heads, BLOCK):
        other = j0 + tl.arange(0, BLOCK)
        theirs = _skipped_of(SKIPS, other, n_heads, row_len, BLOCK, CHUNK)
        before = (theirs[None, :] < skipped[:, None]) | (
            (theirs[None, :] == skipped[:, None]) & (other[None, :] < mine[:, None]))
        rank += _sum_rows((before & (other[None, :] < n_heads)).to(tl.int32))
    tl.store(ORDER + rank, mine, mask=mine < n_heads)


# ----------------------------------------------------------------------------- decode (split-K)
#
# The decode engine (decode.py): M <= GRID_M queries (one query block of the plan) at the end of
# the keys. One program per (b, kv head, split) holds the M x G query rows of all G query heads of
# its kv head (row r = g M + i: query i of head hk G + g; padded to ROWS), so each K/V step is read
# once per kv head. The key range [lo, N) it needs starts at the earliest start block among the G
# heads (plan.start[b, h, 0], key blocks before it are pruned for every head of the group) and is
# cut into n_splits equal shares of whole steps; a program whose share is empty writes the
# neutral partial (m = -inf, l = 0, acc = 0). The grid depends on the shapes alone, so a launch
# needs nothing from the host (CUDA graphs). Each row measures its gate's bias from its own lam
# (lam_ref = lam[P+i]), so lse = (m + log2 l) ln 2 exactly as the forward kernel's.


@triton.jit
def _decode_steps(acc, l_i, m_i, rows, keys, lo, hi, n_keys, qk_scale, BLOCK_N: tl.constexpr,
                  HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, ROW_EDGE: tl.constexpr,
                  MASKED: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
                  HAS_DOC: tl.constexpr):
    """Key steps [lo, hi) of the online softmax of the program's query rows. rows: (q, which rows
    exist, each row's lam row offset, lam_q, pos_q, first unpruned key, doc_q); keys: K and V at
    (b, kv head) with their strides, LAM at b with its strides, DOC at b with its strides.
    MASKED: the steps hold keys that some row does not see (before its own start block, after its
    position, past the end); unmasked steps need only the document ids (HAS_DOC)."""
    q, row_ok, lam_rows, lam_q, pos_q, key_lo, doc_q = rows
    K, k_str, V, v_str, LAM, lam_str, DOC, doc_str = keys
    for start in range(lo, hi, BLOCK_N):
        offs_n = start + tl.arange(0, BLOCK_N)
        n_ok = offs_n < n_keys
        kt = _tile(K, k_str, offs_n, n_ok, HEAD_DIM, D_PAD, MASKED, True, CAST_F32)
        lam_k = _load(LAM + lam_rows[:, None] + offs_n[None, :] * lam_str[2], row_ok[:, None],
                      n_ok[None, :], ROW_EDGE, MASKED)
        s = tl.dot(q, kt, input_precision=DOT_PREC) * qk_scale
        s += (lam_q[:, None] - lam_k) * LOG2E
        if MASKED:
            seen = (offs_n[None, :] <= pos_q[:, None]) & (offs_n[None, :] >= key_lo[:, None])
            s = tl.where(seen, s, float("-inf"))
        if HAS_DOC:
            doc_k = _doc_ids(DOC, doc_str, offs_n, n_ok)
            s = tl.where(doc_q[:, None] == doc_k[None, :], s, float("-inf"))
        # a row may have no visible key so far (MASKED: before its start block; HAS_DOC)
        m_new, alpha, p, l_i = _softmax_step(s, m_i, l_i, MASKED or HAS_DOC)
        v = _tile(V, v_str, offs_n, n_ok, HEAD_DIM, D_PAD, MASKED, False, CAST_F32)
        acc = acc * alpha[:, None]
        acc = tl.dot(p.to(v.dtype), v, acc, input_precision=DOT_PREC)
        m_i = m_new
    return acc, l_i, m_i


@triton.jit
def _decode_kernel(Q, K, V, LAM, OUT, LSE, START, DOC, PART_M, PART_L, PART_ACC,
                   q_str, k_str, v_str, lam_str, out_str, lse_str, start_str, doc_str,
                   n_kv_heads, group, n_queries, n_keys, n_splits, qk_scale,
                   HEAD_DIM: tl.constexpr, D_PAD: tl.constexpr, ROWS: tl.constexpr,
                   BLOCK_N: tl.constexpr, GRID_N: tl.constexpr, ROW_EDGE: tl.constexpr,
                   DIRECT: tl.constexpr, CAST_F32: tl.constexpr, DOT_PREC: tl.constexpr,
                   HAS_DOC: tl.constexpr):
    """One (b, kv head, split): the online softmax of the group's M x G query rows over this
    split's share of the unpruned keys. DIRECT (one split): OUT and LSE themselves; otherwise the
    partial (m in the exp2 domain, l, acc unnormalised) of every row into PART_M, PART_L
    ((B, Hq, M, n_splits) float32) and PART_ACC ((B, Hq, M, n_splits, D_PAD) float32), which
    _decode_combine_kernel reduces."""
    pid = tl.program_id(0)
    split = pid % n_splits
    pid_bk = pid // n_splits
    b = (pid_bk // n_kv_heads).to(tl.int64)
    hk = (pid_bk % n_kv_heads).to(tl.int64)
    K, V = _at(K, k_str, b, hk), _at(V, v_str, b, hk)
    LAM, DOC = LAM + b * lam_str[0], DOC + b * doc_str[0]

    n_rows = group * n_queries
    offs_r = tl.arange(0, ROWS)
    row_ok = offs_r < n_rows
    h = hk * group + offs_r // n_queries                 # each row's query head (int64)
    i = offs_r % n_queries                               # and query
    offset = n_keys - n_queries
    pos_q = offset + i
    offs_d = tl.arange(0, D_PAD)
    q = _load(Q + b * q_str[0] + h[:, None] * q_str[1] + i[:, None] * q_str[2]
              + offs_d[None, :] * q_str[3], row_ok[:, None], (offs_d < HEAD_DIM)[None, :],
              ROW_EDGE, HEAD_DIM != D_PAD)
    if CAST_F32:
        q = q.to(tl.float32)
    lam_rows = h * lam_str[1]
    lam_q = tl.load(LAM + lam_rows + pos_q * lam_str[2], mask=row_ok, other=0.0)
    doc_q = _doc_ids(DOC, doc_str, pos_q, row_ok) if HAS_DOC else 0
    # each row's first unpruned key (query block 0 of the plan); the program reads from the
    # group's earliest, and rows whose own start is later mask the keys before it
    key_lo = tl.load(START + b * start_str[0] + h * start_str[1], mask=row_ok, other=0) * GRID_N
    lo = tl.reduce(tl.where(row_ok, key_lo, n_keys), 0, _elementwise_min)
    all_in = tl.reduce(key_lo, 0, _elementwise_max)     # every row sees keys from here on

    # this split's share of the steps of [lo, n_keys)
    n_steps = (n_keys - lo + BLOCK_N - 1) // BLOCK_N
    per_split = (n_steps + n_splits - 1) // n_splits
    first = tl.minimum(split * per_split, n_steps)
    last = tl.minimum(first + per_split, n_steps)
    s_lo = lo + first * BLOCK_N
    s_hi = lo + last * BLOCK_N
    # steps before `mid` see no key past the first query's position (no causal or edge mask)
    mid = lo + ((offset + 1 - lo) // BLOCK_N) * BLOCK_N
    x1 = tl.minimum(tl.maximum(all_in, s_lo), s_hi)
    x2 = tl.minimum(tl.maximum(mid, x1), s_hi)

    rows = (q, row_ok, lam_rows, lam_q, pos_q, key_lo, doc_q)
    keys = (K, k_str, V, v_str, LAM, lam_str, DOC, doc_str)
    m_i = tl.full([ROWS], float("-inf"), dtype=tl.float32)
    l_i = tl.full([ROWS], 0.0, dtype=tl.float32)
    acc = tl.full([ROWS, D_PAD], 0.0, dtype=tl.float32)
    acc, l_i, m_i = _decode_steps(acc, l_i, m_i, rows, keys, s_lo, x1, n_keys, qk_scale,
                                  BLOCK_N, HEAD_DIM, D_PAD, ROW_EDGE, True, CAST_F32, DOT_PREC,
                                  HAS_DOC)
    acc, l_i, m_i = _decode_steps(acc, l_i, m_i, rows, keys, x1, x2, n_keys, qk_scale,
                                  BLOCK_N, HEAD_DIM, D_PAD, ROW_EDGE, False, CAST_F32, DOT_PREC,
                                  HAS_DOC)
    acc, l_i, m_i = _decode_steps(acc, l_i, m_i, rows, keys, x2, s_hi, n_keys, qk_scale,
                                  BLOCK_N, HEAD_DIM, D_PAD, ROW_EDGE, True, CAST_F32, DOT_PREC,
                                  HAS_DOC)

    if DIRECT:
        out_ptrs = (OUT + b * out_str[0] + h[:, None] * out_str[1] + i[:, None] * out_str[2]
                    + offs_d[None, :] * out_str[3])
        l_i = tl.where(row_ok, l_i, 1.0)   # padded rows (never stored) without 0 / 0
        tl.store(out_ptrs, (acc / l_i[:, None]).to(OUT.dtype.element_ty),
                 mask=row_ok[:, None] & (offs_d < HEAD_DIM)[None, :])
        tl.store(LSE + b * lse_str[0] + h * lse_str[1] + i * lse_str[2],
                 (m_i + tl.log2(l_i)) * LN2, mask=row_ok)
    else:
        part = (pid_bk.to(tl.int64) * n_rows + offs_r) * n_splits + split   # (B, Hq, M, splits)
        tl.store(PART_M + part, m_i, mask=row_ok)
        tl.store(PART_L + part, l_i, mask=row_ok)
        tl.store(PART_ACC + part[:, None] * D_PAD + offs_d[None, :], acc, mask=row_ok[:, None])


@triton.jit
def _decode_combine_kernel(PART_M, PART_L, PART_ACC, OUT, LSE, out_str, lse_str,
                           n_heads, n_queries, n_splits, HEAD_DIM: tl.constexpr,
                           D_PAD: tl.constexpr, SPLITS: tl.constexpr):
    """OUT and LSE of one query row (b, h, i) from its n_splits partials (SPLITS: their count
    padded to a power of two): rescale each to the largest m, sum, normalise. An empty split's
    m = -inf weighs exp2(-inf) = 0."""
    row = tl.program_id(0)
    i = row % n_queries
    bh = row // n_queries
    b = (bh // n_heads).to(tl.int64)
    h = (bh % n_heads).to(tl.int64)
    offs_s = tl.arange(0, SPLITS)
    s_ok = offs_s < n_splits
    part = row.to(tl.int64) * n_splits + offs_s
    m = tl.load(PART_M + part, mask=s_ok, other=float("-inf"))
    l = tl.load(PART_L + part, mask=s_ok, other=0.0)
    m_max = tl.reduce(m, 0, _elementwise_max)
    w = tl.exp2(m - m_max)
    l_sum = tl.reduce(l * w, 0, _sum_combine)
    offs_d = tl.arange(0, D_PAD)
    acc = tl.load(PART_ACC + part[:, None] * D_PAD + offs_d[None, :], mask=s_ok[:, None],
                  other=0.0)
    o = tl.reduce(acc * w[:, None], 0, _sum_combine) / l_sum
    tl.store(OUT + b * out_str[0] + h * out_str[1] + i * out_str[2] + offs_d * out_str[3],
             o.to(OUT.dtype.element_ty), mask=offs_d < HEAD_DIM)
    tl.store(LSE + b * lse_str[0] + h * lse_str[1] + i * lse_str[2], (m_max + tl.log2(l_sum)) * LN2)
