"""benchmarks/ab_compare.py: rounds of several kernel versions merged into medians and ratios."""
import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
import ab_compare  # noqa: E402

SHAPE = "B2-T16384-H24-D64"


def write_round(folder, name, round_, times, skipped=()):
    """One bench_attention.py JSON: times maps impl to (fwd ms, fwd+bwd ms)."""
    rows = [{"shape": SHAPE, "impl": impl, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}
            for impl, (fwd, fwd_bwd) in times.items()]
    rows += [{"shape": SHAPE, "impl": impl, "error": "skipped"} for impl in skipped]
    data = {"versions": {"card": "test card", "torch": "t", "triton": "x", "date": "d"},
            "rows": rows}
    (folder / f"{name}.r{round_}.json").write_text(json.dumps(data))


def test_medians_and_ratios_against_main(tmp_path, capsys):
    for r, (main_bwd, fast_bwd) in enumerate([(16.0, 15.0), (16.4, 15.2), (16.2, 14.9)], 1):
        write_round(tmp_path, "main", r, {"gluon": (4.0 + r / 100, main_bwd), "cudnn": (3.7, 13.3)})
        write_round(tmp_path, "fast.v2", r, {"gluon": (3.9, fast_bwd), "cudnn": (3.7, 13.3)},
                    skipped=["flex"])
    merged = ab_compare.compare(str(tmp_path))
    assert merged["base"] == "main" and list(merged["compared"]) == ["fast.v2"]
    rows = {row["impl"]: row for row in merged["compared"]["fast.v2"]}
    assert set(rows) == {"gluon", "cudnn"}          # the skipped row has no times
    gluon = rows["gluon"]
    assert gluon["median"]["main"]["fwd_bwd_ms"] == 16.2
    assert gluon["median"]["fast.v2"]["fwd_bwd_ms"] == 15.0
    assert gluon["ratio_fwd_bwd"] == pytest.approx(15.0 / 16.2)
    assert gluon["ratio_fwd"] == pytest.approx(3.9 / 4.02)
    assert gluon["base_spread_fwd_bwd"] == pytest.approx(0.4 / 16.2)
    assert gluon["rounds"] == [3, 3]
    assert gluon["every_round"]["fast.v2"]["fwd_bwd_ms"] == [15.0, 15.2, 14.9]
    assert rows["cudnn"]["ratio_fwd_bwd"] == 1.0
    ab_compare.print_table(merged)
    text = capsys.readouterr().out
    assert "fast.v2 against main" in text and "0.926" in text


def test_the_base_and_rows_of_one_side(tmp_path):
    write_round(tmp_path, "old", 1, {"gluon": (4.0, 16.0), "tl": (4.5, 18.0)})
    write_round(tmp_path, "new", 1, {"gluon": (3.0, 12.0)})
    merged = ab_compare.compare(str(tmp_path))     # `old` is the base when there is one
    rows = {row["impl"]: row for row in merged["compared"]["new"]}
    assert merged["base"] == "old" and rows["gluon"]["ratio_fwd_bwd"] == 0.75
    assert rows["tl"] == {"shape": SHAPE, "impl": "tl", "only_in": "old"}
    flipped = ab_compare.compare(str(tmp_path), base="new")
    assert {r["impl"]: r for r in flipped["compared"]["old"]}["gluon"]["ratio_fwd_bwd"] == 16 / 12
    with pytest.raises(SystemExit, match="no rounds of the base version 'main'"):
        ab_compare.compare(str(tmp_path), base="main")


def test_an_empty_folder_is_an_error(tmp_path):
    (tmp_path / "old1.json").write_text("{}")     # the former naming: not read
    with pytest.raises(SystemExit, match="no NAME.rK.json files"):
        ab_compare.compare(str(tmp_path))
