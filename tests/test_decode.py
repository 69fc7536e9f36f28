"""The decode engine (foxcompile/kernels/decode.py): split-K forward for few queries, against the
float64 definition (naive.py) and the blockwise reference (reference.py), and the engine choice
(kernels/__init__.py, FOXCOMPILE_ENGINE).

CPU: the kernels under Triton's interpreter (as tests/test_kernels.py runs them), small shapes;
the number of key splits is forced through FOXCOMPILE_KERNEL_CONFIG's "decode" entry where a case
needs one split (the kernel writes out and lse itself), several (the combine kernel), or more
splits than key steps (programs with nothing to read). GPU (@pytest.mark.gpu, skipped without
CUDA): bfloat16/float16, long caches with pruning, CUDA-graph capture of a decode call.
"""
import json
import math

import pytest
import torch
import torch.nn.functional as F

import foxcompile
from foxcompile import kernels
from foxcompile.contract import Prune
from foxcompile.kernels import decode, naive, reference
from foxcompile.kernels import plan as plan_mod
from helpers import capture_cuda_graph
from test_kernels import (HAS_CUDA, alloc_like, check_case, interp, make_inputs, packed_doc,
                          rel)

CPU = torch.device("cpu")
# ||out - ref|| / ||ref|| against float64: the interpreter computes in float32 (inputs rounded to
# their dtype first, which the reference sees too).
TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


