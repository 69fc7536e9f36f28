"""Data-parallel training on CPU with gloo, under `torchrun --nproc-per-node 2` (subprocesses).

- A DDP graph split must not cut an attention site: a model with a parameter between q @ k^T and
  the softmax, under buckets that split after every parameter (tests/ddp_split_worker.py).
- examples/train.py under DDP (small buckets, so that Dynamo splits the graph) and under FSDP2
  trains exactly as one process does on the same global batch (losses, eval loss, parameters),
  with every attention site rewritten on every rank (pruning_stats, reduced over the ranks).
- A run resumed from a torch.distributed.checkpoint checkpoint continues as if never stopped.
- benchmarks/bench_train.py --parallel reports tokens/s per GPU and the scaling efficiency
  against its 1-process baseline (the --smoke configuration).

Graphs run under "fox.compiler": "aot_eager" (no Inductor C++ build). The runs are few and tiny,
but each torchrun compiles twice per rank (training and evaluation graphs): under two minutes
in all on two free cores.
"""

import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ROOT / "examples" / "train.py"
BENCH = ROOT / "benchmarks" / "bench_train.py"
WORKER = Path(__file__).resolve().parent / "ddp_split_worker.py"
RANKS = 2
TIMEOUT_S = 300  # per launch; the runs take 10-30 s each on two free cores

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()),
    reason="needs torch.distributed with the gloo backend")

# The tiny model for 4 steps of a global batch of 4 sequences of 64 bytes: 2 per rank.
LAYERS = 2
TRAIN_ARGS = ["--config", "tiny", "--steps", "4", "--seq-len", "64", "--batch-size", "4",
              "--eval-batches", "1", "--device", "cpu", "--fox-compiler", "aot_eager",
              "--warmup-steps", "1", "--lr", "3e-3"]


def launch(args: list, nproc: int | None = RANKS, env: dict | None = None):
    """Run a script (with torchrun when nproc is given); fail with its output's tail."""
    prefix = [sys.executable]
    if nproc:
        prefix += ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", **(env or {})}
    try:
        result = subprocess.run(prefix + [str(a) for a in args], capture_output=True, text=True,
                                timeout=TIMEOUT_S, env=environment, cwd=ROOT)
    except subprocess.TimeoutExpired as error:
        pytest.fail(f"{args[0]} did not finish in {TIMEOUT_S} s: {str(error.stderr)[-3000:]}")
    assert result.returncode == 0, (result.stdout[-2000:] + result.stderr[-4000:])
    return result


def final_parameters(out: Path) -> dict:
    """The model parameters of a run's last checkpoint: checkpoint.pt, or the newest DCP
    checkpoint converted with torch.distributed.checkpoint's format utilities."""
    if (out / "checkpoint.pt").exists():
        return torch.load(out / "checkpoint.pt", weights_only=True)["model"]
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

    newest = sorted((out / "checkpoints").glob("step_*"))[-1]
    converted = out / "final.pt"
    dcp_to_torch_save(newest, converted)
    return torch.load(converted, weights_only=False)["model"]


def assert_same_training(run: dict, reference: dict, steps=None):
    """Same losses at every step (of `steps`), same eval loss and parameters, within fp32
    tolerance: a mean over 2 ranks is not summed in the same order as one over the batch."""
    steps = steps or [s["step"] for s in reference["log"]["steps"]]
    losses = {s["step"]: s["loss"] for s in run["log"]["steps"]}
    want = {s["step"]: s["loss"] for s in reference["log"]["steps"]}
    for step in steps:
        assert math.isclose(losses[step], want[step], rel_tol=1e-5), (step, losses, want)
    assert math.isclose(run["log"]["evals"][-1]["loss"], reference["log"]["evals"][-1]["loss"],
                        rel_tol=1e-5)
    params, expected = run["params"], reference["params"]
    assert set(params) == set(expected)
    for name, value in expected.items():
        torch.testing.assert_close(params[name], value, rtol=1e-4, atol=1e-5, msg=name)


@pytest.fixture(scope="module")
def train_extra():
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")


def train_run(out: Path, extra: list, nproc: int | None, env: dict | None = None) -> dict:
    result = launch([TRAIN, *TRAIN_ARGS, "--out", out, *extra], nproc, env)
    log = json.loads((out / "log.json").read_text())
    return {"log": log, "params": final_parameters(out), "stderr": result.stderr}


@pytest.fixture(scope="module")
def single(tmp_path_factory, train_extra):
    """One process, the whole global batch."""
    return train_run(tmp_path_factory.mktemp("single"), [], nproc=None)


@pytest.fixture(scope="module")
def ddp(tmp_path_factory, train_extra):
    """DDP on 2 ranks, buckets of 1 MB (the tiny model holds 2 MB of parameters, so Dynamo's
    DDPOptimizer splits its graphs); TORCH_LOGS=ddp makes DDPOptimizer say how many buckets."""
    return train_run(tmp_path_factory.mktemp("ddp"), ["--parallel", "ddp", "--bucket-cap-mb", "1"],
                     RANKS, env={"TORCH_LOGS": "ddp"})


