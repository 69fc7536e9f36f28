"""benchmarks/ncu_source_summary.py: where a kernel's warps wait, from Nsight Compute's SASS page."""
import csv
import io
import json
import os
import sys

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
import ncu_source_summary as summary  # noqa: E402

REASONS = ["stall_barrier", "stall_long_sb", "stall_math", "stall_selected", "stall_wait"]


def sass_page(path, rows):
    """Writes a source page as `ncu --page source --csv --print-source sass` does: a kernel-name
    line, then the header, then one line per instruction. rows: (source, {reason: samples})."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_ALL)
    writer.writerow(["Kernel Name", "_gluon_fwd_kernel", ""])
    writer.writerow(["Address", "Source", "Warp Stall Sampling (All Samples)",
                     "Warp Stall Sampling (Not-issued Samples)"]
                    + REASONS + [r + " (Not Issued)" for r in REASONS])
    for i, (source, reasons) in enumerate(rows):
        samples = sum(reasons.values())
        not_issued = samples - reasons.get("selected", 0)
        writer.writerow([hex(0x1000 + 16 * i), source, f"{samples:,}", f"{not_issued:,}"]
                        + [str(reasons.get(r[len("stall_"):], 0)) for r in REASONS]
                        + ["0"] * len(REASONS))
    path.write_text(out.getvalue())


def test_reasons_by_kind_with_the_parked_warps_apart(tmp_path, capsys):
    page = tmp_path / "sass.csv"
    sass_page(page, [
        ("MUFU.EX2 R4, R4", {"wait": 300, "selected": 100}),
        ("FFMA R5, R4, R6, R7", {"selected": 150, "math": 50}),
        ("SYNCS.PHASECHK.TRANS64.TRYWAIT P1, [UR4+0x100], R3", {"selected": 10}),
        ("@!P1 BRA 0x2000", {"long_sb": 190}),
        ("BAR.SYNC.DEFER_BLOCKING 0x0, 0x100", {"barrier": 0}),
        ("NOP", {"barrier": 1200}),     # the padding warps of a one-warp partition
        ("NOP", {"selected": 0}),       # a NOP elsewhere: no samples
    ])
    result = summary.summarise(summary.read(str(page)), top=3)
    text = capsys.readouterr().out
    assert "parked warps (a NOP right after BAR.SYNC): 60.0% of the samples" in text
    assert abs(result["parked_share"] - 0.6) < 1e-12
    working = result["working_by_reason"]
    assert abs(sum(working.values()) - 1.0) < 1e-12
    assert working["wait"] == 300 / 800 and working["selected"] == 260 / 800
    assert "barrier" not in working      # the parked warps' samples are left out
    kinds = result["working_by_kind_and_reason"]
    assert kinds["exp2 (MUFU)"] == {"wait": 300 / 800, "selected": 100 / 800}
    assert kinds["branch"] == {"long_sb": 190 / 800}
    # all samples, parked ones included, still count by kind
    assert abs(result["by_kind"]["other (integer, uniform, moves)"] - 0.6) < 1e-12
    assert [row["source"] for row in result["top"]] == [
        "MUFU.EX2 R4, R4", "FFMA R5, R4, R6, R7", "NOP"]
    json.dumps(result)   # what --json writes


def test_a_page_without_stall_reasons_still_summarises(tmp_path, capsys):
    page = tmp_path / "sass.csv"
    page.write_text('"Address","Source","Warp Stall Sampling (All Samples)"\n'
                    '"0x10","HGMMA.64x128x16.F32.BF16 R24, gdesc[UR4], RZ","30"\n'
                    '"0x20","WARPGROUP.DEPBAR.LE gsb0, 0x0","70"\n')
    result = summary.summarise(summary.read(str(page)), top=1)
    assert result["by_kind"] == {"wgmma wait": 0.7, "tensor-core product (HGMMA)": 0.3}
    assert result["working_by_reason"] == {}
    assert "parked" not in capsys.readouterr().out
