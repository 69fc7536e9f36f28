"""Where a Gluon work item's time goes: the forward and backward kernels built with TIMELINE,
which read the SM's cycle counter at each step of every work item, on SYN70 inputs with and
without pruning. Needs an sm90 GPU and a Triton with Gluon's Hopper pieces.

    python benchmarks/item_timeline.py [--shapes B8-T4096-H24-D64,...] [--json out.json]

Per kernel and case, summed over all items and shown as shares of the programs' busy time
(from taking their first item to finishing their last):
  forward (each consumer warp group; the two averaged):
    take   waiting for the item (the loader's queue)     q      waiting for Q
    first  the first key tile: its scores alone          loop   the other tiles
    drain  the last tile's P V                            store  out and lse
  backward (the math warps):
    take   waiting for the item                          kv     waiting for its K and V
    setup  the first tile's position, lam (global loads)  first  the first tile
    loop   the other tiles                                store  dk, dv
and `between`: the gaps between one item's end and the next one's start. Then a least-squares
fit of each item's cycles against its tiles (cycles per tile, cycles per item) and, per tile,
the loop's own rate, and the idle time at the end: the streams' mean busy span short of the
longest one (all start together, so that is the time they wait for the last items: the
tail). Everything is in SM cycles (%clock64): the call's time from CUDA events
includes its other launches and gaps, so it gives no reliable clock rate to convert them. The
TIMELINE build's own time is given beside the normal build's: the stamps cost a little (a few
stores per item).
"""
import argparse
import json
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench_attention import EPSILON, bench, parse_shape, plan_norm, syn70  # noqa: E402
from foxcompile.contract import Prune  # noqa: E402
from foxcompile.kernels import gluon_attention as ga  # noqa: E402
from foxcompile.kernels import plan as plan_mod  # noqa: E402

PHASES = {"forward": ("take", "q", "first", "loop", "drain", "store"),
          "backward": ("take", "kv", "setup", "first", "loop", "store")}


def analyse(rows: torch.Tensor, streams: torch.Tensor, names) -> dict:
    """rows (items, 8) int64: slots 0-5 the stamps, 6 the item's tiles; streams: which
    partition of which program took each row (its items come one after another)."""
    rows = rows.double().cpu()
    stamps, tiles = rows[:, :6], rows[:, 6]
    phases = stamps[:, 1:] - stamps[:, :-1]                       # the five steps after the take
    start, end = stamps[:, 0], stamps[:, 5]
    spans = []
    take = 0.0
    for stream in streams.unique():
        mine = (streams == stream).nonzero().flatten()
        order = mine[start[mine].argsort()]
        spans.append(float(end[order].max() - start[order].min()))
        # from each item's end to the next item's take
        take += float((start[order][1:] - end[order][:-1]).sum())
    busy = sum(spans)
    total = {names[0]: take,
             **{name: float(phases[:, i].sum()) for i, name in enumerate(names[1:])}}
    fit = torch.linalg.lstsq(torch.stack([tiles, torch.ones_like(tiles)], 1),
                             (end - start)[:, None]).solution.flatten()
    many = tiles > 1
    loop = phases[:, names.index("loop") - 1]
    return {
        "items": int(rows.shape[0]), "streams": len(streams.unique()), "tiles": float(tiles.sum()),
        "span_cycles": busy / len(spans), "max_span_cycles": max(spans),
        # the programs start together, so the longest span is about the kernel's: the rest of
        # it, averaged over the streams, is time they wait at the end for the last ones (the
        # tail; meaningful for the persistent kernels, whose streams take many items)
        "idle_at_end": 1.0 - busy / len(spans) / max(spans),
        "share": {k: v / busy for k, v in total.items()},
        "cycles_per_item": {k: v / rows.shape[0] for k, v in total.items()},
        "fit_cycles_per_tile": float(fit[0]), "fit_cycles_per_item": float(fit[1]),
        "loop_cycles_per_tile": float(loop[many].sum() / (tiles[many] - 1).sum()),
    }


