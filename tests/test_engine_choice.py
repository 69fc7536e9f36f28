"""benchmarks/engine_choice.py: where the Gluon engine wins, read off bench runs."""
import json
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
import engine_choice  # noqa: E402


def write_bench(path, times, card="test card", documents=None):
    """One bench_attention.py JSON: times maps (shape, key) to (fwd ms, fwd+bwd ms); documents:
    the run's document ids ({"doc_len", "dtype"}) or None."""
    rows = [{"shape": shape, "impl": key, "key": key, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}
            for (shape, key), (fwd, fwd_bwd) in times.items()]
    rows.append({"shape": "B8-T4096-H24-D64", "impl": "flex", "key": "flex", "error": "skipped"})
    versions = {"card": card}
    if documents:
        versions["documents"] = documents
    path.write_text(json.dumps({"versions": versions, "rows": rows}))
    return str(path)


def shape_times(shape, tl, tlg, gluon):
    """Rows of the three engine pairs at one shape, each (fwd, fwd+bwd) for dense and ACP
    alike (ACP at half the time)."""
    out = {}
    for mode, factor in (("dense", 1.0), ("acp", 0.5)):
        for key, (fwd, fwd_bwd) in (("fox", tl), ("tlg", tlg), ("gluon", gluon)):
            if fwd is not None:
                out[(shape, f"{key}-{mode}")] = (fwd * factor, fwd_bwd * factor)
    return out


def test_gluon_from_the_length_where_it_starts_winning(tmp_path):
    times = {}
    # 4k: tl faster both ways; 8k: Gluon's backward faster, tl's forward; 16k: Gluon both ways
    times.update(shape_times("B8-T4096-H24-D64", tl=(1.0, 4.0), tlg=(1.0, 4.2), gluon=(1.1, 4.3)))
    times.update(shape_times("B4-T8192-H24-D64", tl=(2.0, 8.0), tlg=(2.0, 7.5), gluon=(2.1, 7.6)))
    times.update(shape_times("B2-T16384-H24-D64", tl=(4.0, 16.0), tlg=(4.0, 15.0),
                             gluon=(3.9, 14.9)))
    path = write_bench(tmp_path / "bench.json", times)
    measured, cards = engine_choice.engine_times([path])
    assert cards == ["test card"]
    # backward of tl: fwd+bwd - fwd of fox-*; Gluon's from tlg-* (tl's forward in it)
    assert measured[(64, 8192, "backward", "tl", "dense")] == pytest.approx(6.0)
    assert measured[(64, 8192, "backward", "gluon", "dense")] == pytest.approx(5.5)
    assert measured[(64, 8192, "forward", "gluon", "acp")] == pytest.approx(1.05)
    choice = engine_choice.choose(measured)
    assert choice["forward"][64]["min_keys"] == 16384
    assert choice["backward"][64]["min_keys"] == 8192
    winners = [row["winner"] for row in choice["backward"][64]["lengths"]]
    assert winners == ["tl", "gluon", "gluon"]
    sums = choice["forward"][64]["lengths"][0]
    assert (sums["tl"], sums["gluon"]) == (pytest.approx(1.5), pytest.approx(1.65))
    text = engine_choice.report(choice, {"backward": {64: 16384}}, cards)
    assert "backward   64   proposed min keys: 8192 (now: 16384)" in text
    assert "forward    64   proposed min keys: 16384 (now: not listed)" in text
    assert "forward    64   4096               1.500               1.650       1.100  tl" in text


def test_a_loss_at_a_longer_length_moves_the_minimum_up(tmp_path):
    times = {}
    times.update(shape_times("B8-T4096-H24-D64", tl=(1.0, 4.0), tlg=(1.0, 3.0), gluon=(0.9, 3.0)))
    times.update(shape_times("B4-T8192-H24-D64", tl=(2.0, 8.0), tlg=(2.0, 8.5), gluon=(2.2, 8.9)))
    times.update(shape_times("B2-T16384-H24-D64", tl=(4.0, 16.0), tlg=(4.0, 15.0),
                             gluon=(3.9, 14.9)))
    choice = engine_choice.choose(engine_choice.engine_times(
        [write_bench(tmp_path / "b.json", times)])[0])
    assert choice["forward"][64]["min_keys"] == 16384      # wins at 4k and 16k, not at 8k
    assert choice["backward"][64]["min_keys"] == 16384


