"""Hardware counters of foxcompile's dense kernels and of SDPA cuDNN on one SYN70 shape, through
Nsight Compute: which pipe (tensor cores, FMA, MUFU for exp2, ALU) each kernel keeps busy, how
often warps can issue, and why they stall. Answers "what holds the kernels back".

    ncu --clock-control none --profile-from-start off --csv --page raw \
        --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
        --section Occupancy --section LaunchStats --section InstructionStats \
        python benchmarks/ncu_kernels.py --shape B2-T16384-H24-D64 > raw.csv
    python benchmarks/ncu_kernels.py --summarise raw.csv      # the table below from the CSV

Without --summarise the script warms everything up (compiles, autotunes), then profiles exactly
one dense forward + backward of foxcompile's `tl` kernels, one of SDPA cuDNN and, on sm90, one
of the Gluon engine (Gluon forward and backward) between cudaProfilerStart and cudaProfilerStop.
"""
import argparse
import csv
import io
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

# (column label, ncu metric) in the summary; a metric missing from the CSV prints as "-".
SUMMARY = [
    ("ms", "gpu__time_duration.sum"),
    ("regs", "launch__registers_per_thread"),
    ("warps/SM", "sm__warps_active.avg.per_cycle_active"),
    ("issue %", "sm__issue_active.avg.pct_of_peak_sustained_elapsed"),
    ("tensor %", "sm__pipe_tensor_cycles_active.avg.pct_of_peak_sustained_active"),
    ("fma %", "sm__inst_executed_pipe_fma.avg.pct_of_peak_sustained_active"),
    ("alu %", "sm__inst_executed_pipe_alu.avg.pct_of_peak_sustained_active"),
    ("xu(exp) %", "sm__inst_executed_pipe_xu.avg.pct_of_peak_sustained_active"),
    ("lsu %", "sm__inst_executed_pipe_lsu.avg.pct_of_peak_sustained_active"),
    ("dram %", "gpu__dram_throughput.avg.pct_of_peak_sustained_elapsed"),
]
STALLS = "smsp__average_warps_issue_stalled_"


def profile(shape, prune=False):
    """prune: profile the ACP kernels (pruning on) instead of the dense ones."""
    import torch
    from bench_attention import fox_kernels, parse_shape, sdpa, syn70
    from foxcompile.contract import Prune

    batch, seq, heads, head_dim = parse_shape(shape)
    q, k, v, _, lam = syn70(batch, seq, heads, head_dim)
    mode = Prune.PROVEN if prune else Prune.OFF
    runs = [fox_kernels(q, k, v, lam, mode)[1], sdpa(q, k, v, "cudnn")[1]]
    try:   # the Gluon engine (_gluon_fwd_kernel, _gluon_bwd_kernel) where it runs
        runs.append(fox_kernels(q, k, v, lam, mode, "gluon")[1])
    except ImportError as exc:
        print(f"no Gluon engine: {exc}", file=sys.stderr)
    for run in runs:
        for _ in range(3):
            run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStart()
    for run in runs:
        run()
    torch.cuda.synchronize()
    torch.cuda.cudart().cudaProfilerStop()


def _number(text):
    try:
        return float(text.replace(",", ""))
    except (AttributeError, ValueError):
        return None


def summarise(path, min_ms=0.2):
    """One line per kernel longer than min_ms: SUMMARY's metrics, then its top stall reasons
    (warps waiting for that reason per issued instruction, averaged over the kernel)."""
    with open(path) as f:
        text = f.read()
    start = text.find('"ID"')
    rows = list(csv.reader(io.StringIO(text[start:])))
    header, units, data = rows[0], rows[1], rows[2:]
    col = {name: i for i, name in enumerate(header)}
    name_col = col.get("Kernel Name")
    print(f"{'kernel':<44}" + "".join(f"{label:>11}" for label, _ in SUMMARY))
    for row in data:
        if len(row) != len(header):
            continue
        values = {}
        for label, metric in SUMMARY:
            value = _number(row[col[metric]]) if metric in col else None
            if value is not None and metric == "gpu__time_duration.sum":
                unit = units[col[metric]]
                value = value / {"ns": 1e6, "usecond": 1e3, "us": 1e3, "msecond": 1.0,
                                 "ms": 1.0}.get(unit, 1e6)
            values[label] = value
        if values.get("ms") is None or values["ms"] < min_ms:
            continue
        name = row[name_col][:43] if name_col is not None else "?"
        cells = "".join(f"{values[label]:>11.2f}" if values[label] is not None else f"{'-':>11}"
                        for label, _ in SUMMARY)
        print(f"{name:<44}{cells}")
        stalls = sorted(((_number(row[i]) or 0.0, h[len(STALLS):]) for h, i in col.items()
                         if h.startswith(STALLS) and h.endswith("_per_issue_active.ratio")
                         and "selected" not in h), reverse=True)[:5]
        print(" " * 6 + "stalled warps per issue: "
              + ", ".join(f"{reason.replace('_per_issue_active.ratio', '')} {value:.2f}"
                          for value, reason in stalls))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="B2-T16384-H24-D64",
                        help="SYN70 shape to profile (default: %(default)s)")
    parser.add_argument("--summarise", default=None, metavar="CSV",
                        help="print the table of an ncu CSV instead of running the kernels")
    parser.add_argument("--prune", action="store_true",
                        help="profile foxcompile's kernels with pruning on (ACP) instead of dense")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
    else:
        profile(args.shape, args.prune)


if __name__ == "__main__":
    main()