@pytest.fixture
def interpret_env(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FOXCOMPILE_ENGINE", raising=False)
    monkeypatch.delenv("FOXCOMPILE_KERNEL_CONFIG", raising=False)
    return decode


def force_splits(monkeypatch, splits):
    """Key splits per kv head (0: the engine's choice) through FOXCOMPILE_KERNEL_CONFIG."""
    if splits:
        monkeypatch.setenv("FOXCOMPILE_KERNEL_CONFIG", json.dumps({"decode": [32, 1, 1, splits]}))


def fp64_lse(q, k, lam, scale, doc=None):
    """The natural-log normaliser of every row in float64, unpruned (B, Hq, M)."""
    q_heads, n_queries, n_keys = q.shape[1], q.shape[2], k.shape[2]
    offset = n_keys - n_queries
    s = torch.matmul(q.double(), k.double().repeat_interleave(q_heads // k.shape[1], 1)
                     .transpose(-2, -1)) * scale
    s = s + lam.double()[..., offset:, None] - lam.double()[..., None, :]
    hidden = torch.arange(n_keys)[None, :] > torch.arange(n_queries)[:, None] + offset
    if doc is not None:
        hidden = hidden | (doc[:, offset:, None] != doc[:, None, :])[:, None]
    return torch.logsumexp(s.masked_fill(hidden, float("-inf")), -1)


def run_decode(q, k, v, lam, plan, scale, layout, doc=None):
    out = alloc_like(q, layout).fill_(float("nan"))   # every element must be written
    lse = decode.forward(q, k, v, lam, plan, scale, out, doc=doc)
    return out, lse


# ----------------------------------------------------------------------------- CPU (interpreter)

DENSE = [
    # batch, Hq, Hk, M, N, D, dtype, layout, splits (0: the engine's choice)
    pytest.param(1, 1, 1, 1, 1, 16, torch.float32, "bhtd", 0, id="M1-N1-D16"),
    pytest.param(2, 2, 1, 1, 17, 48, torch.float16, "bthd", 0, id="M1-N17-G2-D48-bthd"),
    pytest.param(1, 4, 1, 2, 129, 64, torch.bfloat16, "bhtd", 3, id="M2-N129-G4-D64-split3"),
    pytest.param(1, 8, 2, 3, 1000, 80, torch.float16, "bthd", 0, id="M3-N1000-G4-D80-bthd"),
    pytest.param(2, 3, 3, 7, 129, 128, torch.float32, "bthd", 1, id="M7-N129-G1-D128-direct"),
    pytest.param(1, 4, 2, 7, 1000, 16, torch.bfloat16, "bhtd", 5, id="M7-N1000-G2-D16-split5"),
    pytest.param(1, 2, 2, 3, 17, 64, torch.float32, "bhtd", 40, id="M3-N17-empty-splits"),
    pytest.param(1, 2, 1, 1, 1000, 256, torch.bfloat16, "bthd", 0, id="M1-N1000-G2-D256"),
    pytest.param(1, 2, 1, 2, 129, 192, torch.float32, "bhtd", 2, id="M2-N129-G2-D192"),
    pytest.param(1, 16, 1, 4, 300, 32, torch.float16, "bthd", 0, id="rows64-G16"),
    pytest.param(1, 32, 1, 4, 200, 16, torch.float32, "bhtd", 3, id="rows128-G32"),
]


@interp
@pytest.mark.parametrize("batch,q_heads,kv_heads,n_queries,n_keys,head_dim,dtype,layout,splits",
                         DENSE)
def test_decode_matches_fp64(interpret_env, monkeypatch, batch, q_heads, kv_heads, n_queries,
                             n_keys, head_dim, dtype, layout, splits):
    """Unpruned: out and lse against the float64 definition, for any M <= the query block, N not
    a multiple of the key step, GQA groups, head dims that are not powers of two, strided views."""
    force_splits(monkeypatch, splits)
    q, k, v, lam = make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, CPU,
                               layout=layout, seed=n_keys + head_dim)
    scale = head_dim ** -0.5
    assert decode.unsupported_reason(q, k, v) is None
    plan = plan_mod.make_plan(q, k, lam, scale, 0.0, Prune.OFF)
    out, lse = run_decode(q, k, v, lam, plan, scale, layout)
    ref = naive.forgetting_attention(q.double(), k.double(), v.double(), lam.double(), scale)
    assert rel(out, ref) < TOL[dtype]
    assert lse.dtype == torch.float32 and lse.shape == (batch, q_heads, n_queries)
    assert (lse.double() - fp64_lse(q, k, lam, scale)).abs().max() < 1e-4


PRUNED = [
    # batch, Hq, Hk, M, N, D, dtype, layout, splits, decay
    pytest.param(1, 4, 2, 1, 1000, 64, torch.float32, "bthd", 0, (1.0, 8.0), id="M1-G2-bthd"),
    pytest.param(2, 4, 1, 3, 1000, 48, torch.float16, "bhtd", 6, (1.0, 16.0), id="M3-G4-split6"),
    pytest.param(1, 2, 2, 7, 700, 80, torch.bfloat16, "bthd", 1, (1.0, 4.0), id="M7-G1-direct"),
    pytest.param(1, 4, 4, 2, 1000, 128, torch.float32, "bhtd", 40, (1.0, 4.0), id="M2-many-splits"),
]


@interp
@pytest.mark.parametrize("batch,q_heads,kv_heads,n_queries,n_keys,head_dim,dtype,layout,splits,"
                         "decay", PRUNED)
def test_decode_pruned_reads_only_unpruned_keys(interpret_env, monkeypatch, batch, q_heads,
                                                kv_heads, n_queries, n_keys, head_dim, dtype,
                                                layout, splits, decay):
    """A fast-decaying gate: the same function as the reference that skips the same tiles, within
    ACP's bound of the dense answer (docs/acp.md), and no pruned key is ever read (after the plan
    was made, k and v are NaN before the kv head's first unpruned key, lam before each query
    head's own: one such key read into a row would make the output NaN)."""
    force_splits(monkeypatch, splits)
    epsilon = math.exp(-10.0)
    q, k, v, lam = make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, CPU,
                               layout=layout, decay=decay, seed=7)
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, epsilon, Prune.PROVEN, v=v)
    group = q_heads // kv_heads
    start = plan.start[..., 0]
    first = start.unflatten(1, (kv_heads, group)).amin(-1) * plan.block_n
    assert (first > 0).all(), "the case was meant to prune some keys of every kv head"
    dense = naive.forgetting_attention(q.double(), k.double(), v.double(), lam.double(), scale)
    ref_out = torch.empty(q.shape, dtype=torch.float64)
    ref_lse = reference.forward(q.double(), k.double(), v.double(), lam.double(), plan, scale,
                                ref_out)

    first = first.tolist()
    k, v, lam = k.clone(), v.clone(), lam.clone()          # (copies keep the views' strides)
    for b in range(batch):
        for hk in range(kv_heads):
            k[b, hk, :first[b][hk]] = float("nan")
            v[b, hk, :first[b][hk]] = float("nan")
        for h in range(q_heads):   # lam is per query head: NaN before each head's own start
            lam[b, h, :start[b, h].item() * plan.block_n] = float("nan")
    out, lse = run_decode(q, k, v, lam, plan, scale, layout)
    assert rel(out, ref_out) < TOL[dtype]
    assert (lse.double() - ref_lse).abs().max() < 1e-4
    vmax = v.double().nan_to_num(0.0).norm(dim=-1).amax().item()
    row_move = (out.double() - dense).norm(dim=-1).amax().item()
    assert row_move <= 2 * epsilon * vmax + 4 * TOL[dtype] * dense.norm(dim=-1).amax().item()
    fraction = plan_mod.unread_key_fraction(plan.start, n_keys, plan.block_n, group)
    assert fraction.shape == (batch, kv_heads) and (fraction > 0).all()


