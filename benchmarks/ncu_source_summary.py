"""Where one kernel's warps wait, from Nsight Compute's per-instruction stall samples: reads the
SASS source page that `run_gpu_kernels.sh ncusrc` writes,

    ncu -i ncusrc.ncu-rep --page source --csv --print-source sass > ncusrc_sass.csv
    python benchmarks/ncu_source_summary.py ncusrc_sass.csv [--top 25] [--json out.json]

and prints (1) the samples by the kind of instruction the warps were stalled at (an mbarrier
wait, a wgmma wait, a named barrier, a tensor-core product, an exponential, ...), (2) the
samples by stall reason (Nsight's stall_* columns: `selected` is a warp issuing, `wait` a
fixed-latency dependency or a busy fixed-latency pipe such as MUFU, `long_sb` / `short_sb`
waiting for a memory or MUFU / shared-memory result, `barrier` a named barrier, ...), overall
and for each kind, and (3) the instructions with the most samples, each with its neighbours'
opcodes, in address order. A sample lands on the instruction a warp could not issue yet, so
a wait shows on the wait instruction itself or on the first instruction that needs what it
waited for.

Parked warps: Gluon's warp_specialize pads a partition of one warp (a loader, a reducer) to
a warp group of four, and the padding warps wait at a barrier (a NOP right after BAR.SYNC)
from start to end. Their samples are real but cost nothing, so the reasons are also given
for the other warps alone ("working warps").
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
    """[(address, source, samples, not_issued_samples, {reason: samples})] of the SASS page, in
    address order."""
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
    reason_cols = [c for c in header if c.startswith("stall_") and "Not Issued" not in c]
    out = []
    for row in rows:
        address = row.get(address_col, "")
        source = row.get(source_col, "")
        if not address or not source:
            continue
        reasons = {c[len("stall_"):]: _number(row[c]) for c in reason_cols}
        out.append((address, source, _number(row[all_col]),
                    _number(row[not_col]) if not_col else 0.0,
                    {r: v for r, v in reasons.items() if v}))
    return out


def parked(rows) -> set:
    """Indices of the NOPs right after a BAR.SYNC (where padding warps wait all along)."""
    return {i for i in range(1, len(rows))
            if _opcode(rows[i][1]) == "NOP" and _opcode(rows[i - 1][1]).startswith("BAR.SYNC")}


def _reasons(rows, keep) -> dict:
    totals: dict = {}
    for i in keep:
        for reason, samples in rows[i][4].items():
            totals[reason] = totals.get(reason, 0.0) + samples
    return dict(sorted(totals.items(), key=lambda kv: -kv[1]))


def summarise(rows, top: int):
    total = sum(r[2] for r in rows) or 1.0
    by_kind: dict = {}
    for _, source, samples, *_ in rows:
        kind = _kind(_opcode(source))
        by_kind[kind] = by_kind.get(kind, 0.0) + samples
    kinds = sorted(by_kind.items(), key=lambda kv: -kv[1])
    print(f"{len(rows)} instructions, {total:.0f} stall samples")
    print("\nsamples by the kind of instruction stalled at:")
    for kind, samples in kinds:
        print(f"  {100 * samples / total:5.1f}%  {kind}")
    idle = parked(rows)
    idle_share = sum(rows[i][2] for i in idle) / total
    working = [i for i in range(len(rows)) if i not in idle]
    reasons = _reasons(rows, working)
    reason_total = sum(reasons.values()) or 1.0
    by_kind_reasons: dict = {}
    for i in working:
        kind = _kind(_opcode(rows[i][1]))
        for reason, samples in rows[i][4].items():
            per = by_kind_reasons.setdefault(kind, {})
            per[reason] = per.get(reason, 0.0) + samples
    if reasons:
        print(f"\nparked warps (a NOP right after BAR.SYNC): {100 * idle_share:.1f}% of the "
              "samples; the working warps' samples by stall reason:")
        for reason, samples in reasons.items():
            if samples / reason_total >= 0.001:
                print(f"  {100 * samples / reason_total:5.1f}%  {reason}")
        print("\nand by kind of instruction (its share of the working warps' samples: its "
              "three main reasons):")
        for kind, per in sorted(by_kind_reasons.items(), key=lambda kv: -sum(kv[1].values())):
            share = sum(per.values()) / reason_total
            main = sorted(per.items(), key=lambda kv: -kv[1])[:3]
            print(f"  {100 * share:5.1f}%  {kind}: "
                  + ", ".join(f"{r} {100 * v / reason_total:.1f}" for r, v in main))
    ranked = sorted(range(len(rows)), key=lambda i: -rows[i][2])[:top]
    print(f"\nthe {len(ranked)} instructions with the most samples (address order; the two "
          "before each, for context):")
    for i in sorted(ranked):
        address, source, samples = rows[i][:3]
        before = " | ".join(_opcode(rows[j][1]) for j in range(max(0, i - 2), i))
        print(f"  {100 * samples / total:5.1f}%  {address}  {source.strip()[:70]:70s}  after: {before}")
    return {"total_samples": total,
            "by_kind": {kind: samples / total for kind, samples in kinds},
            "parked_share": idle_share,
            "working_by_reason": {r: v / reason_total for r, v in reasons.items()},
            "working_by_kind_and_reason": {
                kind: {r: v / reason_total for r, v in per.items()}
                for kind, per in by_kind_reasons.items()},
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
