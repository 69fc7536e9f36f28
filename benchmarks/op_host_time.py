"""Host time (Python, dispatch and launches, the GPU idle and waiting) of the op's pieces, one
call at a time: each call starts on an idle GPU (synchronised before it) and is timed until it
returns, without waiting for its kernels. The difference between the op and the kernels alone
is what the op's own machinery costs the host (the custom op, the plan's torch ops, the gate's
cumsum, autograd).

    python benchmarks/op_host_time.py [--shape B8-T4096-H24-D64] [--calls 50]
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_attention import EPSILON, parse_shape, syn70  # noqa: E402
import foxcompile  # noqa: E402
from foxcompile.contract import Prune  # noqa: E402
from foxcompile.kernels import max_norm, plan as plan_mod, plan_start_blocks  # noqa: E402
from foxcompile.kernels import triton_attention as ta  # noqa: E402
from foxcompile.op import library  # noqa: E402


def host_ms(fn, calls):
    """Median host milliseconds of one call made on an idle GPU."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    torch.cuda.synchronize()
    return statistics.median(times) * 1e3


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="B8-T4096-H24-D64")
    parser.add_argument("--calls", type=int, default=50)
    args = parser.parse_args()
    batch, seq, heads, head_dim = parse_shape(args.shape)
    q, k, v, log_f, lam = syn70(batch, seq, heads, head_dim)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    scale = head_dim ** -0.5
    ops_plan = dict(norm=max_norm, starts=plan_start_blocks)   # what the op passes
    plan = plan_mod.make_plan(qh, kh, lam, scale, EPSILON, Prune.GUARDED, v=vh, **ops_plan)
    out = torch.empty_like(q).transpose(1, 2)
    lse = ta.forward(qh, kh, vh, lam, plan, scale, out)
    grad = torch.randn_like(q)
    dq, dk, dv = (torch.empty_like(t).transpose(1, 2) for t in (q, k, v))
    leaves = [t.detach().clone().requires_grad_(True) for t in (q, k, v, log_f)]
    impl = getattr(library.attention, "_init_fn", None)

    def op_fwd_bwd():
        foxcompile.forgetting_attention(*leaves, layout="bthd").backward(grad)
        for t in leaves:
            t.grad = None

    cases = {
        "max_norm (one pass)": lambda: max_norm(kh, torch.float32),
        "make_plan proven (no v)": lambda: plan_mod.make_plan(qh, kh, lam, scale, EPSILON,
                                                              Prune.PROVEN, **ops_plan),
        "make_plan guarded (with v)": lambda: plan_mod.make_plan(
            qh, kh, lam, scale, EPSILON, Prune.GUARDED, v=vh, **ops_plan),
        "make_plan guarded, torch start blocks": lambda: plan_mod.make_plan(
            qh, kh, lam, scale, EPSILON, Prune.GUARDED, v=vh, norm=max_norm),
        "plan_start_blocks alone": lambda: plan_start_blocks(
            lam, torch.ones(batch, heads, device=lam.device), EPSILON, Prune.GUARDED, seq,
            plan.block_m, plan.block_n),
        "tl forward kernel launch": lambda: ta.forward(qh, kh, vh, lam, plan, scale, out),
        "tl backward launches": lambda: ta.backward(grad.transpose(1, 2), qh, kh, vh, lam, out,
                                                    lse, plan, scale, dq, dk, dv),
        "op forward, impl called directly": (lambda: impl(q, k, v, lam, scale, EPSILON,
                                                          int(Prune.GUARDED), "bthd", "x"))
        if impl else None,
        "op forward, torch.ops.foxcompile.attention": lambda: torch.ops.foxcompile.attention(
            q, k, v, lam, scale, EPSILON, int(Prune.GUARDED), "bthd", "x"),
        "forgetting_attention, no grad": lambda: foxcompile.forgetting_attention(
            q, k, v, log_f, layout="bthd"),
        "forgetting_attention forward + backward": op_fwd_bwd,
    }
    print(f"{torch.cuda.get_device_name()}, torch {torch.__version__}, {args.shape}: host ms "
          f"per call (median of {args.calls}, idle GPU)")
    with torch.no_grad():
        for name, fn in cases.items():
            if fn is None or "backward" in name and "launches" not in name:
                continue
            print(f"  {host_ms(fn, args.calls):8.3f}  {name}", flush=True)
    print(f"  {host_ms(op_fwd_bwd, args.calls):8.3f}  forgetting_attention forward + backward")


if __name__ == "__main__":
    main()
