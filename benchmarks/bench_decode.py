"""Decoding throughput of the FoX language model with a KV cache under fox_acp, against plain SDPA.

For each config, batch and variant the model (examples/fox_lm.py, bf16 weights on CUDA) is
compiled once; for each context length (ascending) a cache is filled to that many tokens, then
--warmup-steps untimed and --steps timed decoding steps run (one token per sequence each,
greedy), synchronised at the end: tokens/s = batch x steps / time.

Variants:
    fox_acp        FoX, torch.compile(backend="fox_acp"), pruning on (eps = e^-10): the prefill
                   prunes, the decoding steps run dense (foxcompile's default: a decoding-sized
                   call prunes only when asked, kernels.may_prune)
    fox_acp_prune  fox_acp with FOXCOMPILE_DECODE_PRUNING=1: the decoding steps prune too
    fox_acp_dense  FoX, fox_acp with {"fox.epsilon": 0.0}: the same kernels, pruning off
    sdpa           attention="sdpa" (no forget gate), torch.compile (Inductor), SDPA in the graph,
                   on CUDA with --sdpa-backend (default flash: see below)
    sdpa_auto      sdpa with torch's own choice of SDPA backend (what runs 2026-12-06 measured)
    sdpa_eager     attention="sdpa", no compilation, --sdpa-backend (what compiled sdpa should beat)
    inductor       FoX, unmodified, plain torch.compile (the attention as written: M x N scores)
    eager          FoX, no compilation

SDPA backend: torch >= 2.10 with cuDNN >= 9.15.1 on sm90 / sm100 tries cuDNN attention first
(unless TORCH_CUDNN_SDPA_DEPRIORITIZED=1). cuDNN's SDPA caches one execution plan per shape, the
key length included, and builds one on a miss: a decoding step has a new key length every time,
so every layer of every step builds a plan. Flash attention has no such per-shape cost and
splits a decode step's keys over the SMs, so the sdpa variants pin --sdpa-backend (default
flash) for the whole run of the variant (compilation included: Dynamo bakes the enabled backend
into the graph); sdpa_auto keeps torch's choice.

Caches (--cache; docs/generation.md):
    preallocated  (default) fox_lm.FoXCache(max_length=...): storage for the context and the
                  steps, written in place, the attention reading the filled prefix; dynamic
                  shapes, mode "default". fox_acp rewrites its decode sites (decay `guarded`).
    concat        fox_lm.FoXCache() (torch.cat, like Hugging Face's DynamicCache), mode
                  "default": every step copies the whole cache, and a compiled step holds the
                  old and the new one (twice the memory). Rewritten like preallocated.
    static        fox_lm.FoXStaticCache (fixed shapes), decode compiled with
                  mode="reduce-overhead" (CUDA graphs). fox_acp rewrites its decode sites
                  (`guarded`, a key mask on the unfilled slots) and prunes them (the plan reads
                  the masked slots' lam forward-filled, docs/generation.md).

Filling the cache (--fill):
    synthetic  (default) no prefill: every layer's k, v ~ SYN70 (k RMS-normalised, N(0, 1), in
               the model's dtype) and lam = cumsum(logsigmoid(b_h + 0.3 N(0, 1))) with head h's
               decay time log-spaced over --gate-range (SYN70's [2, 512] tokens by default).
               Seconds even at 128k, nothing to compile but the decoding step, the same gate
               statistics at every context, and the only way to long contexts for the
               `inductor` variant. The decoding steps' own q, k, v and gates come from the model.
    prefill    the model's own prefill, in chunks of --prefill-chunk tokens (compiled like the
               variant, mode default: three more graphs to compile): keys, values and lam of the
               model on text (windows of train.py's stdlib corpus) with the gates it has; use it
               with --checkpoint for a trained model's gates. Its time gives prefill tokens/s.
The forget gates matter: with nn.Linear's init (--gate-init default) an untrained FoX has f about
0.5 and forgets within tens of tokens, so almost the whole cache is pruned. By default
(--gate-init decay) each layer's gate biases give head h a decay time log-spaced over
--gate-range, as bench_train.py and SYN70 do (docs/benchmarks.md); --checkpoint loads trained
weights (and gates) instead.

Attention time per step (preallocated and concat caches, fox and sdpa variants): after the
timed steps, one eager
decoding step captures every layer's q (B, H, 1, D) and cached k, v, lam; the attention alone
(foxcompile::attention with the variant's epsilon, or F.scaled_dot_product_attention) is then
timed on them (CUDA events, median of --attention-reps) and summed over the layers. Each call
drops a different number of the last keys (0 to reps + 2), so that every call sees a new key
count, as every decoding step does: a backend that prepares something per shape (cuDNN's SDPA
builds an execution plan for each new key length) pays for it here as in the step. The rest of
the step (projections, MLP, cache update, launches) is the step time minus that. The same call
gives the plan's start blocks, hence per layer and head the fraction of the cache the kernel
never reads (plan.unread_key_fraction where the checkout has it; the plan's bound reads the
norms of all keys once: that pass is not counted as a read here).

    python benchmarks/bench_decode.py                          # 125m, 760m; 4k..128k; batch 1, 16
    python benchmarks/bench_decode.py --configs 125m --contexts 16384 --batches 1 --steps 32
    python benchmarks/bench_decode.py --cache static --variants fox_acp sdpa
    python benchmarks/bench_decode.py --configs 125m --fill prefill --checkpoint runs/x/checkpoint.pt
    python benchmarks/bench_decode.py --smoke                  # tiny, CPU, seconds
    python benchmarks/bench_decode.py --configs 125m --batches 1 --contexts 16384 65536 \
        --variants sdpa_auto sdpa fox_acp_dense fox_acp --explain-len 0 --profile

Compilation (every row): Dynamo's counters around the untimed and the timed steps give
`compiles_warmup` and `compiles_timed` (frames Dynamo compiled: a timed step that compiles is
not a decode step), `graph_breaks` (breaks in everything the variant compiled so far),
`dynamo_gave_up` (Dynamo hit its recompile limit and runs the model eagerly from then on) and
`graphs` (cache entries of FoXLM.forward). A timed step that compiled, or a variant that Dynamo
gave up on, is printed as a warning.

Where the step goes (--profile): after the timed steps, --profile-steps more steps run under
torch.profiler (CPU, and CUDA on a GPU) and the row's "profile" holds per step: the host time,
the time in Dynamo's guards (cache lookup) and in compiled code, the compiled regions run (1
when the step is one graph; more: graph breaks; 0: eager), the outermost aten ops (those called
from Python or from the compiled graph's wrapper, not from inside another op) and how many of
them run inside foxcompile::attention, the op's host time, ops that synchronise on a GPU (item,
nonzero, ...) and the host events with the most time of their own (launches, allocations,
syncs); on a GPU also the kernels launched, the GPU time they take against the wall time (a
step whose GPU is mostly idle is launch-bound), launches, CUDA synchronisations, device-to-host
copies and the kernels that take the most GPU time. --profile-trace DIR also writes each row's
Chrome trace there.

Results are merged into --out (rows of the same card, config, batch, context, variant, cache
and fill are replaced) and written after every row, so a run cut short keeps what it measured.
A row whose cache (twice with --cache concat, plus the weights) cannot fit the card is
recorded as "too large" without trying (--try-all tries anyway); an OOM is recorded as "OOM" and
skips the longer contexts of that variant and batch.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import statistics
import sys
import time
import traceback
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "examples"))

import generate  # noqa: E402
import train  # noqa: E402
from bench_train import (SDPA_BACKENDS, is_out_of_memory, merge_rows,  # noqa: E402
                         release_memory, synchronize)
from fox_lm import CONFIGS, FoXCache, FoXStaticCache, build_model  # noqa: E402

VARIANTS = {  # name: (attention, backend, epsilon)
    "fox_acp": ("fox", "fox_acp", train.DEFAULT_EPSILON),
    "fox_acp_prune": ("fox", "fox_acp", train.DEFAULT_EPSILON),
    "fox_acp_dense": ("fox", "fox_acp", 0.0),
    "sdpa": ("sdpa", "inductor", 0.0),
    "sdpa_auto": ("sdpa", "inductor", 0.0),
    "sdpa_eager": ("sdpa", "eager", 0.0),
    "inductor": ("fox", "inductor", 0.0),
    "eager": ("fox", "eager", 0.0),
}
DEFAULT_VARIANTS = ("fox_acp", "fox_acp_prune", "fox_acp_dense", "sdpa")
CACHES = ("preallocated", "concat", "static")
SYN70_NOISE = 0.3  # gate logit = b_h + 0.3 N(0, 1) (benchmarks/bench_attention.py's syn70)
ATTENTION_PROFILED = ("fox_acp", "fox_acp_prune", "fox_acp_dense", "sdpa", "sdpa_auto",
                      "sdpa_eager")


# ---------------------------------------------------------------- setup


def cache_bytes(config, batch: int, context: int, dtype: torch.dtype) -> int:
    """k, v (dtype) and lam (fp32) of every layer for batch x context tokens."""
    c = CONFIGS[config]
    per_token = c.layers * c.heads * (2 * c.head_dim * dtype.itemsize + 4)
    return batch * context * per_token


def fits(config, batch, context, dtype, device, param_bytes, kind) -> tuple[bool, float]:
    """(fits, estimated GB): the cache (twice for concat: torch.cat holds the old and the new
    one while a compiled step runs) plus the weights, against the card's memory."""
    copies = 2 if kind == "concat" else 1
    need = copies * cache_bytes(config, batch, context, dtype) + param_bytes
    if device.type != "cuda":
        return True, need / 1e9
    return need < 0.95 * torch.cuda.get_device_properties(device).total_memory, need / 1e9


