"""Where the Gluon engine should be chosen automatically, read off bench_attention.py runs:
per direction and head dim, the `tl` and the Gluon kernel's times at each measured length, and
the PREFERRED_MIN_KEYS that follows, beside the one foxcompile has now.

    python benchmarks/engine_choice.py BENCH.json [BENCH.json ...] [--json choice.json]

Each file is one bench run with the rows `fox-acp` / `fox-dense` (tl both ways), `tlg-acp` /
`tlg-dense` (tl forward, Gluon backward) and `gluon-acp` / `gluon-dense` (Gluon both ways) at
shapes of one head dim and several lengths, e.g. on the GPU machine

    SHAPES=B8-T4096-H24-D64,B4-T8192-H24-D64,B2-T16384-H24-D64 \\
    SKIP=flash,flex,fla,fox-op,arctic-fox-acp,arctic-fox-dense bash benchmarks/run_gpu_kernels.sh bench

Forward times are the rows' fwd_ms; backward times are fwd_bwd_ms - fwd_ms of the row with the
backward in question, tl's from `fox-*`, Gluon's from `tlg-*` (else `gluon-*`). At a length the
Gluon kernel of a direction wins when its dense time plus its ACP time is the smaller (pruned
and dense training weigh the same). The proposed minimum is the shortest measured length from
which it wins at every longer measured one, or None (tl everywhere) when it loses at the
longest; lengths between the measured ones are not known, and the times of several files are
their medians. Times from different cards should not be mixed: the script says which cards it
read. Runs with document ids (bench_attention.py --doc-len) are compared with
PREFERRED_MIN_KEYS_WITH_DOCS instead; runs with and without them cannot be mixed.
"""
import argparse
import json
import os
import statistics
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from bench_attention import parse_shape  # noqa: E402
from foxcompile.kernels.gluon_attention import (PREFERRED_MIN_KEYS,  # noqa: E402
                                                PREFERRED_MIN_KEYS_WITH_DOCS)

MODES = ("dense", "acp")
DIRECTIONS = ("forward", "backward")


def _times(rows: dict, shape: str, key: str, direction: str):
    """The forward or backward ms of row `key` at `shape`, or None if it did not run."""
    row = rows.get((shape, key))
    if row is None:
        return None
    if direction == "forward":
        return row["fwd_ms"]
    return row["fwd_bwd_ms"] - row["fwd_ms"]


def documents_of(paths) -> dict | None:
    """The document ids the bench runs packed their sequences with (their --doc-len and
    --doc-dtype, as {"doc_len", "dtype"}), or None for runs without; a ValueError when the
    files differ (a choice made from both would fit neither table)."""
    seen = []
    for path in paths:
        with open(path) as f:
            seen.append(json.load(f).get("versions", {}).get("documents"))
    if any(documents != seen[0] for documents in seen):
        raise ValueError(f"the bench runs differ in their document ids ({seen}): pass runs "
                         "that all pack documents the same way, or none that does")
    return seen[0]


def engine_times(paths) -> tuple:
    """({(head_dim, length, direction, engine, mode): ms}, cards): medians over the files of
    each kernel's time, engine "tl" or "gluon"."""
    per_file, cards = [], []
    for path in paths:
        with open(path) as f:
            data = json.load(f)
        cards.append(data.get("versions", {}).get("card", "?"))
        rows = {(r["shape"], r["key"]): r for r in data.get("rows", [])
                if "fwd_ms" in r and "fwd_bwd_ms" in r}
        found = {}
        for shape in {s for s, _ in rows}:
            _, length, _, head_dim = parse_shape(shape)
            for mode in MODES:
                sources = {("forward", "tl"): [f"fox-{mode}"],
                           ("forward", "gluon"): [f"gluon-{mode}"],
                           ("backward", "tl"): [f"fox-{mode}"],
                           ("backward", "gluon"): [f"tlg-{mode}", f"gluon-{mode}"]}
                for (direction, engine), keys in sources.items():
                    ms = next((t for t in (_times(rows, shape, key, direction) for key in keys)
                               if t is not None), None)
                    if ms is not None:
                        found[(head_dim, length, direction, engine, mode)] = ms
        per_file.append(found)
    merged = {}
    for key in {k for found in per_file for k in found}:
        merged[key] = statistics.median(found[key] for found in per_file if key in found)
    return merged, sorted(set(cards))


