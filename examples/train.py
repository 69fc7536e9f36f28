"""Train the byte-level FoX language model (fox_lm.py) on the Python standard library's source.

The corpus is on every machine with Python: all *.py files under `sysconfig.get_paths()["stdlib"]`
(site-packages, dist-packages and __pycache__ left out), sorted by their path relative to that
root and concatenated as bytes. A file belongs to the eval split when the first 8 hex digits of
the SHA-256 of its relative POSIX path, modulo 1000, are below 20 (about 2% of the files); the
split depends only on the file names, so it is the same on every machine with the same Python.

Examples:
    python examples/train.py --config tiny --steps 20 --device cpu --backend eager
    python examples/train.py --config 125m --seq-len 4096 --batch-size 16 --steps 5000
    torchrun --nproc-per-node 8 examples/train.py --parallel fsdp --config 760m --seq-len 16384 \
        --batch-size 16 --steps 5000 --out runs/760m-fsdp      # --batch-size is the global batch
    torchrun --nproc-per-node 8 examples/train.py --parallel fsdp ... --out runs/760m-fsdp --resume

Writes into --out: log.json (config, arguments, versions, device, per-step loss and tokens/s,
evals, pruning statistics), loss.png, checkpoint.pt (model, optimizer, scheduler, batch generator
and step; with --parallel, checkpoints/step_N/ through torch.distributed.checkpoint instead) and,
for forgetting attention, pruning_boundary.png; with --backend fox_acp also pruning_heatmap.png
and pruning_over_training.png. docs/training.md explains the plots and the parallel runs.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import importlib
import json
import math
import os
import platform
import sysconfig
import textwrap
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import parallel
from fox_lm import CONFIGS, build_model

BACKENDS = ("fox_acp", "inductor", "eager")
FOX_COMPILERS = ("inductor", "aot_eager", "eager")  # foxcompile's "fox.compiler" option
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
BOUNDARY_GRID = 512  # the picture shows D on a grid of at most this many positions
# The optional packages the examples use (pyproject.toml's `examples` extra).
EXAMPLES_EXTRA = ("matplotlib", "tqdm")
INSTALL_EXTRA = 'pip install -e ".[examples]"'


# ---------------------------------------------------------------- optional packages


def require(module: str):
    """Import one of EXAMPLES_EXTRA, or stop with one line that says how to get it."""
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as error:
        if error.name != module.split(".")[0]:
            raise
        raise SystemExit(f"{module} is not installed: the examples need the `examples` extra "
                         f"({INSTALL_EXTRA} at the repository root)") from None


def require_examples_extra():
    """Fail before training rather than at the first plot."""
    for module in EXAMPLES_EXTRA:
        require(module)


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend."""
    require("matplotlib").use("Agg")
    return importlib.import_module("matplotlib.pyplot")


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
            "--backend fox_acp needs the foxcompile package: run `pip install -e \".[examples]\"` "
            f"at the repository root ({error})"
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


def compile_model(model: torch.nn.Module, backend: str, epsilon: float,
                  fox_compiler: str = "inductor"):
    """The callable to train: fox_acp with {"fox.epsilon": epsilon} (and "fox.compiler" when not
    Inductor), plain Inductor, or eager. model may be wrapped in DDP (parallel.wrap)."""
    if backend == "fox_acp":
        import_foxcompile()
        options = {"fox.epsilon": epsilon}
        if fox_compiler != "inductor":
            options["fox.compiler"] = fox_compiler
        return torch.compile(model, backend="fox_acp", options=options)
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
    """One optimizer step; returns the (detached) loss tensor without synchronising. Under DDP
    or FSDP the gradients are averaged over the ranks during the backward (each rank's loss is
    the mean over its equal share of the batch, so this is the gradient of the global mean)."""
    loss = lm_loss(model, inputs, targets, dtype)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)  # FSDP: over all the shards
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach()


@torch.no_grad()
def evaluate(model, batches, device: torch.device, dtype: torch.dtype,
             ctx: parallel.Context | None = None) -> float:
    """Mean loss over the eval batches, without autograd (which would keep every batch's
    activations alive until the mean). The model has no dropout, so it stays in train mode;
    torch.compile compiles one inference graph for it, which pruning_snapshot reuses. With a
    parallel context each rank takes its share of every batch and the mean is over all ranks."""
    ctx = ctx or parallel.Context()
    losses = [lm_loss(model, parallel.local_slice(x, ctx).to(device),
                      parallel.local_slice(y, ctx).to(device), dtype) for x, y in batches]
    return parallel.mean_over_ranks(torch.stack(losses).mean(), ctx).item()


