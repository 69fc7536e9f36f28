"""A byte-level Forgetting Transformer (FoX) language model in plain PyTorch.

Nothing here knows about foxcompile: the attention is the natural eager code, so that
`torch.compile(model, backend="fox_acp")` has a real-world model to find it in.

Two block flavours (Lin et al., "Forgetting Transformer", ICLR 2025):
- FoX: q, k, v projections and a scalar forget gate per head and token,
  log f = logsigmoid(fgate(x)), lam = cumsum(log f), scores += lam_i - lam_j. No RoPE.
- FoX "Pro": adds a key/value shift, per-head RMSNorm on q and k, and a per-head RMSNorm
  followed by a sigmoid output gate before the output projection.

`attention="sdpa"` swaps the forgetting attention for plain causal
`F.scaled_dot_product_attention` with no forget gate (the speed reference of the benchmarks;
such a model has no position information besides the causal mask).

Blocks are pre-norm (RMSNorm) with a SwiGLU MLP. The vocabulary is 256 bytes, so the embedding
tables are tiny; they are untied by default (`tie_embeddings=True` shares them).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

ATTENTION_KINDS = ("fox", "sdpa")


@dataclass(frozen=True)
class FoXConfig:
    """Sizes and switches of a FoX language model."""

    hidden: int
    layers: int
    heads: int
    head_dim: int
    mlp_hidden: int
    vocab_size: int = 256
    pro: bool = False
    attention: str = "fox"
    tie_embeddings: bool = False
    activation_checkpointing: bool = False
    norm_eps: float = 1e-6

    def __post_init__(self):
        if self.attention not in ATTENTION_KINDS:
            raise ValueError(f"attention must be one of {ATTENTION_KINDS}, got {self.attention!r}")
        if self.heads * self.head_dim != self.hidden:
            raise ValueError(f"heads * head_dim must equal hidden: "
                             f"{self.heads} * {self.head_dim} != {self.hidden}")


def swiglu_hidden(hidden: int, multiple_of: int = 256) -> int:
    """LLaMA-style SwiGLU width: 8/3 * hidden, rounded up to a multiple of `multiple_of`."""
    return multiple_of * math.ceil(int(8 * hidden / 3) / multiple_of)


def _config(hidden: int, layers: int, heads: int, head_dim: int = 64) -> FoXConfig:
    return FoXConfig(hidden=hidden, layers=layers, heads=heads, head_dim=head_dim,
                     mlp_hidden=swiglu_hidden(hidden))


CONFIGS = {
    "tiny": FoXConfig(hidden=128, layers=2, heads=4, head_dim=32, mlp_hidden=384),
    "125m": _config(768, 12, 12),
    "360m": _config(1024, 24, 16),
    "760m": _config(1536, 24, 24),
}


def kv_shift(x: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """Token shift x_t <- a_t x_{t-1} + (1 - a_t) x_t, with x_{-1} = 0.

    x: (B, H, T, D); a: (B, H, T) in [0, 1]. Returns (B, H, T, D).
    """
    previous = F.pad(x[:, :, :-1], (0, 0, 1, 0))
    a = a.unsqueeze(-1).to(x.dtype)
    return a * previous + (1 - a) * x


class FoXAttention(nn.Module):
    """Multi-head forgetting attention (or plain causal SDPA) over a (B, T, hidden) input."""

    def __init__(self, config: FoXConfig):
        super().__init__()
        self.config = config
        self.heads, self.head_dim = config.heads, config.head_dim
        self.scale = config.head_dim**-0.5
        hidden = config.hidden
        self.q_proj = nn.Linear(hidden, hidden, bias=False)
        self.k_proj = nn.Linear(hidden, hidden, bias=False)
        self.v_proj = nn.Linear(hidden, hidden, bias=False)
        self.o_proj = nn.Linear(hidden, hidden, bias=False)
        self.fgate = None
        if config.attention == "fox":
            self.fgate = nn.Linear(hidden, config.heads, bias=True)
        if config.pro:
            self.shift_gate = nn.Linear(hidden, 2 * config.heads, bias=True)
            self.q_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
            self.k_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
            self.out_norm = nn.RMSNorm(config.head_dim, eps=config.norm_eps)
            self.out_gate = nn.Linear(hidden, hidden, bias=False)

    def split_heads(self, x: torch.Tensor) -> torch.Tensor:
        """(B, T, H * D) -> (B, H, T, D)."""
        B, T, _ = x.shape
        return x.view(B, T, self.heads, self.head_dim).transpose(1, 2)

    def project(self, x: torch.Tensor):
        """x: (B, T, hidden) -> q, k, v of shape (B, H, T, D) and log_f of shape (B, H, T) in fp32.

        log_f is None for attention="sdpa".
        """
        q, k, v = (self.split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        if self.config.pro:
            a_k, a_v = torch.sigmoid(self.shift_gate(x)).transpose(1, 2).chunk(2, dim=1)
            k, v = kv_shift(k, a_k), kv_shift(v, a_v)
            q, k = self.q_norm(q), self.k_norm(k)
        log_f = None
        if self.fgate is not None:
            log_f = F.logsigmoid(self.fgate(x).float()).transpose(1, 2)
        return q, k, v, log_f

    def attend(self, q, k, v, log_f):
        """Causal attention -> (B, H, T, D).

        q, k, v: (B, H, T, D); log_f: (B, H, T) fp32, or None for attention="sdpa".
        """
        if log_f is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True)
        lam = torch.cumsum(log_f, dim=-1)
        T = q.shape[-2]
        scores = q @ k.transpose(-2, -1) * self.scale + lam[..., :, None] - lam[..., None, :]
        causal = torch.ones(T, T, dtype=torch.bool, device=q.device).tril()
        scores = scores.masked_fill(~causal, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return probs @ v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, hidden) -> (B, T, hidden)."""
        o = self.attend(*self.project(x))
        if self.config.pro:
            o = self.out_norm(o)
        o = o.transpose(1, 2).flatten(2)
        if self.config.pro:
            o = o * torch.sigmoid(self.out_gate(x))
        return self.o_proj(o)


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)); (B, T, hidden) -> (B, T, hidden)."""

    def __init__(self, hidden: int, mlp_hidden: int):
        super().__init__()
        self.gate = nn.Linear(hidden, mlp_hidden, bias=False)
        self.up = nn.Linear(hidden, mlp_hidden, bias=False)
        self.down = nn.Linear(mlp_hidden, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(F.silu(self.gate(x)) * self.up(x))


class FoXBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, config: FoXConfig):
        super().__init__()
        self.attn_norm = nn.RMSNorm(config.hidden, eps=config.norm_eps)
        self.attn = FoXAttention(config)
        self.mlp_norm = nn.RMSNorm(config.hidden, eps=config.norm_eps)
        self.mlp = SwiGLU(config.hidden, config.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class FoXLM(nn.Module):
    """Byte-level causal language model: tokens (B, T) int64 -> logits (B, T, vocab)."""

    def __init__(self, config: FoXConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.hidden)
        self.blocks = nn.ModuleList(FoXBlock(config) for _ in range(config.layers))
        self.norm = nn.RMSNorm(config.hidden, eps=config.norm_eps)
        self.lm_head = nn.Linear(config.hidden, config.vocab_size, bias=False)
        self.apply(self._init_weights)
        if config.tie_embeddings:
            self.lm_head.weight = self.embed.weight

    @staticmethod
    def _init_weights(module: nn.Module):
        """N(0, 0.02) weights and zero biases (so the forget gates start at sigmoid(0) = 0.5)."""
        if isinstance(module, (nn.Linear, nn.Embedding)):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)
        if isinstance(module, nn.Linear) and module.bias is not None:
            nn.init.zeros_(module.bias)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        x = self.embed(tokens)
        for block in self.blocks:
            if self.config.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.lm_head(self.norm(x))


def build_model(name: str, pro: bool = False, **overrides) -> FoXLM:
    """Build the model of config `name` ("tiny", "125m", "360m", "760m").

    `overrides` replace FoXConfig fields, e.g. attention="sdpa", activation_checkpointing=True.
    The model is created on the current default device (use `with torch.device("meta")` to
    count parameters without allocating them).
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    return FoXLM(replace(CONFIGS[name], pro=pro, **overrides))