def sdpa_backend(variant: str, args) -> str | None:
    """The SDPA backend of an sdpa variant on CUDA ("auto": torch's own choice), None for the
    others and off CUDA (where torch chooses). With the static cache, whose attention takes a
    mask, "efficient" stands in for "flash" (which has no mask: no kernel would run)."""
    if VARIANTS[variant][0] != "sdpa":
        return None
    if args.device != "cuda":
        return "auto"
    if variant == "sdpa_auto":
        return "auto"
    if args.cache == "static" and args.sdpa_backend == "flash":
        return "efficient"   # the static cache masks its unfilled slots; flash takes no mask
    return args.sdpa_backend


def sdpa_context(variant: str, args):
    """The variant's SDPA backend, for its whole run: compilation (Dynamo bakes the backend that
    is enabled while it traces into the graph), the steps and the attention timed alone."""
    backend = sdpa_backend(variant, args)
    if backend in (None, "auto"):
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend]))


@contextlib.contextmanager
def decode_pruning(variant: str):
    """FOXCOMPILE_DECODE_PRUNING=1 for the whole run of fox_acp_prune (compilation, the steps and
    the attention timed alone), the variable as it was for the others."""
    if variant != "fox_acp_prune":
        yield
        return
    from foxcompile.kernels import DECODE_PRUNING_ENV

    before = os.environ.get(DECODE_PRUNING_ENV)
    os.environ[DECODE_PRUNING_ENV] = "1"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(DECODE_PRUNING_ENV, None)
        else:
            os.environ[DECODE_PRUNING_ENV] = before


def make_model(config: str, variant: str, args):
    attention, backend, epsilon = VARIANTS[variant]
    device, dtype = torch.device(args.device), train.DTYPES[args.dtype]
    torch.manual_seed(0)
    with device:
        model = build_model(config, attention=attention)
    if attention == "fox" and args.checkpoint:
        state = torch.load(args.checkpoint, map_location=device, weights_only=True)
        model.load_state_dict(state["model"])  # a train.py checkpoint of this config
    elif attention == "fox" and args.gate_init == "decay":
        train.set_gate_decay_times(model, *args.gate_range)
    model = model.to(dtype).eval()
    if backend == "eager":
        return model, model, model
    if backend == "fox_acp":
        train.import_foxcompile()
    kwargs = generate.compile_options(backend, "default", epsilon, args.fox_compiler)
    prefill = torch.compile(model, **kwargs)
    decode = prefill
    if args.cache == "static":
        decode = torch.compile(model, **generate.compile_options(
            backend, "reduce-overhead", epsilon, args.fox_compiler))
    return model, prefill, decode


