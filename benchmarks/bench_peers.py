"""Training throughput of flash-linear-attention's FoX language model: fla's own kernel against
the same model under fox_acp, which hands its `parallel_forgetting_attn` calls to foxcompile's op
(foxcompile/peers) without a change to the model.

Variants (the model is fla's ForgettingTransformerForCausalLM with fla's defaults: fused norms,
SwiGLU and cross entropy; bf16 autocast; AdamW; random tokens):
    fla_inductor   torch.compile(model): fla's Triton attention kernel (Dynamo breaks the graph
                   around it), Inductor for the rest
    fox_acp        torch.compile(model, backend="fox_acp"): foxcompile's op with pruning
                   (fox.epsilon = e^-10)
    fox_acp_dense  the same with {"fox.epsilon": 0.0}: foxcompile's kernels, no pruning
    fla_eager      no compilation: fla's kernels, eager PyTorch elsewhere

Pruning depends on the forget gates: by default (--gate-init decay) each layer's f_proj bias
gives head h a decay time log-spaced over [2, 512] tokens (as benchmarks/bench_train.py does);
with --gate-init default (fla's init) an untrained FoX forgets within tens of tokens.

The batch is --tokens-per-step // T, halved until the first variant fits; every variant then runs
that batch (one that does not fit reports "OOM").

    python benchmarks/bench_peers.py --out-dir runs/peers                    # GPU: T = 4096, 16384
    python benchmarks/bench_peers.py --smoke --out-dir /tmp/peers_smoke      # CPU, tiny, seconds

--smoke runs on the CPU at toy sizes, and there fla's Triton kernels cannot run: it switches off
fla's fused modules and replaces its attention kernel and SwiGLU by PyTorch (this checks the
script, not speed). Results go to OUT_DIR/bench_peers.json (merged with earlier rows of other
cards, configs and lengths), and a table is printed.
"""
from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

CONFIGS = {  # fla ForgettingTransformerConfig fields
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_heads=4, vocab_size=256),
    "125m": dict(hidden_size=768, num_hidden_layers=12, num_heads=12, vocab_size=32768),
    "360m": dict(hidden_size=1024, num_hidden_layers=24, num_heads=16, vocab_size=32768),
    "760m": dict(hidden_size=1536, num_hidden_layers=24, num_heads=24, vocab_size=32768),
}
VARIANTS = {  # name: (backend, epsilon)
    "fla_inductor": ("inductor", None),
    "fox_acp": ("fox_acp", None),            # None: foxcompile's default epsilon
    "fox_acp_dense": ("fox_acp", 0.0),
    "fla_eager": ("eager", None),
}
DEFAULT_VARIANTS = ("fox_acp", "fox_acp_dense", "fla_inductor")
GATE_DECAY_RANGE = (2.0, 512.0)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def versions() -> dict:
    import fla
    import triton

    import foxcompile  # noqa: F401
    return {"torch": torch.__version__, "triton": triton.__version__,
            "fla": getattr(fla, "__version__", "?"), "python": platform.python_version()}


def use_pytorch_ops_for_fla():
    """--smoke on a CPU: fla's Triton attention and SwiGLU replaced by PyTorch (no Triton driver
    there). Checks the script, never measures fla."""
    import fla.modules.mlp
    import fla.ops.forgetting_attn.parallel as parallel

    def parallel_attn(q, k, v, g=None, scale=None, window_size=None, cu_seqlens=None,
                      chunk_indices=None, *, sink_bias=None):
        assert window_size is None and cu_seqlens is None and sink_bias is None
        t, groups = q.shape[1], q.shape[2] // k.shape[2]
        qh, kh, vh = (x.transpose(1, 2).float() for x in (q, k, v))
        kh, vh = kh.repeat_interleave(groups, 1), vh.repeat_interleave(groups, 1)
        lam = g.float().cumsum(1).transpose(1, 2)
        scores = (scale or q.shape[-1] ** -0.5) * qh @ kh.mT + lam[..., :, None] - lam[..., None, :]
        causal = torch.ones(t, t, dtype=torch.bool, device=q.device).tril()
        out = scores.masked_fill(~causal, float("-inf")).softmax(-1) @ vh
        return out.transpose(1, 2).to(q.dtype)

    parallel.parallel_attn = parallel_attn
    fla.modules.mlp.swiglu = lambda x, y: F.silu(x) * y


