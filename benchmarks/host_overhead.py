"""Host time of foxcompile's op, and of each step of it: microseconds of Python, torch ops and
kernel launches per call, on shapes so small that the GPU never holds the host back (so the time
per call until the last call returns is the host's, not the kernels').

A call of the op costs the host this much whatever its shape; once the kernels of a call take
less GPU time than that (short sequences, documents that prune most tiles, decoding steps),
the op runs at the host's pace instead of the GPU's.

    python benchmarks/host_overhead.py [--reps 300] [--json out.json]

Per row: host and wall microseconds per call, and kernel launches per call (a count that,
unlike the times, does not move between runs: the host's times moved by up to 2x between runs
on machines of one kind). Rows: the op (forward without grad, forward in grad mode, forward +
backward) on a prefill shape with and without document ids and on a decoding-sized shape;
foxcompile::attention_backward alone; the op's forward step by step as
foxcompile/op/library.py runs it (the checks and the gate cumsum of forgetting_attention, the
score bound, the lam copy, the plan, the engine's choice and forward) and the backward's engine
call; two baselines: an empty tensor, and one launch of a small Triton kernel. Then, for each
forward + backward row, the host events with the most self time (torch.profiler).
"""
import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import foxcompile  # noqa: E402
from foxcompile.contract import DEFAULT_EPSILON as EPSILON, Prune  # noqa: E402
from foxcompile.kernels import (engine_for, engine_name, full_lam, max_norm,  # noqa: E402
                                plan_start_blocks, score_bounds)
from foxcompile.kernels import plan as plan_mod  # noqa: E402
from foxcompile.kernels import triton_attention  # noqa: E402
from foxcompile.op import api  # noqa: E402


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def host_us(fn, reps):
    """(host us per call: until the last of reps calls returns; wall us per call: until the GPU
    is done), after three warm-up calls."""
    for _ in range(3):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    host = time.perf_counter() - start
    sync()
    wall = time.perf_counter() - start
    return host / reps * 1e6, wall / reps * 1e6


def inputs(batch, n_queries, n_keys, heads, head_dim, doc_len=0, device="cuda"):
    """bf16 (B, T, H, D) q (the last n_queries positions), k, v; log forget gates (B, N, H) near
    zero; int32 document ids (B, N) of doc_len tokens, or None."""
    gen = torch.Generator(device=device).manual_seed(0)
    q = torch.randn(batch, n_queries, heads, head_dim, device=device, generator=gen,
                    dtype=torch.bfloat16)
    k, v = (torch.randn(batch, n_keys, heads, head_dim, device=device, generator=gen,
                        dtype=torch.bfloat16) for _ in range(2))
    log_f = torch.nn.functional.logsigmoid(
        torch.randn(batch, n_keys, heads, device=device, generator=gen) + 4.0)
    doc = None
    if doc_len:
        ids = torch.arange(n_keys, device=device) // doc_len
        doc = ids.to(torch.int32).expand(batch, n_keys)
    return q, k, v, log_f, doc


def op_rows(name, q, k, v, log_f, doc):
    """The op end to end: forward without grad, forward in grad mode, forward + backward (leaf
    grads cleared)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, log_f)]
    grad = torch.randn_like(q)

    def fwd():
        with torch.no_grad():
            foxcompile.forgetting_attention(q, k, v, log_f, layout="bthd", doc=doc)

    def fwd_grad():
        qg, kg, vg, fg = leaves
        return foxcompile.forgetting_attention(qg, kg, vg, fg, layout="bthd", doc=doc)

    def fwd_bwd():
        for leaf in leaves:
            leaf.grad = None
        fwd_grad().backward(grad)

    return [(f"{name}: op forward (no grad)", fwd),
            (f"{name}: op forward (grad mode, no backward)", fwd_grad),
            (f"{name}: op forward + backward", fwd_bwd)]


def backward_op_row(name, q, k, v, log_f, doc):
    """foxcompile::attention_backward called on its own, with the forward's saved outputs."""
    from foxcompile.op.library import attention, attention_backward
    lam = torch.cumsum(log_f.transpose(1, 2).float().contiguous(), dim=-1)
    scale = q.shape[-1] ** -0.5
    out, lse, start, bound = attention(q, k, v, lam, scale, EPSILON, int(Prune.GUARDED), "bthd",
                                       "host_overhead", doc=doc)
    grad = torch.randn_like(out)
    return [(f"{name}: foxcompile::attention_backward alone",
             lambda: attention_backward(grad, q, k, v, lam, out, lse, start, scale, "bthd", doc,
                                        bound))]


LAUNCH_EVENTS = ("cudaLaunchKernel", "cuLaunchKernel", "cuLaunchKernelEx")


def host_events(fn, reps):
    """torch.profiler's host events over reps calls of fn (after a warm-up call), averaged."""
    from torch.profiler import ProfilerActivity, profile
    fn()
    sync()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        sync()
    return prof.key_averages()


def launches(fn, reps=5):
    """Kernel launches per call (the CUDA launch events): unlike the host's time, a count that
    does not move between runs or machines."""
    return sum(e.count for e in host_events(fn, reps) if e.key in LAUNCH_EVENTS) / reps


