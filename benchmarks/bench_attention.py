"""Forgetting attention on SYN70 (docs/benchmarks.md): foxcompile's Triton kernels with and
without ACP against SDPA (flash, cuDNN; plain causal, no gate), FlexAttention with a FoX score_mod,
fla's parallel_forgetting_attn (when installed), the FoX authors' ACP preview kernel (arctic-fox,
when .peers/arctic-fox holds it: benchmarks/fetch_arctic_fox.sh) and, when the op is importable,
foxcompile's autograd op end to end. One run, one card.

    python benchmarks/bench_attention.py [--shapes B8-T4096-H24-D64,...] [--json out.json]
    python benchmarks/bench_attention.py --sweep --json sweep.json    # launch-config sweep
    python benchmarks/bench_attention.py --configs sweep.json ...       # time with the sweep's best
    python benchmarks/bench_attention.py --rounds 3 ...                 # medians of 3 rounds

Median milliseconds (triton.testing.do_bench) of the forward and of forward + backward (with
--rounds N, the median of N rounds that each time every row once, so that a slow stretch of the
card falls on one round of several rows rather than on one row);
dense-equivalent TFLOP/s (causal forward 4 B H T^2 D / 2, forward + backward 3.5 times that, the
unpruned count over the time); the fraction of causal tiles skipped (on the kernels' pruning grid,
and on the 128 x 64 grid of the published measurements); the ratio to cuDNN.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import traceback

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from foxcompile.kernels import plan as plan_mod  # noqa: E402

try:
    from foxcompile.contract import Prune
except ImportError:  # a checkout older than contract.py (run_gpu_kernels.sh abref times one)
    class Prune:
        OFF, PROVEN, GUARDED = plan_mod.PRUNE_OFF, plan_mod.PRUNE_PROVEN, plan_mod.PRUNE_GUARDED

SHAPES = ["B8-T4096-H24-D64", "B2-T16384-H24-D64", "B1-T16384-H16-D128"]
EPSILON = math.exp(-10.0)


def parse_shape(name):
    parts = dict((p[0], int(p[1:])) for p in name.split("-"))
    return parts["B"], parts["T"], parts["H"], parts["D"]


def syn70(batch, seq, heads, head_dim, device="cuda", seed=0):
    """SYN70 as docs/benchmarks.md defines it: bf16 (B, T, H, D) q/k/v ~ N(0, 1), q and k RMS-normalised per
    head; head h decays with t_h log-spaced over [2, 512]; gate logit b_h + 0.3 N(0, 1) with
    b_h = -log(expm1(1 / t_h)); log f = logsigmoid(logit) in fp32. Returns q, k, v (B, T, H, D)
    bf16, log_f (B, T, H) fp32 and lam = cumsum(log_f) (B, H, T) fp32 contiguous."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32)

    def rms(x):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))).to(torch.bfloat16)

    q = rms(randn(batch, seq, heads, head_dim))
    k = rms(randn(batch, seq, heads, head_dim))
    v = randn(batch, seq, heads, head_dim).to(torch.bfloat16)
    t = torch.exp(torch.linspace(math.log(2.0), math.log(512.0), heads, device=device))
    bias = -torch.log(torch.expm1(1.0 / t))
    logit = bias + 0.3 * randn(batch, seq, heads)
    log_f = F.logsigmoid(logit.float())
    lam = torch.cumsum(log_f, dim=1).transpose(1, 2).contiguous()
    return q, k, v, log_f, lam


# foxcompile's kernel rows, each timed with pruning (KEY-acp, "ACP") and without (KEY-dense,
# "dense"): (KEY, label, fox_kernels engine)
KERNEL_ROWS = [
    ("fox", "foxcompile {mode}", "tl"),
    ("gluon", "foxcompile Gluon {mode} (Gluon fwd, Gluon bwd)", "gluon"),
    ("tlg", "foxcompile {mode} (tl fwd, Gluon bwd)", "tl+gluon"),
    ("gtl", "foxcompile {mode} (Gluon fwd, tl bwd)", "gluon+tl"),
]

# rows that take no document ids: skipped when the run packs documents (--doc-len)
NO_DOCUMENTS = {"flash", "cudnn", "flex", "fla", "arctic-fox-acp", "arctic-fox-dense"}


