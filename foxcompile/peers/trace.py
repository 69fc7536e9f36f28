"""What a peer call's polyfill asks while Dynamo traces it, and the op call it leaves in the graph.

The polyfills (fla.py, fox_authors.py) are traced by Dynamo in place of the peer's function. Two
small helpers run as plain Python *at trace time* (`torch._dynamo.assume_constant_result`: Dynamo
calls them and bakes the result in as a constant, with no guard):

- `call_site(kind)`: "" unless the frame is being compiled for a foxcompile backend (fox_acp, or
  explain()'s); otherwise a tag naming the peer and the user's call site (file:line, nn.Module
  path), read off Dynamo's translator stack. Every other backend ("inductor", "eager", export, a
  user's own) gets "", and the polyfill then calls the peer's function as Dynamo would have.
- `decline(tag, reason)`: records a call that fox_acp leaves to the peer, with its reason; the
  backend reports it (rewrite.drain_declines), once per call site and torch.compile() call.

`emit` is traced: the op's inputs (lam = cumsum of the per-step log gates, document ids) and one
foxcompile::attention call, dense (epsilon 0) until the backend sets epsilon and the pruning mode
(rewrite.py): the options and the decay proof are the backend's to decide.
"""
import functools
import json
import threading
import weakref

import torch
from torch._dynamo import assume_constant_result

from ..find.site import Decline
from ..contract import Prune, accumulator

TAG = "foxcompile.peer:"   # the op's `site` argument of a peer call, until the backend names it
NOTES = "\x1e"             # separates the call-site tag from the notes in that argument
_PACKAGE = __name__.split(".", 1)[0]   # "foxcompile"
_MAX_CHAIN = 16


def _is_fox_backend(fn) -> bool:
    """Whether a backend callable is, or wraps, one defined in the foxcompile package. Dynamo
    wraps the backend (WrapBackendDebug -> torch.compile's _TorchCompileWrapper -> fox_acp);
    functools.partial and __wrapped__ are followed too."""
    for _ in range(_MAX_CHAIN):
        if fn is None:
            return False
        target = fn.func if isinstance(fn, functools.partial) else fn
        module = getattr(target, "__module__", None) or ""
        if module == _PACKAGE or module.startswith(_PACKAGE + "."):
            return True
        fn = (getattr(fn, "_torchdynamo_orig_backend", None) or getattr(fn, "compiler_fn", None)
              or getattr(fn, "__wrapped__", None)
              or (fn.func if isinstance(fn, functools.partial) else None))
    return False


