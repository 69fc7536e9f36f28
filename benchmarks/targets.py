"""The Hopper engine's speed targets, checked against one benchmark run: reads the JSON of
benchmarks/bench_attention.py (and, optionally, of benchmarks/bench_train.py) and prints, per
target and shape, what was needed, what was measured, and whether it was met or missed by how
much; --json writes the same rows.

    python benchmarks/targets.py BENCH.json [--train TRAIN.json ...] [--json OUT.json]

The targets (every ratio against PyTorch's SDPA on cuDNN, causal, no gate, timed in the same
run, so that the card and its clocks cancel):

- dense: forward + backward <= 1.0x cuDNN at every shape, and the forward alone <= 1.0x (the
  faster of the `tl` and Gluon rows);
- ACP: forward + backward <= 0.70x / 0.42x / 0.38x cuDNN at B8-T4096-H24-D64 /
  B2-T16384-H24-D64 / B1-T16384-H16-D128 (half of what the FoX authors' ACP kernel took on an
  H100), and at least 2x faster than that kernel where the run timed it beside ours (the
  arctic-fox-acp rows);
- the op end to end (plan, guard, gate cumsum, autograd: the fox-op rows) within 5% of the
  kernels alone, those of the engine the automatic choice takes for the shape
  (gluon_attention.prefers) on this run's card; checked in runs with document ids too
  (bench_attention.py --doc-len, which leaves cuDNN out, so only this target is checked there);
- training (bench_train.py, fox_acp against sdpa tokens/s): >= 1.5x at 760m and 16k tokens,
  >= 1.10x at 125m and 760m at 4k.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_attention import parse_shape  # noqa: E402
from foxcompile.kernels.gluon_attention import prefers  # noqa: E402

ACP_BARS = {"B8-T4096-H24-D64": 0.70, "B2-T16384-H24-D64": 0.42, "B1-T16384-H16-D128": 0.38}
TRAIN_BARS = {("760m", 16384): 1.5, ("125m", 4096): 1.10, ("760m", 4096): 1.10}
OP_OVERHEAD = 1.05        # the op's fwd+bwd over its kernels' at most
ARCTIC_FOX_SPEEDUP = 2.0  # ACP fwd+bwd at least this many times faster than arctic-fox's


def _result(target, shape, impl, measured, needed, at_most=True):
    """One row: met when measured <= needed (at_most) or >= needed; `by` is how far off, as a
    fraction of the bar (positive: missed)."""
    by = measured / needed - 1.0 if at_most else needed / measured - 1.0
    return {"target": target, "shape": shape, "impl": impl, "measured": measured,
            "needed": needed, "at_most": at_most, "met": by <= 0.0, "by": by}


def _best(rows, keys, field):
    """(key, value) of the smallest `field` among the rows of `keys` that have it, or None."""
    timed = [(rows[k][field], k) for k in keys if k in rows and rows[k].get(field) is not None]
    return min(timed)[::-1] if timed else None


def _kernel_key(shape: str, sm90: bool, documents: bool = False):
    """The ACP row of the kernels the automatic choice runs for this shape (with or without
    document ids): both directions Gluon, one of them Gluon and the other tl, or tl both
    ways."""
    _, n_keys, _, head_dim = parse_shape(shape)
    gluon = tuple(sm90 and prefers(head_dim, n_keys, d, documents)
                  for d in ("forward", "backward"))
    return {(True, True): "gluon-acp", (False, True): "tlg-acp", (True, False): "gtl-acp",
            (False, False): "fox-acp"}[gluon]


def kernel_targets(bench: dict) -> list:
    """The rows of every kernel target that this bench run can check."""
    by_shape = {}
    for row in bench["rows"]:
        if row.get("fwd_ms") is not None:
            by_shape.setdefault(row["shape"], {})[row["key"]] = row
    sm90 = str(bench.get("versions", {}).get("capability", "")).startswith("9")
    documents = bench.get("versions", {}).get("documents")
    results = []
    for shape, rows in by_shape.items():
        kernels = rows.get(_kernel_key(shape, sm90, bool(documents)))
        if "fox-op" in rows and kernels is not None:
            packed = f" (documents of {documents['doc_len']})" if documents else ""
            results.append(_result(f"op fwd+bwd <= {OP_OVERHEAD:.2f}x its kernels{packed}", shape,
                                   f"fox-op / {kernels['key']}",
                                   rows["fox-op"]["fwd_bwd_ms"] / kernels["fwd_bwd_ms"],
                                   OP_OVERHEAD))
        if "cudnn" not in rows:
            continue
        cudnn = rows["cudnn"]
        for field, target in (("fwd_bwd_ms", "dense fwd+bwd <= 1.0x cuDNN"),
                              ("fwd_ms", "dense fwd <= 1.0x cuDNN")):
            best = _best(rows, ("fox-dense", "gluon-dense"), field)
            if best:
                results.append(_result(target, shape, best[0], best[1] / cudnn[field], 1.0))
        acp = _best(rows, ("fox-acp", "gluon-acp", "tlg-acp", "gtl-acp"), "fwd_bwd_ms")
        if acp and shape in ACP_BARS:
            results.append(_result(f"ACP fwd+bwd <= {ACP_BARS[shape]:.2f}x cuDNN", shape, acp[0],
                                   acp[1] / cudnn["fwd_bwd_ms"], ACP_BARS[shape]))
        if acp and "arctic-fox-acp" in rows:
            results.append(_result(f"ACP fwd+bwd >= {ARCTIC_FOX_SPEEDUP:.0f}x faster than "
                                   "arctic-fox", shape, acp[0],
                                   rows["arctic-fox-acp"]["fwd_bwd_ms"] / acp[1],
                                   ARCTIC_FOX_SPEEDUP, at_most=False))
    return results


def train_targets(train: dict) -> list:
    """The training rows (fox_acp tokens/s against sdpa's of the same config, length and card)
    for the configs and lengths that have a bar."""
    results = []
    for row in train["rows"]:
        bar = TRAIN_BARS.get((row.get("config"), row.get("seq_len")))
        if row.get("variant") == "fox_acp" and row.get("vs_sdpa") and bar:
            shape = f"{row['config']} T{row['seq_len']} batch {row.get('batch_size')}"
            results.append(_result(f"training >= {bar:.2f}x plain SDPA", shape, "fox_acp",
                                   row["vs_sdpa"], bar, at_most=False))
    return results


def format_table(results: list) -> str:
    width = max([44] + [len(r["target"]) for r in results])
    lines = [f"{'target':<{width}} {'shape':<26} {'best':<22} {'needed':>7} {'measured':>9}"
             "  verdict"]
    for r in results:
        verdict = "met" if r["met"] else f"missed by {100 * r['by']:.0f}%"
        lines.append(f"{r['target']:<{width}} {r['shape']:<26} {r['impl']:<22} {r['needed']:7.2f} "
                     f"{r['measured']:9.2f}  {verdict}")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", help="bench_attention.py --json output")
    parser.add_argument("--train", nargs="*", default=[], help="bench_train.py --out outputs")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    with open(args.bench) as f:
        bench = json.load(f)
    results = kernel_targets(bench)
    for path in args.train:
        with open(path) as f:
            results += train_targets(json.load(f))
    info = bench.get("versions", {})
    print(f"{info.get('card', '?')}, torch {info.get('torch', '?')}, triton "
          f"{info.get('triton', '?')}, {info.get('date', '?')}")
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"versions": info, "targets": results}, f, indent=1)


if __name__ == "__main__":
    main()
