"""The Triton kernels against the float64 definition (naive.py) and the blockwise reference.

Two halves:
- CPU: the same kernels under Triton's interpreter on small shapes (runs in CI). triton_attention
  picks the interpreter's version of the kernels itself (Triton decides at decoration time; the
  mode the import did not get is served by twins of the same functions, so it does not matter
  what imported triton first); the tests set TRITON_INTERPRET=1 only for unsupported_reason's
  sake.
- GPU (@pytest.mark.gpu, skipped without CUDA): shapes, dtypes, GQA ratios, offsets, odd sizes,
  strided layouts, pruning within the bound of docs/acp.md, and CUDA-graph capture of plan + kernels.

Errors are measured as ||x - ref|| / ||ref|| over the whole tensor (for dlam also against the
blockwise reference run on the kernel's own output, which isolates the kernel's arithmetic).
"""
import math

import pytest
import torch
import torch.nn.functional as F

from foxcompile.contract import Prune
from foxcompile.kernels import naive
from foxcompile.kernels import plan as plan_mod
from foxcompile.kernels import reference
from helpers import capture_cuda_graph

HAS_CUDA = torch.cuda.is_available()


def _interpreter_usable():
    """Triton 3.6's interpreter fails on loops with run-time bounds under numpy >= 2.4."""
    try:
        import numpy
        import triton
    except ImportError:
        return False, "triton is not installed"
    tv = tuple(int(x) for x in triton.__version__.split(".")[:2])
    nv = tuple(int(x) for x in numpy.__version__.split(".")[:2])
    if tv < (3, 7) and nv >= (2, 4):
        return False, f"Triton {triton.__version__}'s interpreter needs numpy < 2.4 (have {numpy.__version__})"
    return True, ""


_INTERP_OK, _INTERP_WHY = _interpreter_usable()
interp = pytest.mark.skipif(not _INTERP_OK, reason=_INTERP_WHY)


@pytest.fixture
def interpret_env(monkeypatch):
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from foxcompile.kernels import triton_attention
    return triton_attention


# ----------------------------------------------------------------------------- data

