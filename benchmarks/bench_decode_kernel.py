"""Decode attention alone: one query (M = 1) per sequence against a key cache of N tokens, for
foxcompile's decode engine (foxcompile/kernels/decode.py) with and without pruning, the Triton
prefill forward that ran decode before it (FOXCOMPILE_ENGINE=tl), the whole op, and torch's SDPA
(flash, memory-efficient) on plain attention of the same shapes (no gate; M = 1 sees every key,
so no mask). One run, one card.

    python benchmarks/bench_decode_kernel.py                      # the table below, on CUDA
    python benchmarks/bench_decode_kernel.py --smoke              # tiny, on CPU (interpreter)
    python benchmarks/bench_decode_kernel.py --lengths 4096,65536 --batches 1 --heads H12-D64
    python benchmarks/bench_decode_kernel.py --configs "64,4,3;128,4,3;32,8,4"   # launch configs

Shapes: N in --lengths (default 4k, 16k, 64k, 128k), batch in --batches (1, 16), heads and head
dim in --heads (H12-D64, H24-D64, H16-D128), --group query heads per kv head (default 1), bf16,
(B, T, H, D) tensors. The gate is SYN70's (docs/benchmarks.md; bench_attention.syn70): head h
forgets with a time constant log-spaced over [2, 512] tokens, lam = cumsum(logsigmoid(...)) in
float32, q and k RMS-normalised, so every head prunes most of a long cache at epsilon = e^-10.

Columns: microseconds of GPU time per call, each call replayed from a CUDA graph with a cold L2
(a 256 MB buffer is cleared before each replay, outside the timed span: a decode step of a real
model finds its cache in HBM), median of --reps; "wall" is the wall-clock time per call of
back-to-back eager calls (what Python launches cost when nothing is captured); "read" is the
share of the k/v cache the call reads (plan.unread_key_fraction) and GB/s the k/v bytes it reads
over the GPU time. Rows:

    decode ACP       decode.forward with a pruning plan made beforehand (the kernels alone)
    decode dense     decode.forward, nothing pruned
    tl ACP / dense   triton_attention.forward (the prefill kernel: a 128-row block per head)
    plan             plan.make_plan (guarded, the op's norm): the op makes one per call, and it
                     reads all of k for the score bound (max ||k_t||)
    op ACP           foxcompile.forgetting_attention under no_grad: plan + lam copy + kernels
    sdpa flash/mem   F.scaled_dot_product_attention, plain attention, no gate

--smoke runs one tiny shape on the CPU through Triton's interpreter (timings meaningless; it
checks that every row runs and agrees with the others) and writes JSON only with --json. On CUDA
the JSON goes to --json or benchmarks/results/decode_kernel_<card>_<date>.json.
"""
import argparse
import datetime
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback

import torch
import torch.nn.functional as F

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)

from foxcompile.contract import Prune  # noqa: E402
from foxcompile.kernels import plan as plan_mod  # noqa: E402

EPSILON = math.exp(-10.0)


def parse_heads(text):
    parts = dict((p[0], int(p[1:])) for p in text.split("-"))
    return parts["H"], parts["D"]


def make_inputs(batch, n_keys, heads, kv_heads, head_dim, device, seed=0):
    """SYN70's distributions for a decode step: q (B, 1, H, D), k, v (B, N, Hk, D) bf16, log_f
    (B, N, H) float32 and lam = cumsum(log_f) (B, H, N) float32 contiguous."""
    g = torch.Generator(device=device).manual_seed(seed)

    def randn(*shape):
        return torch.randn(*shape, generator=g, device=device, dtype=torch.float32)

    def rms(x):
        return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True))).to(torch.bfloat16)

    q = rms(randn(batch, 1, heads, head_dim))
    k = rms(randn(batch, n_keys, kv_heads, head_dim))
    v = randn(batch, n_keys, kv_heads, head_dim).to(torch.bfloat16)
    t = torch.exp(torch.linspace(math.log(2.0), math.log(512.0), heads, device=device))
    bias = -torch.log(torch.expm1(1.0 / t))
    log_f = F.logsigmoid(bias + 0.3 * randn(batch, n_keys, heads))
    lam = torch.cumsum(log_f, dim=1).transpose(1, 2).contiguous()
    return q, k, v, log_f, lam


# ----------------------------------------------------------------------------- timing

_flush = None


def time_gpu(fn, reps):
    """Median GPU microseconds of fn replayed from a CUDA graph, L2 cleared before each replay."""
    global _flush
    if _flush is None:
        _flush = torch.empty(256 << 20, dtype=torch.int8, device="cuda")
    fn()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True))
              for _ in range(reps)]
    for start, end in events:
        _flush.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    return statistics.median(s.elapsed_time(e) for s, e in events) * 1e3