@interp
def test_decode_heads_of_a_group_start_apart(interpret_env, monkeypatch):
    """The query heads sharing a kv head prune differently (one forgets within a few tokens, one
    remembers everything): the program reads from the earliest start and masks the keys before
    each row's own, exactly as the reference skips them."""
    force_splits(monkeypatch, 4)
    q, k, v, lam = make_inputs(1, 2, 1, 2, 900, 32, torch.float32, CPU, seed=3)
    lam[:, 0] = torch.linspace(0.0, -900 * 0.02, 900)       # head 0 forgets within ~300 keys
    lam[:, 1] = torch.linspace(0.0, -1e-3, 900)             # head 1 barely decays
    scale = 32 ** -0.5
    # small scores and a large tolerance, so that what head 0 drops is measurable (reading it
    # would show)
    q = q * 0.01
    plan = plan_mod.make_plan(q, k, lam, scale, 0.9, Prune.PROVEN)
    assert plan.start[0, 0, 0] > 0 and plan.start[0, 1, 0] == 0
    ref_out = torch.empty(q.shape, dtype=torch.float64)
    reference.forward(q.double(), k.double(), v.double(), lam.double(), plan, scale, ref_out)
    dense = naive.forgetting_attention(q.double(), k.double(), v.double(), lam.double(), scale)
    assert rel(ref_out[:, 0], dense[:, 0]) > 1e-4 and rel(ref_out[:, 1], dense[:, 1]) < 1e-12
    out, _ = run_decode(q, k, v, lam, plan, scale, "bhtd")
    assert rel(out[:, 0], ref_out[:, 0]) < 1e-5 and rel(out[:, 1], ref_out[:, 1]) < 1e-5


@interp
@pytest.mark.parametrize("monotone,prune,splits", [(True, Prune.OFF, 3), (True, Prune.PROVEN, 0),
                                                   (False, Prune.OFF, 1)])
def test_decode_packed_sequences(interpret_env, monkeypatch, monotone, prune, splits):
    """Document ids: a query sees only keys of its own document (which may lie entirely in some
    splits and not at all in others); monotone ids also skip the earlier documents' blocks."""
    force_splits(monkeypatch, splits)
    batch, n_keys = 2, 700
    q, k, v, lam = make_inputs(batch, 4, 2, 3, n_keys, 32, torch.float32, CPU, layout="bthd",
                               decay=(2.0, 64.0), seed=5)
    doc = packed_doc(batch, n_keys, 150, monotone)
    scale = 32 ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, 1e-3, prune, doc=doc)
    assert bool((plan.start > 0).any()) == monotone
    out, lse = run_decode(q, k, v, lam, plan, scale, "bthd", doc=doc)
    ref_out = torch.empty(q.shape, dtype=torch.float64)
    ref_lse = reference.forward(q.double(), k.double(), v.double(), lam.double(), plan, scale,
                                ref_out, doc=doc)
    assert rel(out, ref_out) < 1e-5
    assert (lse.double() - ref_lse).abs().max() < 1e-4
    if prune == Prune.OFF:
        dense = naive.forgetting_attention(q.double(), k.double(), v.double(), lam.double(),
                                           scale, doc)
        assert rel(out, dense) < 1e-5


