"""benchmarks/bench_attention.py: time_rows (rows timed round by round, medians kept) and the
document ids of --doc-len."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks"))
import bench_attention  # noqa: E402


def impl(name, log, fail_at_make=False):
    """An (label, key, make) entry whose fwd / fwd_bwd calls are logged."""
    def make():
        if fail_at_make:
            raise RuntimeError(f"{name} cannot run\nsecond line")
        return (lambda: log.append((name, "fwd")), lambda: log.append((name, "fwd_bwd")),
                [name])
    return (f"label {name}", name, make)


def test_rounds_interleave_rows_and_keep_medians():
    log, timed = [], []
    scripted = {"a": iter([1.0, 10.0, 3.0, 30.0, 2.0, 20.0]),
                "c": iter([5.0, 50.0, 4.0, 40.0, 9.0, 90.0])}

    def timer(fn, leaves):
        fn()                                   # the logged call says which row and direction
        name, direction = log[-1]
        timed.append((name, direction, leaves))
        return next(scripted[name])

    rows = bench_attention.time_rows("B1-T8-H1-D64", [impl("a", log), impl("b", log),
                                                      impl("c", log), impl("d", log, True)],
                                     skip={"b"}, rounds=3, timer=timer)
    assert [r["key"] for r in rows] == ["a", "b", "c", "d"]
    a, b, c, d = rows
    # round by round: a then c in each round, fwd before fwd_bwd, leaves only for fwd_bwd
    assert timed == [("a", "fwd", None), ("a", "fwd_bwd", ["a"]),
                     ("c", "fwd", None), ("c", "fwd_bwd", ["c"])] * 3
    assert a["fwd_ms"] == 2.0 and a["fwd_bwd_ms"] == 20.0
    assert a["fwd_ms_rounds"] == [1.0, 3.0, 2.0] and a["fwd_bwd_ms_rounds"] == [10.0, 30.0, 20.0]
    assert c["fwd_ms"] == 5.0 and c["fwd_bwd_ms"] == 50.0
    assert b["error"] == "skipped" and "fwd_ms" not in b
    assert d["error"] == "RuntimeError: d cannot run" and "fwd_ms" not in d


def test_one_round_has_no_round_lists_and_a_failing_timer_marks_its_row():
    log = []

    def timer(fn, leaves):
        fn()
        if log[-1] == ("b", "fwd_bwd"):
            raise ValueError("out of memory")
        return 1.5

    a, b = bench_attention.time_rows("B1-T8-H1-D64", [impl("a", log), impl("b", log)],
                                     skip=set(), rounds=1, timer=timer)
    assert a["fwd_ms"] == 1.5 and a["fwd_bwd_ms"] == 1.5 and "fwd_ms_rounds" not in a
    assert b["error"] == "ValueError: out of memory" and "fwd_ms" not in b


def test_rounds_below_one_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_attention.py", "--rounds", "0"])
    with pytest.raises(SystemExit):
        bench_attention.main()
    assert "--rounds must be at least 1" in capsys.readouterr().err


@pytest.mark.parametrize("dtype", ["int64", "int32"])
def test_document_ids_pack_documents_of_the_given_length(dtype):
    import torch
    ids = bench_attention.document_ids(2, 10, 4, dtype, device="cpu")
    assert ids.shape == (2, 10) and ids.dtype == getattr(torch, dtype)
    assert ids[0].tolist() == [0, 0, 0, 0, 1, 1, 1, 1, 2, 2] and torch.equal(ids[0], ids[1])


def test_negative_document_lengths_are_refused(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["bench_attention.py", "--doc-len", "-2"])
    with pytest.raises(SystemExit):
        bench_attention.main()
    assert "--doc-len must be 0" in capsys.readouterr().err


def test_kernel_rows_keep_the_keys_and_labels_of_recorded_runs():
    """KERNEL_ROWS expands to the keys targets.py and engine_choice.py read, with the labels a
    recorded run printed for them."""
    import json
    expanded = {f"{prefix}-{suffix}": label.format(mode=mode)
                for prefix, label, _ in bench_attention.KERNEL_ROWS
                for mode, suffix in (("ACP", "acp"), ("dense", "dense"))}
    assert set(expanded) == {f"{p}-{m}" for p in ("fox", "gluon", "tlg", "gtl")
                             for m in ("acp", "dense")}
    recorded = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks",
                            "results", "h100_2026-12-07_0300", "bench.json")
    with open(recorded) as f:
        rows = {row["key"]: row["impl"] for row in json.load(f)["rows"]}
    for key, label in expanded.items():
        if key in rows:                        # the gtl rows came after that run
            assert rows[key] == label
    assert sum(key in rows for key in expanded) == 6
