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

    def attend_cached(self, q, k, v, log_f, cache: "FoXCache | FoXStaticCache", layer: int):
        """Attention of M new tokens over the cached ones and themselves -> (B, H, M, D).

        q, k, v: (B, H, M, D) and log_f (B, H, M) fp32 (None for attention="sdpa") of the new
        tokens, at positions P..P+M-1 after the P cached ones. Their lam continues the cached
        one: lam = lam[P - 1] + cumsum(log_f). The cache stores k, v and lam and hands back those
        of all N keys it holds; query i sees key j iff key_pos[j] <= query_pos[i],
        the causal mask of queries that sit at the end of the keys (Hugging Face's
        cache_position style; a static cache also masks its unfilled slots this way).
        """
        lam = None
        if log_f is not None:
            lam = torch.cumsum(log_f, dim=-1)
            previous = cache.last_lam(layer)  # (B, H, 1), or None before the first token
            if previous is not None:
                lam = lam + previous
        n_new = q.shape[-2]
        k, v, lam_keys = cache.update(layer, k, v, lam)
        query_pos, key_pos = cache.positions(layer, n_new, q.device)
        if log_f is None:  # plain SDPA
            if not cache.static and n_new == k.shape[-2]:  # a prefill: nothing cached before
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            if not cache.static and n_new == 1:  # one query sees every cached key
                return F.scaled_dot_product_attention(q, k, v)
            keep = key_pos[None, :] <= query_pos[:, None]
            return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)
        scores = q @ k.transpose(-2, -1) * self.scale + lam[..., :, None] - lam_keys[..., None, :]
        future = key_pos[None, :] > query_pos[:, None]  # (M, N)
        scores = scores.masked_fill(future, float("-inf"))
        probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
        return probs @ v

    def project_cached(self, x: torch.Tensor, before=None):
        """project(x) for generation: q, k, v, log_f, and for Pro the unshifted (k, v) of x's
        last token, the next call's token shift input (else None). before: that pair of the
        token before x's first (None at the start: x_{-1} = 0, as in training)."""
        if not self.config.pro:
            return (*self.project(x), None)
        q, k, v = (self.split_heads(proj(x)) for proj in (self.q_proj, self.k_proj, self.v_proj))
        last = k[:, :, -1:], v[:, :, -1:]
        before_k, before_v = (None, None) if before is None else before
        a_k, a_v = torch.sigmoid(self.shift_gate(x)).transpose(1, 2).chunk(2, dim=1)
        k, v = kv_shift_after(k, a_k, before_k), kv_shift_after(v, a_v, before_v)
        q, k = self.q_norm(q), self.k_norm(k)
        log_f = None
        if self.fgate is not None:
            log_f = F.logsigmoid(self.fgate(x).float()).transpose(1, 2)
        return q, k, v, log_f, last

    def forward(self, x: torch.Tensor, cache: "FoXCache | None" = None, layer: int = 0) -> torch.Tensor:
        """x: (B, T, hidden) -> (B, T, hidden). With a cache (generation), x holds the tokens
        after the cached ones, and this layer's (index `layer`) entries are appended to it."""
        if cache is None:
            o = self.attend(*self.project(x))
        else:
            q, k, v, log_f, last = self.project_cached(x, cache.shift_state(layer))
            cache.set_shift_state(layer, last)
            o = self.attend_cached(q, k, v, log_f, cache, layer)
        if self.config.pro:
            o = self.out_norm(o)
        o = o.transpose(1, 2).flatten(2)
        if self.config.pro:
            o = o * torch.sigmoid(self.out_gate(x))
        return self.o_proj(o)


def kv_shift_after(x: torch.Tensor, a: torch.Tensor, before: torch.Tensor | None) -> torch.Tensor:
    """kv_shift for generation: x_{-1} = before (B, H, 1, D), the unshifted x of the token
    before x's first, or 0 when None (then it is kv_shift itself)."""
    if before is None:
        return kv_shift(x, a)
    previous = torch.cat([before.to(x.dtype), x[:, :, :-1]], dim=2)
    a = a.unsqueeze(-1).to(x.dtype)
    return a * previous + (1 - a) * x


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

    def forward(self, x: torch.Tensor, cache=None, layer: int = 0) -> torch.Tensor:
        if cache is None:  # training: the attention is called with x alone (hooks see (x,))
            x = x + self.attn(self.attn_norm(x))
        else:
            x = x + self.attn(self.attn_norm(x), cache, layer)
        return x + self.mlp(self.mlp_norm(x))


