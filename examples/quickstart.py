"""foxcompile in one minute: compile an unmodified FoX language model with the fox_acp backend,
see what was rewritten and how much attention the forget gate let the kernel skip, and check the
outputs and the gradients against eager PyTorch. The printout explains itself.

    python examples/quickstart.py                   # CPU by default, the GPU when there is one
    python examples/quickstart.py --seq-len 256     # a sequence too short to prune: see why
"""
import argparse
import math
import sys
import textwrap
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import foxcompile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fox_lm import build_model  # noqa: E402  (plain PyTorch: no foxcompile inside)


def say(text: str, indent: str = "", gap: bool = True) -> None:
    """Print a paragraph wrapped to 100 columns, after an empty line unless gap is False."""
    if gap:
        print()
    print(textwrap.fill(" ".join(text.split()), width=100, initial_indent=indent,
                        subsequent_indent=indent + "    " * bool(indent)))


def heading(text: str) -> None:
    print(f"\n\n== {text}\n")


def tile_grid(seq_len: int, tile: int) -> dict:
    """What a grid of tile x tile tiles allows one head of a causal sequence of seq_len tokens.
    The diagonal tiles always run. A tile beside the diagonal has its corner nearest the
    diagonal one step from it, so its largest decay is a single gate step: it goes only if one
    gate value alone is below delta. The practical limit is therefore every tile at least one
    whole tile away from the diagonal."""
    blocks = math.ceil(seq_len / tile)
    far_tiles = far_pairs = 0
    for m in range(blocks):                       # query block m sees key blocks 0..m
        rows = min(tile, seq_len - m * tile)
        far_tiles += max(0, m - 1)                # key blocks 0..m-2
        far_pairs += max(0, m - 1) * tile * rows
    causal_tiles = blocks * (blocks + 1) // 2
    return {"blocks": blocks, "causal_tiles": causal_tiles, "far_tiles": far_tiles,
            "tile_limit": far_tiles / causal_tiles,
            "flop_limit": far_pairs / (seq_len * (seq_len + 1) / 2)}


