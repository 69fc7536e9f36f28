"""Training throughput of the FoX language model under fox_acp, against Inductor and plain SDPA.

Variants (the model is examples/fox_lm.py; data are windows of the stdlib corpus of train.py):
    fox_acp        FoX, torch.compile(backend="fox_acp"), pruning on (eps = e^-10)
    fox_acp_dense  FoX, fox_acp with {"fox.epsilon": 0.0}: the same kernels, pruning off
    inductor       FoX, unmodified, plain torch.compile (materialises T x T scores; often "OOM")
    sdpa           attention="sdpa" (no forget gate), torch.compile, cuDNN attention on CUDA
    eager          FoX, unmodified, no compilation

The batch size of each (config, seq len) is searched once, halving from a start that fills an
80 GB card (scaled by the card's memory), by the first variant run (fox_acp variants run first);
every variant then uses that batch, and one that does not fit is reported as "OOM". Pruning
depends on the forget gates: by default each layer's gate biases give head h a decay time
log-spaced over [2, 512] tokens (the SYN70 gates, docs/benchmarks.md); with nn.Linear's init
(--gate-init default) an untrained FoX forgets within tens of tokens and almost everything is
pruned.

    python benchmarks/bench_train.py                  # 125m, 760m at T = 4096, 16384
    python benchmarks/bench_train.py --quick          # 125m at 4096, few steps
    python benchmarks/bench_train.py --loss-parity    # 125m with and without pruning, 2 seeds
    python benchmarks/bench_train.py --device cpu --config tiny --seq-len 64 --steps 2

Several GPUs (data parallel, examples/parallel.py): run the 1-GPU baseline first, then the same
configs under torchrun; --batch-size is then per GPU, by default the batch of the baseline row in
--out, and each row gets tokens/s per GPU and its scaling efficiency against the baseline
(tokens/s per GPU over the 1-GPU tokens/s of the same variant):

    python benchmarks/bench_train.py --configs 125m --seq-lens 16384 --variants fox_acp fox_acp_dense sdpa
    torchrun --nproc-per-node 2 benchmarks/bench_train.py --parallel ddp --configs 125m \
        --seq-lens 16384 --variants fox_acp fox_acp_dense sdpa
    python benchmarks/bench_train.py --smoke && \
        torchrun --nproc-per-node 2 benchmarks/bench_train.py --smoke --parallel fsdp   # CPU, gloo

Results are merged into --out (rows of the same card, config, seq len, variant, parallel mode and
number of GPUs are replaced) and written after every variant, so a run cut short keeps what it
measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import math
import sys
import time
import traceback
from pathlib import Path
from typing import NamedTuple

import torch
from torch.nn.attention import SDPBackend, sdpa_kernel

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))

import parallel  # noqa: E402
import train  # noqa: E402
from fox_lm import CONFIGS, build_model  # noqa: E402


class Variant(NamedTuple):
    attention: str
    backend: str
    epsilon: float = 0.0


VARIANTS = {
    "fox_acp": Variant("fox", "fox_acp", train.DEFAULT_EPSILON),
    "fox_acp_dense": Variant("fox", "fox_acp", 0.0),
    "sdpa": Variant("sdpa", "inductor"),
    "inductor": Variant("fox", "inductor"),
    "eager": Variant("fox", "eager"),
}
DEFAULT_VARIANTS = ("fox_acp", "fox_acp_dense", "sdpa", "inductor")
SDPA_BACKENDS = {
    "cudnn": "CUDNN_ATTENTION",
    "flash": "FLASH_ATTENTION",
    "efficient": "EFFICIENT_ATTENTION",
    "math": "MATH",
}
# Tokens per step that fit an 80 GB card in bf16 with room to spare (estimated from the
# activations Inductor keeps: about (20 hidden + 6 mlp_hidden) bytes per token and layer).
START_TOKENS = {"tiny": 2**12, "125m": 2**17, "360m": 2**16, "760m": 2**15}
REFERENCE_CARD_BYTES = 80e9
PARITY_RUNS = {"pruned": train.DEFAULT_EPSILON, "dense": 0.0}
PARITY_STYLES = {"pruned": ("-", "o"), "dense": ("--", "x")}  # train line, eval marker
LR = 1e-4  # throughput runs only; the value does not matter


# ---------------------------------------------------------------- setup


def start_batch(config: str, seq_len: int, device: torch.device) -> int:
    scale = 1.0
    if device.type == "cuda":
        scale = torch.cuda.get_device_properties(device).total_memory / REFERENCE_CARD_BYTES
    return max(1, int(START_TOKENS[config] * scale) // seq_len)


def sdpa_context(variant: Variant, device: torch.device, backend: str):
    """The SDPA backend chosen for the sdpa variant on CUDA; nothing otherwise."""
    if variant.attention != "sdpa" or device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend]))


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device: torch.device):
    """Drop compiled graphs and cached blocks between variants."""
    torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def is_out_of_memory(error: BaseException) -> bool:
    """OOM, also when a compiler wraps it in its own exception."""
    while error is not None:
        if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
            return True
        error = error.__cause__
    return False


# ---------------------------------------------------------------- one measurement


def compile_variant(model, variant: Variant, args):
    """torch.compile for a variant; with --compile-with aot_eager, AOTAutograd without Inductor
    (fox_acp through "fox.compiler", the others through backend="aot_eager")."""
    if args.compile_with == "aot_eager" and variant.backend == "inductor":
        return torch.compile(model, backend="aot_eager")
    fox_compiler = "aot_eager" if args.compile_with == "aot_eager" else "inductor"
    return train.compile_model(model, variant.backend, variant.epsilon, fox_compiler)


def slowest_rank(seconds: float, ctx: parallel.Context) -> float:
    """The largest of the ranks' times (each rank's own without a group)."""
    if not ctx.distributed:
        return seconds
    import torch.distributed as dist

    value = torch.tensor([seconds], dtype=torch.float64, device=ctx.device)
    dist.all_reduce(value, op=dist.ReduceOp.MAX)
    return float(value)


class Run(NamedTuple):
    """One variant ready to train: the compiled model, its optimizer and scheduler, and the
    warmup + timed batches on the device."""
    variant: Variant
    compiled: object
    optimizer: torch.optim.Optimizer
    scheduler: object
    batches: list


def prepare(name: str, config: str, seq_len: int, batch_size: int, args, corpus,
            ctx: parallel.Context) -> Run:
    """Variant `name` built, gated (args.gate_init), wrapped for ctx, compiled, with its
    optimizer, scheduler and args.warmup_steps + args.steps batches of this rank's windows."""
    variant, device = VARIANTS[name], ctx.device
    torch.manual_seed(0)
    with device:
        model = build_model(config, attention=variant.attention)
    if args.gate_init == "decay" and variant.attention == "fox":
        train.set_gate_decay_times(model, *train.GATE_DECAY_RANGE)
    wrapped = parallel.wrap(model, ctx, args.bucket_cap_mb)
    compiled = compile_variant(wrapped, variant, args)
    optimizer = train.make_optimizer(model, LR, weight_decay=0.1)
    scheduler = train.make_scheduler(optimizer, 1, args.warmup_steps + args.steps + 1)
    generator = torch.Generator().manual_seed(ctx.rank)  # every rank its own windows
    batches = [train.sample_batch(corpus, batch_size, seq_len, generator)
               for _ in range(args.warmup_steps + args.steps)]
    batches = [(inputs.to(device), targets.to(device)) for inputs, targets in batches]
    return Run(variant, compiled, optimizer, scheduler, batches)


