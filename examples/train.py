"""Train the byte-level FoX language model (fox_lm.py) on the Python standard library's source.

The corpus is on every machine with Python: all *.py files under `sysconfig.get_paths()["stdlib"]`
(site-packages, dist-packages and __pycache__ left out), sorted by their path relative to that
root and concatenated as bytes. A file belongs to the eval split when the first 8 hex digits of
the SHA-256 of its relative POSIX path, modulo 1000, are below 20 (about 2% of the files); the
split depends only on the file names, so it is the same on every machine with the same Python.

Examples:
    python examples/train.py --config tiny --steps 20 --device cpu --backend eager
    python examples/train.py --config 125m --seq-len 4096 --batch-size 16 --steps 5000

Writes into --out: log.json (config, arguments, versions, device, per-step loss and tokens/s,
evals, pruning statistics), loss.png, checkpoint.pt (model, optimizer, scheduler and step) and,
for forgetting attention, pruning_boundary.png; with --backend fox_acp also pruning_heatmap.png
and pruning_over_training.png. docs/training.md explains the plots.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import sysconfig
import time
from dataclasses import asdict
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

from fox_lm import CONFIGS, build_model  # noqa: E402

BACKENDS = ("fox_acp", "inductor", "eager")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# The ACP paper's default tolerance (foxcompile.DEFAULT_EPSILON too; repeated here so that the
# eager and Inductor paths and the boundary analysis run without foxcompile).
DEFAULT_EPSILON = math.exp(-10)
EVAL_PER_MILLE = 20  # files whose path hash mod 1000 is below this go to the eval split
EXCLUDED_DIRS = {"site-packages", "dist-packages", "__pycache__"}
BETAS = (0.9, 0.95)
GRAD_CLIP = 1.0
MIN_LR_RATIO = 0.1  # the cosine decays to this fraction of --lr
GATE_DECAY_RANGE = (2.0, 512.0)  # --gate-init decay: the SYN70 decay times of the anchors
BOUNDARY_MAX_TOKENS = 4096  # the eager forward behind the boundary picture is T x T per head
BOUNDARY_GRID = 512  # the picture and its fractions use at most this many positions


# ---------------------------------------------------------------- corpus


def stdlib_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def stdlib_files(root: Path) -> list[str]:
    """Relative POSIX paths of the *.py files under root, sorted, without installed packages."""
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in EXCLUDED_DIRS]
        rel = Path(directory).relative_to(root)
        paths += [(rel / f).as_posix() for f in files if f.endswith(".py")]
    return sorted(paths)


def is_eval_file(relative_path: str) -> bool:
    """The split rule: a hash of the relative path, so it is stable across machines and runs."""
    digest = hashlib.sha256(relative_path.encode()).hexdigest()
    return int(digest[:8], 16) % 1000 < EVAL_PER_MILLE


def split_files(root: Path) -> dict[str, list[str]]:
    """{"train": [...], "eval": [...]} relative paths, each list sorted."""
    files = stdlib_files(root)
    return {
        "train": [f for f in files if not is_eval_file(f)],
        "eval": [f for f in files if is_eval_file(f)],
    }


def load_corpus(root: Path | None = None) -> dict[str, torch.Tensor]:
    """{"train": bytes, "eval": bytes} as 1-D uint8 tensors (the files of a split concatenated)."""
    root = root or stdlib_root()
    corpus = {}
    for split, files in split_files(root).items():
        data = b"".join((root / f).read_bytes() for f in files)
        corpus[split] = torch.from_numpy(np.frombuffer(data, dtype=np.uint8).copy())
    return corpus


def sample_batch(data: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator):
    """Random windows of data: inputs and next-byte targets, both (batch_size, seq_len) int64."""
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return windows[:, :-1], windows[:, 1:]


def eval_batches(data: torch.Tensor, batch_size: int, seq_len: int, count: int):
    """`count` fixed batches of evenly spaced windows: the same for every run and seed."""
    if len(data) <= seq_len:
        raise ValueError(f"the eval split has {len(data)} bytes, fewer than --seq-len + 1")
    starts = torch.linspace(0, len(data) - seq_len - 1, batch_size * count).long()
    windows = torch.stack([data[s : s + seq_len + 1] for s in starts.tolist()]).long()
    return [(w[:, :-1], w[:, 1:]) for w in windows.split(batch_size)]


# ---------------------------------------------------------------- training pieces


def import_foxcompile():
    """foxcompile, or a clear error saying how to get it."""
    try:
        import foxcompile
    except ImportError as error:
        raise RuntimeError(
            "--backend fox_acp needs the foxcompile package: run `pip install -e .` at the "
            f"repository root ({error})"
        ) from error
    return foxcompile


def set_gate_decay_times(model, shortest: float, longest: float):
    """Forget-gate biases such that at zero gate input head h has log f = -1 / t_h, with t_h
    log-spaced over [shortest, longest] across the heads (the same in every layer)."""
    times = torch.logspace(math.log10(shortest), math.log10(longest), model.config.heads)
    bias = -torch.log(torch.expm1(1.0 / times))
    with torch.no_grad():
        for block in model.blocks:
            block.attn.fgate.bias.copy_(bias.to(block.attn.fgate.bias.device))


def compile_model(model: torch.nn.Module, backend: str, epsilon: float):
    """The callable to train: fox_acp with {"fox.epsilon": epsilon}, plain Inductor, or eager."""
    if backend == "fox_acp":
        import_foxcompile()
        return torch.compile(model, backend="fox_acp", options={"fox.epsilon": epsilon})
    if backend == "inductor":
        return torch.compile(model)
    if backend == "eager":
        return model
    raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")


def make_optimizer(model: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW; matrices decay, norms, biases and gate vectors do not."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=BETAS)


def make_scheduler(optimizer, warmup_steps: int, total_steps: int):
    """Linear warmup to the peak, then a cosine down to MIN_LR_RATIO of it at total_steps."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return MIN_LR_RATIO + (1 - MIN_LR_RATIO) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def autocast(device: torch.device, dtype: torch.dtype):
    """Mixed precision in `dtype` (fp32: none)."""
    return torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)