def document_ids(batch, seq, doc_len, dtype="int64", device="cuda"):
    """(B, T) document ids of sequences packed as documents of doc_len tokens (the last one
    shorter): arange(T) // doc_len in every row, as int64 or int32."""
    ids = torch.arange(seq, device=device) // doc_len
    return ids.to(getattr(torch, dtype)).expand(batch, seq)


def causal_flops(batch, seq, heads, head_dim):
    return 4.0 * batch * heads * seq * seq * head_dim / 2.0


def bench(fn, grad_to_none=None):
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=120, grad_to_none=grad_to_none,
                                   return_mode="median")


def time_rows(shape, impls, skip, rounds=1, timer=None):
    """One row per (label, key, make) of impls at this shape: fwd_ms and fwd_bwd_ms, the
    medians over `rounds` rounds that each time every row once, in order (so that a slow
    stretch of the card, clocks or another process, lands on one round of several rows, not
    on all rounds of one row), with each round's times in fwd_ms_rounds / fwd_bwd_ms_rounds
    when rounds > 1; "error" instead where the row is in `skip` or failed. make() returns
    (fwd, fwd_bwd, leaves), run once each before timing. timer(fn, grad_to_none) -> ms
    (default: bench)."""
    timer = timer or bench
    rows, calls = [], {}
    for label, key, make in impls:
        row = {"shape": shape, "impl": label, "key": key}
        rows.append(row)
        if key in skip:
            row["error"] = "skipped"
            continue
        try:
            fwd, fwd_bwd, leaves = make()
            fwd()
            fwd_bwd()
            _synchronize()
            calls[key] = (fwd, fwd_bwd, leaves)
        except Exception as exc:
            _failed(row, exc)
    times = {key: ([], []) for key in calls}
    for _ in range(rounds):
        for row in rows:
            key = row["key"]
            if key not in calls:
                continue
            fwd, fwd_bwd, leaves = calls[key]
            try:
                times[key][0].append(timer(fwd, None))
                times[key][1].append(timer(fwd_bwd, leaves))
            except Exception as exc:
                _failed(row, exc)
                del calls[key]
            _synchronize()
    for row in rows:
        if row["key"] in calls:
            fwd_ms, fwd_bwd_ms = times[row["key"]]
            row["fwd_ms"] = statistics.median(fwd_ms)
            row["fwd_bwd_ms"] = statistics.median(fwd_bwd_ms)
            if rounds > 1:
                row["fwd_ms_rounds"], row["fwd_bwd_ms_rounds"] = fwd_ms, fwd_bwd_ms
    return rows


def _failed(row, exc):
    """Records exc as the row's error (a traceback too, unless it is an ImportError: a peer or
    engine that is not there)."""
    row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" \
        if str(exc) else type(exc).__name__
    if not isinstance(exc, ImportError):
        traceback.print_exc(limit=3)


def _synchronize():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- implementations

def plan_norm():
    """The norm and start-block function the op gives the plan (kernels.max_norm and
    kernels.plan_start_blocks: one Triton kernel each on CUDA); make_plan's defaults are torch's.
    Checkouts older than these arguments chose them inside the plan."""
    import inspect
    parameters = inspect.signature(plan_mod.make_plan).parameters
    if "norm" not in parameters:
        return {}
    from foxcompile import kernels
    if "starts" not in parameters:
        return {"norm": kernels.max_norm}
    return {"norm": kernels.max_norm, "starts": kernels.plan_start_blocks}


def _fwd_and_fwd_bwd(run, grad):
    """(fwd, fwd_bwd) timing closures of an autograd call run(): the forward under no_grad,
    and the forward with a backward of grad."""
    def fwd():
        with torch.no_grad():
            return run()

    def fwd_bwd():
        run().backward(grad)

    return fwd, fwd_bwd