def train_steps(run: Run, batches, dtype: torch.dtype, device: torch.device, name: str):
    """Training steps on batches, then a synchronisation; a non-finite last loss is an error."""
    for inputs, targets in batches:
        loss = train.training_step(run.compiled, run.optimizer, run.scheduler, inputs, targets,
                                   dtype)
    synchronize(device)
    if not math.isfinite(loss.item()):
        raise FloatingPointError(f"{name}: loss is {loss.item()}")


def measure(name: str, config: str, seq_len: int, batch_size: int, args, corpus,
            ctx: parallel.Context | None = None) -> dict:
    """Train variant `name` for warmup + timed steps: tokens/s of the timed steps (synchronised),
    warmup time (compilation), peak memory and, for fox_acp, the skipped FLOP fraction. With a
    parallel context every rank trains on batch_size sequences of its own (DDP or FSDP2), the
    time is the slowest rank's and tokens/s counts all ranks."""
    ctx = ctx or parallel.Context(device=torch.device(args.device))
    device, dtype = ctx.device, train.DTYPES[args.dtype]
    prepared = prepare(name, config, seq_len, batch_size, args, corpus, ctx)
    variant, compiled, batches = prepared.variant, prepared.compiled, prepared.batches

    def run(steps) -> float:
        parallel.barrier(ctx)
        start = time.perf_counter()
        train_steps(prepared, steps, dtype, device, name)
        return slowest_rank(time.perf_counter() - start, ctx)

    with sdpa_context(variant, device, args.sdpa_backend):
        warmup_s = run(batches[: args.warmup_steps])
        timed_s = run(batches[args.warmup_steps :])
        tokens_per_s = ctx.world_size * batch_size * seq_len * args.steps / timed_s
        row = {
            "status": "ok",
            "tokens_per_s": tokens_per_s,
            "tokens_per_s_per_gpu": tokens_per_s / ctx.world_size,
            "step_ms": 1e3 * timed_s / args.steps,
            "warmup_s": warmup_s,
        }
        if device.type == "cuda":
            row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
        if variant.backend == "fox_acp":
            # One more forward in training mode (the compiled graph it already has).
            snapshot = train.pruning_snapshot(compiled, *batches[0], dtype, ctx)
            row["skipped_fraction"] = snapshot["skipped_fraction"]
            row["attention_calls"] = sum(site["calls"] for site in snapshot["per_head"])
    return row


