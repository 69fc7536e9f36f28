"""Fast CPU tests of the example language model (examples/fox_lm.py) and its trainer."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fox_lm  # examples/fox_lm.py (tests/conftest.py puts examples/ on sys.path)

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"  # for the scripts run as subprocesses


@pytest.fixture(scope="module")
def train():
    """examples/train.py, whose plots and progress bar need the `examples` extra."""
    pytest.importorskip("matplotlib")
    pytest.importorskip("tqdm")
    import train as module

    return module


@pytest.mark.parametrize("name, nominal", [("125m", 125e6), ("360m", 360e6), ("760m", 760e6)])
def test_parameter_counts_match_the_published_sizes(name, nominal):
    # The published sizes include a 32k-token vocabulary with untied embeddings; the byte-level
    # model has the same blocks and tiny embedding tables.
    with torch.device("meta"):
        subword = fox_lm.build_model(name, vocab_size=32768)
        byte_level = fox_lm.build_model(name)
    count = sum(p.numel() for p in subword.parameters())
    assert 0.85 * nominal < count < 1.15 * nominal
    hidden = byte_level.config.hidden
    byte_count = sum(p.numel() for p in byte_level.parameters())
    assert byte_count - 2 * 256 * hidden == count - 2 * 32768 * hidden


def test_tied_embeddings_share_one_matrix():
    model = fox_lm.build_model("tiny", tie_embeddings=True)
    assert model.lm_head.weight is model.embed.weight


def test_bad_options_fail_clearly():
    with pytest.raises(ValueError, match="unknown config"):
        fox_lm.build_model("1b")
    with pytest.raises(ValueError, match="attention must be one of"):
        fox_lm.build_model("tiny", attention="flash")


@pytest.mark.parametrize("pro", [False, True], ids=["fox", "pro"])
@pytest.mark.parametrize("attention", ["fox", "sdpa"])
def test_tiny_forward_backward_is_finite(pro, attention):
    torch.manual_seed(0)
    model = fox_lm.build_model("tiny", pro=pro, attention=attention)
    tokens = torch.randint(0, 256, (2, 48))
    logits = model(tokens)
    assert logits.shape == (2, 48, 256)
    torch.nn.functional.cross_entropy(logits.flatten(0, 1), tokens.flatten()).backward()
    assert torch.isfinite(logits).all()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert (model.blocks[0].attn.fgate is not None) == (attention == "fox")


def test_activation_checkpointing_gives_the_same_gradients():
    tokens = torch.randint(0, 256, (2, 32))
    grads = []
    for checkpointing in (False, True):
        torch.manual_seed(0)
        model = fox_lm.build_model("tiny", pro=True, activation_checkpointing=checkpointing)
        model(tokens).float().square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    torch.testing.assert_close(grads[0], grads[1])


def reference_forgetting_attention(q, k, v, f, scale):
    """o_i = sum_{j<=i} w_ij v_j / sum_j w_ij, w_ij = exp(scale q_i.k_j) prod_{j<l<=i} f_l,
    per (batch, head), in float64 with explicit loops."""
    q, k, v, f = (t.double() for t in (q, k, v, f))
    out = torch.zeros_like(q)
    B, H, T, _ = q.shape
    for b in range(B):
        for h in range(H):
            for i in range(T):
                weights = torch.stack([
                    torch.exp(scale * q[b, h, i] @ k[b, h, j]) * torch.prod(f[b, h, j + 1 : i + 1])
                    for j in range(i + 1)
                ])
                out[b, h, i] = (weights[:, None] * v[b, h, : i + 1]).sum(0) / weights.sum()
    return out


def test_eager_attention_matches_a_float64_reference():
    torch.manual_seed(0)
    layer = fox_lm.FoXAttention(fox_lm.CONFIGS["tiny"])
    B, H, T, D = 2, 4, 24, 32
    q, k, v = (torch.randn(B, H, T, D) for _ in range(3))
    log_f = torch.nn.functional.logsigmoid(torch.randn(B, H, T) + 1.0)
    got = layer.attend(q, k, v, log_f)
    want = reference_forgetting_attention(q, k, v, log_f.exp(), layer.scale)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_sdpa_variant_is_forgetting_attention_without_forgetting():
    torch.manual_seed(0)
    layer = fox_lm.FoXAttention(fox_lm.CONFIGS["tiny"])
    q, k, v = (torch.randn(1, 4, 16, 32) for _ in range(3))
    no_forgetting = torch.zeros(1, 4, 16)
    torch.testing.assert_close(layer.attend(q, k, v, None), layer.attend(q, k, v, no_forgetting))


def test_kv_shift_mixes_each_step_with_the_previous_one():
    x = torch.randn(2, 3, 5, 4)
    a = torch.rand(2, 3, 5)
    shifted = fox_lm.kv_shift(x, a)
    for t in range(5):
        previous = x[:, :, t - 1] if t > 0 else torch.zeros_like(x[:, :, 0])
        want = a[:, :, t, None] * previous + (1 - a[:, :, t, None]) * x[:, :, t]
        torch.testing.assert_close(shifted[:, :, t], want)


def test_corpus_leaves_out_installed_packages(tmp_path, train):
    for name in ("a.py", "pkg/b.py", "site-packages/c.py", "pkg/dist-packages/d.py",
                 "__pycache__/e.py", "notes.txt"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x = 1\n")
    assert train.stdlib_files(tmp_path) == ["a.py", "pkg/b.py"]


def test_corpus_split_is_deterministic_and_disjoint(train):
    root = train.stdlib_root()
    split = train.split_files(root)
    assert split == train.split_files(root)
    train_files, eval_files = set(split["train"]), set(split["eval"])
    assert not train_files & eval_files
    assert train_files | eval_files == set(train.stdlib_files(root))
    assert 0.005 < len(eval_files) / (len(train_files) + len(eval_files)) < 0.05
    corpus = train.load_corpus(root)
    assert len(corpus["eval"]) == sum((root / f).stat().st_size for f in split["eval"])


def test_eval_batches_do_not_depend_on_the_seed(train):
    data = torch.arange(1000) % 256
    first = train.eval_batches(data, batch_size=2, seq_len=16, count=3)
    assert len(first) == 3 and first[0][0].shape == (2, 16)
    for (x1, y1), (x2, y2) in zip(first, train.eval_batches(data, 2, 16, 3)):
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
        assert torch.equal(x1[:, 1:], y1[:, :-1])


def test_schedule_warms_up_then_decays_to_the_floor(train):
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = train.make_scheduler(optimizer, warmup_steps=4, total_steps=20)
    lrs = []
    for _ in range(20):
        lrs.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    assert lrs[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(lrs[3:], lrs[4:]))
    assert math.isclose(scheduler.get_last_lr()[0], train.MIN_LR_RATIO)


@pytest.mark.usefixtures("train")  # the scripts need the same packages
def test_train_script_runs_eagerly_and_writes_its_log(tmp_path):
    out = tmp_path / "run"
    command = [sys.executable, str(EXAMPLES / "train.py"), "--config", "tiny", "--steps", "3",
               "--seq-len", "64", "--batch-size", "2", "--eval-batches", "1", "--device", "cpu",
               "--backend", "eager", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    log = json.loads((out / "log.json").read_text())
    assert [s["step"] for s in log["steps"]] == [1, 2, 3]
    assert all(math.isfinite(s["loss"]) for s in log["steps"])
    assert log["evals"][-1]["step"] == 3 and math.isfinite(log["summary"]["final_eval_loss"])
    assert log["versions"]["torch"] == torch.__version__
    assert log["args"]["backend"] == "eager" and log["config"]["hidden"] == 128
    for name in ("loss.png", "pruning_boundary.png", "checkpoint.pt"):
        assert (out / name).stat().st_size > 0, name
    checkpoint = torch.load(out / "checkpoint.pt", weights_only=True)
    assert checkpoint["step"] == 3 and set(checkpoint) >= {"model", "optimizer"}


@pytest.mark.parametrize("argv, message", [(["--steps", "0"], "--steps must be at least 1"),
                                           (["--epsilon", "2"], "--epsilon must be in [0, 1)")])
def test_train_rejects_bad_options(argv, message, capsys, train):
    with pytest.raises(SystemExit):
        train.parse_args(argv + ["--device", "cpu"])
    assert message in capsys.readouterr().err


def test_pruning_plots_read_the_pruning_stats_contract(tmp_path, train):
    def site(index, fraction):
        return {"site": f'File "fox_lm.py", line {110 + index}, in attend\n    scores = q @ k',
                "heads": 4, "skipped_tile_fraction": [fraction] * 4,
                "executed_flops": 1.0 - fraction, "dense_flops": 1.0}

    snapshots = [{"step": step, "skipped_fraction": 0.2 * step,
                  "per_head": [site(i, 0.2 * step) for i in range(2)]} for step in (1, 2, 3)]
    train.plot_pruning_heatmap(snapshots[-1], tmp_path / "heatmap.png")
    train.plot_pruning_over_training(snapshots, tmp_path / "over_training.png")
    assert (tmp_path / "heatmap.png").stat().st_size > 0
    assert (tmp_path / "over_training.png").stat().st_size > 0


@pytest.mark.usefixtures("train")  # the scripts need the same packages
def test_bench_train_smoke(tmp_path):
    out = tmp_path / "bench.json"
    command = [sys.executable, str(EXAMPLES.parent / "benchmarks" / "bench_train.py"),
               "--device", "cpu", "--config", "tiny", "--seq-len", "32", "--batch-size", "2",
               "--warmup-steps", "1", "--steps", "1", "--variants", "eager", "--out", str(out)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = json.loads(out.read_text())["rows"]
    assert [(r["variant"], r["status"]) for r in rows] == [("eager", "ok")]
    assert rows[0]["tokens_per_s"] > 0


@pytest.mark.usefixtures("train")  # the scripts need the same packages
def test_bench_train_parity_report_reads_finished_runs(tmp_path):
    """--parity-report-only gathers runs made elsewhere (e.g. on two GPUs) without training,
    and reports the pruned - dense difference per seed."""
    stem = tmp_path / "parity"
    final = {("pruned", 0): 1.50, ("dense", 0): 1.52, ("pruned", 1): 1.61, ("dense", 1): 1.58}
    for (run, seed), loss in final.items():
        run_dir = stem / f"{run}_seed{seed}"
        run_dir.mkdir(parents=True)
        log = {"steps": [{"step": s, "loss": 3.0 - s / 10} for s in range(1, 11)],
               "evals": [{"step": 10, "loss": loss}], "device": "cpu", "versions": {"torch": "x"},
               "pruning": [{"step": 10, "skipped_fraction": 0.5}] if run == "pruned" else [],
               "summary": {"final_eval_loss": loss, "mean_tokens_per_s": 1.0}}
        (run_dir / "log.json").write_text(json.dumps(log))
    command = [sys.executable, str(EXAMPLES.parent / "benchmarks" / "bench_train.py"),
               "--device", "cpu", "--loss-parity", "--parity-report-only", "--config", "tiny",
               "--seq-len", "32", "--batch-size", "2", "--out", str(stem) + ".json"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((stem / "parity.json").read_text())
    assert summary["pruned_minus_dense_final_eval_loss"] == {
        "0": pytest.approx(-0.02), "1": pytest.approx(0.03)}
    assert summary["seed_spread_final_eval_loss"] == {
        "pruned": pytest.approx(0.11), "dense": pytest.approx(0.06)}
    assert (stem / "parity.png").stat().st_size > 0
    (stem / "dense_seed1" / "log.json").unlink()
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "no finished run" in result.stderr


def _profile_train():
    sys.path.insert(0, str(EXAMPLES.parent / "benchmarks"))
    import profile_train

    return profile_train


# Kernel names as the profiler reports them on an H100, and their groups.
KERNEL_GROUPS = [
    ("_gluon_bwd_kernel", "fox attention"),
    ("_fwd_kernel", "fox attention"),
    ("_qkv_norms_kernel", "fox plan"),
    ("_plan_start_kernel", "fox plan"),
    ("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_3_64x64x64",
     "sdpa attention"),
    ("void pytorch_flash::flash_bwd_dq_dk_dv_loop_kernel<Flash_bwd_kernel_traits>",
     "sdpa attention"),
    ("nvjet_hsh_256x128_64x4_1x2_h_bz_coopB_TNT", "matmul"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64", "matmul"),
    ("triton_tem_fused_mm_3", "matmul"),
    ("triton_red_fused__log_softmax_cumsum_4", "inductor"),
    # a foxcompile name inside a longer one is not foxcompile's
    ("triton_poi_fused__fwd_kernel_copy_1", "inductor"),
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<...>", "optimizer"),
    ("void at::native::vectorized_elementwise_kernel<4, FillFunctor<float>>", "aten"),
    ("Memcpy DtoD (Device -> Device)", "aten"),
    ("some_unknown_kernel", "other"),
]


@pytest.mark.usefixtures("train")  # the scripts need the same packages
@pytest.mark.parametrize("kernel,group", KERNEL_GROUPS)
def test_profile_train_groups_kernels_by_name(kernel, group):
    assert _profile_train().group_of(kernel) == group


@pytest.mark.usefixtures("train")  # the scripts need the same packages
def test_profile_train_smoke(tmp_path):
    """Two variants on CPU: every profiled operator lands in one group, and fox_acp's step holds
    foxcompile's attention where sdpa's holds SDPA's."""
    out = tmp_path / "profile.json"
    command = [sys.executable, str(EXAMPLES.parent / "benchmarks" / "profile_train.py"),
               "--device", "cpu", "--config", "tiny", "--seq-len", "32", "--batch-size", "2",
               "--warmup-steps", "1", "--steps", "1", "--compile-with", "aot_eager",
               "--out", str(out), "--plot", str(tmp_path / "profile.png")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fox_acp - sdpa" in result.stdout
    rows = json.loads(out.read_text())["variants"]
    assert set(rows) == {"fox_acp", "sdpa"}
    for row in rows.values():
        total = sum(group["ms"] for group in row["groups"].values())
        assert total == pytest.approx(row["kernels_ms"])
        assert row["step_ms"] > 0 and row["top"]
    assert rows["fox_acp"]["groups"]["fox attention"]["calls"] >= 2  # forward and backward
    assert rows["fox_acp"]["groups"]["sdpa attention"]["ms"] == 0
    assert rows["sdpa"]["groups"]["fox attention"]["ms"] == 0
    assert rows["sdpa"]["groups"]["sdpa attention"]["calls"] >= 2
    assert (tmp_path / "profile.png").stat().st_size > 0
    assert "fox_acp at 1.10x sdpa's speed" in result.stdout
    assert json.loads(out.read_text())["needed"]["speedup"] == 1.10


def _profiled(step_ms, **group_ms):
    """A profile_train row: the step's wall time and the named groups' ms per step."""
    groups = {name: {"ms": group_ms.get(name.replace(" ", "_"), 0.0), "calls": 1}
              for name in _profile_train().GROUP_NAMES}
    return {"step_ms": step_ms, "groups": groups}


@pytest.mark.usefixtures("train")  # the scripts need the same packages
def test_profile_train_attention_needed():
    """The arithmetic of docs/benchmarks.md's 4k estimate: a 444 ms plain-SDPA step with 170 ms
    of SDPA kernels, a 443 ms FoX step with 146 ms of foxcompile's attention. 1.10x needs a
    403.6 ms step, so attention in 106.6 ms: 73% of its time now, 0.63x the SDPA kernels'."""
    pt = _profile_train()
    rows = {"fox_acp": _profiled(443.0, fox_attention=146.0),
            "sdpa": _profiled(444.0, sdpa_attention=170.0)}
    needed = pt.attention_needed(rows, "fox_acp", "sdpa", 1.10)
    assert needed["step_ms"] == pytest.approx(444.0 / 1.10)
    assert needed["cut_ms"] == pytest.approx(443.0 - 444.0 / 1.10)
    assert needed["attention_ms"] == pytest.approx(146.0 - (443.0 - 444.0 / 1.10))
    assert needed["share_of_now"] == pytest.approx(needed["attention_ms"] / 146.0)
    assert needed["of_base_sdpa"] == pytest.approx(0.627, abs=1e-3)
    assert "0.63x sdpa's SDPA kernels" in pt.format_needed(needed, "fox_acp", "sdpa")
    # already fast enough, and out of reach by attention alone
    assert "already there" in pt.format_needed(
        pt.attention_needed(rows, "fox_acp", "sdpa", 0.9), "fox_acp", "sdpa")
    far = pt.attention_needed(rows, "fox_acp", "sdpa", 3.0)
    assert far["attention_ms"] is None
    assert "more than all" in pt.format_needed(far, "fox_acp", "sdpa")