def fox_kernels(q, k, v, lam, prune, engine="tl", doc=None):
    """foxcompile's engine called directly: plan (threshold + boundaries) + kernels, on
    (B, H, T, D) views of the (B, T, H, D) tensors, outputs written through (B, T, H, D) views.
    engine: "tl" (triton_attention), "gluon" (gluon_attention: Gluon forward and backward),
    "tl+gluon" (the tl forward, the Gluon backward) or "gluon+tl" (the Gluon forward, the tl
    backward); doc: (B, T) document ids of packed sequences, or None."""
    from foxcompile.kernels import gluon_attention, triton_attention
    fwd_engine = gluon_attention if engine in ("gluon", "gluon+tl") else triton_attention
    bwd_engine = gluon_attention if engine in ("gluon", "tl+gluon") else triton_attention
    if gluon_attention in (fwd_engine, bwd_engine):
        reason = gluon_attention.unsupported_reason(q.transpose(1, 2), k.transpose(1, 2),
                                                    v.transpose(1, 2))
        if reason:
            raise ImportError(reason)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    grad = torch.randn_like(q).transpose(1, 2)
    norm = plan_norm()

    def fwd():
        plan = plan_mod.make_plan(qh, kh, lam, scale, EPSILON, prune, doc=doc, **norm)
        out = torch.empty_like(q).transpose(1, 2)
        lse = fwd_engine.forward(qh, kh, vh, lam, plan, scale, out, doc=doc)
        return plan, out, lse

    def fwd_bwd():
        plan, out, lse = fwd()
        dq = torch.empty_like(q).transpose(1, 2)
        dk = torch.empty_like(k).transpose(1, 2)
        dv = torch.empty_like(v).transpose(1, 2)
        if bwd_engine is gluon_attention and gluon_attention.backward_fallback_reason(qh, plan):
            raise ImportError(gluon_attention.backward_fallback_reason(qh, plan))
        bwd_engine.backward(grad, qh, kh, vh, lam, out, lse, plan, scale, dq, dk, dv, doc=doc)

    return fwd, fwd_bwd, None


def fox_op(q, k, v, log_f, doc=None):
    """foxcompile's autograd op (foxcompile.forgetting_attention), guarded pruning, bthd layout;
    doc: (B, T) document ids, or None."""
    import foxcompile
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    fg = log_f.detach().clone().requires_grad_(True)
    grad = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            return foxcompile.forgetting_attention(qg, kg, vg, fg, layout="bthd", doc=doc)

    def fwd_bwd():
        foxcompile.forgetting_attention(qg, kg, vg, fg, layout="bthd", doc=doc).backward(grad)

    return fwd, fwd_bwd, [qg, kg, vg, fg]


def sdpa(q, k, v, backend):
    from torch.nn.attention import SDPBackend, sdpa_kernel
    which = {"flash": SDPBackend.FLASH_ATTENTION, "cudnn": SDPBackend.CUDNN_ATTENTION}[backend]
    qg, kg, vg = (t.detach().clone().transpose(1, 2).requires_grad_(True) for t in (q, k, v))
    grad = torch.randn_like(qg)

    def fwd():
        with sdpa_kernel(which), torch.no_grad():
            return F.scaled_dot_product_attention(qg, kg, vg, is_causal=True)

    def fwd_bwd():
        with sdpa_kernel(which):
            F.scaled_dot_product_attention(qg, kg, vg, is_causal=True).backward(grad)

    return fwd, fwd_bwd, [qg, kg, vg]


_flex_compiled = None


def flex(q, k, v, lam):
    """FlexAttention with a FoX score_mod (score + c[q] - c[k]) and a causal block mask. The
    cumulative gate is captured twice (c and c.clone()), without which its compiled backward fails,
    and gets a gradient."""
    global _flex_compiled
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    if _flex_compiled is None:
        _flex_compiled = torch.compile(flex_attention, dynamic=False)
    qg, kg, vg = (t.detach().clone().transpose(1, 2).requires_grad_(True) for t in (q, k, v))
    c = lam.detach().clone().requires_grad_(True)
    grad = torch.randn_like(qg)
    seq = q.shape[1]

    def causal(b, h, q_idx, kv_idx):
        return q_idx >= kv_idx

    mask = create_block_mask(causal, None, None, seq, seq, device=q.device)

    c_k = c.clone()  # a second capture of the same gate (its compiled backward needs it)

    def score_mod(score, b, h, q_idx, kv_idx):
        return score + c[b, h, q_idx] - c_k[b, h, kv_idx]

    return (*_fwd_and_fwd_bwd(
        lambda: _flex_compiled(qg, kg, vg, score_mod=score_mod, block_mask=mask), grad),
        [qg, kg, vg, c])