def lm_loss(model, inputs: torch.Tensor, targets: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Mean next-byte cross entropy (nats); inputs, targets (B, T) on the model's device."""
    with autocast(inputs.device, dtype):
        logits = model(inputs)
    return F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())


def training_step(model, optimizer, scheduler, inputs, targets, dtype) -> torch.Tensor:
    """One optimizer step; returns the (detached) loss tensor without synchronising."""
    loss = lm_loss(model, inputs, targets, dtype)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def evaluate(model, batches, device: torch.device, dtype: torch.dtype) -> float:
    """Mean loss over the eval batches, without autograd (which would keep every batch's
    activations alive until the mean). The model has no dropout, so it stays in train mode;
    torch.compile compiles one inference graph for it, which pruning_snapshot reuses."""
    losses = [lm_loss(model, x.to(device), y.to(device), dtype) for x, y in batches]
    return torch.stack(losses).mean().item()


def pruning_snapshot(model, inputs: torch.Tensor, targets: torch.Tensor,
                     dtype: torch.dtype) -> dict:
    """What fox_acp skipped in one forward (in the caller's grad mode, so that a compiled model
    reuses the graph it already has): overall and per call site and head."""
    foxcompile = import_foxcompile()
    with foxcompile.pruning_stats() as stats:
        lm_loss(model, inputs, targets, dtype)
    return {"skipped_fraction": stats.skipped_fraction(), "per_head": stats.per_head()}


# ---------------------------------------------------------------- ACP analysis in eager mode


@torch.no_grad()
def capture_attention_inputs(model, tokens: torch.Tensor, dtype: torch.dtype) -> list:
    """(q, k, v, log_f) entering each layer's attention, from one eager forward of the
    uncompiled model (forward pre-hooks on the attention modules). tokens: (B, T)."""
    captured = []
    def capture(module, args):
        captured.append(module.project(*args))

    hooks = [block.attn.register_forward_pre_hook(capture) for block in model.blocks]
    try:
        with autocast(tokens.device, dtype):
            model(tokens)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def acp_threshold(q: torch.Tensor, k: torch.Tensor, scale: float, epsilon: float) -> torch.Tensor:
    """delta = min(log(eps) - 2U - log(N), 0) with U = scale max||q|| max||k|| (acp.md), the
    element-level rule on the eager tensors; foxcompile's kernels apply it per tile.

    q, k: (H, T, D) of one sequence -> (H,) fp32.
    """
    bound = scale * q.float().norm(dim=-1).amax(-1) * k.float().norm(dim=-1).amax(-1)
    return (math.log(epsilon) - 2 * bound - math.log(q.shape[-2])).clamp(max=0.0)