@interp
@pytest.mark.parametrize("case", [
    # batch, Hq, Hk, M, N, D, dtype, layout, prune, decay
    (1, 4, 2, 1, 300, 48, torch.float32, "bthd", Prune.OFF, (2.0, 64.0)),
    (1, 4, 1, 3, 600, 64, torch.float16, "bhtd", Prune.PROVEN, (1.0, 8.0)),
], ids=["M1-dense-bthd", "M3-pruned-G4"])
def test_decode_forward_then_backward(interpret_env, monkeypatch, case):
    """The engine's backward (the Triton backward on the decode forward's out and lse): gradients
    of q, k, v and lam against float64, pruned against the reference (test_kernels.check_case)."""
    *shape, dtype, layout, prune, decay = case
    force_splits(monkeypatch, 3)
    check_case(decode, *shape, dtype, CPU, layout=layout, prune=prune, epsilon=1e-3, decay=decay,
               expect_skips=prune != Prune.OFF, tol={torch.float32: 1e-4, torch.float16: 4e-3}[dtype])


@interp
@pytest.mark.parametrize("n_queries,epsilon", [(1, 0.0), (2, math.exp(-10.0))])
def test_op_runs_decode_engine_with_autograd(interpret_env, monkeypatch, n_queries, epsilon):
    """foxcompile.forgetting_attention with one or two queries against a longer cache runs the
    decode forward (automatic choice) and its gradients are right."""
    calls = []
    real = decode.forward
    monkeypatch.setattr(decode, "forward", lambda *a, **kw: calls.append(1) or real(*a, **kw))
    g = torch.Generator().manual_seed(11)
    n_keys, heads, kv_heads, head_dim = 400, 4, 2, 32
    q = torch.randn(2, n_queries, heads, head_dim, generator=g).requires_grad_()
    k = torch.randn(2, n_keys, kv_heads, head_dim, generator=g).requires_grad_()
    v = torch.randn(2, n_keys, kv_heads, head_dim, generator=g).requires_grad_()
    gates = F.logsigmoid(torch.randn(2, n_keys, heads, generator=g) - 1.0).requires_grad_()
    out = foxcompile.forgetting_attention(q, k, v, gates, layout="bthd", epsilon=epsilon)
    assert calls, "the decode engine did not run"
    grad = torch.randn(out.shape, generator=g)
    got = torch.autograd.grad(out, (q, k, v, gates), grad)
    leaves = [x.detach().double().requires_grad_() for x in (q, k, v, gates)]
    lam = leaves[3].cumsum(1).transpose(1, 2)
    ref = naive.forgetting_attention(*(x.transpose(1, 2) for x in leaves[:3]), lam,
                                     head_dim ** -0.5).transpose(1, 2)
    want = torch.autograd.grad(ref, leaves, grad.double())
    assert rel(out, ref) < 2e-5
    for a, b in zip(got, want):
        assert rel(a, b, 1e-3 * b.norm().item() + 1e-6) < 2e-4


def test_gluon_engines_pair_their_kernels():
    """gluon runs the Gluon kernels both ways, gluon-fwd the Gluon forward with tl's backward,
    gluon-bwd tl's forward with the Gluon backward; all three ask Gluon's unsupported_reason
    and fall back to tl."""
    from foxcompile import kernels
    from foxcompile.kernels import gluon_attention as ga, triton_attention as ta
    pairs = {"gluon": (ga.forward, ga.backward), "gluon-fwd": (ga.forward, ta.backward),
             "gluon-bwd": (ta.forward, ga.backward)}
    for name, (forward, backward) in pairs.items():
        engine = kernels.ENGINES[name]
        assert (engine.module.forward, engine.module.backward) == (forward, backward), name
        assert engine.module.unsupported_reason is ga.unsupported_reason
        assert engine.fallback == "tl"


