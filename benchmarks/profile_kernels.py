"""Where the time goes: per-kernel CUDA time (torch.profiler) of foxcompile's kernels on SYN70,
dense and with ACP, and of the autograd op end to end; with each case's host time per call (the
Python and launches, timed without waiting for the GPU) and wall time per call, so that a case
the host holds back (host >= GPU kernels) shows as such.

    python benchmarks/profile_kernels.py [--shapes B2-T16384-H24-D64,B1-T16384-H16-D128]
        [--rows 8] [--engine gluon] [--doc-len 2048 --doc-dtype int32]
"""
import argparse
import os
import sys
import time

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from bench_attention import document_ids, fox_kernels, fox_op, parse_shape, syn70  # noqa: E402
from foxcompile.kernels import plan as plan_mod  # noqa: E402
from foxcompile.contract import Prune


def host_and_wall_ms(fn, reps=20):
    """(host ms per call: until the last call returns, unsynchronised; wall ms per call: until
    the GPU is done), after a warm-up call."""
    fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(reps):
        fn()
    host = time.perf_counter() - start
    torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return host / reps * 1e3, wall / reps * 1e3


def python_profile(fn, rows, reps=20):
    """The Python functions taking the most own time over reps calls (cProfile)."""
    import cProfile
    import pstats
    fn()
    torch.cuda.synchronize()
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(reps):
        fn()
    prof.disable()
    torch.cuda.synchronize()
    print(f"  Python, {reps} calls, by own time:")
    pstats.Stats(prof).sort_stats("tottime").print_stats(rows)


def kernel_table(fn, reps=5, rows=8):
    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA, ProfilerActivity.CPU]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if e.device_type == torch.autograd.DeviceType.CUDA
              or getattr(e, "self_device_time_total", 0) > 0]
    # the total counts the kernels only: an operator's row repeats the time of its kernels
    kernels = [e for e in events if e.device_type == torch.autograd.DeviceType.CUDA]
    total = sum(getattr(e, "self_device_time_total", 0) for e in kernels) / reps / 1e3
    out = []
    for e in sorted(events, key=lambda e: -getattr(e, "self_device_time_total", 0))[:rows]:
        ms = getattr(e, "self_device_time_total", 0) / reps / 1e3
        out.append(f"    {ms:8.3f} ms  {e.count // reps:3d}x  {e.key[:90]}")
    host = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    launches = sum(e.count for e in host if e.key in ("cudaLaunchKernel", "cuLaunchKernel",
                                                      "cuLaunchKernelEx")) // reps
    out.append(f"  host: {launches} kernel launches per call; largest self CPU times:")
    for e in sorted(host, key=lambda e: -e.self_cpu_time_total)[:rows]:
        out.append(f"    {e.self_cpu_time_total / reps / 1e3:8.3f} ms  {e.count // reps:3d}x  "
                   f"{e.key[:90]}")
    return total, out


def op_fwd_bwd_fresh(fwd_bwd, leaves):
    """One forward and backward of the op with the leaves' .grad cleared first, as
    bench_attention times it: else every call adds its gradients into the last ones (three
    bf16 adds of q's size that a training step, whose q, k, v are not leaves, does not run)."""
    for leaf in leaves:
        leaf.grad = None
    fwd_bwd()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="B2-T16384-H24-D64,B1-T16384-H16-D128",
                        help="comma-separated SYN70 shapes (default: %(default)s)")
    parser.add_argument("--rows", type=int, default=8, help="kernels listed per case")
    parser.add_argument("--engine", default="gluon", choices=["tl", "gluon", "tl+gluon", "gluon+tl"],
                        help="the engine of the kernels-alone cases, as bench_attention.fox_kernels "
                             "takes it; the op runs the automatic choice (default: %(default)s)")
    parser.add_argument("--cprofile", action="store_true",
                        help="also the Python profile (cProfile, by own time) of each case")
    parser.add_argument("--doc-len", type=int, default=0,
                        help="pack every sequence as documents of this many tokens, as "
                             "bench_attention.py --doc-len does (default: no documents)")
    parser.add_argument("--doc-dtype", default="int64", choices=("int64", "int32"),
                        help="dtype of the document ids (default: %(default)s)")
    args = parser.parse_args()
    if args.doc_len < 0:
        parser.error(f"--doc-len must be 0 (no documents) or positive, not {args.doc_len}")
    if args.doc_len:
        print(f"sequences packed as documents of {args.doc_len} tokens ({args.doc_dtype} ids)")
    for shape in args.shapes.split(","):
        batch, seq, heads, head_dim = parse_shape(shape)
        q, k, v, log_f, lam = syn70(batch, seq, heads, head_dim)
        doc = document_ids(batch, seq, args.doc_len, args.doc_dtype) if args.doc_len else None
        cases = []
        try:   # the Gluon engine runs only on sm90 with a Triton that has it
            cases += [(f"{args.engine} kernels {name}",
                       fox_kernels(q, k, v, lam, prune, args.engine, doc)[1])
                      for name, prune in (("dense", Prune.OFF), ("ACP", Prune.PROVEN))]
        except ImportError as exc:
            print(f"{shape} {args.engine} kernels: {exc}")
        try:
            op_fwd, op_fwd_bwd, leaves = fox_op(q, k, v, log_f, doc)
            cases += [("op forward (no grad, guarded)", op_fwd),
                      ("op (autograd, guarded)", lambda: op_fwd_bwd_fresh(op_fwd_bwd, leaves))]
        except Exception as exc:  # the op is optional here
            print(f"{shape} op: {exc!r}")
        for name, fn in cases:
            try:
                total, lines = kernel_table(fn, rows=args.rows)
                host, wall = host_and_wall_ms(fn)
            except Exception as exc:
                print(f"{shape} {name}: {exc!r}")
                continue
            print(f"{shape} {name}: {total:.3f} ms of GPU kernels per call, "
                  f"host {host:.3f} ms, wall {wall:.3f} ms per call")
            print("\n".join(lines), flush=True)
            if args.cprofile:
                python_profile(fn, args.rows)
        del q, k, v, log_f, lam
        torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