def measure_safely(name, config, seq_len, batch_size, args, corpus,
                   ctx: parallel.Context | None = None) -> dict:
    """measure(), with OOM and other failures turned into a status; memory released after."""
    ctx = ctx or parallel.Context(device=torch.device(args.device))
    key = {"device": train.device_name(ctx.device), "config": config,
           "seq_len": seq_len, "variant": name, "parallel": ctx.parallel,
           "world_size": ctx.world_size, "batch_size": batch_size}
    try:
        row = {**key, **measure(name, config, seq_len, batch_size, args, corpus, ctx)}
    except Exception as error:  # a failing variant must not lose the others' results
        if is_out_of_memory(error):
            row = {**key, "status": "OOM"}
        else:
            traceback.print_exc()
            first_line = (str(error).strip().splitlines() or [""])[0][:300]
            row = {**key, "status": f"error: {type(error).__name__}: {first_line}"}
    release_memory(ctx.device)
    return row


def fitting_batch(name, config, seq_len, args, corpus) -> tuple[int, dict]:
    """Halve the batch from the start (or take --batch-size) until `name` fits: (batch, row)."""
    batch = args.batch_size or start_batch(config, seq_len, torch.device(args.device))
    while True:
        row = measure_safely(name, config, seq_len, batch, args, corpus)
        if row["status"] != "OOM" or batch == 1 or args.batch_size:
            return batch, row
        print(f"{config} T={seq_len} {name}: OOM at batch {batch}, halving", flush=True)
        batch //= 2


# ---------------------------------------------------------------- results


def row_key(row: dict, variant: str | None = None, single: bool = False) -> tuple:
    """(card, config, seq len, variant, parallel mode, GPUs); single: the 1-GPU row's key."""
    mode = ("none", 1) if single else (row.get("parallel", "none"), row.get("world_size", 1))
    return (row["device"], row["config"], row["seq_len"], variant or row["variant"], *mode)


def add_ratios(rows: list[dict]):
    """tokens/s relative to fox_acp_dense and to sdpa of the same card, config, seq len and
    parallel setup; tokens/s per GPU relative to the 1-GPU run of the same variant."""
    speed = {row_key(r): r["tokens_per_s"] for r in rows if r["status"] == "ok"}
    for row in rows:
        ok = row["status"] == "ok"
        for reference in ("fox_acp_dense", "sdpa"):
            base = speed.get(row_key(row, reference))
            row[f"vs_{reference}"] = row["tokens_per_s"] / base if ok and base else None
        if ok:
            row.setdefault("tokens_per_s_per_gpu",
                           row["tokens_per_s"] / row.get("world_size", 1))
        base = speed.get(row_key(row, single=True))
        row["scaling_efficiency"] = (row["tokens_per_s_per_gpu"] / base if ok and base
                                     and row.get("world_size", 1) > 1 else None)


def baseline_batch(path: Path, device: str, config: str, seq_len: int) -> int | None:
    """The batch of the 1-GPU rows of this card, config and seq len in the results file."""
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    batches = {r["batch_size"] for r in rows if (r["device"], r["config"], r["seq_len"]) ==
               (device, config, seq_len) and r.get("world_size", 1) == 1}
    return max(batches) if batches else None