def time_wall(fn, reps, device):
    """Wall-clock microseconds per call of back-to-back eager calls."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    begin = time.perf_counter()
    for _ in range(reps):
        fn()
    sync()
    return (time.perf_counter() - begin) / reps * 1e6


# ----------------------------------------------------------------------------- rows

def implementations(q, k, v, log_f, lam):
    """(key, label, fn, plan or None) for one shape; fn returns the output (B, 1, H, D)."""
    import foxcompile
    from foxcompile.kernels import decode, max_norm, plan_start_blocks
    from foxcompile.kernels import triton_attention as ta
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    plans = {"acp": plan_mod.make_plan(qh, kh, lam, scale, EPSILON, Prune.GUARDED, v=vh,
                                       norm=max_norm, starts=plan_start_blocks),
             "dense": plan_mod.make_plan(qh, kh, lam, scale, 0.0, Prune.OFF)}
    out = torch.empty_like(q)

    def kernel(engine, plan):
        def run():
            engine.forward(qh, kh, vh, lam, plan, scale, out.transpose(1, 2))
            return out
        return run

    def plan_only():
        return plan_mod.make_plan(qh, kh, lam, scale, EPSILON, Prune.GUARDED, v=vh,
                                  norm=max_norm, starts=plan_start_blocks).start

    def op():
        with torch.no_grad():
            return foxcompile.forgetting_attention(q, k, v, log_f, layout="bthd")

    group = q.shape[2] // k.shape[2]

    def sdpa(backend):
        from torch.nn.attention import SDPBackend, sdpa_kernel
        which = {"flash": SDPBackend.FLASH_ATTENTION,
                 "mem": SDPBackend.EFFICIENT_ATTENTION}[backend]
        if q.device.type == "cpu":
            which = SDPBackend.MATH
        k_sd, v_sd = kh, vh
        if group > 1:
            k_sd, v_sd = (t.repeat_interleave(group, dim=1) for t in (kh, vh))

        def run():
            with sdpa_kernel(which), torch.no_grad():
                return F.scaled_dot_product_attention(qh, k_sd, v_sd).transpose(1, 2)
        return run

    return [
        ("decode-acp", "decode ACP", kernel(decode, plans["acp"]), plans["acp"]),
        ("decode-dense", "decode dense", kernel(decode, plans["dense"]), plans["dense"]),
        ("tl-acp", "tl prefill kernel ACP", kernel(ta, plans["acp"]), plans["acp"]),
        ("tl-dense", "tl prefill kernel dense", kernel(ta, plans["dense"]), plans["dense"]),
        ("plan", "plan (make_plan, guarded)", plan_only, None),
        ("op-acp", "op (plan + kernels), auto engine", op, None),
        ("sdpa-flash", "SDPA flash, no gate", sdpa("flash"), plans["dense"]),
        ("sdpa-mem", "SDPA mem-efficient, no gate", sdpa("mem"), plans["dense"]),
    ], plans


def config_rows(configs, q, k, v, lam, plans):
    """decode ACP and dense again under each FOXCOMPILE_KERNEL_CONFIG "decode" entry."""
    from foxcompile.kernels import decode
    qh, kh, vh = (t.transpose(1, 2) for t in (q, k, v))
    scale = q.shape[-1] ** -0.5
    out = torch.empty_like(q)
    rows = []
    for text in configs:
        config = [int(x) for x in text.split(",")]
        for name in ("acp", "dense"):
            plan = plans[name]

            def run(plan=plan, config=config):
                os.environ["FOXCOMPILE_KERNEL_CONFIG"] = json.dumps({"decode": config})
                try:
                    decode.forward(qh, kh, vh, lam, plan, scale, out.transpose(1, 2))
                finally:
                    os.environ.pop("FOXCOMPILE_KERNEL_CONFIG", None)
                return out
            rows.append((f"decode-{name}-{text}", f"decode {name.upper() if name == 'acp' else name} [{text}]",
                         run, plan))
    return rows


def versions(device):
    import triton
    info = {"torch": torch.__version__, "triton": triton.__version__,
            "python": platform.python_version(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    if device.type == "cuda":
        info.update(card=torch.cuda.get_device_name(),
                    capability=".".join(map(str, torch.cuda.get_device_capability())),
                    multiprocessors=torch.cuda.get_device_properties(0).multi_processor_count,
                    cuda=torch.version.cuda)
    else:
        info.update(card="cpu (Triton interpreter)", capability=None)
    return info


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lengths", default="4096,16384,65536,131072")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--heads", default="H12-D64,H24-D64,H16-D128",
                        help="comma-separated H<query heads>-D<head dim>")
    parser.add_argument("--group", type=int, default=1, help="query heads per kv head")
    parser.add_argument("--reps", type=int, default=50)
    parser.add_argument("--skip", default="", help="comma-separated row keys to leave out")
    parser.add_argument("--configs", default="",
                        help='decode launch configs to time as well, "BLOCK_N,warps,stages[,splits]"'
                             ' separated by ";"')
    parser.add_argument("--json", default=None)
    parser.add_argument("--smoke", action="store_true",
                        help="one tiny shape on the CPU (Triton interpreter): checks it runs")
    args = parser.parse_args()

    if args.smoke:
        os.environ["TRITON_INTERPRET"] = "1"
        device = torch.device("cpu")
        args.lengths, args.batches, args.heads = "700", "2", "H4-D16"
        args.group = max(args.group, 2)
        args.reps = 2
    else:
        device = torch.device("cuda")
    skip = set(filter(None, args.skip.split(",")))
    configs = [c.strip() for c in args.configs.split(";") if c.strip()]
    info = versions(device)
    print(json.dumps(info), flush=True)
    results = {"versions": info, "epsilon": EPSILON, "group": args.group, "rows": []}

    for head_text in args.heads.split(","):
        heads, head_dim = parse_heads(head_text)
        kv_heads = heads // args.group
        for batch in map(int, args.batches.split(",")):
            for n_keys in map(int, args.lengths.split(",")):
                shape = f"B{batch}-N{n_keys}-H{heads}-Hk{kv_heads}-D{head_dim}"
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                q, k, v, log_f, lam = make_inputs(batch, n_keys, heads, kv_heads, head_dim,
                                                  device)
                impls, plans = implementations(q, k, v, log_f, lam)
                impls += config_rows(configs, q, k, v, lam, plans)
                kv_bytes = 2 * batch * kv_heads * n_keys * head_dim * k.element_size()
                reference = None
                for key, label, fn, plan in impls:
                    row = {"shape": shape, "key": key, "impl": label}
                    if key in skip:
                        continue
                    try:
                        result = fn()
                        if key.startswith(("decode", "tl", "op")) and reference is not None:
                            row["max_abs_diff_vs_decode_dense"] = (
                                result.float() - reference.float()).abs().max().item()
                        if key == "decode-dense":
                            reference = result.clone()
                        if device.type == "cuda":
                            row["us"] = time_gpu(fn, args.reps)
                        row["wall_us"] = time_wall(fn, args.reps, device)
                        if plan is not None:
                            group = heads // kv_heads
                            unread = plan_mod.unread_key_fraction(plan.start, n_keys,
                                                                  plan.block_n, group)
                            row["read"] = 1.0 - unread.mean().item()
                            if "sdpa" in key:
                                row["read"] = 1.0
                            if "us" in row:
                                row["kv_gb_per_s"] = kv_bytes * row["read"] / row["us"] / 1e3
                    except Exception as exc:
                        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}" \
                            if str(exc) else type(exc).__name__
                        traceback.print_exc(limit=3)
                    results["rows"].append(row)
                    print(json.dumps(row), flush=True)
                del q, k, v, log_f, lam, impls, plans
    print_table(results)
    path = args.json
    if path is None and device.type == "cuda":
        card = info["card"].replace("NVIDIA ", "").replace(" ", "_").lower()
        day = datetime.date.today().isoformat()
        path = os.path.join(ROOT, "benchmarks", "results", f"decode_kernel_{card}_{day}.json")
    if path:
        with open(path, "w") as f:
            json.dump(results, f, indent=1)
        print(f"wrote {path}")
    if args.smoke:
        bad = [r for r in results["rows"] if "error" in r
               or r.get("max_abs_diff_vs_decode_dense", 0.0) > 0.05]
        if bad:
            raise SystemExit(f"smoke run failed: {bad}")


def print_table(results):
    info = results["versions"]
    print(f"\n{info['card']} (sm{info.get('capability')}), torch {info['torch']}, triton "
          f"{info['triton']}, {info['date']}; GPU us: CUDA graph replay, cold L2, median")
    print(f"{'shape':<26} {'implementation':<34} {'GPU us':>9} {'wall us':>9} {'read':>6} "
          f"{'GB/s':>7} {'x decode ACP':>12}")
    base = {}
    for r in results["rows"]:
        if r["key"] == "decode-acp" and "us" in r:
            base[r["shape"]] = r["us"]
    for r in results["rows"]:
        if "error" in r:
            print(f"{r['shape']:<26} {r['impl']:<34} {r['error'][:60]}")
            continue
        us = f"{r['us']:9.1f}" if "us" in r else f"{'-':>9}"
        read = f"{r['read']:6.3f}" if "read" in r else f"{'':>6}"
        gbs = f"{r['kv_gb_per_s']:7.0f}" if "kv_gb_per_s" in r else f"{'':>7}"
        ratio = (f"{r['us'] / base[r['shape']]:12.2f}" if "us" in r and r["shape"] in base
                 else f"{'':>12}")
        print(f"{r['shape']:<26} {r['impl']:<34} {us} {r['wall_us']:9.1f} {read} {gbs} {ratio}")


if __name__ == "__main__":
    main()
