"""benchmarks/targets.py: the speed targets checked against a benchmark run's rows."""
import json
import os
import subprocess
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "benchmarks")
sys.path.insert(0, BENCHMARKS)
import targets  # noqa: E402

OP = "op fwd+bwd <= 1.05x its kernels"


def bench_run(capability="9.0", **times):
    """A bench_attention.py result: times maps (shape, key) to (fwd ms, fwd+bwd ms); a row of
    every other key is there untimed (skipped), as the real script writes it."""
    rows = [{"shape": shape, "key": key, "impl": key, "fwd_ms": fwd, "fwd_bwd_ms": fwd_bwd}
            for (shape, key), (fwd, fwd_bwd) in times["times"].items()]
    rows.append({"shape": "B8-T4096-H24-D64", "key": "flex", "impl": "flex",
                 "error": "skipped"})
    return {"versions": {"card": "test card", "capability": capability}, "rows": rows}


def by_target(results):
    """{(target, shape): row}, no two rows of a target and shape."""
    got = {(r["target"], r["shape"]): r for r in results}
    assert len(got) == len(results)
    return got


def test_best_engine_against_cudnn_of_the_same_shape():
    s4, s16 = "B8-T4096-H24-D64", "B2-T16384-H24-D64"
    run = bench_run(times={
        (s4, "cudnn"): (1.0, 4.0), (s4, "fox-dense"): (1.2, 5.0), (s4, "gluon-dense"): (1.1, 5.2),
        (s4, "fox-acp"): (0.8, 2.6), (s4, "gluon-acp"): (0.9, 3.0),
        (s16, "cudnn"): (4.0, 10.0), (s16, "fox-dense"): (3.9, 9.0),
        (s16, "gluon-acp"): (1.0, 4.0)})
    got = by_target(targets.kernel_targets(run))
    dense4 = got[("dense fwd+bwd <= 1.0x cuDNN", s4)]
    assert dense4["impl"] == "fox-dense" and dense4["measured"] == pytest.approx(1.25)
    assert not dense4["met"] and dense4["by"] == pytest.approx(0.25)
    fwd4 = got[("dense fwd <= 1.0x cuDNN", s4)]                      # the faster forward is the Gluon one
    assert fwd4["impl"] == "gluon-dense" and fwd4["measured"] == pytest.approx(1.1)
    acp4 = got[("ACP fwd+bwd <= 0.70x cuDNN", s4)]
    assert acp4["impl"] == "fox-acp" and acp4["needed"] == 0.70
    assert acp4["measured"] == pytest.approx(0.65) and acp4["met"]
    assert got[("dense fwd+bwd <= 1.0x cuDNN", s16)]["met"] and got[("dense fwd <= 1.0x cuDNN", s16)]["met"]
    acp16 = got[("ACP fwd+bwd <= 0.42x cuDNN", s16)]
    assert acp16["needed"] == 0.42 and acp16["measured"] == pytest.approx(0.4) and acp16["met"]
    # no arctic-fox, op or cuDNN-less rows: nothing claimed about them
    assert {t for t, _ in got} == {"dense fwd+bwd <= 1.0x cuDNN", "dense fwd <= 1.0x cuDNN",
                                   "ACP fwd+bwd <= 0.70x cuDNN", "ACP fwd+bwd <= 0.42x cuDNN"}


def test_shapes_without_cudnn_or_a_bar_check_what_they_can():
    shape = "B1-T1000-H4-D64"
    run = bench_run(times={(shape, "cudnn"): (1.0, 3.0), (shape, "fox-acp"): (0.5, 1.0),
                           ("B1-T2000-H4-D64", "fox-dense"): (1.0, 3.0)})
    got = by_target(targets.kernel_targets(run))
    assert set(got) == set()                   # no dense row here, no ACP bar for this shape