# ---------------------------------------------------------------- filling the cache


_CORPUS = {}


def corpus_windows(batch: int, length: int, seed: int = 0) -> torch.Tensor:
    """(batch, length) bytes of train.py's corpus (train split), random windows."""
    if "train" not in _CORPUS:
        _CORPUS.update(train.load_corpus())
    data = _CORPUS["train"]
    generator = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(data) - length, (batch,), generator=generator)
    return torch.stack([data[s:s + length] for s in starts.tolist()]).long()


def prefill_cache(prefill, model, tokens: torch.Tensor, chunk: int, label: str,
                  max_length: int = 0) -> tuple:
    """Fill a FoXCache (preallocated for max_length tokens, or concatenating when 0) with
    `tokens` (B, N) in chunks; returns (cache, last logits, seconds)."""
    cache = model.new_cache(max_length=max_length)
    device = tokens.device
    n = tokens.shape[1]
    synchronize(device)
    start = time.perf_counter()
    next_report = 0.25
    with torch.no_grad():
        for begin in range(0, n, chunk):
            logits = prefill(tokens[:, begin:begin + chunk], cache=cache)[:, -1]
            done = min(n, begin + chunk)
            if n > 4 * chunk and done / n >= next_report:
                synchronize(device)
                print(f"  {label}: prefill {done}/{n} tokens, {time.perf_counter() - start:.1f} s",
                      flush=True)
                next_report += 0.25
    synchronize(device)
    return cache, logits, time.perf_counter() - start


def synthetic_cache(model, batch: int, n: int, device, gate_range=(2.0, 512.0), room: int = 0,
                    kind: str = "preallocated", seed: int = 0):
    """A cache of `kind` holding n tokens, without a prefill: k, v and lam as SYN70 draws them
    (head h's decay time log-spaced over gate_range), with room for `room` more tokens. The
    dynamic caches' lengths are marked dynamic, so that the first decoding step compiles the
    graph every later length uses."""
    c = model.config
    dtype = model.lm_head.weight.dtype
    g = torch.Generator(device=device).manual_seed(seed)
    if kind == "static":
        cache = FoXStaticCache(c, batch, n + room, dtype, device, layers=c.layers)
    else:
        cache = model.new_cache(max_length=n + room if kind == "preallocated" else 0)
    shortest, longest = gate_range
    times = torch.logspace(math.log10(shortest), math.log10(longest), c.heads, device=device)
    bias = -torch.log(torch.expm1(1.0 / times))
    for layer in range(c.layers):
        k, v = (torch.randn(batch, c.heads, n, c.head_dim, generator=g, device=device)
                for _ in range(2))
        k = k * torch.rsqrt(k.square().mean(-1, keepdim=True))
        lam = None
        if c.attention == "fox":
            noise = torch.randn(batch, c.heads, n, generator=g, device=device)
            lam = F.logsigmoid(bias[:, None] + SYN70_NOISE * noise).cumsum(-1)
        if kind == "concat":
            cache.k[layer], cache.v[layer], cache.lam[layer] = k.to(dtype), v.to(dtype), lam
        else:  # write into zeroed storage of n + room slots
            if kind == "preallocated":
                cache.k[layer], cache.v[layer] = (
                    torch.zeros(batch, c.heads, n + room, c.head_dim, dtype=dtype, device=device)
                    for _ in range(2))
                if lam is not None:
                    cache.lam[layer] = torch.zeros(batch, c.heads, n + room, device=device)
            cache.k[layer][:, :, :n] = k
            cache.v[layer][:, :, :n] = v
            if lam is not None:
                cache.lam[layer][:, :, :n] = lam
        if lam is not None:
            if kind == "static":
                cache.last[layer].copy_(lam[:, :, -1:])
            else:
                cache.last[layer] = lam[:, :, -1:].clone()
        if c.pro and kind != "static":
            cache.shift[layer] = (torch.zeros_like(k[:, :, :1], dtype=dtype),) * 2
        if kind != "static":
            for t in (cache.k[layer], cache.v[layer], cache.lam[layer]):
                if t is not None:
                    torch._dynamo.maybe_mark_dynamic(t, 2)
    if kind == "static":
        cache.position.fill_(n)
    elif kind == "preallocated":
        cache.filled = n
    return cache


def to_static(cache: FoXCache, model, max_length: int) -> FoXStaticCache:
    """A FoXStaticCache of max_length tokens with the contents of cache, emptying cache layer
    by layer (so that both are never whole in memory at once)."""
    first = cache.k[0]
    static = FoXStaticCache(model.config, first.shape[0], max_length, first.dtype, first.device,
                            layers=cache.layers)
    n = cache.length
    with torch.no_grad():
        for layer in range(cache.layers):
            static.k[layer][:, :, :n] = cache.k[layer][:, :, :n]
            static.v[layer][:, :, :n] = cache.v[layer][:, :, :n]
            if static.lam[layer] is not None:
                static.lam[layer][:, :, :n] = cache.lam[layer][:, :, :n]
                static.last[layer].copy_(cache.last[layer])
            if static.shift[layer] is not None:
                for mine, theirs in zip(static.shift[layer], cache.shift[layer]):
                    mine.copy_(theirs)
            cache.k[layer] = cache.v[layer] = cache.lam[layer] = None
        static.position.fill_(n)
    return static


# ---------------------------------------------------------------- measurements


def timed_ms(fn, device: torch.device, reps: int, drops: bool = False) -> float:
    """Median milliseconds of fn() over reps calls (after 3 untimed ones). drops: call fn(d)
    instead, d = 0 .. reps + 2 different for every call (attention_profile drops the last d keys:
    every call sees a new key count, as every decoding step does)."""
    call = (lambda i: fn(i)) if drops else (lambda i: fn())
    for i in range(3):
        call(reps + i)
    times = []
    for i in range(reps):
        if device.type == "cuda":
            begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            begin.record()
            call(i)
            end.record()
            end.synchronize()
            times.append(begin.elapsed_time(end))
        else:
            start = time.perf_counter()
            call(i)
            times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def decode_steps(decode, cache, token: torch.Tensor, steps: int, label: str | None = None
                 ) -> torch.Tensor:
    """`steps` greedy decoding steps from token (B,); returns the last token. label: each step
    inside torch.profiler.record_function(label) (for profile_steps)."""
    with torch.no_grad():
        for _ in range(steps):
            with (torch.profiler.record_function(label) if label else contextlib.nullcontext()):
                token = decode(token[:, None], cache=cache)[:, -1].argmax(-1)
    return token