def pruning_snapshot(model, inputs: torch.Tensor, targets: torch.Tensor,
                     dtype: torch.dtype, ctx: parallel.Context | None = None) -> dict:
    """What fox_acp skipped in one forward (in the caller's grad mode, so that a compiled model
    reuses the graph it already has): overall and per call site and head. inputs and targets are
    this process's batch; with a parallel context the counts of all ranks are summed (`calls`
    then counts every rank's calls, and "ranks" says how many there were)."""
    foxcompile = import_foxcompile()
    with foxcompile.pruning_stats() as stats:
        lm_loss(model, inputs, targets, dtype)
    ranks = 1
    if ctx is not None and ctx.distributed:
        stats.all_reduce()
        ranks = ctx.world_size
    return {"skipped_fraction": stats.skipped_fraction(), "per_head": stats.per_head(),
            "ranks": ranks}


# ---------------------------------------------------------------- ACP analysis in eager mode
#
# ACP's rule is per pair: drop (query i, key j) when D_ij = lam_i - lam_j < delta. foxcompile's
# kernels apply it per tile of their pruning grid: a tile is skipped only when its largest D, at
# the corner nearest the diagonal, is below delta (then every pair in it is), and the tiles on
# the diagonal always run. The boundary picture shows what each allows.


def kernel_tile(head_dim: int) -> tuple[int, int]:
    """(queries, keys) per tile of foxcompile's pruning grid: 128 x 128 up to head dim 128,
    64 x 64 above (tile_sizes in foxcompile/kernels/plan.py; repeated here so that the analysis
    runs without foxcompile)."""
    return (128, 128) if head_dim <= 128 else (64, 64)


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
    """delta = min(log(eps) - 2U - log(N), 0) with U = scale max||q|| max||k|| (docs/acp.md).

    q, k: (H, T, D) of one sequence -> (H,) fp32.
    """
    bound = scale * q.float().norm(dim=-1).amax(-1) * k.float().norm(dim=-1).amax(-1)
    return (math.log(epsilon) - 2 * bound - math.log(q.shape[-2])).clamp(max=0.0)


def rule_pair_fraction(lam: torch.Tensor, delta: torch.Tensor) -> torch.Tensor:
    """Fraction of the causal pairs (i, j) with D_ij = lam_i - lam_j < delta, per head, counted
    pair by pair: what the rule allows. lam (H, T), delta (H,) -> (H,)."""
    T = lam.shape[-1]
    causal = torch.ones(T, T, dtype=torch.bool).tril()
    counts = [((lam[h, :, None] - lam[h, None, :] < delta[h]) & causal).sum() for h in range(len(lam))]
    return torch.stack(counts) / (T * (T + 1) / 2)