def build(config: str, args, device: torch.device):
    from fla.models import ForgettingTransformerConfig, ForgettingTransformerForCausalLM

    fused = not args.smoke
    cfg = ForgettingTransformerConfig(**CONFIGS[config], fuse_norm=fused, fuse_swiglu=fused,
                                      fuse_cross_entropy=fused, use_cache=False)
    torch.manual_seed(0)
    model = ForgettingTransformerForCausalLM(cfg).to(device)
    if args.gate_init == "decay":
        times = torch.logspace(math.log10(GATE_DECAY_RANGE[0]), math.log10(GATE_DECAY_RANGE[1]),
                               cfg.num_heads)
        bias = -torch.log(torch.expm1(1.0 / times))    # logsigmoid(bias) = -1 / t
        with torch.no_grad():
            for layer in model.model.layers:
                layer.attn.f_proj.bias.copy_(bias.to(device))
    return model


def compile_model(model, variant: str, args):
    backend, epsilon = VARIANTS[variant]
    if backend == "eager":
        return model
    if backend == "inductor":
        return torch.compile(model, backend="aot_eager" if args.smoke else "inductor")
    import foxcompile  # noqa: F401  (registers fox_acp and the peer calls)
    options = {} if epsilon is None else {"fox.epsilon": epsilon}
    if args.smoke:
        options["fox.compiler"] = "aot_eager"
    return torch.compile(model, backend="fox_acp", options=options)


def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def release_memory(device):
    gc.collect()
    torch._dynamo.reset()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def measure(variant: str, config: str, seq_len: int, batch: int, args) -> dict:
    """Warmup (compilation) and timed training steps: tokens/s, warmup time, peak memory, and for
    fox_acp the fraction of attention FLOPs skipped and the sites rewritten."""
    device = torch.device(args.device)
    model = build(config, args, device)
    compiled = compile_model(model, variant, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    vocab = CONFIGS[config]["vocab_size"]
    generator = torch.Generator().manual_seed(0)
    batches = [torch.randint(0, vocab, (batch, seq_len), generator=generator).to(device)
               for _ in range(args.warmup_steps + args.steps)]
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=not args.smoke)

    def step(ids):
        with autocast:
            loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss

    def run(steps) -> float:
        start = time.perf_counter()
        for ids in steps:
            loss = step(ids)
        synchronize(device)
        if not math.isfinite(loss.item()):
            raise FloatingPointError(f"{variant}: loss is {loss.item()}")
        return time.perf_counter() - start

    warmup_s = run(batches[: args.warmup_steps])
    timed_s = run(batches[args.warmup_steps:])
    row = {"status": "ok", "tokens_per_s": batch * seq_len * args.steps / timed_s,
           "step_ms": 1e3 * timed_s / args.steps, "warmup_s": warmup_s}
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    if VARIANTS[variant][0] == "fox_acp":
        import foxcompile
        with foxcompile.pruning_stats() as stats, autocast:
            compiled(input_ids=batches[0], labels=batches[0])
        row["skipped_fraction"] = stats.skipped_fraction()
        row["sites"] = len(stats.per_head())
    return row


def measure_safely(variant, config, seq_len, batch, args) -> dict:
    key = {"device": device_name(torch.device(args.device)), "config": config,
           "seq_len": seq_len, "variant": variant, "batch_size": batch}
    try:
        row = {**key, **measure(variant, config, seq_len, batch, args)}
    except Exception as error:  # a failing variant must not lose the others' results
        if isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower():
            row = {**key, "status": "OOM"}
        else:
            traceback.print_exc()
            first = (str(error).strip().splitlines() or [""])[0][:300]
            row = {**key, "status": f"error: {type(error).__name__}: {first}"}
    release_memory(torch.device(args.device))
    return row