def test_no_minimum_when_gluon_loses_or_is_missing_at_the_longest(tmp_path):
    times = {}
    times.update(shape_times("B8-T4096-H24-D64", tl=(1.0, 4.0), tlg=(1.0, 3.0), gluon=(0.9, 3.0)))
    times.update(shape_times("B1-T16384-H16-D128", tl=(2.0, 8.0), tlg=(None, None),
                             gluon=(None, None)))
    times.update(shape_times("B2-T16384-H24-D64", tl=(4.0, 16.0), tlg=(4.0, 17.0),
                             gluon=(4.1, 17.2)))
    choice = engine_choice.choose(engine_choice.engine_times(
        [write_bench(tmp_path / "b.json", times)])[0])
    assert choice["forward"][64]["min_keys"] is None
    assert choice["backward"][64]["min_keys"] is None
    d128 = choice["forward"][128]
    assert d128["min_keys"] is None
    assert d128["lengths"] == [{"length": 16384, "tl": pytest.approx(3.0), "gluon": None,
                                "winner": None}]


def test_gluon_backward_from_the_gluon_rows_without_tlg(tmp_path):
    times = shape_times("B2-T16384-H24-D64", tl=(4.0, 16.0), tlg=(None, None), gluon=(3.9, 14.0))
    measured, _ = engine_choice.engine_times([write_bench(tmp_path / "b.json", times)])
    assert measured[(64, 16384, "backward", "gluon", "dense")] == pytest.approx(10.1)


def test_medians_over_files_and_cards_reported(tmp_path, capsys, monkeypatch):
    paths = []
    for i, bwd in enumerate((15.0, 17.0, 15.5)):
        times = shape_times("B2-T16384-H24-D64", tl=(4.0, 16.0), tlg=(4.0, bwd), gluon=(3.9, 15.0))
        paths.append(write_bench(tmp_path / f"b{i}.json", times, card=f"card {i % 2}"))
    measured, cards = engine_choice.engine_times(paths)
    assert measured[(64, 16384, "backward", "gluon", "dense")] == pytest.approx(11.5)
    assert cards == ["card 0", "card 1"]
    out_json = tmp_path / "choice.json"
    monkeypatch.setattr(sys, "argv", ["engine_choice.py", *paths, "--json", str(out_json)])
    engine_choice.main()
    text = capsys.readouterr().out
    assert "do not mix cards" in text
    assert "backward   64   proposed min keys: 16384, or fewer: Gluon wins at the shortest" in text
    saved = json.loads(out_json.read_text())
    assert saved["choice"]["backward"]["64"]["min_keys"] == 16384


def test_files_without_engine_rows_are_an_error(tmp_path, monkeypatch):
    path = write_bench(tmp_path / "b.json", {("B2-T16384-H24-D64", "cudnn"): (3.7, 13.3)})
    monkeypatch.setattr(sys, "argv", ["engine_choice.py", path])
    with pytest.raises(SystemExit, match="no tl / Gluon rows"):
        engine_choice.main()


def test_runs_with_documents_are_compared_with_their_own_table(tmp_path, capsys, monkeypatch):
    """Runs packed with document ids propose against PREFERRED_MIN_KEYS_WITH_DOCS and say so;
    runs with and without them (or with other ids) are refused, not mixed."""
    from foxcompile.kernels.gluon_attention import PREFERRED_MIN_KEYS_WITH_DOCS
    documents = {"doc_len": 2048, "dtype": "int32"}
    times = shape_times("B2-T16384-H24-D64", tl=(4.0, 16.0), tlg=(4.0, 15.0), gluon=(4.4, 15.4))
    with_docs = write_bench(tmp_path / "docs.json", times, documents=documents)
    assert engine_choice.documents_of([with_docs]) == documents
    monkeypatch.setattr(sys, "argv", ["engine_choice.py", with_docs])
    engine_choice.main()
    text = capsys.readouterr().out
    assert "with document ids" in text and "PREFERRED_MIN_KEYS_WITH_DOCS" in text
    assert "forward    64   proposed min keys: None (now: not listed)" in text
    now = PREFERRED_MIN_KEYS_WITH_DOCS["backward"][64]
    assert f"backward   64   proposed min keys: 16384, or fewer: Gluon wins at the shortest " \
           f"length measured (now: {now})" in text
    plain = write_bench(tmp_path / "plain.json", times)
    other = write_bench(tmp_path / "other.json", times, documents={**documents, "doc_len": 512})
    for mixed in ([with_docs, plain], [with_docs, other]):
        with pytest.raises(ValueError, match="differ in their document ids"):
            engine_choice.documents_of(mixed)
        monkeypatch.setattr(sys, "argv", ["engine_choice.py", *mixed])
        with pytest.raises(SystemExit, match="differ in their document ids"):
            engine_choice.main()