class FoXLM(nn.Module):
    """Byte-level causal language model: tokens (B, T) int64 -> logits (B, T, vocab).

    Generation: `model(tokens, cache=model.new_cache())` prefills a cache of keys, values and lam
    (the cumulative log forget gate), and each later call with the same cache attends its new
    tokens over everything cached (a chunked prefill, or one token when decoding). FoXCache is
    written like Hugging Face's DynamicCache (torch.cat, dynamic shapes), FoXStaticCache like its
    StaticCache (preallocated, written in place, fixed shapes for CUDA graphs). Without a cache
    the forward is the training forward. docs/generation.md has the details.
    """

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

    def forward(self, tokens: torch.Tensor,
                cache: "FoXCache | FoXStaticCache | None" = None) -> torch.Tensor:
        """tokens (B, T) -> logits (B, T, vocab). With a cache (generation: see new_cache),
        tokens are the T tokens after the cached ones; their keys, values and lam are appended
        to the cache, and the logits are those of these T positions."""
        if cache is not None:
            return self._forward_cached(tokens, cache)
        x = self.embed(tokens)
        for block in self.blocks:
            if self.config.activation_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        return self.lm_head(self.norm(x))

    def _forward_cached(self, tokens: torch.Tensor, cache) -> torch.Tensor:
        if cache.layers != len(self.blocks):
            raise ValueError(f"the cache has {cache.layers} layers, the model {len(self.blocks)}")
        x = self.embed(tokens)
        for layer, block in enumerate(self.blocks):
            x = block(x, cache, layer)
        cache.advance(tokens.shape[1])
        return self.lm_head(self.norm(x))

    def new_cache(self, static: bool = False, batch: int = 1, max_length: int = 0,
                  dtype: torch.dtype | None = None, device=None):
        """An empty generation cache for this model: a FoXCache (dynamic shapes; concatenating,
        or with max_length > 0 preallocated and written in place) or, with static=True, a
        FoXStaticCache of `batch` sequences of up to `max_length` tokens, its k and v in `dtype`
        (default: the parameters'; under autocast pass the autocast dtype), on `device`
        (default: the parameters')."""
        if not static:
            return FoXCache(len(self.blocks), max_length)
        weight = self.lm_head.weight
        return FoXStaticCache(self.config, batch, max_length, dtype or weight.dtype,
                              device or weight.device, layers=len(self.blocks))


