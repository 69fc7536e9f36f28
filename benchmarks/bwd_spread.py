"""Why the Gluon ACP backward's time moves from run to run: the backward alone (Gluon kernel and
its host work, on a fixed forward's out and lse), timed in one process at several allocator
states, with pruning and dense.

Across processes the ACP backward at B2-T16384-H24-D64 took 4.28 to 5.30 ms on an H100 while the
dense one stayed within 2%. Each trial here empties PyTorch's cache and holds a pad of a
different size first, so that the buffers the backward allocates (dq's float32 accumulator,
which every item reduce-adds into, above all) land at other addresses. If the times spread
across trials as they did across processes, while repeats within a trial agree, the address of
those buffers is what moves them; if every trial agrees, the cause lies elsewhere (other
processes, clocks, the scheduler's order).

    python benchmarks/bwd_spread.py [--shape B2-T16384-H24-D64] [--trials 8] [--repeats 3]
        [--json spread.json]
"""
import argparse
import json
import os
import statistics
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench_attention import EPSILON, bench, parse_shape, plan_norm, syn70, versions  # noqa: E402
from foxcompile.contract import Prune  # noqa: E402
from foxcompile.kernels import gluon_attention  # noqa: E402
from foxcompile.kernels import plan as plan_mod  # noqa: E402

PAD_STEP_MIB = 37   # pads of 0, 37, 74, ... MiB: not a multiple of the allocator's 2 MiB pages


def backward_call(shape: str, prune):
    """A closure running the Gluon backward once on a fixed forward, and the float32 dq
    accumulator's size in bytes."""
    batch, seq, heads, head_dim = parse_shape(shape)
    q, k, v, _log_f, lam = syn70(batch, seq, heads, head_dim)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(qh, kh, lam, scale, EPSILON, prune, **plan_norm())
    reason = (gluon_attention.unsupported_reason(qh, kh, vh)
              or gluon_attention.backward_fallback_reason(qh, plan))
    if reason:
        sys.exit(f"the Gluon backward cannot run here: {reason}")
    out = torch.empty_like(q).transpose(1, 2)
    lse = gluon_attention.forward(qh, kh, vh, lam, plan, scale, out)
    grad = torch.randn_like(q).transpose(1, 2)

    def run():
        dq, dk, dv = (torch.empty_like(t).transpose(1, 2) for t in (q, k, v))
        gluon_attention.backward(grad, qh, kh, vh, lam, out, lse, plan, scale, dq, dk, dv)

    return run, q.numel() * 4


def trial(run, dq_bytes: int, pad_mib: int, repeats: int) -> dict:
    """repeats timings of run after emptying the cache and holding a pad_mib pad; where a block
    of dq's accumulator size lands then (the backward's own allocation likely reuses it)."""
    torch.cuda.empty_cache()
    pad = torch.empty(pad_mib << 20, dtype=torch.uint8, device="cuda") if pad_mib else None
    probe = torch.empty(dq_bytes, dtype=torch.uint8, device="cuda")
    address = probe.data_ptr()
    del probe
    times = [bench(run) for _ in range(repeats)]
    del pad
    return {"pad_mib": pad_mib, "dq_address": hex(address), "ms": times}


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="B2-T16384-H24-D64")
    parser.add_argument("--trials", type=int, default=8, help="allocator states (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timings per trial (default 3)")
    parser.add_argument("--json", help="write the trials here")
    args = parser.parse_args()
    if args.trials < 1 or args.repeats < 1:
        parser.error("--trials and --repeats must be at least 1")
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA GPU (the Gluon backward runs on sm90)")
    info = versions()
    print(json.dumps(info), flush=True)
    results = {"versions": info, "shape": args.shape, "runs": {}}
    for name, prune in (("ACP", Prune.PROVEN), ("dense", Prune.OFF)):
        run, dq_bytes = backward_call(args.shape, prune)
        run()
        torch.cuda.synchronize()
        trials = []
        for i in range(args.trials):
            t = trial(run, dq_bytes, i * PAD_STEP_MIB, args.repeats)
            trials.append(t)
            print(f"{args.shape} {name:5s} pad {t['pad_mib']:4d} MiB  dq at {t['dq_address']}  "
                  + "  ".join(f"{ms:.3f}" for ms in t["ms"]) + " ms", flush=True)
        medians = [statistics.median(t["ms"]) for t in trials]
        within = max((max(t["ms"]) - min(t["ms"])) / min(t["ms"]) for t in trials)
        across = (max(medians) - min(medians)) / min(medians)
        print(f"{args.shape} {name}: backward {min(medians):.3f}-{max(medians):.3f} ms over "
              f"{args.trials} allocator states (spread {across:.1%}); within a state at most "
              f"{within:.1%}", flush=True)
        results["runs"][name] = {"trials": trials, "spread_across": across,
                                 "spread_within": within}
        del run
        torch.cuda.empty_cache()
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
