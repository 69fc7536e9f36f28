"""Engines for forgetting attention: the Triton kernels where they can run, else the blockwise
PyTorch reference. Both share plan.py's pruning rule, so they skip the same tiles."""
import os

import torch

from . import reference


def interpreting() -> bool:
    """True when Triton's interpreter runs kernels on CPU tensors (TRITON_INTERPRET=1)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def engine_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The module (forward/backward) that runs these inputs."""
    if q.dtype == torch.float64 or not (q.is_cuda or interpreting()):
        return reference
    try:
        from . import triton_attention
    except ImportError:  # Triton missing, or kernels not built for this platform
        return reference
    return reference if triton_attention.unsupported_reason(q, k, v) else triton_attention
