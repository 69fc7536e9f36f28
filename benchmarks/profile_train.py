"""Where a training step's GPU time goes: torch.profiler over a few steps of the example FoX LM
(the model of bench_train.py), per variant, each kernel put in one group by its name, and what
the fox_acp step spends beyond the plain-SDPA step, group by group.

Groups (first match wins, in this order):
    fox attention   foxcompile's attention kernels (tl and Gluon, forward and backward)
    fox plan        foxcompile's plan and guard kernels (norms, score bound, lam, start blocks)
    sdpa attention  PyTorch's SDPA kernels (cuDNN, flash, memory-efficient)
    matmul          cuBLAS / CUTLASS GEMMs and Inductor's GEMM templates
    inductor        the rest of Inductor's generated Triton kernels (norms, gates, loss, ...)
    optimizer       multi-tensor kernels (AdamW, gradient clipping)
    aten            PyTorch's own elementwise, reduction, scan and copy kernels
    other           anything else
On CPU (no kernels) the leaf operators' own CPU time stands in for the kernels, grouped the same
way by operator name: for checking the script, not for timing.

    python benchmarks/profile_train.py --config 125m --seq-len 4096 --batch-size 48
    python benchmarks/profile_train.py --device cpu --config tiny --seq-len 64 --batch-size 2 \\
        --compile-with aot_eager

The variants are built, gated and fed as bench_train.py's (bench_train.prepare).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_train  # noqa: E402
from bench_train import VARIANTS, sdpa_context  # noqa: E402
from bench_train import train  # noqa: E402

FOX_ATTENTION = ("_fwd_kernel", "_dq_kernel", "_dkdv_kernel", "_dq_finish_kernel",
                 "_row_dot_kernel", "_gluon_fwd_kernel", "_gluon_bwd_kernel", "_decode_kernel",
                 "_decode_combine_kernel")
FOX_PLAN = ("_max_norm_kernel", "_qkv_norms_kernel", "_score_bound_kernel", "_full_lam_kernel",
            "_plan_start_kernel", "_heads_by_work_kernel")
GROUPS = (
    ("fox attention", re.compile(r"^(%s)\b|^foxcompile::" % "|".join(FOX_ATTENTION))),
    ("fox plan", re.compile(r"^(%s)\b" % "|".join(FOX_PLAN))),
    ("sdpa attention", re.compile(r"cudnn|fmha|flash|sdpa|attention", re.IGNORECASE)),
    ("matmul", re.compile(r"gemm|nvjet|cutlass|xmma|cublas|^triton_tem_|"
                          r"^aten::(mm|addmm|bmm|baddbmm|_scaled_mm)$", re.IGNORECASE)),
    ("inductor", re.compile(r"^triton_")),
    ("optimizer", re.compile(r"multi_tensor|foreach|adam", re.IGNORECASE)),
    ("aten", re.compile(r"at::native|^aten::|Memcpy|Memset", re.IGNORECASE)),
)
OTHER = "other"
GROUP_NAMES = tuple(name for name, _ in GROUPS) + (OTHER,)


def group_of(kernel: str) -> str:
    """The group of a kernel (or, on CPU, a leaf operator) by its name."""
    for name, pattern in GROUPS:
        if pattern.search(kernel):
            return name
    return OTHER


def kernel_times(prof, cuda: bool) -> dict[str, tuple[float, int]]:
    """{kernel name: (total ms, calls)} over the profiled steps: the CUDA kernels' device time,
    or on CPU the operators' own CPU time (an operator that calls others keeps only its own)."""
    times = {}
    for event in prof.key_averages():
        if cuda:
            if event.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = getattr(event, "self_device_time_total", 0)
        else:
            us = event.self_cpu_time_total
        if us > 0:
            times[event.key] = (us / 1e3, event.count)
    return times