def choose(times: dict) -> dict:
    """{direction: {head_dim: {"lengths": [{length, tl, gluon, winner}], "min_keys": int |
    None}}}: per measured length the dense + ACP sums of each engine (None where a row is
    missing) and the proposed PREFERRED_MIN_KEYS entry."""
    result: dict = {}
    for direction in DIRECTIONS:
        dims = sorted({hd for hd, _, d, _, _ in times if d == direction})
        for head_dim in dims:
            lengths = sorted({n for hd, n, d, _, _ in times if d == direction and hd == head_dim})
            table = []
            for length in lengths:
                sums = {}
                for engine in ("tl", "gluon"):
                    parts = [times.get((head_dim, length, direction, engine, m)) for m in MODES]
                    sums[engine] = None if None in parts else sum(parts)
                winner = None
                if sums["tl"] is not None and sums["gluon"] is not None:
                    winner = "gluon" if sums["gluon"] < sums["tl"] else "tl"
                table.append({"length": length, "tl": sums["tl"], "gluon": sums["gluon"],
                              "winner": winner})
            min_keys = None
            for entry in reversed(table):   # from the longest down, while Gluon keeps winning
                if entry["winner"] != "gluon":
                    break
                min_keys = entry["length"]
            result.setdefault(direction, {})[head_dim] = {"lengths": table, "min_keys": min_keys}
    return result


def report(choice: dict, current: dict, cards) -> str:
    lines = [f"cards: {', '.join(cards)}" + ("  (more than one: do not mix cards)"
                                             if len(cards) > 1 else "")]
    lines.append("direction  D    length   tl dense+ACP ms  Gluon dense+ACP ms  Gluon / tl  faster")
    for direction, dims in choice.items():
        for head_dim, entry in dims.items():
            for row in entry["lengths"]:
                tl = "-" if row["tl"] is None else f"{row['tl']:.3f}"
                gl = "-" if row["gluon"] is None else f"{row['gluon']:.3f}"
                ratio = (f"{row['gluon'] / row['tl']:.3f}" if row["winner"] else "-")
                lines.append(f"{direction:10s} {head_dim:<4d} {row['length']:<8d} {tl:>15s}"
                             f"  {gl:>18s}  {ratio:>10s}  {row['winner'] or '-'}")
            now = current.get(direction, {}).get(head_dim, "not listed")
            shortest = entry["lengths"][0]["length"]
            note = (", or fewer: Gluon wins at the shortest length measured"
                    if entry["min_keys"] == shortest else "")
            lines.append(f"{direction:10s} {head_dim:<4d} proposed min keys: {entry['min_keys']}"
                         f"{note} (now: {now})")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("bench", nargs="+", help="bench_attention.py --json files")
    parser.add_argument("--json", default=None, help="write the proposal here")
    args = parser.parse_args()
    try:
        documents = documents_of(args.bench)
    except ValueError as exc:
        raise SystemExit(str(exc))
    times, cards = engine_times(args.bench)
    if not times:
        raise SystemExit("no tl / Gluon rows with times in these files")
    choice = choose(times)
    if documents:
        print(f"with document ids ({documents}): against PREFERRED_MIN_KEYS_WITH_DOCS")
    print(report(choice, PREFERRED_MIN_KEYS_WITH_DOCS if documents else PREFERRED_MIN_KEYS,
                 cards))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cards": cards, "documents": documents, "choice": choice}, f, indent=1)


if __name__ == "__main__":
    main()
