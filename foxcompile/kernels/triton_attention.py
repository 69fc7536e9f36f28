"""Triton engine of forgetting attention with ACP: same interface as reference.py.

    forward(q, k, v, lam, plan, scale, out, doc=None) -> lse
    backward(grad_out, q, k, v, lam, out, lse, plan, scale, dq, dk, dv, doc=None) -> dlam
    unsupported_reason(q, k, v) -> str | None
    max_norm(x, acc) -> (B, H)     # the plan's max_t ||x[b, h, t]|| (make_plan's norm=)
    score_bounds(q, k, v, scale, acc, check_v) -> (bound, checked)   # plan.score_bound and
                                   # value_checked_bound, two launches on CUDA

Shapes and semantics as in plan.py / reference.py: q (B, Hq, M, D), k and v (B, Hk, N, D),
lam (B, Hq, N) float32, any strides (views of (B, T, H, D) or (B, H, T, D) tensors are read in
place); out, dq, dk, dv are written in place through their strides; lse (B, Hq, M) float32 is the
natural-log normaliser; dlam (B, Hq, N) float32 = (row sums) - (column sums) of dS. doc (B, N)
int32/int64 document ids of packed sequences (any strides), or None.

Triton itself is imported only when a kernel is launched (or unsupported_reason is asked about a
CUDA tensor). CUDA tensors run the compiled kernels; CPU tensors run the same kernels under
Triton's interpreter when TRITON_INTERPRET=1 is set (operands are cast to float32 there, because
bf16 dots are broken in the interpreter). The kernel module is imported normally; Triton fixes
compiled or interpreted when a function is decorated, so the other mode gets twins of the same
functions (_kernels, docs/kernels.md "Interpreter (CPU) mode").

float32 inputs: the matrix products follow torch.get_float32_matmul_precision(), as torch's own
matmuls do: exact float32 ("ieee") under the default "highest", TF32 on the tensor cores (10-bit
mantissa, float32 accumulation) under "high" or "medium". FOXCOMPILE_FP32_DOT=ieee|tf32
overrides it. The softmax, the normaliser and every accumulator are float32 for every input dtype.

Streamed tiles are read through TMA tensor descriptors where the launch table says so (sm90 at
D_PAD = 128, and under the interpreter) and the tensors allow it, else through pointers;
FOXCOMPILE_TMA=0|1|<kernels> overrides the choice (docs/kernels.md, "Loads").
"""
import math
import os
import threading
import types

import torch

from ..contract import MAX_HEAD_DIM, MIN_HEAD_DIM, Prune
from . import plan as plan_mod
from .plan import Plan
from .triton_configs import TMA_KERNELS, launch_config, max_registers, smaller, tma_kernels

LOG2E = 1.4426950408889634
_SUPPORTED_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

_twins: dict = {}
_lock = threading.Lock()
_capabilities: dict = {}
_multiprocessor_counts: dict = {}


def _interpret_requested() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def _kernels(interpret: bool):
    """The kernels, compiled (interpret=False) or for Triton's interpreter.

    `_triton_kernels` is imported normally, and Triton decorates its functions for the mode that
    TRITON_INTERPRET names at that moment. The other mode gets twins: every @triton.jit function
    of the module decorated again for that mode in a copy of the module's namespace, so that a
    kernel's calls reach the helpers' twins. Both come from the same functions, so both modes
    run the same code in one process, whatever imported triton first."""
    from triton.runtime.jit import JITFunction

    from . import _triton_kernels as module
    # (a helper tells the mode: tools such as compile_offline.py replace the kernels themselves)
    if isinstance(module._at, JITFunction) != interpret:
        return module
    twins = _twins.get(interpret)
    if twins is None:
        with _lock:
            twins = _twins.get(interpret)
            if twins is None:
                twins = _twins[interpret] = _decorated_again(module, interpret)
    return twins


