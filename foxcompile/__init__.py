"""foxcompile: find forgetting attention in any PyTorch model and run it with Adaptive
Computation Pruning. `torch.compile(model, backend="fox_acp")`."""
from .kernels.plan import DEFAULT_EPSILON
from .op import forgetting_attention
from .stats import pruning_stats

__all__ = ["forgetting_attention", "pruning_stats", "DEFAULT_EPSILON"]