# ---------------------------------------------------------------- compilation and profile


def dynamo_state(model) -> dict:
    """Dynamo's running totals: frames compiled, graph breaks, the times it gave up on a frame
    for the recompile limit (it then runs that code eagerly for good), and the cache entries
    (compiled graphs) of the model's forward."""
    from torch._dynamo.utils import counters

    gave_up = sum(n for reason, n in counters["unimplemented"].items()
                  if any(s in reason.lower() for s in ("recompile limit", "recompile_limit",
                                                       "cache_size_limit", "cache size limit")))
    try:  # private, present since torch 2.1
        from torch._dynamo.eval_frame import _debug_get_cache_entry_list
        graphs = len(_debug_get_cache_entry_list(type(model).forward.__code__))
    except Exception:
        graphs = None
    return {"compiles": counters["frames"]["total"],
            "graph_breaks": sum(counters["graph_break"].values()),
            "gave_up": gave_up, "graphs": graphs}


def compile_fields(before: dict, warm: dict, after: dict) -> dict:
    """A row's compilation fields from dynamo_state before the untimed steps, between them and
    the timed ones, and after the timed ones."""
    return {"compiles_warmup": warm["compiles"] - before["compiles"],
            "compiles_timed": after["compiles"] - warm["compiles"],
            "graph_breaks": after["graph_breaks"], "dynamo_gave_up": after["gave_up"] > 0,
            "graphs": after["graphs"]}


STEP_LABEL = "bench_decode step"
# host-side names of a CUDA launch and of a host-device synchronisation (runtime and driver API)
_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
             "cudaLaunchCooperativeKernel", "cudaGraphLaunch")
_SYNCS = ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize",
          "cuStreamSynchronize", "cuCtxSynchronize", "cuEventSynchronize")
# aten ops that read a device value back to the host (a synchronisation on a GPU)
_SYNC_OPS = ("aten::item", "aten::_local_scalar_dense", "aten::nonzero", "aten::is_nonzero",
             "aten::equal", "aten::allclose", "aten::unique", "aten::_unique2",
             "aten::masked_select")


def _span(event) -> tuple[float, float]:
    return event.time_range.start, event.time_range.end


def summarize_profile(events, steps: int, cuda: bool, top: int = 10) -> dict:
    """Per decoding step, from torch.profiler events of `steps` steps each wrapped in
    record_function(STEP_LABEL) (profile_steps): see the module docstring, "--profile"."""
    from torch.autograd import DeviceType

    cpu = [e for e in events if e.device_type == DeviceType.CPU]
    marks = [e for e in cpu if e.name == STEP_LABEL]
    if not marks:
        return {"error": "no step found in the profile"}
    spans = [(_span(m), m.thread) for m in marks]

    def in_steps(event) -> bool:
        start, end = _span(event)
        return any(event.thread == thread and a <= start and end <= b for (a, b), thread in spans)

    inside = [e for e in cpu if e.name != STEP_LABEL and in_steps(e)]

    def ancestors(event):
        parent = event.cpu_parent
        while parent is not None and parent.name != STEP_LABEL:
            yield parent
            parent = parent.cpu_parent

    outermost = [e for e in inside if e.name.startswith("aten::")
                 and not any(p.name.startswith("aten::") for p in ancestors(e))]
    in_op = [e for e in outermost if any(p.name == "foxcompile::attention" for p in ancestors(e))]
    op_calls = [e for e in inside if e.name == "foxcompile::attention"
                and not any(p.name == "foxcompile::attention" for p in ancestors(e))]
    per_step = 1.0 / len(marks)

    def total_ms(selected) -> float:
        return sum(e.time_range.elapsed_us() for e in selected) / 1e3 * per_step

    sync_ops = {}
    for e in inside:
        if e.name in _SYNC_OPS:
            sync_ops[e.name] = sync_ops.get(e.name, 0) + per_step
    summary = {
        "steps": len(marks),
        "host_ms_per_step": total_ms(marks),
        "guard_ms_per_step": total_ms([e for e in inside if e.name == "TorchDynamo Cache Lookup"]),
        "compiled_ms_per_step": total_ms([e for e in inside
                                          if e.name.startswith("Torch-Compiled Region")]),
        "compiled_regions_per_step": per_step * sum(
            1 for e in inside if e.name.startswith("Torch-Compiled Region")),
        "aten_ops_per_step": per_step * len(outermost),
        "op_calls_per_step": per_step * len(op_calls),
        "op_aten_ops_per_step": per_step * len(in_op),
        "op_host_ms_per_step": total_ms(op_calls),
        "sync_ops_per_step": sync_ops,
        "top_aten_ops": _top_counts(outermost, per_step, top),
        "top_host_self_ms": _top_self(inside, per_step, top),
    }
    if cuda:
        device = [e for e in events if e.device_type == DeviceType.CUDA]
        kernels = [e for e in device if not e.name.startswith(("Memcpy", "Memset"))]
        summary.update({
            "launches_per_step": per_step * sum(1 for e in inside if e.name in _LAUNCHES),
            "cuda_syncs_per_step": per_step * sum(1 for e in inside if e.name in _SYNCS),
            "kernels_per_step": per_step * len(kernels),
            "gpu_ms_per_step": total_ms(kernels),
            "memcpy_dtoh_per_step": per_step * sum(1 for e in device if "DtoH" in e.name),
            "top_kernels": _top_times(kernels, per_step, top),
        })
        # first step's start to the end of the last step's host work or GPU work, whichever is later
        first = min(_span(m)[0] for m in marks)
        last = max([_span(m)[1] for m in marks] + [_span(e)[1] for e in device])
        summary["wall_ms_per_step"] = (last - first) / 1e3 * per_step
        summary["gpu_busy_fraction"] = summary["gpu_ms_per_step"] / max(
            summary["wall_ms_per_step"], 1e-9)
    return _rounded(summary)