def _decorated_again(module, interpret: bool) -> types.SimpleNamespace:
    """module's own @triton.jit functions decorated for the given mode, in a copy of its
    namespace (the functions imported from triton, such as the reduce combiners, stay)."""
    from triton.runtime.jit import JITFunction, KernelInterface
    if interpret:
        from triton.runtime.interpreter import InterpretedFunction as decorate
    else:
        decorate = JITFunction
    namespace = dict(vars(module))
    for name, obj in vars(module).items():
        fn = getattr(obj, "fn", None)
        if isinstance(obj, KernelInterface) and getattr(fn, "__module__", None) == module.__name__:
            twin = types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__,
                                      fn.__closure__)
            twin.__annotations__ = dict(fn.__annotations__)   # tl.constexpr marks the constants
            twin.__kwdefaults__ = fn.__kwdefaults__
            twin.__qualname__, twin.__module__ = fn.__qualname__, fn.__module__
            twin.__doc__ = fn.__doc__
            namespace[name] = decorate(twin)
    return types.SimpleNamespace(**namespace)


def _multiprocessors(device: torch.device) -> int:
    """The SM count of a CUDA device (cached)."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _multiprocessor_counts:
        properties = torch.cuda.get_device_properties(index)
        _multiprocessor_counts[index] = properties.multi_processor_count
    return _multiprocessor_counts[index]


def _capability(device: torch.device):
    if device.type != "cuda":
        return None
    index = device.index if device.index is not None else torch.cuda.current_device()
    if index not in _capabilities:
        _capabilities[index] = torch.cuda.get_device_capability(index)
    return _capabilities[index]


def _mode(q: torch.Tensor) -> bool:
    """True to interpret (CPU tensors, or TRITON_INTERPRET=1 for any device)."""
    return q.device.type == "cpu" or _interpret_requested()


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Why these inputs cannot run on the Triton kernels, or None when they can."""
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        return "q, k and v must be 4-d (B, H, T, D)"
    if q.device.type == "cpu":
        if not _interpret_requested():
            return "CPU tensors run on the Triton kernels only under TRITON_INTERPRET=1"
    elif q.device.type != "cuda":
        return f"device {q.device.type} has no Triton kernels here"
    if k.device != q.device or v.device != q.device:
        return "q, k and v are on different devices"
    if q.dtype not in _SUPPORTED_DTYPES:
        return f"dtype {q.dtype} is not one of float16, bfloat16, float32"
    if k.dtype != q.dtype or v.dtype != q.dtype:
        return "q, k and v have different dtypes"
    head_dim = q.shape[-1]
    if k.shape[-1] != head_dim or v.shape[-1] != head_dim:
        return "q, k and v must share the head dim"
    if not MIN_HEAD_DIM <= head_dim <= MAX_HEAD_DIM:
        return f"head dim {head_dim} is outside {MIN_HEAD_DIM}..{MAX_HEAD_DIM}"
    if k.shape != v.shape or k.shape[0] != q.shape[0]:
        return "k and v must have the same shape, and the batch of q"
    if k.shape[1] == 0 or q.shape[1] % k.shape[1]:
        return "query heads must be a multiple of key/value heads"
    if q.shape[2] > k.shape[2]:
        return "more queries than keys"
    try:
        import triton  # noqa: F401
    except ImportError:  # pragma: no cover - depends on the install
        return "triton is not installed"
    if q.device.type == "cuda" and _capability(q.device) < (8, 0):
        return f"compute capability {_capability(q.device)} is below 8.0"
    return None


def _d_pad(head_dim: int) -> int:
    return max(MIN_HEAD_DIM, 1 << (head_dim - 1).bit_length())


def _dot_precision(dtype: torch.dtype, interpret: bool) -> str:
    if interpret:
        return "ieee"
    if dtype == torch.float32:  # as torch does: TF32 only when the user allowed it
        default = "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"
        return os.environ.get("FOXCOMPILE_FP32_DOT", default)
    return "tf32"  # the default; Triton ignores it for 16-bit operands


def _device_guard(t: torch.Tensor):
    if t.device.type == "cuda":
        return torch.cuda.device(t.device)
    import contextlib
    return contextlib.nullcontext()


_fallbacks: dict = {}


def _launch(kind: str, config, memo, launch):
    """launch(config); on an out-of-shared-memory compile, retry with smaller pipelines and
    remember the one that fits (the table and the estimate in triton_configs should make this
    rare)."""
    key = (kind, config, memo)
    config = _fallbacks.get(key, config)
    while True:
        try:
            return launch(config)
        except Exception as exc:  # triton.runtime.errors.OutOfResources, without importing it
            if type(exc).__name__ != "OutOfResources":
                raise
            reduced = smaller(kind, config)
            if reduced is None:
                raise
            config = reduced
            _fallbacks[key] = config


