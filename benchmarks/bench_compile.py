"""What matching costs at compile time: foxcompile's find + rewrite against Inductor's own compile
of the same graph, for a 24-layer FoX language model (examples/fox_lm.py).

    python benchmarks/bench_compile.py [--layers 24] [--device cpu] [--json out.json]

With compile caches off and after a warm-up on a 2-layer model, times for one forward+backward
compile: (a) foxcompile's find + rewrite over the graph Dynamo captured, (b) the first training
step (Dynamo capture, Inductor's compile of the forward and, lazily, the backward graph, one run)
with fox_acp and with plain Inductor, (c) the time inside Inductor's compile_fx call for the
forward graph, and the ratio of (a) to plain Inductor's first step.
"""
import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
from fox_lm import build_model  # noqa: E402

from foxcompile.backend import rewrite_graphs  # noqa: E402
from foxcompile.options import FoxOptions  # noqa: E402


def timed_compile(model, tokens, rewrite: bool) -> dict:
    from torch._inductor.compile_fx import compile_fx
    times = {"match_s": 0.0, "inductor_s": 0.0, "sites": 0}

    def backend(gm, example_inputs):
        if rewrite:
            start = time.perf_counter()
            reports = rewrite_graphs(gm, example_inputs, FoxOptions())
            times["match_s"] += time.perf_counter() - start
            times["sites"] += sum(len(r.sites) for r in reports)
        start = time.perf_counter()
        compiled = compile_fx(gm, example_inputs)
        times["inductor_s"] += time.perf_counter() - start   # forward graph, backward is lazy
        return compiled

    torch._dynamo.reset()
    compiled = torch.compile(model, backend=backend)
    start = time.perf_counter()
    compiled(tokens).float().mean().backward()               # compiles forward and backward
    times["first_step_s"] = time.perf_counter() - start
    return times


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--layers", type=int, default=24, help="model layers (default: 24)")
    parser.add_argument("--seq-len", type=int, default=128, help="tokens per sequence (default: 128)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--json", default=None, help="also write the timings to this file")
    args = parser.parse_args()
    model = build_model("tiny", layers=args.layers).to(args.device)
    tokens = torch.randint(0, 256, (1, args.seq_len), device=args.device)
    # No compile caches: each measured compile does all its work. A small model warms up the
    # process first (imports, C++ headers), for both paths alike.
    torch._inductor.config.fx_graph_cache = False
    torch._functorch.config.enable_autograd_cache = False
    warm_up = build_model("tiny", layers=2).to(args.device)
    for rewrite in (False, True):
        timed_compile(warm_up, tokens, rewrite)
    plain = timed_compile(model, tokens, rewrite=False)
    with_fox = timed_compile(model, tokens, rewrite=True)
    result = {
        "layers": args.layers, "device": args.device, "torch": torch.__version__,
        "python": platform.python_version(), "machine": platform.machine(),
        "fox_acp": with_fox, "inductor": plain,
        "match_over_inductor": with_fox["match_s"] / plain["first_step_s"],
    }
    print(f"{args.layers}-layer FoX LM on {args.device}, torch {torch.__version__}")
    print(f"  find + rewrite: {with_fox['match_s']:.2f} s for {with_fox['sites']} sites")
    print(f"  first training step (Dynamo + compile + run), fox_acp:  {with_fox['first_step_s']:.1f} s")
    print(f"  first training step (Dynamo + compile + run), Inductor: {plain['first_step_s']:.1f} s")
    print(f"  Inductor compile_fx (forward graph), fox_acp / Inductor: {with_fox['inductor_s']:.1f} s / "
          f"{plain['inductor_s']:.1f} s")
    print(f"  matching / Inductor's first step: {100 * result['match_over_inductor']:.2f}%")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
