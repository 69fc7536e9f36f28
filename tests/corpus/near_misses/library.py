"""Near misses of the rules that read what third-party libraries emit (tests/realworld): each one
looks like a form the matcher now accepts, and differs in the one way that must keep it declined.

    dead code        a user of the scores that looks unused but changes a tensor in place, or
                     draws random numbers
    pads, expands    a pad that adds a column (memory / null keys: bias 0 for every query), an
                     expand that broadcasts the q.k product along the heads

Each model is followed by its labels, `CASES.append(_nm(...))` (tests/corpus/__init__.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .. import Case
from .common import _causal, _nm, _qkvg, _qkvg_builder, ref_fox_logsig

CASES: list[Case] = []


def _scores(q, k, g):
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (lam[..., :, None] - lam[..., None, :])
    return s.masked_fill(~_causal(q.shape[-2], q.device), float("-inf"))


# ---- dead code --------------------------------------------------------------------------------

# The row maxima are written into a buffer (running statistics): the write is a side effect, so
# the scores have a live second user.
class RowMaxIntoStats(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.register_buffer("stats", torch.zeros(2, 2, 13))

    def forward(self, q, k, v, g):
        s = _scores(q, k, g)
        self.stats.copy_(s.amax(-1).detach())
        return s.softmax(-1) @ v


def _with_stats(dtype):
    return RowMaxIntoStats().to(dtype), _qkvg(2, 2, 13, 8, dtype)


CASES.append(_nm(
    "nm_dead_looking_copy_into_buffer", _with_stats, "output=side-effect",
    "s.amax(-1) copied into a buffer: an in-place write, not dead code", ref_fox_logsig,
    relation="equal"))


# Dropout of the probabilities whose result is dropped: it still draws from the random stream,
# so erasing it would change every random op after it.
def fox_unused_dropout(q, k, v, g):
    p = _scores(q, k, g).softmax(-1)
    _unused = F.dropout(p, 0.3, training=True)  # noqa: F841
    return p @ v


CASES.append(_nm(
    "nm_dead_looking_dropout", _qkvg_builder(fox_unused_dropout, 2, 2, 11, 8),
    "output=random-stream", "an unused dropout still draws random numbers", ref_fox_logsig,
    relation="equal"))


# ---- pads and expands -------------------------------------------------------------------------

# A null key (x-transformers' add_zero_kv): k and v get a zero row in front, the bias a zero
# column. Every query gives that key bias 0, which no lam_i - lam_j does.
def fox_null_key(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    k, v = (F.pad(x, (0, 0, 1, 0), value=0.0) for x in (k, v))
    bias = F.pad(lam[..., :, None] - lam[..., None, :], (1, 0), value=0.0)
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
    s = s.masked_fill(torch.ones(T, T + 1, dtype=torch.bool, device=q.device).triu(2), float("-inf"))
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_pad_null_key_column", _qkvg_builder(fox_null_key, 2, 2, 13, 8), "bias=padded-column",
    "a padded bias column (null key): bias 0 for every query", ref_fox_logsig))


# The q.k product of one head expanded to every head, each with its own gate: the product is
# shared by heads it was not computed for, so reading q and k off it would misalign the heads.
def fox_shared_qk_expanded(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    B, H, T, _ = q.shape
    s = (q[:, :1] @ k[:, :1].transpose(-2, -1) * q.shape[-1] ** -0.5).expand(B, H, T, T)
    s = s + (lam[..., :, None] - lam[..., None, :])
    s = s.masked_fill(~_causal(T, q.device), float("-inf"))
    return s.softmax(-1) @ v


def _ref_shared(fn, inputs):
    q, k, v, g = inputs
    return ref_fox_logsig(fn, (q[:, :1].expand_as(q), k[:, :1].expand_as(k), v, g))


CASES.append(_nm(
    "nm_expand_shared_qk", _qkvg_builder(fox_shared_qk_expanded, 2, 2, 13, 8),
    "qk=expanded-over-heads", "one head's q.k product expanded to every head", _ref_shared,
    relation="equal"))


# ---- Hugging Face-style masks: two aranges with offsets, comparisons on a float mask ---------

def _hf_causal(T, device, q_offset=0, kv_offset=0, step=1):
    """The mask utilities' causal mask: kv_arange[None, None, None, :] <= q_arange[None, None, :,
    None], each arange with an offset, as a 0 / finfo.min float mask."""
    q_arange = torch.arange(T, device=device) + q_offset
    kv_arange = torch.arange(0, T * step, step, device=device) + kv_offset
    keep = q_arange.new_ones((), dtype=torch.bool) & (kv_arange[None, None, None, :]
                                                      <= q_arange[None, None, :, None])
    zero = torch.zeros((), device=device)
    return torch.where(keep, zero, torch.finfo(torch.float32).min)


def _hf_style(q_offset=0, kv_offset=0, step=1, compare=("lt", -1.0)):
    def fn(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        T = q.shape[-2]
        mask = _hf_causal(T, q.device, q_offset, kv_offset, step)
        op, c = compare
        removed = mask < c if op == "lt" else (mask <= c if op == "le" else mask.bool())
        bias = torch.masked_fill(lam[..., :, None] - lam[..., None, :], removed,
                                 torch.finfo(torch.float32).min)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
        return s.softmax(-1) @ v
    return fn


# The query positions shifted by one: each query also sees the next key.
CASES.append(_nm(
    "nm_hf_mask_query_offset", _qkvg_builder(_hf_style(q_offset=1), 2, 2, 13, 8), "mask=offset",
    "q_arange + 1 against kv_arange: one key of the future visible", ref_fox_logsig))

# The key positions shifted by two: the last two keys of each row's past are hidden.
CASES.append(_nm(
    "nm_hf_mask_key_offset", _qkvg_builder(_hf_style(kv_offset=-2), 2, 2, 13, 8), "mask=offset",
    "kv_arange - 2: two future keys visible", ref_fox_logsig))

# Every second position: kv_arange with step 2 is not the keys' positions.
CASES.append(_nm(
    "nm_hf_mask_key_step", _qkvg_builder(_hf_style(step=2), 2, 2, 13, 8), "mask=strided",
    "kv_arange with step 2", ref_fox_logsig))

# mask < 1 on a 0 / finfo.min mask is True everywhere (0 < 1): every key removed. (Eager
# averages all values; declined, or the rewrite would keep the causal keys.)
CASES.append(_nm(
    "nm_float_mask_compared_above_zero", _qkvg_builder(_hf_style(compare=("lt", 1.0)), 2, 2, 13, 8),
    "mask=compared-above-zero", "mask < 1 of a 0 / finfo.min mask removes every key",
    ref_fox_logsig))


# Positions from a sliced arange: r = arange(T + 2)[2:] runs from 2, so j <= r_i lets each query
# see two future keys. (Before positions were read with their slices, this was rewritten as the
# causal mask and the output changed.)
def fox_sliced_arange_positions(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    T = q.shape[-2]
    r = torch.arange(T + 2, device=q.device)[2:]
    c = torch.arange(T, device=q.device)
    keep = c[None, :] <= r[:, None]
    s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (lam[..., :, None] - lam[..., None, :])
    s = s.masked_fill(~keep, float("-inf"))
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_sliced_arange_positions", _qkvg_builder(fox_sliced_arange_positions, 2, 2, 13, 8),
    "mask=sliced-positions", "arange(T + 2)[2:] against arange(T): two future keys visible",
    ref_fox_logsig))


# ---- index assignment and 0-d tensor fills -----------------------------------------------------

def _biased(q, k, g):
    lam = F.logsigmoid(g).cumsum(-1)
    return q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + (lam[..., :, None] - lam[..., None, :])


# The mask written into one head only: s[:, 0, m] = -inf leaves the other heads unmasked.
def fox_index_assign_one_head(q, k, v, g):
    s = _biased(q, k, g)
    mask = torch.tril(torch.ones(q.shape[-2], q.shape[-2], device=q.device))
    s[:, 0, mask == 0] = float("-inf")
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_index_assign_one_head", _qkvg_builder(fox_index_assign_one_head, 2, 2, 13, 8),
    "mask=one-head", "s[:, 0, mask == 0] = -inf: head 1 unmasked", ref_fox_logsig))


# The mask written into the first batch row only.
def fox_index_assign_first_row(q, k, v, g):
    s = _biased(q, k, g)
    mask = torch.tril(torch.ones(q.shape[-2], q.shape[-2], device=q.device))
    s[:1, :, mask == 0] = float("-inf")
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_index_assign_first_batch_row", _qkvg_builder(fox_index_assign_first_row, 2, 2, 13, 8),
    "mask=one-batch-row", "s[:1, :, mask == 0] = -inf: batch row 1 unmasked", ref_fox_logsig))


# A 0-d tensor fill that is small: torch.tensor(-5.0) does not remove the future.
def fox_where_small_tensor_fill(q, k, v, g):
    s = _biased(q, k, g)
    i = torch.arange(q.shape[-2], device=q.device)
    s = torch.where(i[:, None] >= i[None, :], s, torch.tensor(-5.0, device=q.device))
    return s.softmax(-1) @ v


CASES.append(_nm(
    "nm_where_small_tensor_fill", _qkvg_builder(fox_where_small_tensor_fill, 2, 2, 13, 8),
    "mask=small-fill", "where(..., torch.tensor(-5.0)): the future keeps weight", ref_fox_logsig))


# ---- piecewise-linear distances ----------------------------------------------------------------

def _alibi_with(distance, M=13, N=13):
    def fn(q, k, v):
        i = torch.arange(M, device=q.device)[:, None]
        j = torch.arange(N, device=q.device)[None, :]
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 - 0.5 * distance(i, j)
        s = s.masked_fill(torch.ones(M, N, dtype=torch.bool, device=q.device).triu(N - M + 1),
                          float("-inf"))
        return s.softmax(-1) @ v
    return fn


def _qkv_mn(fn, M, N):
    def build(dtype):
        q = torch.randn(2, 2, M, 8, dtype=dtype)
        return fn, (q, torch.randn(2, 2, N, 8, dtype=dtype), torch.randn(2, 2, N, 8, dtype=dtype))
    return build


def _ref_alibi_linear(fn, inputs):
    """What a careless rewrite would run: the distance read as (i - j) everywhere."""
    from .. import Ref
    from ..reference import fox_reference
    q, k, v = (x.double() for x in inputs)
    N = k.shape[-2]
    lam = (-0.5 * torch.arange(N, dtype=torch.float64)).expand(q.shape[0], q.shape[1], N)
    return Ref(fox_reference(q, k, v, lam), [lam])


# abs(j - i + 3): on the visible keys j - i runs from -(T - 1) to 0, so j - i + 3 changes sign:
# the three nearest keys get a bias that is not linear in j.
CASES.append(_nm(
    "nm_alibi_abs_shifted", _qkv_mn(_alibi_with(lambda i, j: (j - i + 3).abs()), 13, 13),
    "bias=piecewise-not-linear", "abs(j - i + 3) bends inside the visible region",
    _ref_alibi_linear))

# relu(i - j - 2): a dead zone of two keys, then linear: not linear on the visible region.
CASES.append(_nm(
    "nm_alibi_relu_dead_zone", _qkv_mn(_alibi_with(lambda i, j: torch.relu(i - j - 2)), 13, 13),
    "bias=piecewise-not-linear", "relu(i - j - 2) is 0 on the two nearest keys", _ref_alibi_linear))

# Five queries at the end of 13 keys, the distance taken between raw indices (the query positions
# not offset by N - M): |j - i| bends at j = i, inside the visible region j <= i + 8.
CASES.append(_nm(
    "nm_alibi_abs_decode_unaligned", _qkv_mn(_alibi_with(lambda i, j: (j - i).abs(), 5, 13), 5, 13),
    "bias=piecewise-not-linear", "|j - i| of raw indices with queries at the end of the keys",
    _ref_alibi_linear))


# ---- (B*H, M, N) views: Bloom's baddbmm scores viewed as (B, H, M, N), probabilities viewed back

def _alibi3(q, H):
    B_H, T = q.shape[0], q.shape[-2]
    slopes = torch.tensor([2.0 ** -(h + 1) for h in range(H)], dtype=q.dtype, device=q.device)
    return (slopes[:, None] * torch.arange(T, dtype=q.dtype, device=q.device)).repeat(B_H // H, 1)[:, None, :]


def _flat(q, k, v):
    B, H, T, D = q.shape
    return B, H, T, (x.reshape(B * H, T, D) for x in (q, k, v))


# The probabilities viewed as (B*H, M, N) for a bmm while the scores were built in (B, H, M, N):
# read either way it is the same attention, but only the Bloom pairing (both views) is followed.
def fox_probs_merged_only(q, k, v, g):
    B, H, T, (_, _, v3) = _flat(q, k, v)
    p = _scores(q, k, g).softmax(-1)
    return torch.bmm(p.view(B * H, T, T), v3).view(B, H, T, -1)


CASES.append(_nm(
    "nm_bmm_probs_view_without_scores_view", _qkvg_builder(fox_probs_merged_only, 2, 2, 13, 8),
    "layout=half-merged", "p.view(B*H, T, T) @ v with (B, H, T, T) scores", ref_fox_logsig,
    relation="equal"))


# Bloom's layout with the causal mask applied to the (B*H, M, N) scores before the view: a mask
# there is not followed (declined, not misread).
def alibi_mask_before_view(q, k, v):
    B, H, T, (q3, k3, v3) = _flat(q, k, v)
    s3 = _alibi3(q3, H).baddbmm(q3, k3.transpose(1, 2), beta=1.0, alpha=q.shape[-1] ** -0.5)
    s3 = s3.masked_fill(torch.ones(T, T, dtype=torch.bool, device=q.device).triu(1), float("-inf"))
    p = s3.view(B, H, T, T).softmax(-1)
    return torch.bmm(p.view(B * H, T, T), v3).view(B, H, T, -1)


def _ref_bloom(fn, inputs):
    from .. import Ref
    from ..reference import fox_reference
    q, k, v = (x.double() for x in inputs[:3])
    B, H, T, _ = q.shape
    lam = -_alibi3(q.reshape(B * H, T, -1), H)[:, 0, :].reshape(B, H, T)
    return Ref(fox_reference(q, k, v, lam), [lam])


CASES.append(_nm(
    "nm_bmm_mask_before_view", _qkv_mn(alibi_mask_before_view, 13, 13),
    "layout=mask-on-merged", "the mask on the (B*H, T, T) scores before their view", _ref_bloom,
    relation="equal"))


# ---- one query (decoding): kv_arange <= q_position with the position a single element ----------

def _decode_step(q_offset_from_end):
    def fn(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        N = k.shape[-2]
        q_pos = torch.arange(1, device=q.device) + (N - q_offset_from_end)
        kv = torch.arange(N, device=q.device)
        keep = kv[None, None, None, :] <= q_pos[None, None, :, None]
        bias = lam[..., -1:, None] - lam[..., None, :]
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias
        s = s.masked_fill(~keep, float("-inf"))
        return s.softmax(-1) @ v
    return fn


def _decode_inputs(fn):
    def build(dtype):
        q = torch.randn(2, 2, 1, 8, dtype=dtype)
        k, v = (torch.randn(2, 2, 13, 8, dtype=dtype) for _ in range(2))
        return fn, (q, k, v, torch.randn(2, 2, 13, dtype=dtype) * 1.5)
    return build


def _ref_decode(fn, inputs):
    from .. import Ref
    from ..reference import cumlog, fox_reference
    q, k, v, g = (x.double() for x in inputs)
    lam = cumlog(F.logsigmoid(g))
    return Ref(fox_reference(q, k, v, lam), [lam])


# The query's position one before the last key: its own (last) key is masked.
CASES.append(_nm(
    "nm_decode_position_one_short", _decode_inputs(_decode_step(2)), "mask=decode-offset",
    "a decoding query at position N - 2: the newest key hidden", _ref_decode))


# A key range of one row broadcast to every query: kv <= 5 holds for all rows alike.
def fox_key_range_all_rows(q, k, v, g):
    s = _biased(q, k, g)
    keep = torch.arange(q.shape[-2], device=q.device)[None, :] <= 5
    return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v


CASES.append(_nm(
    "nm_key_range_broadcast_to_rows", _qkvg_builder(fox_key_range_all_rows, 2, 2, 13, 8),
    "mask=key-range", "j <= 5 for every query (one row broadcast)", ref_fox_logsig))


# Positions cast to bfloat16 before the comparison: above 256 they round to even numbers, so
# j <= i no longer holds exactly where the causal mask would (a key one past i can be kept).
def fox_positions_bf16(q, k, v, g):
    s = _biased(q, k, g)
    T = q.shape[-2]
    i = (torch.arange(T, device=q.device) + 300).to(torch.bfloat16)
    keep = i[None, :] <= i[:, None]
    return s.masked_fill(~keep, float("-inf")).softmax(-1) @ v


CASES.append(_nm(
    "nm_positions_cast_bf16", _qkvg_builder(fox_positions_bf16, 2, 2, 13, 8), "mask=rounded-positions",
    "positions 300.. in bfloat16 compare equal in pairs: some future keys kept", ref_fox_logsig))
