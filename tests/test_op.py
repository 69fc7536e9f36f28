"""foxcompile.forgetting_attention and the custom ops: correctness against the fp64 definition,
gradients, opcheck, input errors, NaN, the guard and the pruning guarantee (CPU engine)."""
import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

import foxcompile
from foxcompile.kernels import DECODE_PRUNING_ENV, naive
from foxcompile.contract import DECODE_ROWS, Prune
from foxcompile.kernels.plan import make_plan, tile_counts, tile_sizes

F64 = torch.float64


def _inputs(batch, n_queries, n_keys, q_heads, kv_heads, head_dim, layout="bthd", dtype=F64,
            gate_bias=2.0, seed=0, grad=True):
    gen = torch.Generator().manual_seed(seed)
    def rand(*shape):
        return torch.randn(*shape, generator=gen, dtype=dtype)
    if layout == "bthd":
        q, k, v = rand(batch, n_queries, q_heads, head_dim), rand(batch, n_keys, kv_heads, head_dim), \
            rand(batch, n_keys, kv_heads, head_dim)
        gates = F.logsigmoid(rand(batch, n_keys, q_heads).to(F64) + gate_bias).to(dtype)
    else:
        q, k, v = rand(batch, q_heads, n_queries, head_dim), rand(batch, kv_heads, n_keys, head_dim), \
            rand(batch, kv_heads, n_keys, head_dim)
        gates = F.logsigmoid(rand(batch, q_heads, n_keys).to(F64) + gate_bias).to(dtype)
    tensors = [q, k, v, gates]
    if grad:
        tensors = [t.requires_grad_() for t in tensors]
    return tensors


def _reference(q, k, v, gates, layout="bthd", scale=None, doc=None):
    """The fp64 T x T definition (foxcompile/kernels/naive.py), in the same layout as the inputs;
    doc: the keys' document ids, (N,) or (B, N), for packed sequences."""
    scale = q.shape[-1] ** -0.5 if scale is None else scale
    to_bhtd = (lambda x: x.transpose(1, 2)) if layout == "bthd" else (lambda x: x)
    lam = torch.cumsum(gates.to(F64), dim=1 if layout == "bthd" else 2)
    lam = lam.transpose(1, 2) if layout == "bthd" else lam
    doc = None if doc is None else doc.expand(q.shape[0], doc.shape[-1])
    out = naive.forgetting_attention(*(to_bhtd(x.to(F64)) for x in (q, k, v)), lam, scale, doc)
    return to_bhtd(out)


def _assert_same_gradients(out, ref, inputs):
    """The gradients of out and of the reference for one random grad_out agree to 1e-9."""
    grad_out = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, grad_out)
    want = torch.autograd.grad(ref, inputs, grad_out)
    for g, w in zip(got, want):
        assert g.shape == w.shape
        torch.testing.assert_close(g, w, rtol=1e-9, atol=1e-9)


SHAPES = [  # batch, M, N, Hq, Hk, D
    (2, 37, 37, 4, 2, 16),
    (1, 1, 1, 2, 2, 8),        # T = 1
    (1, 1, 90, 3, 1, 12),      # decode: one query against 90 keys, GQA 3
    (2, 50, 130, 2, 2, 24),    # fewer queries than keys, T not a multiple of a block
    (1, 200, 200, 2, 1, 20),   # several query blocks, head dim not a power of two
]


@pytest.mark.parametrize("layout", ["bthd", "bhtd"])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_definition_with_gradients(shape, layout):
    q, k, v, gates = _inputs(*shape, layout=layout)
    out = foxcompile.forgetting_attention(q, k, v, gates, layout=layout)
    ref = _reference(q, k, v, gates, layout)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    assert out.is_contiguous() and out.shape == q.shape
    _assert_same_gradients(out, ref, (q, k, v, gates))


