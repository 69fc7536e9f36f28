"""fox_acp end to end on the CPU: every first-cut form compiled versus eager (outputs and all
gradients, fp32 and fp64), training, dynamic shapes, checkpointing, the entry point, options,
explain and debug output."""
import logging
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

import foxcompile
from helpers import AOT, assert_compiled_matches_eager


class GatedAttention(nn.Module):
    """FoX attention in (B, H, T, D) with one of several spellings."""

    def __init__(self, style: str, dim=24, heads=2):
        super().__init__()
        self.style, self.heads, self.head_dim = style, heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.fgate = nn.Linear(dim, heads)
        self.register_buffer("causal", torch.tril(torch.ones(64, 64, dtype=torch.bool)))

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        gate_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
        log_f = F.logsigmoid(self.fgate(x).to(gate_dtype))    # (B, T, H), fp32 as FoX does
        lam = torch.cumsum(log_f, dim=1).transpose(1, 2)      # (B, H, T)
        d = self.head_dim
        if self.style == "matmul_masked_fill":
            s = q @ k.transpose(-2, -1) * d ** -0.5
            s = s + lam[..., :, None] - lam[..., None, :]
            s = s.masked_fill(~self.causal[:t, :t], float("-inf"))
            p = torch.softmax(s.float(), dim=-1).to(q.dtype)
            o = p @ v
        elif self.style == "torch_matmul_triu_div":
            s = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(d)
            s = s + (lam.unsqueeze(-1) - lam.unsqueeze(-2))
            s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool, device=x.device), 1),
                              -math.inf)
            o = torch.matmul(F.softmax(s, dim=-1), v)
        elif self.style == "einsum_where":
            s = torch.einsum("bhid,bhjd->bhij", q * d ** -0.5, k)
            s = s + lam[..., :, None] - lam[..., None, :]
            keep = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
            s = torch.where(keep, s, float("-inf"))
            o = torch.einsum("bhij,bhjd->bhid", s.softmax(-1), v)
        elif self.style == "sdpa_float_mask":
            bias = lam[..., :, None] - lam[..., None, :]
            bias = bias.masked_fill(~self.causal[:t, :t], float("-inf")).to(q.dtype)
            o = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        elif self.style == "plain_causal":
            o = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            raise ValueError(self.style)
        return o.transpose(1, 2).reshape(b, t, -1)


FORMS = ["matmul_masked_fill", "torch_matmul_triu_div", "einsum_where", "sdpa_float_mask"]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("style", FORMS)
def test_forms_match_eager(style, dtype):
    torch.manual_seed(0)
    model = GatedAttention(style).to(dtype)
    x = torch.randn(2, 21, 24, dtype=dtype)
    report = foxcompile.explain(model, x)
    assert len(report.sites) == 1, str(report)
    assert report.sites[0].decay == "proven" and report.sites[0].prunable
    # float32: the parameter grads reach about 30 and are sums over all tokens, so another
    # order of summation moves a small entry by a few ulps of the largest (about 5e-6 from
    # float64 for eager and compiled alike); the float64 case checks the maths tightly
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    if style == "matmul_masked_fill" and dtype == torch.float64:
        tol = dict(rtol=1e-5, atol=1e-6)  # eager's softmax(s.float()) rounds to fp32; ours doesn't
    assert_compiled_matches_eager(model, (x,), **tol)


def test_plain_causal_attention_is_declined():
    model = GatedAttention("plain_causal")
    report = foxcompile.explain(model, torch.randn(1, 9, 24))
    assert not report.sites
    assert len(report.declined) == 1 and "nothing to prune" in report.declined[0].reason


def test_lam_given_as_input_is_guarded():
    def attend(q, k, v, lam):
        s = q @ k.transpose(-2, -1) * 0.3 + lam[..., :, None] - lam[..., None, :]
        t = q.shape[-2]
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        return torch.softmax(s, -1) @ v
    q, k, v = (torch.randn(1, 2, 17, 8) for _ in range(3))
    lam = F.logsigmoid(torch.randn(1, 2, 17)).cumsum(-1)
    report = foxcompile.explain(attend, q, k, v, lam)
    assert [s.decay for s in report.sites] == ["guarded"]
    torch._dynamo.reset()
    out = torch.compile(attend, backend="fox_acp", options=AOT)(q, k, v, lam)
    torch.testing.assert_close(out, attend(q, k, v, lam), rtol=1e-5, atol=1e-6)


