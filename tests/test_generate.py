"""Generation with a KV cache (examples/fox_lm.py's FoXCache and FoXStaticCache, examples/generate.py):
the cached, incremental logits equal the full-sequence forward's (prefill + decoding, chunked
prefill, both caches, FoX, Pro and plain SDPA), and under fox_acp the prefill, chunked-prefill and
decode sites are rewritten with the right decay labels and generate what eager generates. Fast
CPU tests (tiny model, short prompts; the compiled ones through aot_eager); the CUDA ones at the
end are skipped without a GPU."""
import json
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import foxcompile
from foxcompile.contract import DECODE_ROWS
from foxcompile.kernels import DECODE_PRUNING_ENV
import fox_lm  # examples/ (tests/conftest.py puts it on sys.path)
import generate as gen
from helpers import AOT

ROOT = Path(__file__).resolve().parents[1]
VOCAB, T = 256, 40
# pieces of T tokens: a prefill then decoding steps; chunked prefills (M < N) between them; a
# one-token prefill, decoding steps, then a chunk longer than what is cached
SCHEDULES = {"prefill+decode": [16] + [1] * 24, "chunked": [10, 7, 5, 1, 17],
             "one token first": [1] * 8 + [32]}
MODELS = {"fox": {}, "pro": {"pro": True}, "sdpa": {"attention": "sdpa"}}
# new_cache arguments: torch.cat; preallocated for all T tokens, or for fewer (it grows); static
CACHES = {"concat": {}, "preallocated": {"max_length": T + 3}, "grows": {"max_length": 12},
          "static": {"static": True, "max_length": T + 3}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One intra-op thread: as fast for the tiny model, and no OpenMP spin-waiting when the
    machine's other core is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def run_script(command: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)


def tiny(name: str = "fox", seed: int = 0) -> fox_lm.FoXLM:
    torch.manual_seed(seed)
    return fox_lm.build_model("tiny", **MODELS[name]).eval()


def incremental(model, tokens, pieces, cache):
    """Logits of every position, fed to the model in `pieces` through `cache`."""
    outs, begin = [], 0
    for n in pieces:
        outs.append(model(tokens[:, begin:begin + n], cache=cache))
        begin += n
    return torch.cat(outs, dim=1)


@pytest.mark.parametrize("kind", list(CACHES))
@pytest.mark.parametrize("schedule", list(SCHEDULES))
@pytest.mark.parametrize("name", list(MODELS))
def test_cached_logits_equal_the_full_forward(name, schedule, kind):
    model = tiny(name)
    tokens = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(batch=2, **CACHES[kind])
        got = incremental(model, tokens, SCHEDULES[schedule], cache)
    torch.testing.assert_close(got, full, rtol=1e-5, atol=1e-5)
    assert (int(cache.position) if kind == "static" else cache.length) == T


@pytest.mark.parametrize("kind", list(CACHES))
def test_cached_lam_continues_the_cumulative_sum(kind):
    """The cache holds lam = cumsum(log f) over all the tokens so far, as the full forward
    computes it."""
    model = tiny()
    tokens = torch.randint(0, VOCAB, (1, 20))
    captured = []
    attn = model.blocks[1].attn
    hook = attn.register_forward_hook(lambda m, args, out: captured.append(args[0]))
    with torch.no_grad():
        model(tokens)
        cache = model.new_cache(**CACHES[kind])
        incremental(model, tokens, [8, 5, 1, 6], cache)
    hook.remove()
    log_f = attn.project(captured[0])[3]                      # (1, H, 20) of the full forward
    lam = cache.lam[1][:, :, :20]
    torch.testing.assert_close(lam, log_f.cumsum(-1), rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("kind", ["concat", "preallocated"])
def test_static_cache_from_a_prefilled_cache_decodes_the_same(kind):
    model = tiny("pro")
    tokens = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        full = model(tokens)
        cache = model.new_cache(**CACHES[kind])
        model(tokens[:, :16], cache=cache)
        static = fox_lm.FoXStaticCache.from_cache(cache, model.config, 30)
        got = incremental(model, tokens[:, 16:], [1] * 8, static)
        # load() refills the same tensors in place: a second run gives the same logits
        again = incremental(model, tokens[:, 16:], [1] * 8, static.load(cache))
    torch.testing.assert_close(got, full[:, 16:], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(again, got, rtol=0, atol=0)
    with pytest.raises(ValueError, match="more than max_length"):
        fox_lm.FoXStaticCache.from_cache(cache, model.config, 8)


def test_greedy_generation_is_deterministic_and_teacher_forcing_reproduces_it():
    model = tiny()
    prompt = torch.randint(0, VOCAB, (2, 12))
    first = gen.generate(model, prompt, 6, prefill_chunk=5)
    forced = gen.generate(model, prompt, 6, forced=first.tokens, static=True)
    assert torch.equal(forced.tokens, first.tokens)
    for a, b in zip(first.logits, forced.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    # the first generated token is the argmax of the full forward's last logits
    assert torch.equal(first.tokens[:, 0], model(prompt)[:, -1].argmax(-1))


# ---------------------------------------------------------------- under fox_acp


class _Capture(logging.Handler):
    """The backend's rewrite and decline log lines (logger "foxcompile", INFO)."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.rewrote, self.declined = [], []

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("rewrote "):
            self.rewrote.append(message[len("rewrote "):])
        elif message.startswith("declined "):
            self.declined.append(message[len("declined "):])


def labels(report) -> list[str]:
    return [site.decay for site in report.sites]


@pytest.mark.parametrize("concat", [False, True], ids=["preallocated", "concat"])
def test_explain_labels_prefill_chunked_and_decode_sites(concat):
    """Prefill of an empty cache: lam = cumsum(logsigmoid(...)) in the graph, `proven`. Chunked
    prefill and decode read lam back from the cache (an input): `guarded`. Nothing declined,
    whether the cache is written in place or concatenated."""
    model = tiny()
    prompt = torch.randint(0, VOCAB, (2, 24))
    reports = dict(gen.explain_sites(model, prompt, concat=concat))
    assert list(reports) == ["prefill: M=12 new, N=12 keys", "chunked prefill: M=12 new, N=24 keys",
                             "decode: M=1 new, N=25 keys", "decode, next step: M=1 new, N=26 keys"]
    expected = [["proven"] * 2, ["guarded"] * 2, ["guarded"] * 2, ["guarded"] * 2]
    assert [labels(r) for r in reports.values()] == expected
    assert not any(r.declined for r in reports.values())
    for report in reports.values():
        assert {s.module for s in report.sites} == {"blocks.0.attn", "blocks.1.attn"}
        assert all("in attend_cached" in s.location for s in report.sites)


def test_explain_notes_the_decoding_sized_sites():
    """Sites whose shapes fix at most contract.DECODE_ROWS query rows per kv head (decoding
    steps) say that they run dense unless FOXCOMPILE_DECODE_PRUNING=1; larger ones do not."""
    model = tiny()
    prompt = torch.randint(0, VOCAB, (1, 2 * (DECODE_ROWS + 8)))
    reports = dict(gen.explain_sites(model, prompt))
    for what, report in reports.items():
        decoding = what.startswith("decode")
        notes = [n for s in report.sites for n in s.notes if "FOXCOMPILE_DECODE_PRUNING" in n]
        assert len(notes) == (2 if decoding else 0), (what, notes)
        assert all(n.startswith("1 query row per kv head") for n in notes)


@pytest.mark.usefixtures("fresh_dynamo")
def test_compiled_generation_rewrites_every_site_and_matches_eager():
    """generate() under fox_acp: the prefill (proven), a chunked prefill and the decoding steps
    (guarded) compile with every site rewritten; the logits of every generated position match
    eager's and the greedy tokens are eager's."""
    model = tiny()
    prompt = torch.randint(0, VOCAB, (2, 24))
    compiled = torch.compile(model, backend="fox_acp", options=AOT)
    capture, log = _Capture(), logging.getLogger("foxcompile")
    level = log.level
    log.addHandler(capture)
    log.setLevel(logging.INFO)
    try:
        got = gen.generate(model, prompt, 6, prefill=compiled, decode=compiled, prefill_chunk=12)
    finally:
        log.removeHandler(capture)
        log.setLevel(level)
    want = gen.generate(model, prompt, 6, prefill_chunk=12)
    assert not capture.declined, capture.declined
    # graphs: the prefill of the empty cache, the chunk, then the decoding steps (one graph, or
    # two when Dynamo makes the length dynamic only at the second step); two layers each
    decays = [line.split(" decay ")[1].split(" ")[0] for line in capture.rewrote]
    assert decays[:2] == ["proven"] * 2 and decays[2:4] == ["guarded"] * 2, capture.rewrote
    assert len(decays) in (6, 8) and set(decays[4:]) == {"guarded"}, capture.rewrote
    assert all("q(2, 4, 1, 32)" in line for line in capture.rewrote[4:]), capture.rewrote
    assert torch.equal(got.tokens, want.tokens)
    for a, b in zip(got.logits, want.logits):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("asked", [True, False])
def test_pruning_reaches_the_decode_step(monkeypatch, asked):
    """Asked to (FOXCOMPILE_DECODE_PRUNING=1), a decode step over 700 cached keys skips the far
    key tiles (the untrained gates forget within tens of tokens): the plan's start block is past
    the first tiles for every head. By default the step runs dense (kernels.may_prune)."""
    if asked:
        monkeypatch.setenv(DECODE_PRUNING_ENV, "1")
    else:
        monkeypatch.delenv(DECODE_PRUNING_ENV, raising=False)
    model = tiny()
    prompt = torch.randint(0, VOCAB, (1, 700))
    compiled = torch.compile(model, backend="fox_acp", options=AOT)
    with torch.no_grad():
        cache = model.new_cache(max_length=710)
        compiled(prompt, cache=cache)
        with foxcompile.pruning_stats() as stats:
            compiled(prompt[:, -1:], cache=cache)
    (site, *_) = stats.per_head()
    assert site["grid"][2:] == (1, 701)
    if asked:
        assert min(site["skipped_tile_fraction"]) >= 0.5 and site["dense_decoding_calls"] == 0
    else:
        assert max(site["skipped_tile_fraction"]) == 0.0 and site["dense_decoding_calls"] == 1
        assert "decoding-sized and ran dense" in str(stats)


def _bench_decode():
    """benchmarks/bench_decode.py as a module (its profile helpers)."""
    if str(ROOT / "benchmarks") not in sys.path:
        sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_decode

    return bench_decode


def _compiled(name: str, model):
    if name == "sdpa":
        return torch.compile(model, backend="aot_eager")
    return torch.compile(model, backend="fox_acp", options=AOT)


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", ["fox", "sdpa"])
def test_decode_steps_stop_compiling(name):
    """Decoding on the preallocated cache compiles the first step (its length specialised) and
    the second (the length made dynamic), then nothing: every later step runs the same graph,
    with no graph break, whatever the cache length (no guard that fails at every step)."""
    from torch._dynamo.utils import counters

    counters.clear()   # torch._dynamo.reset() keeps them: earlier tests' graph breaks are there
    model = tiny(name)
    compiled = _compiled(name, model)
    prompt = torch.randint(0, VOCAB, (1, 16))
    compiles = []
    with torch.no_grad():
        cache = model.new_cache(max_length=32)
        model(prompt, cache=cache)  # eager prefill: only decoding steps compile here
        token = prompt[:, -1]
        for _ in range(6):
            before = counters["frames"]["total"]
            token = compiled(token[:, None], cache=cache)[:, -1].argmax(-1)
            compiles.append(counters["frames"]["total"] - before)
    assert compiles[0] == 1 and compiles[1] <= 1 and compiles[2:] == [0] * 4, compiles
    assert not counters["graph_break"], dict(counters["graph_break"])
    assert cache.length == 22


def test_bench_decode_sdpa_backend_takes_masks_for_the_static_cache():
    """The static cache's SDPA call takes a mask, which flash cannot: the pinned backend falls
    to memory-efficient attention there, and stays flash for the other caches."""
    bench = _bench_decode()
    args = bench.parse_args(["--device", "cpu"])
    args.device = "cuda"   # the choice is made for CUDA; nothing runs here
    for cache, want in (("static", "efficient"), ("preallocated", "flash"), ("concat", "flash")):
        args.cache, args.sdpa_backend = cache, "flash"
        assert bench.sdpa_backend("sdpa", args) == want
        assert bench.sdpa_backend("sdpa_auto", args) == "auto"
        assert bench.sdpa_backend("fox_acp", args) is None


@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("name", ["fox", "sdpa"])
def test_decode_step_is_one_graph_without_host_syncs(name, monkeypatch):
    """A compiled decoding step, as bench_decode.py --profile sees it: one compiled region, one
    foxcompile::attention call per layer (fox), and no op that reads a device value back to the
    host (item, nonzero, ...: a GPU synchronisation). The op runs its decode engine (the
    kernels' path on a GPU) under the Triton interpreter."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    monkeypatch.delenv("FOXCOMPILE_ENGINE", raising=False)
    bench = _bench_decode()
    model = tiny(name)
    compiled = _compiled(name, model)
    prompt = torch.randint(0, VOCAB, (1, 24))
    with torch.no_grad():
        cache = model.new_cache(max_length=40)
        token = model(prompt, cache=cache)[:, -1].argmax(-1)
    token = bench.decode_steps(compiled, cache, token, 3)  # compiles (see above)
    _, profile = bench.profile_steps(compiled, cache, token, 2, torch.device("cpu"))
    assert profile["steps"] == 2 and profile["host_ms_per_step"] > 0
    assert profile["compiled_regions_per_step"] == 1, profile
    assert profile["op_calls_per_step"] == (2 if name == "fox" else 0), profile
    assert profile["sync_ops_per_step"] == {}, profile
    assert profile["aten_ops_per_step"] >= profile["op_aten_ops_per_step"] > (
        0 if name == "fox" else -1)


def test_static_cache_decode_sites_are_rewritten():
    """The static cache's decoding step: the cache written in place before the attention reads
    it, the unfilled slots masked through the positions (a key mask)."""
    model = tiny("pro")
    prompt = torch.randint(0, VOCAB, (2, 16))
    with torch.no_grad():
        cache = model.new_cache()
        model(prompt, cache=cache)
        static = fox_lm.FoXStaticCache.from_cache(cache, model.config, 20)
    report = foxcompile.explain(model, prompt[:, -1:], cache=static)
    assert labels(report) == ["guarded"] * 2 and not report.declined
    assert all("key mask" in str(site) for site in report.sites)


@pytest.mark.usefixtures("fresh_dynamo")
def test_static_cache_decode_step_prunes(monkeypatch):
    """Asked to, a decoding step on the static cache skips the tiles far behind the query (its
    unfilled slots, a masked tail, do not turn pruning off) and gives eager's logits."""
    monkeypatch.setenv(DECODE_PRUNING_ENV, "1")
    model = tiny()
    prompt = torch.randint(0, VOCAB, (1, 700))
    compiled = torch.compile(model, backend="fox_acp", options=AOT)
    with torch.no_grad():
        cache = model.new_cache(max_length=700)
        model(prompt, cache=cache)
        static = fox_lm.FoXStaticCache.from_cache(cache, model.config, 704)
        eager_static = fox_lm.FoXStaticCache.from_cache(cache, model.config, 704)
        with foxcompile.pruning_stats() as stats:
            logits = compiled(prompt[:, -1:], cache=static)
        want = model(prompt[:, -1:], cache=eager_static)
    (site, *_) = stats.per_head()
    assert min(site["skipped_tile_fraction"]) >= 0.5
    assert (logits - want).abs().max() <= 1e-3 * want.abs().max()


def test_generate_script_checks_against_eager():
    command = [sys.executable, str(ROOT / "examples" / "generate.py"), "--device", "cpu",
               "--fox-compiler", "aot_eager", "--prompt-len", "40", "--prefill-chunk", "16",
               "--new-tokens", "5", "--batch", "2", "--static-cache", "--explain", "--check"]
    result = run_script(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    for line in ("-- prefill: M=20 new, N=20 keys: 2 rewritten (proven x2), 0 declined",
                 "-- chunked prefill: M=20 new, N=40 keys: 2 rewritten (guarded x2), 0 declined",
                 "-- decode: M=1 new, N=41 keys: 2 rewritten (guarded x2), 0 declined",
                 "-- static-cache decode: M=1 new, 44 slots: 2 rewritten (guarded x2), 0 declined",
                 "prefill: 80 tokens", "decode:  8 tokens", "check: ok"):
        assert line in out, out


# ---------------------------------------------------------------- CUDA


cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@cuda
@pytest.mark.usefixtures("fresh_dynamo")
def test_fox_acp_generation_on_cuda_matches_eager():
    """bf16 on the GPU: Triton kernels for the prefill, the chunked prefill and the decode."""
    model = tiny().cuda().to(torch.bfloat16)
    prompt = torch.randint(0, VOCAB, (2, 300), device="cuda")
    compiled = torch.compile(model, backend="fox_acp")
    got = gen.generate(model, prompt, 8, prefill=compiled, decode=compiled, prefill_chunk=200)
    want = gen.generate(model, prompt, 8, prefill_chunk=200, forced=got.tokens)
    for a, b in zip(got.logits, want.logits):
        assert (a - b).abs().max() <= 5e-2 * b.abs().max()


@pytest.mark.gpu
@cuda
@pytest.mark.usefixtures("fresh_dynamo")
@pytest.mark.parametrize("backend", ["fox_acp", "inductor"])
def test_static_cache_decodes_under_cuda_graphs(backend):
    """mode="reduce-overhead" on the static cache: the decode steps replay one CUDA graph (no
    cudagraph skips) and give eager's logits."""
    from torch._dynamo.utils import counters

    model = tiny().cuda().to(torch.bfloat16)
    prompt = torch.randint(0, VOCAB, (2, 64), device="cuda")
    kwargs = gen.compile_options(backend, "reduce-overhead", foxcompile.DEFAULT_EPSILON)
    decode = torch.compile(model, **kwargs)
    counters.clear()
    static = model.new_cache(static=True, batch=2, max_length=64 + 8)
    for _ in range(2):  # the second run replays the graphs recorded on the same cache
        got = gen.generate(model, prompt, 8, decode=decode, static=static)
    want = gen.generate(model, prompt, 8, static=True, forced=got.tokens)
    assert counters["inductor"]["cudagraph_skips"] == 0
    for a, b in zip(got.logits, want.logits):
        assert (a - b).abs().max() <= 5e-2 * b.abs().max()


def test_bench_decode_smoke(tmp_path):
    out = tmp_path / "decode.json"
    command = [sys.executable, str(ROOT / "benchmarks" / "bench_decode.py"), "--smoke",
               "--variants", "fox_acp_prune", "--contexts", "300", "--batches", "2", "--fill",
               "prefill", "--profile", "--profile-steps", "2", "--out", str(out)]
    result = run_script(command)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    data = json.loads(out.read_text())
    (row,) = data["rows"]
    assert row["status"] == "ok" and row["decode_tokens_per_s"] > 0 and row["prefill_s"] > 0
    assert (row["config"], row["context"], row["batch"], row["cache"]) == ("tiny", 300, 2,
                                                                          "preallocated")
    assert len(row["unread_fraction"]) == 2 and len(row["unread_fraction"][0]) == 4
    assert 0 <= row["unread_fraction_min"] <= row["unread_fraction_max"] <= 1
    assert row["sites"]["decode"] == {"rewritten": ["guarded"] * 2, "declined": []}
    assert row["sites"]["prefill"]["rewritten"] == ["proven"] * 2
    assert data["versions"]["torch"] == torch.__version__ and data["date"]
    # the timed steps ran compiled code without compiling, as one graph a step
    assert row["compiles_timed"] == 0 and row["compiles_warmup"] == 0, row
    assert row["graph_breaks"] == 0 and not row["dynamo_gave_up"], row
    assert row["profile"]["compiled_regions_per_step"] == 1, row["profile"]
    assert row["profile"]["op_calls_per_step"] == 2, row["profile"]