def kernel_start_blocks(lam: torch.Tensor, delta: torch.Tensor, block_m: int,
                        block_n: int) -> torch.Tensor:
    """How many leading key blocks foxcompile's kernels skip for each query block of one
    sequence, as foxcompile's plan computes it: lam (H, T), delta (H,) -> (H, MB) int64.

    Key block n is skipped for query block m when lam[first query of m] - lam[last key of n] is
    below delta (the tile's largest D while lam never increases), as a prefix of the key blocks
    that stops before the block holding the first query's diagonal; a start is lowered where a
    later query block skips less, so it never decreases."""
    T = lam.shape[-1]
    first_row = torch.arange(0, T, block_m)
    last_col = (torch.arange(0, T, block_n) + block_n - 1).clamp(max=T - 1)
    below = lam[:, first_row, None] - lam[:, None, last_col] < delta[:, None, None]
    start = torch.minimum(below.long().cumprod(-1).sum(-1), first_row // block_n)
    return torch.flip(torch.cummin(torch.flip(start, (-1,)), dim=-1).values, (-1,))


def grid_limit(T: int, block_m: int, block_n: int) -> torch.Tensor:
    """Start blocks (MB,) that skip every tile at least one whole tile away from the diagonal.
    The diagonal tiles always run, and a tile beside the diagonal (its nearest corner one step
    from it, so its largest D is a single log f) goes only when one gate value alone is below
    delta: in practice this is the most a sequence of T tokens lets the kernel skip."""
    first_row = torch.arange(0, T, block_m)
    return (first_row - 1).clamp(min=0) // block_n


def grid_fractions(start: torch.Tensor, T: int, block_m: int, block_n: int):
    """(fraction of the causal tiles, fraction of the causal pairs, i.e. of the attention FLOPs)
    that start blocks (..., MB) skip, for T queries and keys. A skipped tile is always full, while
    a diagonal tile holds only its causal half, so the pair fraction is the larger one."""
    first_row = torch.arange(0, T, block_m)
    rows = (T - first_row).clamp(max=block_m)
    causal_tiles = ((first_row + rows - 1) // block_n + 1).sum()
    tiles = start.sum(-1) / causal_tiles
    pairs = (start * block_n * rows).sum(-1) / (T * (T + 1) / 2)
    return tiles.float(), pairs.float()


@torch.no_grad()
def boundary_analysis(model, tokens: torch.Tensor, epsilon: float, dtype: torch.dtype) -> dict:
    """ACP on one sequence of the uncompiled model, per layer and head: the rule pair by pair
    and the kernel's tiles. tokens: (1, T), of which the first BOUNDARY_MAX_TOKENS are used."""
    tokens = tokens[:, :BOUNDARY_MAX_TOKENS]
    T = tokens.shape[1]
    block_m, block_n = kernel_tile(model.config.head_dim)
    scale = model.config.head_dim**-0.5
    layers = []
    for inputs in capture_attention_inputs(model, tokens, dtype):
        q, k, _, log_f = (t[0].float().cpu() for t in inputs)
        lam = torch.cumsum(log_f, dim=-1)  # (H, T): fp32, as in the model
        delta = acp_threshold(q, k, scale, epsilon)
        # the kernels lower delta by twice the largest rise of lam (rounding), as foxcompile does
        rise = (lam - torch.cummin(lam, dim=-1).values).amax(-1)
        start = kernel_start_blocks(lam, delta - 2 * rise, block_m, block_n)
        tiles, pairs = grid_fractions(start, T, block_m, block_n)
        layers.append({"lam": lam, "delta": delta, "start": start, "kernel_tiles": tiles,
                       "kernel_pairs": pairs, "rule_pairs": rule_pair_fraction(lam, delta)})
    limit_tiles, limit_pairs = grid_fractions(grid_limit(T, block_m, block_n), T, block_m, block_n)
    return {"T": T, "tile": (block_m, block_n), "layers": layers,
            "limit_tiles": float(limit_tiles), "limit_pairs": float(limit_pairs)}


def boundary_summary(analysis: dict) -> dict:
    """The fractions of boundary_analysis for log.json, layers x heads."""
    stack = lambda key: torch.stack([layer[key] for layer in analysis["layers"]])  # noqa: E731
    return {"tokens": analysis["T"], "tile": list(analysis["tile"]),
            "rule_pair_fraction": stack("rule_pairs").tolist(),
            "kernel_pair_fraction": stack("kernel_pairs").tolist(),
            "kernel_tile_fraction": stack("kernel_tiles").tolist(),
            "tile_grid_limit": {"pairs": analysis["limit_pairs"], "tiles": analysis["limit_tiles"]}}


def plot_pruning_boundary(analysis: dict, epsilon: float, path: Path):
    """Picture D_ij = lam_i - lam_j with what the rule may drop (D < delta, shaded, red line) and
    what the kernel's tiles skip (white staircase) for the heads with the most and the fewest
    prunable pairs of the first, middle and last layer. D is shown on a grid of at most
    BOUNDARY_GRID positions; the fractions are exact."""
    plt = pyplot()
    from matplotlib.patches import Rectangle
    T, (block_m, block_n), layers = analysis["T"], analysis["tile"], analysis["layers"]
    grid = torch.linspace(0, T - 1, min(T, BOUNDARY_GRID)).round().long()
    causal = (grid[:, None] >= grid[None, :]).numpy()
    shown = sorted({0, len(layers) // 2, len(layers) - 1})
    fig, axes = plt.subplots(2, len(shown), figsize=(4.6 * len(shown), 9), squeeze=False)
    extent = (0, T, T, 0)
    for col, index in enumerate(shown):
        layer = layers[index]
        rule = layer["rule_pairs"]
        for row, head in enumerate((int(rule.argmax()), int(rule.argmin()))):
            ax = axes[row, col]
            lam, delta = layer["lam"][head, grid], float(layer["delta"][head])
            D = (lam[:, None] - lam[None, :]).numpy()
            prunable = causal & (D < delta)
            # colours saturate at 2 delta so that the band around the boundary stays readable
            image = ax.imshow(np.ma.masked_where(~causal, D), cmap="viridis", vmin=2 * delta,
                              vmax=0, extent=extent, interpolation="nearest")
            ax.imshow(np.ma.masked_where(~prunable, np.ones(causal.shape)), cmap="gray", vmin=0,
                      vmax=1, alpha=0.6, extent=extent, interpolation="nearest")
            if prunable.any():
                ax.contour(grid.numpy(), grid.numpy(), prunable.astype(float), levels=[0.5],
                           colors="red", linewidths=1)
            # the kernel's tiles: key blocks [0, start) of each query block are skipped
            for m, start in enumerate(layer["start"][head].tolist()):
                if start:
                    top = m * block_m
                    ax.add_patch(Rectangle((0, top), start * block_n, min(block_m, T - top),
                                           fill=False, hatch="//", edgecolor="white", lw=0.8))
            for edge in range(block_n, T, block_n):  # the tile grid
                ax.axvline(edge, color="white", lw=0.4, alpha=0.5)
                ax.axhline(edge, color="white", lw=0.4, alpha=0.5)
            ax.set_xlim(0, T)
            ax.set_ylim(T, 0)
            ax.set_title(f"layer {index} head {head} (delta = {delta:.1f}): rule {rule[head]:.0%}"
                         f" of pairs,\nkernel {layer['kernel_pairs'][head]:.0%} of pairs "
                         f"({layer['kernel_tiles'][head]:.0%} of tiles)", fontsize=9)
            ax.set_xlabel("key j")
            ax.set_ylabel("query i")
            fig.colorbar(image, ax=ax, fraction=0.046, label="D = lam_i - lam_j")
    fig.suptitle(f"ACP pruning boundary, T = {T}, eps = {epsilon:.3g}, tiles of {block_m} x "
                 f"{block_n}", fontsize=11)
    legend = (
        "Colour: D = lam_i - lam_j of each causal pair. Shaded, beyond the red line: the pairs "
        "with D < delta, which ACP's rule may drop (\"rule\"). Hatched: the tiles the kernel "
        "skips (\"kernel\"). A tile is skipped only when all its pairs are below delta (the kernel "
        "tests its corner nearest the diagonal) and the diagonal tiles always run, so the kernel "
        "computes the band inside the red line widened to whole tiles, in practice at least two "
        "tiles wide. At this length that lets it skip in practice at most about "
        f"{analysis['limit_pairs']:.0%} of the pairs ({analysis['limit_tiles']:.0%} of the tiles); "
        "longer sequences leave more. Rows: the heads with the most and the fewest prunable pairs.")
    fig.text(0.01, 0.005, textwrap.fill(legend, width=int(14 * fig.get_figwidth())), fontsize=9,
             va="bottom")
    fig.tight_layout(rect=(0, 0.09, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------- plots of the log


def integer_steps(ax):
    """Step axes: whole numbers only."""
    from matplotlib.ticker import MaxNLocator
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def smoothed_losses(log: dict):
    """Training loss as a running mean over 2% of the steps (at least 1): (steps, means, window)."""
    steps = [s["step"] for s in log["steps"]]
    losses = np.array([s["loss"] for s in log["steps"]])
    window = max(1, round(len(losses) / 50))
    return steps[window - 1 :], np.convolve(losses, np.ones(window) / window, mode="valid"), window


def plot_losses(log: dict, path: Path):
    """Training loss per step, its running mean when the run is long enough for one, eval loss."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    steps = [s["step"] for s in log["steps"]]
    few = len(steps) <= 50
    steps_mean, means, window = smoothed_losses(log)
    ax.plot(steps, [s["loss"] for s in log["steps"]], ".-" if few else "-", color="C0",
            alpha=0.35 if window > 1 else 0.9, label="train, per step")
    if window > 1:
        ax.plot(steps_mean, means, color="C0", label=f"train, running mean of {window} steps")
    if log["evals"]:
        ax.plot([e["step"] for e in log["evals"]], [e["loss"] for e in log["evals"]], "o-",
                color="C1", label="eval")
    integer_steps(ax)
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats per byte)")
    args = log["args"]
    ax.set_title(f"loss: {args['config']}{' pro' if args['pro'] else ''}, backend "
                 f"{args['backend']}, T = {args['seq_len']}, batch {args['batch_size']}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def site_name(site: str) -> str:
    """A pruning_stats call site by its module path ("blocks.3.attn" of
    "blocks.3.attn (fox_lm.py:140 in attend)"), or by its source line for a function."""
    site = " ".join(site.split())
    return site.split(" (", 1)[0] if " (" in site else site


def site_flops_fraction(site: dict) -> float:
    """Fraction of one call site's attention FLOPs skipped (all heads, all calls)."""
    return 1.0 - site["executed_flops"] / site["dense_flops"] if site["dense_flops"] else 0.0


def snapshot_grid_limit(sites: list, seq_len: int | None, head_dim: int | None):
    """(T, BLOCK_M, BLOCK_N, tile fraction, FLOP fraction): the most the tile grid lets a head
    skip in practice (grid_limit), from the grid pruning_stats reports per site, else from
    seq_len and head_dim; None when neither says (or queries and keys differ in number)."""
    grid = sites[0].get("grid") if sites else None
    if grid is not None and grid[2] == grid[3]:
        block_m, block_n, T = grid[0], grid[1], grid[3]
    elif seq_len and head_dim:
        (block_m, block_n), T = kernel_tile(head_dim), seq_len
    else:
        return None
    tiles, pairs = grid_fractions(grid_limit(T, block_m, block_n), T, block_m, block_n)
    return T, block_m, block_n, float(tiles), float(pairs)


def plot_pruning_heatmap(snapshot: dict, path: Path, seq_len: int | None = None,
                         head_dim: int | None = None):
    """Attention call sites (in call order) x heads: fraction of causal tiles skipped, with the
    number in each cell. When every layer is its own call site, the rows are the layers. The
    title says how much the tile grid allows (snapshot_grid_limit)."""
    plt = pyplot()
    sites = snapshot["per_head"]
    matrix = 100 * np.array([site["skipped_tile_fraction"] for site in sites])
    limit = snapshot_grid_limit(sites, seq_len, head_dim)
    rows, cols = matrix.shape
    fig, ax = plt.subplots(figsize=(4.5 + 0.55 * cols, 2.4 + 0.35 * rows))
    image = ax.imshow(matrix, cmap="magma", vmin=0, vmax=100, aspect="auto")
    if rows * cols <= 600:
        for (r, c), value in np.ndenumerate(matrix):
            ax.text(c, r, f"{value:.0f}", ha="center", va="center", fontsize=8,
                    color="black" if value > 60 else "white")
    ax.set_yticks(range(rows), [site_name(s["site"]) for s in sites], fontsize=7)
    ax.set_xticks(range(cols))
    ax.set_xlabel("head")
    title = (f"% of causal tiles skipped per head, step {snapshot['step']}\n"
             f"all sites: {snapshot['skipped_fraction']:.1%} of the attention FLOPs skipped")
    if limit:
        T, block_m, block_n, tiles, pairs = limit
        title += (f"\nT = {T}, tiles of {block_m} x {block_n}: in practice at most about "
                  f"{tiles:.0%} of the tiles ({pairs:.0%} of the FLOPs)")
    ax.set_title(title, fontsize=8)
    fig.colorbar(image, ax=ax, label="% of causal tiles skipped")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_pruning_over_training(snapshots: list, path: Path, seq_len: int | None = None,
                               head_dim: int | None = None):
    """Fraction of the attention FLOPs skipped against the step: all sites and each call site,
    and the tile grid's limit (snapshot_grid_limit) when known."""
    plt = pyplot()
    steps = [s["step"] for s in snapshots]
    names = [site_name(site["site"]) for site in snapshots[-1]["per_head"]]
    style = "o-" if len(steps) <= 30 else "-"
    fig, ax = plt.subplots(figsize=(8, 4.5))
    overall = [s["skipped_fraction"] for s in snapshots]
    ax.plot(steps, overall, style, lw=2, ms=8, color="black", label="all sites")
    values = list(overall)
    for index, name in enumerate(names):
        fractions = [site_flops_fraction(s["per_head"][index]) if index < len(s["per_head"])
                     else np.nan for s in snapshots]
        values += fractions
        ax.plot(steps, fractions, style, ms=4, color=plt.cm.viridis(index / max(1, len(names) - 1)),
                alpha=0.8, label=name)
    limit = snapshot_grid_limit(snapshots[-1]["per_head"], seq_len, head_dim)
    if limit:
        ax.axhline(limit[4], color="gray", ls="--", lw=1,
                   label=f"tile-grid limit in practice, T = {limit[0]}")
        values.append(limit[4])
    if len(steps) == 1:
        ax.set_xlim(steps[0] - 1, steps[0] + 1)
        ax.text(0.5, 0.04, f"one evaluation so far (step {steps[0]}): lower --eval-every for a "
                "curve", transform=ax.transAxes, ha="center", fontsize=8, color="gray")
    integer_steps(ax)
    from matplotlib.ticker import PercentFormatter
    ax.yaxis.set_major_formatter(PercentFormatter(1.0, decimals=0))
    ax.set_xlabel("step")
    ax.set_ylabel("attention FLOPs skipped")
    lowest = float(np.nanmin(values))  # zoom in, to a multiple of 10%
    ax.set_ylim(max(0.0, math.floor(10 * lowest - 0.5) / 10), 1.0)
    ax.set_title("ACP pruning during training (one forward of an eval batch at each evaluation)",
                 fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1),
              ncol=1 + len(names) // 20)
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


def save_checkpoint(path: Path, model, optimizer, scheduler, step: int,
                    generator: torch.Generator | None = None):
    """One device: model, optimizer, scheduler, batch generator and step in one file."""
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "step": step, "config": asdict(model.config)}
    if generator is not None:
        state["generator"] = generator.get_state()
    torch.save(state, path)


def load_checkpoint(path: Path, model, optimizer, scheduler, generator) -> int:
    """Restore what save_checkpoint saved; returns its step."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    if "generator" not in state:
        raise ValueError(f"{path} has no batch generator state (saved by an older train.py): "
                         "it cannot be resumed exactly")
    generator.set_state(state["generator"])
    return state["step"]


def resume_path(args, ctx: parallel.Context) -> Path | None:
    """The checkpoint --resume names: a given path, or the newest in --out (checkpoint.pt on one
    device, the newest complete checkpoints/step_N with --parallel); None without --resume."""
    if not args.resume:
        return None
    if args.resume != "latest":
        path = Path(args.resume)
    elif ctx.distributed:
        found = parallel.complete_checkpoints(Path(args.out))
        path = found[-1] if found else Path(args.out) / parallel.CHECKPOINT_DIR
    else:
        path = Path(args.out) / "checkpoint.pt"
    if not path.exists():
        raise SystemExit(f"--resume: no checkpoint at {path}")
    if path.is_dir() != ctx.distributed:
        kind = "a torch.distributed.checkpoint directory" if path.is_dir() else "a checkpoint.pt file"
        raise SystemExit(f"--resume: {path} is {kind}; resume it with"
                         f"{'' if path.is_dir() else 'out'} --parallel ddp/fsdp")
    return path


def previous_log(out: Path, step: int) -> dict | None:
    """The log of the run being resumed, cut back to `step`, when out holds one."""
    path = out / "log.json"
    if not path.exists():
        return None
    log = json.loads(path.read_text())
    for key in ("steps", "evals", "pruning"):
        log[key] = [entry for entry in log.get(key, []) if entry["step"] <= step]
    return log


def boundary_message(boundary: dict, snapshots: list) -> str:
    """Two lines for the console: what the rule allows, what the tile grid lets the kernel skip,
    and what the compiled model skipped (fox_acp only), as means over layers and heads."""
    mean = lambda rows: float(np.mean(rows))  # noqa: E731
    limit = boundary["tile_grid_limit"]
    block_m, block_n = boundary["tile"]
    text = (f"pruning boundary (first eval sequence, T = {boundary['tokens']}): the rule allows "
            f"{mean(boundary['rule_pair_fraction']):.0%} of the pairs, the kernel's {block_m} x "
            f"{block_n} tiles skip {mean(boundary['kernel_pair_fraction']):.0%} (in practice at "
            f"most about {limit['pairs']:.0%} at this length)")
    if snapshots:
        text += (f";\n  the compiled model skipped {snapshots[-1]['skipped_fraction']:.0%} of the "
                 f"attention FLOPs at step {snapshots[-1]['step']} (pruning_stats)")
    return text + "; see pruning_boundary.png"


def train(args: argparse.Namespace) -> dict:
    """Run the training described by parse_args's namespace; returns the log written to
    args.out / "log.json" (by rank 0; the other ranks return the same log without writing it).

    With --parallel ddp/fsdp under torchrun, every rank draws the same global batch of
    --batch-size sequences and trains on its slice; losses and pruning statistics are reduced over
    the ranks, so the log reads as that of one device training on the global batch."""
    require_examples_extra()
    ctx = parallel.setup(args.parallel, args.device)
    try:
        return _train(args, ctx)
    finally:
        parallel.teardown(ctx)


def _train(args: argparse.Namespace, ctx: parallel.Context) -> dict:
    device, dtype = ctx.device, DTYPES[args.dtype]
    if args.batch_size % ctx.world_size:
        raise SystemExit(f"--batch-size {args.batch_size} (the global batch) does not split over "
                         f"{ctx.world_size} ranks")
    args.out = parallel.from_rank0(args.out, ctx)  # a default timestamp may differ by a second
    out = Path(args.out)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(args.seed)
    corpus = load_corpus()
    with device:
        model = build_model(args.config, pro=args.pro, attention=args.attention,
                            activation_checkpointing=args.activation_checkpointing)
    if args.gate_init == "decay" and args.attention == "fox":
        set_gate_decay_times(model, *GATE_DECAY_RANGE)
    wrapped = parallel.wrap(model, ctx, args.bucket_cap_mb)  # FSDP: model itself, now sharded
    optimizer = make_optimizer(model, args.lr, args.weight_decay)
    warmup = args.warmup_steps if args.warmup_steps is not None else max(1, args.steps // 20)
    scheduler = make_scheduler(optimizer, warmup, args.steps)
    generator = torch.Generator().manual_seed(args.seed)
    first_step = 1
    checkpoint = resume_path(args, ctx)
    if checkpoint is not None:
        if ctx.distributed:
            first_step = parallel.load_checkpoint(checkpoint, model, optimizer, scheduler,
                                                  generator)["step"] + 1
        else:
            first_step = load_checkpoint(checkpoint, model, optimizer, scheduler, generator) + 1
        if first_step > args.steps:
            raise SystemExit(f"--resume: {checkpoint} is at step {first_step - 1}, and --steps is "
                             f"{args.steps}: nothing left to train")
    compiled = compile_model(wrapped, args.backend, args.epsilon, args.fox_compiler)
    evals = eval_batches(corpus["eval"], args.batch_size, args.seq_len, args.eval_batches)
    track_pruning = args.backend == "fox_acp" and args.attention == "fox"

    log = {
        "args": dict(vars(args)),
        "config": asdict(model.config),
        "parameters": sum(p.numel() for p in model.parameters()),
        "versions": versions(),
        "device": device_name(device),
        "parallel": {"mode": args.parallel, "world_size": ctx.world_size,
                     **({"bucket_cap_mb": args.bucket_cap_mb} if args.parallel == "ddp" else {})},
        "corpus": {"root": str(stdlib_root()),
                   **{f"{split}_bytes": len(data) for split, data in corpus.items()}},
        "steps": [], "evals": [], "pruning": [], "resumed": [], "summary": {},
    }
    if checkpoint is not None:
        earlier = previous_log(out, first_step - 1) if ctx.is_main else None
        for key in ("steps", "evals", "pruning", "resumed"):
            log[key] = (earlier or {}).get(key, [])
        log["resumed"].append({"step": first_step - 1, "checkpoint": str(checkpoint)})
    tokens_per_step = args.batch_size * args.seq_len  # over all ranks
    start = time.perf_counter()
    progress = require("tqdm").tqdm(range(first_step, args.steps + 1), desc="train",
                                    dynamic_ncols=True, disable=not ctx.is_main)
    for step in progress:
        inputs, targets = (parallel.local_slice(t, ctx).to(device) for t in sample_batch(
            corpus["train"], args.batch_size, args.seq_len, generator))
        step_start = time.perf_counter()
        lr = scheduler.get_last_lr()[0]
        loss = training_step(compiled, optimizer, scheduler, inputs, targets, dtype)
        loss = parallel.mean_over_ranks(loss, ctx).item()
        seconds = time.perf_counter() - step_start
        log["steps"].append({"step": step, "loss": loss, "lr": lr, "seconds": seconds,
                             "tokens_per_s": tokens_per_step / seconds})
        progress.set_postfix(loss=f"{loss:.3f}", tok_s=f"{tokens_per_step / seconds:,.0f}")
        if not math.isfinite(loss):
            raise FloatingPointError(f"loss is {loss} at step {step}")
        if step == args.steps or (args.eval_every and step % args.eval_every == 0):
            eval_loss = evaluate(compiled, evals, device, dtype, ctx)
            log["evals"].append({"step": step, "loss": eval_loss})
            if ctx.is_main:
                progress.write(f"step {step}: eval loss {eval_loss:.4f}")
            if track_pruning:
                with torch.no_grad():  # the graph evaluate() compiled
                    batch = (parallel.local_slice(t, ctx).to(device) for t in evals[0])
                    snapshot = pruning_snapshot(compiled, *batch, dtype, ctx)
                log["pruning"].append({"step": step, **snapshot})
            if ctx.is_main:
                write_json(out / "log.json", log)
        if args.checkpoint_every and (step == args.steps or step % args.checkpoint_every == 0):
            if ctx.distributed:
                parallel.save_checkpoint(out, model, optimizer, scheduler, generator, step,
                                         asdict(model.config), ctx, args.keep_checkpoints)
            else:
                save_checkpoint(out / "checkpoint.pt", model, optimizer, scheduler, step, generator)
    progress.close()

    # the first step of every run (this one and those resumed) includes compilation
    first_steps = {1} | {entry["step"] + 1 for entry in log["resumed"]}
    timed = [s for s in log["steps"] if s["step"] not in first_steps] or log["steps"]
    log["summary"] = {
        "final_eval_loss": log["evals"][-1]["loss"],
        "first_step_s": log["steps"][0]["seconds"],
        "mean_tokens_per_s": tokens_per_step * len(timed) / sum(s["seconds"] for s in timed),
        "wall_s": time.perf_counter() - start,
    }
    if ctx.distributed:
        log["summary"]["mean_tokens_per_s_per_rank"] = (log["summary"]["mean_tokens_per_s"]
                                                        / ctx.world_size)
    if ctx.is_main:
        plot_losses(log, out / "loss.png")
    if args.attention == "fox" and args.epsilon > 0:
        # every rank runs the eager forward (under FSDP each block gathers its parameters)
        analysis = boundary_analysis(model, evals[0][0][:1].to(device), args.epsilon, dtype)
        boundary = log["summary"]["pruning_boundary"] = boundary_summary(analysis)
        if ctx.is_main:
            plot_pruning_boundary(analysis, args.epsilon, out / "pruning_boundary.png")
            print(boundary_message(boundary, log["pruning"]))
    if log["pruning"] and ctx.is_main:
        head_dim = model.config.head_dim
        plot_pruning_heatmap(log["pruning"][-1], out / "pruning_heatmap.png", args.seq_len,
                             head_dim)
        plot_pruning_over_training(log["pruning"], out / "pruning_over_training.png",
                                   args.seq_len, head_dim)
    if ctx.is_main:
        write_json(out / "log.json", log)
    return log


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Keeps the description's lines and adds "(default: ...)" where the default is a value;
    options whose default is None or depends on the machine say theirs in words."""

    def _get_help_string(self, action):
        if action.default is None or isinstance(action.default, bool) or "default" in action.help:
            return action.help
        return super()._get_help_string(action)


def parse_args(argv=None) -> argparse.Namespace:
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="model size")
    parser.add_argument("--pro", action="store_true", help="use the FoX Pro block")
    parser.add_argument("--attention", choices=("fox", "sdpa"), default="fox",
                        help="forgetting attention, or plain causal SDPA without a forget gate")
    parser.add_argument("--gate-init", choices=("default", "decay"), default="default",
                        help="forget-gate biases: 'default' keeps nn.Linear's init, 'decay' "
                             "gives the heads decay times log-spaced over [2, 512] tokens")
    parser.add_argument("--activation-checkpointing", action="store_true",
                        help="recompute each block in the backward (torch.utils.checkpoint)")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps")
    parser.add_argument("--seq-len", type=int, default=512, help="tokens (bytes) per sequence")
    parser.add_argument("--batch-size", type=int, default=8, help="sequences per step")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"),
                        help="where to train (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="autocast dtype (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--backend", choices=BACKENDS, default="fox_acp",
                        help="torch.compile backend (eager: no compilation)")
    parser.add_argument("--fox-compiler", choices=FOX_COMPILERS, default="inductor",
                        help='what runs the graph fox_acp rewrote ("fox.compiler"); aot_eager '
                             "skips Inductor's compilation (quick CPU runs)")
    parser.add_argument("--parallel", choices=parallel.PARALLEL, default="none",
                        help="data parallelism under torchrun: ddp (DistributedDataParallel) or "
                             "fsdp (FSDP2, fully_shard per block); --batch-size is the global "
                             "batch, split over the ranks")
    parser.add_argument("--bucket-cap-mb", type=float, default=25.0,
                        help="--parallel ddp: DDP's gradient bucket size, where Dynamo splits the "
                             "compiled graphs")
    parser.add_argument("--epsilon", type=float, default=DEFAULT_EPSILON,
                        help="ACP tolerance: the attention mass each query may lose to pruning; "
                             "0 turns pruning off (default: e^-10 = 4.54e-05)")
    parser.add_argument("--lr", type=float, default=1e-3, help="peak learning rate")
    parser.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay")
    parser.add_argument("--warmup-steps", type=int, default=None,
                        help="linear warmup steps, then a cosine down to 10%% of --lr "
                             "(default: 5%% of --steps, at least 1)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the weights and the batches")
    parser.add_argument("--eval-every", type=int, default=200,
                        help="evaluate every N steps (and always at the end); 0: only at the end")
    parser.add_argument("--eval-batches", type=int, default=8, help="batches per evaluation")
    parser.add_argument("--checkpoint-every", type=int, default=1000,
                        help="save <out>/checkpoint.pt (with --parallel: "
                             "<out>/checkpoints/step_N/, torch.distributed.checkpoint) every N "
                             "steps and at the end; 0: never")
    parser.add_argument("--keep-checkpoints", type=int, default=2,
                        help="with --parallel: keep the newest N checkpoints; 0: all")
    parser.add_argument("--resume", nargs="?", const="latest", default=None,
                        help="continue from the newest checkpoint in --out, or from the one "
                             "given (same --steps: the schedule spans them)")
    parser.add_argument("--out", default=None,
                        help="directory for logs, plots and checkpoints (default: runs/<timestamp>)")
    args = parser.parse_args(argv)

    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    for name in ("steps", "seq_len", "batch_size", "eval_batches"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    for name in ("eval_every", "checkpoint_every", "warmup_steps", "keep_checkpoints"):
        if (getattr(args, name) or 0) < 0:
            parser.error(f"--{name.replace('_', '-')} must not be negative")
    if not 0 <= args.epsilon < 1:
        parser.error("--epsilon must be in [0, 1)")
    if args.lr <= 0:
        parser.error("--lr must be positive")
    if args.parallel == "ddp" and args.backend != "eager" and args.bucket_cap_mb < 1:
        parser.error("--bucket-cap-mb must be at least 1 with torch.compile (Dynamo's "
                     "DDPOptimizer needs DDP's first bucket, 1 MiB, to be no larger)")
    if args.resume == "latest" and args.out is None:
        parser.error("--resume without a path needs the --out of the run to resume")
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
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"final eval loss {summary['final_eval_loss']:.4f}, "
              f"{summary['mean_tokens_per_s']:,.0f} tokens/s; wrote {args.out}")


if __name__ == "__main__":
    main()