class FoXCache:
    """Generation cache of a FoXLM with dynamic shapes: per layer the keys and values
    (B, H, N, D), lam (B, H, N) fp32 (the cumulative log forget gate, which the next tokens' lam
    continues) and, for Pro, the unshifted k and v of the last token (the token shift's input).

    Two storages:
    - max_length = 0 (default), like Hugging Face's DynamicCache: each call concatenates the new
      tokens' entries (torch.cat: new tensors, nothing changed in place) and attends over the
      result. Every step copies the cache, and a compiled step holds the old and the new one.
    - max_length > 0, like gpt-fast's cache: storage for max_length tokens (doubled when full),
      the new entries written in place (`k_store[:, :, P:P+M] = k`) and the attention reading
      the filled prefix (a view): one slot written per step.
    The number of keys grows at every call: under torch.compile, Dynamo compiles the prefill and
    then one or two decoding graphs, the later one with a dynamic length. The prefill of an
    empty cache attends over the prompt's own k, v and lam (offset 0, the training path's
    attention). The lam of the last token is kept apart (`last`), so that the storage is only
    written before the attention reads it.
    """

    static = False

    def __init__(self, layers: int, max_length: int = 0):
        self.layers, self.capacity = layers, max_length or 0
        # preallocated, a flag apart from the size: control flow on a number would make Dynamo
        # compile the model again for every max_length
        self.preallocated = bool(max_length)
        self.filled = 0  # tokens in the preallocated storage
        self.k: list = [None] * layers
        self.v: list = [None] * layers
        self.lam: list = [None] * layers
        self.last: list = [None] * layers
        self.shift: list = [None] * layers

    @property
    def length(self) -> int:
        """Tokens in the cache."""
        if self.preallocated:
            return self.filled
        return 0 if self.k[0] is None else self.k[0].shape[2]

    def last_lam(self, layer: int):
        """lam of the last cached token, (B, H, 1) fp32; None when nothing is cached."""
        return self.last[layer]

    def update(self, layer: int, k, v, lam):
        """Append the new tokens' k, v (B, H, M, D) and lam (B, H, M) (None for SDPA); return
        k, v and lam of all N = past + M keys."""
        if lam is not None:
            self.last[layer] = lam[:, :, -1:].clone()  # a view would keep the chunk's lam
        if not self.preallocated:
            if self.k[layer] is not None:
                k = torch.cat([self.k[layer], k], dim=2)
                v = torch.cat([self.v[layer], v], dim=2)
                if lam is not None:
                    lam = torch.cat([self.lam[layer], lam], dim=2)
            self.k[layer], self.v[layer], self.lam[layer] = k, v, lam
            return k, v, lam
        past, end = self.filled, self.filled + k.shape[2]
        stored = [k, v] + ([lam] if lam is not None else [])
        names = ("k", "v", "lam")[:len(stored)]
        size = 0 if self.k[layer] is None else self.k[layer].shape[2]
        if end > size:  # allocate, or grow: a copy, rare
            size = max(end, self.capacity, 2 * size)
            for name, new in zip(names, stored):
                old = getattr(self, name)[layer]
                store = new.new_zeros(*new.shape[:2], size, *new.shape[3:])
                if old is not None:
                    store[:, :, :past] = old[:, :, :past]
                getattr(self, name)[layer] = store
        for name, new in zip(names, stored):
            getattr(self, name)[layer][:, :, past:end] = new
        if past == 0:
            return k, v, lam
        return (self.k[layer][:, :, :end], self.v[layer][:, :, :end],
                None if lam is None else self.lam[layer][:, :, :end])

    def positions(self, layer: int, n_new: int, device):
        """(query positions (M,), key positions (N,)), int64, after update(layer, ...)."""
        n_keys = self.filled + n_new if self.preallocated else self.k[layer].shape[2]
        return (torch.arange(n_new, device=device) + (n_keys - n_new),
                torch.arange(n_keys, device=device))

    def shift_state(self, layer: int):
        return self.shift[layer]

    def set_shift_state(self, layer: int, state):
        if state is not None:  # copies: views would keep the whole projection alive
            self.shift[layer] = tuple(t.clone() for t in state)

    def advance(self, n_new: int):
        if self.preallocated:
            self.filled += n_new