def prunable_pairs(layer_inputs, grid: torch.Tensor, scale: float, epsilon: float):
    """ACP on a grid of positions for one layer and one sequence.

    layer_inputs: (q, k, v, log_f) of batch size 1; grid: (G,) positions. Returns D (H, G, G),
    delta (H,) and the prunable causal pairs (H, G, G) bool.
    """
    q, k, _, log_f = (t[0].float().cpu() for t in layer_inputs)
    delta = acp_threshold(q, k, scale, epsilon)
    lam = torch.cumsum(log_f, dim=-1)[:, grid]  # (H, G): fp32 cumsum as in the model
    D = lam[:, :, None] - lam[:, None, :]
    causal = grid[:, None] >= grid[None, :]
    return D, delta, causal & (D < delta[:, None, None])


def plot_pruning_boundary(model, tokens: torch.Tensor, epsilon: float, dtype: torch.dtype,
                          path: Path) -> list:
    """Picture D_ij = lam_i - lam_j with the ACP-prunable region D < delta for a few heads.

    tokens: (1, T); only the first BOUNDARY_MAX_TOKENS are used, and D is shown and counted
    on a grid of at most BOUNDARY_GRID positions. For the first, middle and last layer it shows
    the heads with the most and the least prunable (i, j) pairs. Returns the prunable fraction
    of the causal pairs, layers x heads.
    """
    tokens = tokens[:, :BOUNDARY_MAX_TOKENS]
    captured = capture_attention_inputs(model, tokens, dtype)
    T = tokens.shape[1]
    grid = torch.linspace(0, T - 1, min(T, BOUNDARY_GRID)).round().long()
    causal = grid[:, None] >= grid[None, :]
    scale = model.config.head_dim**-0.5
    fractions = torch.stack([prunable_pairs(inputs, grid, scale, epsilon)[2].sum((-2, -1))
                             for inputs in captured]) / causal.sum()  # (L, H)
    layers = sorted({0, len(captured) // 2, len(captured) - 1})
    fig, axes = plt.subplots(2, len(layers), figsize=(4.4 * len(layers), 8), squeeze=False)
    extent = (0, T, T, 0)
    for col, layer in enumerate(layers):
        D, delta, prunable = prunable_pairs(captured[layer], grid, scale, epsilon)
        most_and_least = (int(fractions[layer].argmax()), int(fractions[layer].argmin()))
        for row, head in enumerate(most_and_least):
            ax = axes[row, col]
            # colours saturate at 2 delta so that the band around the boundary stays readable
            image = ax.imshow(np.ma.masked_where(~causal.numpy(), D[head].numpy()), cmap="viridis",
                              vmin=2 * float(delta[head]), vmax=0, extent=extent,
                              interpolation="nearest")
            ax.imshow(np.ma.masked_where(~prunable[head].numpy(), np.ones(causal.shape)),
                      cmap="gray", vmin=0, vmax=1, alpha=0.6, extent=extent,
                      interpolation="nearest")
            ax.contour(grid.numpy(), grid.numpy(), prunable[head].numpy().astype(float),
                       levels=[0.5], colors="red", linewidths=1)
            ax.set_title(f"layer {layer} head {head}: {fractions[layer, head]:.0%} prunable, "
                         f"delta = {delta[head]:.1f}", fontsize=9)
            ax.set_xlabel("key j")
            ax.set_ylabel("query i")
            fig.colorbar(image, ax=ax, fraction=0.046, label="D = lam_i - lam_j")
    fig.suptitle(f"ACP pruning boundary, T = {T}, eps = {epsilon:.3g}: "
                 "shaded D < delta (prunable), red line the boundary")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return fractions.tolist()


# ---------------------------------------------------------------- plots of the log


def smoothed_losses(log: dict):
    """Training loss as a running mean over 2% of the steps: (steps, means, window)."""
    steps = [s["step"] for s in log["steps"]]
    losses = np.array([s["loss"] for s in log["steps"]])
    window = max(1, len(losses) // 50)
    return steps[window - 1 :], np.convolve(losses, np.ones(window) / window, mode="valid"), window


def plot_losses(log: dict, path: Path):
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.plot([s["step"] for s in log["steps"]], [s["loss"] for s in log["steps"]], alpha=0.3,
            label="train (per step)")
    steps, means, window = smoothed_losses(log)
    ax.plot(steps, means, label=f"train (running mean of {window} steps)")
    if log["evals"]:
        ax.plot([e["step"] for e in log["evals"]], [e["loss"] for e in log["evals"]], "o-",
                label="eval")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per byte)")
    ax.set_title(f"{log['args']['config']}{' pro' if log['args']['pro'] else ''}, "
                 f"backend {log['args']['backend']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def site_label(index: int, site: str) -> str:
    """A short name for a pruning_stats call site (module path and source line)."""
    last_line = site.strip().splitlines()[-1].strip() if site.strip() else "?"
    return f"{index}: {last_line[:40]}"


def plot_pruning_heatmap(snapshot: dict, path: Path):
    """Attention call sites (in call order) x heads: fraction of causal tiles skipped. When
    every layer is its own call site, the rows are the layers."""
    sites = snapshot["per_head"]
    matrix = np.array([site["skipped_tile_fraction"] for site in sites])
    fig, ax = plt.subplots(figsize=(6.0 + 0.3 * matrix.shape[1], 2.0 + 0.3 * matrix.shape[0]))
    image = ax.imshow(matrix, cmap="magma", vmin=0, vmax=1, aspect="auto")
    ax.set_yticks(range(len(sites)), [site_label(i, s["site"]) for i, s in enumerate(sites)],
                  fontsize=7)
    ax.set_xticks(range(matrix.shape[1]))
    ax.set_xlabel("head")
    ax.set_title(f"skipped tiles at step {snapshot['step']}\n(attention FLOPs skipped overall: "
                 f"{snapshot['skipped_fraction']:.0%})", fontsize=9)
    fig.colorbar(image, ax=ax, label="fraction of causal tiles skipped")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pruning_over_training(snapshots: list, path: Path):
    """Skipped fraction against the step: overall (FLOPs) and per call site (mean over heads)."""
    steps = [s["step"] for s in snapshots]
    sites = len(snapshots[-1]["per_head"])
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for index in range(sites):
        means = [np.mean(s["per_head"][index]["skipped_tile_fraction"]) for s in snapshots]
        ax.plot(steps, means, color=plt.cm.viridis(index / max(1, sites - 1)), alpha=0.8,
                label=f"site {index} (tiles, mean of heads)")
    ax.plot(steps, [s["skipped_fraction"] for s in snapshots], "o-", lw=2, color="black",
            label="all sites (FLOPs)")
    ax.set_xlabel("step")
    ax.set_ylabel("fraction skipped")
    ax.set_ylim(0, 1)
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1), ncol=1 + sites // 20)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- the run


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return platform.processor() or platform.machine() or "cpu"


def versions() -> dict:
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {"torch": torch.__version__, "triton": triton_version,
            "python": platform.python_version()}


def write_json(path: Path, data: dict):
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(path)


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int):
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(), "step": step,
                "config": asdict(model.config)}, path)