def test_growing_bias_is_not_prunable():
    """A softplus gate makes lam grow toward the past: rewritten dense, never pruned."""
    def attend(q, k, v, logits):
        lam = F.softplus(logits).cumsum(-1)
        s = q @ k.transpose(-2, -1) + lam[..., :, None] - lam[..., None, :]
        t = q.shape[-2]
        s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
        return s.softmax(-1) @ v
    args = (torch.randn(1, 2, 13, 8), torch.randn(1, 2, 13, 8), torch.randn(1, 2, 13, 8),
            torch.randn(1, 2, 13))
    report = foxcompile.explain(attend, *args)
    assert [(s.decay, s.prunable) for s in report.sites] == [("none", False)]


def test_training_step_through_inductor():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 24), GatedAttention("matmul_masked_fill"), nn.Linear(24, 24))
    reference = GatedAttention("matmul_masked_fill")
    reference = nn.Sequential(nn.Linear(24, 24), reference, nn.Linear(24, 24))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(2, 19, 24)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fox_acp")
    for net in (compiled, reference):
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for _ in range(2):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_dynamic_shapes_do_not_recompile_per_length():
    torch.manual_seed(0)
    model = GatedAttention("torch_matmul_triu_div")
    compiles = []

    def counting(gm, example_inputs, **kw):
        compiles.append(1)
        return foxcompile.fox_acp(gm, example_inputs, options=AOT)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=counting)
    for t in (10, 13, 17, 22):
        x = torch.randn(1, t, 24)
        torch.testing.assert_close(compiled(x), model(x), rtol=2e-5, atol=2e-6)
    assert len(compiles) <= 2   # static first, then one dynamic graph for every later length
    report = foxcompile.explain(torch.compile(model, dynamic=True), torch.randn(1, 12, 24))
    assert len(report.sites) == 1


def test_attention_inside_checkpoint():
    torch.manual_seed(0)

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = GatedAttention("matmul_masked_fill")

        def forward(self, x):
            return checkpoint(self.attn, x, use_reentrant=False)
    model = Block()
    x = torch.randn(2, 15, 24)
    report = foxcompile.explain(model, x)
    assert len(report.sites) == 1, str(report)
    assert_compiled_matches_eager(model, (x,), rtol=2e-5, atol=2e-6)


def test_options_are_namespaced():
    model = GatedAttention("matmul_masked_fill")
    x = torch.randn(1, 8, 24)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="unknown foxcompile option"):
        torch.compile(model, backend="fox_acp", options={"fox.nope": 1})(x)
    torch._dynamo.reset()
    with pytest.raises(Exception, match="fox.epsilon"):
        torch.compile(model, backend="fox_acp", options={"fox.epsilon": -1})(x)
    torch._dynamo.reset()  # an Inductor option travels on untouched
    out = torch.compile(model, backend="fox_acp", options={"fox.epsilon": 0.0,
                                                           "max_autotune": False})(x)
    torch.testing.assert_close(out, model(x), rtol=2e-5, atol=2e-6)


def test_debug_mode_logs_and_dumps(tmp_path, caplog):
    model = nn.ModuleDict({"fox": GatedAttention("matmul_masked_fill"),
                           "plain": GatedAttention("plain_causal")})

    def forward(x):
        return model["fox"](x) + model["plain"](x)
    torch._dynamo.reset()
    with caplog.at_level(logging.DEBUG, logger="foxcompile"):
        torch.compile(forward, backend="fox_acp",
                      options={"fox.debug": str(tmp_path), **AOT})(torch.randn(1, 8, 24))
    text = caplog.text
    assert "rewrote" in text and "declined" in text and "nothing to prune" in text
    assert "test_backend.py" in text                       # the user's source line
    assert "before the rewrite" in text and "foxcompile.attention" in text
    files = sorted(os.listdir(tmp_path))
    assert "report.txt" in files and any(f.endswith("_after.py") for f in files)
    after = next(f for f in files if f.endswith("_after.py"))
    assert "foxcompile.attention" in (tmp_path / after).read_text()


def test_explain_report():
    model = GatedAttention("einsum_where")
    report = foxcompile.explain(model, torch.randn(1, 11, 24))
    site = report.sites[0]
    assert site.kind == "einsum" and site.decay == "proven" and site.prunable
    assert "test_backend.py" in site.location and site.shapes["q"] == (1, 2, 11, 12)
    assert len(report.graphs) == 1 and "softmax" in report.graphs[0].before
    assert "softmax" not in report.graphs[0].after
    assert "foxcompile.attention" in report.graphs[0].after
    assert "1 forgetting-attention site(s) rewritten" in str(report)