def _f32(lam: torch.Tensor) -> torch.Tensor:
    return lam if lam.dtype == torch.float32 else lam.float()


def _tma_kernels(d_pad: int, interpret: bool, capability) -> frozenset:
    """The kernels that read their streamed tiles through TMA tensor descriptors: by default the
    launch table's choice (triton_configs.tma_kernels), except while a CUDA graph is being
    captured (the pointer loads are the ones tested under graph capture). FOXCOMPILE_TMA=0 turns
    them all off, =1 all on (sm90+ or the interpreter), or names the kernels (e.g. "fwd,dq")."""
    text = os.environ.get("FOXCOMPILE_TMA", "").strip().lower()
    if text in ("", "auto"):
        if not interpret and torch.cuda.is_available() and torch.cuda.is_current_stream_capturing():
            return frozenset()
        return tma_kernels(d_pad, capability, interpret)
    if text in ("0", "off", "no", "false"):
        return frozenset()
    if not interpret and (capability is None or capability < (9, 0)):
        return frozenset()
    if text in ("1", "on", "yes", "true"):
        return frozenset(TMA_KERNELS)
    return frozenset(k for k in text.split(",") if k in TMA_KERNELS)


def _tma_ok(*tensors) -> bool:
    """Whether tensor descriptors can read these tensors in place: unit last stride, positive
    strides and a base that are multiples of 16 bytes (the strides of size-1 dims do not
    matter, see _descriptor)."""
    for t in tensors:
        size = t.element_size()
        strides = [st for st, n in zip(t.stride()[:-1], t.shape[:-1]) if n > 1]
        if (t.stride(-1) != 1 or t.data_ptr() % 16
                or any(st <= 0 or st * size % 16 for st in strides)):
            return False
    return True


def _descriptor(t: torch.Tensor, *block: int):
    """Host-side TMA descriptor of a (B, H, T, D) or (B, H, T) tensor read in blocks
    [1, 1, *block]; loads past its edges read zeros. A size-1 dim's stride is never stepped
    over, so it gets a 16-byte one (TMA wants every stride aligned)."""
    from triton.tools.tensor_descriptor import TensorDescriptor
    unit = 16 // t.element_size()
    strides = [st if n > 1 else unit for st, n in zip(t.stride(), t.shape)]
    strides[-1] = 1
    return TensorDescriptor(t, list(t.shape), strides, [1, 1, *block])


def _doc_args(doc, lam):
    """(DOC, its strides, HAS_DOC): lam stands in when there is no doc (never read then)."""
    if doc is None:
        return lam, (0, 0), False
    return doc, doc.stride(), True


# The order in which both engines' kernels take the (b, head)s: "work" (plan.heads_by_work,
# the most tiles first, so that the heaviest heads are not left for the end of the call),
# "index" (b, head after b, head), or "backward" ("work" in the backward kernels, "index" in the
# forward's); FOXCOMPILE_HEAD_ORDER overrides it (docs/kernels.md, "The order of the heads").
# "index": a CPU model of the schedule gives "work" 3-7% off the pruned kernels and nothing
# dense (benchmarks/schedule_sim.py order); on an H100 it cut their tail as modelled, but the
# timings moved no more than their noise ("backward": the forward at D = 128 was the row that
# lost in that run, while its backward gained; not timed on its own yet).
HEAD_ORDER_ENV = "FOXCOMPILE_HEAD_ORDER"
HEAD_ORDER_DEFAULT = "index"
HEAD_ORDERS = ("index", "work", "backward")


def head_order(start: torch.Tensor, group: int, has_doc: bool,
               backward: bool) -> tuple[torch.Tensor, bool]:
    """(the kernels' ORDER, ORDERED) for a forward's kernels or (backward) a backward's: the
    (b, head)s by work, most first (plan.heads_by_work; kv heads with group > 1), and True,
    where the head order (HEAD_ORDER_ENV, default HEAD_ORDER_DEFAULT) is "work", or
    "backward" and these are backward kernels, and there are no document ids; otherwise start
    itself, never read, and False. With document ids the items are cut short by their
    documents, which the plan's start blocks do not count, and such calls are bound by the
    host."""
    text = os.environ.get(HEAD_ORDER_ENV, "").strip().lower() or HEAD_ORDER_DEFAULT
    if text not in HEAD_ORDERS:
        raise ValueError(f"{HEAD_ORDER_ENV}={text!r}: expected one of {', '.join(HEAD_ORDERS)}")
    by_work = text == "work" or (text == "backward" and backward)
    if has_doc or not by_work:
        return start, False
    return heads_by_work(start, group), True


