"""Things that look like forgetting attention but are not (or are, but must not be pruned).

None of these may be rewritten as prunable FoX, and the compiled model must still equal eager. The
reference hooks return the forgetting attention a careless rewrite would produce from the same
q / k / v / lam ("differs": eager must not equal it), or, where the model really is that operator
but must be declined or left unpruned for another reason, the operator itself ("equal").
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import Case, Ref
from .reference import cumlog, fox_reference

F64 = torch.float64


def _randn(*shape, dtype, scale=1.0):
    return torch.randn(*shape, dtype=dtype) * scale


def _gate(*shape, dtype):
    # stronger decay than the positives (about -0.9 a step) so near misses differ visibly
    return torch.randn(*shape, dtype=dtype) * 1.5


def _qkvg(B, H, T, D, dtype):
    return (
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _randn(B, H, T, D, dtype=dtype),
        _gate(B, H, T, dtype=dtype),
    )


def _causal(T, device):
    return torch.ones(T, T, dtype=torch.bool, device=device).tril()


def ref_fox_logsig(fn, inputs):
    """FoX on (q, k, v, logsigmoid gate) in (B, H, T, D)."""
    q, k, v, g = inputs[:4]
    lam = cumlog(F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


def ref_plain_causal(fn, inputs):
    q, k, v = inputs[:3]
    return Ref(fox_reference(q, k, v, None))


# ---------------------------------------------------------------------------------------------
# The decay multiplied into the scores instead of added to them.
def decay_times_scores(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    decay = torch.exp(lam[..., :, None] - lam[..., None, :])
    T = q.shape[-2]
    s = (q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5 * decay
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


# A per-key gate multiplied into the scores.
def key_gate_times_scores(q, k, v, g):
    f = torch.sigmoid(g)  # (B, H, T)
    T = q.shape[-2]
    s = q @ k.mT * q.shape[-1] ** -0.5 * f[..., None, :]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return torch.softmax(s, dim=-1) @ v


# A per-query-row temperature on the decay: r_i * (c_i - c_j) is not a_i - b_j.
def row_scaled_decay(q, k, v, g, r):
    lam = F.logsigmoid(g).cumsum(-1)
    temp = F.softplus(r)[..., :, None]  # (B, H, T, 1): depends on the query row
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + temp * (lam[..., :, None] - lam[..., None, :])
    T = s.shape[-1]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return F.softmax(s, dim=-1) @ v


def build_row_scaled(dtype):
    B, H, T, D = 2, 2, 17, 8
    return row_scaled_decay, _qkvg(B, H, T, D, dtype) + (_randn(B, H, T, dtype=dtype) * 2 + 1,)


# Contextual positions (CoPE-like): gates sigmoid(q_i . k_j), positions = sum of gates from j to i.
def contextual_position_bias(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    causal = _causal(T, q.device)
    gates = torch.sigmoid(s).masked_fill(~causal, 0.0)
    pos = gates.flip(-1).cumsum(-1).flip(-1)  # pos[i, j] = sum_{l >= j} gate[i, l]
    s = (s - 0.5 * pos).masked_fill(~causal, float("-inf"))
    return s.softmax(-1) @ v


# Stick-breaking attention: A_ij = beta_ij prod_{j<l<i} (1 - beta_il); no softmax.
def stick_breaking(q, k, v):
    z = q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5
    T = z.shape[-1]
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=z.device), diagonal=-1)
    log_beta = F.logsigmoid(z)
    log_1m = F.logsigmoid(-z).masked_fill(~strict, 0.0)
    between = log_1m.flip(-1).cumsum(-1).flip(-1) - log_1m  # sum over j < l < i
    log_att = (log_beta + between).masked_fill(~strict, float("-inf"))
    return log_att.exp() @ v


# Selective attention: a cumsum over the query axis of a T x T selection matrix.
def selective_attention(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    causal = _causal(T, q.device)
    eye = torch.eye(T, dtype=torch.bool, device=q.device)
    sel = F.relu(s).masked_fill(~causal | eye, 0.0)
    forget = torch.cumsum(sel, dim=-2) - sel  # sum over earlier queries l < i of sel[l, j]
    s = (s - forget).masked_fill(~causal, float("-inf"))
    return torch.softmax(s, -1) @ v


# RetNet retention: gamma^(i-j) decay, no softmax.
class Retention(nn.Module):
    def __init__(self, heads=3):
        super().__init__()
        gammas = 1 - 2.0 ** (-2 - torch.arange(heads, dtype=torch.float32))
        self.register_buffer("log_gamma", torch.log(gammas))

    def forward(self, q, k, v):
        T = q.shape[2]
        n = torch.arange(T, device=q.device)
        dist = (n[:, None] - n[None, :]).to(q.dtype)
        decay = torch.exp(self.log_gamma[:, None, None] * dist).masked_fill(~_causal(T, q.device), 0.0)
        ret = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * decay
        return ret @ v


def build_retention(dtype):
    B, H, T, D = 2, 3, 15, 8
    return Retention(H).to(dtype), tuple(_randn(B, H, T, D, dtype=dtype) for _ in range(3))


def ref_retention(m, inputs):
    q, k, v = inputs
    lam = m.log_gamma.double()[:, None] * torch.arange(q.shape[2], dtype=F64)
    return Ref(fox_reference(q, k, v, lam))


# Mamba-2's quadratic (SSD) form: exp(segsum(A)) * (C B^T) X, no softmax.
def _ssd_segsum(x):
    T = x.size(-1)
    x_cumsum = torch.cumsum(x, dim=-1)
    seg = x_cumsum[..., :, None] - x_cumsum[..., None, :]
    mask = torch.tril(torch.ones(T, T, device=x.device, dtype=torch.bool), diagonal=0)
    return seg.masked_fill(~mask, -torch.inf)


def ssd_quadratic(X, A, B, C):  # X: (b, l, h, p); A: (b, h, l) <= 0; B, C: (b, l, h, n)
    L = torch.exp(_ssd_segsum(A))
    return torch.einsum("blhn,bshn,bhls,bshp->blhp", C, B, L, X)


def build_ssd(dtype):
    b, l, h, p, n = 2, 13, 2, 8, 8
    A = -F.softplus(_randn(b, h, l, dtype=dtype))
    return ssd_quadratic, (
        _randn(b, l, h, p, dtype=dtype),
        A,
        _randn(b, l, h, n, dtype=dtype),
        _randn(b, l, h, n, dtype=dtype),
    )


def ref_ssd(fn, inputs):
    X, A, B, C = inputs
    lam = cumlog(A)
    o = fox_reference(C.transpose(1, 2), B.transpose(1, 2), X.transpose(1, 2), lam, 1.0)
    return Ref(o.transpose(1, 2))


# mLSTM parallel form: exp(D - m) decay matrix with a max-stabiliser that looks like a hand-written
# softmax, but the normaliser is max(|row sum|, exp(-m)).
def mlstm_parallel(q, k, v, i_gate, f_gate):
    lam = F.logsigmoid(f_gate).cumsum(-1)
    T = q.shape[-2]
    logD = lam[..., :, None] - lam[..., None, :] + i_gate[..., None, :]
    logD = logD.masked_fill(~_causal(T, q.device), float("-inf"))
    m = logD.amax(-1, keepdim=True)
    C = (q @ k.transpose(-1, -2)) * q.shape[-1] ** -0.5 * torch.exp(logD - m)
    n = torch.maximum(C.sum(-1, keepdim=True).abs(), torch.exp(-m))
    return (C / (n + 1e-6)) @ v


def build_mlstm(dtype):
    B, H, T, D = 2, 2, 13, 8
    q, k, v, f = _qkvg(B, H, T, D, dtype)
    return mlstm_parallel, (q, k, v, _randn(B, H, T, dtype=dtype), f)


def ref_mlstm(fn, inputs):
    q, k, v, _, f = inputs
    return Ref(fox_reference(q, k, v, cumlog(F.logsigmoid(f))))


# An elementwise clamp of the T x T bias.
def clamped_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    bias = (lam[..., :, None] - lam[..., None, :]).clamp(min=-4.0)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


# No causal mask: the bias grows into the future.
def bidirectional_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5
    s = s + lam[..., :, None] - lam[..., None, :]
    return s.softmax(-1) @ v


# Softmax over the query axis.
def softmax_over_queries(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(dim=-2) @ v


# A gate built with softplus (>= 0): lam rises, weights grow toward the past.
def softplus_gate(q, k, v, g):
    lam = F.softplus(g).cumsum(-1)
    T = q.shape[-2]
    s = torch.matmul(q, k.transpose(-2, -1)) * q.shape[-1] ** -0.5
    s = s + (lam[..., :, None] - lam[..., None, :])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return torch.matmul(s.softmax(-1), v)


def build_softplus_gate(dtype):
    q, k, v, g = _qkvg(2, 2, 11, 8, dtype)
    return softplus_gate, (q, k, v, g - 2.0)


def ref_softplus_gate(fn, inputs):
    q, k, v, g = inputs
    lam = cumlog(F.softplus(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


# c_i + c_j: separable, but the key side is -c_j, which rises.
def c_plus_c(q, k, v, g):
    c = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (c[..., :, None] + c[..., None, :])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


def ref_c_plus_c(fn, inputs):
    q, k, v, g = inputs
    lam = -cumlog(F.logsigmoid(g.double()))  # c_i + c_j = (-c_j) - (-c_i) + 2 c_i: row term drops
    return Ref(fox_reference(q, k, v, lam), [lam])


# ALiBi with the sign flipped: +slope * (i - j) favours the distant past.
class FlippedAlibi(nn.Module):
    def __init__(self, slope=0.25):
        super().__init__()
        self.slope = slope

    def forward(self, q, k, v):
        T = q.shape[-2]
        pos = torch.arange(T, device=q.device)
        rel = (pos[:, None] - pos[None, :]).to(q.dtype)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + self.slope * rel
        s = s.masked_fill(pos[None, :] > pos[:, None], float("-inf"))
        return s.softmax(-1) @ v


def build_flipped_alibi(dtype):
    return FlippedAlibi(), tuple(_randn(1, 2, 19, 12, dtype=dtype) for _ in range(3))


def ref_flipped_alibi(m, inputs):
    q, k, v = inputs
    lam = (m.slope * torch.arange(q.shape[-2], dtype=F64)).expand(q.shape[0], q.shape[1], -1)
    return Ref(fox_reference(q, k, v, lam), [lam])


# A negative constant times logsigmoid: log f >= 0.
def negated_gate(q, k, v, g):
    lam = (-0.5 * F.logsigmoid(g)).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


def ref_negated_gate(fn, inputs):
    q, k, v, g = inputs
    lam = cumlog(-0.5 * F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


# Attention sinks: S extra key/value columns (per batch, given) with bias 0 for every query.
def fox_with_sinks(q, k, v, g, k_sink, v_sink):
    B, H, T, _ = q.shape
    S = k_sink.shape[2]
    lam = F.logsigmoid(g).cumsum(-1)
    kk, vv = torch.cat([k_sink, k], dim=2), torch.cat([v_sink, v], dim=2)
    bias = (lam[..., :, None] - lam[..., None, :]).masked_fill(~_causal(T, q.device), float("-inf"))
    bias = torch.cat([torch.zeros(B, H, T, S, dtype=bias.dtype, device=q.device), bias], dim=-1)
    s = q @ kk.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    return s.softmax(-1) @ vv


def build_sinks(dtype):
    B, H, T, D, S = 2, 2, 21, 8, 2
    return fox_with_sinks, _qkvg(B, H, T, D, dtype) + (
        _randn(B, H, S, D, dtype=dtype) * 2,
        _randn(B, H, S, D, dtype=dtype),
    )


# Learned memory tokens (module parameters), zero bias padded in with F.pad.
class MemoryTokenForget(nn.Module):
    def __init__(self, heads=2, head_dim=12, num_mem=3):
        super().__init__()
        self.mem_k = nn.Parameter(torch.randn(heads, num_mem, head_dim) * 2)
        self.mem_v = nn.Parameter(torch.randn(heads, num_mem, head_dim))

    def forward(self, q, k, v, g):
        B, H, T, D = q.shape
        M = self.mem_k.shape[1]
        k = torch.cat([self.mem_k.expand(B, -1, -1, -1), k], dim=2)
        v = torch.cat([self.mem_v.expand(B, -1, -1, -1), v], dim=2)
        lam = F.logsigmoid(g).cumsum(-1)
        bias = lam[..., :, None] - lam[..., None, :]
        bias = F.pad(bias, (M, 0), value=0.0)
        s = torch.einsum("bhid,bhjd->bhij", q, k) * D**-0.5 + bias
        keep = F.pad(_causal(T, q.device), (M, 0), value=True)
        s = s.masked_fill(~keep, float("-inf"))
        return torch.einsum("bhij,bhjd->bhid", s.softmax(-1), v)


def build_memory(dtype):
    return MemoryTokenForget().to(dtype), _qkvg(1, 2, 17, 12, dtype)


# The probabilities are returned.
def fox_returning_probs(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (lam[..., :, None] - lam[..., None, :])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    p = s.softmax(-1)
    return p @ v, p


# The probabilities feed an entropy regulariser.
class EntropyRegularisedForget(nn.Module):
    def forward(self, q, k, v, g):
        lam = torch.cumsum(F.logsigmoid(g), dim=-1)
        T = q.shape[-2]
        s = torch.matmul(q, k.transpose(-2, -1)) / math.sqrt(q.shape[-1])
        s = s + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
        p = F.softmax(s, dim=-1)
        entropy = -(p * p.clamp_min(1e-9).log()).sum(-1).mean()
        return torch.matmul(p, v), entropy


# The pre-softmax scores are returned (for distillation).
def fox_returning_logits(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = torch.einsum("bhqd,bhkd->bhqk", q, k) * q.shape[-1] ** -0.5
    s = s + lam[..., :, None] - lam[..., None, :]
    s = torch.where(_causal(T, q.device), s, float("-inf"))
    return torch.einsum("bhqk,bhkd->bhqd", s.softmax(-1), v), s


# Plain causal attention, no bias: nothing to gain.
def plain_causal(q, k, v):
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return F.softmax(s, dim=-1) @ v


def plain_sdpa_causal(q, k, v):
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


# Dropout on the probabilities in training.
class TrainingDropoutForget(nn.Module):
    def __init__(self):
        super().__init__()
        self.drop = nn.Dropout(0.2)

    def forward(self, q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        T = q.shape[-2]
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~_causal(T, q.device), float("-inf"))
        return self.drop(s.softmax(-1)) @ v


def build_train_dropout(dtype):
    return TrainingDropoutForget().train(), _qkvg(2, 2, 13, 8, dtype)


# Sigmoid attention with a FoX bias: no softmax.
def sigmoid_attention_with_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    w = torch.sigmoid(s - math.log(T)).masked_fill(~_causal(T, q.device), 0.0)
    return w @ v


# A sliding window on top of the decay: a full-causal rewrite would be wrong.
def windowed_decay(q, k, v, g, window=4):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    i = torch.arange(T, device=q.device)[:, None]
    j = torch.arange(T, device=q.device)[None, :]
    keep = (j <= i) & (i - j < window)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~keep, float("-inf"))
    return s.softmax(-1) @ v


def build_window(dtype):
    q, k, v, g = _qkvg(2, 2, 21, 8, dtype)
    return windowed_decay, (q, k, v, g + 2.0)


def ref_window(fn, inputs):
    q, k, v, g = inputs
    lam = cumlog(F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam), [lam])


# Diagonal excluded from the mask (j < i), first row repaired with nan_to_num.
def strict_causal_decay(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    strict = torch.tril(torch.ones(T, T, dtype=torch.bool, device=q.device), diagonal=-1)
    p = torch.nan_to_num(s.masked_fill(~strict, float("-inf")).softmax(-1))
    return p @ v


# One FoX layer, then a layer whose bias is clamped: one site, one decline.
class ForgetThenClamped(nn.Module):
    def __init__(self, dim=16, heads=2):
        super().__init__()
        self.heads = heads
        self.qkv1 = nn.Linear(dim, 3 * dim, bias=False)
        self.f1 = nn.Linear(dim, heads)
        self.qkv2 = nn.Linear(dim, 3 * dim, bias=False)
        self.f2 = nn.Linear(dim, heads)

    def heads_of(self, proj, x):
        B, T, C = x.shape
        return [t.view(B, T, self.heads, C // self.heads).transpose(1, 2) for t in proj(x).chunk(3, -1)]

    def merge(self, o):
        B, H, T, D = o.shape
        return o.transpose(1, 2).reshape(B, T, H * D)

    def second(self, x):
        q, k, v = self.heads_of(self.qkv2, x)
        lam = F.logsigmoid(self.f2(x)).transpose(1, 2).cumsum(-1)
        return x + self.merge(clamped_decay_lam(q, k, v, lam))

    def forward(self, x):
        T = x.shape[1]
        q, k, v = self.heads_of(self.qkv1, x)
        lam = F.logsigmoid(self.f1(x)).transpose(1, 2).cumsum(-1)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (lam[..., :, None] - lam[..., None, :])
        s = s.masked_fill(~_causal(T, x.device), float("-inf"))
        x = x + self.merge(s.softmax(-1) @ v)
        return self.second(x)


def clamped_decay_lam(q, k, v, lam):
    T = q.shape[-2]
    bias = (lam[..., :, None] - lam[..., None, :]).clamp(min=-3.0)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


def build_mixed(dtype):
    return ForgetThenClamped().to(dtype), (_randn(2, 15, 16, dtype=dtype),)


def ref_mixed(m, inputs):
    (x,) = inputs
    q, k, v = m.heads_of(m.qkv1, x)
    lam = cumlog(F.logsigmoid(m.f1(x).double()), dim=1).transpose(1, 2)
    x = x + m.merge(fox_reference(q, k, v, lam))
    return Ref(m.second(x), [lam])  # the second layer is a near miss: eager code


def _qkvg_builder(fn, B, H, T, D):
    def build(dtype):
        return fn, _qkvg(B, H, T, D, dtype)

    return build


def _qkv_builder(fn, B, H, T, D):
    def build(dtype):
        return fn, tuple(_randn(B, H, T, D, dtype=dtype) for _ in range(3))

    return build


def _module_qkvg_builder(cls, B, H, T, D):
    def build(dtype):
        return cls().to(dtype), _qkvg(B, H, T, D, dtype)

    return build


def _packed_inputs(B, H, T, D, dtype):
    """q, k, v, gate logits and the document ids (B, T) of random-length packed documents."""
    lengths = torch.randint(2, 9, (B, T))
    doc = torch.stack([torch.repeat_interleave(torch.arange(T), row)[:T] for row in lengths])
    return (*_qkvg(B, H, T, D, dtype), doc)


def ref_packed(fn, inputs):
    q, k, v, g, doc = inputs
    return Ref(fox_reference(q, k, v, cumlog(F.logsigmoid(g.double())), doc=doc))


def packed_without_causal(q, k, v, g, doc):
    """The document mask alone: every key of the document, future ones too."""
    c = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + c[..., :, None] - c[..., None, :]
    same = (doc[:, :, None] == doc[:, None, :])[:, None]
    return s.masked_fill(~same, float("-inf")).softmax(-1) @ v


def packed_two_id_vectors(q, k, v, g, doc):
    """Query ids and key ids from two different vectors (keys shifted by one document)."""
    c = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + c[..., :, None] - c[..., None, :]
    key_doc = doc + (doc[:, -1:] > 100).long()   # equal values, but a different tensor
    keep = (doc[:, :, None] == key_doc[:, None, :])[:, None] & _causal(q.shape[2], q.device)
    return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v


def packed_doc_le(q, k, v, g, doc):
    """doc_i <= doc_j with the causal mask: the packed mask only for ids that never decrease,
    which the graph cannot show."""
    c = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + c[..., :, None] - c[..., None, :]
    keep = (doc[:, :, None] <= doc[:, None, :])[:, None] & _causal(q.shape[2], q.device)
    return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v


def _packed_builder(fn, B, H, T, D):
    def build(dtype):
        return fn, _packed_inputs(B, H, T, D, dtype)

    return build


# ---------------------------------------------------------------------------------------------
# Padding masks that are not key masks. The careless rewrite would read the validity vector as a
# mask of the keys (lam = +inf on them).
def query_padding_mask(q, k, v, g, valid):  # valid[:, None, :, None]: masks queries, not keys
    T = q.shape[2]
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.mT * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() & valid[:, None, :, None]
    return s.masked_fill(~keep, torch.finfo(s.dtype).min).softmax(-1) @ v


def prefix_lm_mask(q, k, v, g, valid):  # bidirectional over each row's prefix: varies along i and j
    T = q.shape[2]
    lam = torch.cumsum(F.logsigmoid(g), dim=-1)
    s = q @ k.mT * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
    prefix = ~valid                      # the first positions of each row
    keep = torch.ones(T, T, dtype=torch.bool, device=q.device).tril() | (
        prefix[:, None, :, None] & prefix[:, None, None, :])
    return torch.where(keep, s, float("-inf")).softmax(-1) @ v


def _padded_builder(fn, B, H, T, D):
    def build(dtype):
        starts = torch.randint(3, T // 2, (B, 1))
        return fn, (*_qkvg(B, H, T, D, dtype), torch.arange(T)[None, :] >= starts)

    return build


def ref_fox_key_masked(fn, inputs):
    """FoX with the validity vector as a key mask (its padded rows NaN: compared on `rows`)."""
    q, k, v, g, valid = inputs
    lam = cumlog(F.logsigmoid(g.double()))
    return Ref(fox_reference(q, k, v, lam, keys=valid), [lam])


def _nm(name, build, axes, note, ref, relation="differs", declined_min=1, decay=(), **kw):
    return Case(
        name=name,
        build=build,
        sites=len(decay),
        decay=list(decay),
        declined_min=declined_min,
        note=note,
        axes=tuple(axes.split()),
        reference=ref,
        relation=relation,
        **kw,
    )


NEAR_MISSES: list[Case] = [
    _nm("nm_decay_multiplied_into_scores", _qkvg_builder(decay_times_scores, 2, 2, 17, 8),
        "bias=multiplied exp(c_i-c_j)", "multiplicative decay", ref_fox_logsig),
    _nm("nm_key_gate_multiplied", _qkvg_builder(key_gate_times_scores, 2, 2, 13, 12),
        "gate=multiplied_per_key", "gate multiplied into the scores", ref_fox_logsig),
    _nm("nm_per_row_temperature", build_row_scaled,
        "bias=r_i*(c_i-c_j)", "per-row gate: bias depends on i and j jointly", ref_fox_logsig),
    _nm("nm_contextual_position", _qkv_builder(contextual_position_bias, 2, 2, 15, 8),
        "bias=cumsum over keys of sigmoid(q.k)", "q.k-dependent gate", ref_plain_causal),
    _nm("nm_stick_breaking", _qkv_builder(stick_breaking, 2, 2, 13, 8),
        "softmax=none stick_breaking", "no softmax", ref_plain_causal, declined_min=0),
    _nm("nm_selective_attention", _qkv_builder(selective_attention, 1, 2, 17, 8),
        "cumsum=query_axis_of_TxT", "selective attention", ref_plain_causal),
    _nm("nm_retnet_retention", build_retention,
        "softmax=none decay=gamma^(i-j)", "retention: decay without softmax", ref_retention, declined_min=0),
    _nm("nm_mamba2_quadratic", build_ssd,
        "softmax=none segsum einsum4", "SSD quadratic form", ref_ssd, declined_min=0),
    _nm("nm_mlstm_normaliser", build_mlstm,
        "softmax=none(max|sum|,exp(-m)) amax_exp", "looks like a hand-written softmax", ref_mlstm,
        declined_min=0),
    _nm("nm_clamped_bias", _qkvg_builder(clamped_decay, 2, 2, 25, 8),
        "bias=clamp(min=-4) of T x T", "non-linear function of the bias", ref_fox_logsig),
    _nm("nm_no_causal_mask", _qkvg_builder(bidirectional_decay, 2, 2, 15, 8),
        "mask=none", "the bias grows into the future", ref_fox_logsig),
    _nm("nm_softmax_over_queries", _qkvg_builder(softmax_over_queries, 1, 3, 13, 8),
        "softmax=dim-2", "wrong axis", ref_fox_logsig),
    _nm("nm_softplus_gate", build_softplus_gate,
        "gate=softplus(>=0)", "lam rises: may run, never pruned", ref_softplus_gate,
        relation="equal", declined_min=0, decay=["none"], may_decline=True),
    _nm("nm_c_plus_c", _qkvg_builder(c_plus_c, 2, 2, 15, 8),
        "bias=c_i+c_j", "separable, key side rises", ref_c_plus_c,
        relation="equal", declined_min=0, decay=["none"], may_decline=True),
    _nm("nm_alibi_sign_flipped", build_flipped_alibi,
        "alibi=+slope*(i-j)", "favours the distant past", ref_flipped_alibi,
        relation="equal", declined_min=0, decay=["none"], may_decline=True),
    _nm("nm_negative_constant_gate", _qkvg_builder(negated_gate, 2, 2, 11, 12),
        "gate=-0.5*logsigmoid", "a negative constant flips the sign", ref_negated_gate,
        relation="equal", declined_min=0, decay=["none"], may_decline=True),
    _nm("nm_attention_sinks", build_sinks,
        "sinks=zero_bias_columns cat", "breaks separability", ref_fox_logsig),
    _nm("nm_memory_tokens", _module_qkvg_builder(MemoryTokenForget, 1, 2, 17, 12),
        "memory=learned_kv F.pad(bias)", "zero-bias memory columns", ref_fox_logsig),
    _nm("nm_probs_returned", _qkvg_builder(fox_returning_probs, 2, 2, 13, 8),
        "output=probs", "the T x T probabilities leave the site", ref_fox_logsig, relation="equal"),
    _nm("nm_probs_entropy_regulariser", _module_qkvg_builder(EntropyRegularisedForget, 2, 2, 11, 8),
        "output=entropy(p)", "probabilities used elsewhere", ref_fox_logsig, relation="equal"),
    _nm("nm_logits_returned", _qkvg_builder(fox_returning_logits, 1, 2, 15, 12),
        "output=scores", "the T x T scores leave the site", ref_fox_logsig, relation="equal"),
    _nm("nm_plain_causal_no_bias", _qkv_builder(plain_causal, 2, 2, 17, 8),
        "bias=none", "nothing to gain", ref_plain_causal, relation="equal"),
    _nm("nm_plain_sdpa_is_causal", _qkv_builder(plain_sdpa_causal, 2, 2, 17, 8),
        "sdpa is_causal bias=none", "nothing to gain; SDPA already", ref_plain_causal, relation="equal",
        declined_min=0),
    _nm("nm_dropout_training", build_train_dropout,
        "dropout=nn.Dropout(train,p=0.2)", "random dropout mask inside the site", None, relation=None,
        training=True),
    _nm("nm_sigmoid_attention_decay", _qkvg_builder(sigmoid_attention_with_decay, 2, 2, 13, 8),
        "softmax=none(sigmoid)", "sigmoid attention", ref_fox_logsig, declined_min=0),
    _nm("nm_sliding_window", build_window,
        "mask=sliding_window(4)", "may be run only by a kernel that honours the window", ref_window,
        declined_min=0, decay=["proven"], may_decline=True),
    _nm("nm_strict_causal_nan_repair", _qkvg_builder(strict_causal_decay, 2, 2, 13, 8),
        "mask=tril(-1) nan_to_num", "the diagonal is excluded", ref_fox_logsig),
    _nm("nm_fox_then_clamped_layer", build_mixed,
        "sites=1 + clamped layer", "one site, one decline", ref_mixed, relation="equal",
        decay=["proven"], inductor=True),
    _nm("nm_packed_without_causal", _packed_builder(packed_without_causal, 2, 2, 21, 8),
        "padding=packed mask=same_doc_only", "the document mask alone sees the future", ref_packed),
    _nm("nm_packed_two_id_vectors", _packed_builder(packed_two_id_vectors, 2, 2, 19, 8),
        "padding=packed mask=doc_i==other_j", "ids of two different tensors compared", ref_packed,
        relation="equal"),
    _nm("nm_packed_doc_le", _packed_builder(packed_doc_le, 2, 2, 23, 8),
        "padding=packed mask=doc_i<=doc_j&tril", "equal to the packed mask only for monotone ids",
        ref_packed, relation="equal"),
    _nm("nm_query_padding_mask", _padded_builder(query_padding_mask, 2, 2, 17, 8),
        "padding=valid[:,None,:,None](queries) mask=tril&valid finfo.min",
        "a mask of the queries is not a key mask", ref_fox_key_masked,
        rows=lambda inputs: inputs[-1][:, None, :, None]),
    _nm("nm_prefix_lm_data_mask", _padded_builder(prefix_lm_mask, 2, 2, 19, 8),
        "padding=prefix_lm mask=tril|(prefix_i&prefix_j) where",
        "a mask from data varying along i and j (the prefix sees its future)", ref_fox_logsig),
]