@pytest.mark.parametrize("layout", ["bthd", "bhtd"])
@pytest.mark.parametrize("head_dim, value_dim", [(16, 24), (24, 8)])
def test_value_head_dim_of_its_own(head_dim, value_dim, layout):
    """v may be wider or narrower than q and k: out has v's head dim, gradients match."""
    q, k, _, gates = _inputs(2, 30, 41, 4, 2, head_dim, layout=layout)
    v_shape = (*k.shape[:-1], value_dim)
    v = torch.randn(v_shape, dtype=F64, generator=torch.Generator().manual_seed(1)).requires_grad_()
    out = foxcompile.forgetting_attention(q, k, v, gates, layout=layout, epsilon=0.0)
    ref = _reference(q, k, v, gates, layout, scale=head_dim ** -0.5)
    assert out.shape == (*q.shape[:-1], value_dim) and out.is_contiguous()
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    _assert_same_gradients(out, ref, (q, k, v, gates))
    lam = gates.detach().cumsum(1 if layout == "bthd" else 2)
    lam = (lam.transpose(1, 2) if layout == "bthd" else lam).requires_grad_()
    torch.library.opcheck(torch.ops.foxcompile.attention.default,
                          (q, k, v, lam, 0.3, 1e-4, Prune.GUARDED, layout, "test"))
    with FlopCounterMode(display=False) as counter:
        foxcompile.forgetting_attention(q.detach(), k.detach(), v.detach(), gates.detach(),
                                        layout=layout, epsilon=0.0)
    pairs = 2 * 4 * sum(min(41, 11 + i + 1) for i in range(30))   # batch x heads x causal pairs
    assert counter.get_total_flops() == 2 * (head_dim + value_dim) * pairs


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_low_precision_close_to_fp64(dtype):
    q, k, v, gates = _inputs(2, 45, 45, 2, 2, 16, dtype=dtype, grad=False)
    out = foxcompile.forgetting_attention(q, k, v, gates, layout="bthd")
    assert out.dtype == dtype
    ref = _reference(q, k, v, gates)
    tol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 2e-2}[dtype]
    assert (out.to(F64) - ref).norm() / ref.norm() < tol


def test_gradcheck_with_pruning_on():
    q, k, v, gates = _inputs(1, 20, 33, 2, 1, 8, gate_bias=-1.0)
    assert torch.autograd.gradcheck(
        lambda *x: foxcompile.forgetting_attention(*x, epsilon=1e-3, layout="bthd"), (q, k, v, gates))


def test_backward_without_the_saved_bound():
    """The forward saves the score bound U for the backward; called without it (a graph compiled
    against the earlier schema, from Inductor's cache) the backward recomputes it, same result."""
    q, k, v, gates = _inputs(2, 20, 30, 4, 2, 8)
    lam = gates.detach().cumsum(1).transpose(1, 2).contiguous()
    lam[:, :, 5] = float("inf")  # a masked key: U places its stand-in lam
    out, lse, start, bound = torch.ops.foxcompile.attention(q, k, v, lam, 0.3, 1e-3,
                                                             Prune.GUARDED, "bthd", "test")
    grad = torch.randn_like(out)
    backward = torch.ops.foxcompile.attention_backward
    saved = backward(grad, q, k, v, lam, out, lse, start, 0.3, "bthd", None, bound)
    recomputed = backward(grad, q, k, v, lam, out, lse, start, 0.3, "bthd")
    for a, b in zip(saved, recomputed):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert bound.shape == (2, 4) and bool(torch.isfinite(bound).all())


def test_opcheck_contiguous_and_strided():
    q, k, v, gates = _inputs(2, 20, 30, 4, 2, 8)
    lam = gates.detach().cumsum(1).transpose(1, 2).requires_grad_()
    args = (q, k, v, lam, 0.3, 1e-4, Prune.GUARDED, "bthd", "test")
    torch.library.opcheck(torch.ops.foxcompile.attention.default, args)
    # strided: bhtd tensors viewed as bthd, lam broadcast over the batch
    qs = torch.randn(2, 4, 20, 8, dtype=F64).transpose(1, 2).requires_grad_()
    ks = torch.randn(2, 2, 30, 8, dtype=F64).transpose(1, 2).requires_grad_()
    lam_b = lam.detach()[:1].clone().requires_grad_()
    torch.library.opcheck(torch.ops.foxcompile.attention.default,
                          (qs, ks, ks.detach().clone().requires_grad_(), lam_b, 0.3, 1e-4,
                           Prune.PROVEN, "bthd", "test"))


def test_direct_op_float32_rejects_nothing_and_matches():
    q, k, v, gates = _inputs(1, 64, 64, 2, 2, 16, dtype=torch.float32, grad=False)
    out = foxcompile.forgetting_attention(q, k, v, gates, scale=0.1, layout="bthd")
    ref = _reference(q, k, v, gates, scale=0.1)
    assert (out.to(F64) - ref).abs().max() < 1e-5