def heads_by_work(start: torch.Tensor, group: int) -> torch.Tensor:
    """plan.heads_by_work, equal: one Triton launch (_heads_by_work_kernel) on CUDA, in place
    of torch's sum, sort and cast (some eight launches); plan's torch elsewhere."""
    if start.device.type != "cuda":
        return plan_mod.heads_by_work(start, group)
    return fused_heads_by_work(start, group)


# heads per program of _heads_by_work_kernel, and start blocks per step of its row sums
HEADS_BLOCK, SKIPS_CHUNK = 64, 64


def fused_heads_by_work(start, group, interpret=False, block=HEADS_BLOCK):
    """The kernel of heads_by_work, compiled or (interpret=True, CPU tensors) interpreted; start
    (B, Hq, MB) int32; `block` (a power of two) for tests of the block boundaries."""
    batch, q_heads, m_blocks = start.shape
    n_heads = batch * q_heads // group
    skips = start.reshape(n_heads, group * m_blocks).contiguous()   # (b, kv head) rows
    order = torch.empty(n_heads, dtype=torch.int32, device=start.device)
    if n_heads:
        with _device_guard(start):
            _kernels(interpret)._heads_by_work_kernel[(triton_cdiv(n_heads, block),)](
                skips, order, n_heads, group * m_blocks, BLOCK=block, CHUNK=SKIPS_CHUNK,
                num_warps=4)
    return order


def forward(q, k, v, lam, plan: Plan, scale: float, out: torch.Tensor, doc=None) -> torch.Tensor:
    """Writes out (B, Hq, M, D) through its strides and returns lse (B, Hq, M) float32."""
    batch, q_heads, n_queries, head_dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    lse = torch.empty((batch, q_heads, n_queries), dtype=torch.float32, device=q.device)
    if batch * q_heads * n_queries == 0:
        return lse
    interpret = _mode(q)
    kern = _kernels(interpret)
    d_pad = _d_pad(head_dim)
    config = launch_config("fwd", d_pad, plan.block_m, plan.block_n, _capability(q.device),
                           interpret, q.element_size())
    lam = _f32(lam)
    start = plan.start
    doc, doc_strides, has_doc = _doc_args(doc, lam)
    order, ordered = head_order(start, 1, has_doc, backward=False)
    tma = "fwd" in _tma_kernels(d_pad, interpret, _capability(q.device)) and _tma_ok(k, v, lam)

    def launch(config):
        block_m, block_n, warps, stages = config
        grid = (triton_cdiv(n_queries, block_m) * batch * q_heads,)
        kd, vd, ld = ((_descriptor(k, block_n, d_pad), _descriptor(v, block_n, d_pad),
                       _descriptor(lam, block_n)) if tma else (None, None, None))
        kern._fwd_kernel[grid](
            q, k, v, lam, out, lse, start, doc, order, kd, vd, ld,
            q.stride(), k.stride(), v.stride(), lam.stride(), out.stride(), lse.stride(),
            start.stride(), doc_strides,
            q_heads, q_heads // kv_heads, n_queries, n_keys, float(scale) * LOG2E,
            HEAD_DIM=head_dim, D_PAD=d_pad, BLOCK_M=block_m, BLOCK_N=block_n,
            GRID_M=plan.block_m, GRID_N=plan.block_n,
            CAST_F32=interpret, DOT_PREC=_dot_precision(q.dtype, interpret), HAS_DOC=has_doc,
            TMA=tma, ORDERED=ordered, num_warps=warps, num_stages=stages,
            **max_registers("fwd", d_pad, _capability(q.device), interpret))

    with _device_guard(q):
        _launch("fwd", config, (d_pad, q.dtype, q.device, tma), launch)
    return lse


