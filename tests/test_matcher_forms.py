"""Matcher rules one at a time: decoding without a mask, MQA/GQA passed to the op with Hk heads,
grouped-query einsum, in-place score forms, separable T x T copies, Mamba-2's segsum, decay through
views, and the declines that keep each rule sound. Every case checks `foxcompile.explain` and, where
it rewrites, that the compiled function (aot_eager) equals eager in outputs and gradients."""
import math

import pytest
import torch
import torch.nn.functional as F

import foxcompile
from helpers import AOT, assert_compiled_matches_eager


def _compiled_matches_eager(fn, *args, grads=True):
    """Outputs and input gradients, compiled (aot_eager) versus eager, in fp64 (integer inputs,
    document ids, as they are)."""
    args = tuple(a.double() if a.is_floating_point() else a for a in args)
    assert_compiled_matches_eager(fn, args, rtol=1e-8, atol=1e-8, grads=grads, equal_nan=True)


def _one_site(fn, *args, decay="proven", grads=True):
    report = foxcompile.explain(fn, *args)
    assert len(report.sites) == 1 and not report.declined, str(report)
    assert report.sites[0].decay == decay, str(report)
    _compiled_matches_eager(fn, *args, grads=grads)
    return report.sites[0]


def _declined(fn, *args, reason="", grads=True):
    report = foxcompile.explain(fn, *args)
    assert not report.sites and report.declined, str(report)
    assert reason in report.declined[0].reason, str(report)
    _compiled_matches_eager(fn, *args, grads=grads)
    return report.declined[0].reason


def _qkvg(B=1, H=2, M=7, N=7, D=8, Hk=None):
    Hk = H if Hk is None else Hk
    return (torch.randn(B, H, M, D), torch.randn(B, Hk, N, D), torch.randn(B, Hk, N, D),
            torch.randn(B, H, N))


def _causal(t):
    return torch.ones(t, t, dtype=torch.bool).tril()


# ---------------------------------------------------------------------------------------------
# Decoding: one query needs no mask


def decode(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ k.mT * q.shape[-1] ** -0.5 + (lam[..., -1:, None] - lam[..., None, :])
    return s.softmax(-1) @ v


def test_one_query_needs_no_mask():
    _one_site(decode, *_qkvg(M=1, N=9))


def test_two_queries_without_a_mask_are_declined():
    _declined(decode, *_qkvg(M=2, N=9), reason="no causal mask")


def sdpa_decode(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=-lam[..., None, :])


def test_sdpa_one_query_with_a_key_only_bias():
    _one_site(sdpa_decode, *_qkvg(M=1, N=9))


# ---------------------------------------------------------------------------------------------
# MQA and GQA: k and v with Hk heads, head h reading kv head h // (H / Hk)


def gqa(form):
    def attend(q, k, v, g):
        H, Hk = q.shape[1], k.shape[1]
        G = H // Hk
        if form == "repeat_interleave":
            k, v = (torch.repeat_interleave(x, G, dim=1) for x in (k, v))
        elif form == "expand_reshape":
            k, v = (x[:, :, None].expand(-1, -1, G, -1, -1).reshape(x.shape[0], H, *x.shape[2:])
                    for x in (k, v))
        elif form == "tiled_expand":  # head h reads kv head h % Hk
            k, v = (x[:, None].expand(-1, G, -1, -1, -1).reshape(x.shape[0], H, *x.shape[2:])
                    for x in (k, v))
        elif form == "tiled_repeat":
            k, v = k.repeat(1, G, 1, 1), v.repeat(1, G, 1, 1)
        elif form == "k_only_broadcast":  # k expanded, v broadcast by the value product
            k = k.expand(-1, H, -1, -1)
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~_causal(s.shape[-1]), -math.inf)
        return s.softmax(-1) @ v
    return attend


def test_grouped_kv_heads_reach_the_op():
    for form in ("repeat_interleave", "expand_reshape"):
        site = _one_site(gqa(form), *_qkvg(H=4, Hk=2))
        assert site.shapes["k"] == (1, 2, 7, 8) and site.shapes["q"] == (1, 4, 7, 8), form


def test_tiled_kv_heads_stay_repeated():
    for form in ("tiled_expand", "tiled_repeat"):
        site = _one_site(gqa(form), *_qkvg(H=4, Hk=2))
        assert site.shapes["k"] == (1, 4, 7, 8), form


def test_one_kv_head_broadcast():
    site = _one_site(gqa("k_only_broadcast"), *_qkvg(H=3, Hk=1))
    assert site.shapes["k"] == site.shapes["v"] == (1, 1, 7, 8)


def test_different_kv_head_counts_are_declined():
    def attend(q, k, v, g):  # k broadcasts one head, v has all of them
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        return s.masked_fill(~_causal(s.shape[-1]), -math.inf).softmax(-1) @ v
    q, k, v, g = _qkvg(H=3)
    _declined(attend, q, k[:, :1], v, g, reason="heads")


