"""Positives: the attention inside larger models.

Activation checkpointing, dropout in eval mode, two layers (two sites), the FoX Pro block, and
torch.compile on a bound forward.

Each model is written as its own little codebase would write it (on purpose: no shared attention
helper); below it, its reference hook restates in canonical (B, H, T, D) form what it computes, and
`CASES.append(_case(...))` gives its labels (tests/corpus/__init__.py says what they mean).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint

from .. import Case, Ref
from ..reference import fox_reference
from .common import _case, _heads_first, _logsig_lam, _randn

CASES: list[Case] = []


# ---------------------------------------------------------------------------------------------
# Activation checkpointing: the attention core (gate included) runs in torch.utils.checkpoint.
class CheckpointedForget(nn.Module):
    def __init__(self, dim=32, heads=2, head_dim=16):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.to_qkv = nn.Linear(dim, 3 * heads * head_dim, bias=False)
        self.to_f = nn.Linear(dim, heads)
        self.to_out = nn.Linear(heads * head_dim, dim)

    @staticmethod
    def _core(q, k, v, f_logit):
        lam = F.logsigmoid(f_logit).cumsum(-1)
        T = q.shape[-2]
        s = torch.matmul(q, k.transpose(-1, -2)) * (q.shape[-1] ** -0.5)
        s = s + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=q.device).tril(), float("-inf"))
        return torch.matmul(torch.softmax(s, dim=-1), v)

    def forward(self, x):
        B, T, _ = x.shape
        q, k, v = self.to_qkv(x).chunk(3, dim=-1)
        q, k, v = (t.view(B, T, self.heads, self.head_dim).transpose(1, 2) for t in (q, k, v))
        f_logit = self.to_f(x).transpose(1, 2)
        o = torch.utils.checkpoint.checkpoint(self._core, q, k, v, f_logit, use_reentrant=False)
        return self.to_out(o.transpose(1, 2).reshape(B, T, -1))


def build_checkpoint(dtype):
    m = CheckpointedForget().to(dtype)
    return m, (_randn(2, 17, 32, dtype=dtype),)


def ref_checkpoint(m, inputs):
    (x,) = inputs
    B, T, _ = x.shape
    q, k, v = (_heads_first(t.reshape(B, T, m.heads, m.head_dim)) for t in m.to_qkv(x).chunk(3, dim=-1))
    lam = _logsig_lam(m.to_f(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.to_out(o.transpose(1, 2).reshape(B, T, -1)), [lam])


CASES.append(_case(
    "checkpointed_core", build_checkpoint,
    "host=torch.utils.checkpoint",
    "attention in a checkpoint subgraph", ref_checkpoint, inductor=True))


# ---------------------------------------------------------------------------------------------
# nn.Dropout on the probabilities, module in eval mode: dropout is the identity.
class DropoutForget(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.fgate = nn.Linear(dim, heads)
        self.attn_drop = nn.Dropout(0.1)

    def forward(self, x, q, k, v):
        lam = torch.cumsum(F.logsigmoid(self.fgate(x)), dim=1).transpose(1, 2)
        T = q.shape[2]
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(q.size(-1)))
        att = att + lam[:, :, :, None] - lam[:, :, None, :]
        att = att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool, device=x.device)), float("-inf"))
        att = self.attn_drop(F.softmax(att, dim=-1))
        return att @ v


def build_dropout_eval(dtype):
    B, H, T, D = 2, 2, 15, 12
    m = DropoutForget().to(dtype).eval()
    return m, (
        _randn(B, T, 16, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
    )


def ref_dropout_eval(m, inputs):
    x, q, k, v = inputs
    lam = _logsig_lam(m.fgate(x), dim=1).transpose(1, 2)
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_case(
    "dropout_eval_mode", build_dropout_eval,
    "dropout=nn.Dropout(eval)",
    "dropout is the identity in eval", ref_dropout_eval))


# ---------------------------------------------------------------------------------------------
# Two pre-norm FoX layers with residuals: two sites.
class ForgetLayer(nn.Module):
    def __init__(self, dim=24, heads=2):
        super().__init__()
        self.heads = heads
        self.norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.f = nn.Linear(dim, heads)
        self.o = nn.Linear(dim, dim, bias=False)

    def forward(self, x):
        B, T, C = x.shape
        h = self.norm(x)
        q, k, v = self.qkv(h).view(B, T, 3, self.heads, C // self.heads).unbind(2)
        q, k, v = q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)
        lam = F.logsigmoid(self.f(h)).transpose(1, 2).cumsum(-1)
        s = q @ k.transpose(-2, -1) * (C // self.heads) ** -0.5
        s = s + lam.unsqueeze(-1) - lam.unsqueeze(-2)
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        y = (s.softmax(-1) @ v).transpose(1, 2).reshape(B, T, C)
        return x + self.o(y)

    def reference(self, x):
        B, T, C = x.shape
        h = self.norm(x)
        q, k, v = (t.transpose(1, 2) for t in self.qkv(h).view(B, T, 3, self.heads, C // self.heads).unbind(2))
        lam = _logsig_lam(self.f(h), dim=1).transpose(1, 2)
        y = fox_reference(q, k, v, lam).transpose(1, 2).reshape(B, T, C)
        return x + self.o(y), lam


class TwoForgetLayers(nn.Module):
    def __init__(self):
        super().__init__()
        self.layers = nn.ModuleList([ForgetLayer(), ForgetLayer()])

    def forward(self, x):
        for layer in self.layers:
            x = layer(x)
        return x


def build_two_layers(dtype):
    m = TwoForgetLayers().to(dtype)
    return m, (_randn(2, 13, 24, dtype=dtype),)


def ref_two_layers(m, inputs):
    (x,) = inputs
    lams = []
    for layer in m.layers:
        x, lam = layer.reference(x)
        lams.append(lam)
    return Ref(x, lams)


CASES.append(_case(
    "two_layers", build_two_layers,
    "sites=2 layernorm residual",
    "two sites", ref_two_layers, sites=2))


# ---------------------------------------------------------------------------------------------
# The FoX "Pro" block: key/value shift, per-head RMSNorm on q and k, sigmoid output gate with a
# per-head RMSNorm before the output projection.
class HeadRMSNorm(nn.Module):
    def __init__(self, d, eps=1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d))

    def forward(self, x):
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


class ForgettingProAttention(nn.Module):
    def __init__(self, dim=32, heads=2, head_dim=16):
        super().__init__()
        self.h, self.d = heads, head_dim
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.fgate_proj = nn.Linear(dim, heads)
        self.shift_proj = nn.Linear(dim, heads)
        self.ogate_proj = nn.Linear(dim, heads * head_dim)
        self.q_norm, self.k_norm, self.o_norm = HeadRMSNorm(head_dim), HeadRMSNorm(head_dim), HeadRMSNorm(head_dim)
        self.o_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def shift(self, t, a):  # t_t <- a_t t_{t-1} + (1 - a_t) t_t, along dim 1 of (B, T, H, D)
        prev = F.pad(t, (0, 0, 0, 0, 1, 0))[:, :-1]
        return a * prev + (1 - a) * t

    def project(self, x):
        B, T, _ = x.shape
        q = self.q_proj(x).view(B, T, self.h, self.d)
        k = self.k_proj(x).view(B, T, self.h, self.d)
        v = self.v_proj(x).view(B, T, self.h, self.d)
        a = torch.sigmoid(self.shift_proj(x))[..., None]
        k, v = self.shift(k, a), self.shift(v, a)
        return self.q_norm(q), self.k_norm(k), v

    def finish(self, x, o):  # o: (B, H, T, D)
        B, T, _ = x.shape
        o = self.o_norm(o.transpose(1, 2)) * torch.sigmoid(self.ogate_proj(x)).view(B, T, self.h, self.d)
        return self.o_proj(o.reshape(B, T, self.h * self.d))

    def forward(self, x):
        T = x.shape[1]
        q, k, v = (t.transpose(1, 2) for t in self.project(x))
        lam = F.logsigmoid(self.fgate_proj(x)).cumsum(1).transpose(1, 2)
        s = q @ k.transpose(-1, -2) * self.d**-0.5 + (lam[..., :, None] - lam[..., None, :])
        s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool, device=x.device).tril(), float("-inf"))
        return self.finish(x, s.softmax(-1) @ v)


def build_pro(dtype):
    m = ForgettingProAttention().to(dtype)
    return m, (_randn(2, 19, 32, dtype=dtype),)


def ref_pro(m, inputs):
    (x,) = inputs
    q, k, v = (_heads_first(t) for t in m.project(x))
    lam = _logsig_lam(m.fgate_proj(x), dim=1).transpose(1, 2)
    return Ref(m.finish(x, fox_reference(q, k, v, lam)), [lam])


CASES.append(_case(
    "fox_pro_block", build_pro,
    "block=pro kv_shift qk_norm output_gate",
    "the FoX Pro block", ref_pro))


# ---------------------------------------------------------------------------------------------
# torch.compile on a bound forward of a LLaMA-like attention (mask built inside).
class LlamaLikeForget(nn.Module):
    def __init__(self, hidden_size=24, num_heads=3):
        super().__init__()
        self.num_heads, self.head_dim = num_heads, hidden_size // num_heads
        self.q_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.k_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.v_proj = nn.Linear(hidden_size, hidden_size, bias=False)
        self.f_proj = nn.Linear(hidden_size, num_heads, bias=True)
        self.o_proj = nn.Linear(hidden_size, hidden_size, bias=False)

    def forward(self, hidden_states):
        bsz, q_len, _ = hidden_states.size()
        shape = (bsz, q_len, self.num_heads, self.head_dim)
        query_states = self.q_proj(hidden_states).view(shape).transpose(1, 2)
        key_states = self.k_proj(hidden_states).view(shape).transpose(1, 2)
        value_states = self.v_proj(hidden_states).view(shape).transpose(1, 2)
        log_lambda = torch.cumsum(F.logsigmoid(self.f_proj(hidden_states)), dim=1).transpose(1, 2)
        attn_weights = torch.matmul(query_states, key_states.transpose(2, 3)) / math.sqrt(self.head_dim)
        attn_weights = attn_weights + log_lambda[:, :, :, None] - log_lambda[:, :, None, :]
        min_value = torch.finfo(attn_weights.dtype).min
        causal_mask = torch.full((q_len, q_len), min_value, dtype=attn_weights.dtype, device=hidden_states.device)
        causal_mask = torch.triu(causal_mask, diagonal=1)
        attn_weights = attn_weights + causal_mask[None, None]
        attn_weights = nn.functional.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query_states.dtype)
        attn_output = torch.matmul(attn_weights, value_states)
        attn_output = attn_output.transpose(1, 2).contiguous().reshape(bsz, q_len, -1)
        return self.o_proj(attn_output)


def build_bound_forward(dtype):
    m = LlamaLikeForget().to(dtype)
    return m.forward, (_randn(1, 27, 24, dtype=dtype),)


def ref_bound_forward(fwd, inputs):
    m = fwd.__self__
    (x,) = inputs
    B, T, C = x.shape
    shape = (B, T, m.num_heads, m.head_dim)
    q, k, v = (_heads_first(p(x).view(shape)) for p in (m.q_proj, m.k_proj, m.v_proj))
    lam = _logsig_lam(m.f_proj(x), dim=1).transpose(1, 2)
    o = fox_reference(q, k, v, lam)
    return Ref(m.o_proj(o.transpose(1, 2).reshape(B, T, C)), [lam])


CASES.append(_case(
    "compiled_bound_forward", build_bound_forward,
    "host=bound_forward mask=full(finfo.min).triu additive softmax=dtype_f32",
    "LLaMA-like", ref_bound_forward, mixed=True))