def fla(q, k, v, log_f):
    from fla.ops.forgetting_attn import parallel_forgetting_attn
    qg, kg, vg = (t.detach().clone().requires_grad_(True) for t in (q, k, v))
    g = log_f.detach().clone().requires_grad_(True)
    grad = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            return parallel_forgetting_attn(qg, kg, vg, g)

    def fwd_bwd():
        parallel_forgetting_attn(qg, kg, vg, g).backward(grad)

    return fwd, fwd_bwd, [qg, kg, vg, g]


def _absent_module(name):
    """A stand-in for a package forgetting_attention.py imports at the top but the call below
    never uses: einops (rearrange, only for head_first=False) and pytest (the decorators of its
    test). Only while it is imported, on a machine without them."""
    import types
    mod = types.ModuleType(name)
    if name == "einops":
        def rearrange(*args, **kwargs):
            raise NotImplementedError("einops is not installed here; call with head_first=True")
        mod.rearrange = rearrange
    else:
        class Mark:
            def __getattr__(self, _):
                return lambda *args, **kwargs: (lambda fn: fn)
        mod.mark = Mark()
    return mod


def import_arctic_fox():
    """The FoX authors' ACP preview kernel, github.com/zhixuan-lin/arctic-fox: one module,
    forgetting_attention.py, imported from $ARCTIC_FOX_PATH (default .peers/arctic-fox in the
    repository root, where benchmarks/fetch_arctic_fox.sh unpacks it) put first on sys.path.
    ImportError, with the reason, when it is not there or does not import (the row is skipped)."""
    import importlib
    import importlib.util
    path = os.environ.get("ARCTIC_FOX_PATH") or os.path.join(ROOT, ".peers", "arctic-fox")
    path = os.path.abspath(path)
    if not os.path.isfile(os.path.join(path, "forgetting_attention.py")):
        raise ImportError(f"no arctic-fox at {path}: bash benchmarks/fetch_arctic_fox.sh GIT_DIR "
                          "(and carry .peers to the GPU machine), or set ARCTIC_FOX_PATH")
    absent = [name for name in ("einops", "pytest") if importlib.util.find_spec(name) is None]
    if path not in sys.path:
        sys.path.insert(0, path)
    sys.modules.update({name: _absent_module(name) for name in absent})
    try:
        mod = importlib.import_module("forgetting_attention")
    except ImportError:
        raise
    except Exception as exc:
        raise ImportError(f"arctic-fox does not import: {type(exc).__name__}: {exc}") from exc
    finally:
        for name in absent:
            sys.modules.pop(name, None)
    if os.path.dirname(os.path.abspath(mod.__file__)) != path:
        raise ImportError(f"'forgetting_attention' is {mod.__file__}, not the one in {path}")
    return mod


def arctic_fox_threshold(seq, heads, head_dim):
    """Their adaptive_threshold (the ACP paper's delta) as their README prescribes for a model
    with QK-norm: -(2 U + log N) + log eps, U = max||q|| max||k|| / sqrt(D) bounded through the
    norms' gains; SYN70's q and k are RMS-normalised with gain 1, so U = sqrt(D), and eps =
    EPSILON = e^-10: delta = -10 - 2 sqrt(D) - log T, the same for every head and batch (-34.32 at
    T = 4096, D = 64; -35.70 at T = 16384, D = 64; -42.33 at T = 16384, D = 128). foxcompile's plan
    takes U from the data per (batch, head): the bf16 norms come out a little above sqrt(D), so
    its delta is 0.035-0.055 lower, and on SYN70 it skips about 2e-4 fewer of the tiles."""
    return math.log(EPSILON) - 2.0 * math.sqrt(head_dim) - math.log(seq)