def host_profile(fn, rows=15, reps=20):
    """The host events with the most self CPU time per call."""
    events = sorted(host_events(fn, reps), key=lambda e: -e.self_cpu_time_total)[:rows]
    return [f"    {e.self_cpu_time_total / reps:9.1f} us self {e.cpu_time_total / reps:9.1f} us "
            f"total {e.count / reps:5.1f}x  {e.key[:80]}" for e in events]


def step_rows(name, q, k, v, log_f, doc):
    """The op's forward (library.attention) and backward engine call, step by step."""
    scale = q.shape[-1] ** -0.5
    batch, heads, n_keys = q.shape[0], q.shape[2], k.shape[1]
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    lam = torch.cumsum(log_f.transpose(1, 2).float().contiguous(), dim=-1)
    bound, plan_bound = score_bounds(qh, kh, vh, scale, torch.float32, check_v=True)
    lam_full = full_lam(lam, batch, heads, bound)
    plan = plan_mod.make_plan(qh, kh, lam_full, scale, EPSILON, Prune.GUARDED, doc=doc,
                              bound=plan_bound, norm=max_norm, starts=plan_start_blocks)
    engine = engine_for(qh, kh, vh, doc)
    out = torch.empty_like(q)
    lse = engine.forward(qh, kh, vh, lam_full, plan, scale, out.transpose(1, 2), doc=doc)
    grad = torch.randn_like(q)
    dq, dk, dv = (torch.empty_like(t) for t in (q, k, v))
    rows = [
        ("api checks (forgetting_attention's _check)",
         lambda: api._check(q, k, v, log_f, "bthd", None, EPSILON, doc)),
        ("gate cumsum", lambda: torch.cumsum(log_f.transpose(1, 2).float().contiguous(), dim=-1)),
        ("score bounds (norms and bound: two launches)",
         lambda: score_bounds(qh, kh, vh, scale, torch.float32, check_v=True)),
        ("full_lam (one launch)", lambda: full_lam(lam, batch, heads, bound)),
        ("make_plan (start blocks, documents)",
         lambda: plan_mod.make_plan(qh, kh, lam_full, scale, EPSILON, Prune.GUARDED,
                                    doc=doc, bound=plan_bound, norm=max_norm,
                                    starts=plan_start_blocks)),
        ("engine_for", lambda: engine_for(qh, kh, vh, doc)),
        (f"engine forward ({engine_name(qh, kh, vh, doc)})",
         lambda: engine.forward(qh, kh, vh, lam_full, plan, scale, out.transpose(1, 2), doc=doc)),
        ("engine backward",
         lambda: engine.backward(grad.transpose(1, 2), qh, kh, vh, lam_full, out.transpose(1, 2),
                                 lse, plan, scale, dq.transpose(1, 2), dk.transpose(1, 2),
                                 dv.transpose(1, 2), doc=doc)),
    ]
    if doc is not None:
        rows.append(("document_start_blocks",
                     lambda: plan_mod.document_start_blocks(doc, q.shape[1], plan.block_m,
                                                            plan.block_n)))
    return [(f"{name}: {label}", fn) for label, fn in rows]


def baseline_rows(device):
    rows = [("baseline: torch.empty", lambda: torch.empty(64, device=device))]
    if device == "cuda":
        x = torch.randn(1, 1, 64, 64, device=device, dtype=torch.bfloat16)
        rows.append(("baseline: one small Triton launch (max_row_norms)",
                     lambda: triton_attention.max_row_norms(x)))
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reps", type=int, default=300, help="calls timed per row")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--device", default="cuda",
                        help="cuda (default); cpu only checks the script (under TRITON_INTERPRET=1 "
                             "the kernels run interpreted, so its times mean nothing)")
    args = parser.parse_args()
    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("host_overhead.py times CUDA launches: it needs a GPU (or --device cpu)")
    import triton
    card = torch.cuda.get_device_name(0) if args.device == "cuda" else "cpu"
    info = {"card": card, "torch": torch.__version__, "triton": triton.__version__,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    print(json.dumps(info))
    dev = args.device
    cases = [("prefill B1-T256-H4-D64", inputs(1, 256, 256, 4, 64, device=dev)),
             ("prefill B1-T256-H4-D64 docs of 128", inputs(1, 256, 256, 4, 64, 128, dev)),
             ("decode B1-M1-N4096-H4-D64", inputs(1, 1, 4096, 4, 64, device=dev))]
    rows = []
    for name, tensors in cases:
        rows += op_rows(name, *tensors)
    for name, tensors in cases[1::-1]:
        rows += backward_op_row(name, *tensors) + step_rows(name, *tensors)
    rows += baseline_rows(dev)
    results = []
    print(f"{'row':78s} {'host us':>9s} {'wall us':>9s} {'launches':>9s}")
    for name, fn in rows:
        host, wall = host_us(fn, args.reps)
        count = launches(fn)
        results.append({"row": name, "host_us": host, "wall_us": wall, "launches": count})
        print(f"{name:78s} {host:9.1f} {wall:9.1f} {count:9.1f}", flush=True)
    for name, fn in rows:
        if name.endswith("op forward + backward"):
            print(f"{name}, host events by self CPU time per call:")
            print("\n".join(host_profile(fn)), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({**info, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
