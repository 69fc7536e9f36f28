"""Matcher rules one at a time: decoding without a mask, MQA/GQA passed to the op with Hk heads,
grouped-query einsum, in-place score forms, separable T x T copies, Mamba-2's segsum, decay through
views, and the declines that keep each rule sound. Every case checks `foxcompile.explain` and, where
it rewrites, that the compiled function (aot_eager) equals eager in outputs and gradients."""
import math

import torch
import torch.nn.functional as F

import foxcompile

AOT = {"fox.compiler": "aot_eager"}


def _compiled_matches_eager(fn, *args, grads=True):
    """Outputs and input gradients, compiled (aot_eager) versus eager, in fp64 (integer inputs,
    document ids, as they are)."""
    args = [a.double() if a.is_floating_point() else a for a in args]
    torch._dynamo.reset()
    compiled = torch.compile(fn, backend="fox_acp", options=AOT)
    runs = []
    for f in (fn, compiled):
        leaves = [a.clone().requires_grad_(grads and a.is_floating_point()) for a in args]
        out = f(*leaves)
        if grads:
            out.backward(torch.ones_like(out))
        runs.append((out.detach(), [a.grad for a in leaves]))
    (out_e, grads_e), (out_c, grads_c) = runs
    torch.testing.assert_close(out_c, out_e, rtol=1e-8, atol=1e-8, equal_nan=True)
    for a, b in zip(grads_c, grads_e):
        if a is None or b is None:
            assert a is None and b is None
            continue
        torch.testing.assert_close(a, b, rtol=1e-8, atol=1e-8, equal_nan=True)


def _one_site(fn, *args, decay="proven"):
    report = foxcompile.explain(fn, *args)
    assert len(report.sites) == 1 and not report.declined, str(report)
    assert report.sites[0].decay == decay, str(report)
    _compiled_matches_eager(fn, *args)
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
