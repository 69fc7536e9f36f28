"""Merge rounds of bench_attention.py runs of several kernel versions, alternated in one call
(run_gpu_kernels.sh's `abref` and `variants` steps), into medians over the rounds and each
version's ratio to a base version, per shape and implementation.

    python benchmarks/ab_compare.py DIR [--base NAME] [--json merged.json]

DIR holds NAME.rK.json (version NAME, round K), e.g. old.r1.json, new.r1.json, old.r2.json, ...
The base is --base, else `old` or `main`, whichever is there. Ratios below 1 mean faster than
the base; with two rounds the median is their mean, so read a ratio against the spread of the
base's own rounds (printed as `base spread`).
"""
import argparse
import glob
import json
import os
import re
import statistics

METRICS = ("fwd_ms", "fwd_bwd_ms")


def load(paths):
    """{(shape, impl): {"fwd_ms": [...], "fwd_bwd_ms": [...]}} over the files (rounds), and the
    versions block of the first."""
    rows, versions = {}, None
    for path in sorted(paths):
        with open(path) as f:
            data = json.load(f)
        versions = versions or data.get("versions")
        for row in data.get("rows", []):
            if "fwd_ms" not in row:
                continue
            entry = rows.setdefault((row["shape"], row["impl"]), {m: [] for m in METRICS})
            for m in METRICS:
                entry[m].append(row[m])
    return rows, versions


def rounds_by_version(folder: str) -> dict:
    """{NAME: [paths]} of the NAME.rK.json files in folder."""
    found: dict = {}
    for path in glob.glob(os.path.join(folder, "*.r*.json")):
        match = re.fullmatch(r"(.+)\.r(\d+)\.json", os.path.basename(path))
        if match:
            found.setdefault(match.group(1), []).append(path)
    return found


def compare(folder: str, base: str | None = None) -> dict:
    """The merged result: versions block, base, and per version other than the base its rows
    (shape, impl, the medians of both, ratio_fwd, ratio_fwd_bwd, the base's spread, the number
    of rounds of each and every round's times)."""
    files = rounds_by_version(folder)
    if not files:
        raise SystemExit(f"{folder}: no NAME.rK.json files")
    if base is None:
        base = next((name for name in ("old", "main") if name in files), None)
    if base not in files:
        raise SystemExit(f"{folder}: no rounds of the base version {base!r} (have {sorted(files)})")
    base_rows, versions = load(files[base])
    merged = {"versions": versions, "base": base, "compared": {}}
    for name in sorted(files):
        if name == base:
            continue
        rows, _ = load(files[name])
        out = []
        for key in sorted(set(base_rows) | set(rows)):
            a, b = base_rows.get(key), rows.get(key)
            row = {"shape": key[0], "impl": key[1]}
            if a and b:
                med = {side: {m: statistics.median(v[m]) for m in METRICS}
                       for side, v in ((base, a), (name, b))}
                row["median"] = med
                row["ratio_fwd"] = med[name]["fwd_ms"] / med[base]["fwd_ms"]
                row["ratio_fwd_bwd"] = med[name]["fwd_bwd_ms"] / med[base]["fwd_bwd_ms"]
                row["base_spread_fwd_bwd"] = (max(a["fwd_bwd_ms"]) - min(a["fwd_bwd_ms"])) \
                    / med[base]["fwd_bwd_ms"]
                row["rounds"] = [len(a["fwd_ms"]), len(b["fwd_ms"])]
                row["every_round"] = {base: a, name: b}
            else:
                row["only_in"] = base if a else name
            out.append(row)
        merged["compared"][name] = out
    return merged


def print_table(merged: dict) -> None:
    versions, base = merged["versions"], merged["base"]
    if versions:
        print(f"{versions.get('card')}, torch {versions.get('torch')}, triton "
              f"{versions.get('triton')}, {versions.get('date')}")
    for name, rows in merged["compared"].items():
        print(f"\n{name} against {base} (medians over the rounds, ms):")
        print(f"{'shape':<19} {'implementation':<30} {'base fwd':>8} {'fwd':>8} {'ratio':>6} "
              f"{'base f+b':>8} {'f+b':>8} {'ratio':>6} {'base spread':>11}  rounds")
        for row in rows:
            if "only_in" in row:
                print(f"{row['shape']:<19} {row['impl'][:30]:<30} only in {row['only_in']}")
                continue
            a, b = row["median"][base], row["median"][name]
            print(f"{row['shape']:<19} {row['impl'][:30]:<30} {a['fwd_ms']:8.3f} "
                  f"{b['fwd_ms']:8.3f} {row['ratio_fwd']:6.3f} {a['fwd_bwd_ms']:8.3f} "
                  f"{b['fwd_bwd_ms']:8.3f} {row['ratio_fwd_bwd']:6.3f} "
                  f"{100 * row['base_spread_fwd_bwd']:10.1f}%  "
                  f"{row['rounds'][0]}/{row['rounds'][1]}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--base", default=None, help="the version the others are divided by")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    merged = compare(args.dir, args.base)
    print_table(merged)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(merged, f, indent=1)


if __name__ == "__main__":
    main()