def _current_tx():
    """Dynamo's root instruction translator of the frame being traced, or None."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator
        return InstructionTranslator.current_tx()
    except Exception:  # not tracing (no translator on this thread), or torch moved it
        return None


def _location(summary) -> str:
    """"file.py:42 in forward", as find.graph.location writes it."""
    return f"{summary.filename.rsplit('/', 1)[-1]}:{summary.lineno} in {summary.name}"


def _module_path(stack: dict) -> str:
    """The nn.Module path ("model.layers.0.attn") of an nn_module_stack, as find.graph does."""
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    for prefix in ("L['self'].", "L['self']"):
        if path.startswith(prefix):
            path = path[len(prefix):]
    return path.replace("._modules['", ".").replace("']", "").strip(".")


def _user_frame(tx):
    """The innermost translator outside foxcompile: the frame that called the peer function
    (the polyfill's own frame, in foxcompile/peers/, is skipped)."""
    frame = tx.output.current_tx
    while frame is not None:
        filename = getattr(frame.f_code, "co_filename", "")
        if f"/{_PACKAGE}/peers/" not in filename.replace("\\", "/"):
            return frame
        frame = getattr(frame, "parent", None)
    return tx


@assume_constant_result
def call_site(kind: str) -> str:
    """At trace time: "" unless compiling for a foxcompile backend, else TAG + JSON of the peer's
    kind and the user's call site."""
    tx = _current_tx()
    if tx is None or not _is_fox_backend(getattr(tx.output, "compiler_fn", None)):
        return ""
    frame = _user_frame(tx)
    try:
        location = _location(frame.frame_summary())
    except Exception:
        location = "<unknown>"
    info = {"kind": kind, "location": location,
            "module": _module_path(getattr(frame, "nn_module_stack", None) or {})}
    return TAG + json.dumps(info)


def parse(site: str) -> tuple[dict, list[str]] | None:
    """The call-site info and notes of an op `site` argument written by a polyfill, or None."""
    if not isinstance(site, str) or not site.startswith(TAG):
        return None
    tag, _, notes = site.partition(NOTES)
    try:
        info = json.loads(tag[len(TAG):])
    except ValueError:
        return None
    return info, [n for n in notes.split(NOTES) if n]


# Declines recorded at trace time. Dynamo may trace a call more than once (it restarts a frame
# after a graph break, and traces the callee again as a frame of its own), so each (call site,
# reason) is kept once per torch.compile() call, i.e. per backend wrapper object.
_lock = threading.Lock()
_pending: list[tuple[int, Decline]] = []
_seen: dict[int, tuple[weakref.ref | None, set]] = {}


def _session(tx) -> int:
    """An id for the torch.compile() call being traced: Dynamo's wrapper of its backend."""
    backend = getattr(tx.output, "compiler_fn", None) if tx is not None else None
    key = id(backend)
    if key not in _seen:
        for stale in [k for k, (ref, _) in _seen.items() if ref is not None and ref() is None]:
            del _seen[stale]
        try:
            ref = weakref.ref(backend)
        except TypeError:
            ref = None
        _seen[key] = (ref, set())
    return key


@assume_constant_result
def decline(site: str, reason: str) -> bool:
    """At trace time: note that fox_acp leaves this peer call to the peer, and why."""
    parsed = parse(site)
    if parsed is None:
        return False
    info, _ = parsed
    record = Decline(info["location"], info["module"], f"{info['kind']}: {reason}")
    with _lock:
        session = _session(_current_tx())
        key = (record.location, record.module, record.reason)
        if key not in _seen[session][1]:
            _seen[session][1].add(key)
            _pending.append((session, record))
    return True


def drain_declines() -> list[Decline]:
    """The declines recorded while tracing for the current torch.compile() call (all pending ones
    when called outside a trace), each returned once."""
    tx = _current_tx()
    with _lock:
        session = _session(tx) if tx is not None else None
        mine = [d for s, d in _pending if session is None or s == session]
        _pending[:] = [(s, d) for s, d in _pending if not (session is None or s == session)]
    return mine


_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def common_decline(q, k, v, gate, gate_name: str, scale, scale_name: str) -> str | None:
    """Traced: the checks every peer shares, or None: q, k, v of rank 4 and the gate of rank 3,
    all tensors; the scale None or a Python number; q, k, v of one floating dtype the op takes;
    a floating gate."""
    if not all(isinstance(x, torch.Tensor) for x in (q, k, v, gate)):
        return f"q, k, v and {gate_name} must be tensors"
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4 or gate.dim() != 3:
        return f"expects q, k, v of rank 4 and {gate_name} of rank 3"
    if scale is not None and not isinstance(scale, (int, float)):
        return f"{scale_name} is not a Python number"
    if q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype:
        return "q, k, v must share one of float16, bfloat16, float32, float64"
    if not gate.is_floating_point():
        return f"{gate_name} is not floating point"
    return None


def emit(site: str, notes: str, q, k, v, log_fgate, scale: float, layout: str, doc=None):
    """Traced: foxcompile::attention on (q, k, v) in `layout`, with lam the cumulative sum of the
    per-step log forget gates `log_fgate` ((B, N, Hq) for "bthd", (B, Hq, N) for "bhtd") along the
    keys. Returns the output in q's layout, dtype and head count, with v's head dim."""
    gates = log_fgate.transpose(1, 2) if layout == "bthd" else log_fgate
    lam = torch.cumsum(gates.to(accumulator(q.dtype)).contiguous(), dim=-1)   # (B, Hq, N)
    result = torch.ops.foxcompile.attention.default(
        q, k, v, lam, scale=scale, epsilon=0.0, prune=int(Prune.OFF), layout=layout,
        site=site + notes, doc=doc)
    return result[0]