def run_case(shape: str, prune: int):
    """The forward's and the backward's timelines (analyse) and times at one shape."""
    batch, seq, heads, head_dim = parse_shape(shape)
    q, k, v, log_f, lam = syn70(batch, seq, heads, head_dim)
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    scale = head_dim ** -0.5
    plan = plan_mod.make_plan(qh, kh, lam, scale, EPSILON, prune, **plan_norm())
    out = torch.empty_like(q).transpose(1, 2)
    grad = torch.randn_like(q).transpose(1, 2)
    grads = [torch.empty_like(t).transpose(1, 2) for t in (q, k, v)]
    items = -(-seq // 128) * batch * heads              # the same count both ways here (Hq = Hk)
    fwd_stamps = torch.zeros(items, 2, 8, dtype=torch.int64, device="cuda")
    bwd_stamps = torch.zeros(items, 8, dtype=torch.int64, device="cuda")
    lse = ga.forward(qh, kh, vh, lam, plan, scale, out)
    calls = {
        "forward": lambda stamps=None: ga.forward(qh, kh, vh, lam, plan, scale, out,
                                                  stamps=stamps),
        "backward": lambda stamps=None: ga.backward(grad, qh, kh, vh, lam, out, lse, plan, scale,
                                                    *grads, stamps=stamps),
    }
    result = {}
    for name, stamps in (("forward", fwd_stamps), ("backward", bwd_stamps)):
        call = calls[name]
        plain = bench(call)
        timed = bench(lambda: call(stamps))
        stamps.zero_()
        call(stamps)
        torch.cuda.synchronize()
        rows = stamps.reshape(-1, 8)
        # a stream: one warp group of a program in the forward (two rows per item), the math
        # warps of a program in the backward
        streams = rows[:, 7].cpu() * 2 + (torch.arange(rows.shape[0]) % 2 if name == "forward"
                                          else 0)
        result[name] = {**analyse(rows, streams, PHASES[name]), "ms": plain,
                        "timeline_ms": timed}
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="B8-T4096-H24-D64,B2-T16384-H24-D64,"
                                            "B1-T16384-H16-D128")
    parser.add_argument("--json", help="write the results here")
    args = parser.parse_args()
    reason = ga.unsupported_reason(*(torch.empty(1, 1, 128, 64, device="cuda",
                                                 dtype=torch.bfloat16) for _ in range(3)))
    if reason:
        raise SystemExit(f"the Gluon engine cannot run here: {reason}")
    versions = {"card": torch.cuda.get_device_name(), "torch": torch.__version__,
                "triton": __import__("triton").__version__}
    print(json.dumps(versions))
    results = []
    for shape in args.shapes.split(","):
        for mode, prune in (("dense", Prune.OFF), ("ACP", Prune.GUARDED)):
            case = run_case(shape, prune)
            for kernel, r in case.items():
                results.append({"shape": shape, "mode": mode, "kernel": kernel, **r})
                shares = "  ".join(f"{k} {v * 100:4.1f}%" for k, v in r["share"].items())
                per_item = "  ".join(f"{k} {v:5.0f}" for k, v in r["cycles_per_item"].items())
                print(f"{shape} {mode:5s} {kernel:8s} {r['ms']:.3f} ms "
                      f"(timeline build {r['timeline_ms']:.3f}), {r['items']} rows, "
                      f"{r['tiles'] / r['items']:.1f} tiles/item")
                print(f"    shares of busy time: {shares}")
                print(f"    cycles per item:     {per_item}")
                print(f"    fit: {r['fit_cycles_per_tile']:.0f} cycles/tile + "
                      f"{r['fit_cycles_per_item']:.0f} cycles/item; the loop alone "
                      f"{r['loop_cycles_per_tile']:.0f} cycles/tile")
                print(f"    idle at the end: {r['idle_at_end'] * 100:.1f}% of the longest "
                      f"stream's span ({r['streams']} streams)", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": versions, "rows": results}, f, indent=1)


if __name__ == "__main__":
    main()
