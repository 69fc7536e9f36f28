"""Merge the A/B rounds of run_gpu_kernels.sh's `abref` step: bench_attention.py JSONs of two
kernel versions (old*.json, new*.json, alternated in one run) into one table of medians over the
rounds and the new / old ratio, per shape and implementation.

    python benchmarks/ab_compare.py DIR [--json merged.json]    # reads DIR/old*.json, DIR/new*.json
"""
import argparse
import glob
import json
import os
import statistics


def load(paths):
    """{(shape, impl): {"fwd_ms": [...], "fwd_bwd_ms": [...]}} and the versions of the first."""
    rows, versions = {}, None
    for path in sorted(paths):
        with open(path) as f:
            data = json.load(f)
        versions = versions or data.get("versions")
        for row in data.get("rows", []):
            if "fwd_ms" not in row:
                continue
            entry = rows.setdefault((row["shape"], row["impl"]), {"fwd_ms": [], "fwd_bwd_ms": []})
            entry["fwd_ms"].append(row["fwd_ms"])
            entry["fwd_bwd_ms"].append(row["fwd_bwd_ms"])
    return rows, versions


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dir")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    old, versions = load(glob.glob(os.path.join(args.dir, "old*.json")))
    new, _ = load(glob.glob(os.path.join(args.dir, "new*.json")))
    merged = {"versions": versions, "rows": []}
    if versions:
        print(f"{versions.get('card')}, torch {versions.get('torch')}, triton "
              f"{versions.get('triton')}, {versions.get('date')}")
    print(f"{'shape':<19} {'implementation':<30} {'old fwd':>8} {'new fwd':>8} {'new/old':>7} "
          f"{'old f+b':>8} {'new f+b':>8} {'new/old':>7}  rounds")
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        row = {"shape": key[0], "impl": key[1], "old": a, "new": b}
        if a and b:
            med = {side: {m: statistics.median(v[m]) for m in ("fwd_ms", "fwd_bwd_ms")}
                   for side, v in (("old", a), ("new", b))}
            row["median"] = med
            row["ratio_fwd"] = med["new"]["fwd_ms"] / med["old"]["fwd_ms"]
            row["ratio_fwd_bwd"] = med["new"]["fwd_bwd_ms"] / med["old"]["fwd_bwd_ms"]
            print(f"{key[0]:<19} {key[1][:30]:<30} {med['old']['fwd_ms']:8.3f} "
                  f"{med['new']['fwd_ms']:8.3f} {row['ratio_fwd']:7.3f} "
                  f"{med['old']['fwd_bwd_ms']:8.3f} {med['new']['fwd_bwd_ms']:8.3f} "
                  f"{row['ratio_fwd_bwd']:7.3f}  {len(a['fwd_ms'])}/{len(b['fwd_ms'])}")
        else:
            print(f"{key[0]:<19} {key[1][:30]:<30} only in {'old' if a else 'new'}")
        merged["rows"].append(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(merged, f, indent=1)


if __name__ == "__main__":
    main()
