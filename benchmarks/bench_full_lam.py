"""The lam copy the kernels read (triton_attention.full_lam, one program per (b, h) row) timed
at training and decoding shapes, for launch configurations of its kernel (CHUNK elements per
step of its two passes, warps), on one CUDA GPU; prints a table and writes JSON.

    python benchmarks/bench_full_lam.py [--configs 1024:4 4096:8] [--out full_lam.json]

A decoding step has few rows (B x H, e.g. 1 x 12) of many keys, so the dependent steps of each
row, N / CHUNK per pass, set the time; a training call has many rows of fewer keys.
"""
import argparse
import json

import torch

from foxcompile.kernels import plan as plan_mod
from foxcompile.kernels import triton_attention as ta

SHAPES = [(1, 12, 16384), (1, 12, 65536), (1, 12, 131072), (16, 12, 16384), (8, 24, 4096),
          (2, 24, 16384)]


def launch(lam, bound, out, fill, chunk, warps, filled):
    batch, heads, n_keys = lam.shape
    ta._kernels(False)._full_lam_kernel[(batch * heads,)](
        lam, bound, out, fill, lam.stride(), bound.stride(), heads, n_keys,
        plan_mod.MASKED_KEY_MARGIN, plan_mod.MASKED_KEY_FALLBACK, CHUNK=chunk, FILL=filled,
        num_warps=warps)


def time_us(fn, reps=50):
    """Median of reps launches, each timed with CUDA events."""
    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1e3)
    return sorted(times)[len(times) // 2]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", nargs="+", default=["1024:4", f"{ta.FULL_LAM_CHUNK}:8"],
                        help="CHUNK:warps launch configurations to time")
    parser.add_argument("--out", default="full_lam.json")
    args = parser.parse_args()
    configs = [tuple(int(x) for x in c.split(":")) for c in args.configs]
    rows = []
    for batch, heads, n_keys in SHAPES:
        lam = torch.cumsum(-torch.rand(batch, heads, n_keys, device="cuda"), dim=-1)
        lam[..., -100:] = float("inf")      # a static cache's unfilled tail
        bound = torch.rand(batch, heads, device="cuda") * 5.0
        out, fill = torch.empty_like(lam), torch.empty_like(lam)
        want = plan_mod.full_lam(lam, batch, heads, bound, filled=True)
        for filled in (False, True):
            row = {"shape": [batch, heads, n_keys], "filled": filled}
            for chunk, warps in configs:
                launch(lam, bound, out, fill, chunk, warps, filled)
                assert torch.equal(out, want[0]) and (not filled or torch.equal(fill, want[1]))
                row[f"{chunk}:{warps}"] = time_us(
                    lambda: launch(lam, bound, out, fill, chunk, warps, filled))
            rows.append(row)
            print(f"B{batch} H{heads} N{n_keys:>6} fill={int(filled)}  " + "  ".join(
                f"{c}: {row[c]:8.1f} us" for c in row if ":" in c), flush=True)
    info = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
            "triton": __import__("triton").__version__, "rows": rows}
    with open(args.out, "w") as f:
        json.dump(info, f, indent=1)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