def test_gluon_backward_query_rows(interpret_env):
    """The Gluon backward's per-query buffer, made in one launch: per (b, h) a row (lam_q - lse)
    log2 e and a row of the dO.O dots, padded to 64 queries with -inf and 0 (a padded query gets
    p = 0), equal bit for bit to the same in torch; strided lam, lse, out and grad_out."""
    from foxcompile.kernels import gluon_attention as ga
    from foxcompile.kernels import triton_attention as ta
    batch, heads, n_queries, n_keys, head_dim = 2, 3, 70, 100, 48
    g = torch.Generator().manual_seed(5)
    lam = torch.randn(batch, n_keys, heads, generator=g).transpose(1, 2)
    lse = torch.randn(batch, n_queries, heads, generator=g).transpose(1, 2)
    out, grad_out = (torch.randn(batch, n_queries, heads, head_dim, generator=g)
                     .to(torch.bfloat16).transpose(1, 2) for _ in range(2))
    rows = ta.query_rows(lam, lse, out, grad_out, ga.LOG2E)
    assert rows.shape == (batch * heads * 2, 128) and rows.dtype == torch.float32
    rows = rows.view(batch, heads, 2, 128)
    want = (lam[..., n_keys - n_queries:] - lse) * ga.LOG2E
    assert torch.equal(rows[:, :, 0, :n_queries], want)
    assert torch.equal(rows[:, :, 1, :n_queries], ta.row_dots(out, grad_out))
    torch.testing.assert_close(rows[:, :, 1, :n_queries],
                               (out.double() * grad_out.double()).sum(-1).float())
    assert torch.isneginf(rows[:, :, 0, n_queries:]).all()
    assert (rows[:, :, 1, n_queries:] == 0).all()


def finish_dq_case(head_dim, dtype, device):
    """(inputs of triton_attention.finish_dq, the dq and dlam torch makes of them): M < N, a
    strided dq filled with NaN, dlam with values before the queries' positions."""
    batch, heads, n_queries, n_keys = 2, 3, 150, 170
    g = torch.Generator().manual_seed(head_dim)
    dq_acc = torch.randn(batch, heads, n_queries, head_dim, generator=g) * 40
    row_sums = torch.randn(batch, heads, n_queries, 16, generator=g)
    dlam = torch.randn(batch, heads, n_keys, generator=g)
    dq = torch.full((batch, n_queries, heads, head_dim), float("nan"), dtype=dtype).transpose(1, 2)
    dq_acc, row_sums, dlam, dq = (x.to(device) for x in (dq_acc, row_sums, dlam, dq))
    scale = head_dim ** -0.5
    want_dq = torch.empty_like(dq)
    torch.mul(dq_acc, scale, out=want_dq)
    want_dlam = dlam.clone()
    want_dlam[..., n_keys - n_queries:] += row_sums[..., 0]
    return (dq_acc, row_sums, scale, dq, dlam), want_dq, want_dlam


@pytest.mark.parametrize("head_dim, dtype", [(64, torch.bfloat16), (128, torch.float16),
                                             (48, torch.bfloat16)])
def test_gluon_backward_finish_dq(interpret_env, head_dim, dtype):
    """The Gluon backward's last pass, one launch: dq = dq_acc * scale into a strided dq of the
    inputs' dtype, and the dS row sums (column 0) added into dlam at the queries' positions,
    as torch.mul and the in-place add it replaces compute them; the keys before the queries
    keep their dlam. Equal bit for bit, except that Triton's interpreter rounds float32 to
    bfloat16 towards zero (compiled, it rounds to nearest even: tests/test_gpu.py checks the
    bits there), so bfloat16 here is within one unit in the last place."""
    from foxcompile.kernels import triton_attention as ta
    args, want_dq, want_dlam = finish_dq_case(head_dim, dtype, "cpu")
    ta.finish_dq(*args)
    dq, dlam = args[3], args[4]
    assert torch.equal(dlam, want_dlam)
    if dtype == torch.bfloat16:
        torch.testing.assert_close(dq.float(), want_dq.float(), atol=0.0, rtol=2.0 ** -7)
    else:
        assert torch.equal(dq, want_dq)


