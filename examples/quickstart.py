"""foxcompile in one minute: compile an unmodified FoX language model with fox_acp, see what was
rewritten, how much the forget gate let the kernel skip, and check the numbers against eager.

    python examples/quickstart.py            # CPU by default, the GPU when there is one
"""
import argparse
import sys
import time
from pathlib import Path

import torch

import foxcompile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fox_lm import build_model  # noqa: E402  (plain PyTorch: no foxcompile inside)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--pro", action="store_true", help="the FoX Pro block")
    args = parser.parse_args()
    device = torch.device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32

    torch.manual_seed(0)
    model = build_model("tiny", pro=args.pro).to(device)
    tokens = torch.randint(0, 256, (2, args.seq_len), device=device)

    report = foxcompile.explain(model, tokens)
    print(report, end="\n\n")

    compiled = torch.compile(model, backend="fox_acp")
    with torch.autocast(device.type, dtype=dtype, enabled=device.type == "cuda"):
        start = time.perf_counter()
        logits = compiled(tokens)                       # first call compiles
        print(f"compiled in {time.perf_counter() - start:.1f} s")
        with foxcompile.pruning_stats() as stats:
            logits = compiled(tokens)
            loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1).float(), tokens.flatten())
        loss.backward()                                 # training works through the rewrite too
        with torch.no_grad():
            expected = model(tokens)
    print(stats, end="\n\n")
    error = (logits.float() - expected.float()).abs().max().item()
    scale = expected.float().abs().max().item()
    tolerance = 5e-2 if device.type == "cuda" else 1e-3
    print(f"max |compiled - eager| = {error:.2e} (logits up to {scale:.1f}); tolerance {tolerance:g}")
    if not error <= tolerance * max(1.0, scale):
        raise SystemExit("compiled model disagrees with eager")
    print("ok: fox_acp matches eager")


if __name__ == "__main__":
    main()