def summarise(times: dict[str, tuple[float, int]], steps: int, wall_ms: float, top: int) -> dict:
    """Per step: each group's ms and calls, the sum, the step's wall time and the share of the
    wall time no kernel ran (the host or the launches held the GPU back), and the top kernels."""
    groups = {name: {"ms": 0.0, "calls": 0} for name in GROUP_NAMES}
    for kernel, (ms, calls) in times.items():
        group = groups[group_of(kernel)]
        group["ms"] += ms / steps
        group["calls"] += calls // steps
    busy = sum(group["ms"] for group in groups.values())
    largest = sorted(times.items(), key=lambda item: -item[1][0])[:top]
    return {
        "step_ms": wall_ms,
        "kernels_ms": busy,
        "idle_share": max(0.0, 1.0 - busy / wall_ms) if wall_ms > 0 else None,
        "groups": groups,
        "top": [{"kernel": kernel, "group": group_of(kernel), "ms": ms / steps,
                 "calls": calls // steps} for kernel, (ms, calls) in largest],
    }


def profile_variant(name: str, args, corpus) -> dict:
    """Warm-up steps (compilation), args.steps timed steps, then the same steps profiled, of
    variant `name` (bench_train's setup, one device)."""
    device, dtype = torch.device(args.device), train.DTYPES[args.dtype]
    run = bench_train.prepare(name, args.config, args.seq_len, args.batch_size, args, corpus,
                              bench_train.parallel.Context(device=device))
    warmup, timed = run.batches[: args.warmup_steps], run.batches[args.warmup_steps :]
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with sdpa_context(run.variant, device, args.sdpa_backend):
        bench_train.train_steps(run, warmup, dtype, device, name)
        start = time.perf_counter()
        bench_train.train_steps(run, timed, dtype, device, name)  # timed without the profiler
        wall_ms = 1e3 * (time.perf_counter() - start) / args.steps
        with profile(activities=activities) as prof:
            bench_train.train_steps(run, timed, dtype, device, name)
    return summarise(kernel_times(prof, cuda), args.steps, wall_ms, args.top)


def difference(rows: dict, variant: str, base: str) -> dict[str, float]:
    """variant's ms per step minus base's, group by group (and the step)."""
    a, b = rows[variant], rows[base]
    diff = {name: a["groups"][name]["ms"] - b["groups"][name]["ms"] for name in GROUP_NAMES}
    diff["step"] = a["step_ms"] - b["step_ms"]
    return diff


def attention_needed(rows: dict, variant: str, base: str, speedup: float) -> dict:
    """What variant's attention kernels would have to take for its step to run `speedup` times
    as fast as base's, all else as profiled: the step that needs (ms), how much less than now,
    the attention kernels' time then, that as a share of their time now and as a ratio to
    base's SDPA kernels (the kernel targets' unit). None where a step would have to shed more
    than all of the attention kernels' time."""
    a, b = rows[variant], rows[base]
    attention = a["groups"]["fox attention"]["ms"]
    step = b["step_ms"] / speedup
    cut = a["step_ms"] - step
    left = attention - max(cut, 0.0)
    sdpa = b["groups"]["sdpa attention"]["ms"]
    return {
        "speedup": speedup, "step_ms": step, "cut_ms": cut,
        "attention_ms": left if left > 0 else None,
        "share_of_now": left / attention if left > 0 and attention > 0 else None,
        "of_base_sdpa": left / sdpa if left > 0 and sdpa > 0 else None,
    }


def format_needed(needed: dict, variant: str, base: str) -> str:
    head = (f"{variant} at {needed['speedup']:.2f}x {base}'s speed: a step of "
            f"{needed['step_ms']:.1f} ms")
    if needed["cut_ms"] <= 0:
        return f"{head}, already there ({-needed['cut_ms']:.1f} ms to spare)"
    if needed["attention_ms"] is None:
        return (f"{head}, {needed['cut_ms']:.1f} ms less: more than all of foxcompile's "
                "attention kernels take")
    ratio = (f", {needed['of_base_sdpa']:.2f}x {base}'s SDPA kernels"
             if needed["of_base_sdpa"] is not None else "")
    return (f"{head}, {needed['cut_ms']:.1f} ms less: foxcompile's attention kernels in "
            f"{needed['attention_ms']:.1f} ms ({needed['share_of_now']:.0%} of their time now"
            f"{ratio}), all else as profiled")


def format_report(rows: dict, base: str | None) -> str:
    """Each group's ms per step per variant, and the first other variant minus base."""
    names = list(rows)
    other = next((n for n in names if n != base), None) if base in rows else None
    diff = difference(rows, other, base) if other else None

    def line(label, values, extra=None):
        cells = values + ([extra] if diff else [])
        return f"{label:<20}" + "".join("" if v is None else f"{v:>16.2f}" for v in cells)

    lines = [f"{'group (ms per step)':<20}" + "".join(f"{n:>16}" for n in names)
             + (f"{other + ' - ' + base:>16}" if diff else "")]
    for group in GROUP_NAMES:
        lines.append(line(group, [rows[n]["groups"][group]["ms"] for n in names],
                          diff and diff[group]))
    lines.append(line("kernels, sum", [rows[n]["kernels_ms"] for n in names]))
    lines.append(line("step (wall)", [rows[n]["step_ms"] for n in names], diff and diff["step"]))
    lines.append(f"{'no kernel running':<20}" + "".join(f"{rows[n]['idle_share']:>16.1%}"
                                                         for n in names))
    for n in names:
        lines.append(f"\n{n}: largest kernels (ms per step, calls per step)")
        lines += [f"  {k['ms']:9.3f}  {k['calls']:4d}x  {k['group']:<15} {k['kernel'][:80]}"
                  for k in rows[n]["top"]]
    return "\n".join(lines)


def plot_groups(rows: dict, title: str, path: Path):
    """One stacked bar per variant: each group's ms per step, and the step's time no kernel ran."""
    plt = train.pyplot()
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.6 * len(rows)))
    names = list(rows)
    left = [0.0] * len(names)
    colors = plt.get_cmap("tab10")
    for i, group in enumerate(GROUP_NAMES + ("no kernel running",)):
        if group == "no kernel running":
            widths = [max(0.0, rows[n]["step_ms"] - rows[n]["kernels_ms"]) for n in names]
        else:
            widths = [rows[n]["groups"][group]["ms"] for n in names]
        if any(widths):
            ax.barh(names, widths, left=left, label=group, color=colors(i % 10))
        left = [a + b for a, b in zip(left, widths)]
    ax.set_xlabel("ms per training step")
    ax.set_title(title, fontsize=9)
    ax.invert_yaxis()
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=sorted(bench_train.CONFIGS), default="125m")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, required=True)
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=["fox_acp", "sdpa"], help="default: fox_acp sdpa")
    parser.add_argument("--base", default="sdpa",
                        help="the variant the first other one is compared with (default: sdpa)")
    parser.add_argument("--warmup-steps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (default: 3)")
    parser.add_argument("--speedup", type=float, default=1.10,
                        help="print what foxcompile's attention kernels would have to take for "
                             "the first variant to run this many times as fast as --base "
                             "(default: 1.10, the 4k training target)")
    parser.add_argument("--top", type=int, default=12, help="largest kernels listed per variant")
    parser.add_argument("--compile-with", choices=("default", "aot_eager"), default="default")
    parser.add_argument("--gate-init", choices=("decay", "default"), default="decay",
                        help="forget-gate biases, as bench_train.py's (default: decay)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu")
    parser.add_argument("--dtype", choices=sorted(train.DTYPES), default=None)
    parser.add_argument("--sdpa-backend", choices=sorted(bench_train.SDPA_BACKENDS),
                        default="cudnn")
    parser.add_argument("--out", default="runs/profile_train.json")
    parser.add_argument("--plot", default=None,
                        help="also a stacked bar chart of the groups per variant (PNG)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    if args.speedup <= 0:
        parser.error("--speedup must be positive")
    if min(args.steps, args.warmup_steps, args.batch_size) < 1 or args.seq_len < 2:
        parser.error("--steps, --warmup-steps and --batch-size must be at least 1, --seq-len 2")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.bucket_cap_mb = 25.0  # read by bench_train.prepare for DDP only: one device here
    return args


def main(argv=None):
    args = parse_args(argv)
    if any(VARIANTS[v].backend == "fox_acp" for v in args.variants):
        train.import_foxcompile()
    corpus = train.load_corpus()["train"]
    rows = {}
    for name in args.variants:
        rows[name] = profile_variant(name, args, corpus)
        bench_train.release_memory(torch.device(args.device))
        print(f"{name}: {rows[name]['step_ms']:.1f} ms a step", flush=True)
    device = torch.device(args.device)
    header = (f"{train.device_name(device)}, torch {torch.__version__}, triton "
              f"{train.versions()['triton']}; {args.config}, T = {args.seq_len}, batch "
              f"{args.batch_size}, {args.steps} profiled steps")
    print(f"\n{header}\n{format_report(rows, args.base)}")
    needed = {}
    fox = [n for n in rows if VARIANTS[n].backend == "fox_acp"]
    if fox and args.base in rows:
        needed = attention_needed(rows, fox[0], args.base, args.speedup)
        print("\n" + format_needed(needed, fox[0], args.base))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    train.write_json(out, {"device": train.device_name(device), "versions": train.versions(),
                           "args": vars(args), "variants": rows, "needed": needed})
    print(f"wrote {out}")
    if args.plot:
        plot_groups(rows, header, Path(args.plot))
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