def test_engine_choice(monkeypatch):
    """auto: decode for a few query rows per kv head, the prefill kernels for many, the reference
    where Triton cannot run; FOXCOMPILE_ENGINE forces one (falling back when it cannot run the
    inputs), and an unknown name is an error."""
    monkeypatch.delenv("FOXCOMPILE_ENGINE", raising=False)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    k = torch.randn(1, 2, 1000, 64)

    def q(n, heads=4):
        return torch.randn(1, heads, n, 64)

    assert kernels.engine_name(q(1), k, k) == "decode"
    assert kernels.engine_for(q(1), k, k) is decode
    assert kernels.engine_name(q(300), k, k) == "tl"
    assert kernels.engine_name(q(32), k, k) == "decode"         # 32 x 2 = 64 rows
    assert kernels.engine_name(q(33), k, k) == "tl"             # 66 rows
    assert kernels.engine_name(q(1).double(), k.double(), k.double()) == "reference"
    monkeypatch.setenv("FOXCOMPILE_ENGINE", "tl")
    assert kernels.engine_for(q(1), k, k) is kernels.triton_attention
    monkeypatch.setenv("FOXCOMPILE_ENGINE", "reference")
    assert kernels.engine_for(q(1), k, k) is reference
    monkeypatch.setenv("FOXCOMPILE_ENGINE", " Decode ")
    assert kernels.engine_name(q(40), k, k) == "decode"         # 80 rows: beyond auto, forced
    assert kernels.engine_name(q(300), k, k) == "tl"            # more than the kernel holds
    assert kernels.engine_name(q(1).double(), k.double(), k.double()) == "reference"
    monkeypatch.setenv("FOXCOMPILE_ENGINE", "auto")
    assert kernels.engine_name(q(1), k, k) == "decode"
    for direction in ("forward", "backward"):                     # CPU tensors
        assert not kernels.gluon_attention.preferred(q(300), k, k, direction)
    for name in ("gluon", "gluon-fwd", "gluon-bwd"):               # sm90 only: tl on the CPU
        monkeypatch.setenv("FOXCOMPILE_ENGINE", name)
        assert kernels.engine_name(q(300, heads=2), k, k) == "tl"
        assert kernels.engine_name(q(300).double(), k.double(), k.double()) == "reference"
    monkeypatch.setenv("FOXCOMPILE_ENGINE", "gluon-someday")
    with pytest.raises(ValueError, match="FOXCOMPILE_ENGINE"):
        kernels.engine_for(q(1), k, k)
    monkeypatch.delenv("TRITON_INTERPRET")
    monkeypatch.delenv("FOXCOMPILE_ENGINE")
    assert kernels.engine_name(q(1), k, k) == "reference"       # CPU without the interpreter


def test_num_splits():
    """Splits from the shapes: about two programs per SM, at least 4 key steps each, at most 128."""
    assert decode.num_splits(12, 131072, 128, 132) == 22
    assert decode.num_splits(16 * 12, 131072, 128, 132) == 2
    assert decode.num_splits(16 * 24, 4096, 128, 132) == 1
    assert decode.num_splits(1, 300, 64, 132) == 2
    assert decode.num_splits(1, 1, 64, 132) == 1
    assert decode.num_splits(1, 1 << 24, 128, 1000) == decode.MAX_SPLITS


def test_unread_key_fraction():
    start = torch.tensor([[[3, 4], [1, 5], [0, 0], [7, 7]]], dtype=torch.int32)   # (1, 4, 2)
    per_head = plan_mod.unread_key_fraction(start, 1000, 128)
    torch.testing.assert_close(per_head, torch.tensor([[0.384, 0.128, 0.0, 0.896]],
                                                      dtype=torch.float64))
    per_kv = plan_mod.unread_key_fraction(start, 1000, 128, group=2)
    torch.testing.assert_close(per_kv, torch.tensor([[0.128, 0.0]], dtype=torch.float64))


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