@pytest.fixture(scope="module")
def fsdp(tmp_path_factory, train_extra):
    """FSDP2 on 2 ranks, a DCP checkpoint every 2 steps, all kept (the resume test starts from
    the one of step 2)."""
    return train_run(tmp_path_factory.mktemp("fsdp"),
                     ["--parallel", "fsdp", "--checkpoint-every", "2", "--keep-checkpoints", "0"],
                     RANKS)


def sites(log: dict) -> dict:
    """{site label: calls} of the last pruning snapshot (summed over the ranks)."""
    return {row["site"]: row["calls"] for row in log["pruning"][-1]["per_head"]}


def test_a_ddp_split_does_not_cut_an_attention_site(tmp_path):
    launch([WORKER, tmp_path])
    for rank in range(RANKS):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        whole, pieces = result["whole"], result["pieces"]
        # the scenario: DDPOptimizer splits every layer, and without foxcompile's hook the split
        # cuts both sites in two, so both run dense and explain() declines them
        assert whole["pieces"] >= 2 * 2, whole
        assert pieces["calls"] == 0 and pieces["explain_ddp_sites"] == 0, pieces
        assert pieces["explain_ddp_declined"], pieces
        # foxcompile as shipped: every layer's attention call runs foxcompile's op on this rank
        assert whole["calls"] == 2, whole
        assert whole["explain_ddp_sites"] >= 1 and not whole["explain_ddp_declined"], whole
        assert whole["explain_model_sites"] == 2, whole
        # and DDP's gradients are those of eager training on the global batch
        assert whole["output_diff"] < 1e-5 and whole["grad_diff"] < 1e-6, whole


def test_single_process_run_rewrites_every_layer(single):
    assert sites(single["log"]) == {f"blocks.{i}.attn (fox_lm.py:140 in attend)": 1
                                    for i in range(LAYERS)}
    assert single["log"]["parallel"] == {"mode": "none", "world_size": 1}


def test_ddp_trains_as_one_process_with_every_site_rewritten(ddp, single):
    buckets = [int(n) for n in re.findall(r"DDPOptimizer used bucket cap \d+ and created (\d+) "
                                          r"buckets", ddp["stderr"])]
    assert buckets and max(buckets) >= 2, "DDPOptimizer did not split the graph: " + \
        ddp["stderr"][-2000:]
    assert ddp["log"]["parallel"] == {"mode": "ddp", "world_size": RANKS, "bucket_cap_mb": 1.0}
    assert ddp["log"]["pruning"][-1]["ranks"] == RANKS
    # the same sites as one process, each called once on every rank
    assert sites(ddp["log"]) == {site: RANKS for site in sites(single["log"])}
    assert_same_training(ddp, single)


def test_fsdp_trains_as_one_process_with_every_site_rewritten(fsdp, single):
    assert fsdp["log"]["parallel"] == {"mode": "fsdp", "world_size": RANKS}
    # Under FSDP2 Dynamo compiles each block's forward on its own (FSDP's hooks run between the
    # blocks), and all blocks share that graph: one site, "attn", called once per layer and rank.
    found = sites(fsdp["log"])
    assert list(found) == ["attn (fox_lm.py:140 in attend)"], found
    assert sum(found.values()) == LAYERS * RANKS, found
    assert_same_training(fsdp, single)


def test_fsdp_run_resumes_from_its_dcp_checkpoint(fsdp, tmp_path):
    source = Path(fsdp["log"]["args"]["out"]) / "checkpoints" / "step_000002"
    assert (source / ".metadata").exists()
    resumed = train_run(tmp_path / "resumed", ["--parallel", "fsdp", "--resume", source], RANKS)
    assert [s["step"] for s in resumed["log"]["steps"]] == [3, 4]
    assert resumed["log"]["resumed"] == [{"step": 2, "checkpoint": str(source)}]
    assert_same_training(resumed, fsdp, steps=[3, 4])


def test_bench_train_reports_scaling_against_the_one_process_run(tmp_path, train_extra):
    out = tmp_path / "scaling.json"
    bench = [BENCH, "--smoke", "--variants", "fox_acp", "--out", out]
    launch(bench, nproc=None)  # the baseline, whose batch the parallel run takes
    launch(bench + ["--parallel", "ddp"])
    rows = {(r["parallel"], r["world_size"]): r for r in json.loads(out.read_text())["rows"]}
    assert set(rows) == {("none", 1), ("ddp", RANKS)}
    one, two = rows["none", 1], rows["ddp", RANKS]
    assert one["status"] == two["status"] == "ok", (one, two)
    assert two["batch_size"] == one["batch_size"]
    assert two["tokens_per_s_per_gpu"] == pytest.approx(two["tokens_per_s"] / RANKS)
    assert two["scaling_efficiency"] == pytest.approx(two["tokens_per_s_per_gpu"]
                                                      / one["tokens_per_s"])
    assert one["scaling_efficiency"] is None
    # every layer's attention ran foxcompile's op on every rank
    assert one["attention_calls"] == LAYERS and two["attention_calls"] == LAYERS * RANKS
