"""Gluon engine (Hopper, sm90) of forgetting attention with ACP: same interface as
triton_attention.py, for the inputs it takes (unsupported_reason says which).

    forward(q, k, v, lam, plan, scale, out, doc=None) -> lse      the Gluon kernel
    backward(...)                                                the tl kernels (triton_attention)
    unsupported_reason(q, k, v) -> str | None
    max_norm(x, acc)                                             as triton_attention's

The forward is _gluon_kernels._gluon_fwd_kernel: a loader warp streams K/V through a TMA ring
while two consumer warp groups run asynchronous wgmma, the previous tile's PV product in flight
during the current tile's softmax.
It skips exactly the tiles of the plan (128 x 128 pruning grid), and writes out and lse as the tl
forward does, so the tl backward runs after it unchanged.

Triton's Gluon dialect (triton.experimental.gluon) is imported only when this engine is asked
about a CUDA tensor on an sm90 GPU: its API moves between Triton versions, and a Triton without
it (or with an API this module does not know) leaves the engine unsupported, never the package
unimportable.
"""
import torch

from . import triton_attention
from .plan import Plan
from .triton_attention import LOG2E, _capability, _device_guard, _doc_args, _f32, _tma_ok

backward = triton_attention.backward
max_norm = triton_attention.max_norm

HEAD_DIMS = (64, 128)
# Ring depth per head dim: shared memory holds Q (128 x D) and STAGES (K, V) tile pairs.
STAGES = {64: 3, 128: 2}
BLOCK_N = 128

_import_error: list = []



def _kernels():
    """The Gluon kernel module, or None when this Triton cannot build it (reason recorded)."""
    if _import_error:
        return None
    try:
        from . import _gluon_kernels
    except Exception as exc:  # ImportError, or an API this Triton spells differently
        _import_error.append(f"{type(exc).__name__}: {exc}")
        return None
    return _gluon_kernels


def unsupported_reason(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """Why the Gluon forward cannot run these inputs, or None when it can."""
    reason = triton_attention.unsupported_reason(q, k, v)
    if reason:
        return reason
    if q.device.type != "cuda":
        return "the Gluon engine runs on CUDA tensors only"
    major, minor = _capability(q.device)
    if major != 9:
        return f"the Gluon engine is for sm90 (Hopper); this GPU is sm{major}{minor}"
    if q.dtype not in (torch.float16, torch.bfloat16):
        return f"the Gluon engine takes float16 and bfloat16, not {q.dtype}"
    if q.shape[-1] not in HEAD_DIMS:
        return f"the Gluon engine takes head dims {HEAD_DIMS}, not {q.shape[-1]}"
    if not _tma_ok(q, k, v):
        return "TMA needs unit last strides and 16-byte aligned bases and strides"
    if _kernels() is None:
        return f"this Triton has no usable Gluon: {_import_error[0]}"
    return None


# Head dims where the Gluon forward beat tl's on an H100 (docs/kernels.md, "The Gluon engine":
# 2.06 against 2.55 ms at B1-T16384-H16-D128; at D = 64 a tie at 16k and slower at 4k).
PREFERRED_HEAD_DIMS = (128,)


def preferred(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> bool:
    """Whether the automatic engine choice should take this engine for these inputs (it then
    still falls back to tl when unsupported_reason names a reason)."""
    return (q.device.type == "cuda" and q.dim() == 4 and q.shape[-1] in PREFERRED_HEAD_DIMS
            and _capability(q.device)[0] == 9)


def _descriptor(t: torch.Tensor, rows: int):
    """Gluon TMA descriptor of a (B, H, T, D) tensor read in blocks [1, 1, rows, D]; zeros past
    the edges. A size-1 dim's stride is never stepped over, so it gets a 16-byte one."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    dtype = gl.bfloat16 if t.dtype == torch.bfloat16 else gl.float16
    unit = 16 // t.element_size()
    strides = [st if n > 1 else unit for st, n in zip(t.stride(), t.shape)]
    strides[-1] = 1
    block = [1, 1, rows, t.shape[-1]]
    layout = gl.NVMMASharedLayout.get_default_for(block, dtype)
    return TensorDescriptor(t, list(t.shape), strides, block, layout)


def _lam_descriptor(lam: torch.Tensor):
    """Gluon TMA descriptor of a contiguous (B, H, N) float32 lam seen as (B * H, N), read in
    blocks [1, BLOCK_N] (zeros past the end). N is padded to 4 in the descriptor's row stride
    only when it already is (TMA wants 16-byte strides): otherwise lam is copied padded."""
    from triton.experimental.gluon import language as gl
    from triton.experimental.gluon.nvidia.hopper import TensorDescriptor
    rows, n_keys = lam.shape[0] * lam.shape[1], lam.shape[2]
    view = lam.view(rows, n_keys)
    if n_keys % 4:
        padded = torch.zeros(rows, n_keys + 4 - n_keys % 4, dtype=lam.dtype, device=lam.device)
        padded[:, :n_keys] = view
        view = padded[:, :n_keys]
    layout = gl.NVMMASharedLayout(swizzle_byte_width=0, element_bitwidth=32, rank=2)
    return TensorDescriptor(view, [rows, n_keys], [view.stride(0), 1], [1, BLOCK_N], layout)


def forward(q, k, v, lam, plan: Plan, scale: float, out: torch.Tensor, doc=None) -> torch.Tensor:
    """Writes out (B, Hq, M, D) through its strides and returns lse (B, Hq, M) float32."""
    batch, q_heads, n_queries, head_dim = q.shape
    kv_heads, n_keys = k.shape[1], k.shape[2]
    lse = torch.empty((batch, q_heads, n_queries), dtype=torch.float32, device=q.device)
    if batch * q_heads * n_queries == 0:
        return lse
    assert (plan.block_m, plan.block_n) == (128, BLOCK_N), "the Gluon kernel walks 128 x 128 tiles"
    lam = _f32(lam).contiguous()   # its tiles come through a (B * Hq, N) descriptor
    if doc is not None and doc.stride(-1) != 1:
        doc = doc.contiguous()
    assert out.stride(-1) == 1, "out must have a unit stride along the head dim"
    doc, doc_strides, has_doc = _doc_args(doc, lam)
    kern = _kernels()
    grid = (-(-n_queries // 128) * batch * q_heads,)
    with _device_guard(q):
        kern._gluon_fwd_kernel[grid](
            _descriptor(q, 64), _descriptor(k, BLOCK_N), _descriptor(v, BLOCK_N),
            _lam_descriptor(lam), lam, out, lse, plan.start, doc,
            lam.stride(), out.stride(), lse.stride(), plan.start.stride(), doc_strides,
            out.stride(2),
            q_heads, q_heads // kv_heads, n_queries, n_keys, float(scale) * LOG2E,
            HEAD_DIM=head_dim, BLOCK_N=BLOCK_N, STAGES=STAGES[head_dim], HAS_DOC=has_doc,
            num_warps=4)
    return lse


__all__ = ["forward", "backward", "unsupported_reason", "max_norm"]