@pytest.fixture
def cuda_env(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FOXCOMPILE_ENGINE", raising=False)
    monkeypatch.delenv("FOXCOMPILE_KERNEL_CONFIG", raising=False)
    return decode


GPU_CASES = [
    # batch, Hq, Hk, M, N, D, layout
    (1, 4, 4, 1, 1, 64, "bhtd"),
    (2, 8, 2, 1, 777, 64, "bthd"),
    (4, 12, 12, 2, 4099, 64, "bthd"),
    (1, 32, 8, 3, 2000, 128, "bthd"),
    (2, 4, 1, 7, 1500, 80, "bhtd"),
    (1, 16, 2, 1, 3000, 256, "bthd"),
    (1, 2, 2, 4, 900, 16, "bhtd"),
    (3, 6, 3, 5, 1000, 96, "bthd"),
]


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32], ids=str)
@pytest.mark.parametrize("case", GPU_CASES, ids=lambda c: "B{}-Hq{}-Hk{}-M{}-N{}-D{}-{}".format(*c))
def test_gpu_decode_dense(cuda_env, case, dtype):
    """Dense forward and the backward after it against float64 (check_case)."""
    *shape, layout = case
    if dtype == torch.float32 and shape[4] > 2000:
        pytest.skip("float32 covered by the smaller shapes")
    check_case(decode, *shape, dtype, torch.device("cuda"), layout=layout)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", [
    # batch, Hq, Hk, M, N, D, decay
    (2, 8, 2, 1, 4000, 64, (1.0, 32.0)),
    (1, 16, 16, 2, 8191, 128, (2.0, 512.0)),
    (1, 6, 3, 4, 3000, 80, (1.0, 8.0)),
], ids=lambda c: "B{}-Hq{}-Hk{}-M{}-N{}-D{}".format(*c[:6]))
@pytest.mark.parametrize("prune", [Prune.PROVEN, Prune.GUARDED])
def test_gpu_decode_pruned(cuda_env, case, dtype, prune):
    *shape, decay = case
    check_case(decode, *shape, dtype, torch.device("cuda"), prune=prune, decay=decay,
               layout="bthd", expect_skips=True)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_gpu_decode_packed(cuda_env, dtype):
    doc = packed_doc(2, 3000, 400, True).cuda()
    _, skipped = check_case(decode, 2, 8, 2, 2, 3000, 64, dtype, torch.device("cuda"),
                            prune=Prune.GUARDED, decay=(1.0, 32.0), layout="bthd", doc=doc)
    assert skipped > 0


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_decode_long_cache_fast_decay(cuda_env, head_dim):
    """N = 65536, one query, SYN70-like fast decay: the result against the reference that skips
    the same tiles (float64, on the GPU) and within ACP's bound of the dense answer, and most of
    the cache is never read."""
    batch, heads, kv_heads, n_keys = 2, 8, 2, 65536
    q, k, v, lam = make_inputs(batch, heads, kv_heads, 1, n_keys, head_dim, torch.bfloat16,
                               "cuda", decay=(2.0, 512.0), layout="bthd", seed=2)
    scale = head_dim ** -0.5
    epsilon = math.exp(-10.0)
    plan = plan_mod.make_plan(q, k, lam, scale, epsilon, Prune.GUARDED, v=v, norm=decode.max_norm)
    out, lse = run_decode(q, k, v, lam, plan, scale, "bthd")
    q64, k64, v64, lam64 = q.double(), k.double(), v.double(), lam.double()
    ref_out = torch.empty(q.shape, dtype=torch.float64, device="cuda")
    ref_lse = reference.forward(q64, k64, v64, lam64, plan, scale, ref_out)
    assert rel(out, ref_out) < 2e-2
    assert (lse.double() - ref_lse).abs().max().item() < 5e-2
    dense = naive.forgetting_attention(q64, k64, v64, lam64, scale)
    vmax = v64.norm(dim=-1).amax().item()
    row_move = (out.double() - dense).norm(dim=-1).amax().item()
    assert row_move <= 2 * epsilon * vmax + 0.08 * dense.norm(dim=-1).amax().item()
    # (CPU plan of the same data: 0.92-0.94 of the cache per query head; per kv head 0.98 for
    # the fast group, 0.67-0.72 for the group whose slowest head remembers ~512 tokens)
    assert plan_mod.unread_key_fraction(plan.start, n_keys, plan.block_n).mean().item() > 0.85
    unread = plan_mod.unread_key_fraction(plan.start, n_keys, plan.block_n, heads // kv_heads)
    assert unread.min().item() > 0.6


@gpu
@needs_cuda
def test_gpu_decode_cuda_graph(cuda_env):
    """Plan + decode forward captured in one CUDA graph (several splits, so the combine kernel
    too) and replayed on new data that prunes differently: the same results as eager calls."""
    shape = (2, 8, 2, 1, 8192, 64)
    dtype = torch.bfloat16
    q, k, v, lam = make_inputs(*shape, dtype, "cuda", decay=(1.0, 32.0), layout="bthd")
    scale = 64 ** -0.5
    static = [t.clone() for t in (q, k, v, lam)]
    assert decode.num_splits(2 * 2, 8192, 64, decode._multiprocessors(q.device)) > 1

    def step(q, k, v, lam):
        plan = plan_mod.make_plan(q, k, lam, scale, math.exp(-10.0), Prune.GUARDED,
                                  norm=decode.max_norm)
        out = torch.empty_like(q)
        lse = decode.forward(q, k, v, lam, plan, scale, out)
        return out, lse, plan.start

    graph, results = capture_cuda_graph(step, static)
    starts = []
    for seed, decay in ((3, (1.0, 8.0)), (4, (64.0, 4096.0))):
        new = make_inputs(*shape, dtype, "cuda", decay=decay, layout="bthd", seed=seed)
        for dst, src in zip(static, new):
            dst.copy_(src)
        graph.replay()
        eager = step(*static)
        torch.cuda.synchronize()
        for a, b in zip(results, eager):
            assert torch.equal(a, b)
        starts.append(results[2].clone())
    assert not torch.equal(starts[0], starts[1]), "the two replays should prune differently"


@gpu
@needs_cuda
def test_gpu_op_decode_autograd(cuda_env):
    """The op on CUDA with one query picks the decode engine, and autograd through it works."""
    g = torch.Generator(device="cuda").manual_seed(0)
    q = torch.randn(2, 1, 8, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    k = torch.randn(2, 5000, 2, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    v = torch.randn(2, 5000, 2, 64, device="cuda", generator=g, dtype=torch.bfloat16)
    gates = F.logsigmoid(torch.randn(2, 5000, 8, device="cuda", generator=g) - 2.0)
    assert kernels.engine_for(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)) is decode
    leaves = [x.requires_grad_() for x in (q, k, v, gates)]
    out = foxcompile.forgetting_attention(*leaves, layout="bthd")
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, grad)
    ref_leaves = [x.detach().double().requires_grad_() for x in leaves]
    lam = ref_leaves[3].cumsum(1).transpose(1, 2)
    ref = naive.forgetting_attention(*(x.transpose(1, 2) for x in ref_leaves[:3]), lam,
                                     64 ** -0.5).transpose(1, 2)
    want = torch.autograd.grad(ref, ref_leaves, grad.double())
    assert rel(out, ref) < 2e-2
    for a, b in zip(got, want):
        assert rel(a, b, 1e-2 * b.norm().item()) < 8e-2


@interp
def test_benchmark_smoke(tmp_path):
    """benchmarks/bench_decode_kernel.py --smoke: every row runs on the CPU and the gated rows
    agree with the decode engine's dense output."""
    import subprocess
    import sys
    from pathlib import Path
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "smoke.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "bench_decode_kernel.py"), "--smoke",
                    "--json", str(out)], check=True, cwd=root, capture_output=True, timeout=600)
    rows = json.loads(out.read_text())["rows"]
    keys = {r["key"] for r in rows if "error" not in r}
    assert {"decode-acp", "decode-dense", "tl-acp", "op-acp", "sdpa-flash"} <= keys
    assert next(r for r in rows if r["key"] == "decode-acp")["read"] < 1.0