def backward(grad_out, q, k, v, lam, out, lse, plan: Plan, scale: float,
             dq: torch.Tensor, dk: torch.Tensor, dv: torch.Tensor, doc=None) -> torch.Tensor:
    """Writes dq, dk, dv through their strides and returns dlam (B, Hq, N) float32."""
    batch, q_heads, n_queries, head_dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    dlam = torch.empty((batch, q_heads, n_keys), dtype=torch.float32, device=q.device)
    if batch * q_heads * n_keys == 0:
        return dlam
    if n_queries == 0:
        dk.zero_()
        dv.zero_()
        dlam.zero_()
        return dlam
    interpret = _mode(q)
    kern = _kernels(interpret)
    d_pad = _d_pad(head_dim)
    cap = _capability(q.device)
    lam = _f32(lam)
    prec = _dot_precision(q.dtype, interpret)
    group = q_heads // kv_heads
    qk_scale = float(scale) * LOG2E

    do_o = row_dots(out, grad_out)
    dlam_row = torch.zeros((batch, q_heads, n_keys), dtype=torch.float32, device=q.device)
    end = plan_mod.end_blocks(plan.start, n_keys, plan.block_n)
    doc, doc_strides, has_doc = _doc_args(doc, lam)
    q_order, ordered = head_order(plan.start, 1, has_doc, backward=True)
    kv_order = q_order if group == 1 else head_order(plan.start, group, has_doc,
                                                            backward=True)[0]
    tma = _tma_kernels(d_pad, interpret, cap)
    dkdv_tma = "dkdv" in tma and _tma_ok(q, grad_out, lam, lse, do_o)
    dq_tma = "dq" in tma and _tma_ok(k, v, lam)
    with _device_guard(q):
        def launch_dkdv(config):
            block_n, block_m, warps, stages = config
            descriptors = ((_descriptor(q, block_m, d_pad), _descriptor(grad_out, block_m, d_pad),
                            _descriptor(lam, block_m), _descriptor(lse, block_m),
                            _descriptor(do_o, block_m)) if dkdv_tma else (None,) * 5)
            kern._dkdv_kernel[(triton_cdiv(n_keys, block_n) * batch * kv_heads,)](
                q, k, v, lam, grad_out, lse, do_o, dk, dv, dlam, end, doc, kv_order,
                *descriptors,
                q.stride(), k.stride(), v.stride(), lam.stride(), grad_out.stride(),
                lse.stride(), dk.stride(), dv.stride(), dlam.stride(), end.stride(),
                doc_strides,
                kv_heads, group, n_queries, n_keys, qk_scale, float(scale),
                HEAD_DIM=head_dim, D_PAD=d_pad, BLOCK_N=block_n, BLOCK_M=block_m,
                GRID_M=plan.block_m, GRID_N=plan.block_n, ROW_EDGE=n_queries % block_m != 0,
                CAST_F32=interpret, DOT_PREC=prec, HAS_DOC=has_doc, TMA=dkdv_tma,
                ORDERED=ordered, num_warps=warps, num_stages=stages,
                **max_registers("dkdv", d_pad, cap, interpret))

        def launch_dq(config):
            block_m, block_n, warps, stages = config
            descriptors = ((_descriptor(k, block_n, d_pad), _descriptor(v, block_n, d_pad),
                            _descriptor(lam, block_n)) if dq_tma else (None,) * 3)
            kern._dq_kernel[(triton_cdiv(n_queries, block_m) * batch * q_heads,)](
                q, k, v, lam, grad_out, lse, do_o, dq, dlam_row, plan.start, doc, q_order,
                *descriptors,
                q.stride(), k.stride(), v.stride(), lam.stride(), grad_out.stride(),
                lse.stride(), dq.stride(), dlam_row.stride(), plan.start.stride(),
                doc_strides,
                q_heads, group, n_queries, n_keys, qk_scale, float(scale),
                HEAD_DIM=head_dim, D_PAD=d_pad, BLOCK_M=block_m, BLOCK_N=block_n,
                GRID_M=plan.block_m, GRID_N=plan.block_n,
                CAST_F32=interpret, DOT_PREC=prec, HAS_DOC=has_doc, TMA=dq_tma,
                ORDERED=ordered, num_warps=warps, num_stages=stages,
                **max_registers("dq", d_pad, cap, interpret))

        memo = (d_pad, q.dtype, q.device, dkdv_tma, dq_tma)
        for kind, launch in (("dkdv", launch_dkdv), ("dq", launch_dq)):
            config = launch_config(kind, d_pad, plan.block_m, plan.block_n, cap, interpret,
                                   q.element_size())
            _launch(kind, config, memo, launch)
    return dlam.add_(dlam_row)


