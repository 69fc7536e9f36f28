"""explain(): what fox_acp would rewrite in a model, and why it leaves the rest alone."""
import contextlib
import copy
import inspect

import torch

from . import ddp
from .backend import rewrite_graphs
from .options import FoxOptions
from .report import Report

# explain() traces with a backend of its own. Dynamo caches compiled code per code object and
# guards every entry on its backend, so the user's compiled code stays valid beside ours; where
# torch.compile can keep our entries apart (isolate_recompiles), they do not even count towards
# the user's recompile limit.
_ISOLATE = "isolate_recompiles" in inspect.signature(torch.compile).parameters


def _room_to_recompile():
    """A context in which Dynamo recompiles however many entries the code already has (our
    backend is new on every call, so an earlier explain() or the user's own compiled code must
    not make Dynamo give up and run eagerly)."""
    config = torch._dynamo.config
    names = [n for n in ("recompile_limit", "cache_size_limit", "accumulated_recompile_limit",
                         "accumulated_cache_size_limit") if hasattr(config, n)]
    return config.patch({n: max(getattr(config, n), 1 << 16) for n in names}) if names \
        else contextlib.nullcontext()


@contextlib.contextmanager
def _dynamic_history_kept():
    """Dynamo remembers, per code object, which sizes and Python numbers changed between
    compilations, and traces them as dynamic next time (automatic dynamic, torch._dynamo.pgo).
    explain()'s own traces must neither read nor add to that history: the report is what a
    first compilation sees, and the user's next compilation is not made more dynamic by it."""
    pgo = getattr(torch._dynamo, "pgo", None)
    if pgo is None or not hasattr(pgo, "_CODE_STATE"):
        yield
        return
    saved = copy.deepcopy(pgo._CODE_STATE)
    pgo._CODE_STATE = None if saved is None else type(saved)(saved.default_factory)
    try:
        yield
    finally:
        pgo._CODE_STATE = saved


def explain(model_or_fn, *args, **kwargs) -> Report:
    """Trace model_or_fn(*args, **kwargs) once with Dynamo, match and rewrite as fox_acp would,
    run the rewritten graphs eagerly, and return the Report (`.sites`, `.declined`, `.graphs`).

    No side effects on compiled code: Dynamo is not reset, so the user's own compiled models and
    functions (fox_acp or any other backend) keep their compiled code and do not recompile, and
    Dynamo's record of which sizes and numbers changed between compilations is left as it was
    (each report is what a first compilation of these inputs sees)."""
    report = Report()

    def rewrite(gm, example_inputs, **kwargs):
        report.graphs.extend(rewrite_graphs(gm, example_inputs, FoxOptions()))

    def backend(gm, example_inputs):
        if not ddp.pieces_of_rewritten_graph():  # a DDP-wrapped model: rewritten whole (ddp.py)
            rewrite(gm, example_inputs)
        return gm.forward

    setattr(backend, ddp.REWRITE_ATTR, rewrite)

    compile_kwargs = {"isolate_recompiles": True} if _ISOLATE else {}
    with _room_to_recompile(), _dynamic_history_kept():
        torch.compile(model_or_fn, backend=backend, **compile_kwargs)(*args, **kwargs)
    return report