def _rounded(value, digits: int = 4):
    """Floats rounded (per-step means of counts read 2, not 1.9999999999999998)."""
    if isinstance(value, float):
        return round(value, digits)
    if isinstance(value, dict):
        return {k: _rounded(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_rounded(v, digits) for v in value)
    return value


def _top_counts(events, per_step: float, top: int) -> dict:
    counts = {}
    for e in events:
        counts[e.name] = counts.get(e.name, 0) + per_step
    return dict(sorted(counts.items(), key=lambda kv: -kv[1])[:top])


def _top_self(events, per_step: float, top: int) -> list:
    """[(name, self host ms per step, calls per step)] of the events whose own host time (not
    their children's) is the largest: launches, allocations, syncs, Python-heavy ops."""
    totals = {}
    for e in events:
        ms, n = totals.get(e.name, (0.0, 0))
        totals[e.name] = (ms + e.self_cpu_time_total / 1e3, n + 1)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [(name[:120], ms * per_step, n * per_step) for name, (ms, n) in ranked]


def _top_times(events, per_step: float, top: int) -> list:
    """[(name, ms per step, calls per step)] of the events taking the most time."""
    totals = {}
    for e in events:
        ms, n = totals.get(e.name, (0.0, 0))
        totals[e.name] = (ms + e.time_range.elapsed_us() / 1e3, n + 1)
    ranked = sorted(totals.items(), key=lambda kv: -kv[1][0])[:top]
    return [(name[:120], ms * per_step, n * per_step) for name, (ms, n) in ranked]


def profile_steps(decode, cache, token: torch.Tensor, steps: int, device: torch.device,
                  trace: str | None = None) -> tuple[torch.Tensor, dict]:
    """`steps` decoding steps under torch.profiler; returns (last token, summarize_profile)."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(ProfilerActivity.CUDA)
    synchronize(device)
    with profile(activities=activities) as prof:
        token = decode_steps(decode, cache, token, steps, label=STEP_LABEL)
        synchronize(device)
    if trace:
        Path(trace).parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(trace)
    return token, summarize_profile(prof.events(), steps, device.type == "cuda")


def capture_attention_inputs(model, cache: FoXCache, token: torch.Tensor) -> list:
    """One eager decoding step on `cache`; per layer (q, k, v, lam) as its attention saw them
    (q of the new token, k, v, lam of all keys as the cache handed them back; lam None for
    SDPA)."""
    queries, keys = {}, {}
    patched = []
    for block in model.blocks:
        attn = block.attn
        original = attn.attend_cached

        def capture(q, k, v, log_f, cache_, layer, _original=original):
            queries[layer] = q
            return _original(q, k, v, log_f, cache_, layer)

        attn.attend_cached = capture
        patched.append(attn)
    update = cache.update

    def capture_update(layer, k, v, lam):
        keys[layer] = update(layer, k, v, lam)
        return keys[layer]

    cache.update = capture_update
    try:
        with torch.no_grad():
            model(token[:, None], cache=cache)
    finally:
        for attn in patched:
            del attn.attend_cached
        del cache.update
    return [(queries[layer], *keys[layer]) for layer in range(len(model.blocks))]


def unread_fraction(start: torch.Tensor, n_keys: int, block_n: int) -> torch.Tensor:
    """Per (b, h) the fraction of the keys a decode call never reads; plan.unread_key_fraction
    where this checkout has it, else the same rule here (keys before the start block)."""
    from foxcompile.kernels import plan

    if hasattr(plan, "unread_key_fraction"):
        return plan.unread_key_fraction(start, n_keys, block_n)
    return (start[..., 0].double() * block_n / max(n_keys, 1)).clamp(max=1.0)


def selected_sdpa_backend(q, k, v) -> str | None:
    """The backend F.scaled_dot_product_attention picks for these inputs under the SDPA flags in
    force (FLASH_ATTENTION, CUDNN_ATTENTION, ...); None where torch cannot say."""
    try:
        from torch.nn.attention import SDPBackend

        return SDPBackend(torch._fused_sdp_choice(q, k, v)).name
    except Exception:
        return None


def attention_profile(model, captured: list, variant: str, device, reps: int) -> dict:
    """Attention alone per decoding step (summed over the layers) and, for fox variants, the
    fraction of each layer's and head's cache the kernel never reads (mean over the batch)."""
    attention, _, epsilon = VARIANTS[variant]
    scale = model.config.head_dim ** -0.5
    total, unread = 0.0, []
    for layer, (q, k, v, lam) in enumerate(captured):
        n_keys = k.shape[2]
        if attention == "sdpa":
            def run(drop=0, q=q, k=k, v=v, n=n_keys):
                n = max(1, n - drop)
                return F.scaled_dot_product_attention(q, k[:, :, :n], v[:, :, :n])
        else:
            from foxcompile.contract import Prune
            from foxcompile.kernels.plan import tile_sizes

            site = f"blocks.{layer}.attn (bench_decode)"

            def run(drop=0, q=q, k=k, v=v, lam=lam, site=site, n=n_keys):
                n = max(1, n - drop)
                return torch.ops.foxcompile.attention(q, k[:, :, :n], v[:, :, :n], lam[..., :n],
                                                      scale, epsilon, int(Prune.GUARDED), "bhtd",
                                                      site)

            with torch.no_grad():
                start = run()[2]
            block_n = tile_sizes(q.shape[-1])[1]
            unread.append(unread_fraction(start, k.shape[2], block_n).mean(0).tolist())
        with torch.no_grad():
            total += timed_ms(run, device, reps, drops=True)
    result = {"attention_ms_per_step": total}
    if attention == "sdpa":
        result["sdpa_selected"] = selected_sdpa_backend(*captured[0][:3])
    if unread:
        result["unread_fraction"] = unread  # [layer][head]
        flat = [f for row in unread for f in row]
        result["unread_fraction_mean"] = sum(flat) / len(flat)
        result["unread_fraction_min"], result["unread_fraction_max"] = min(flat), max(flat)
    return result


def site_labels(model, variant: str, args) -> dict | None:
    """What fox_acp rewrites in this model (foxcompile.explain on a short prompt: prefill,
    chunked prefill, decoding steps; on the static cache too with --cache static)."""
    if VARIANTS[variant][1] != "fox_acp":
        return None
    prompt = corpus_windows(1, 2 * args.explain_len).to(args.device)
    labels = {}
    for what, report in generate.explain_sites(model, prompt, static=args.cache == "static",
                                               concat=args.cache == "concat"):
        labels[what.split(":")[0]] = {"rewritten": [s.decay for s in report.sites],
                                      "declined": [d.reason for d in report.declined]}
    return labels


def measure_row(model, prefill, decode, config, batch, context, variant, args, tokens) -> dict:
    device = torch.device(args.device)
    label = f"{config} B={batch} T={context} {variant}"
    row = {}
    max_length = context + args.static_room
    if args.fill == "prefill":
        cache, logits, seconds = prefill_cache(prefill, model, tokens[:, :context],
                                               args.prefill_chunk, label,
                                               0 if args.cache == "concat" else max_length)
        row["prefill_s"] = seconds
        row["prefill_tokens_per_s"] = batch * context / seconds
        token = logits.argmax(-1)
    else:
        cache = synthetic_cache(model, batch, context, device, args.gate_range,
                                args.static_room, args.cache)
        # strides (1,), as argmax's result: a strided token would recompile the step
        token = tokens[:, context].clone(memory_format=torch.contiguous_format)
    if args.cache == "static" and args.fill == "prefill":
        cache = to_static(cache, model, max_length)
    before = dynamo_state(model)
    token = decode_steps(decode, cache, token, args.warmup_steps)
    warm = dynamo_state(model)
    synchronize(device)
    start = time.perf_counter()
    token = decode_steps(decode, cache, token, args.steps)
    synchronize(device)
    seconds = time.perf_counter() - start
    row.update(status="ok", step_ms=1e3 * seconds / args.steps,
               decode_tokens_per_s=batch * args.steps / seconds)
    row.update(compile_fields(before, warm, dynamo_state(model)))
    if row["compiles_timed"] or row["dynamo_gave_up"]:
        print(f"  warning: {label}: "
              + (f"{row['compiles_timed']} compilation(s) during the timed steps (their time is "
                 "in step_ms); " if row["compiles_timed"] else "")
              + ("Dynamo hit its recompile limit and runs the model eagerly"
                 if row["dynamo_gave_up"] else ""), flush=True)
    if args.profile:
        trace = None
        if args.profile_trace:
            trace = str(Path(args.profile_trace) / f"{config}_B{batch}_T{context}_{variant}_"
                        f"{args.cache}.json")
        token, row["profile"] = profile_steps(decode, cache, token, args.profile_steps, device,
                                              trace)
    if device.type == "cuda":
        row["peak_memory_gb"] = torch.cuda.max_memory_allocated(device) / 1e9
    if args.cache != "static" and variant in ATTENTION_PROFILED:
        captured = capture_attention_inputs(model, cache, token)
        row.update(attention_profile(model, captured, variant, device, args.attention_reps))
        row["attention_share"] = row["attention_ms_per_step"] / row["step_ms"]
        del captured
    del cache
    return row


def warm_up(model, prefill, decode, config, batch, variant, args, tokens):
    """Compile before the timed rows: a prefill of three chunks (the empty cache, a second
    chunk, and a third one, which Dynamo compiles with a dynamic cache length), then decoding
    steps (recording the CUDA graphs under reduce-overhead). A failure here (an OOM of a big
    batch, say) is only reported: the rows then compile on their own."""
    device = torch.device(args.device)
    context = 3 * args.prefill_chunk if args.fill == "prefill" else min(args.contexts)
    context = min(context, tokens.shape[1] - 1)
    start = time.perf_counter()
    try:
        # three or more decoding steps: the first length, then the dynamic one (and CUDA graphs)
        short = {"steps": 2, "warmup_steps": max(3, args.warmup_steps), "attention_reps": 1,
                 "profile": False}
        measure_row(model, prefill, decode, config, batch, context, variant,
                    argparse.Namespace(**{**vars(args), **short}), tokens)
        print(f"  warm-up (compilation) at {context} tokens: {time.perf_counter() - start:.1f} s",
              flush=True)
    except Exception as error:
        print(f"  warm-up at {context} tokens failed ({type(error).__name__}: "
              f"{str(error).strip().splitlines()[0][:200] if str(error).strip() else ''}); "
              "the rows compile on their own", flush=True)
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# ---------------------------------------------------------------- results


def row_key(row: dict, variant: str | None = None) -> tuple:
    return (row["device"], row["config"], row["batch"], row["context"], variant or row["variant"],
            row["cache"], row["fill"])


def add_ratios(rows: list[dict]):
    speed = {row_key(r): r["decode_tokens_per_s"] for r in rows if r["status"] == "ok"}
    for row in rows:
        for reference in ("fox_acp_dense", "sdpa"):
            base = speed.get(row_key(row, reference))
            ok = row["status"] == "ok"
            row[f"vs_{reference}"] = row["decode_tokens_per_s"] / base if ok and base else None


def format_table(rows: list[dict]) -> str:
    def number(value, spec):
        return "-" if value is None else format(value, spec)

    lines = [f"{'config':>6} {'T':>6} {'B':>3} {'variant':>13} {'cache':>7} {'tok/s':>9} "
             f"{'step ms':>8} {'attn ms':>8} {'attn %':>6} {'unread':>15} {'vs dense':>8} "
             f"{'vs sdpa':>7} {'prefill tok/s':>13} {'compiles':>8}  status"]
    for r in rows:
        unread = "-"
        if r.get("unread_fraction_mean") is not None:
            unread = (f"{r['unread_fraction_mean']:.0%} [{r['unread_fraction_min']:.0%}-"
                      f"{r['unread_fraction_max']:.0%}]")
        lines.append(
            f"{r['config']:>6} {r['context']:>6} {r['batch']:>3} {r['variant']:>13} "
            f"{r['cache']:>7} {number(r.get('decode_tokens_per_s'), ',.0f'):>9} "
            f"{number(r.get('step_ms'), '.2f'):>8} {number(r.get('attention_ms_per_step'), '.2f'):>8} "
            f"{number(r.get('attention_share'), '.0%'):>6} {unread:>15} "
            f"{number(r.get('vs_fox_acp_dense'), '.2f'):>8} {number(r.get('vs_sdpa'), '.2f'):>7} "
            f"{number(r.get('prefill_tokens_per_s'), ',.0f'):>13} "
            f"{number(r.get('compiles_timed'), 'd'):>8}  {r['status']}")
    return "\n".join(lines)


def format_profile(row: dict) -> str:
    """A row's --profile summary in a few lines."""
    p = row.get("profile")
    if not p or "error" in p:
        return f"    profile: {p.get('error') if p else 'none'}"
    lines = [f"    profile: host {p['host_ms_per_step']:.2f} ms/step (Dynamo guards "
             f"{p['guard_ms_per_step']:.3f}, compiled code {p['compiled_ms_per_step']:.2f}), "
             f"{p['compiled_regions_per_step']:g} compiled region(s)/step, "
             f"{p['aten_ops_per_step']:g} aten ops/step of which "
             f"{p['op_aten_ops_per_step']:g} inside {p['op_calls_per_step']:g} op calls "
             f"({p['op_host_ms_per_step']:.2f} ms), syncing ops {p['sync_ops_per_step'] or 0}"]
    if "kernels_per_step" in p:
        lines.append(f"    GPU: {p['kernels_per_step']:g} kernels/step, {p['gpu_ms_per_step']:.2f} "
                     f"ms busy of {p['wall_ms_per_step']:.2f} ms ({p['gpu_busy_fraction']:.0%}), "
                     f"{p['launches_per_step']:g} launches, {p['cuda_syncs_per_step']:g} syncs, "
                     f"{p['memcpy_dtoh_per_step']:g} DtoH copies per step")
        lines += [f"      {ms:8.3f} ms {n:6.1f}x  {name[:90]}" for name, ms, n in p["top_kernels"]]
    lines.append("    host, own time: " + ", ".join(f"{name[:40]} {ms:.2f} ms ({n:g}x)"
                                                   for name, ms, n in p["top_host_self_ms"][:6]))
    return "\n".join(lines)


def versions(device: torch.device) -> dict:
    info = train.versions()
    info["cuda"] = torch.version.cuda
    if device.type == "cuda":
        info["capability"] = ".".join(map(str, torch.cuda.get_device_capability(device)))
        info["cudnn"] = torch.backends.cudnn.version()  # >= 91501: SDPA tries cuDNN first on sm90
    return info


def write_results(path: Path, args, rows: list[dict]):
    device = torch.device(args.device)
    train.write_json(path, {
        "device": train.device_name(device), "versions": versions(device),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "environment": {k: v for k, v in __import__("os").environ.items()
                        if k.startswith(("FOXCOMPILE_", "TORCHINDUCTOR_", "TORCH_CUDNN_"))},
        "args": vars(args), "rows": rows})


# ---------------------------------------------------------------- the run


def run_variant(args, config: str, batch: int, variant: str, tokens, out: Path):
    """Compile `variant` of `config` and measure its rows (every context) into `out`."""
    device, dtype = torch.device(args.device), train.DTYPES[args.dtype]
    card = train.device_name(device)
    key = {"device": card, "config": config, "batch": batch, "variant": variant,
           "cache": args.cache, "fill": args.fill}
    if VARIANTS[variant][0] == "sdpa":
        key["sdpa_backend"] = sdpa_backend(variant, args)
    print(f"[{config} B={batch} {variant}, {args.cache} cache] compiling", flush=True)
    failed, labels, param_bytes = None, None, 0
    try:
        model, prefill, decode = make_model(config, variant, args)
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        labels = site_labels(model, variant, args) if args.explain_len else None
    except Exception as error:  # a failing variant must not lose the others
        traceback.print_exc()
        failed = ("OOM" if is_out_of_memory(error) else
                  f"error: {type(error).__name__}: {str(error).strip()[:300]}")
    if not failed:
        warm_up(model, prefill, decode, config, batch, variant, args, tokens)
    for context in sorted(args.contexts):
        row = {**key, "context": context}
        ok, need_gb = fits(config, batch, context, dtype, device, param_bytes,
                           args.cache)
        if failed:
            row["status"] = failed
        elif not ok and not args.try_all:
            row["status"] = f"too large (about {need_gb:.0f} GB)"
        else:
            try:
                row.update(measure_row(model, prefill, decode, config, batch,
                                       context, variant, args, tokens))
            except Exception as error:
                if is_out_of_memory(error):
                    row["status"] = failed = "OOM"
                else:
                    traceback.print_exc()
                    row["status"] = (f"error: {type(error).__name__}: "
                                     f"{str(error).strip()[:300]}")
            gc.collect()
            if device.type == "cuda":
                torch.cuda.empty_cache()
        if labels is not None:
            row["sites"] = labels
        merged = merge_rows(out, [row], key=row_key)
        add_ratios(merged)
        write_results(out, args, merged)
        print(format_table([r for r in merged if row_key(r) == row_key(row)])
              .splitlines()[1], flush=True)
        if "profile" in row:
            print(format_profile(row), flush=True)
    model = prefill = decode = None
    release_memory(device)


def run(args):
    device = torch.device(args.device)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    card = train.device_name(device)
    variants = list(dict.fromkeys(args.variants))  # as given: a run cut short keeps the first
    if any(VARIANTS[v][1] == "fox_acp" for v in variants):
        try:
            train.import_foxcompile()
        except RuntimeError as error:
            variants = [v for v in variants if VARIANTS[v][1] != "fox_acp"]
            print(f"skipping the fox_acp variants: {error}", flush=True)
    longest = max(args.contexts) + 1
    tokens_by_batch = {}
    for config in args.configs:
        for batch in args.batches:
            if batch not in tokens_by_batch:
                tokens_by_batch[batch] = corpus_windows(batch, longest).to(device)
            tokens = tokens_by_batch[batch]
            for variant in variants:
                with sdpa_context(variant, args), decode_pruning(variant):
                    run_variant(args, config, batch, variant, tokens, out)
    rows = [r for r in json.loads(out.read_text())["rows"] if r["device"] == card]
    info = versions(device)
    print(f"\n{card}, torch {info['torch']}, triton {info['triton']}\n{format_table(rows)}\n"
          f"wrote {out}")


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=train.HelpFormatter)
    parser.add_argument("--configs", "--config", nargs="+", choices=sorted(CONFIGS),
                        default=["125m", "760m"], help="model sizes")
    parser.add_argument("--contexts", "--context", nargs="+", type=int,
                        default=[4096, 16384, 65536, 131072], help="cached tokens before decoding")
    parser.add_argument("--batches", "--batch", nargs="+", type=int, default=[1, 16],
                        help="sequences decoded together")
    parser.add_argument("--variants", nargs="+", choices=list(VARIANTS),
                        default=list(DEFAULT_VARIANTS),
                        help="what to measure (in this order), see above")
    parser.add_argument("--sdpa-backend", choices=["auto", *sorted(SDPA_BACKENDS)],
                        default="flash",
                        help="SDPA backend of the sdpa and sdpa_eager variants on CUDA (auto: "
                             "torch's choice, cuDNN first on sm90 with cuDNN >= 9.15.1, which "
                             "builds a plan for every new key length, i.e. every decoding step; "
                             "the sdpa_auto variant always runs auto)")
    parser.add_argument("--cache", choices=CACHES, default="preallocated",
                        help="preallocated or concat (dynamic shapes, mode default), or static "
                             "(mode reduce-overhead), see above")
    parser.add_argument("--fill", choices=("synthetic", "prefill"), default="synthetic",
                        help="how the cache is filled, see above")
    parser.add_argument("--checkpoint", default=None,
                        help="a train.py checkpoint.pt of the (one) --configs model for the fox "
                             "variants, instead of --gate-init (use --fill prefill: a synthetic "
                             "cache has SYN70's gates)")
    parser.add_argument("--prefill-chunk", type=int, default=4096, help="tokens per prefill call")
    parser.add_argument("--warmup-steps", type=int, default=3, help="untimed decoding steps")
    parser.add_argument("--steps", type=int, default=16, help="timed decoding steps")
    parser.add_argument("--attention-reps", type=int, default=20,
                        help="timed repetitions of each layer's attention")
    parser.add_argument("--gate-init", choices=("decay", "default"), default="decay",
                        help="forget-gate biases: decay times log-spaced over --gate-range, or "
                             "nn.Linear's init (f about 0.5)")
    parser.add_argument("--gate-range", nargs=2, type=float, default=list(train.GATE_DECAY_RANGE),
                        metavar=("SHORTEST", "LONGEST"),
                        help="--gate-init decay: decay times (tokens) of the first and last head")
    parser.add_argument("--explain-len", type=int, default=256,
                        help="prompt of the explain() run that records each fox variant's site "
                             "labels (0: skip it)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cuda" if cuda else "cpu",
                        help="where to run (default: cuda when available, else cpu)")
    parser.add_argument("--dtype", choices=sorted(train.DTYPES), default=None,
                        help="weights and cache (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--fox-compiler", choices=train.FOX_COMPILERS, default="inductor",
                        help='"fox.compiler" of the fox_acp variants')
    parser.add_argument("--profile", action="store_true",
                        help="after the timed steps, --profile-steps more under torch.profiler: "
                             "where a step's time goes (the row's \"profile\", see above)")
    parser.add_argument("--profile-steps", type=int, default=3, help="steps profiled (--profile)")
    parser.add_argument("--profile-trace", default=None, metavar="DIR",
                        help="with --profile: write each row's Chrome trace into DIR")
    parser.add_argument("--try-all", action="store_true",
                        help="also try rows whose cache is estimated not to fit")
    parser.add_argument("--smoke", action="store_true",
                        help="a check that everything runs, on CPU: tiny, contexts 256 and 512, "
                             "batch 1 and 2, 1 warmup and 2 timed steps (unless given), through "
                             "aot_eager, into runs/bench_decode_smoke.json unless --out is given")
    parser.add_argument("--out", default=None,
                        help="results JSON, merged (default: benchmarks/results/"
                             "bench_decode_<card>_<date>.json)")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    if args.smoke:  # its sizes, except those given on the command line
        given = {a.split("=")[0] for a in (argv if argv is not None else sys.argv[1:])}
        smoke = {"configs": ["tiny"], "contexts": [256, 512], "batches": [1, 2],
                 "warmup_steps": 1, "steps": 2, "attention_reps": 2, "prefill_chunk": 128,
                 "explain_len": 64}
        aliases = {"configs": "--config", "contexts": "--context", "batches": "--batch"}
        for name, value in smoke.items():
            flags = {"--" + name.replace("_", "-"), aliases.get(name)}
            if not flags & given:
                setattr(args, name, value)
        args.device, args.fox_compiler = "cpu", "aot_eager"
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.out is None:
        if args.smoke:
            args.out = "runs/bench_decode_smoke.json"
        else:
            slug = "".join(c if c.isalnum() else "_" for c in
                           train.device_name(torch.device(args.device)).lower()).strip("_")
            date = datetime.date.today().isoformat()
            args.out = str(ROOT / "benchmarks" / "results" / f"bench_decode_{slug}_{date}.json")
    # slots of a preallocated or static cache after the context: the same for the warm-up and
    # the rows, so
    # that a row of the warm-up's context replays its graphs
    args.static_room = (max(3, args.warmup_steps) + args.steps + 2
                        + (args.profile_steps if args.profile else 0))
    if args.checkpoint and len(args.configs) != 1:
        parser.error("--checkpoint needs exactly one --configs (the checkpoint's)")
    if min(args.steps, args.warmup_steps, args.prefill_chunk, args.profile_steps) < 1:
        parser.error("--steps, --warmup-steps, --prefill-chunk and --profile-steps must be at "
                     "least 1")
    if min(args.contexts) < 1 or min(args.batches) < 1:
        parser.error("--contexts and --batches must be at least 1")
    if "inductor" in args.variants and args.fill == "prefill" and max(args.contexts) > 8192:
        print("note: the inductor variant materialises M x N scores in the prefill; with "
              "--fill prefill its long contexts will likely run out of memory (use --fill "
              "synthetic)", flush=True)
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:  # one thread: OpenMP regions of two threads stall for milliseconds (tens
        # of ms a step under --cache concat) whenever the machine's other core is busy
        torch.set_num_threads(1)
    run(args)


if __name__ == "__main__":
    main()