def arctic_fox(q, k, v, log_f, acp=True):
    """The FoX authors' ACP preview kernel (import_arctic_fox), through its public function:
    forgetting_attention(q, k, v, log_fgate, head_first=True, adaptive_threshold=delta), an
    autograd function (forward + backward Triton kernels; it takes the per-step log forget gate
    and does the cumsum itself, like foxcompile's op). q, k, v: (B, H, T, D) bf16 copies of
    SYN70's (B, T, H, D) tensors and log_fgate a (B, H, T) fp32 copy of log_f, made here, before
    timing; sm_scale left at its default 1 / sqrt(D). acp: adaptive_threshold = a (H,) fp32 device
    tensor of arctic_fox_threshold (their README passes a device tensor too); otherwise None, their
    kernel without pruning."""
    mod = import_arctic_fox()
    batch, seq, heads, head_dim = q.shape
    qg, kg, vg = (t.detach().transpose(1, 2).contiguous().requires_grad_(True) for t in (q, k, v))
    fg = log_f.detach().transpose(1, 2).contiguous().requires_grad_(True)
    delta = None
    if acp:
        delta = torch.full((heads,), arctic_fox_threshold(seq, heads, head_dim),
                           dtype=torch.float32, device=q.device)
    grad = torch.randn_like(qg)

    return (*_fwd_and_fwd_bwd(
        lambda: mod.forgetting_attention(qg, kg, vg, fg, head_first=True,
                                         adaptive_threshold=delta), grad),
        [qg, kg, vg, fg])


def arctic_fox_skipped(q, k, lam):
    """The fraction of causal tiles arctic-fox's forward skips with arctic_fox_threshold (its
    skip test, lam[first query of the block] - lam[last key of the block] < delta, is the plan's:
    plan.start_blocks), on its forward's grid (its get_fwd_config) and on 128 x 64."""
    mod = import_arctic_fox()
    batch, seq, heads, head_dim = q.shape
    value = arctic_fox_threshold(seq, heads, head_dim)
    delta = torch.full((batch, heads), value, dtype=lam.dtype, device=lam.device)
    block_m, block_n = mod.get_fwd_config(batch, heads, seq, seq, head_dim, True)[:2]
    return {"adaptive_threshold": value, "arctic_fox_fwd_grid": [block_m, block_n],
            "skipped_tiles": skipped_fraction(q, k, lam, block_m, block_n, delta),
            "skipped_tiles_128x64": skipped_fraction(q, k, lam, 128, 64, delta)}


# ----------------------------------------------------------------------------- helpers

def skipped_fraction(q, k, lam, block_m, block_n, delta=None):
    """Skipped over causal tiles on a block_m x block_n grid; delta (B, H): foxcompile's
    proven threshold when None."""
    if delta is None:
        qh, kh = q.transpose(1, 2), k.transpose(1, 2)
        scale = q.shape[-1] ** -0.5
        norm = {key: value for key, value in plan_norm().items() if key == "norm"}
        delta = plan_mod.threshold(qh, kh, lam, scale, EPSILON, Prune.PROVEN, **norm)
    start = plan_mod.start_blocks(lam, delta, q.shape[1], block_m, block_n)
    c = plan_mod.tile_counts(start, q.shape[1], k.shape[1], block_m, block_n)
    return (c.skipped_tiles.sum() / c.causal_tiles.sum()).item()


_USER_KERNEL_CONFIG = os.environ.get("FOXCOMPILE_KERNEL_CONFIG")


def set_configs(configs, head_dim):
    """FOXCOMPILE_KERNEL_CONFIG from a sweep's best configs for this head dim, or else the one
    this process was started with (if any)."""
    best = (configs or {}).get(str(head_dim))
    if best:
        os.environ["FOXCOMPILE_KERNEL_CONFIG"] = json.dumps(best)
    elif _USER_KERNEL_CONFIG:
        os.environ["FOXCOMPILE_KERNEL_CONFIG"] = _USER_KERNEL_CONFIG
    else:
        os.environ.pop("FOXCOMPILE_KERNEL_CONFIG", None)


def versions():
    import triton
    return {
        "card": torch.cuda.get_device_name(),
        "capability": ".".join(map(str, torch.cuda.get_device_capability())),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
    }