def merge_rows(path: Path, new_rows: list[dict], key=None) -> list[dict]:
    """Rows already in `path`, less those that new_rows measure again, plus new_rows; key: what
    identifies a measurement (default: this script's row_key)."""
    key = key or row_key
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    fresh = {key(r) for r in new_rows}
    return [r for r in old if key(r) not in fresh] + new_rows


def format_table(rows: list[dict]) -> str:
    def number(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"{'config':>6} {'T':>6} {'variant':>14} {'GPUs':>9} {'batch':>5} {'tokens/s':>10} "
             f"{'per GPU':>9} {'scaling':>7} {'vs dense':>8} {'vs sdpa':>8} {'skipped':>7} "
             f"{'peak GB':>7}  status"]
    for r in rows:
        world = r.get("world_size", 1)
        gpus = f"{world} {r['parallel']}" if r.get("parallel", "none") != "none" else "1"
        lines.append(
            f"{r['config']:>6} {r['seq_len']:>6} {r['variant']:>14} {gpus:>9} "
            f"{r['batch_size']:>5} {number(r.get('tokens_per_s'), ',.0f'):>10} "
            f"{number(r.get('tokens_per_s_per_gpu'), ',.0f'):>9} "
            f"{number(r.get('scaling_efficiency'), '.0%'):>7} "
            f"{number(r.get('vs_fox_acp_dense'), '.2f'):>8} {number(r.get('vs_sdpa'), '.2f'):>8} "
            f"{number(r.get('skipped_fraction'), '.0%'):>7} "
            f"{number(r.get('peak_memory_gb'), '.1f'):>7}  {r['status']}")
    return "\n".join(lines)


def write_results(path: Path, args, rows: list[dict]):
    device = torch.device(args.device)
    train.write_json(path, {"device": train.device_name(device), "versions": train.versions(),
                            "args": vars(args), "rows": rows})


def throughput(args):
    ctx = parallel.setup(args.parallel, args.device)
    try:
        _throughput(args, ctx)
    finally:
        parallel.teardown(ctx)


def _throughput(args, ctx: parallel.Context):
    out = Path(args.out)
    if ctx.is_main:
        out.parent.mkdir(parents=True, exist_ok=True)
    corpus = train.load_corpus()["train"]
    variants = [v for v in VARIANTS if v in args.variants]  # fox_acp variants first
    if any(VARIANTS[v].backend == "fox_acp" for v in variants):
        try:
            train.import_foxcompile()
        except RuntimeError as error:
            variants = [v for v in variants if VARIANTS[v].backend != "fox_acp"]
            print(f"skipping the fox_acp variants: {error}", flush=True)
    card = train.device_name(ctx.device)
    for config in args.configs:
        for seq_len in args.seq_lens:
            batch = None
            if ctx.distributed:  # per GPU: the 1-GPU baseline's, for a like-for-like comparison
                batch = args.batch_size or baseline_batch(out, card, config, seq_len)
                if batch is None:
                    raise SystemExit(f"--parallel: no --batch-size and no 1-GPU row of {config} at "
                                     f"T = {seq_len} on {card} in {out}: run the 1-GPU baseline "
                                     "first (the same command without torchrun and --parallel)")
            for name in variants:
                if batch is None:
                    batch, row = fitting_batch(name, config, seq_len, args, corpus)
                else:
                    row = measure_safely(name, config, seq_len, batch, args, corpus, ctx)
                if ctx.is_main:
                    rows = merge_rows(out, [row])
                    add_ratios(rows)
                    write_results(out, args, rows)
                    print(format_table([next(r for r in rows if row_key(r) == row_key(row))])
                          .splitlines()[1], flush=True)
    if ctx.is_main:
        rows = [r for r in json.loads(out.read_text())["rows"] if r["device"] == card]
        print(f"\n{card}, torch {torch.__version__}, triton {train.versions()['triton']}\n"
              f"{format_table(rows)}\nwrote {out}")


# ---------------------------------------------------------------- loss parity


