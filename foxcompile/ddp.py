"""Whole attention sites under DistributedDataParallel.

When a model wrapped in DDP is compiled, Dynamo's DDPOptimizer (torch._dynamo.config.optimize_ddp,
on by default) splits each graph at the boundaries of DDP's gradient buckets and calls the backend
once per piece, so that the all-reduce of one bucket overlaps the backward of the next. A boundary
falls after any node that uses a parameter (counted backwards from the output), so a site with a
parameter between its q @ k^T and its softmax (a forget gate computed after the scores, a learnt
bias) is cut in two: each piece holds half of the attention, the matcher declines both halves,
and the attention runs dense, silently.

foxcompile wraps DDPOptimizer.compile_fn (installed when foxcompile is imported, which the fox_acp
entry point does): when the backend being split for is fox_acp (or explain's), the whole graph is
rewritten first, so that every site is one foxcompile.attention node that no split can cut. The
pieces are then compiled without matching again. The bucket boundaries, and so the overlap of
communication and computation, are DDPOptimizer's own.

A backend that wraps fox_acp in a function of its own hides it from this search: fox_acp then sees
only the pieces and warns once (see `warn_if_piece`).
"""
import functools
import logging
import threading

log = logging.getLogger("foxcompile")

# fox_acp and explain's backend carry this attribute: a function (gm, example_inputs, **kwargs)
# that rewrites gm in place as the backend would, given the kwargs it would be called with.
REWRITE_ATTR = "_foxcompile_rewrite_whole_graph"

_state = threading.local()
_warned = False


def pieces_of_rewritten_graph() -> bool:
    """True while DDPOptimizer compiles the pieces of a graph foxcompile has already rewritten
    whole (the backend must then compile only)."""
    return getattr(_state, "depth", 0) > 0


def _find_fox_backend(backend):
    """(rewrite, kwargs) when the compiler DDPOptimizer splits for leads to a foxcompile backend
    through Dynamo's and torch.compile's wrappers (WrapBackendDebug, _TorchCompileWrapper,
    functools.partial), with the keyword arguments those wrappers add (mode=, options=); else
    None."""
    kwargs, seen = {}, set()
    while backend is not None and id(backend) not in seen:
        seen.add(id(backend))
        rewrite = getattr(backend, REWRITE_ATTR, None)
        if callable(rewrite):
            return rewrite, kwargs
        if isinstance(backend, functools.partial):
            kwargs = {**backend.keywords, **kwargs}
            backend = backend.func
            continue
        extra = getattr(backend, "kwargs", None)  # torch._TorchCompileWrapper: mode, options
        if isinstance(extra, dict):
            kwargs = {**extra, **kwargs}
        backend = next((getattr(backend, name) for name in
                        ("_torchdynamo_orig_backend", "compiler_fn", "__wrapped__")
                        if getattr(backend, name, None) is not None), None)
    return None


def install() -> bool:
    """Wrap DDPOptimizer.compile_fn (once); False when this torch has no DDPOptimizer to wrap."""
    try:
        from torch._dynamo.backends.distributed import DDPOptimizer
    except Exception:  # noqa: BLE001 - a torch without it (or without torch.distributed)
        return False
    original = getattr(DDPOptimizer, "compile_fn", None)
    if original is None:
        return False
    if getattr(original, "_foxcompile", False):
        return True

    @functools.wraps(original)
    def compile_fn(self, gm, example_inputs, **compiler_configs):
        found = _find_fox_backend(getattr(self, "backend_compile_fn", None))
        if found is None:
            return original(self, gm, example_inputs, **compiler_configs)
        rewrite, kwargs = found
        try:
            rewrite(gm, example_inputs, **kwargs)
        except Exception as error:  # noqa: BLE001 - never fail a compile (design.md)
            log.warning("rewriting a graph whole before DDPOptimizer splits it failed (%r): its "
                        "pieces are matched one by one, and a site cut by the split runs dense",
                        error)
            return original(self, gm, example_inputs, **compiler_configs)
        _state.depth = getattr(_state, "depth", 0) + 1
        try:
            return original(self, gm, example_inputs, **compiler_configs)
        finally:
            _state.depth -= 1

    compile_fn._foxcompile = True
    compile_fn._foxcompile_original = original
    DDPOptimizer.compile_fn = compile_fn
    return True


def uninstall() -> None:
    """Undo install() (tests use it to show what happens without it)."""
    try:
        from torch._dynamo.backends.distributed import DDPOptimizer
    except Exception:  # noqa: BLE001
        return
    original = getattr(DDPOptimizer.compile_fn, "_foxcompile_original", None)
    if original is not None:
        DDPOptimizer.compile_fn = original


def is_ddp_piece(gm) -> bool:
    """Whether gm is one piece of a graph split by DDPOptimizer (which marks each piece with its
    reason before calling the backend)."""
    reason = getattr(gm, "compile_subgraph_reason", None)
    return "DDPOptimizer" in str(getattr(reason, "reason", reason or ""))


def warn_if_piece(gm) -> None:
    """Warn once when fox_acp compiles a DDPOptimizer piece of a graph it did not see whole."""
    global _warned
    if _warned or pieces_of_rewritten_graph() or not is_ddp_piece(gm):
        return
    _warned = True
    log.warning(
        "fox_acp is compiling one piece of a graph that DDPOptimizer split at DDP's gradient-bucket "
        "boundaries, without having seen the whole graph (fox_acp wrapped in another backend "
        "function?): an attention site cut by the split runs dense. Pass fox_acp itself as the "
        "backend, or set torch._dynamo.config.optimize_ddp = False.")
