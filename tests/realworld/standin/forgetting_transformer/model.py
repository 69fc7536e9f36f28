"""A small FoX attention layer in the style of the authors' ForgettingAttentionLayer: it imports
and calls their kernel."""
import torch
import torch.nn as nn
import torch.nn.functional as F

from forgetting_transformer.ops.forgetting_attention import forgetting_attention


class ForgettingAttentionLayer(nn.Module):

    def __init__(self, hidden_size=64, num_heads=4, head_first=False):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.head_first = head_first
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.fgate_proj = nn.Linear(hidden_size, num_heads, bias=True)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, x, seq_start=None, adaptive_threshold=None):
        batch, length, _ = x.shape
        q, k, v = (p(x).view(batch, length, self.num_heads, self.head_dim)
                   for p in (self.q_proj, self.k_proj, self.v_proj))
        log_fgate = F.logsigmoid(self.fgate_proj(x).float())        # (B, T, H)
        if self.head_first:
            q, k, v = (t.transpose(1, 2) for t in (q, k, v))
            log_fgate = log_fgate.transpose(1, 2)
        extra = {} if adaptive_threshold is None else {"adaptive_threshold": adaptive_threshold}
        out = forgetting_attention(q, k, v, log_fgate, head_first=self.head_first,
                                   seq_start=seq_start, **extra)
        if self.head_first:
            out = out.transpose(1, 2)
        return self.o_proj(out.reshape(batch, length, -1))
