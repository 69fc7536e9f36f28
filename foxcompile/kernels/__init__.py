"""Engines for forgetting attention: the Triton kernels where they can run (CUDA tensors, or CPU
tensors under TRITON_INTERPRET=1), else the blockwise PyTorch reference (CPU, float64, head dims
or dtypes the kernels do not take). Both skip the tiles of plan.py's rule."""
import torch

from . import reference, triton_attention

# The norm the plan's score bound is computed with (plan.make_plan's `norm`): one Triton pass on
# CUDA, torch elsewhere, whichever engine then runs the attention.
max_norm = triton_attention.max_norm


def engine_for(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """The module (forward/backward) that runs these inputs."""
    return reference if triton_attention.unsupported_reason(q, k, v) else triton_attention