def row_dots(out: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    """The row sums of dO * O, (B, H, M) float32, contiguous: dS = P (dP - do_o) in every
    backward (`delta` names only ACP's threshold). out and grad_out: (B, H, M, D), any strides."""
    batch, heads, n_queries, head_dim = out.shape
    do_o = torch.empty((batch, heads, n_queries), dtype=torch.float32, device=out.device)
    rows = 64
    with _device_guard(out):
        _kernels(_mode(out))._row_dot_kernel[(triton_cdiv(n_queries, rows) * batch * heads,)](
            out, grad_out, do_o, do_o, do_o, out.stride(), grad_out.stride(), (0, 0, 0),
            (0, 0, 0), heads, n_queries, n_queries, n_queries, 1.0, HEAD_DIM=head_dim,
            D_PAD=_d_pad(head_dim), BLOCK_M=rows, QUERY_ROWS=False, num_warps=4)
    return do_o


def query_rows(lam: torch.Tensor, lse: torch.Tensor, out: torch.Tensor, grad_out: torch.Tensor,
               log2e: float) -> torch.Tensor:
    """The Gluon backward's per-query buffer in one launch, (B * H * 2, M64) float32 with M64 =
    M rounded up to 64: per (b, h) a row (lam_q - lse) * log2e (lam_q: lam (B, H, N) at the
    query's position N - M + i) and a row of row_dots(out, grad_out); past M -inf and 0 (such a
    query gets p = 0). lse (B, H, M); all of any strides."""
    batch, heads, n_queries, head_dim = out.shape
    rows = 64
    padded = triton_cdiv(n_queries, rows) * rows
    buffer = torch.empty((batch, heads, 2, padded), dtype=torch.float32, device=out.device)
    with _device_guard(out):
        _kernels(_mode(out))._row_dot_kernel[(padded // rows * batch * heads,)](
            out, grad_out, buffer, lam, lse, out.stride(), grad_out.stride(), lam.stride(),
            lse.stride(), heads, n_queries, lam.shape[-1], padded, log2e, HEAD_DIM=head_dim,
            D_PAD=_d_pad(head_dim), BLOCK_M=rows, QUERY_ROWS=True, num_warps=4)
    return buffer.view(batch * heads * 2, padded)


def finish_dq(dq_acc: torch.Tensor, row_sums: torch.Tensor, scale: float, dq: torch.Tensor,
              dlam: torch.Tensor) -> None:
    """The Gluon backward's float32 sums into its outputs, in one launch: dq = dq_acc * scale
    (dq (B, H, M, D) of any strides and dtype; dq_acc contiguous) and dlam[..., N - M:] +=
    row_sums[..., 0] (row_sums (B, H, M, 16), dlam (B, H, N)), equal bit for bit to
    torch.mul(dq_acc, scale, out=dq) and that in-place add."""
    batch, heads, n_queries, head_dim = dq_acc.shape
    d_pad = _d_pad(head_dim)
    rows = max(8192 // d_pad, 16)
    with _device_guard(dq_acc):
        _kernels(_mode(dq_acc))._dq_finish_kernel[(triton_cdiv(n_queries, rows) * batch * heads,)](
            dq_acc, dq, row_sums, dlam, dq_acc.stride(), dq.stride(), row_sums.stride(),
            dlam.stride(), heads, n_queries, dlam.shape[-1], scale, HEAD_DIM=head_dim,
            D_PAD=d_pad, BLOCK_M=rows, num_warps=8)


def max_norm(x: torch.Tensor, acc: torch.dtype) -> torch.Tensor:
    """max over t of ||x[b, h, t]|| in acc, (B, H), as plan.max_norm computes it: the plan's norm
    for this engine (make_plan(..., norm=max_norm)). On CUDA (float32 accumulation, head dims
    16..256) one Triton pass over x (max_row_norms); elsewhere plan.max_norm (torch)."""
    if (type(x) is torch.Tensor and x.is_cuda and acc == torch.float32 and x.numel() > 0
            and MIN_HEAD_DIM <= x.shape[-1] <= MAX_HEAD_DIM):
        try:
            import triton  # noqa: F401
        except ImportError:  # no Triton: torch
            pass
        else:
            return max_row_norms(x)
    return plan_mod.max_norm(x, acc)


def score_bounds(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
                 acc: torch.dtype, check_v: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(plan.score_bound(q, k, scale, acc, max_norm), plan.value_checked_bound of it with v
    when check_v, else that same bound), both (B, Hq) in acc, equal bit for bit: on CUDA
    (float32 accumulation, head dims 16..256) two Triton launches (fused_score_bounds) in place
    of three norm passes and some nine small torch ops; plan's torch elsewhere."""
    if all(type(x) is torch.Tensor and x.is_cuda and x.numel() > 0
           and MIN_HEAD_DIM <= x.shape[-1] <= MAX_HEAD_DIM for x in (q, k, v)) \
            and acc == torch.float32:
        return fused_score_bounds(q, k, v, scale, check_v)
    bound = plan_mod.score_bound(q, k, scale, acc, max_norm)
    if not check_v:
        return bound, bound
    return bound, plan_mod.value_checked_bound(q, k, scale, acc, v, bound, max_norm)


# partial maxima per step of _score_bound_kernel's loops (one program per (b, h))
SCORE_BOUND_CHUNK = 1024


def fused_score_bounds(q, k, v, scale, check_v, interpret=False, chunk=SCORE_BOUND_CHUNK):
    """The kernels of score_bounds for q (B, Hq, M, D), k (B, Hk, N, D), v (B, Hk, N, Dv) of any
    strides, compiled or (interpret=True, CPU tensors) interpreted: _qkv_norms_kernel's partial
    maxima of all three (v's only when check_v), then _score_bound_kernel per (b, h)."""
    batch, q_heads, n_queries, head_dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    block_t = 64
    q_tiles, k_tiles = triton_cdiv(n_queries, block_t), triton_cdiv(n_keys, block_t)
    n_q, n_k = batch * q_heads * q_tiles, batch * kv_heads * k_tiles
    programs = n_q + n_k * (2 if check_v else 1)
    partial = torch.empty(programs, dtype=torch.float32, device=q.device)
    bound = torch.empty((batch, q_heads), dtype=torch.float32, device=q.device)
    checked = torch.empty_like(bound) if check_v else bound
    kernels = _kernels(interpret)
    with _device_guard(q):
        kernels._qkv_norms_kernel[(programs,)](
            q, k, v, partial, q.stride(), k.stride(), v.stride(), q_heads, kv_heads, n_queries,
            n_keys, q_tiles, k_tiles, n_q, n_k, HEAD_DIM=head_dim, D_PAD=_d_pad(head_dim),
            V_DIM=v.shape[-1], V_PAD=_d_pad(v.shape[-1]), BLOCK_T=block_t, num_warps=4)
        kernels._score_bound_kernel[(batch * q_heads,)](
            partial, bound, checked, abs(scale), q_heads, q_heads // kv_heads, q_tiles, k_tiles,
            n_q, n_k, CHECK_V=check_v, CHUNK=chunk, num_warps=4)
    return bound, checked


def max_row_norms(x: torch.Tensor, interpret: bool = False) -> torch.Tensor:
    """max over t of ||x[b, h, t, :]|| in float32, (B, H), for a CUDA tensor (B, H, T, D) of any
    strides: one pass over x (torch's vector_norm over a short strided last dim reads far below
    the memory bandwidth; docs/kernels.md). NaN and inf propagate, as in
    vector_norm(...).amax(-1). interpret=True: through Triton's interpreter (CPU tensors)."""
    batch, heads, rows, head_dim = x.shape
    block_t = 64
    tiles = triton_cdiv(rows, block_t)
    partial = torch.empty((batch, heads, tiles), dtype=torch.float32, device=x.device)
    with _device_guard(x):
        _kernels(interpret)._max_norm_kernel[(batch * heads * tiles,)](
            x, partial, x.stride(), heads, rows, tiles,
            HEAD_DIM=head_dim, D_PAD=_d_pad(head_dim), BLOCK_T=block_t, num_warps=4)
    return partial.amax(dim=-1)


def full_lam(lam: torch.Tensor, batch: int, q_heads: int, bound: torch.Tensor,
             filled: bool = False):
    """plan.full_lam (lam in float32, broadcast to (B, Hq, N), contiguous, +inf keys replaced;
    with filled=True also the plan's forward-filled lam), equal bit for bit: one Triton program
    per (b, h) (_full_lam_kernel) for a float32 bound on CUDA, in place of some ten small torch
    kernels (and the fill's slow scan); plan's torch elsewhere."""
    if lam.device.type != "cuda" or bound.dtype != torch.float32:
        return plan_mod.full_lam(lam, batch, q_heads, bound, filled)
    return fused_full_lam(lam, batch, q_heads, bound, filled)


# lam elements per step of _full_lam_kernel's two passes: one program walks a whole (b, h) row,
# so a long row (a decoding step's cache: 1 x 12 rows of 64k keys) takes N / FULL_LAM_CHUNK
# dependent steps per pass; 4096 on 8 warps is 16 floats a thread.
FULL_LAM_CHUNK = 4096


def fused_full_lam(lam, batch, q_heads, bound, filled=False, interpret=False,
                   chunk=FULL_LAM_CHUNK):
    """The kernel of full_lam, compiled or (interpret=True, CPU tensors) interpreted; `chunk`
    (a power of two) for tests of the chunk boundaries."""
    n_keys = lam.shape[-1]
    view = lam.expand(batch, q_heads, n_keys)
    out = torch.empty((batch, q_heads, n_keys), dtype=torch.float32, device=lam.device)
    fill = torch.empty_like(out) if filled else out
    if out.numel():
        with _device_guard(lam):
            _kernels(interpret)._full_lam_kernel[(batch * q_heads,)](
                view, bound, out, fill, view.stride(), bound.stride(), q_heads, n_keys,
                plan_mod.MASKED_KEY_MARGIN, plan_mod.MASKED_KEY_FALLBACK, CHUNK=chunk,
                FILL=filled, num_warps=8)
    return (out, fill) if filled else out


def plan_start_blocks(lam: torch.Tensor, bound: torch.Tensor, epsilon: float, prune: int,
                      n_queries: int, block_m: int, block_n: int) -> torch.Tensor:
    """plan.bound_start_blocks (threshold from the bound, the guard, start_blocks), equal bit
    for bit: one Triton program per (b, h) (_plan_start_kernel) for float32 lam on CUDA, in
    place of some forty small torch kernels; plan's torch elsewhere. make_plan's `starts`."""
    if lam.device.type != "cuda" or lam.dtype != torch.float32:
        return plan_mod.bound_start_blocks(lam, bound, epsilon, prune, n_queries, block_m,
                                           block_n)
    return fused_start_blocks(lam, bound, epsilon, prune, n_queries, block_m, block_n)


def fused_start_blocks(lam, bound, epsilon, prune, n_queries, block_m, block_n, interpret=False):
    """The kernel of plan_start_blocks for float32 lam (B, H, N) and bound (B, H), compiled or
    (interpret=True, CPU tensors) through Triton's interpreter."""
    batch, heads, n_keys = lam.shape
    start = torch.empty((batch, heads, plan_mod.num_blocks(n_queries, block_m)),
                        dtype=torch.int32, device=lam.device)
    with _device_guard(lam):
        _kernels(interpret)._plan_start_kernel[(batch * heads,)](
            lam, bound, start, lam.stride(), bound.stride(), start.stride(), heads, n_queries,
            n_keys, math.log(epsilon) - math.log(n_keys), GUARDED=prune == Prune.GUARDED,
            BLOCK_M=block_m, BLOCK_N=block_n, CHUNK=1024, M_CHUNK=64, N_CHUNK=64, num_warps=4)
    return start


def triton_cdiv(a: int, b: int) -> int:
    return -(-a // b)


def compiled_kernels():
    """The compiled kernel module (for register/spill reports: kernel.cache / n_regs)."""
    return _kernels(False)


__all__ = ["forward", "backward", "unsupported_reason", "max_norm", "score_bounds",
           "plan_start_blocks",
           "full_lam"]
