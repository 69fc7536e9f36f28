"""Where one kernel's warps wait, from Nsight Compute's per-instruction stall samples: reads the
SASS source page that `run_gpu_kernels.sh ncusrc` writes,

    ncu -i ncusrc.ncu-rep --page source --csv --print-source sass > ncusrc_sass.csv
    python benchmarks/ncu_source_summary.py ncusrc_sass.csv [--top 25] [--json out.json]

and prints (1) the samples by the kind of instruction the warps were stalled at (an mbarrier
wait, a wgmma wait, a named barrier, a tensor-core product, an exponential, ...), and (2) the
instructions with the most samples, each with its neighbours' opcodes, in address order. A
sample lands on the instruction a warp could not issue yet, so a wait shows on the wait
instruction itself or on the first instruction that needs what it waited for.
"""
import argparse
import csv
import json
import re
import sys

# (kind, opcode regex), first match wins; the opcode is the SASS text after any predicate
KINDS = [
    ("mbarrier wait (TMA data, free slots, item queue)", r"^SYNCS\.PHASECHK|^SYNCS\."),
    ("wgmma wait", r"^WARPGROUP\.DEPBAR"),
    ("named barrier (bar.sync)", r"^BAR\."),
    ("tensor-core product (HGMMA)", r"^HGMMA|^WARPGROUP\.ARRIVE"),
    ("exp2 (MUFU)", r"^MUFU"),
    ("branch", r"^BRA|^BSYNC|^BSSY|^WARPSYNC|^EXIT|^RET|^CALL"),
    ("shared-memory load / store", r"^LDS|^STS|^LDSM|^STSM"),
    ("global memory", r"^LDG|^STG|^RED|^ATOM|^UBLKCP|^UTMA"),
    ("shuffle", r"^SHFL"),
    ("float math (FADD, FMUL, FFMA, FMNMX, FSEL)", r"^F(ADD|MUL|FMA|MNMX|SEL|SETP)"),
    ("conversion (F2F, F2FP, I2F)", r"^F2F|^F2FP|^I2F|^F2I"),
]


def _opcode(source: str) -> str:
    text = source.strip()
    if text.startswith("@"):
        text = text.split(None, 1)[1] if " " in text else ""
    return text.split(None, 1)[0] if text else ""


def _kind(opcode: str) -> str:
    for kind, pattern in KINDS:
        if re.match(pattern, opcode):
            return kind
    return "other (integer, uniform, moves)"


def _number(text: str) -> float:
    try:
        return float(str(text).replace(",", "").strip() or 0)
    except ValueError:
        return 0.0


def read(path: str):
    """[(address, source, samples, not_issued_samples)] of the SASS page, in address order."""
    with open(path, newline="") as handle:
        lines = handle.read().splitlines()
    start = next((i for i, line in enumerate(lines)
                  if "Address" in line and "Source" in line), None)
    if start is None:
        raise SystemExit(f"{path}: no header with 'Address' and 'Source' (is it the source "
                         "page in CSV?)")
    rows = list(csv.DictReader(lines[start:]))
    header = [c for c in (rows[0].keys() if rows else []) if c]
    address_col = next(c for c in header if "Address" in c)
    source_col = next(c for c in header if c.strip() == "Source")
    all_col = next((c for c in header if "Sampling (All" in c), None)
    not_col = next((c for c in header if "Sampling (Not" in c), None)
    if all_col is None:
        raise SystemExit(f"{path}: no 'Warp Stall Sampling (All Samples)' column: {header}")
    out = []
    for row in rows:
        address = row.get(address_col, "")
        source = row.get(source_col, "")
        if not address or not source:
            continue
        out.append((address, source, _number(row[all_col]),
                    _number(row[not_col]) if not_col else 0.0))
    return out


def summarise(rows, top: int):
    total = sum(r[2] for r in rows) or 1.0
    by_kind: dict = {}
    for _, source, samples, _ in rows:
        kind = _kind(_opcode(source))
        by_kind[kind] = by_kind.get(kind, 0.0) + samples
    kinds = sorted(by_kind.items(), key=lambda kv: -kv[1])
    print(f"{len(rows)} instructions, {total:.0f} stall samples")
    print("\nsamples by the kind of instruction stalled at:")
    for kind, samples in kinds:
        print(f"  {100 * samples / total:5.1f}%  {kind}")
    ranked = sorted(range(len(rows)), key=lambda i: -rows[i][2])[:top]
    print(f"\nthe {len(ranked)} instructions with the most samples (address order; the two "
          "before each, for context):")
    for i in sorted(ranked):
        address, source, samples, _ = rows[i]
        before = " | ".join(_opcode(rows[j][1]) for j in range(max(0, i - 2), i))
        print(f"  {100 * samples / total:5.1f}%  {address}  {source.strip()[:70]:70s}  after: {before}")
    return {"total_samples": total,
            "by_kind": {kind: samples / total for kind, samples in kinds},
            "top": [{"address": rows[i][0], "source": rows[i][1].strip(),
                     "share": rows[i][2] / total} for i in sorted(ranked)]}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("csv", help="the SASS source page as CSV (ncu --page source --csv)")
    parser.add_argument("--top", type=int, default=25, help="instructions to list (default 25)")
    parser.add_argument("--json", help="also write the summary here")
    args = parser.parse_args(argv)
    result = summarise(read(args.csv), args.top)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(result, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