def register_report():
    """Registers, spills and shared memory of every compiled kernel variant so far."""
    from foxcompile.kernels import triton_attention as ta
    kern = ta.compiled_kernels()
    rows = []
    for name in ("_fwd_kernel", "_dkdv_kernel", "_dq_kernel"):
        fn = getattr(kern, name)
        for cache in getattr(fn, "device_caches", {}).values():
            table = cache[0] if isinstance(cache, tuple) else cache
            for compiled in getattr(table, "values", lambda: [])():
                try:
                    if hasattr(compiled, "_init_handles"):
                        compiled._init_handles()
                    meta = compiled.metadata
                    consts = getattr(getattr(compiled, "src", None), "constants", {}) or {}
                    shown = {str(k): v for k, v in consts.items()
                             if isinstance(v, (int, bool, str))}
                    rows.append({"kernel": name, "n_regs": getattr(compiled, "n_regs", None),
                                 "n_spills": getattr(compiled, "n_spills", None),
                                 "shared": getattr(meta, "shared", None),
                                 "num_warps": getattr(meta, "num_warps", None),
                                 "num_stages": getattr(meta, "num_stages", None),
                                 "constexprs": shown})
                except Exception as exc:  # report what we can
                    rows.append({"kernel": name, "error": repr(exc)})
    return rows


# ----------------------------------------------------------------------------- sweep

SWEEP = {
    64: {
        # (64, 128, 4, 3): the one forward config ptxas does not serialise at D = 64 (offline
        # sm90 compile with Triton 3.6, compile_offline.py; docs/kernels.md, next steps)
        "fwd": [(128, 64, 8, 3), (128, 64, 8, 4), (128, 64, 8, 2), (64, 64, 4, 3), (128, 32, 8, 4),
                (64, 128, 4, 3)],
        "dq": [(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4)],
        "dkdv": [(64, 64, 4, 3), (64, 64, 4, 4), (64, 32, 4, 4), (64, 64, 8, 3), (64, 128, 4, 2)],
    },
    128: {
        "fwd": [(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 4), (64, 64, 4, 3)],
        "dq": [(128, 64, 8, 3), (128, 64, 8, 4), (128, 32, 8, 4), (64, 64, 4, 3)],
        "dkdv": [(128, 64, 8, 2), (128, 64, 8, 3), (64, 64, 8, 3), (128, 32, 8, 4)],
    },
}
SWEEP_SHAPES = {64: "B2-T16384-H24-D64", 128: "B1-T16384-H16-D128"}


def sweep(args):
    """Time each candidate launch config of each kernel, dense and with ACP; pick per head dim
    the one with the smallest sum of (time / best time) over the two."""
    from foxcompile.kernels import triton_attention as ta
    results = {"versions": versions(), "candidates": {}, "best": {}}
    for head_dim, shape in SWEEP_SHAPES.items():
        batch, seq, heads, _ = parse_shape(shape)
        q, k, v, _, lam = syn70(batch, seq, heads, head_dim)
        qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
        scale = head_dim ** -0.5
        grad = torch.randn_like(q).transpose(1, 2)
        plans = {p: plan_mod.make_plan(qh, kh, lam, scale, EPSILON, p, **plan_norm())
                 for p in (Prune.OFF, Prune.PROVEN)}
        out = torch.empty_like(q).transpose(1, 2)
        dq, dk, dv = (torch.empty_like(t).transpose(1, 2) for t in (q, k, v))
        best = {}
        for kernel, candidates in SWEEP[head_dim].items():
            timings = []
            for cfg in candidates:
                os.environ["FOXCOMPILE_KERNEL_CONFIG"] = json.dumps({kernel: cfg})
                row = {"config": cfg}
                try:
                    for prune, plan in plans.items():
                        lse = ta.forward(qh, kh, vh, lam, plan, scale, out)
                        if kernel == "fwd":
                            ms = bench(lambda: ta.forward(qh, kh, vh, lam, plan, scale, out))
                        else:
                            ms = bench(lambda: ta.backward(grad, qh, kh, vh, lam, out, lse, plan,
                                                          scale, dq, dk, dv))
                        row["acp" if prune else "dense"] = ms
                except Exception as exc:
                    row["error"] = repr(exc)[:300]
                timings.append(row)
                print(f"sweep D{head_dim} {kernel} {cfg}: {row}", flush=True)
            ok = [r for r in timings if "error" not in r]
            if ok:
                bd = min(r["dense"] for r in ok)
                ba = min(r["acp"] for r in ok)
                pick = min(ok, key=lambda r: r["dense"] / bd + r["acp"] / ba)
                best[kernel] = list(pick["config"])
            results["candidates"][f"{head_dim}/{kernel}"] = timings
        os.environ.pop("FOXCOMPILE_KERNEL_CONFIG", None)
        results["best"][str(head_dim)] = best
        print(f"best D{head_dim}: {best}", flush=True)
    results["registers"] = register_report()
    return results