def grouped_einsum(q, k, v, g, eq="bihgd,bjhd->bhgij"):
    B, T, H, D = q.shape
    Hk = k.shape[2]
    q = q.view(B, T, Hk, H // Hk, D)
    lam = F.logsigmoid(g).cumsum(-1).view(B, Hk, H // Hk, T)
    s = torch.einsum(eq, q, k) + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(~_causal(T), -math.inf)
    return torch.einsum("bhgij,bjhd->bihgd", s.softmax(-1), v).reshape(B, T, H * D)


def test_grouped_query_einsum_is_one_site_with_all_heads():
    B, T, H, Hk, D = 2, 6, 6, 2, 4
    args = (torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, D),
            torch.randn(B, H, T))
    site = _one_site(grouped_einsum, *args)
    assert site.shapes["q"] == (B, H, T, D) and site.shapes["k"] == (B, Hk, T, D)


def test_sdpa_enable_gqa():
    def attend(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        bias = (lam[..., :, None] - lam[..., None, :]).masked_fill(~_causal(q.shape[2]), -math.inf)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True)
    site = _one_site(attend, *_qkvg(H=4, Hk=2))
    assert site.shapes["k"] == (1, 2, 7, 8)


# ---------------------------------------------------------------------------------------------
# In-place forms: changes applied where the graph reads them, anything else declined


def inplace(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ k.mT
    s *= q.shape[-1] ** -0.5
    s += lam[..., :, None] - lam[..., None, :]
    s.masked_fill_(~_causal(s.shape[-1]), -math.inf)
    return s.softmax(-1) @ v


def index_assign(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
    s[..., ~_causal(s.shape[-1])] = -math.inf
    return s.softmax(-1) @ v


def test_in_place_scores_are_followed():
    for fn in (inplace, index_assign):
        site = _one_site(fn, *_qkvg())
        assert "softmax" in " ".join(site.removed), fn.__name__


def test_row_max_of_scores_masked_in_place_is_followed():
    """A softmax written by hand over scores masked in place reads them twice after the change:
    exp(s - m), and the row max m, which the softmax is blind to (dropped with it)."""
    def attend(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT * 0.3 + lam[..., :, None] - lam[..., None, :]
        s[..., ~_causal(s.shape[-1])] = -math.inf
        e = torch.exp(s - s.amax(-1, keepdim=True))
        return (e / e.sum(-1, keepdim=True)) @ v
    site = _one_site(attend, *_qkvg(M=9, N=9))
    assert {"amax", "setitem"} <= set(site.removed)   # the row max goes with the softmax


def _keep(M, N):
    """Causal keep mask (M, N) with the queries at the end of the keys."""
    return torch.ones(M, N, dtype=torch.bool).tril(diagonal=N - M)


def test_row_slice_of_bias_masked_in_place_is_followed():
    """The bias's query rows sliced (M < N), and that view masked by index assignment: the
    change writes the view the attention reads, so it is the mask (SDPA and explicit scores)."""
    def sdpa(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        M, N = q.shape[-2], k.shape[-2]
        bias = (lam[..., :, None] - lam[..., None, :])[..., N - M:, :]
        bias[..., ~_keep(M, N)] = -math.inf
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    def explicit(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        M, N = q.shape[-2], k.shape[-2]
        bias = (lam[..., :, None] - lam[..., None, :])[..., N - M:, :]
        bias[..., ~_keep(M, N)] = -math.inf
        return (q @ k.mT * q.shape[-1] ** -0.5 + bias).softmax(-1) @ v

    for fn in (sdpa, explicit):
        for M in (5, 12):
            _one_site(fn, *_qkvg(M=M, N=12))   # rewritten, equal to eager in fp64 with grads


def test_change_through_another_view_is_declined():
    """A read after an in-place change that wrote another view of its storage (the base, a
    second slice, or the base changed after the view was masked) is declined, with the reason."""
    def base_read(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        full = lam[..., :, None] - lam[..., None, :]
        view = full[..., 0:, :]
        view[..., ~_keep(q.shape[-2], k.shape[-2])] = -math.inf
        return F.scaled_dot_product_attention(q, k, v, attn_mask=full)

    def second_slice(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        full = lam[..., :, None] - lam[..., None, :]
        masked, read = full[..., 0:, :], full[..., 0:, :]
        masked[..., ~_keep(q.shape[-2], k.shape[-2])] = -math.inf
        return F.scaled_dot_product_attention(q, k, v, attn_mask=read)

    def base_changed_after(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        full = lam[..., :, None] - lam[..., None, :]
        view = full[..., 0:, :]
        view[..., ~_keep(q.shape[-2], k.shape[-2])] = -math.inf
        full.mul_(0.5)  # halves the view's bias too
        return F.scaled_dot_product_attention(q, k, v, attn_mask=view)

    for fn in (base_read, second_slice, base_changed_after):
        reason = _declined(fn, *_qkvg(), reason="another view of its storage")
        assert "in-place" in reason, fn.__name__


def test_gate_changed_after_the_bias_is_built_is_declined():
    def attend(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~_causal(s.shape[-1]), -math.inf)
        lam.mul_(2.0)  # changes the key leaf's tensor before the value product
        return s.softmax(-1) @ v
    _declined(attend, *_qkvg(), reason="in-place")


def test_mask_changed_in_place_is_declined():
    def attend(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        keep = _causal(q.shape[2])
        keep[0, 3] = True  # one future key made visible
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        return s.masked_fill(~keep, -math.inf).softmax(-1) @ v
    _declined(attend, *_qkvg(), reason="in-place")


def test_query_changed_after_the_scores_is_declined():
    def attend(q, k, v, g):
        q = q * 1.0
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~_causal(s.shape[-1]), -math.inf)
        q.mul_(3.0)  # the op would read q after this (eager autograd refuses it: forward only)
        return s.softmax(-1) @ v + q
    _declined(attend, *_qkvg(), reason="in-place", grads=False)


def test_unrelated_in_place_method_survives_the_rewrite():
    def attend(q, k, v, g):
        extra = v * 2.0
        extra.add_(1.0)  # its result is unused: a whole-graph dead-code pass would drop it
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~_causal(s.shape[-1]), -math.inf)
        return s.softmax(-1) @ v + extra
    _one_site(attend, *_qkvg())


def _cache_step(q, k_cache, v_cache, g, k_new, v_new, write_k_after_scores=False):
    """One decode step over a preallocated cache, written in place (as HF's StaticCache does)."""
    slot = torch.tensor([k_cache.shape[2] - 1])
    if not write_k_after_scores:
        k_cache.index_copy_(2, slot, k_new)
    v_cache.index_copy_(2, slot, v_new)
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ k_cache.mT * q.shape[-1] ** -0.5 + (lam[..., -1:, None] - lam[..., None, :])
    if write_k_after_scores:
        k_cache.index_copy_(2, slot, k_new)   # the scores saw the old key; the op would not
    return s.softmax(-1) @ v_cache


def _cache_inputs():
    q, k, v, g = _qkvg(M=1, N=9)
    return q, k, v, g, torch.randn(1, 2, 1, 8), torch.randn(1, 2, 1, 8)


def test_cache_written_in_place_before_the_attention_reads_it():
    inputs = _cache_inputs()
    site = _one_site(lambda *a: _cache_step(*a), *inputs, grads=False)
    assert site.shapes["k"] == (1, 2, 9, 8)
    # the compiled step still writes the caches, before the op reads them
    eager, compiled = [x.clone() for x in inputs], [x.clone() for x in inputs]
    torch._dynamo.reset()
    out = torch.compile(_cache_step, backend="fox_acp", options=AOT)(*compiled)
    torch.testing.assert_close(out, _cache_step(*eager), rtol=1e-5, atol=1e-5)
    for got, want in zip(compiled[1:3], eager[1:3]):
        assert torch.equal(got, want)


def test_cache_written_between_the_scores_and_the_value_product_is_declined():
    _declined(lambda *a: _cache_step(*a, write_k_after_scores=True), *_cache_inputs(),
              reason="in-place", grads=False)


def test_mask_buffer_changed_in_place_before_its_read_is_declined():
    class Attend(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.register_buffer("keep", _causal(7))

        def forward(self, q, k, v, g):
            self.keep[0, 3] = True   # the matcher reads the buffer's value at compile time
            lam = F.logsigmoid(g).cumsum(-1)
            s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
            return s.masked_fill(~self.keep, -math.inf).softmax(-1) @ v

    report = foxcompile.explain(Attend(), *_qkvg())
    assert not report.sites and report.declined, str(report)


def test_mask_from_in_place_tril_into_baddbmm():
    def attend(q, k, v, g):  # (B*H, T, D)
        c = F.logsigmoid(g).cumsum(-1)
        bias = (c.unsqueeze(2) - c.unsqueeze(1)).masked_fill(
            ~torch.ones(q.shape[1], q.shape[1], dtype=torch.bool).tril_(), -math.inf)
        return torch.bmm(torch.baddbmm(bias, q, k.transpose(1, 2), alpha=0.5).softmax(-1), v)
    q, k, v, g = _qkvg()
    _one_site(attend, q[0], k[0], v[0], g[0])


# ---------------------------------------------------------------------------------------------
# Separable T x T leaves, segsum, decay through views


def repeat_transpose(q, k, v, g):
    lam = F.logsigmoid(g).cumsum(-1)
    rows = lam.unsqueeze(-1).repeat(1, 1, 1, q.shape[2])
    s = q @ k.mT + rows - rows.transpose(-1, -2)
    return s.masked_fill(~_causal(q.shape[2]), -math.inf).softmax(-1) @ v


def test_copies_of_a_vector_are_separable():
    _one_site(repeat_transpose, *_qkvg())


def test_a_tiled_copy_is_not_separable():
    def attend(q, k, v, g):  # rows tiled along j: rows[i, j] = lam[(i + j) % T]-like mixing
        lam = F.logsigmoid(g).cumsum(-1)
        rows = lam.unsqueeze(-2).repeat(1, 1, 2, 1).reshape(*lam.shape[:2], -1, lam.shape[-1] // 2)
        s = q @ k.mT + rows[..., :q.shape[2], :]
        return s.masked_fill(~_causal(q.shape[2]), -math.inf).softmax(-1) @ v
    q, k, v, g = _qkvg(M=4, N=4)
    _declined(attend, q, k, v, torch.randn(1, 2, 8), reason="jointly")


def segsum_attention(diagonal):
    def attend(q, k, v, g):
        T = g.shape[-1]
        x = F.logsigmoid(g)[..., None].repeat(1, 1, 1, T)
        x = x.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool), diagonal=diagonal), 0)
        seg = torch.cumsum(x, dim=-2).masked_fill(~_causal(T), -math.inf)
        return (q @ k.mT + seg).softmax(-1) @ v
    return attend


def test_segsum_is_proven_separable():
    _one_site(segsum_attention(-1), *_qkvg())


def test_segsum_with_the_diagonal_kept_is_declined():
    # c_i - c_(j-1): separable too, but not the form the sympy identity proves
    _declined(segsum_attention(0), *_qkvg(), reason="jointly")


def test_decay_through_views():
    def attend(q, k, v, fg):  # fg (B, T, H)
        B, T, H = fg.shape
        lam = F.logsigmoid(fg).cumsum(1).permute(0, 2, 1).contiguous()
        s = q @ k.mT + lam.view(B, H, T, 1) - lam.view(B, H, 1, T)
        return s.masked_fill(~_causal(T), -math.inf).softmax(-1) @ v
    q, k, v, _ = _qkvg()
    _one_site(attend, q, k, v, torch.randn(1, 7, 2))


def test_a_reshape_that_mixes_heads_and_time_is_not_proven():
    def attend(q, k, v, fg):  # fg (B, T, H) misread as (B, H, T): lam is not monotone along j
        B, T, H = fg.shape
        lam = F.logsigmoid(fg).cumsum(1).reshape(B, H, T)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        return s.masked_fill(~_causal(T), -math.inf).softmax(-1) @ v
    q, k, v, _ = _qkvg()
    _one_site(attend, q, k, v, torch.randn(1, 7, 2), decay="guarded")


def test_where_mask_with_a_full_tensor_and_distance_bias():
    def attend(q, k, v):
        T = q.shape[2]
        i, j = torch.arange(T)[:, None], torch.arange(T)[None, :]
        s = q @ k.mT - 0.25 * (i - j).to(q.dtype)
        s = torch.where(i >= j, s, torch.full_like(s, -math.inf))
        return s.softmax(-1) @ v
    _one_site(attend, *_qkvg()[:3])


def test_additive_mask_with_new_axes():
    def attend(q, k, v, g):
        T = q.shape[2]
        lam = F.logsigmoid(g).cumsum(-1)
        mask = torch.full((T, T), torch.finfo(q.dtype).min, dtype=q.dtype).triu(1)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :] + mask[None, None]
        return s.softmax(-1) @ v
    _one_site(attend, *_qkvg())


def test_grouped_query_heads_that_merge_only_by_copying_are_declined():
    def attend(q, k, v, g):  # q's (Hk, G) dims come from a (G, Hk) layout
        B, T, H, D = q.shape
        Hk = k.shape[2]
        q = q.view(B, T, H // Hk, Hk, D).transpose(2, 3)
        lam = F.logsigmoid(g).cumsum(-1).view(B, Hk, H // Hk, T)
        s = torch.einsum("bihgd,bjhd->bhgij", q, k) + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~_causal(T), -math.inf)
        return torch.einsum("bhgij,bjhd->bihgd", s.softmax(-1), v).reshape(B, T, H * D)
    B, T, H, Hk, D = 1, 5, 4, 2, 4
    args = (torch.randn(B, T, H, D), torch.randn(B, T, Hk, D), torch.randn(B, T, Hk, D),
            torch.randn(B, H, T))
    _declined(attend, *args, reason="copying")


def sliced_rows(sliced):
    def attend(q, k, v, g):  # M queries at the end of N keys, the bias rows sliced
        M, N = q.shape[2], k.shape[2]
        lam = F.logsigmoid(g).cumsum(-1)
        rows = lam.unsqueeze(-1).repeat(1, 1, 1, N)
        keep = torch.ones(M, N, dtype=torch.bool).tril(diagonal=N - M)
        if sliced == "bias":
            s = q @ k.mT + (rows - rows.mT)[..., N - M:, :]
            return s.masked_fill(~keep, -math.inf).softmax(-1) @ v
        s = (torch.cat([k, k], dim=2)[:, :, :N] @ k.mT + rows - rows.mT)[..., N - M:, :]
        return s.masked_fill(~keep, -math.inf).softmax(-1) @ v
    return attend


def test_bias_rows_sliced_for_queries_at_the_end():
    _one_site(sliced_rows("bias"), *_qkvg(M=3, N=8))


def test_sliced_q_k_product_is_declined():
    _declined(sliced_rows("scores"), *_qkvg(M=3, N=8), reason="sliced")


def broadcast_mask(form):
    def attend(q, k, v, g):
        T = q.shape[2]
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        row = torch.ones(1, T, dtype=torch.bool).triu(1)  # one row: a function of j only
        if form == "masked_fill":
            return s.masked_fill(row, -math.inf).softmax(-1) @ v
        if form == "and":
            return s.masked_fill(~(_causal(T) & ~row), -math.inf).softmax(-1) @ v
        additive = torch.full((1, T), -math.inf, dtype=q.dtype).triu(1)
        return (s + additive).softmax(-1) @ v
    return attend


def test_masks_broadcast_along_the_queries_are_not_causal():
    for form in ("masked_fill", "and", "additive"):
        _declined(broadcast_mask(form), *_qkvg(), reason="")


def test_one_query_with_a_one_row_additive_mask():
    def attend(q, k, v, g):
        M, N = q.shape[2], k.shape[2]
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., N - M:, None] - lam[..., None, :]
        return (s + torch.full((M, N), -math.inf, dtype=q.dtype).triu(N - M + 1)).softmax(-1) @ v
    _one_site(attend, *_qkvg(M=1, N=9))
    _one_site(attend, *_qkvg(M=4, N=9))


def spelled(form):
    def attend(q, k, v, g):
        T = q.shape[2]
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., :, None]
        alpha = 3.0 if form == "sub_alpha" else 1.0
        s = torch.sub(s, lam[..., None, :], alpha=alpha)
        s = s.masked_fill(~_causal(T), -math.inf)
        if form == "floor_div":
            return torch.div(s, 0.3, rounding_mode="floor").softmax(-1) @ v
        if form == "column_max":  # a per-key shift: a key-side term, not a row max
            e = torch.exp(s - s.amax(-2, keepdim=True))
            return e / e.sum(-1, keepdim=True) @ v
        if form == "sums_without_keepdim":  # broadcast along the keys: not a softmax
            e = torch.exp(s - s.amax(-1, keepdim=True))
            return (e / e.sum(-1)) @ v
        return s.softmax(-1) @ v
    return attend


def test_spellings_that_change_the_arithmetic():
    args = _qkvg(H=1)
    _one_site(spelled("sub_alpha"), *args)
    _one_site(spelled("column_max"), *args, decay="guarded")
    _declined(spelled("floor_div"), *args, reason="jointly", grads=False)
    report = foxcompile.explain(spelled("sums_without_keepdim"), *args)
    assert not report.sites
    _compiled_matches_eager(spelled("sums_without_keepdim"), *args)


def test_symbolic_diagonal_offset():
    def attend(q, k, v, g):  # with dynamic shapes, N - M is a graph node
        M, N = q.shape[2], k.shape[2]
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT * 0.125 + lam[..., N - M:, None] - lam[..., None, :]
        keep = torch.ones(M, N, dtype=torch.bool).tril(diagonal=N - M)
        return s.masked_fill(~keep, -math.inf).softmax(-1) @ v
    report = foxcompile.explain(torch.compile(attend, dynamic=True), *_qkvg(M=3, N=8))
    assert len(report.sites) == 1, str(report)


def test_scale_from_a_symbolic_head_dim_under_dynamic_true():
    """dynamic=True makes q.shape[-1] ** -0.5 a graph node; its value specialises the head dim
    (with a guard), and a new head dim recompiles instead of reusing the wrong scale."""
    def attend(q, k, v, lam):
        t = q.shape[-2]
        s = q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        return s.softmax(-1) @ v
    torch._dynamo.reset()
    compiled = torch.compile(attend, backend="fox_acp", dynamic=True,
                             options={"fox.compiler": "aot_eager"})
    for head_dim in (8, 16, 8):
        args = [torch.randn(1, 2, 19, head_dim) for _ in range(3)]
        args.append(F.logsigmoid(torch.randn(1, 2, 19)).cumsum(-1))
        torch.testing.assert_close(compiled(*args), attend(*args), rtol=1e-5, atol=1e-6)
    report = foxcompile.explain(torch.compile(attend, dynamic=True), *args)
    assert len(report.sites) == 1


def test_dynamic_head_dims_of_q_and_v_vary_independently():
    """Under dynamic=True, v's head dim gets a symbol of its own once it differs from q's: the
    site is still rewritten (the op pads the narrower side) and matches eager for each shape."""
    def attend(q, k, v, lam):
        t = q.shape[-2]
        s = q @ k.transpose(-2, -1) * 0.25 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        return s.softmax(-1) @ v
    torch._dynamo.reset()
    compiled = torch.compile(attend, backend="fox_acp", dynamic=True,
                             options={"fox.compiler": "aot_eager"})
    for t, head_dim, value_dim in ((19, 8, 8), (23, 16, 16), (17, 8, 12), (21, 12, 6)):
        args = [torch.randn(1, 2, t, head_dim), torch.randn(1, 2, t, head_dim),
                torch.randn(1, 2, t, value_dim), F.logsigmoid(torch.randn(1, 2, t)).cumsum(-1)]
        torch.testing.assert_close(compiled(*args), attend(*args), rtol=1e-5, atol=1e-6)
    report = foxcompile.explain(torch.compile(attend, dynamic=True), *args)
    assert len(report.sites) == 1 and report.sites[0].shapes["v"][-1] != report.sites[0].shapes["q"][-1]


def test_in_place_nan_repair_of_the_probabilities():
    """p[isnan(p)] = 0 (inference code: it breaks eager autograd) is a NaN repair like nan_to_num;
    the rewrite drops it with the probabilities."""
    def attend(q, k, v, lam):
        t = q.shape[-2]
        s = q @ k.mT * 0.3 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        p = s.softmax(-1)
        p[torch.isnan(p)] = 0.0
        return p @ v
    args = [torch.randn(1, 2, 17, 8) for _ in range(3)]
    args.append(F.logsigmoid(torch.randn(1, 2, 17)).cumsum(-1))
    report = foxcompile.explain(attend, *args)
    assert len(report.sites) == 1, str(report)
    assert "setitem" not in report.graphs[0].after and "isnan" not in report.graphs[0].after
    torch._dynamo.reset()
    out = torch.compile(attend, backend="fox_acp", options={"fox.compiler": "aot_eager"})(*args)
    torch.testing.assert_close(out, attend(*args), rtol=1e-5, atol=1e-6)


def test_in_place_change_of_the_probabilities_other_than_repair_is_declined():
    def attend(q, k, v, lam):
        t = q.shape[-2]
        s = q @ k.mT * 0.3 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        p = s.softmax(-1)
        p[torch.isnan(p)] = 0.5          # not a repair to zero: changes what p @ v computes
        return p @ v
    args = [torch.randn(1, 2, 17, 8) for _ in range(3)]
    args.append(F.logsigmoid(torch.randn(1, 2, 17)).cumsum(-1))
    report = foxcompile.explain(attend, *args)
    assert not report.sites and report.declined


# ---------------------------------------------------------------------------------------------
# Packed sequences: doc_i == doc_j of one vector of ids, with the causal mask, in any order

def _fox_scores(q, k, g):
    c = torch.cumsum(F.logsigmoid(g), dim=-1)
    return q @ k.mT * q.shape[-1] ** -0.5 + c[..., -q.shape[2]:, None] - c[..., None, :]


def _ids(*lengths):
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))


def test_packed_masks_in_either_order_and_as_views():
    q, k, v, g = _qkvg(B=2, M=9, N=9)
    doc = torch.stack([_ids(3, 6), _ids(4, 2, 3)])

    def two_fills(q, k, v, g, doc):  # != as the removed set, then the causal mask
        s = _fox_scores(q, k, g).masked_fill((doc[:, :, None] != doc[:, None, :])[:, None], -math.inf)
        return s.masked_fill(~_causal(9), -math.inf).softmax(-1) @ v

    def reshaped(q, k, v, g, doc):  # views by reshape, causal mask first
        same = doc.view(2, 1, 9, 1) == doc.view(2, 1, 1, 9)
        s = _fox_scores(q, k, g).masked_fill(~_causal(9), -math.inf)
        return torch.where(same, s, -math.inf).softmax(-1) @ v

    for fn in (two_fills, reshaped):
        site = _one_site(fn, q, k, v, g, doc)
        assert site.documents is not None and site.documents.batch == 0
        assert any("packed sequences (document mask)" in n for n in site.notes)


def test_packed_queries_at_the_end_and_decoding():
    doc = _ids(5, 4, 3)                                   # (12,), one row for the whole batch

    def chunk(q, k, v, g, doc):  # M = 4 queries: rows doc[-4:], tril(diagonal=N-M)
        same = doc[-q.shape[2]:, None] == doc[None, :]
        keep = same & torch.ones(4, 12, dtype=torch.bool).tril(8)
        return _fox_scores(q, k, g).masked_fill(~keep, -math.inf).softmax(-1) @ v

    def decode(q, k, v, g, doc):  # one query: the document mask alone
        same = doc[-1:, None] == doc[None, :]
        return _fox_scores(q, k, g).masked_fill(~same, -math.inf).softmax(-1) @ v

    site = _one_site(chunk, *_qkvg(M=4, N=12), doc)
    assert site.documents.batch is None
    _one_site(decode, *_qkvg(M=1, N=12), doc)


def test_packed_masks_that_stay_declined():
    q, k, v, g = _qkvg(B=2, M=9, N=9)
    doc = torch.stack([_ids(3, 6), _ids(4, 2, 3)])

    def other_documents(q, k, v, g, doc):  # keeps the pairs of different documents
        keep = (doc[:, None, :, None] != doc[:, None, None, :]) & _causal(9)
        return torch.where(keep, _fox_scores(q, k, g), -math.inf).softmax(-1).nan_to_num() @ v

    def per_head(q, k, v, g, doc):  # ids vary along the heads
        ids = torch.stack([doc, doc.flip(-1)], dim=1)               # (B, H, T)
        keep = (ids[..., :, None] == ids[..., None, :]) & _causal(9)
        return _fox_scores(q, k, g).masked_fill(~keep, -math.inf).softmax(-1) @ v

    def shifted(q, k, v, g, doc):  # doc[i + 1] == doc[j]
        ids = torch.cat([doc, doc[:, -1:]], dim=1)
        keep = (ids[:, None, 1:, None] == ids[:, None, None, :-1]) & _causal(9)
        return _fox_scores(q, k, g).masked_fill(~keep, -math.inf).softmax(-1) @ v

    def float_ids(q, k, v, g, doc):
        ids = doc.float()
        keep = (ids[:, None, :, None] == ids[:, None, None, :]) & _causal(9)
        return _fox_scores(q, k, g).masked_fill(~keep, -math.inf).softmax(-1) @ v

    _declined(other_documents, q, k, v, g, doc, reason="keeps some pairs of different documents")
    _declined(per_head, q, k, v, g, doc, reason="vary along the heads")
    _declined(shifted, q, k, v, g, doc, reason="other positions")
    _declined(float_ids, q, k, v, g, doc, reason="only integer ids")


def test_packed_chunk_under_dynamic_shapes():
    """Symbolic M and N: the query rows doc[:, -M:] and tril(N - M) read through the sizes'
    symbols; `same_view & causal` (operator.and_, a pure op named like an in-place one) on a view
    of the comparison."""
    def chunk(q, k, v, g, doc):
        M, N = q.shape[2], k.shape[2]
        same = (doc[:, -M:, None] == doc[:, None, :])[:, None]
        keep = same & torch.ones(M, N, dtype=torch.bool).tril(N - M)
        return _fox_scores(q, k, g).masked_fill(~keep, -math.inf).softmax(-1) @ v

    torch._dynamo.reset()
    compiled = torch.compile(chunk, backend="fox_acp", dynamic=True, options=AOT)
    for M, N in ((5, 19), (7, 23)):
        q, k, v, g = _qkvg(B=2, H=3, M=M, N=N)
        doc = torch.cumsum(torch.rand(2, N) < 0.2, dim=-1)
        with foxcompile.pruning_stats() as stats:
            out = compiled(q, k, v, g, doc)
        assert stats.per_head(), "the site was not rewritten"
        torch.testing.assert_close(out, chunk(q, k, v, g, doc), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# Key masks (padding): causal AND a boolean flag per key, broadcast along the queries

def _fill(name, dtype):
    return {"-inf": -math.inf, "finfo.min": torch.finfo(dtype).min, "-1e9": -1e9}[name]


def _left_padded(B=2, T=11, starts=(4, 0)):
    """(B, T) validity: False on the first starts[b] positions of row b."""
    return torch.arange(T)[None, :] >= torch.tensor(starts)[:, None]


def _padded_matches_eager(fn, *args, rows):
    """Compiled versus eager in fp64 and fp32 where eager has a visible key: outputs on `rows`
    (bool, broadcast to the output: the queries that see at least one key), the gradients of a loss over those rows
    only (where eager's are finite: its rows without a visible key are NaN under a -inf fill, and
    NaN times a zero cotangent stays NaN in v's gradient); the compiled run is finite everywhere."""
    for dtype, tol in ((torch.float64, 1e-9), (torch.float32, 2e-5)):
        cast = tuple(a.to(dtype) if a.is_floating_point() else a for a in args)
        assert_compiled_matches_eager(fn, cast, rtol=tol, atol=tol, rows=rows, eager_nan_grads=True,
                                      what=str(dtype))


def _rows(valid):
    """(B, M) queries with a visible key, broadcast to a (B, H, M, D) output."""
    return valid[:, None, :, None]


def _key_masked(fn, *args, rows, decay="guarded", removed_when=False):
    report = foxcompile.explain(fn, *args)
    assert len(report.sites) == 1 and not report.declined, str(report)
    site = report.sites[0]
    assert site.decay == decay and site.masked_keys is not None, str(report)
    assert site.masked_keys.removed_when is removed_when
    _padded_matches_eager(fn, *args, rows=rows)
    return site


def _gated_scores(q, k, g, valid=None):
    """scale q.k + lam_i - lam_j, the gates before the start zeroed (valid (B, T), or none)."""
    log_f = F.logsigmoid(g)
    if valid is not None:
        log_f = log_f.masked_fill(~valid[:, None, :], 0.0)
    lam = torch.cumsum(log_f, dim=-1)
    return q @ k.mT * q.shape[-1] ** -0.5 + lam[..., -q.shape[2]:, None] - lam[..., None, :]


def key_masked(form, fill="-inf"):
    def attend(q, k, v, g, valid):
        T = q.shape[2]
        s = _gated_scores(q, k, g, valid)
        value = _fill(fill, s.dtype)
        if form == "combined":
            keep = _causal(T) & valid[:, None, None, :]
            return s.masked_fill(~keep, value).softmax(-1) @ v
        if form == "separate":
            s = s.masked_fill(~_causal(T), value)
            return s.masked_fill(~valid[:, None, None, :], value).softmax(-1) @ v
        if form == "where":
            keep = valid[:, None, None, :] & torch.ones(T, T, dtype=torch.bool).tril()
            return torch.where(keep, s, value).softmax(-1) @ v
        if form == "removed_or":
            removed = torch.ones(T, T, dtype=torch.bool).triu(1) | ~valid[:, None, None, :]
            return s.masked_fill(removed, value).softmax(-1) @ v
        if form == "index_assign":
            keep = _causal(T) & valid[:, None, None, :]
            s[~keep.expand(s.shape)] = value
            return s.softmax(-1) @ v
        if form == "additive":
            pad = torch.zeros(valid.shape, dtype=s.dtype).masked_fill(~valid, value)
            future = torch.full((T, T), value, dtype=s.dtype).triu(1)
            return (s + future + pad[:, None, None, :]).softmax(-1) @ v
        if form == "nan_repair":
            keep = _causal(T) & valid[:, None, None, :]
            return s.masked_fill(~keep, value).softmax(-1).nan_to_num() @ v
        raise ValueError(form)
    return attend


def test_key_masks_in_every_form_and_fill():
    q, k, v, g = _qkvg(B=2, M=11, N=11)
    valid = _left_padded()
    for form in ("combined", "separate", "where", "removed_or", "index_assign", "nan_repair",
                 "additive"):
        for fill in ("-inf", "finfo.min", "-1e9") if form == "combined" else ("-inf",):
            _key_masked(key_masked(form, fill), q, k, v, g, valid, rows=_rows(valid))
    _key_masked(key_masked("additive", "-1e9"), q, k, v, g, valid, rows=_rows(valid))


def test_rows_without_a_visible_key_are_finite_and_keep_the_others_exact():
    """Left padding: the padded queries see no key (eager: NaN under -inf, a uniform average of
    all T values under finfo.min); the op gives them a finite row, and a loss over the other rows
    has eager's gradients, including those of the gate logits."""
    q, k, v, g = _qkvg(B=2, M=11, N=11)
    valid = _left_padded(starts=(6, 2))
    fn = key_masked("combined", "finfo.min")
    torch._dynamo.reset()
    out = torch.compile(fn, backend="fox_acp", options=AOT)(q, k, v, g, valid)
    assert torch.isfinite(out).all()
    _padded_matches_eager(fn, q, k, v, g, valid, rows=_rows(valid))


def test_key_mask_over_a_growing_gate_stays_none():
    """A gate that grows toward the past (softplus) is "none" with or without a key mask: the
    mask removes keys, it cannot make the kept ones decay."""
    def attend(q, k, v, g, valid):
        lam = torch.cumsum(F.softplus(g), dim=-1)
        s = q @ k.mT * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
        keep = torch.ones(11, 11, dtype=torch.bool).tril() & valid[:, None, None, :]
        return s.masked_fill(~keep, torch.finfo(s.dtype).min).softmax(-1) @ v
    q, k, v, g = _qkvg(B=2, M=11, N=11)
    valid = _left_padded()
    report = foxcompile.explain(attend, q, k, v, g, valid)
    assert [s.decay for s in report.sites] == ["none"] and not report.sites[0].prunable, str(report)
    _padded_matches_eager(attend, q, k, v, g, valid, rows=_rows(valid))


def test_right_padding_is_a_key_mask_whose_lam_rises():
    """Padding at the end: the padded queries still see the real keys, as in eager (their own
    key's stand-in lam sits 2U + 128 above the others, close enough for fp32 precision); lam
    rises where the padding starts, so the guard turns pruning off."""
    q, k, v, g = _qkvg(B=2, M=11, N=11)
    valid = torch.arange(11)[None, :] < torch.tensor([[7], [11]])
    fn = key_masked("combined")
    _key_masked(fn, q, k, v, g, valid, rows=_rows(valid))
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="fox_acp", options=AOT)
    args64 = [a.double() if a.is_floating_point() else a for a in (q, k, v, g)]
    torch.testing.assert_close(compiled(*args64, valid), fn(*args64, valid), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(compiled(q, k, v, g, valid), fn(q, k, v, g, valid),
                               rtol=1e-4, atol=1e-5)


def test_key_flags_of_other_shapes_and_spellings():
    q, k, v, g = _qkvg(B=2, M=11, N=11)
    valid = _left_padded()

    def int_attention_mask(q, k, v, g, attention_mask):  # (B, T) of 0/1, HF style
        s = _gated_scores(q, k, g)
        keep = (attention_mask == 1)[:, None, None, :] & _causal(11)
        return s.masked_fill(~keep, torch.finfo(s.dtype).min).softmax(-1) @ v

    def bool_cast(q, k, v, g, attention_mask):
        s = _gated_scores(q, k, g).masked_fill(~_causal(11), -math.inf)
        return s.masked_fill(attention_mask.bool()[:, None, None, :] == 0, -math.inf).softmax(-1) @ v

    def four_d_flag(q, k, v, g, valid4):  # (B, 1, 1, T) handed in
        return torch.where(valid4 & _causal(11), _gated_scores(q, k, g), -math.inf).softmax(-1) @ v

    def padding_flag(q, k, v, g, pad):  # True on the padding: the removed set itself
        s = _gated_scores(q, k, g).masked_fill(pad.unsqueeze(1).unsqueeze(2), -math.inf)
        return s.masked_fill(~_causal(11), -math.inf).softmax(-1) @ v

    def per_head(q, k, v, g, valid):  # (B, H, 1, T): the op's lam is per head anyway
        flags = torch.stack([valid, valid.roll(1, -1)], dim=1)[:, :, None, :]
        return torch.where(flags & _causal(11), _gated_scores(q, k, g), -math.inf).softmax(-1) @ v

    ints = valid.long()
    _key_masked(int_attention_mask, q, k, v, g, ints, rows=_rows(valid))
    _key_masked(bool_cast, q, k, v, g, ints, rows=_rows(valid))
    _key_masked(four_d_flag, q, k, v, g, valid[:, None, None, :], rows=_rows(valid))
    _key_masked(padding_flag, q, k, v, g, ~valid, rows=_rows(valid), removed_when=True)
    seen = torch.stack([valid, valid.roll(1, -1)], dim=1).int().cummax(-1).values.bool()
    _key_masked(per_head, q, k, v, g, valid, rows=seen[..., None])  # (B, H, T, 1)


def test_key_masks_with_flattened_heads_queries_at_the_end_and_sdpa():
    valid = _left_padded(T=12, starts=(5, 1))

    def flat(q, k, v, g, valid):  # (B*H, T, T) scores, a (B*H, T) flag
        s = torch.bmm(q, k.mT) + g.cumsum(-1)[:, :, None] - g.cumsum(-1)[:, None, :]
        keep = torch.ones(12, 12, dtype=torch.bool).tril() & valid[:, None, :]
        return torch.bmm(s.masked_fill(~keep, -1e9).softmax(-1), v)

    def chunk(q, k, v, g, valid):  # the last 4 queries of 12 keys
        keep = torch.ones(4, 12, dtype=torch.bool).tril(8) & valid[:, None, None, :]
        return _gated_scores(q, k, g).masked_fill(~keep, -math.inf).softmax(-1) @ v

    def sdpa(q, k, v, g, valid):
        lam = F.logsigmoid(g).cumsum(-1)
        keep = torch.ones(12, 12, dtype=torch.bool).tril() & valid[:, None, None, :]
        bias = torch.where(keep, lam[..., :, None] - lam[..., None, :], -math.inf)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)

    q, k, v, g = (x.flatten(0, 1) for x in _qkvg(B=2, H=2, M=12, N=12))
    g = F.logsigmoid(g)
    flat_valid = valid.repeat_interleave(2, dim=0)
    _key_masked(flat, q, k, v, g, flat_valid, rows=flat_valid[:, :, None])
    site = _key_masked(chunk, *_qkvg(B=2, M=4, N=12), valid, rows=_rows(valid[:, -4:]))
    assert site.masked_keys.batch == ((0, -4),)
    _key_masked(sdpa, *_qkvg(B=2, M=12, N=12), valid, rows=_rows(valid))


def test_cloned_flag_changed_after_the_mask_is_followed():
    """A key flag cloned from an input and changed in place after the mask was built from it
    (directly or through a view): the op reads the input the clone copied, which holds the
    values the mask saw."""
    q, k, v, g = _qkvg(B=2, M=11, N=11)
    valid = _left_padded()

    def flag_changed_later(q, k, v, g, valid):
        flag = valid.clone()
        keep = _causal(11) & flag[:, None, None, :]
        flag[:, :3] = True
        return _gated_scores(q, k, g).masked_fill(~keep, -1e9).softmax(-1) @ v

    def view_changed_later(q, k, v, g, valid):
        flag = valid.clone()
        view = flag[:, None, None, :]
        keep = _causal(11) & view
        view[..., :3] = True
        return _gated_scores(q, k, g).masked_fill(~keep, -1e9).softmax(-1) @ v

    for fn in (flag_changed_later, view_changed_later):
        site = _key_masked(fn, q, k, v, g, valid, rows=_rows(valid))
        assert site.masked_keys.node.op == "placeholder", fn.__name__


def test_key_masks_that_stay_declined():
    q, k, v, g = _qkvg(B=2, M=11, N=11)
    valid = _left_padded()
    doc = torch.stack([_ids(4, 7), _ids(5, 6)])

    def query_side(q, k, v, g, valid):  # valid[:, None, :, None]: a mask of the queries
        keep = _causal(11) & valid[:, None, :, None]
        return _gated_scores(q, k, g).masked_fill(~keep, -1e9).softmax(-1) @ v

    def pairwise(q, k, v, g, valid):  # a (B, 1, T, T) mask from data
        keep = valid[:, None, :, None] & valid[:, None, None, :] & _causal(11)
        return _gated_scores(q, k, g).masked_fill(~keep, -1e9).softmax(-1) @ v

    def with_documents(q, k, v, g, valid, doc):
        keep = (doc[:, None, :, None] == doc[:, None, None, :]) & _causal(11)
        s = _gated_scores(q, k, g).masked_fill(~keep, -math.inf)
        return s.masked_fill(~valid[:, None, None, :], -math.inf).softmax(-1).nan_to_num() @ v

    def two_flags(q, k, v, g, valid):
        keep = _causal(11) & valid[:, None, None, :] & valid.flip(-1)[:, None, None, :]
        return _gated_scores(q, k, g).masked_fill(~keep, -1e9).softmax(-1) @ v

    def partly_masked(q, k, v, g, valid):  # masked keys still seen from 3 or more rows below
        keep = _causal(11) & (valid[:, None, None, :] | torch.ones(11, 11, dtype=torch.bool).tril(-3))
        return _gated_scores(q, k, g).masked_fill(~keep, -1e9).softmax(-1) @ v

    def without_causal(q, k, v, g, valid):
        return _gated_scores(q, k, g).masked_fill(~valid[:, None, None, :], -1e9).softmax(-1) @ v

    def sdpa_boolean(q, k, v, g, valid):  # True = keep; a boolean mask has no room for a gate
        keep = _causal(11) & valid[:, None, None, :]
        return F.scaled_dot_product_attention(q, k, v, attn_mask=keep)

    def flag_changed_later(q, k, v, g, valid):  # the op would read the flag after the change
        flag = valid & (g[:, 0] > -100.0)                  # computed: no input to read instead
        keep = _causal(11) & flag[:, None, None, :]
        flag[:, :3] = True
        return _gated_scores(q, k, g).masked_fill(~keep, -1e9).softmax(-1) @ v

    def arithmetic_extended_mask(q, k, v, g, attention_mask):  # old HF: (1 - m) * finfo.min
        s = _gated_scores(q, k, g)
        s = s + (1.0 - attention_mask[:, None, None, :].to(s.dtype)) * torch.finfo(s.dtype).min
        return s.masked_fill(~_causal(11), -math.inf).softmax(-1) @ v

    def arithmetic_padding_bias(q, k, v, g, pad):   # -1e9 times a float 0 / 1 tensor handed in
        s = _gated_scores(q, k, g) + pad[:, None, None, :] * -1e9
        return s.masked_fill(~_causal(11), -math.inf).softmax(-1) @ v

    _declined(arithmetic_extended_mask, q, k, v, g, valid.long(), reason="lost in the rounding")
    _declined(arithmetic_padding_bias, q, k, v, g, (~valid).to(q.dtype), reason="written as arithmetic")
    _declined(query_side, q, k, v, g, valid, reason="not recognised")
    _declined(flag_changed_later, q, k, v, g, valid, reason="between its use and the value product")
    _declined(pairwise, q, k, v, g, valid, reason="not recognised")
    _declined(with_documents, q, k, v, g, valid, doc, reason="combined with a packed-sequence")
    _declined(two_flags, q, k, v, g, valid, reason="two key masks")
    _declined(partly_masked, q, k, v, g, valid, reason="only whole keys can be masked")
    _declined(without_causal, q, k, v, g, valid, reason="not the causal future")
    _declined(sdpa_boolean, q, k, v, g, valid, reason="boolean attn_mask")


def test_boolean_padding_times_a_large_negative_number_is_a_key_mask():
    """-1e9 times a boolean padding flag cast to float is 0 / -1e9 by construction: the key
    mask masked_fill(pad, -1e9) is, as arithmetic (the same tensor handed in as float data is
    not provably 0 / 1 and stays declined, above)."""
    def arithmetic_padding_bias(q, k, v, g, valid):
        s = _gated_scores(q, k, g) + (~valid)[:, None, None, :].to(q.dtype) * -1e9
        return s.masked_fill(~_causal(11), -math.inf).softmax(-1) @ v

    valid = _left_padded()
    _key_masked(arithmetic_padding_bias, *_qkvg(B=2, M=11, N=11), valid, rows=_rows(valid),
                removed_when=True)


def test_gates_zeroed_on_the_padding_stay_non_positive():
    """masked_fill / where with 0, or times a boolean, keep logsigmoid's sign: proven without a key
    mask; a positive fill does not."""
    def zeroed(form):
        def attend(q, k, v, g, valid):
            log_f, flags = F.logsigmoid(g), valid[:, None, :]
            if form == "masked_fill":
                log_f = log_f.masked_fill(~flags, 0.0)
            elif form == "where":
                log_f = torch.where(flags, log_f, 0.0)
            elif form == "times_flag":
                log_f = log_f * flags
            else:
                log_f = log_f.masked_fill(~flags, 0.5)
            lam = torch.cumsum(log_f, dim=-1)
            s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
            return s.masked_fill(~_causal(q.shape[2]), -math.inf).softmax(-1) @ v
        return attend

    q, k, v, g = _qkvg(B=2, M=11, N=11)
    for form in ("masked_fill", "where", "times_flag"):
        _one_site(zeroed(form), q, k, v, g, _left_padded())
    _one_site(zeroed("positive_fill"), q, k, v, g, _left_padded(), decay="guarded")


def test_key_masks_with_grouped_heads_no_batch_and_dynamic_shapes():
    def grouped(q, k, v, g, valid):  # q (B, T, Hk, G, D); k, v (B, T, Hk, D); g (B, Hk, G, T)
        lam = F.logsigmoid(g).cumsum(-1)
        s = torch.einsum("bihgd,bjhd->bhgij", q, k) + lam[..., :, None] - lam[..., None, :]
        keep = _causal(q.shape[1]) & valid[:, None, None, None, :]
        return torch.einsum("bhgij,bjhd->bihgd", s.masked_fill(~keep, -1e9).softmax(-1), v)

    def unbatched(q, k, v, g, valid):  # (T, D), a (T,) flag
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.T + lam[:, None] - lam[None, :]
        return s.masked_fill(~(_causal(q.shape[0]) & valid), -math.inf).softmax(-1) @ v

    valid = torch.arange(10)[None] >= torch.tensor([[3], [0]])
    args = (torch.randn(2, 10, 2, 3, 8), torch.randn(2, 10, 2, 8), torch.randn(2, 10, 2, 8),
            torch.randn(2, 2, 3, 10))
    _key_masked(grouped, *args, valid, rows=valid[:, :, None, None, None])
    args = (torch.randn(10, 8), torch.randn(10, 8), torch.randn(10, 8), torch.randn(10))
    _key_masked(unbatched, *args, valid[0], rows=valid[0][:, None])

    fn = key_masked("combined", "-1e9")
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="fox_acp", dynamic=True, options=AOT)
    for T in (9, 13):
        q, k, v, g = _qkvg(B=3, H=2, M=T, N=T)
        valid = torch.arange(T)[None] >= torch.tensor([[3], [0], [5]])
        with foxcompile.pruning_stats() as stats:
            out = compiled(q, k, v, g, valid)
        assert stats.per_head(), "the site was not rewritten"
        rows = _rows(valid).expand(out.shape)
        torch.testing.assert_close(out[rows], fn(q, k, v, g, valid)[rows], rtol=1e-5, atol=1e-5)


def test_second_site_reading_the_first_sites_output():
    """q of the second site is the first site's output itself (no op between): both rewritten,
    the second pointed at the first's new output, outputs and gradients as in eager."""
    def attend(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        return s.masked_fill(~_causal(s.shape[-1]), -math.inf).softmax(-1) @ v

    def chained(q, k, v, g):
        return attend(attend(q, k, v, g), k, v, g)

    args = _qkvg()
    report = foxcompile.explain(chained, *args)
    assert len(report.sites) == 2 and not report.declined, str(report)
    _compiled_matches_eager(chained, *args)


# ---------------------------------------------------------------------------------------------
# Additive masks built from constants: fills, products of constants, two-valued masks


def additive_mask(build):
    """FoX whose causal mask is the additive (T, T) tensor `build(s, T)` returns."""
    def attend(q, k, v, g):
        lam = F.logsigmoid(g).cumsum(-1)
        s = q @ k.mT * q.shape[-1] ** -0.5 + lam[..., :, None] - lam[..., None, :]
        return (s + build(s, s.shape[-1])).softmax(-1) @ v
    return attend


def _fill_with_neg_inf(t):
    """fairseq's utils.fill_with_neg_inf: an fp16-safe -inf fill of a tensor's storage."""
    return t.float().fill_(float("-inf")).type_as(t)


def _square_subsequent_mask(T):
    """The old PyTorch transformer tutorial's generate_square_subsequent_mask."""
    m = (torch.triu(torch.ones(T, T)) == 1).transpose(0, 1)
    return m.float().masked_fill(m == 0, float("-inf")).masked_fill(m == 1, float(0.0))


def _filled_in_place(T):
    m = torch.empty(T, T).fill_(-math.inf)
    m.triu_(1)
    return m


CONSTANT_MASKS = {
    "ones_times_neg_inf": lambda s, T: torch.triu(torch.ones(T, T) * float("-inf"), diagonal=1),
    "neg_inf_times_ones": lambda s, T: torch.triu(-math.inf * torch.ones(T, T), diagonal=1),
    "negated_product": lambda s, T: (-(torch.ones(T, T) * math.inf)).triu(1),
    "new_full": lambda s, T: s.new_full((T, T), -math.inf).triu(1),
    "torch_fill": lambda s, T: torch.fill(torch.empty(T, T), -math.inf).triu(1),
    "fairseq_fill_with_neg_inf": lambda s, T: torch.triu(_fill_with_neg_inf(torch.zeros(T, T)), 1),
    "fill_then_triu_in_place": lambda s, T: _filled_in_place(T),
    "tutorial_square_subsequent": lambda s, T: _square_subsequent_mask(T),
    "tutorial_other_order": lambda s, T: (lambda m: m.float().masked_fill(m == 1, 0.0).masked_fill(
        m == 0, -math.inf))(torch.triu(torch.ones(T, T)).mT == 1),
    "where_of_a_compared_mask": lambda s, T: torch.where(torch.ones(T, T).tril() == 1, 0.0, -math.inf),
    "ones_tril_not_one": lambda s, T: torch.zeros(T, T).masked_fill(
        torch.ones(T, T).tril() != 1, -math.inf),
    "full_like_bool": lambda s, T: torch.zeros(T, T).masked_fill(
        ~torch.full_like(s[0, 0], True, dtype=torch.bool).tril(), -math.inf),
    # arithmetic on a 0 / 1 mask: (1 - m) * -1e9 is 0 where m holds and -1e9 elsewhere
    "one_minus_tril_times": lambda s, T: (1 - torch.tril(torch.ones(T, T))) * -1e9,
    "subtracted": lambda s, T: -(1e9 * (1 - torch.tril(torch.ones(T, T)))),   # s - 1e9 * (1 - m)
    "compared_above_zero": lambda s, T: torch.zeros(T, T).masked_fill(
        torch.triu(torch.ones(T, T), 1) > 0, -math.inf),
    "compared_below_one": lambda s, T: torch.zeros(T, T).masked_fill(
        torch.tril(torch.ones(T, T)) < 1, -math.inf),
    # values compared as the tensor stores them: 1.0001 is 1.0 in float16
    "compared_after_rounding": lambda s, T: torch.zeros(T, T).masked_fill(
        torch.full((T, T), 1.0001).triu(1).half() == 1, -math.inf),
    "one_minus_tril_bool": lambda s, T: torch.zeros(T, T).masked_fill(
        (1 - torch.tril(torch.ones(T, T))).bool(), torch.tensor(torch.finfo(torch.float32).min)),
}


@pytest.mark.parametrize("name", CONSTANT_MASKS)
def test_constant_built_masks(name):
    _one_site(additive_mask(CONSTANT_MASKS[name]), *_qkvg(B=2, M=9, N=9))


NOT_CAUSAL = {   # name: (mask, the decline's reason)
    # the diagonal masked too, and the past instead of the future
    "diagonal_masked": (lambda s, T: torch.triu(torch.ones(T, T) * -math.inf), "j - i >= 0"),
    "past_masked": (lambda s, T: torch.tril(torch.ones(T, T) * -math.inf, -1), "j - i <= -1"),
    # the tutorial's mask without its transpose keeps the future
    "tutorial_untransposed": (lambda s, T: (lambda m: m.float().masked_fill(m == 0, -math.inf)
                              .masked_fill(m == 1, 0.0))(torch.triu(torch.ones(T, T)) == 1),
                              "j - i <= -1"),
    # 0.5 where the tutorial has 0: a bias that depends on i and j jointly
    "tutorial_half": (lambda s, T: _square_subsequent_mask(T).masked_fill(
        _square_subsequent_mask(T) == 0, 0.5), "jointly"),
    # `== 1` of a mask of twos: nothing kept, every score -inf (eager is NaN)
    "compared_twos": (lambda s, T: (lambda m: m.float().masked_fill(m == 0, -math.inf))(
        torch.triu(torch.full((T, T), 2.0)) == 1), ""),
    # NaN masks: eager's output is NaN, and must stay so (a NaN fill is no -inf)
    "nan_full": (lambda s, T: torch.full((T, T), math.nan).triu(1), "jointly"),
    "zeros_times_inf": (lambda s, T: torch.triu(torch.zeros(T, T) * -math.inf, 1), "jointly"),
    # +inf: 1 / 0 (eager NaN)
    "ones_over_zero": (lambda s, T: torch.triu(torch.ones(T, T) / 0.0, 1), "jointly"),
    # (1 - m) * c: too weak a fill, the past masked, a mask over all (eager rounds the scores
    # away), and -inf (0 * -inf is NaN where m holds)
    "weak_fill": (lambda s, T: (1 - torch.tril(torch.ones(T, T))) * -1e3, "fills with -1000"),
    "past_times": (lambda s, T: torch.tril(torch.ones(T, T), -1) * -1e9, "j - i <= -1"),
    "two_minus_tril": (lambda s, T: (2 - torch.tril(torch.ones(T, T))) * -1e9, "jointly"),
    "one_minus_tril_inf": (lambda s, T: (1 - torch.tril(torch.ones(T, T))) * -math.inf, "times -inf"),
    # a -inf fill overwritten in place with 0 before the triu reads it: no mask at all
    "fill_overwritten": (lambda s, T: (lambda m: (m.fill_(0.0), m.triu(1))[1])(
        torch.full((T, T), -math.inf)), "after the in-place fill_"),
    # one column put back after the in-place triu_: not followed
    "column_refilled": (lambda s, T: (lambda m: (m[:, 1].fill_(0.0), m)[1])(_filled_in_place(T)),
                        "after the in-place"),
}


@pytest.mark.parametrize("name", NOT_CAUSAL)
def test_constant_built_masks_that_are_not_causal(name):
    mask, reason = NOT_CAUSAL[name]
    _declined(additive_mask(mask), *_qkvg(B=2, M=9, N=9), reason=reason)


# ---------------------------------------------------------------------------------------------
# Spellings of transposes and reshapes that Dynamo records as transpose / permute / view


LAYOUT_SPELLINGS = {   # name: (heads first from (B, T, H, D), k transposed, back to (B, T, H * D))
    "transpose": ("x.transpose(1, 2)", "k.transpose(-2, -1)", "o.transpose(1, 2).flatten(2)"),
    "swapaxes": ("x.swapaxes(1, 2)", "k.swapaxes(-2, -1)", "o.swapaxes(1, 2).reshape(B, T, -1)"),
    "swapdims": ("torch.swapdims(x, 1, 2)", "torch.swapaxes(k, -1, -2)",
                 "o.swapdims(1, 2).flatten(-2)"),
    "movedim": ("x.movedim(2, 1)", "k.movedim(-1, -2)", "o.movedim(1, 2).flatten(2)"),
    "moveaxis": ("torch.moveaxis(x, 2, 1)", "torch.movedim(k, -1, -2)",
                 "o.moveaxis(1, 2).reshape(B, T, H * D)"),
    "keywords": ("x.transpose(dim0=1, dim1=2)", "k.swapaxes(axis0=-2, axis1=-1)",
                 "o.transpose(1, 2).unflatten(2, (1, H)).flatten(2)"),
}


@pytest.mark.parametrize("name", LAYOUT_SPELLINGS)
def test_layout_spellings(name):
    heads_first, k_transposed, merged = LAYOUT_SPELLINGS[name]
    namespace = {"torch": torch, "F": F, "math": math}
    exec(f"""
def attend(q, k, v, g):
    B, T, H, D = q.shape
    q, k, v = ({heads_first} for x in (q, k, v))
    lam = F.logsigmoid(g).cumsum(-1)
    s = q @ {k_transposed} * D ** -0.5 + lam[..., :, None] - lam[..., None, :]
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), -math.inf)
    o = s.softmax(-1) @ v
    return {merged}
""", namespace)
    q, k, v = (torch.randn(2, 9, 3, 8) for _ in range(3))
    _one_site(namespace["attend"], q, k, v, torch.randn(2, 3, 9))