def row_key(row, variant=None):
    return row["device"], row["config"], row["seq_len"], variant or row["variant"]


def add_ratios(rows):
    """tokens/s relative to fla_inductor (fla's kernel) of the same card, config and length."""
    speed = {row_key(r): r["tokens_per_s"] for r in rows if r["status"] == "ok"}
    for row in rows:
        base = speed.get(row_key(row, "fla_inductor"))
        row["vs_fla"] = row["tokens_per_s"] / base if row["status"] == "ok" and base else None


def format_table(rows) -> str:
    def number(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"{'config':>6} {'T':>6} {'variant':>14} {'batch':>5} {'tokens/s':>11} "
             f"{'vs fla':>6} {'skipped':>7} {'peak GB':>7} {'warmup s':>8}  status"]
    for r in rows:
        lines.append(
            f"{r['config']:>6} {r['seq_len']:>6} {r['variant']:>14} {r['batch_size']:>5} "
            f"{number(r.get('tokens_per_s'), ',.0f'):>11} {number(r.get('vs_fla'), '.2f'):>6} "
            f"{number(r.get('skipped_fraction'), '.0%'):>7} "
            f"{number(r.get('peak_memory_gb'), '.1f'):>7} {number(r.get('warmup_s'), '.0f'):>8}"
            f"  {r['status']}")
    return "\n".join(lines)


def write(path: Path, args, new_rows):
    old = json.loads(path.read_text())["rows"] if path.exists() else []
    fresh = {row_key(r) for r in new_rows}
    rows = [r for r in old if row_key(r) not in fresh] + new_rows
    add_ratios(rows)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"versions": versions(), "args": vars(args), "rows": rows},
                              indent=1))
    tmp.replace(path)
    return rows


def main(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--out-dir", required=True, help="bench_peers.json is written here")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="125m")
    parser.add_argument("--seq-lens", nargs="+", type=int, default=[4096, 16384])
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=list(DEFAULT_VARIANTS))
    parser.add_argument("--tokens-per-step", type=int, default=2**17,
                        help="batch = this // T, halved on OOM by the first variant")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed (compilation)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps")
    parser.add_argument("--gate-init", choices=("decay", "default"), default="decay")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu")
    parser.add_argument("--smoke", action="store_true",
                        help="CPU, tiny config, T = 64 and 128, 1 + 2 steps, PyTorch for fla's "
                             "Triton ops, aot_eager for the compiled variants")
    args = parser.parse_args(argv)
    if args.smoke:
        args.device, args.config, args.seq_lens = "cpu", "tiny", [64, 128]
        args.tokens_per_step, args.warmup_steps, args.steps = 256, 1, 2
        args.variants = list(VARIANTS)
        use_pytorch_ops_for_fla()
    out = Path(args.out_dir) / "bench_peers.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    variants = [v for v in VARIANTS if v in args.variants]
    rows = []
    for seq_len in args.seq_lens:
        batch = max(1, args.tokens_per_step // seq_len)
        first = True
        for variant in variants:
            while True:
                row = measure_safely(variant, args.config, seq_len, batch, args)
                if not first or row["status"] != "OOM" or batch == 1:
                    break
                print(f"T={seq_len} {variant}: OOM at batch {batch}, halving", flush=True)
                batch //= 2
            first = False
            rows = write(out, args, [row])
            print(format_table([r for r in rows if row_key(r) == row_key(row)]).splitlines()[1],
                  flush=True)
    card = device_name(torch.device(args.device))
    mine = [r for r in rows if r["device"] == card and r["config"] == args.config]
    print(f"\n{card}, {versions()}, gate init {args.gate_init}\n{format_table(mine)}\nwrote {out}")


if __name__ == "__main__":
    main()