def profile_plan(shape="B2-T16384-H24-D64"):
    """GPU time of the ACP plan (threshold + start blocks) and of end_blocks, and where it goes."""
    batch, seq, heads, head_dim = parse_shape(shape)
    q, k, v, log_f, lam = syn70(batch, seq, heads, head_dim)
    qh, kh = q.transpose(1, 2), k.transpose(1, 2)
    scale = head_dim ** -0.5
    lam_t = log_f.cumsum(1).transpose(1, 2)        # the op's strided (B, H, T) view
    out = {}
    norm = plan_norm()
    for name, lam_in, prune in (("proven", lam, Prune.PROVEN),
                                ("guarded", lam, Prune.GUARDED),
                                ("guarded, strided lam", lam_t, Prune.GUARDED)):
        fn = lambda: plan_mod.make_plan(qh, kh, lam_in, scale, EPSILON, prune, **norm)  # noqa: E731
        fn()
        out[name] = bench(fn)
    plan = plan_mod.make_plan(qh, kh, lam, scale, EPSILON, Prune.PROVEN, **norm)
    out["end_blocks"] = bench(lambda: plan_mod.end_blocks(plan.start, seq, plan.block_n))
    print(f"plan ms at {shape}: {out}", flush=True)
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            plan_mod.make_plan(qh, kh, lam, scale, EPSILON, Prune.GUARDED, **norm)
        torch.cuda.synchronize()
    print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12), flush=True)
    return out


# ----------------------------------------------------------------------------- main