@pytest.mark.parametrize("bad, message", [
    (lambda q, k, v, g: (q[..., :4], k, v, g), "head dim"),
    (lambda q, k, v, g: (q, k, v[:, :-1], g), "all but the head dim"),
    (lambda q, k, v, g: (q.float(), k, v, g), "share a dtype"),
    (lambda q, k, v, g: (q[:, :, :3], k, v, g[..., :3]), "multiple of"),
    (lambda q, k, v, g: (q, k, v, g[:, :-1]), "log_fgate must have shape"),
    (lambda q, k, v, g: (q[0], k, v, g), "4-D"),
    (lambda q, k, v, g: (q, k, v, g.to(torch.int64)), "floating point"),
    (lambda q, k, v, g: (q, k, v, g.to("meta")), "one device"),
    (lambda q, k, v, g: (torch.cat([q, q], 1), k, v, g), "queries <= keys"),
])
def test_bad_input_errors(bad, message):
    q, k, v, gates = _inputs(1, 10, 10, 4, 2, 8, grad=False)
    with pytest.raises((ValueError, TypeError), match=message):
        foxcompile.forgetting_attention(*bad(q, k, v, gates), layout="bthd")
    with pytest.raises(ValueError, match="layout"):
        foxcompile.forgetting_attention(q, k, v, gates, layout="bsd")
    with pytest.raises(ValueError, match="epsilon"):
        foxcompile.forgetting_attention(q, k, v, gates, epsilon=-1.0, layout="bthd")


def test_nan_stays_visible_like_eager():
    q, k, v, gates = _inputs(1, 300, 300, 2, 2, 8, gate_bias=-3.0, grad=False)
    q[0, 250, 1, 3] = float("nan")      # one query row of head 1
    v[0, 20, 0, 0] = float("nan")       # a distant value of head 0 (pruned tiles would hide it)
    out = foxcompile.forgetting_attention(q, k, v, gates, layout="bthd")
    ref = _reference(q, k, v, gates)
    assert torch.equal(out.isnan(), ref.isnan())
    assert out.isnan().any()
    torch.testing.assert_close(out.nan_to_num(), ref.nan_to_num(), rtol=1e-6, atol=1e-6)


def _fast_decay(n=600, heads=2, head_dim=16, seed=1):
    gen = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(1, heads, n, head_dim, generator=gen, dtype=F64), dim=-1)
    k = F.normalize(torch.randn(1, heads, n, head_dim, generator=gen, dtype=F64), dim=-1)
    v = torch.randn(1, heads, n, head_dim, generator=gen, dtype=F64)
    lam = F.logsigmoid(torch.randn(1, heads, n, generator=gen, dtype=F64) - 1.0).cumsum(-1)
    return q, k, v, lam


def _run(q, k, v, lam, prune, epsilon=foxcompile.DEFAULT_EPSILON):
    out, _, start, _ = torch.ops.foxcompile.attention(q, k, v, lam, q.shape[-1] ** -0.5, epsilon,
                                                   prune, "bhtd", "test")
    return out, start


def test_pruning_guarantee_holds():
    q, k, v, lam = _fast_decay()
    pruned, start = _run(q, k, v, lam, Prune.PROVEN)
    dense, dense_start = _run(q, k, v, lam, Prune.OFF)
    assert int(start.sum()) > 0 and int(dense_start.sum()) == 0   # tiles were skipped
    eps = foxcompile.DEFAULT_EPSILON
    bound = 2 * eps / (1 - eps) * v.norm(dim=-1).amax()
    assert (pruned - dense).norm(dim=-1).max() <= bound
    assert (pruned - dense).abs().max() > 0  # pruning really changed something (tiny)