def parity_run(config: str, seq_len: int, batch: int, steps: int, epsilon: float, seed: int,
               run_dir: Path, args) -> dict:
    """train.py's training with fox_acp; a finished run of the same settings in run_dir is
    reused, so that the runs can be spread over several invocations."""
    argv = ["--config", config, "--seq-len", str(seq_len), "--batch-size", str(batch),
            "--steps", str(steps), "--backend", "fox_acp", "--epsilon", repr(epsilon),
            "--seed", str(seed), "--gate-init", args.gate_init,
            "--device", args.device, "--dtype", args.dtype,
            "--eval-every", str(max(1, steps // 10)), "--checkpoint-every", "0",
            "--out", str(run_dir)]
    train_args = train.parse_args(argv)
    log_path = run_dir / "log.json"
    if log_path.exists():
        log = json.loads(log_path.read_text())
        if log["summary"] and log["args"] == vars(train_args):
            print(f"reusing {run_dir}")
            return log
    return train.train(train_args)


def finished_log(run_dir: Path) -> dict:
    """The log of a finished parity run (for --parity-report-only)."""
    log_path = run_dir / "log.json"
    log = json.loads(log_path.read_text()) if log_path.exists() else {}
    if not log.get("summary"):
        raise FileNotFoundError(f"no finished run in {run_dir}")
    return log


def loss_parity(args):
    """Train the first of --configs at the first of --seq-lens for --parity-tokens, with and
    without pruning, per seed; write parity.json (final eval losses) and parity.png."""
    train.require_examples_extra()  # fail now, not after hours of training
    plt = train.pyplot()

    config, seq_len = args.configs[0], args.seq_lens[0]
    batch = args.batch_size or start_batch(config, seq_len, torch.device(args.device))
    steps = max(1, args.parity_tokens // (batch * seq_len))
    out = Path(args.out).with_suffix("")
    results = []
    fig, ax = plt.subplots(figsize=(8, 5))
    for run in args.parity_runs:
        line, marker = PARITY_STYLES[run]
        for color, seed in enumerate(args.seeds):
            epsilon = PARITY_RUNS[run]
            run_dir = out / f"{run}_seed{seed}"
            log = (finished_log(run_dir) if args.parity_report_only else
                   parity_run(config, seq_len, batch, steps, epsilon, seed, run_dir, args))
            final = log["summary"]["final_eval_loss"]
            results.append({"run": run, "epsilon": epsilon, "seed": seed, "final_eval_loss": final,
                            "evals": log["evals"], "device": log["device"],
                            "versions": log["versions"],
                            "skipped_fraction": [p["skipped_fraction"] for p in log["pruning"]],
                            "mean_tokens_per_s": log["summary"]["mean_tokens_per_s"]})
            ax.plot(*train.smoothed_losses(log)[:2], line, color=f"C{color}", alpha=0.7,
                    label=f"{run}, seed {seed}: final eval {final:.4f}")
            ax.plot([e["step"] for e in log["evals"]], [e["loss"] for e in log["evals"]], marker,
                    color=f"C{color}")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per byte); lines train, markers eval")
    ax.set_title(f"{config}, T = {seq_len}, batch {batch}, {steps} steps, "
                 f"forget-gate init: {args.gate_init}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "parity.png", dpi=110)
    plt.close(fig)
    final = {(r["run"], r["seed"]): r["final_eval_loss"] for r in results}
    difference = {seed: final[("pruned", seed)] - final[("dense", seed)] for seed in args.seeds
                  if ("pruned", seed) in final and ("dense", seed) in final}
    spread = {run: max(losses) - min(losses) for run in args.parity_runs
              if len(losses := [final[(run, seed)] for seed in args.seeds]) > 1}
    summary = {"config": config, "seq_len": seq_len, "gate_init": args.gate_init, "batch_size": batch, "steps": steps,
               "tokens": steps * batch * seq_len,
               "devices": sorted({r["device"] for r in results}),
               "versions": list({json.dumps(r["versions"], sort_keys=True): r["versions"]
                                 for r in results}.values()),
               "runs": results,
               "pruned_minus_dense_final_eval_loss": difference,
               "seed_spread_final_eval_loss": spread}
    train.write_json(out / "parity.json", summary)
    for r in results:
        print(f"{r['run']:>6} seed {r['seed']}: final eval loss {r['final_eval_loss']:.4f}, "
              f"{r['mean_tokens_per_s']:,.0f} tokens/s")
    for seed, delta in difference.items():
        print(f"seed {seed}: pruned - dense final eval loss = {delta:+.4f}")
    for run, width in spread.items():
        print(f"{run}: seed-to-seed spread of the final eval loss = {width:.4f}")
    print(f"wrote {out / 'parity.json'} and {out / 'parity.png'}")


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=train.HelpFormatter)
    parser.add_argument("--configs", "--config", nargs="+", choices=sorted(CONFIGS),
                        default=["125m", "760m"], help="model sizes (default: 125m 760m)")
    parser.add_argument("--seq-lens", "--seq-len", nargs="+", type=int, default=[4096, 16384],
                        help="sequence lengths in tokens (default: 4096 16384)")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=list(DEFAULT_VARIANTS),
                        help=f"what to measure, see above (default: {' '.join(DEFAULT_VARIANTS)})")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="fixed batch size (default: search down from a card-filling start)")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed steps (compilation)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--quick", action="store_true",
                        help="short run: 125m at T=4096, 2 warmup and 5 timed steps")
    parser.add_argument("--smoke", action="store_true",
                        help="a check that everything runs, on CPU (gloo under torchrun): tiny "
                             "at T=64, batch 2 (per process), 1 warmup and 2 timed steps, fox_acp, "
                             "fox_acp_dense and sdpa through aot_eager, into "
                             "runs/bench_train_smoke.json unless --out is given")
    parser.add_argument("--parallel", choices=parallel.PARALLEL, default="none",
                        help="data parallelism under torchrun (ddp, or fsdp: FSDP2 per block); "
                             "--batch-size is then per GPU (default: the 1-GPU baseline's in --out)")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0,
                        help="--parallel ddp: DDP's gradient bucket size")
    parser.add_argument("--compile-with", choices=("default", "aot_eager"), default="default",
                        help="aot_eager: AOTAutograd without Inductor for every compiled variant "
                             "(fox_acp via fox.compiler), for quick CPU checks")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu",
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(train.DTYPES), default=None,
                        help="autocast dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--gate-init", choices=("decay", "default"), default="decay",
                        help="forget-gate biases: decay times over [2, 512] tokens, "
                             "or nn.Linear's init")
    parser.add_argument("--sdpa-backend", choices=sorted(SDPA_BACKENDS), default="cudnn",
                        help="SDPA backend of the sdpa variant on CUDA")
    parser.add_argument("--out", default=None,
                        help="results JSON (merged); --loss-parity writes into its stem "
                             "(default: runs/bench_train.json)")
    parser.add_argument("--loss-parity", action="store_true",
                        help="instead of throughput: compare losses with and without pruning")
    parser.add_argument("--parity-tokens", type=int, default=2**26, help="tokens per parity run (default: 2^26)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="parity seeds (default: 0 1)")
    parser.add_argument("--parity-report-only", action="store_true",
                        help="no training: summarise finished parity runs found under --out's stem")
    parser.add_argument("--parity-runs", nargs="+", choices=list(PARITY_RUNS),
                        default=list(PARITY_RUNS),
                        help="which parity runs, pruned (eps = e^-10) and/or dense (eps = 0) "
                             "(default: both)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    if args.parity_report_only and args.batch_size is None:
        parser.error("--parity-report-only needs the runs' --batch-size")
    if args.quick:
        args.configs, args.seq_lens, args.warmup_steps, args.steps = ["125m"], [4096], 2, 5
    if args.smoke:
        args.configs, args.seq_lens, args.warmup_steps, args.steps = ["tiny"], [64], 1, 2
        args.device, args.compile_with = "cpu", "aot_eager"
        if args.parallel == "none":  # under torchrun: the 1-GPU (1-process) baseline's batch
            args.batch_size = args.batch_size or 2
        if "--variants" not in (argv if argv is not None else sys.argv[1:]):
            args.variants = ["fox_acp", "fox_acp_dense", "sdpa"]
    args.out = args.out or ("runs/bench_train_smoke.json" if args.smoke else "runs/bench_train.json")
    if args.parallel != "none" and args.loss_parity:
        parser.error("--loss-parity runs train.py on one device; for parallel training use "
                     "torchrun examples/train.py --parallel ...")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.steps < 1 or args.warmup_steps < 1:
        parser.error("--steps and --warmup-steps must be at least 1 (the first step compiles)")
    if args.batch_size is not None and args.batch_size < 1:
        parser.error("--batch-size must be at least 1")
    if any(t < 2 for t in args.seq_lens):
        parser.error("--seq-lens must be at least 2")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        torch.set_num_threads(1)  # as torchrun's OMP_NUM_THREADS=1, so that 1 and N ranks compare
    if args.loss_parity:
        loss_parity(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