def test_probabilities_used_elsewhere_are_declined():
    def attend(q, k, v, lam):
        t = q.shape[-2]
        s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
        p = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), -math.inf).softmax(-1)
        return p @ v, p
    args = (torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8), torch.randn(1, 2, 9, 8),
            F.logsigmoid(torch.randn(1, 2, 9)).cumsum(-1))
    report = foxcompile.explain(attend, *args)
    assert not report.sites and "probabilities" in report.declined[0].reason


def test_entry_point_in_a_fresh_process():
    from importlib.metadata import entry_points
    if not any(ep.name == "fox_acp" for ep in entry_points(group="torch_dynamo_backends")):
        pytest.skip("foxcompile is not pip-installed here (CI installs it)")
    script = textwrap.dedent("""
        import sys, torch
        def f(q, k, v, lam):
            t = q.shape[-2]
            s = q @ k.mT + lam[..., :, None] - lam[..., None, :]
            s = s.masked_fill(~torch.ones(t, t, dtype=torch.bool).tril(), float("-inf"))
            return s.softmax(-1) @ v
        args = [torch.randn(1, 2, 9, 8) for _ in range(3)] + [torch.randn(1, 2, 9).cumsum(-1)]
        assert "foxcompile" not in sys.modules
        out = torch.compile(f, backend="fox_acp", options={"fox.compiler": "aot_eager"})(*args)
        assert "foxcompile" in sys.modules
        torch.testing.assert_close(out, f(*args), rtol=1e-5, atol=1e-6)
        print("entry point ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300, env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert done.returncode == 0, done.stderr
    assert "entry point ok" in done.stdout


def test_callable_backend_and_stats_under_compile():
    torch.manual_seed(0)
    model = GatedAttention("matmul_masked_fill")
    with torch.no_grad():
        model.fgate.bias.fill_(-4.0)                  # fast decay: tiles are skipped
    x = torch.randn(1, 300, 24)
    model.causal = torch.tril(torch.ones(300, 300, dtype=torch.bool))
    torch._dynamo.reset()
    compiled = torch.compile(model, backend=foxcompile.fox_acp)
    with foxcompile.pruning_stats() as stats:
        out = compiled(x)
    rows = stats.per_head()
    assert len(rows) == 1 and "test_backend.py" in rows[0]["site"]
    assert stats.skipped_fraction() > 0
    torch.testing.assert_close(out, model(x), rtol=1e-4, atol=1e-5)


def test_right_padding_as_key_bias_stays_finite_like_eager():
    """A -inf key-side bias (padding folded into the scores) is a key term: padded queries, whose
    own key is masked, still attend the real keys in eager, and must not turn into NaN."""
    def attend(q, k, v, lam, key_bias):
        t = q.shape[-2]
        s = q @ k.mT * 0.3 + lam[..., :, None] - lam[..., None, :] + key_bias
        s = s.masked_fill(torch.triu(torch.ones(t, t, dtype=torch.bool), 1), float("-inf"))
        return s.softmax(-1) @ v
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 23, 8) for _ in range(3))
    lam = F.logsigmoid(torch.randn(2, 2, 23)).cumsum(-1)
    key_bias = torch.zeros(2, 1, 1, 23)
    key_bias[0, ..., 17:] = float("-inf")          # the first sequence has 6 padded keys
    report = foxcompile.explain(attend, q, k, v, lam, key_bias)
    assert len(report.sites) == 1
    torch._dynamo.reset()
    out = torch.compile(attend, backend="fox_acp", options=AOT)(q, k, v, lam, key_bias)
    ref = attend(q, k, v, lam, key_bias)
    assert torch.isfinite(ref).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out[1], ref[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0, :, :17], ref[0, :, :17], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out[0, :, 17:], ref[0, :, 17:], rtol=1e-4, atol=1e-5)


def test_a_failing_rewrite_leaves_the_site_to_inductor(monkeypatch):
    import foxcompile.rewrite as rewrite_module

    def broken(graph, site):
        graph.call_function(torch.neg, (site.q.node,))   # a half-built rewrite...
        raise RuntimeError("simulated bug")               # ...that then fails
    monkeypatch.setattr(rewrite_module, "_key_vector", broken)
    model = GatedAttention("matmul_masked_fill")
    x = torch.randn(1, 9, 24)
    report = foxcompile.explain(model, x)
    assert not report.sites and "internal rewrite error" in report.declined[0].reason
    assert "torch.neg" not in report.graphs[0].after and "softmax" in report.graphs[0].after
    torch._dynamo.reset()
    out = torch.compile(model, backend="fox_acp", options=AOT)(x)
    torch.testing.assert_close(out, model(x), rtol=1e-5, atol=1e-6)