def test_arctic_fox_speedup_and_the_op_against_its_engine(monkeypatch):
    s4, s16 = "B8-T4096-H24-D64", "B2-T16384-H24-D64"
    times = {(s4, "cudnn"): (1.0, 4.0), (s4, "fox-acp"): (0.8, 3.0), (s4, "gluon-acp"): (0.7, 3.2),
             (s4, "gtl-acp"): (0.75, 2.95), (s4, "fox-op"): (0.9, 3.3),
             (s4, "arctic-fox-acp"): (2.0, 5.7),
             (s16, "cudnn"): (4.0, 13.0), (s16, "fox-acp"): (1.7, 6.2),
             (s16, "gluon-acp"): (1.6, 6.1), (s16, "fox-op"): (1.7, 6.3)}
    got = by_target(targets.kernel_targets(bench_run(times=times)))
    arctic = got[("ACP fwd+bwd >= 2x faster than arctic-fox", s4)]
    assert arctic["impl"] == "gtl-acp"                  # the fastest ACP row
    assert arctic["measured"] == pytest.approx(5.7 / 2.95) and not arctic["met"]
    assert not arctic["at_most"] and arctic["by"] == pytest.approx(2.0 / (5.7 / 2.95) - 1)
    # on sm90 at D = 64 the automatic choice runs the Gluon pair from 4k keys
    op4, op16 = got[(OP, s4)], got[(OP, s16)]
    assert op4["impl"] == "fox-op / gluon-acp" and op4["measured"] == pytest.approx(3.3 / 3.2)
    assert op4["met"]
    assert op16["impl"] == "fox-op / gluon-acp" and op16["met"]
    # where the table takes tl's backward at 4k, the op is held to that pair (gtl-acp)
    from foxcompile.kernels import gluon_attention
    monkeypatch.setitem(gluon_attention.PREFERRED_MIN_KEYS["backward"], 64, 8192)
    op4 = by_target(targets.kernel_targets(bench_run(times=times)))[(OP, s4)]
    assert op4["impl"] == "fox-op / gtl-acp" and op4["measured"] == pytest.approx(3.3 / 2.95)
    assert not op4["met"]
    # off sm90 the op runs tl everywhere
    off = by_target(targets.kernel_targets(bench_run(capability="8.0", times=times)))
    assert off[(OP, s4)]["impl"] == "fox-op / fox-acp"
    assert off[(OP, s4)]["measured"] == pytest.approx(1.1)
    assert off[(OP, s16)]["impl"] == "fox-op / fox-acp"


def test_training_rows_with_a_bar():
    train = {"rows": [
        {"config": "760m", "seq_len": 16384, "variant": "fox_acp", "vs_sdpa": 1.38,
         "batch_size": 3},
        {"config": "760m", "seq_len": 16384, "variant": "sdpa", "vs_sdpa": 1.0},
        {"config": "125m", "seq_len": 4096, "variant": "fox_acp", "vs_sdpa": 1.12,
         "batch_size": 60},
        {"config": "125m", "seq_len": 16384, "variant": "fox_acp", "vs_sdpa": 1.9},   # no bar
        {"config": "760m", "seq_len": 4096, "variant": "fox_acp", "status": "oom"}]}
    got = targets.train_targets(train)
    assert [(r["shape"], r["met"]) for r in got] == [("760m T16384 batch 3", False),
                                                    ("125m T4096 batch 60", True)]
    assert got[0]["by"] == pytest.approx(1.5 / 1.38 - 1)


def test_command_line_prints_and_writes_json(tmp_path):
    shape = "B8-T4096-H24-D64"
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(bench_run(times={(shape, "cudnn"): (1.0, 4.0),
                                                 (shape, "fox-dense"): (1.3, 5.2)})))
    out = tmp_path / "targets.json"
    done = subprocess.run([sys.executable, os.path.join(BENCHMARKS, "targets.py"), str(bench),
                           "--json", str(out)], capture_output=True, text=True, check=True)
    assert "missed by 30%" in done.stdout and "test card" in done.stdout
    written = json.loads(out.read_text())["targets"]
    assert {r["target"] for r in written} == {"dense fwd+bwd <= 1.0x cuDNN",
                                              "dense fwd <= 1.0x cuDNN"}


def test_runs_with_document_ids_check_the_op_against_the_engine_chosen_for_them():
    """A --doc-len run has no cuDNN rows: the op target is still checked, against the kernels
    the automatic choice takes with document ids (the tl forward with the Gluon backward at
    16k on sm90), and its name says the run packed documents; nothing else is checked."""
    s16, s128 = "B2-T16384-H24-D64", "B1-T16384-H16-D128"
    times = {(s16, "gluon-acp"): (1.3, 3.2), (s16, "tlg-acp"): (1.2, 3.1),
             (s16, "fox-op"): (1.6, 4.0), (s128, "gluon-acp"): (1.1, 2.2),
             (s128, "tlg-acp"): (1.0, 2.1), (s128, "fox-op"): (1.1, 2.2)}
    run = bench_run(times=times)
    run["versions"]["documents"] = {"doc_len": 2048, "dtype": "int32"}
    got = by_target(targets.kernel_targets(run))
    name = OP + " (documents of 2048)"
    assert set(got) == {(name, s16), (name, s128)}
    assert got[(name, s16)]["impl"] == "fox-op / tlg-acp"
    assert got[(name, s16)]["measured"] == pytest.approx(4.0 / 3.1)
    assert not got[(name, s16)]["met"]
    assert got[(name, s128)]["impl"] == "fox-op / tlg-acp" and got[(name, s128)]["met"]
    # the same rows without documents: the choice without them (Gluon both ways at 16k)
    del run["versions"]["documents"]
    plain = by_target(targets.kernel_targets(run))
    assert plain[(OP, s16)]["impl"] == "fox-op / gluon-acp"
