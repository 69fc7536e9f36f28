"""Generate bytes with the FoX language model (fox_lm.py) and a KV cache, compiled with fox_acp.

The prompt is prefilled into the cache (whole, or in --prefill-chunk pieces: a chunked prefill
attends M new tokens over N > M keys), then each step decodes one token per sequence (M = 1),
greedily (--temperature 0) or by sampling. Prefill and decode are timed separately, after an
untimed warm-up generation that compiles their graphs.

    python examples/generate.py                                   # tiny, CPU: fox_acp, then --check
    python examples/generate.py --backend eager --new-tokens 64
    python examples/generate.py --explain --stats --check --prefill-chunk 32
    python examples/generate.py --config 125m --device cuda --prompt-len 16384 --new-tokens 256 \\
        --prefill-chunk 4096 --gate-init decay --explain --stats --check
    python examples/generate.py --config 125m --device cuda --static-cache --mode reduce-overhead
    python examples/generate.py --checkpoint runs/125m-acp/checkpoint.pt --prompt "def main("

Caches (fox_lm.FoXCache, fox_lm.FoXStaticCache; docs/generation.md): by default a cache with
dynamic shapes preallocated for prompt + new tokens and written in place (gpt-fast style);
--concat-cache concatenates instead (torch.cat, like Hugging Face's DynamicCache). fox_acp
rewrites the prefill (decay `proven`), chunked-prefill and decode (`guarded`: lam comes back from
the cache, an input) sites of both. --static-cache prefills with the dynamic cache, then copies it
into a static one of prompt + new tokens (shapes fixed, for --mode reduce-overhead, CUDA graphs);
fox_acp rewrites and prunes its decode sites too (`guarded`, with a key mask on the unfilled
slots, which the plan reads forward-filled: docs/generation.md).

--check compares the logits of every generated position with eager PyTorch's on the same tokens
(teacher-forced through the same cache steps) and the greedy tokens with eager's own; it exits
non-zero on a mismatch beyond the tolerance.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

import train  # noqa: E402  (the corpus, gate init and device helpers; no foxcompile import)
from fox_lm import CONFIGS, FoXConfig, FoXLM, FoXStaticCache, build_model  # noqa: E402

BACKENDS = ("fox_acp", "inductor", "eager")
MODES = ("default", "reduce-overhead")
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}
# --check: largest |compiled - eager| logit over the largest |eager| logit of the step
CHECK_TOLERANCE = {torch.float32: 1e-4, torch.bfloat16: 5e-2}


# ---------------------------------------------------------------- model and prompt


def load_model(args) -> FoXLM:
    """The model of --checkpoint (train.py's checkpoint.pt), or a fresh one of --config, on
    --device in --dtype, in eval mode."""
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    if args.checkpoint:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        known = {f.name for f in fields(FoXConfig)}
        config = FoXConfig(**{k: v for k, v in state["config"].items() if k in known})
        model = FoXLM(config)
        model.load_state_dict(state["model"])
    else:
        model = build_model(args.config, pro=args.pro, attention=args.attention)
    if args.gate_init == "decay" and model.config.attention == "fox":
        train.set_gate_decay_times(model, *train.GATE_DECAY_RANGE)
    return model.to(device=device, dtype=dtype).eval()


def prompt_tokens(args, generator: torch.Generator | None = None) -> torch.Tensor:
    """(batch, prompt_len) int64 bytes on --device: --prompt (repeated to --prompt-len when
    shorter), or else windows of the eval split of train.py's corpus, one per sequence."""
    if args.prompt is not None:
        data = torch.tensor(list(args.prompt.encode()), dtype=torch.long)
        if len(data) == 0:
            raise SystemExit("--prompt is empty")
        length = args.prompt_len or len(data)
        data = data.repeat(math.ceil(length / len(data)))[:length]
        tokens = data.expand(args.batch, -1)
    else:
        root = train.stdlib_root()
        files = train.split_files(root)["eval"]
        needed, chunks = args.batch * args.prompt_len, []
        for name in files:
            chunks.append((root / name).read_bytes())
            if sum(map(len, chunks)) >= needed:
                break
        data = torch.tensor(list(b"".join(chunks)), dtype=torch.long)
        data = data.repeat(math.ceil(needed / len(data)))[:needed]
        tokens = data.view(args.batch, args.prompt_len)
    return tokens.contiguous().to(args.device)


# ---------------------------------------------------------------- compilation


def compile_options(backend: str, mode: str, epsilon: float, fox_compiler: str = "inductor",
                    debug=False) -> dict:
    """torch.compile keyword arguments. torch.compile takes `mode` or `options`, not both, so
    for fox_acp the mode's Inductor settings travel in options (fox_acp passes every option
    without a `fox.` prefix to Inductor)."""
    if backend == "inductor":
        return {"mode": None if mode == "default" else mode}
    from torch._inductor import list_mode_options

    options = {"fox.epsilon": epsilon, "fox.compiler": fox_compiler, "fox.debug": debug}
    options.update(list_mode_options(mode) if mode != "default" else {})
    return {"backend": "fox_acp", "options": options}


def compiled_steps(model: FoXLM, args):
    """(prefill, decode): the callables that run the model with a cache. Under --mode
    reduce-overhead only the decode is CUDA-graphed; the prefill compiles with mode default (its
    shapes change with the prompt, and a graph per shape would only cost memory)."""
    if args.backend == "eager":
        return model, model
    if args.backend == "fox_acp":
        train.import_foxcompile()
    prefill = torch.compile(model, **compile_options(args.backend, "default", args.epsilon,
                                                     args.fox_compiler, args.debug))
    if args.mode == "default":
        return prefill, prefill
    decode = torch.compile(model, **compile_options(args.backend, args.mode, args.epsilon,
                                                    args.fox_compiler, args.debug))
    return prefill, decode


# ---------------------------------------------------------------- generation


def synchronize(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sample(logits: torch.Tensor, temperature: float, top_k: int,
           generator: torch.Generator | None) -> torch.Tensor:
    """Next tokens (B,) from logits (B, vocab): argmax at temperature 0, else a draw from the
    softmax of logits / temperature over the top_k largest (all when top_k is 0)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    return torch.multinomial(F.softmax(logits, dim=-1), 1, generator=generator).squeeze(-1)


@dataclass
class Generation:
    tokens: torch.Tensor                     # (B, new) generated tokens
    logits: list = field(default_factory=list)  # (B, vocab) fp32 per generated token
    prefill_s: float = 0.0
    decode_s: float = 0.0
    cache: object = None


@torch.no_grad()
def generate(model: FoXLM, prompt: torch.Tensor, new_tokens: int, *, prefill=None, decode=None,
             prefill_chunk: int = 0, static: bool | FoXStaticCache = False,
             concat: bool = False, forced: torch.Tensor | None = None,
             temperature: float = 0.0, top_k: int = 0, generator=None,
             keep_logits: bool = True) -> Generation:
    """Prefill `prompt` (B, P) into a new cache (in pieces of prefill_chunk tokens when > 0) and
    decode new_tokens - 1 more steps, one token per sequence each. prefill and decode: the
    callables to run (compiled models; default: the model itself). static: decode on a static
    cache filled from the prefilled one: True for a new FoXStaticCache of P + new_tokens
    tokens, or a FoXStaticCache to reuse (its tensors keep their addresses, so CUDA graphs
    recorded on it replay). concat: a concatenating cache instead of one preallocated for
    P + new_tokens. forced (B, new): feed these tokens instead of the sampled ones (teacher
    forcing, for comparisons)."""
    prefill = model if prefill is None else prefill
    decode = model if decode is None else decode
    device = prompt.device
    cache = model.new_cache(max_length=0 if concat else prompt.shape[1] + new_tokens)
    chunk = prefill_chunk or prompt.shape[1]
    synchronize(device)
    start = time.perf_counter()
    for begin in range(0, prompt.shape[1], chunk):
        logits = prefill(prompt[:, begin:begin + chunk], cache=cache)
    if isinstance(static, FoXStaticCache):
        cache = static.load(cache)
    elif static:
        cache = FoXStaticCache.from_cache(cache, model.config, prompt.shape[1] + new_tokens)
    last = logits[:, -1].float()
    synchronize(device)
    prefill_s = time.perf_counter() - start
    result = Generation(tokens=prompt.new_empty(prompt.shape[0], new_tokens), prefill_s=prefill_s)
    start = time.perf_counter()
    for step in range(new_tokens):
        if keep_logits:
            result.logits.append(last.clone())
        token = sample(last, temperature, top_k, generator) if forced is None else forced[:, step]
        result.tokens[:, step] = token
        if step + 1 < new_tokens:
            # last is read before the next call: a CUDA-graph replay overwrites its output
            last = decode(token[:, None], cache=cache)[:, -1].float()
    synchronize(device)
    result.decode_s = time.perf_counter() - start
    result.cache = cache
    return result


# ---------------------------------------------------------------- reports


def explain_sites(model: FoXLM, prompt: torch.Tensor, static: bool = False,
                  concat: bool = False) -> list[tuple]:
    """foxcompile.explain of the prefill (first half of the prompt), the chunked prefill (second
    half: M < N), and two decoding steps (the second one has the dynamic cache length), on a
    cache of their own (preallocated, or concatenating with concat=True); with static=True also
    two decoding steps on a static cache. Returns [(what, report)]."""
    import foxcompile

    reports = []
    with torch.no_grad():
        cache = model.new_cache(max_length=0 if concat else prompt.shape[1] + 2)
        half = max(1, prompt.shape[1] // 2)
        token = prompt[:, -1:]
        steps = [("prefill", prompt[:, :half])]
        if half < prompt.shape[1]:
            steps.append(("chunked prefill", prompt[:, half:]))
        steps += [("decode", token), ("decode, next step", token)]
        for what, tokens in steps:
            reports.append((f"{what}: M={tokens.shape[1]} new, N={cache.length + tokens.shape[1]}"
                            " keys", foxcompile.explain(model, tokens, cache=cache)))
        if static:
            cache = FoXStaticCache.from_cache(cache, model.config, cache.length + 2)
            for what in ("static-cache decode", "static-cache decode, next step"):
                reports.append((f"{what}: M=1 new, {cache.max_length} slots",
                                foxcompile.explain(model, token, cache=cache)))
    return reports


def site_labels(report) -> str:
    """'2 rewritten (guarded x2), 0 declined' for a foxcompile Report."""
    counts = {}
    for site in report.sites:
        counts[site.decay] = counts.get(site.decay, 0) + 1
    labels = ", ".join(f"{label} x{n}" for label, n in counts.items())
    return (f"{len(report.sites)} rewritten{f' ({labels})' if labels else ''}, "
            f"{len(report.declined)} declined")


def check_against_eager(model: FoXLM, prompt: torch.Tensor, got: Generation, args) -> list[str]:
    """Problems found comparing a compiled generation with eager PyTorch: the logits of every
    generated position on the same tokens (teacher-forced), and, when greedy, the tokens eager
    generates by itself. Prints what it compares."""
    dtype = DTYPES[args.dtype]
    tolerance = CHECK_TOLERANCE[dtype]
    eager = generate(model, prompt, got.tokens.shape[1], prefill_chunk=args.prefill_chunk,
                     static=args.static_cache, concat=args.concat_cache, forced=got.tokens)
    worst = max(((a - b).abs().max() / b.abs().max().clamp(min=1e-6)).item()
                for a, b in zip(got.logits, eager.logits))
    print(f"check: logits of {len(got.logits)} generated positions against eager on the same "
          f"tokens: max |compiled - eager| / max |eager| = {worst:.2e} (tolerance {tolerance:g})")
    problems = [] if worst <= tolerance else [f"logits differ from eager by {worst:.2e} > "
                                             f"{tolerance:g} of the largest logit"]
    if args.temperature <= 0:
        own = generate(model, prompt, got.tokens.shape[1], prefill_chunk=args.prefill_chunk,
                       static=args.static_cache, concat=args.concat_cache, keep_logits=False)
        same = (own.tokens == got.tokens).all(dim=0)
        agree = int(same.long().cumprod(0).sum())
        print(f"check: greedy tokens agree with eager's for the first {agree} of "
              f"{same.numel()} steps (all sequences)")
        if agree < same.numel() and dtype == torch.float32:
            problems.append(f"greedy tokens differ from eager's at step {agree}")
    return problems


def show_text(prompt: torch.Tensor, tokens: torch.Tensor, width: int = 200):
    def text(t):
        return bytes(t.tolist()).decode("utf-8", errors="replace")

    print(f"prompt (last {min(width, prompt.shape[1])} of {prompt.shape[1]} bytes, sequence 0): "
          f"{text(prompt[0, -width:])!r}")
    print(f"generated ({tokens.shape[1]} bytes, sequence 0): {text(tokens[0, :width])!r}")


# ---------------------------------------------------------------- command line


def parse_args(argv=None):
    cuda = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=train.HelpFormatter)
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="model size")
    parser.add_argument("--pro", action="store_true", help="the FoX Pro block")
    parser.add_argument("--attention", choices=("fox", "sdpa"), default="fox",
                        help="forgetting attention, or plain causal SDPA (the baseline)")
    parser.add_argument("--checkpoint", default=None,
                        help="a train.py checkpoint.pt to load (its config replaces --config)")
    parser.add_argument("--gate-init", choices=("default", "decay"), default="default",
                        help="forget-gate biases of a fresh model: nn.Linear's (f about 0.5: "
                             "forgets within tens of tokens) or decay times log-spaced over "
                             "[2, 512] tokens (bench_train.py's SYN70-like gates)")
    parser.add_argument("--device", default="cuda" if cuda else "cpu", choices=("cpu", "cuda"),
                        help="cuda when available, else cpu")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="weights and cache (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--prompt", default=None,
                        help="prompt text (bytes; repeated to --prompt-len if that is longer); "
                             "default: windows of the stdlib corpus's eval split")
    parser.add_argument("--prompt-len", type=int, default=None,
                        help="prompt tokens (default: 64, or the length of --prompt)")
    parser.add_argument("--new-tokens", type=int, default=32, help="tokens to generate")
    parser.add_argument("--batch", type=int, default=1, help="sequences generated together")
    parser.add_argument("--prefill-chunk", type=int, default=0,
                        help="prefill the prompt in pieces of this many tokens (0: at once)")
    parser.add_argument("--backend", choices=BACKENDS, default="fox_acp",
                        help="fox_acp, plain Inductor, or eager (no compilation)")
    parser.add_argument("--mode", choices=MODES, default="default",
                        help="torch.compile mode of the decode steps (reduce-overhead: CUDA "
                             "graphs; use it with --static-cache)")
    parser.add_argument("--static-cache", action="store_true",
                        help="decode on a static cache (fixed shapes, for CUDA graphs)")
    parser.add_argument("--concat-cache", action="store_true",
                        help="a cache that concatenates (torch.cat, Hugging Face's DynamicCache) "
                             "instead of one preallocated and written in place")
    parser.add_argument("--epsilon", type=float, default=train.DEFAULT_EPSILON,
                        help="fox_acp's pruning tolerance (0: pruning off; default e^-10)")
    parser.add_argument("--decode-pruning", action="store_true",
                        help="let fox_acp's decoding steps prune too (FOXCOMPILE_DECODE_PRUNING=1; "
                             "by default they run dense, which measured faster: "
                             "docs/generation.md)")
    parser.add_argument("--fox-compiler", choices=train.FOX_COMPILERS, default="inductor",
                        help='what runs the graph fox_acp rewrote ("fox.compiler"); aot_eager '
                             "skips Inductor's compilation (quick CPU runs)")
    parser.add_argument("--temperature", type=float, default=0.0, help="0: greedy")
    parser.add_argument("--top-k", type=int, default=0, help="sample from the k most likely")
    parser.add_argument("--seed", type=int, default=0, help="weights of a fresh model, sampling")
    parser.add_argument("--explain", action="store_true",
                        help="print foxcompile.explain for the prefill, chunked prefill and "
                             "decode sites")
    parser.add_argument("--stats", action="store_true",
                        help="print foxcompile.pruning_stats of the timed prefill and decode "
                             "(recording adds a little to their time; nothing is recorded under "
                             "CUDA-graph replay)")
    parser.add_argument("--debug", action="store_true",
                        help='fox_acp\'s debug log ("fox.debug": every rewrite and decline)')
    parser.add_argument("--check", action="store_true",
                        help="compare the logits and greedy tokens with eager PyTorch")
    args = parser.parse_args(argv)
    if args.device == "cuda" and not cuda:
        parser.error("--device cuda, but torch.cuda.is_available() is False")
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    if args.prompt_len is None:
        args.prompt_len = len(args.prompt.encode()) if args.prompt else 64
    for name in ("prompt_len", "new_tokens", "batch"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.prefill_chunk < 0 or args.top_k < 0:
        parser.error("--prefill-chunk and --top-k must not be negative")
    if not 0 <= args.epsilon < 1:
        parser.error("--epsilon must be in [0, 1)")
    if (args.explain or args.stats or args.decode_pruning) and args.backend != "fox_acp":
        parser.error("--explain, --stats and --decode-pruning are about what fox_acp does: use "
                     "--backend fox_acp")
    if args.mode == "reduce-overhead" and not args.static_cache:
        print("note: --mode reduce-overhead without --static-cache: every decoding step has a "
              "new cache length, so CUDA graphs are recorded anew at every step", flush=True)
    return args


def cache_name(args) -> str:
    dynamic = "concatenating" if args.concat_cache else "preallocated"
    return f"static (prefilled in a {dynamic} one)" if args.static_cache else dynamic


def main(argv=None):
    args = parse_args(argv)
    if args.decode_pruning:   # read by foxcompile at each call (foxcompile.kernels.may_prune)
        os.environ["FOXCOMPILE_DECODE_PRUNING"] = "1"
    device = torch.device(args.device)
    model = load_model(args)
    prompt = prompt_tokens(args)
    config = model.config
    print(f"{args.config if not args.checkpoint else args.checkpoint}: {config.layers} layers, "
          f"{config.heads} heads x {config.head_dim}, attention {config.attention}"
          f"{', Pro' if config.pro else ''}; {args.backend}"
          f"{f' (epsilon {args.epsilon:.3g})' if args.backend == 'fox_acp' else ''}"
          f"{', decoding steps prune' if args.decode_pruning else ''}, mode "
          f"{args.mode}, {cache_name(args)} cache, {args.dtype} on "
          f"{train.device_name(device)}; batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens", flush=True)

    if args.explain:
        for what, report in explain_sites(model, prompt, args.static_cache, args.concat_cache):
            print(f"\n-- {what}: {site_labels(report)}\n{report}")
        print()

    prefill, decode = compiled_steps(model, args)
    static = False
    if args.static_cache:  # one cache for the warm-up and the timed run: the same addresses
        static = model.new_cache(static=True, batch=args.batch,
                                 max_length=args.prompt_len + args.new_tokens)
    options = dict(prefill=prefill, decode=decode, prefill_chunk=args.prefill_chunk,
                   static=static, concat=args.concat_cache, temperature=args.temperature,
                   top_k=args.top_k)
    start = time.perf_counter()
    # warm-up: compiles the prefill, the first decoding step and the step with a dynamic
    # length (and records the CUDA graphs under reduce-overhead)
    generate(model, prompt, min(args.new_tokens, 4), keep_logits=False, **options)
    print(f"warm-up (compilation) {time.perf_counter() - start:.1f} s", flush=True)

    sampler = torch.Generator(device=device).manual_seed(args.seed)
    stats = {}
    if args.stats:
        import foxcompile

        stats = {"prefill": foxcompile.pruning_stats(), "decode": foxcompile.pruning_stats()}
    result = _timed(model, prompt, args, options, sampler, stats)
    tokens_in = args.batch * args.prompt_len
    tokens_out = args.batch * (args.new_tokens - 1)
    print(f"prefill: {tokens_in} tokens in {result.prefill_s * 1e3:.1f} ms = "
          f"{tokens_in / result.prefill_s:,.0f} tokens/s")
    if tokens_out:
        print(f"decode:  {tokens_out} tokens in {result.decode_s * 1e3:.1f} ms = "
              f"{tokens_out / result.decode_s:,.1f} tokens/s "
              f"({result.decode_s / (args.new_tokens - 1) * 1e3:.2f} ms per step of "
              f"{args.batch} token(s))")
    show_text(prompt, result.tokens)
    for what, recorded in stats.items():
        print(f"\npruning during the {what}:\n{recorded}")

    if args.check:
        problems = check_against_eager(model, prompt, result, args) if args.backend != "eager" \
            else []
        if problems:
            raise SystemExit("check failed: " + "; ".join(problems))
        print("check: ok" if args.backend != "eager" else "check: nothing to compare (eager)")


def _timed(model, prompt, args, options, sampler, stats) -> Generation:
    """The timed generation; with --stats, pruning recorded for the prefill and the decode
    apart (the prefill's and decode's callables are wrapped to enter their recorder)."""
    if not stats:
        return generate(model, prompt, args.new_tokens, generator=sampler, **options)

    def recording(step, recorder):
        def run(*a, **k):
            with recorder:
                return step(*a, **k)
        return run

    options = dict(options, prefill=recording(options["prefill"], stats["prefill"]),
                   decode=recording(options["decode"], stats["decode"]))
    return generate(model, prompt, args.new_tokens, generator=sampler, **options)


if __name__ == "__main__":
    main()