def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default=",".join(SHAPES),
                        help="comma-separated B<batch>-T<tokens>-H<heads>-D<head dim> "
                             "(default: %(default)s)")
    parser.add_argument("--json", default=None, help="also write the rows to this file")
    parser.add_argument("--sweep", action="store_true",
                        help="sweep the kernels' launch configurations instead")
    parser.add_argument("--profile-plan", action="store_true",
                        help="profile the pruning plan (threshold and tile boundaries) alone")
    parser.add_argument("--configs", default=None, help="a sweep's JSON: time with its best configs")
    parser.add_argument("--skip", default="", help="comma-separated rows to leave out (e.g. flex,fla)")
    parser.add_argument("--doc-len", type=int, default=0,
                        help="pack every sequence as documents of this many tokens (document "
                             "ids arange(T) // DOC_LEN; only foxcompile's rows take them, the "
                             "others are skipped; the skip column still counts ACP's tiles "
                             "alone); 0: one sequence (default)")
    parser.add_argument("--doc-dtype", default="int64", choices=("int64", "int32"),
                        help="dtype of the document ids (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="time every row this many times, round by round, and keep the "
                             "medians (default: %(default)s)")
    args = parser.parse_args()
    if args.rounds < 1:
        parser.error(f"--rounds must be at least 1, not {args.rounds}")
    if args.doc_len < 0:
        parser.error(f"--doc-len must be 0 (no documents) or positive, not {args.doc_len}")

    if args.profile_plan:
        profile_plan()
        return
    if args.sweep:
        results = sweep(args)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(results, f, indent=1)
        return

    configs = None
    if args.configs and os.path.exists(args.configs):
        with open(args.configs) as f:
            configs = json.load(f).get("best")
    skip = set(filter(None, args.skip.split(",")))
    info = versions()
    if args.doc_len:
        info["documents"] = {"doc_len": args.doc_len, "dtype": args.doc_dtype}
        skip |= NO_DOCUMENTS
    print(json.dumps(info), flush=True)
    results = {"versions": info, "configs": configs, "rows": []}
    for shape in args.shapes.split(","):
        batch, seq, heads, head_dim = parse_shape(shape)
        torch.cuda.empty_cache()
        q, k, v, log_f, lam = syn70(batch, seq, heads, head_dim)
        set_configs(configs, head_dim)
        flops = causal_flops(batch, seq, heads, head_dim)
        grid = plan_mod.tile_sizes(head_dim)
        skip_grid = skipped_fraction(q, k, lam, *grid)
        skip_anchor = skipped_fraction(q, k, lam, 128, 64)
        doc = document_ids(batch, seq, args.doc_len, args.doc_dtype) if args.doc_len else None
        impls = [
            (label.format(mode=mode), f"{prefix}-{suffix}",
             lambda engine=engine, prune=prune: fox_kernels(q, k, v, lam, prune, engine, doc))
            for prefix, label, engine in KERNEL_ROWS
            for mode, suffix, prune in (("ACP", "acp", Prune.PROVEN), ("dense", "dense", Prune.OFF))
        ] + [
            ("foxcompile op (autograd, guarded ACP)", "fox-op",
             lambda: fox_op(q, k, v, log_f, doc)),
            ("SDPA flash, causal, no gate", "flash", lambda: sdpa(q, k, v, "flash")),
            ("SDPA cuDNN, causal, no gate", "cudnn", lambda: sdpa(q, k, v, "cudnn")),
            ("FlexAttention, FoX score_mod", "flex", lambda: flex(q, k, v, lam)),
            ("fla parallel_forgetting_attn", "fla", lambda: fla(q, k, v, log_f)),
            ("arctic-fox preview kernel, ACP", "arctic-fox-acp",
             lambda: arctic_fox(q, k, v, log_f, acp=True)),
            ("arctic-fox preview kernel, no pruning", "arctic-fox-dense",
             lambda: arctic_fox(q, k, v, log_f, acp=False)),
        ]
        shape_rows = time_rows(shape, impls, skip, args.rounds)
        for row in shape_rows:
            if "fwd_ms" in row:
                row["fwd_tflops"] = flops / row["fwd_ms"] / 1e9
                row["fwd_bwd_tflops"] = 3.5 * flops / row["fwd_bwd_ms"] / 1e9
            if row["key"] in ("fox-acp", "fox-op"):
                row["skipped_tiles"] = skip_grid
                row["skipped_tiles_128x64"] = skip_anchor
            if row["key"] == "arctic-fox-acp" and "fwd_ms" in row:
                try:
                    row.update(arctic_fox_skipped(q, k, lam))
                except Exception as exc:  # the timing stands without it
                    row["skipped_tiles_error"] = f"{type(exc).__name__}: {exc}"[:200]
            print(json.dumps(row), flush=True)
        base = next((r for r in shape_rows if r["key"] == "cudnn" and "fwd_ms" in r), None)
        for row in shape_rows:
            if base and "fwd_ms" in row:
                row["fwd_vs_cudnn"] = row["fwd_ms"] / base["fwd_ms"]
                row["fwd_bwd_vs_cudnn"] = row["fwd_bwd_ms"] / base["fwd_bwd_ms"]
        results["rows"].extend(shape_rows)
        del q, k, v, log_f, lam
    os.environ.pop("FOXCOMPILE_KERNEL_CONFIG", None)
    results["registers"] = register_report()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    print_table(results)


def print_table(results):
    info = results["versions"]
    print(f"\n{info['card']} (sm{info['capability']}), torch {info['torch']}, triton "
          f"{info['triton']}, CUDA {info['cuda']}, cuDNN {info['cudnn']}, {info['date']}")
    print(f"{'shape':<19} {'implementation':<46} {'fwd ms':>8} {'f+b ms':>8} {'fwdTF/s':>8} "
          f"{'f+bTF/s':>8} {'skip':>6} {'f/cuDNN':>8} {'fb/cuDNN':>8}")
    for r in results["rows"]:
        if "fwd_ms" not in r:
            print(f"{r['shape']:<19} {r['impl']:<46} {r.get('error', '')[:60]}")
            continue
        skip = f"{r['skipped_tiles']:.3f}" if "skipped_tiles" in r else ""
        print(f"{r['shape']:<19} {r['impl']:<46} {r['fwd_ms']:8.2f} {r['fwd_bwd_ms']:8.2f} "
              f"{r['fwd_tflops']:8.0f} {r['fwd_bwd_tflops']:8.0f} {skip:>6} "
              f"{r.get('fwd_vs_cudnn', float('nan')):8.2f} {r.get('fwd_bwd_vs_cudnn', float('nan')):8.2f}")


if __name__ == "__main__":
    main()