class FoXStaticCache:
    """Generation cache of a FoXLM whose shapes never change (mode="reduce-overhead", CUDA graphs):
    the same entries as FoXCache, preallocated for `max_length` tokens and written in place
    (index_copy_ at the positions `position` (a 0-d int64 device tensor) holds), and attention
    always reads all max_length slots, masking the unfilled ones through the positions. Nothing
    here is a Python number that changes between steps. The tensors are marked as static
    addresses, so CUDA graphs read them in place. Writing past max_length is an index error.

    Each storage is written before the attention reads it, or after every attention of the
    step: k, v and lam in update(), before their layer's attention; the lam of the last token
    (`last`, which the next step's lam continues) and Pro's shift state, which the attention
    reads before the step's new values exist, in advance(), after the last layer. (A write
    between two reads of one storage would make fox_acp's matcher decline the site.)
    """

    static = True

    def __init__(self, config: FoXConfig, batch: int, max_length: int, dtype: torch.dtype,
                 device, layers: int | None = None):
        if max_length < 1:
            raise ValueError("a static cache needs max_length >= 1")
        self.layers = config.layers if layers is None else layers
        self.max_length = max_length
        H, D = config.heads, config.head_dim

        def zeros(*shape, dtype=dtype):
            t = torch.zeros(shape, dtype=dtype, device=device)
            torch._dynamo.mark_static_address(t)
            return t

        self.position = zeros(dtype=torch.int64)
        self.k = [zeros(batch, H, max_length, D) for _ in range(self.layers)]
        self.v = [zeros(batch, H, max_length, D) for _ in range(self.layers)]
        self.lam = [zeros(batch, H, max_length, dtype=torch.float32) if config.attention == "fox"
                    else None for _ in range(self.layers)]
        self.shift = [(zeros(batch, H, 1, D), zeros(batch, H, 1, D)) if config.pro else None
                      for _ in range(self.layers)]
        self.last = [zeros(batch, H, 1, dtype=torch.float32) if config.attention == "fox"
                     else None for _ in range(self.layers)]
        self._pending = {}  # (what, layer) -> the value advance() writes

    @classmethod
    def from_cache(cls, cache: FoXCache, config: FoXConfig, max_length: int) -> "FoXStaticCache":
        """A static copy of a filled FoXCache (prefill with dynamic shapes, then decode under
        CUDA graphs)."""
        first = cache.k[0]
        static = cls(config, first.shape[0], max_length, first.dtype, first.device,
                     layers=cache.layers)
        return static.load(cache)

    def load(self, cache: FoXCache) -> "FoXStaticCache":
        """Replace the contents with those of a filled FoXCache, in place (the tensors keep
        their addresses, so CUDA graphs recorded on this cache stay valid). Returns self."""
        n = cache.length
        if n > self.max_length:
            raise ValueError(f"the cache holds {n} tokens, more than max_length {self.max_length}")
        self.reset()
        with torch.no_grad():
            for layer in range(self.layers):
                self.k[layer][:, :, :n] = cache.k[layer][:, :, :n]
                self.v[layer][:, :, :n] = cache.v[layer][:, :, :n]
                if self.lam[layer] is not None:
                    self.lam[layer][:, :, :n] = cache.lam[layer][:, :, :n]
                    self.last[layer].copy_(cache.last[layer])
                if self.shift[layer] is not None:
                    for mine, theirs in zip(self.shift[layer], cache.shift[layer]):
                        mine.copy_(theirs)
            self.position.fill_(n)
        return self

    def reset(self):
        """Empty the cache in place (the tensors keep their addresses)."""
        with torch.no_grad():
            for t in [self.position, *self.k, *self.v, *self.lam, *self.last,
                      *(s for pair in self.shift if pair is not None for s in pair)]:
                if t is not None:
                    t.zero_()

    def last_lam(self, layer: int):
        """lam of the last cached token, (B, H, 1) fp32 (0 when nothing is cached)."""
        return self.last[layer]

    def update(self, layer: int, k, v, lam):
        """Write the new tokens' entries at positions position..position+M-1; return the whole
        storage (max_length keys; positions() tells which are filled)."""
        index = self.position + torch.arange(k.shape[2], device=k.device)
        self.k[layer].index_copy_(2, index, k.to(self.k[layer].dtype))
        self.v[layer].index_copy_(2, index, v.to(self.v[layer].dtype))
        if lam is not None:
            self.lam[layer].index_copy_(2, index, lam)
            self._pending["last", layer] = lam[:, :, -1:]
        return self.k[layer], self.v[layer], self.lam[layer]

    def positions(self, layer: int, n_new: int, device):
        """(query positions (M,), key positions (max_length,)), int64: the unfilled slots lie
        after every query."""
        return (self.position + torch.arange(n_new, device=device),
                torch.arange(self.max_length, device=device))

    def shift_state(self, layer: int):
        return self.shift[layer]

    def set_shift_state(self, layer: int, state):
        if state is not None:  # written in advance(): the attention has read the old one
            self._pending["shift", layer] = state

    def advance(self, n_new: int):
        """After the last layer: the last token's lam and shift state, and the position."""
        for (what, layer), value in self._pending.items():
            if what == "last":
                self.last[layer].copy_(value)
            else:
                for mine, new in zip(self.shift[layer], value):
                    mine.copy_(new)
        self._pending = {}
        self.position.add_(n_new)


def build_model(name: str, pro: bool = False, **overrides) -> FoXLM:
    """Build the model of config `name` ("tiny", "125m", "360m", "760m").

    `overrides` replace FoXConfig fields, e.g. attention="sdpa", activation_checkpointing=True.
    The model is created on the current default device (use `with torch.device("meta")` to
    count parameters without allocating them).
    """
    if name not in CONFIGS:
        raise ValueError(f"unknown config {name!r}; choose from {sorted(CONFIGS)}")
    return FoXLM(replace(CONFIGS[name], pro=pro, **overrides))
