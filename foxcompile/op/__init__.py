"""The forgetting-attention op: torch.library custom ops and the public function."""
from .api import forgetting_attention
from .library import attention, attention_backward

__all__ = ["forgetting_attention", "attention", "attention_backward"]