def make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, device,
                decay=(2.0, 64.0), layout="bhtd", seed=0, normalise=True, rising_head=None):
    """q (B, Hq, M, D), k/v (B, Hk, N, D) as views of the given layout, lam (B, Hq, N) float32.
    Each head decays with its own time constant (log-spaced over `decay` tokens), as in SYN70."""
    g = torch.Generator().manual_seed(seed)

    def rand(b, h, t):
        x = torch.randn(b, t, h, head_dim, generator=g)
        if normalise:
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))
        x = x.to(dtype)
        if layout == "bthd":
            return x.to(device).transpose(1, 2)                 # strided view of (B, T, H, D)
        return x.transpose(1, 2).contiguous().to(device)

    q = rand(batch, q_heads, n_queries)
    k = rand(batch, kv_heads, n_keys)
    v = rand(batch, kv_heads, n_keys)
    times = torch.exp(torch.linspace(math.log(decay[0]), math.log(decay[1]), q_heads))
    bias = -torch.log(torch.expm1(1.0 / times))
    logit = bias[None, :, None] + 0.3 * torch.randn(batch, q_heads, n_keys, generator=g)
    log_f = F.logsigmoid(logit)
    if rising_head is not None:  # a gate that rises somewhere: the guard must turn pruning off
        log_f[:, rising_head, n_keys // 2] = 5.0
    lam = torch.cumsum(log_f.double(), -1).float().to(device)
    return q, k, v, lam


def alloc_like(x, layout):
    if layout == "bthd":
        return torch.empty(x.shape[0], x.shape[2], x.shape[1], x.shape[3], dtype=x.dtype,
                           device=x.device).transpose(1, 2)
    return torch.empty_like(x, memory_format=torch.contiguous_format)


def rel(x, ref, floor=0.0):
    """||x - ref|| / max(||ref||, floor): floor keeps a gradient that vanishes analytically
    (T = 1: dS = 0) from turning rounding into an infinite relative error."""
    x = x.double()
    ref = ref.double()
    assert torch.isfinite(x).all(), "non-finite values"
    return ((x - ref).norm() / max(ref.norm().item(), floor, 1e-30)).item()


def naive_grads(q, k, v, lam, grad_out, scale, doc=None):
    """float64 output and gradients of the T x T definition (unpruned)."""
    q64, k64, v64, lam64 = (t.detach().double().requires_grad_(True) for t in (q, k, v, lam))
    out = naive.forgetting_attention(q64, k64, v64, lam64, scale, doc)
    out.backward(grad_out.double())
    return out.detach(), q64.grad, k64.grad, v64.grad, lam64.grad


def run_kernels(engine, q, k, v, lam, plan, scale, grad_out, layout, doc=None):
    out = alloc_like(q, layout)
    out.fill_(float("nan"))  # every element must be written
    lse = engine.forward(q, k, v, lam, plan, scale, out, doc=doc)
    dq, dk, dv = alloc_like(q, layout), alloc_like(k, layout), alloc_like(v, layout)
    for t in (dq, dk, dv):
        t.fill_(float("nan"))
    dlam = engine.backward(grad_out, q, k, v, lam, out, lse, plan, scale, dq, dk, dv, doc=doc)
    return out, lse, dq, dk, dv, dlam


# Tolerances on ||x - ref|| / ||ref|| against float64 (bf16 rounding of p, dS and the outputs).
TOL = {torch.float16: 4e-3, torch.bfloat16: 2e-2, torch.float32: 4e-3}


def check_case(engine, batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype, device,
               layout="bhtd", prune=Prune.OFF, epsilon=math.exp(-10.0), decay=(2.0, 64.0),
               expect_skips=False, rising_head=None, tol=None, doc=None):
    """doc: document ids (B, N) of packed sequences, or None."""
    q, k, v, lam = make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype,
                               device, decay=decay, layout=layout, rising_head=rising_head)
    if engine.__name__.endswith("gluon_attention") and engine.unsupported_reason(q, k, v):
        pytest.skip(engine.unsupported_reason(q, k, v))
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, epsilon, prune, doc=doc, norm=engine.max_norm)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(dtype).to(device)
    if layout == "bthd":
        grad_out = grad_out.transpose(1, 2).contiguous().transpose(1, 2)
    out, lse, dq, dk, dv, dlam = run_kernels(engine, q, k, v, lam, plan, scale, grad_out, layout,
                                             doc)

    counts = plan_mod.tile_counts(plan.start, n_queries, n_keys, plan.block_m, plan.block_n)
    skipped = counts.skipped_tiles.sum().item()
    if expect_skips:
        assert skipped > 0, "the case was meant to prune some tiles"
    if rising_head is not None:
        assert (plan.start[:, rising_head] == 0).all(), "guard left pruning on for a rising gate"

    tol = tol or TOL[dtype]
    ref = naive_grads(q, k, v, lam, grad_out, scale, doc)
    # Scale of the gradients that can vanish: dv = P^T dO never does; per element, as rms.
    dv_rms = ref[3].norm().item() / math.sqrt(ref[3].numel())
    floors = {"dq": 0.05 * dv_rms * math.sqrt(dq.numel()),
              "dk": 0.05 * dv_rms * math.sqrt(dk.numel()),
              "dlam": 0.05 * dv_rms * math.sqrt(dlam.numel())}
    errors = {name: rel(x, r, floors.get(name, 0.0)) for name, x, r in
              zip(("out", "dq", "dk", "dv", "dlam"), (out, dq, dk, dv, dlam),
                  (ref[0], ref[1], ref[2], ref[3], ref[4]))}
    # lse against float64 (natural log)
    s = torch.matmul(q.double(), k.double().repeat_interleave(q_heads // kv_heads, 1).transpose(-2, -1))
    s = s * scale + lam.double()[..., n_keys - n_queries:, None] - lam.double()[..., None, :]
    rows = torch.arange(n_queries, device=q.device)[:, None] + n_keys - n_queries
    hidden = torch.arange(n_keys, device=q.device)[None, :] > rows
    if doc is not None:
        hidden = hidden | (doc[:, n_keys - n_queries:, None] != doc[:, None, :])[:, None]
    s = s.masked_fill(hidden, float("-inf"))
    lse_err = (lse.double() - torch.logsumexp(s, -1)).abs().max().item()

    if skipped == 0:
        for name, err in errors.items():
            assert err < tol, f"{name}: relative error {err:.2e} >= {tol:.0e} ({errors})"
        assert lse_err < 50 * tol, lse_err
    else:
        # Pruned: (1) tile for tile the same function as the blockwise reference in float64 ...
        ref_out = torch.empty(q.shape, dtype=torch.float64, device=q.device)
        q64, k64, v64, lam64 = q.double(), k.double(), v.double(), lam.double()
        ref_lse = reference.forward(q64, k64, v64, lam64, plan, scale, ref_out, doc=doc)
        assert rel(out, ref_out) < tol
        assert (lse.double() - ref_lse).abs().max().item() < 50 * tol
        rdq, rdk, rdv = (torch.empty(t.shape, dtype=torch.float64, device=q.device) for t in (q, k, v))
        rdlam = reference.backward(grad_out.double(), q64, k64, v64, lam64, ref_out, ref_lse, plan,
                                   scale, rdq, rdk, rdv, doc=doc)
        for name, x, r in (("dq", dq, rdq), ("dk", dk, rdk), ("dv", dv, rdv), ("dlam", dlam, rdlam)):
            err = rel(x, r, floors.get(name, 0.0))
            assert err < tol, f"pruned {name}: relative error {err:.2e} against the reference"
        # ... and (2) within the bound of docs/acp.md of the unpruned definition: each row loses less
        # than eps of its mass, so the output moves by at most 2 eps max ||v_j|| (plus rounding).
        vmax = v.double().norm(dim=-1).amax().item()
        row_move = (out.double() - ref[0]).norm(dim=-1).amax().item()
        rounding = 4 * tol * ref[0].norm(dim=-1).amax().item()
        assert row_move <= 2 * epsilon * vmax + rounding, (row_move, epsilon, vmax)
    return errors, skipped


# ----------------------------------------------------------------------------- CPU (interpreter)

INTERP_CASES = [
    # batch, Hq, Hk, M, N, D, dtype, layout, prune, epsilon, decay
    pytest.param(1, 2, 1, 200, 200, 64, torch.float16, "bhtd", 0, 0.0, (2.0, 64.0), id="dense-gqa2-T200"),
    pytest.param(1, 4, 2, 37, 300, 80, torch.float16, "bthd", 0, 0.0, (2.0, 64.0), id="offset-d80-bthd"),
    pytest.param(1, 2, 2, 1, 130, 16, torch.float32, "bhtd", 0, 0.0, (2.0, 64.0), id="decode-d16-fp32"),
    pytest.param(2, 2, 2, 1, 1, 32, torch.float16, "bhtd", 0, 0.0, (2.0, 64.0), id="T1"),
    pytest.param(1, 4, 1, 260, 260, 96, torch.bfloat16, "bthd", 1, 1e-3, (1.0, 4.0), id="pruned-gqa4-d96-bf16"),
    pytest.param(1, 2, 1, 100, 400, 32, torch.float16, "bhtd", 1, 1e-3, (1.0, 8.0), id="pruned-offset"),
]


@interp
@pytest.mark.parametrize("batch,q_heads,kv_heads,n_queries,n_keys,head_dim,dtype,layout,prune,epsilon,decay",
                         INTERP_CASES)
def test_interpreter_matches_fp64(interpret_env, batch, q_heads, kv_heads, n_queries, n_keys,
                                  head_dim, dtype, layout, prune, epsilon, decay):
    tol = {torch.float16: 4e-3, torch.bfloat16: 1e-2, torch.float32: 1e-4}[dtype]
    check_case(interpret_env, batch, q_heads, kv_heads, n_queries, n_keys, head_dim, dtype,
               torch.device("cpu"), layout=layout, prune=prune, epsilon=epsilon, decay=decay,
               expect_skips=prune != 0, tol=tol)


@interp
def test_interpreter_subdivided_steps(interpret_env, monkeypatch):
    """Kernel blocks that subdivide the pruning grid (64-row forward/dq blocks, 64-key dkdv
    blocks, 16/32 steps) must skip exactly the grid's tiles."""
    monkeypatch.setenv("FOXCOMPILE_KERNEL_CONFIG",
                       '{"fwd": [64, 16, 4, 1], "dq": [64, 32, 4, 1], "dkdv": [64, 16, 4, 1]}')
    check_case(interpret_env, 1, 2, 1, 200, 290, 48, torch.float32, torch.device("cpu"),
               prune=Prune.PROVEN, epsilon=1e-3, decay=(1.0, 4.0), expect_skips=True,
               tol=1e-4)


@interp
@pytest.mark.parametrize("tma", ["0", "1"])
def test_interpreter_load_paths(interpret_env, monkeypatch, tma):
    """The two ways the kernels read their streamed tiles give the same answers: TMA tensor
    descriptors (Hopper at D = 128; zeros past the edges, padded rows' lse reset to +inf) and
    pointers with masks (everything else). Sizes that leave partial blocks on both axes."""
    from foxcompile.kernels import triton_attention as ta
    monkeypatch.setenv("FOXCOMPILE_TMA", tma)
    made = []
    real = ta._descriptor
    monkeypatch.setattr(ta, "_descriptor", lambda t, *block: made.append(block) or real(t, *block))
    check_case(interpret_env, 1, 4, 2, 136, 200, 48, torch.float16, torch.device("cpu"),
               prune=Prune.PROVEN, epsilon=1e-3, decay=(1.0, 4.0), expect_skips=True,
               tol=4e-3)
    # forward k, v, lam; dkdv q, dO, lam, lse, do_o; dq k, v, lam
    assert len(made) == (11 if tma == "1" else 0)


@interp
def test_interpreter_tma_falls_back_to_pointers(interpret_env, monkeypatch):
    """Rows of lam whose byte stride is not a multiple of 16 (N = 130) cannot be described for
    TMA: the kernels then read through pointers, with the same results."""
    from foxcompile.kernels import triton_attention as ta
    monkeypatch.setenv("FOXCOMPILE_TMA", "1")
    made = []
    real = ta._descriptor
    monkeypatch.setattr(ta, "_descriptor", lambda t, *block: made.append(block) or real(t, *block))
    check_case(interpret_env, 1, 2, 2, 130, 130, 32, torch.float16, torch.device("cpu"), tol=4e-3)
    assert made == []


def test_tma_choice(monkeypatch):
    """Which kernels load through TMA: the sm90 table (all three at D_PAD 128, none at 64), none
    before sm90, all under the interpreter, none while a CUDA graph is captured, and the
    FOXCOMPILE_TMA override."""
    from foxcompile.kernels import triton_attention as ta
    monkeypatch.delenv("FOXCOMPILE_TMA", raising=False)
    assert ta._tma_kernels(128, False, (9, 0)) == {"fwd", "dq", "dkdv"}
    assert ta._tma_kernels(64, False, (9, 0)) == set()
    assert ta._tma_kernels(128, False, (8, 0)) == set()
    assert ta._tma_kernels(64, True, None) == {"fwd", "dq", "dkdv"}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert ta._tma_kernels(128, False, (9, 0)) == set()
    monkeypatch.setenv("FOXCOMPILE_TMA", "fwd,dq")
    assert ta._tma_kernels(64, False, (9, 0)) == {"fwd", "dq"}
    assert ta._tma_kernels(64, False, (8, 9)) == set()
    monkeypatch.setenv("FOXCOMPILE_TMA", "0")
    assert ta._tma_kernels(128, True, None) == set()


@interp
def test_interpreter_guard_turns_pruning_off(interpret_env):
    check_case(interpret_env, 1, 2, 2, 300, 300, 32, torch.float16, torch.device("cpu"),
               prune=Prune.GUARDED, epsilon=1e-3, decay=(1.0, 4.0), rising_head=1,
               tol=4e-3)


def packed_doc(batch, n_keys, mean_length, monotone=True, seed=0):
    """Document ids (B, N) int64 of packed sequences with random lengths around mean_length; when
    not monotone, the positions are shuffled (still exact, nothing extra skipped)."""
    g = torch.Generator().manual_seed(seed)
    ends = torch.rand(batch, n_keys, generator=g) < 1.0 / mean_length
    doc = torch.cumsum(ends.long(), dim=-1)
    if not monotone:
        doc = doc[:, torch.randperm(n_keys, generator=g)] % 3
    return doc


PACKED_CASES = [
    # batch, Hq, Hk, M, N, D, dtype, layout, prune, epsilon, decay, mean length, monotone
    pytest.param(2, 2, 1, 300, 300, 32, torch.float32, "bhtd", 0, 0.0, (2.0, 64.0), 40, True,
                 id="packed-gqa2-T300-fp32"),
    pytest.param(1, 2, 2, 100, 300, 16, torch.float16, "bthd", 1, 1e-3, (1.0, 8.0), 70, True,
                 id="packed-offset-pruned-fp16"),
    pytest.param(2, 2, 2, 200, 200, 16, torch.float32, "bhtd", 0, 0.0, (2.0, 64.0), 30, False,
                 id="packed-non-monotone"),
]


@interp
@pytest.mark.parametrize("batch,q_heads,kv_heads,n_queries,n_keys,head_dim,dtype,layout,prune,"
                         "epsilon,decay,length,monotone", PACKED_CASES)
def test_interpreter_packed_sequences(interpret_env, batch, q_heads, kv_heads, n_queries, n_keys,
                                      head_dim, dtype, layout, prune, epsilon, decay, length,
                                      monotone):
    doc = packed_doc(batch, n_keys, length, monotone)
    tol = {torch.float16: 4e-3, torch.float32: 1e-4}[dtype]
    _, skipped = check_case(interpret_env, batch, q_heads, kv_heads, n_queries, n_keys, head_dim,
                            dtype, torch.device("cpu"), layout=layout, prune=prune,
                            epsilon=epsilon, decay=decay, tol=tol, doc=doc)
    assert (skipped > 0) == monotone


@interp
def test_interpreter_value_head_dim_of_its_own(interpret_env):
    """The op pads q and k (or v) to one head dim for the kernels: v of 40 against q, k of 24."""
    import foxcompile
    g = torch.Generator().manual_seed(3)
    q, k = torch.randn(1, 70, 2, 24, generator=g), torch.randn(1, 70, 1, 24, generator=g)
    v = torch.randn(1, 70, 1, 40, generator=g)
    gates = F.logsigmoid(torch.randn(1, 70, 2, generator=g))
    bhtd = [x.transpose(1, 2) for x in (q, k, k)]
    assert interpret_env.unsupported_reason(*bhtd) is None   # the op runs the Triton engine
    out = foxcompile.forgetting_attention(q, k, v, gates, epsilon=0.0, layout="bthd")
    lam = gates.double().cumsum(1).transpose(1, 2)
    ref = naive.forgetting_attention(*(x.double().transpose(1, 2) for x in (q, k, v)), lam,
                                     24 ** -0.5).transpose(1, 2)
    assert out.shape == (1, 70, 2, 40)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-4)


def test_unsupported_reason(monkeypatch):
    from foxcompile.kernels import triton_attention as ta
    q = torch.randn(1, 2, 8, 64)
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert "TRITON_INTERPRET" in ta.unsupported_reason(q, q, q)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert ta.unsupported_reason(q, q, q) is None
    assert "dtype" in ta.unsupported_reason(q.double(), q.double(), q.double())
    small = torch.randn(1, 2, 8, 8)
    assert "head dim" in ta.unsupported_reason(small, small, small)
    big = torch.randn(1, 1, 2, 320)
    assert "head dim" in ta.unsupported_reason(big, big, big)
    assert "multiple" in ta.unsupported_reason(torch.randn(1, 3, 8, 64), q, q)
    assert "more queries" in ta.unsupported_reason(torch.randn(1, 2, 9, 64), q, q)


def test_kernels_in_both_modes():
    """One normal import of the kernel module; the mode it was not decorated for gets twins whose
    kernels call the twins of the helpers (so one process runs compiled and interpreted)."""
    pytest.importorskip("triton")
    from triton.runtime.jit import JITFunction

    from foxcompile.kernels import _triton_kernels
    from foxcompile.kernels import triton_attention as ta
    compiled, interpreted = ta._kernels(False), ta._kernels(True)
    assert _triton_kernels in (compiled, interpreted)
    assert isinstance(compiled._fwd_kernel, JITFunction)
    assert not isinstance(interpreted._fwd_kernel, JITFunction)
    for kernels in (compiled, interpreted):
        assert kernels._fwd_kernel.fn.__globals__["_fwd_steps"] is kernels._fwd_steps
    assert ta._kernels(True) is interpreted and ta._kernels(False) is compiled


@interp
def test_interpreter_runs_twins(interpret_env, monkeypatch):
    """The kernels run through twins decorated for the interpreter (what a process that imported
    the kernel module compiled gets), whichever mode the import itself got."""
    from foxcompile.kernels import _triton_kernels
    twins = interpret_env._decorated_again(_triton_kernels, True)
    monkeypatch.setattr(interpret_env, "_kernels", lambda interpret: twins)
    check_case(interpret_env, 1, 2, 1, 136, 300, 32, torch.float32, torch.device("cpu"),
               prune=Prune.PROVEN, epsilon=1e-3, decay=(1.0, 4.0), expect_skips=True)


def _plan_inputs(batch, heads, n_keys, seed, special=None):
    """A falling lam (B, H, N) float32 with heads of different decay (some rising by rounding),
    and a bound (B, H); special: 'rise', 'nan_lam', 'ninf_lam', 'inf_bound', 'nan_bound'."""
    g = torch.Generator().manual_seed(seed)
    rate = torch.exp(torch.empty(batch, heads, 1).uniform_(-4.0, 1.0, generator=g))
    log_f = -rate * torch.rand(batch, heads, n_keys, generator=g)
    lam = torch.cumsum(log_f, dim=-1)
    bound = torch.rand(batch, heads, generator=g) * 6.0
    if special == "rise":           # head 0 rises a little (rounding), head 1 a lot
        lam[:, 0, n_keys // 2:] += 1e-6 * lam[:, 0, n_keys // 2:].abs()
        lam[:, 1, n_keys // 3:] += 5.0
    elif special == "nan_lam":
        lam[0, 0, n_keys // 2] = float("nan")
    elif special == "ninf_lam":
        lam[0, 1, n_keys // 3:] = float("-inf")
    elif special == "inf_bound":
        bound[0, 0] = float("inf")
    elif special == "nan_bound":
        bound[0, 1] = float("nan")
    return lam, bound


@interp
@pytest.mark.parametrize("prune", [Prune.PROVEN, Prune.GUARDED])
@pytest.mark.parametrize("case", [
    # B, H, M, N, block_m, block_n, special
    pytest.param((2, 3, 1500, 1500, 16, 16, None), id="many-chunks"),
    pytest.param((1, 4, 700, 2300, 32, 16, "rise"), id="offset-rise"),
    pytest.param((1, 2, 1, 3000, 128, 128, None), id="decode"),
    pytest.param((2, 2, 1, 1, 128, 128, None), id="T1"),
    pytest.param((1, 3, 200, 200, 16, 32, "nan_lam"), id="nan-lam"),
    pytest.param((1, 3, 300, 300, 16, 16, "ninf_lam"), id="ninf-lam"),
    pytest.param((1, 2, 257, 1030, 64, 64, "inf_bound"), id="inf-bound"),
    pytest.param((1, 2, 130, 130, 16, 16, "nan_bound"), id="nan-bound"),
])
def test_interpreter_fused_start_blocks_equal_torch(interpret_env, case, prune):
    """The plan's one-kernel start blocks (threshold from the bound, guard, start_blocks) equal
    plan.bound_start_blocks exactly, over several chunks of lam, key blocks and query blocks,
    M < N and M = 1, rising gates, NaN and -inf in lam, inf and NaN bounds."""
    batch, heads, n_queries, n_keys, block_m, block_n, special = case
    lam, bound = _plan_inputs(batch, heads, n_keys, seed=n_keys + n_queries, special=special)
    for epsilon in (math.exp(-10.0), 1e-3, 0.5):
        want = plan_mod.bound_start_blocks(lam, bound, epsilon, prune, n_queries, block_m, block_n)
        got = interpret_env.fused_start_blocks(lam, bound, epsilon, prune, n_queries, block_m,
                                               block_n, interpret=True)
        assert got.dtype == torch.int32 and got.shape == want.shape
        assert torch.equal(got, want), (epsilon, got, want)
    if special is None and n_keys > 1:
        assert want.max() > 0, "the case was meant to prune some blocks"


@interp
@pytest.mark.parametrize("lam_shape,dtype", [
    pytest.param((2, 3, 1500), torch.float32, id="full"),
    pytest.param((1, 3, 700), torch.float32, id="batch-broadcast"),
    pytest.param((2, 1, 300), torch.bfloat16, id="head-broadcast-bf16"),
])
def test_interpreter_fused_full_lam_equal_torch(interpret_env, lam_shape, dtype):
    """The lam the kernels read, made by one kernel, equals plan.full_lam bit for bit: +inf keys
    (right padding) replaced, NaN and -inf kept, broadcast dims expanded, infinite and NaN
    bounds taking the fallback offset."""
    batch, q_heads = 2, 3
    g = torch.Generator().manual_seed(sum(lam_shape))
    lam = torch.cumsum(-torch.rand(lam_shape, generator=g), dim=-1)
    lam[..., -7:] = float("inf")
    lam[..., 5] = float("inf")
    lam[0, 0, 11] = float("nan")
    lam[-1, -1, 13] = float("-inf")
    lam = lam.to(dtype)
    bound = torch.rand(batch, q_heads, generator=g) * 5.0
    bound[0, 1], bound[1, 2] = float("inf"), float("nan")
    lam[..., :3] = float("inf")        # masked before any unmasked key: they keep the stand-in
    lam[..., 1100:1200] = float("inf")  # a masked run across a chunk boundary (filled)
    want, want_filled = plan_mod.full_lam(lam, batch, q_heads, bound, filled=True)
    got, got_filled = interpret_env.fused_full_lam(lam, batch, q_heads, bound, filled=True,
                                                   interpret=True, chunk=1024)
    assert torch.equal(interpret_env.fused_full_lam(lam, batch, q_heads, bound, interpret=True,
                                                    chunk=1024).nan_to_num(nan=7.0),
                       got.nan_to_num(nan=7.0))
    for x, y in ((got, want), (got_filled, want_filled)):
        assert x.shape == y.shape and x.is_contiguous() and x.dtype == torch.float32
        assert torch.equal(x.nan_to_num(nan=7.0), y.nan_to_num(nan=7.0))
        assert torch.equal(x.isnan(), y.isnan())
    n = lam.shape[-1]
    if n > 1200:
        assert torch.equal(want_filled[..., 1100:1200],
                           want[..., 1099:1100].expand(-1, -1, 100))


@interp
@pytest.mark.parametrize("case", [
    pytest.param((2, 4, 2, 70, 300, 64, 64), id="gqa-M<N"),
    pytest.param((1, 3, 3, 1, 1, 32, 48), id="T1-Dv48"),
    pytest.param((2, 2, 1, 200, 200, 80, 80), id="D80"),
])
def test_interpreter_fused_score_bounds_equal_the_plans(interpret_env, case):
    """The op's bound and value-checked bound from two launches equal plan.score_bound and
    value_checked_bound over the same norm passes bit for bit: GQA, M < N, T = 1, head dims
    that are not powers of two, a v narrower than q, strided (bthd) views, NaN and inf in q, k
    or v, and partial maxima over several chunks of the per-head loop."""
    batch, q_heads, kv_heads, n_queries, n_keys, head_dim, v_dim = case
    g = torch.Generator().manual_seed(n_queries + n_keys + head_dim)
    q = torch.randn(batch, n_queries, q_heads, head_dim, generator=g).to(torch.bfloat16)
    k = torch.randn(batch, n_keys, kv_heads, head_dim, generator=g).to(torch.bfloat16)
    v = torch.randn(batch, n_keys, kv_heads, v_dim, generator=g).to(torch.bfloat16)
    q, k, v = (x.transpose(1, 2) for x in (q, k, v))                  # (B, H, T, D) views
    scale = -0.37                                                       # |scale| is what counts
    if n_keys > 1:
        k[0, -1, n_keys - 2, 1] = float("inf")                         # one head's bound inf
        v[-1, 0, n_keys // 2, 0] = float("nan")                        # one kv head's v not finite
        q[0, 0, 0, 0] = float("nan")                                   # one head's bound NaN

    def norm(x, acc):
        return interpret_env.max_row_norms(x, interpret=True)

    want = plan_mod.score_bound(q, k, scale, torch.float32, norm)
    want_checked = plan_mod.value_checked_bound(q, k, scale, torch.float32, v, want, norm)
    for check_v, chunk in ((True, 2), (True, 1024), (False, 4)):
        bound, checked = interpret_env.fused_score_bounds(q, k, v, scale, check_v,
                                                          interpret=True, chunk=chunk)
        expected = want_checked if check_v else want
        for got, ref in ((bound, want), (checked, expected)):
            assert got.shape == (batch, q_heads) and got.dtype == torch.float32
            assert torch.equal(got.isnan(), ref.isnan())
            assert torch.equal(got.nan_to_num(nan=7.0), ref.nan_to_num(nan=7.0))
        if not check_v:
            assert checked is bound
    if n_keys > 1:
        assert torch.isnan(want[0, 0]) and torch.isinf(want[0, -1])
        assert torch.isinf(want_checked[-1, 0]) and torch.isfinite(want[-1, 0])


@interp
def test_interpreter_fused_start_blocks_strided_lam(interpret_env):
    """A lam that is a strided view (the op's lam is contiguous, the kernel takes any strides)."""
    lam, bound = _plan_inputs(2, 3, 500, seed=3)
    strided = lam.transpose(1, 2).contiguous().transpose(1, 2)
    want = plan_mod.bound_start_blocks(lam, bound, 1e-3, Prune.GUARDED, 300, 16, 16)
    got = interpret_env.fused_start_blocks(strided, bound, 1e-3, Prune.GUARDED, 300, 16, 16,
                                           interpret=True)
    assert torch.equal(got, want)


def test_plan_is_plain_torch():
    """plan.py imports neither Triton nor the Triton engine (the engine hands it its norm)."""
    import ast
    import inspect
    tree = ast.parse(inspect.getsource(plan_mod))
    imported = [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names]
    imported += [f"{node.module}.{alias.name}" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom) for alias in node.names]
    assert not [name for name in imported if "triton" in name], imported


@pytest.mark.parametrize("group", [1, 3])
def test_heads_by_work(group):
    """plan.heads_by_work: a permutation of the (b, head)s (kv heads with group > 1) whose
    tiles to compute never increase along it, ties in index order; a dense plan keeps the
    heads' own order. The tiles are counted here from the plan, one head at a time."""
    generator = torch.Generator().manual_seed(7)
    batch, q_heads, m_blocks = 3, 6, 9
    rate = torch.rand(batch, q_heads, 1, generator=generator)     # how fast each head forgets
    start = (torch.arange(m_blocks) * rate).floor().to(torch.int32)  # causal, non-decreasing
    start[1, :group] = start[0, :group]                   # a tie between two (b, head)s
    order = plan_mod.heads_by_work(start, group)
    kv_heads = q_heads // group
    assert order.dtype == torch.int32
    assert sorted(order.tolist()) == list(range(batch * kv_heads))
    causal = sum(m + 1 for m in range(m_blocks)) * group
    tiles = [causal - start[b, hk * group:(hk + 1) * group].sum().item()
             for b in range(batch) for hk in range(kv_heads)]
    along = [tiles[i] for i in order.tolist()]
    assert along == sorted(along, reverse=True)
    assert len(set(along)) > 1, "the case should order something"
    for i, j in zip(order.tolist(), order.tolist()[1:]):
        assert tiles[i] > tiles[j] or i < j, "ties keep the heads' own order"
    dense = torch.zeros_like(start)
    assert plan_mod.heads_by_work(dense, group).tolist() == list(range(batch * kv_heads))


def _work_starts(batch, q_heads, m_blocks, seed):
    """Start blocks (B, Hq, MB) int32 as plans make them (non-decreasing, causal): a few rates
    of forgetting, so heads tie, and dense heads (rates drawn below 0.3)."""
    generator = torch.Generator().manual_seed(seed)
    rate = torch.rand(batch, q_heads, 1, generator=generator)
    rate = torch.where(rate < 0.3, rate.new_zeros(()), rate)          # dense heads: all ties
    rate = (rate * 4).round() / 4                                     # few rates: ties
    return (torch.arange(m_blocks) * rate).floor().to(torch.int32)


@interp
@pytest.mark.parametrize("case", [
    # B, Hq, MB, group, block (heads per program)
    pytest.param((3, 6, 9, 1, 4), id="blocks"),
    pytest.param((3, 6, 40, 3, 4), id="gqa-long-rows"),      # rows of 120 > SKIPS_CHUNK
    pytest.param((5, 7, 3, 7, 2), id="one-kv-head"),
    pytest.param((1, 1, 1, 1, 64), id="one-head"),
    pytest.param((2, 40, 5, 1, 64), id="two-programs"),
])
def test_interpreter_fused_heads_by_work_equal_torch(interpret_env, case):
    """The one-launch head order equals plan.heads_by_work exactly: several programs and blocks
    of heads (the count not a multiple of either), GQA rows longer than one step, ties, dense."""
    batch, q_heads, m_blocks, group, block = case
    for seed in range(3):
        start = _work_starts(batch, q_heads, m_blocks, seed)
        got = interpret_env.fused_heads_by_work(start, group, interpret=True, block=block)
        want = plan_mod.heads_by_work(start, group)
        assert got.dtype == torch.int32 and torch.equal(got, want), (seed, got, want)
    dense = torch.zeros_like(start)
    assert torch.equal(interpret_env.fused_heads_by_work(dense, group, interpret=True, block=block),
                       torch.arange(batch * q_heads // group, dtype=torch.int32))


def head_orders_agree(engine, monkeypatch, device, exact=("out", "lse", "dq", "dk", "dv", "dlam")):
    """Forward and backward of a pruned GQA case (M < N, odd sizes) with the kernels taking
    the heads in their own order, by work, and by work in the backward only
    (FOXCOMPILE_HEAD_ORDER): every program computes the same thing either way, so the outputs
    named in `exact` agree bit for bit with the own order's (the others, reduced by float32
    adds in any order, to their rounding); and the case does reorder."""
    q, k, v, lam = make_inputs(2, 6, 3, 300, 420, 64, torch.bfloat16, device,
                               decay=(1.0, 64.0), layout="bthd")
    scale = 64 ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, math.exp(-10.0), Prune.PROVEN,
                              norm=engine.max_norm)
    for group in (1, 2):
        order = plan_mod.heads_by_work(plan.start, group).cpu()
        assert not torch.equal(order, torch.arange(len(order), dtype=order.dtype)), group
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q)
    results = {}
    for name in ("index", "work", "backward"):
        monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", name)
        results[name] = run_kernels(engine, q, k, v, lam, plan, scale, grad_out, "bthd")
    for order in ("work", "backward"):
        for name, a, b in zip(("out", "lse", "dq", "dk", "dv", "dlam"), results["index"],
                              results[order]):
            if name in exact:
                assert torch.equal(a, b), (order, name)
            else:
                assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-3), (order, name)


@interp
def test_interpreter_head_order_changes_nothing(interpret_env, monkeypatch):
    """The tl kernels (forward, dq, dk/dv) in the three head orders: the same results bit for
    bit."""
    head_orders_agree(interpret_env, monkeypatch, "cpu")


def test_head_order_setting(monkeypatch):
    """FOXCOMPILE_HEAD_ORDER: unset takes the default, "index" and documents keep the heads'
    own order (start, unread), "work" takes plan.heads_by_work's in both directions,
    "backward" in the backward's kernels only, anything else is an error."""
    from foxcompile.kernels import triton_attention
    start = torch.tensor([[[0, 1], [0, 0], [1, 1]]], dtype=torch.int32)     # (1, 3, 2)
    monkeypatch.delenv("FOXCOMPILE_HEAD_ORDER", raising=False)
    default = triton_attention.HEAD_ORDER_DEFAULT
    for backward in (False, True):
        assert triton_attention.head_order(start, 1, False, backward)[1] == (
            default == "work" or (default == "backward" and backward))
    monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", "work")
    for backward in (False, True):
        order, ordered = triton_attention.head_order(start, 1, False, backward)
        assert ordered and order.tolist() == [1, 0, 2]
        assert triton_attention.head_order(start, 1, True, backward) == (start, False)
    monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", "backward")
    assert triton_attention.head_order(start, 1, False, False) == (start, False)
    order, ordered = triton_attention.head_order(start, 1, False, True)
    assert ordered and order.tolist() == [1, 0, 2]
    assert triton_attention.head_order(start, 1, True, True) == (start, False)
    monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", "index")
    for backward in (False, True):
        assert triton_attention.head_order(start, 1, False, backward) == (start, False)
    monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", "heaviest")
    with pytest.raises(ValueError, match="FOXCOMPILE_HEAD_ORDER"):
        triton_attention.head_order(start, 1, False, False)


# ----------------------------------------------------------------------------- GPU

gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")


@pytest.fixture(params=["tl", "gluon"])
def cuda_engine(request, monkeypatch):
    """Each GPU engine: the tl kernels everywhere, the Gluon forward and backward on sm90, where
    they must be usable (check_case skips the head dims and dtypes they do not take)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    if request.param == "tl":
        from foxcompile.kernels import triton_attention
        return triton_attention
    from foxcompile.kernels import gluon_attention
    if not HAS_CUDA or torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon engine is for sm90")
    assert gluon_attention._kernels() is not None, gluon_attention._import_errors
    return gluon_attention


GPU_SHAPES = [
    # batch, Hq, Hk, M, N, D
    (2, 4, 4, 1, 1, 64),
    (2, 4, 2, 17, 17, 64),
    (1, 4, 1, 128, 128, 128),
    (2, 6, 2, 257, 257, 80),
    (1, 2, 2, 1000, 1000, 96),
    (1, 4, 2, 1, 777, 64),        # decode
    (2, 2, 1, 100, 1000, 32),     # chunked prefill
    (1, 8, 8, 2048, 2048, 16),
    (1, 2, 1, 333, 1500, 256),
    (1, 3, 3, 640, 640, 128),
    (1, 2, 2, 513, 513, 192),
]


DENSE_CASES = ([(shape, torch.bfloat16, "bthd") for shape in GPU_SHAPES]
               + [(shape, torch.float16, "bhtd") for shape in GPU_SHAPES]
               + [(shape, torch.float32, "bthd") for shape in GPU_SHAPES[1:10:2]])


@gpu
@needs_cuda
@pytest.mark.parametrize("shape,dtype,layout", DENSE_CASES,
                         ids=lambda x: "B{}-Hq{}-Hk{}-M{}-N{}-D{}".format(*x) if isinstance(x, tuple) else str(x))
def test_gpu_dense_matches_fp64(cuda_engine, shape, dtype, layout):
    check_case(cuda_engine, *shape, dtype, torch.device("cuda"), layout=layout)


PRUNED = [
    # batch, Hq, Hk, M, N, D, decay
    (2, 4, 2, 2048, 2048, 64, (1.0, 32.0)),
    (1, 4, 1, 300, 3000, 128, (2.0, 64.0)),
    (1, 2, 2, 1, 4000, 64, (1.0, 8.0)),
    (1, 6, 3, 3000, 3000, 80, (2.0, 512.0)),
    (1, 2, 1, 1500, 1500, 256, (1.0, 16.0)),
]


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", PRUNED, ids=lambda s: "B{}-Hq{}-Hk{}-M{}-N{}-D{}".format(*s[:6]))
@pytest.mark.parametrize("prune", [Prune.PROVEN, Prune.GUARDED])
def test_gpu_pruned_within_bound(cuda_engine, case, dtype, prune):
    *shape, decay = case
    check_case(cuda_engine, *shape, dtype, torch.device("cuda"), prune=prune,
               decay=decay, layout="bthd", expect_skips=True)


@gpu
@needs_cuda
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", [
    # batch, Hq, Hk, M, N, D, prune, mean document length, monotone
    (2, 4, 2, 2048, 2048, 64, Prune.OFF, 300, True),
    (2, 4, 2, 2048, 2048, 64, Prune.GUARDED, 700, True),
    (1, 4, 1, 300, 3000, 128, Prune.PROVEN, 500, True),
    (2, 6, 3, 1000, 1000, 80, Prune.OFF, 50, False),
], ids=lambda s: "B{}-Hq{}-Hk{}-M{}-N{}-D{}-prune{}-len{}-mono{}".format(*s))
def test_gpu_packed_sequences(cuda_engine, case, dtype):
    *shape, prune, length, monotone = case
    doc = packed_doc(shape[0], shape[4], length, monotone).cuda()
    _, skipped = check_case(cuda_engine, *shape, dtype, torch.device("cuda"), prune=prune,
                            decay=(1.0, 32.0), layout="bthd", doc=doc)
    assert skipped > 0 or not monotone


@gpu
@needs_cuda
@pytest.mark.parametrize("tma", ["0", "1"])
@pytest.mark.parametrize("case", [
    # batch, Hq, Hk, M, N, D, prune
    (2, 4, 2, 260, 260, 64, Prune.OFF),
    (1, 4, 1, 100, 1000, 128, Prune.PROVEN),
    (1, 4, 4, 332, 332, 80, Prune.GUARDED),
    (1, 2, 2, 1, 900, 128, Prune.OFF),
], ids=lambda s: "B{}-Hq{}-Hk{}-M{}-N{}-D{}-prune{}".format(*s) if isinstance(s, tuple) else s)
def test_gpu_load_paths(cuda_engine, monkeypatch, case, tma):
    """Both load paths on the GPU whatever the launch table picks for the head dim: TMA tensor
    descriptors (FOXCOMPILE_TMA=1) and pointer loads (=0), partial blocks on both axes."""
    *shape, prune = case
    monkeypatch.setenv("FOXCOMPILE_TMA", tma)
    check_case(cuda_engine, *shape, torch.bfloat16, torch.device("cuda"), layout="bthd",
               prune=prune, decay=(1.0, 8.0), expect_skips=prune != Prune.OFF)


@gpu
@needs_cuda
@pytest.mark.parametrize("prune", [Prune.PROVEN, Prune.GUARDED])
@pytest.mark.parametrize("special", [None, "rise", "nan_lam", "ninf_lam", "inf_bound"])
def test_gpu_fused_start_blocks_equal_torch(special, prune):
    """On the GPU too, the plan's one-kernel start blocks equal torch's bit for bit (the op's
    plan on CUDA), on the 128 x 128 grid and a finer one, prefill, M < N and decode."""
    from foxcompile.kernels import triton_attention as ta
    lam, bound = _plan_inputs(2, 4, 5000, seed=11, special=special)
    lam, bound = lam.cuda(), bound.cuda()
    for n_queries, block in ((5000, 128), (1200, 64), (1, 128)):
        for epsilon in (math.exp(-10.0), 1e-3):
            want = plan_mod.bound_start_blocks(lam, bound, epsilon, prune, n_queries, block, block)
            got = ta.plan_start_blocks(lam, bound, epsilon, prune, n_queries, block, block)
            assert torch.equal(got, want), (n_queries, block, epsilon)


@gpu
@needs_cuda
@pytest.mark.parametrize("group", [1, 4])
def test_gpu_fused_heads_by_work_equal_torch(group):
    """On the GPU too, the one-launch head order equals plan.heads_by_work (torch's stable
    sort), for a few heads and for thousands (many programs)."""
    from foxcompile.kernels import triton_attention as ta
    for batch, q_heads, m_blocks in ((2, 24, 128), (64, 64, 33)):
        start = _work_starts(batch, q_heads, m_blocks, seed=batch).cuda()
        assert torch.equal(ta.heads_by_work(start, group), plan_mod.heads_by_work(start, group))


@gpu
@needs_cuda
def test_gpu_fused_full_lam_equal_torch():
    """On the GPU too, the one-kernel full_lam equals plan.full_lam bit for bit, with masked
    runs across its chunk boundaries (the forward fill's carry)."""
    from foxcompile.kernels import triton_attention as ta
    chunk = ta.FULL_LAM_CHUNK
    lam = torch.cumsum(-torch.rand(2, 1, 2 * chunk + 1000), dim=-1)
    lam[..., -9:] = float("inf")
    lam[0, 0, 17] = float("-inf")
    bound = torch.rand(2, 4) * 5.0
    bound[1, 3] = float("inf")
    lam[..., 1500:2100] = float("inf")
    lam[..., chunk - 50:2 * chunk + 10] = float("inf")   # across two boundaries
    lam, bound = lam.cuda(), bound.cuda()
    assert torch.equal(ta.full_lam(lam, 2, 4, bound), plan_mod.full_lam(lam, 2, 4, bound))
    for got, want in zip(ta.full_lam(lam, 2, 4, bound, filled=True),
                         plan_mod.full_lam(lam, 2, 4, bound, filled=True)):
        assert torch.equal(got, want)


@gpu
@needs_cuda
def test_gpu_guard_rising_gate(cuda_engine):
    check_case(cuda_engine, 1, 4, 2, 1024, 1024, 64, torch.bfloat16, torch.device("cuda"),
               prune=Prune.GUARDED, decay=(1.0, 8.0), rising_head=2)


@gpu
@needs_cuda
@pytest.mark.parametrize("head_order", ["index", "work", "backward"])
def test_gpu_cuda_graph_capture(cuda_engine, monkeypatch, head_order):
    """Plan (threshold, guard, start/end blocks) and all kernels captured in one CUDA graph and
    replayed with new data: no host synchronisation anywhere, and the replay prunes per the new
    data, exactly as an eager call on that data does; in the three head orders (the order by work
    is sorted on the device, inside the graph)."""
    monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", head_order)
    torch.manual_seed(0)
    shape = (2, 4, 2, 1024, 1024, 64)
    dtype = torch.bfloat16
    q, k, v, lam = make_inputs(*shape, dtype, "cuda", decay=(1.0, 32.0), layout="bthd")
    scale = 64 ** -0.5
    grad = torch.randn_like(q)
    static = [t.clone() for t in (q, k, v, lam, grad)]

    def step(q, k, v, lam, grad):
        plan = plan_mod.make_plan(q, k, lam, scale, math.exp(-10.0), Prune.GUARDED,
                                  norm=cuda_engine.max_norm)
        out = torch.empty_like(q)
        lse = cuda_engine.forward(q, k, v, lam, plan, scale, out)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dlam = cuda_engine.backward(grad, q, k, v, lam, out, lse, plan, scale, dq, dk, dv)
        return out, dq, dk, dv, dlam, plan.start

    graph, results = capture_cuda_graph(step, static)

    for seed, decay in ((3, (1.0, 8.0)), (4, (4.0, 512.0))):
        new = make_inputs(*shape, dtype, "cuda", decay=decay, layout="bthd", seed=seed)
        new_grad = torch.randn_like(q)
        for dst, src in zip(static, (*new, new_grad)):
            dst.copy_(src)
        graph.replay()
        eager = step(*static)
        torch.cuda.synchronize()
        assert torch.equal(results[5], eager[5]), "captured plan differs from the eager plan"
        for name, a, b in zip(("out", "dq", "dk", "dv", "dlam"), results[:5], eager[:5]):
            if cuda_engine.__name__.endswith("gluon_attention") and name in ("dq", "dlam"):
                # reduced by float32 adds in any order: equal up to their rounding
                assert torch.allclose(a.float(), b.float(), rtol=1e-2, atol=1e-3), name
            else:
                assert torch.equal(a, b), name
    assert (results[5] > 0).any(), "the replayed data should prune"


@gpu
@needs_cuda
@pytest.mark.parametrize("dq_next", [False, True], ids=["default", "dq_next"])
@pytest.mark.parametrize("programs", [1, 3])
@pytest.mark.parametrize("case", [
    # batch, Hq, Hk, M, N, D, dtype, prune, mean document length (None: no documents)
    (2, 4, 2, 513, 513, 64, torch.bfloat16, Prune.PROVEN, None),
    (1, 3, 3, 640, 640, 128, torch.float16, Prune.OFF, None),
    (2, 2, 1, 200, 777, 64, torch.bfloat16, Prune.GUARDED, None),
    (2, 4, 2, 700, 700, 64, torch.bfloat16, Prune.GUARDED, 150),
], ids=lambda s: "B{}-Hq{}-Hk{}-M{}-N{}-D{}-{}-{}-doc{}".format(*s))
def test_gpu_gluon_programs_take_many_items(monkeypatch, dq_next, programs, case):
    """The persistent Gluon kernels, forward and backward, with far fewer programs than work
    items (the SM count replaced by 1 or 3, where the other tests' shapes give every program
    one item): each program walks many items of different lengths one after another, so its
    Q (forward) or K/V (backward) buffers alternate and the rings run on from item to item.
    Outputs and all gradients against float64, with and without pruning, GQA, M < N, odd
    sizes and packed sequences; at D = 64 with the backward's DQ_NEXT on and off."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from foxcompile.kernels import gluon_attention
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon engine is for sm90")
    monkeypatch.setattr(gluon_attention, "_multiprocessors", lambda device: programs)
    *shape, dtype, prune, length = case
    if dq_next and shape[5] != 64:
        pytest.skip("DQ_NEXT is a D = 64 option")
    monkeypatch.setitem(gluon_attention.BWD_DQ_NEXT, shape[5], dq_next)
    doc = None if length is None else packed_doc(shape[0], shape[4], length, True).cuda()
    check_case(gluon_attention, *shape, dtype, torch.device("cuda"), prune=prune,
               decay=(1.0, 32.0), layout="bthd", doc=doc)


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim,dq_next", [(64, False), (64, True), (128, False)])
def test_gpu_gluon_items_without_tiles(monkeypatch, head_dim, dq_next):
    """M < N with gates that forget within a few tokens: the plan prunes every key block of
    each (b, kv head) but the last few for all its query heads, so a program of the persistent
    backward meets runs of work items with no tile between items with tiles. With DQ_NEXT the
    last tile's dQ of an item waits for the next item, which must hand it over even when it
    has no tile: left for later, the reducer (which takes the next items only after it) and
    the loader (which publishes an item only once the reducer has taken the one two before)
    deadlock. Outputs and all gradients against float64, with one program taking every item
    in turn."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from foxcompile.kernels import gluon_attention
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon engine is for sm90")
    monkeypatch.setattr(gluon_attention, "_multiprocessors", lambda device: 1)
    monkeypatch.setitem(gluon_attention.BWD_DQ_NEXT, head_dim, dq_next)
    shape = (2, 4, 2, 100, 1300, head_dim)
    decay = (1.0, 3.0)
    q, k, v, lam = make_inputs(*shape, torch.bfloat16, "cuda", decay=decay, layout="bthd")
    plan = plan_mod.make_plan(q, k, lam, head_dim ** -0.5, math.exp(-10.0), Prune.GUARDED,
                              norm=gluon_attention.max_norm)
    # key blocks that no query head of a kv head computes: all before the group's least start
    least_start = plan.start.reshape(2, 2, 2, -1).amin(dim=(2, 3))
    assert (least_start >= 4).all(), f"the case should leave runs of tileless items: {least_start}"
    check_case(gluon_attention, *shape, torch.bfloat16, torch.device("cuda"),
               prune=Prune.GUARDED, decay=decay, layout="bthd")


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_gluon_repeats_bit_for_bit(monkeypatch, head_dim):
    """A race between the Gluon partitions (a buffer handed back to the loader before every warp
    has read it) changes results from run to run, while within tolerance most of the time. What
    each work item writes alone is the same bit for bit in every run: out and lse (forward),
    dk and dv (backward; dq and dlam take reduce-adds in any order). So 12 runs with 3 programs
    walking many short, pruned items (where the loader runs furthest ahead) must agree exactly."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from foxcompile.kernels import gluon_attention
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon engine is for sm90")
    monkeypatch.setattr(gluon_attention, "_multiprocessors", lambda device: 3)
    q, k, v, lam = make_inputs(2, 4, 2, 1500, 1500, head_dim, torch.bfloat16, "cuda",
                               decay=(1.0, 16.0), layout="bthd")
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, math.exp(-10.0), Prune.PROVEN,
                              norm=gluon_attention.max_norm)
    counts = plan_mod.tile_counts(plan.start, q.shape[2], k.shape[2], plan.block_m, plan.block_n)
    assert counts.skipped_tiles.sum().item() > 0, "the case was meant to prune"
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q)
    first = None
    for run in range(12):
        out, lse, _dq, dk, dv, _dlam = run_kernels(gluon_attention, q, k, v, lam, plan, scale,
                                                   grad_out, "bthd")
        if first is None:
            first = (out, lse, dk, dv)
            continue
        for name, x, x0 in zip(("out", "lse", "dk", "dv"), (out, lse, dk, dv), first):
            assert torch.equal(x, x0), f"run {run}: {name} differs from run 0"


def timeline_tiles(plan, n_queries, n_keys, kv_heads):
    """The tiles each Gluon work item walks, from the plan, by the kernels' item numbers: the
    forward's (B * Hq * query blocks; query block m_blocks - 1 - i % m_blocks of (b, h) i //
    m_blocks) and the backward's (B * Hk * key blocks of 128, 64-row query tiles of every query
    head of the group, from the diagonal to the plan's end block)."""
    batch, q_heads, m_blocks = plan.start.shape
    offset, group = n_keys - n_queries, q_heads // kv_heads
    start = plan.start.cpu().long()
    forward = []
    for bh in range(batch * q_heads):
        for i in range(m_blocks):
            m = m_blocks - 1 - i
            hi = min(offset + m * 128 + 128, n_keys)
            forward.append(-(-(hi - start[bh // q_heads, bh % q_heads, m].item() * 128) // 128))
    end = plan_mod.end_blocks(plan.start, n_keys, 128).cpu().long()
    backward = []
    for bh in range(batch * kv_heads):
        b, hk = divmod(bh, kv_heads)
        for n in range(end.shape[-1]):
            lo = max(n * 128 - offset, 0) // 64 * 64
            tiles = 0
            for h in range(hk * group, hk * group + group):
                stop = min(end[b, h, n].item() * 128, n_queries)
                tiles += max(-(-(stop - lo) // 64), 0)
            backward.append(tiles)
    return torch.tensor(forward), torch.tensor(backward)


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", [64, 128])
def test_gpu_gluon_timeline(monkeypatch, head_dim):
    """The kernels' TIMELINE build (benchmarks/item_timeline.py): with stamps asked for, out,
    lse, dk and dv are the normal build's bit for bit; every work item has a row whose six
    cycle stamps never go back, its tile count is what the plan gives it, and its program is
    one of the launch's (3 programs, many pruned items of different lengths, GQA, M < N); and
    each program takes its items in the schedule's order (heads with the most tiles first)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from foxcompile.kernels import gluon_attention
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon engine is for sm90")
    monkeypatch.setattr(gluon_attention, "_multiprocessors", lambda device: 3)
    monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", "work")
    batch, q_heads, kv_heads, n_queries, n_keys = 2, 4, 2, 700, 1100
    q, k, v, lam = make_inputs(batch, q_heads, kv_heads, n_queries, n_keys, head_dim,
                               torch.bfloat16, "cuda", decay=(1.0, 16.0), layout="bthd")
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, math.exp(-10.0), Prune.PROVEN,
                              norm=gluon_attention.max_norm)
    grad_out = torch.randn(q.shape, generator=torch.Generator().manual_seed(1)).to(q)
    want = run_kernels(gluon_attention, q, k, v, lam, plan, scale, grad_out, "bthd")
    fwd_tiles, bwd_tiles = timeline_tiles(plan, n_queries, n_keys, kv_heads)
    fwd_stamps = torch.zeros(len(fwd_tiles), 2, 8, dtype=torch.int64, device="cuda")
    bwd_stamps = torch.zeros(len(bwd_tiles), 8, dtype=torch.int64, device="cuda")
    out = alloc_like(q, "bthd")
    lse = gluon_attention.forward(q, k, v, lam, plan, scale, out, stamps=fwd_stamps)
    dq, dk, dv = alloc_like(q, "bthd"), alloc_like(k, "bthd"), alloc_like(v, "bthd")
    gluon_attention.backward(grad_out, q, k, v, lam, out, lse, plan, scale, dq, dk, dv,
                             stamps=bwd_stamps)
    for name, x, x0 in zip(("out", "lse", "dk", "dv"), (out, lse, dk, dv),
                           (want[0], want[1], want[3], want[4])):
        assert torch.equal(x, x0), f"{name} differs with the timeline"
    programs = {"forward": 3, "backward": 3 if gluon_attention.BWD_PERSISTENT[head_dim]
                else len(bwd_tiles)}
    for name, rows, tiles in (("forward", fwd_stamps.reshape(-1, 8),
                               fwd_tiles.repeat_interleave(2)),
                              ("backward", bwd_stamps, bwd_tiles)):
        rows = rows.cpu()
        assert (rows[:, 1:6] >= rows[:, 0:5]).all() and (rows[:, 0] > 0).all(), name
        assert torch.equal(rows[:, 6], tiles), name
        assert ((rows[:, 7] >= 0) & (rows[:, 7] < programs[name])).all(), name
    # the schedule: the (b, head)s in plan.heads_by_work's order, each head's blocks in turn, so
    # each program takes its items at rising positions of it (one program per item: its own)
    for name, rows, group in (("forward", fwd_stamps[:, 0].cpu(), 1),
                              ("backward", bwd_stamps.cpu(), q_heads // kv_heads)):
        position = schedule_positions(plan.start, group, len(rows))
        if programs[name] == len(rows):
            assert torch.equal(rows[:, 7], position), name
            continue
        for program in rows[:, 7].unique().tolist():
            mine = rows[:, 7] == program
            taken = position[mine][rows[mine, 0].argsort()]
            assert (taken[1:] > taken[:-1]).all(), f"{name}: program {program} out of order"


def schedule_positions(start, group, n_items):
    """Each Gluon work item's position in the kernels' schedule: its (b, head) (b, kv head
    with group > 1) at its place in plan.heads_by_work, then its block within the head."""
    order = plan_mod.heads_by_work(start, group).cpu().long()
    assert not torch.equal(order, torch.arange(len(order))), "the case should reorder heads"
    rank = torch.empty_like(order)
    rank[order] = torch.arange(len(order))
    blocks = n_items // len(order)
    item = torch.arange(n_items)
    return rank[item // blocks] * blocks + item % blocks


@gpu
@needs_cuda
def test_gpu_head_order_changes_nothing(cuda_engine, monkeypatch):
    """Both engines in the three head orders (FOXCOMPILE_HEAD_ORDER), 3 programs for the persistent
    Gluon kernels: the same results, bit for bit where each work item writes alone."""
    if cuda_engine.__name__.endswith("gluon_attention"):
        monkeypatch.setattr(cuda_engine, "_multiprocessors", lambda device: 3)
        head_orders_agree(cuda_engine, monkeypatch, "cuda", exact=("out", "lse", "dk", "dv"))
    else:
        head_orders_agree(cuda_engine, monkeypatch, "cuda")


@gpu
@needs_cuda
def test_gpu_gluon_backward_deterministic_is_tl(monkeypatch):
    """Under torch.use_deterministic_algorithms the Gluon engine's backward hands the call to tl's
    (it reduces dq by float32 adds in any order): the same gradients bit for bit, and without
    the flag it runs its own kernel (different rounding)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from foxcompile.kernels import gluon_attention, triton_attention
    if torch.cuda.get_device_capability()[0] != 9:
        pytest.skip("the Gluon engine is for sm90")
    q, k, v, lam = make_inputs(1, 4, 2, 700, 700, 64, torch.bfloat16, "cuda", decay=(1.0, 32.0),
                               layout="bthd")
    scale = 64 ** -0.5
    plan = plan_mod.make_plan(q, k, lam, scale, math.exp(-10.0), Prune.GUARDED,
                              norm=triton_attention.max_norm)
    out = torch.empty_like(q)
    lse = triton_attention.forward(q, k, v, lam, plan, scale, out)
    grad = torch.randn_like(q)

    def grads(engine):
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dlam = engine.backward(grad, q, k, v, lam, out, lse, plan, scale, dq, dk, dv)
        return dq, dk, dv, dlam

    want = grads(triton_attention)
    assert gluon_attention.backward_fallback_reason(q, plan) is None
    assert not all(torch.equal(a, b) for a, b in zip(grads(gluon_attention), want))
    torch.use_deterministic_algorithms(True)
    try:
        assert "deterministic" in gluon_attention.backward_fallback_reason(q, plan)
        for a, b in zip(grads(gluon_attention), want):
            assert torch.equal(a, b)
    finally:
        torch.use_deterministic_algorithms(False)


@gpu
@needs_cuda
def test_gpu_automatic_engine_choice(monkeypatch):
    """The measured choice: on sm90 the Gluon forward and backward (gluon) at head dim 128
    (bf16/fp16); at 64 both from 4k keys, tl below, and with document ids always tl's
    forward (gluon-bwd from 8k keys at 64, at every length at 128);
    tl for float32 and off sm90; a few queries go to the decode engine."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.delenv("FOXCOMPILE_ENGINE", raising=False)
    from foxcompile import kernels

    def qkv(head_dim, dtype=torch.bfloat16, n_queries=1000, n_keys=1000):
        q = torch.randn(1, 4, n_queries, head_dim, device="cuda", dtype=dtype)
        k = torch.randn(1, 4, n_keys, head_dim, device="cuda", dtype=dtype)
        return q, k, k

    sm90 = torch.cuda.get_device_capability()[0] == 9
    gluon = "gluon" if sm90 else "tl"
    for head_dim, want in ((64, "tl"), (128, gluon)):
        assert kernels.engine_name(*qkv(head_dim)) == want
        assert kernels.engine_name(*qkv(head_dim, torch.float16)) == want
        assert kernels.engine_name(*qkv(head_dim, torch.float32)) == "tl"
    assert kernels.engine_name(*qkv(64, n_keys=4095)) == "tl"
    assert kernels.engine_name(*qkv(64, n_keys=4096)) == gluon
    assert kernels.engine_name(*qkv(64, n_keys=16384)) == gluon
    assert kernels.engine_name(*qkv(64, torch.float32, n_keys=8192)) == "tl"
    doc = torch.zeros(1, 8192, dtype=torch.int32, device="cuda")
    assert kernels.engine_name(*qkv(64, n_keys=8192), doc=doc) == ("gluon-bwd" if sm90 else "tl")
    assert kernels.engine_name(*qkv(64, n_keys=4096), doc=doc[:, :4096]) == "tl"
    assert kernels.engine_name(*qkv(128, n_keys=4096), doc=doc[:, :4096]) == (
        "gluon-bwd" if sm90 else "tl")
    assert kernels.engine_name(*qkv(80)) == "tl"
    assert kernels.engine_name(*qkv(128, n_queries=1)) == "decode"


def test_gluon_store_strides():
    """The Gluon kernels' plain stores get their tensors' batch, head and time strides divided
    by 8 when all of them allow it (16-byte aligned rows; the kernels multiply them back), and
    as they are otherwise."""
    from foxcompile.kernels import gluon_attention
    bthd = torch.empty(2, 40, 3, 64).transpose(1, 2)             # strides (7680, 64, 192, 1)
    assert gluon_attention._store_strides(bthd) == (8, [960, 8, 24])
    odd = torch.empty(2, 3, 40, 68)[..., :64]                     # rows 68 apart
    assert gluon_attention._store_strides(odd) == (1, [8160, 2720, 68])
    # one tensor that does not allow it keeps both as they are
    assert gluon_attention._store_strides(bthd, odd) == (1, [7680, 64, 192, 8160, 2720, 68])
    # a dim of size 1 is never stepped over: its stride, odd or not, counts as 0
    one = torch.empty(1, 3, 40, 68)[..., :64].as_strided((1, 3, 40, 64), (5, 2720, 68, 1))
    assert gluon_attention._store_strides(one) == (1, [0, 2720, 68])
    lone = torch.empty(1, 40, 1, 64).transpose(1, 2).as_strided((1, 1, 40, 64), (7, 3, 64, 1))
    assert gluon_attention._store_strides(lone, bthd) == (8, [0, 0, 8, 960, 8, 24])


def test_gluon_preference_table():
    """Where the automatic choice takes each Gluon kernel (on sm90): every length at head dim
    128; at 64 both from 4k keys; never at other head dims. With document ids the forward is
    never Gluon's, and the backward at 64 from 8k keys."""
    from foxcompile.kernels import gluon_attention
    for documents in (False, True):
        for direction in ("forward", "backward"):
            min_keys = 8192 if documents else 4096
            gluon_chosen = direction == "backward" or not documents
            assert gluon_attention.prefers(128, 1, direction, documents) == gluon_chosen
            assert gluon_attention.prefers(128, 65536, direction, documents) == gluon_chosen
            assert gluon_attention.prefers(64, min_keys, direction, documents) == gluon_chosen
            assert gluon_attention.prefers(64, 65536, direction, documents) == gluon_chosen
            assert not gluon_attention.prefers(64, min_keys - 1, direction, documents)
            assert not gluon_attention.prefers(64, 1000, direction, documents)
            for head_dim in (16, 32, 80, 96, 256):
                assert not gluon_attention.prefers(head_dim, 16384, direction, documents)


@gpu
@needs_cuda
@pytest.mark.parametrize("head_dim", [16, 64, 80, 128, 256])
def test_gpu_max_row_norms(monkeypatch, head_dim):
    """The plan's one-pass norm kernel: equal to vector_norm(...).amax(-1) on strided views,
    with NaN and inf propagating (they turn pruning off)."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from foxcompile.kernels import triton_attention as cuda_engine
    x = torch.randn(2, 1000, 3, head_dim, device="cuda", dtype=torch.bfloat16).transpose(1, 2)
    ref = torch.linalg.vector_norm(x, dim=-1, dtype=torch.float32).amax(-1)
    got = cuda_engine.max_row_norms(x)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=0)
    assert torch.equal(cuda_engine.max_norm(x, torch.float32), got)   # the plan's norm on CUDA
    x = x.clone()
    x[0, 1, 777, 3] = float("nan")
    x[1, 2, 5, 0] = float("inf")
    got = cuda_engine.max_row_norms(x)
    assert torch.isnan(got[0, 1]) and torch.isinf(got[1, 2])
    assert torch.isfinite(got[0, 0]) and torch.isfinite(got[1, 0])