def loss_and_grads(run, model, tokens, targets, autocast):
    """Logits of run(tokens) (the model, compiled or not), and the gradient of each of the
    model's parameters for a next-byte cross-entropy loss."""
    model.zero_grad(set_to_none=True)
    with autocast:
        logits = run(tokens)
    F.cross_entropy(logits.float().flatten(0, 1), targets.flatten()).backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return logits.detach().float(), grads


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu",
                        help="cuda when available, else cpu")
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per sequence (1024)")
    parser.add_argument("--pro", action="store_true", help="the FoX Pro block")
    args = parser.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda)

    torch.manual_seed(0)
    model = build_model("tiny", pro=args.pro).to(device)   # examples/fox_lm.py, 2 layers
    data = torch.randint(0, 256, (2, args.seq_len + 1), device=device)
    tokens, targets = data[:, :-1], data[:, 1:]
    epsilon = foxcompile.DEFAULT_EPSILON

    heading("What ACP is")
    say(f"""Forgetting attention (FoX) adds lam_i - lam_j to the score of query i for key j, where
        lam is the running sum of the log forget gates: the bias only falls as the key recedes
        into the past. Adaptive Computation Pruning (ACP) skips the pairs whose bias has fallen
        below delta = log(eps) - 2U - log(N) (U bounds the scaled |q.k|, N is the number of
        keys): their attention weights are provably below eps / N, so each query loses at most
        eps = e^-10 = {epsilon:.2g} of its attention mass.""", gap=False)

    # 1. What the backend finds: foxcompile.explain traces the model once and reports.
    heading("1. What fox_acp finds in the model (foxcompile.explain)")
    print(foxcompile.explain(model, tokens))
    say("""The label after 'decay' says whether pruning is safe for that site:""")
    say("""proven (prunable): the graph itself shows that lam never increases (here lam =
        cumsum(logsigmoid(...))), so pruning is safe.""", indent="  ", gap=False)
    say("""guarded (prunable): the gates come from outside the graph (an input, a buffer); the
        kernel prunes, but checks on the device that lam never rises, and runs dense any (batch,
        head) where it does.""", indent="  ", gap=False)
    say("""none (runs dense): lam may grow toward the past; the site runs the same kernel with
        no pruning.""", indent="  ", gap=False)
    say("""A softmax that is not forgetting attention is 'declined', with the reason, and runs
        as written.""")

    # 2. Compile, run one training step's forward and backward, and count what was skipped.
    heading("2. Compile and run (foxcompile.pruning_stats)")
    compiled = torch.compile(model, backend="fox_acp")
    start = time.perf_counter()
    loss_and_grads(compiled, model, tokens, targets, autocast)   # the first call compiles
    print(f"compiled forward and backward in {time.perf_counter() - start:.1f} s "
          "(Inductor compiles everything around the attention)")
    with foxcompile.pruning_stats() as stats:               # counts the forward passes inside
        logits, grads = loss_and_grads(compiled, model, tokens, targets, autocast)
    print(stats)

    head_dim = model.config.head_dim
    sites = stats.per_head()
    tile = sites[0]["grid"][0]      # (BLOCK_M, BLOCK_N, queries, keys): square tiles here
    grid = tile_grid(args.seq_len, tile)
    tile_fractions = [f for site in sites for f in site["skipped_tile_fraction"]]
    reached = min(tile_fractions) >= grid["tile_limit"] - 1e-9 and grid["far_tiles"] > 0
    untrained = ("; this untrained model, whose gates (f about 0.5) forget within a few dozen "
                 "tokens, skips all of them")
    blocks, beside = grid["blocks"], max(0, grid["blocks"] - 1)
    say(f"""How to read this. The kernel decides per tile of {tile} queries x {tile} keys (the
        head dim is {head_dim}), and skips a tile only when every pair in it is below delta: it
        tests the tile's corner nearest the diagonal, where the bias is largest. At T =
        {args.seq_len} a head has {blocks} x {blocks} tiles, {grid['causal_tiles']} of them on or
        below the diagonal. The {blocks} diagonal tiles always run (so at most
        {1 - blocks / grid['causal_tiles']:.0%} could go), and the {beside} beside them
        {'go' if beside > 1 else 'goes'} only if a single gate value drops below delta, which
        leaves {grid['far_tiles']} tiles ({grid['tile_limit']:.0%}) to skip in
        practice{untrained if reached else ''}.""")
    if grid["far_tiles"]:
        say(f"""'tiles skipped per head' counts those tiles, each alike. '% of FLOPs skipped'
            counts the (query, key) pairs not computed, over all heads and calls: a diagonal tile
            holds only its causal half, so {grid['far_tiles']} full tiles are
            {grid['flop_limit']:.1%} of the work. The backward skips the same tiles.""")
        say("""Shorter sequences leave less (at T = 256, 2 x 2 tiles, nothing), longer ones
            more; a trained model remembers longer and skips less. examples/train.py draws
            where the boundary lies (docs/training.md).""")
    else:
        say(f"""So at T = {args.seq_len} nothing can be skipped: the first tile a whole tile away
            from the diagonal comes with the third row of tiles, at {2 * tile + 1} tokens, and
            the share grows with the length ({tile_grid(1024, tile)['tile_limit']:.0%} of the
            tiles at 1024 tokens, {tile_grid(4096, tile)['tile_limit']:.0%} at 4096).""")

    # 3. The same step in eager PyTorch, on the same weights: outputs and gradients must agree.
    heading("3. Check against eager PyTorch (the same model, not compiled)")
    expected, expected_grads = loss_and_grads(model, model, tokens, targets, autocast)
    tolerance = 5e-2 if cuda else 1e-3          # relative to the largest value; bf16 on the GPU
    scale = expected.abs().max().item()
    error = (logits - expected).abs().max().item()
    grad_scale = max(g.abs().max().item() for g in expected_grads.values())
    grad_errors = {name: (grads[name] - g).abs().max().item() for name, g in expected_grads.items()}
    worst = max(grad_errors, key=grad_errors.get)
    print(f"logits:    max |compiled - eager| = {error:.2e}, largest |logit| {scale:.2f}")
    print(f"gradients: max |compiled - eager| = {grad_errors[worst]:.2e} (in {worst}) over "
          f"{len(grads)} parameters, largest |gradient| {grad_scale:.2e}")
    say(f"""The differences come from float rounding (the op sums in another order; bf16 on the
        GPU) and from the pruned weights (each below eps / N). Tolerance: {tolerance:g} of the
        largest value.""")
    bad = [what for what, err, ref in (("outputs", error, scale),
                                        ("gradients", grad_errors[worst], grad_scale))
           if not err <= tolerance * max(ref, 1e-12)]
    if bad:
        raise SystemExit(f"compiled model disagrees with eager: {' and '.join(bad)}")
    print("ok: fox_acp matches eager, outputs and gradients")


if __name__ == "__main__":
    main()