def train(args: argparse.Namespace) -> dict:
    """Run the training described by parse_args's namespace; returns the log written to
    args.out / "log.json"."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    corpus = load_corpus()
    with device:
        model = build_model(args.config, pro=args.pro, attention=args.attention,
                            activation_checkpointing=args.activation_checkpointing)
    if args.gate_init == "decay" and args.attention == "fox":
        set_gate_decay_times(model, *GATE_DECAY_RANGE)
    compiled = compile_model(model, args.backend, args.epsilon)
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.steps // 20)
    scheduler = make_scheduler(optimizer, warmup, args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    evals = eval_batches(corpus["eval"], args.batch_size, args.seq_len, args.eval_batches)
    track_pruning = args.backend == "fox_acp" and args.attention == "fox"

    log = {
        "args": dict(vars(args)),
        "config": asdict(model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": versions(),
        "device": device_name(device),
        "corpus": {"root": str(stdlib_root()),
                   **{f"{split}_bytes": len(data) for split, data in corpus.items()}},
        "steps": [], "evals": [], "pruning": [], "summary": {},
    }
    tokens_per_step = args.batch_size * args.seq_len
    start = time.perf_counter()
    progress = tqdm(range(1, args.steps + 1), desc="train", dynamic_ncols=True)
    for step in progress:
        inputs, targets = (t.to(device) for t in sample_batch(corpus["train"], args.batch_size,
                                                               args.seq_len, generator))
        step_start = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        loss = training_step(compiled, optimizer, scheduler, inputs, targets, dtype).item()
        seconds = time.perf_counter() - step_start
        log["steps"].append({"step": step, "loss": loss, "lr": lr, "seconds": seconds,
                             "tokens_per_s": tokens_per_step / seconds})
        progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_step / seconds:,.0f}")
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}")
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            eval_loss = evaluate(compiled, evals, device, dtype)
            log["evals"].append({"step": step, "loss": eval_loss})
            progress.write(f"step {step}: eval loss {eval_loss:.4f}")
            if track_pruning:
                with torch.no_grad():  # the graph evaluate() compiled
                    snapshot = pruning_snapshot(compiled, *(t.to(device) for t in evals[0]), dtype)
                log["pruning"].append({"step": step, **snapshot})
            write_json(out / "log.json", log)
        if args.checkpoint_every and (step == args.steps or step % args.checkpoint_every == 0):
            save_checkpoint(out / "checkpoint.pt", model, optimizer, scheduler, step)
    progress.close()

    timed = log["steps"][1:] or log["steps"]  # the first step includes compilation
    log["summary"] = {
        "final_eval_loss": log["evals"][-1]["loss"],
        "first_step_s": log["steps"][0]["seconds"],
        "mean_tokens_per_s": tokens_per_step * len(timed) / sum(s["seconds"] for s in timed),
        "wall_s": time.perf_counter() - start,
    }
    plot_losses(log, out / "loss.png")
    if args.attention == "fox" and args.epsilon > 0:
        log["summary"]["prunable_pair_fraction"] = plot_pruning_boundary(
            model, evals[0][0][:1].to(device), args.epsilon, dtype, out / "pruning_boundary.png")
    if log["pruning"]:
        plot_pruning_heatmap(log["pruning"][-1], out / "pruning_heatmap.png")
        plot_pruning_over_training(log["pruning"], out / "pruning_over_training.png")
    write_json(out / "log.json", log)
    return log


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="model size")
    parser.add_argument("--pro", action="store_true", help="use the FoX Pro block")
    parser.add_argument("--attention", choices=("fox", "sdpa"), default="fox",
                        help="forgetting attention, or plain causal SDPA without a forget gate")
    parser.add_argument("--gate-init", choices=("default", "decay"), default="default",
                        help="forget-gate biases: nn.Linear's init, or decay times log-spaced "
                             "over [2, 512] tokens across the heads")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute each block in the backward (torch.utils.checkpoint)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens (bytes) per sequence")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"),
                        help="where to train")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="autocast dtype; default bf16 on cuda, fp32 on cpu")
    parser.add_argument("--backend", choices=BACKENDS, default="fox_acp",
                        help="torch.compile backend (eager: no compilation)")
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON,
                        help="ACP tolerance (dropped attention mass per query); 0 disables pruning")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear warmup steps (default: 5%% of --steps)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    parser.add_argument("--eval-every", type=int, default=200,
                        help="evaluate every N steps (and always at the end); 0: only at the end")
    parser.add_argument("--eval-batches", type=int, default=8, help="batches per evaluation")
    parser.add_argument("--checkpoint-every", type=int, default=1000,
                        help="save out/checkpoint.pt every N steps and at the end; 0: never")
    parser.add_argument("--out", default=None,
                        help="directory for logs, plots and checkpoints (default runs/<timestamp>)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    for name in ("steps", "seq_len", "batch_size", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("eval_every", "checkpoint_every", "warmup_steps"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if not 0 <= args.epsilon < 1:
        parser.error("--epsilon must be in [0, 1)")
    if args.lr <= 0:
        parser.error("--lr must be positive")
    if args.backend == "fox_acp":
        try:
            import_foxcompile()
        except RuntimeError as error:
            parser.error(str(error))
    args.out = args.out or os.path.join("runs", datetime.datetime.now().strftime("%Y%m%d-%H%M%S"))
    return args


def main(argv=None):
    args = parse_args(argv)
    log = train(args)
    summary = log["summary"]
    print(f"final eval loss {summary['final_eval_loss']:.4f}, "
          f"{summary['mean_tokens_per_s']:,.0f} tokens/s; wrote {args.out}")


if __name__ == "__main__":
    main()