def test_decoding_sized_calls_prune_only_when_asked(monkeypatch):
    """A call of at most DECODE_ROWS query rows per kv head runs dense by default (its plan
    would read the whole cache, more than it lets the kernel skip: kernels.may_prune), equal to
    Prune.OFF; FOXCOMPILE_DECODE_PRUNING=1 makes it prune within ACP's bound; a call with more
    rows prunes either way; any other value of the variable is an error."""
    q, k, v, lam = _fast_decay()
    few = q[:, :, -(DECODE_ROWS // (q.shape[1] // k.shape[1])):]   # M x G = DECODE_ROWS
    monkeypatch.delenv(DECODE_PRUNING_ENV, raising=False)
    default, start = _run(few, k, v, lam, Prune.PROVEN)
    dense, _ = _run(few, k, v, lam, Prune.OFF)
    assert int(start.sum()) == 0 and torch.equal(default, dense)
    _, start = _run(q[:, :, -(few.shape[2] + 1):], k, v, lam, Prune.PROVEN)
    assert int(start.sum()) > 0                               # one row more: prunes
    monkeypatch.setenv(DECODE_PRUNING_ENV, "1")
    pruned, start = _run(few, k, v, lam, Prune.PROVEN)
    assert int(start.sum()) > 0
    eps = foxcompile.DEFAULT_EPSILON
    assert (pruned - dense).norm(dim=-1).max() <= 2 * eps / (1 - eps) * v.norm(dim=-1).amax()
    monkeypatch.setenv(DECODE_PRUNING_ENV, "sometimes")
    with pytest.raises(ValueError, match=DECODE_PRUNING_ENV):
        _run(few, k, v, lam, Prune.PROVEN)


@pytest.mark.parametrize("n_queries", [1, 600])
def test_masked_tail_prunes_within_the_bound(n_queries, monkeypatch):
    """Keys after position p masked (lam = +inf: a static cache's unfilled slots, right
    padding): the plan measures each query against the last unmasked key at or before it, so
    the guard does not read the tail as a rising gate and the tiles far behind p are skipped;
    every row stays within ACP's bound of the dense answer over the keys it sees (j <= p and
    j <= its position), each row's own lam being that of its last unmasked key. (The one-query
    case is decoding-sized: it prunes only when asked.)"""
    monkeypatch.setenv(DECODE_PRUNING_ENV, "1")
    q, k, v, lam = _fast_decay()
    p = 450
    lam_op = lam.clone()
    lam_op[..., p + 1:] = float("inf")
    q = q[:, :, -n_queries:]
    pruned, start = _run(q, k, v, lam_op, Prune.GUARDED)
    assert int(start.sum()) > 0, "the masked tail turned pruning off"
    n_keys = k.shape[2]
    positions = torch.arange(n_keys - n_queries, n_keys)
    own = lam[..., positions.clamp(max=p)]                         # each row's reference lam
    scores = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    scores = scores + own[..., None] - lam[..., None, :]
    keys = torch.arange(n_keys)
    hidden = (keys[None, :] > positions[:, None]) | (keys[None, :] > p)
    dense = torch.matmul(torch.softmax(scores.masked_fill(hidden, float("-inf")), -1), v)
    eps = foxcompile.DEFAULT_EPSILON
    bound = 2 * eps / (1 - eps) * v.norm(dim=-1).amax()
    assert (pruned - dense).norm(dim=-1).max() <= bound + 1e-9


def test_guard_turns_pruning_off_where_lam_rises():
    q, k, v, lam = _fast_decay()
    block_n = tile_sizes(q.shape[-1])[1]
    spiked = lam.clone()
    spiked[0, 0, block_n - 1::block_n] += 40.0   # upward spikes exactly at tile corners, head 0
    guarded, start = _run(q, k, v, spiked, Prune.GUARDED)
    assert int(start[0, 0].sum()) == 0 and int(start[0, 1].sum()) > 0
    scale = q.shape[-1] ** -0.5
    ref = naive.forgetting_attention(q, k, v, spiked, scale)
    torch.testing.assert_close(guarded[0, 0], ref[0, 0], rtol=1e-12, atol=1e-12)


def test_plan_boundaries_respect_offset_and_terminate():
    q, k, v, lam = _fast_decay(n=700)
    for n_queries in (1, 5, 129, 700):
        plan = make_plan(q[:, :, -n_queries:], k, lam, 0.25, 0.5, Prune.PROVEN)  # huge epsilon
        block_m, block_n = plan.block_m, plan.block_n
        first_rows = 700 - n_queries + torch.arange(plan.start.shape[-1]) * block_m
        assert (plan.start.long() <= first_rows // block_n).all()     # never past the diagonal
        assert (plan.start[..., 1:] >= plan.start[..., :-1]).all()


def test_flop_counter_counts_executed_flops():
    q, k, v, lam = _fast_decay()
    with FlopCounterMode(display=False) as dense_counter:
        _run(q, k, v, lam, Prune.OFF)
    with FlopCounterMode(display=False) as pruned_counter:
        _run(q, k, v, lam, Prune.PROVEN)
    n, d, heads = q.shape[2], q.shape[3], q.shape[1]
    assert dense_counter.get_total_flops() == 4 * d * heads * n * (n + 1) // 2
    assert 0 < pruned_counter.get_total_flops() < dense_counter.get_total_flops()


def test_pruning_stats_records_sites_and_heads():
    q, k, v, lam = _fast_decay()
    _run(q, k, v, lam, Prune.PROVEN)   # outside the context: nothing recorded anywhere
    with foxcompile.pruning_stats() as stats:
        _run(q, k, v, lam, Prune.PROVEN)
        _run(q, k, v, lam, Prune.PROVEN)
    rows = stats.per_head()
    assert len(rows) == 1 and rows[0]["site"] == "test" and rows[0]["calls"] == 2
    assert rows[0]["heads"] == 2 and all(0 < f < 1 for f in rows[0]["skipped_tile_fraction"])
    assert 0 < stats.skipped_fraction() < 1
    assert rows[0]["executed_flops"] < rows[0]["dense_flops"]
    assert "test" in str(stats)


# ----------------------------------------------------------------------------- packed sequences

def _doc_ids(batch, n_keys, lengths, seed=0, shuffle=False):
    """(B, N) int64 document ids: consecutive documents of the given lengths (cycled), or the
    same ids at shuffled positions (not monotone)."""
    ids = torch.cat([torch.full((n,), d) for d, n in enumerate(lengths * n_keys)])[:n_keys]
    doc = ids.expand(batch, n_keys).clone()
    if shuffle:
        gen = torch.Generator().manual_seed(seed)
        doc = doc[:, torch.randperm(n_keys, generator=gen)]
    return doc


PACKED = [  # batch, M, N, Hq, Hk, D, document lengths, shuffled
    (2, 37, 37, 4, 2, 16, [5, 11, 3], False),
    (1, 1, 1, 2, 2, 8, [1], False),              # T = 1
    (2, 20, 90, 3, 1, 12, [7, 30], False),       # queries at the end (M < N), GQA 3
    (1, 1, 60, 2, 2, 8, [13], False),            # decode: one query of the last document
    (2, 300, 300, 2, 1, 8, [40, 7, 90], False),  # several blocks: tiles of other documents skipped
    (2, 41, 41, 2, 2, 8, [4, 9], True),          # ids not monotone: exact, nothing extra skipped
]


@pytest.mark.parametrize("shape", PACKED)
def test_packed_sequences_match_definition_with_gradients(shape):
    *dims, lengths, shuffle = shape
    q, k, v, gates = _inputs(*dims, gate_bias=0.0)
    doc = _doc_ids(dims[0], dims[2], lengths, shuffle=shuffle)
    out = foxcompile.forgetting_attention(q, k, v, gates, doc=doc, layout="bthd")
    ref = _reference(q, k, v, gates, doc=doc)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    _assert_same_gradients(out, ref, (q, k, v, gates))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_packed_one_row_of_ids_pruned(dtype):
    """(N,) int32 ids broadcast over the batch, bhtd, pruning on: within the bound of docs/acp.md."""
    q, k, v, gates = _inputs(2, 150, 150, 2, 2, 16, layout="bhtd", dtype=dtype, gate_bias=-2.0,
                             grad=False)
    doc = _doc_ids(1, 150, [33, 60])[0].to(torch.int32)
    out = foxcompile.forgetting_attention(q, k, v, gates, layout="bhtd", doc=doc)
    ref = _reference(q, k, v, gates, layout="bhtd", doc=doc)
    bound = 2 * foxcompile.DEFAULT_EPSILON * v.to(F64).norm(dim=-1).amax()
    rounding = 1e-5 if dtype == torch.float32 else 1e-12
    assert (out.to(F64) - ref).norm(dim=-1).max() < bound + rounding


def test_packed_plan_skips_tiles_of_earlier_documents():
    """T = 512 in documents of 128: with 128 x 128 tiles every off-diagonal tile holds two
    documents, so only the diagonal tiles run, and the counts and FLOPs say so."""
    q, k, v, lam = _fast_decay(n=512)
    block_m, block_n = tile_sizes(q.shape[-1])
    doc = (torch.arange(512) // 128)[None]
    plan = make_plan(q, k, lam, 0.25, 0.0, Prune.OFF, doc=doc)
    assert plan.start.tolist() == [[[0, 1, 2, 3]] * 2]
    counts = tile_counts(plan.start, 512, 512, block_m, block_n)
    assert counts.skipped_tiles.tolist() == [[6.0, 6.0]] and counts.causal_tiles[0, 0] == 10
    pos = torch.arange(512)
    uneven = ((pos >= 200).long() + (pos >= 300).long())[None]   # documents [0, 200, 300, 512)
    shifted = make_plan(q, k, lam, 0.25, 0.0, Prune.OFF, doc=uneven)
    assert shifted.start.tolist() == [[[0, 0, 1, 2]] * 2]
    shuffled = make_plan(q, k, lam, 0.25, 0.0, Prune.OFF, doc=doc.flip(-1))
    assert int(shuffled.start.sum()) == 0                     # decreasing ids: nothing skipped
    with FlopCounterMode(display=False) as counter:
        out, _, start, _ = torch.ops.foxcompile.attention(q, k, v, lam, 0.25, 0.0, Prune.OFF, "bhtd",
                                                       "test", doc=doc)
    heads, d = q.shape[1], q.shape[3]
    assert counter.get_total_flops() == 4 * d * heads * 4 * (128 * 129 // 2)
    torch.testing.assert_close(out, naive.forgetting_attention(q, k, v, lam, 0.25, doc))


def test_packed_opcheck():
    q, k, v, gates = _inputs(2, 20, 30, 4, 2, 8)
    lam = gates.detach().cumsum(1).transpose(1, 2).requires_grad_()
    doc = _doc_ids(2, 30, [7, 12])
    torch.library.opcheck(torch.ops.foxcompile.attention.default,
                          (q, k, v, lam, 0.3, 1e-4, Prune.GUARDED, "bthd", "test"), {"doc": doc})


@pytest.mark.parametrize("bad, message", [
    (lambda doc: doc.float(), "int32 or int64"),
    (lambda doc: doc[:, :-1], "doc must have shape"),
    (lambda doc: doc[None], "doc must have shape"),
    (lambda doc: doc.to("meta"), "q's device"),
    (lambda doc: [0] * 10, "must be a tensor"),
])
def test_packed_bad_doc_errors(bad, message):
    q, k, v, gates = _inputs(2, 10, 10, 4, 2, 8, grad=False)
    doc = _doc_ids(2, 10, [3])
    with pytest.raises((ValueError, TypeError), match=message):
        foxcompile.forgetting_attention(q, k, v, gates, doc=bad(doc), layout="bthd")


def test_document_start_blocks_never_skip_a_visible_pair():
    """Brute force on small blocks: every skipped tile has no (i, j) with j <= P + i in one
    document; for ids that never decrease, every tile of earlier documents is skipped."""
    from foxcompile.kernels.plan import document_start_blocks
    gen = torch.Generator().manual_seed(3)
    for trial in range(40):
        n_keys = int(torch.randint(1, 60, (1,), generator=gen))
        n_queries = int(torch.randint(1, n_keys + 1, (1,), generator=gen))
        block_m, block_n = (4, 4) if trial % 2 else (8, 4)
        ends = torch.rand(2, n_keys, generator=gen) < 0.15
        doc = torch.cumsum(ends.long(), dim=-1)
        if trial % 3 == 0:
            doc[1] = doc[1, torch.randperm(n_keys, generator=gen)]        # row 1 not monotone
        start = document_start_blocks(doc, n_queries, block_m, block_n)
        offset = n_keys - n_queries
        rows = offset + torch.arange(n_queries)
        visible = (torch.arange(n_keys)[None, :] <= rows[:, None]) & \
            (doc[:, rows, None] == doc[:, None, :])                        # (B, M, N)
        for b in range(2):
            monotone = bool((doc[b, 1:] >= doc[b, :-1]).all())
            for m in range(start.shape[-1]):
                block = visible[b, m * block_m:(m + 1) * block_m]
                seen = block.any(dim=0).nonzero()
                first = int(seen.min()) // block_n if len(seen) else None
                assert first is None or int(start[b, m]) <= first
                if monotone:
                    first_row = offset + m * block_m
                    earlier = [n for n in range(-(-n_keys // block_n))
                               if doc[b, min(n * block_n + block_n - 1, n_keys - 1)] < doc[b, first_row]]
                    assert int(start[b, m]) == len(earlier)
                else:
                    assert int(start[b, m]) == 0
