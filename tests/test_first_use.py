"""What a new user meets first: the op's required layout, empty inputs, one validation of
epsilon everywhere, explain() without side effects, debug output and the pruning summary."""
import logging
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch._dynamo.utils import counters

import foxcompile
from foxcompile.contract import check_epsilon
from foxcompile.kernels import naive
from foxcompile.options import FoxOptions
from helpers import AOT



class Attention(nn.Module):
    """FoX in (B, H, T, D) with a causal mask buffer; `return_scores` keeps the scores alive
    (a decline)."""

    def __init__(self, dim=16, heads=2, max_len=320, gate_bias=0.0):
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.fgate = nn.Linear(dim, heads)
        nn.init.constant_(self.fgate.bias, gate_bias)
        self.register_buffer("causal_mask", torch.ones(max_len, max_len, dtype=torch.bool).tril())

    def forward(self, x, return_scores=False):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        lam = F.logsigmoid(self.fgate(x)).cumsum(1).transpose(1, 2)
        s = q @ k.transpose(-2, -1) * self.head_dim ** -0.5 + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(~self.causal_mask[:t, :t], float("-inf"))
        o = (s.softmax(-1) @ v).transpose(1, 2).reshape(b, t, self.heads * self.head_dim)
        return (o, s) if return_scores else o


class Model(nn.Module):
    def __init__(self, layers=2, **kwargs):
        super().__init__()
        self.layers = nn.ModuleList([Attention(**kwargs) for _ in range(layers)])

    def forward(self, x):
        for layer in self.layers:
            x = x + layer(x)
        return x


# --- the op: layout is required, and the shapes can no longer be misread ---------------------

def test_layout_is_a_required_keyword():
    """(B, H, T, D) tensors with H == 4 and T == 128: the gate (B, H, T) also reads as (B, N, Hq)
    in the other layout, so an omitted layout must be an error, not a guess."""
    gen = torch.Generator().manual_seed(0)
    q, k, v = torch.randn(3, 2, 4, 128, 32, generator=gen).unbind(0)
    gates = F.logsigmoid(torch.randn(2, 4, 128, generator=gen))
    with pytest.raises(TypeError, match="layout"):
        foxcompile.forgetting_attention(q, k, v, gates)
    out = foxcompile.forgetting_attention(q, k, v, gates, layout="bhtd")
    want = naive.forgetting_attention(q.double(), k.double(), v.double(),
                                      gates.double().cumsum(-1), 32 ** -0.5)
    assert (out.double() - want).abs().max() < 1e-4   # the wrong reading was off by ~4.5


@pytest.mark.parametrize("layout", ["bthd", "bhtd"])
@pytest.mark.parametrize("shape", [(0, 4, 8, 16), (2, 0, 8, 16), (2, 3, 0, 16)],
                         ids=["batch0", "heads0", "time0"])
def test_empty_inputs_give_empty_results(shape, layout):
    batch, heads, length, dim = shape
    dims = (batch, length, heads, dim) if layout == "bthd" else shape
    gate_dims = dims[:3]
    q, k, v = (torch.randn(dims, requires_grad=True) for _ in range(3))
    gates = F.logsigmoid(torch.randn(gate_dims)).requires_grad_()
    out = foxcompile.forgetting_attention(q, k, v, gates, layout=layout)
    assert out.shape == dims
    out.sum().backward()
    assert q.grad.shape == q.shape and gates.grad.shape == gates.shape


def test_fewer_queries_than_keys_with_no_query():
    q = torch.randn(1, 0, 2, 16)
    k = v = torch.randn(1, 9, 2, 16)
    gates = F.logsigmoid(torch.randn(1, 9, 2))
    assert foxcompile.forgetting_attention(q, k, v, gates, layout="bthd").shape == (1, 0, 2, 16)


@pytest.mark.parametrize("epsilon, error", [(1.5, ValueError), (1e6, ValueError),
                                            (1.0, ValueError), (-1e-3, ValueError),
                                            (float("nan"), ValueError), (float("inf"), ValueError),
                                            ("0.1", TypeError), (None, TypeError),
                                            (True, TypeError)])
def test_epsilon_checked_once_the_same_everywhere(epsilon, error):
    """The op, the backend option and the contract raise the same error with the same words."""
    q = k = v = torch.randn(1, 8, 2, 16)
    gates = F.logsigmoid(torch.randn(1, 8, 2))
    with pytest.raises(error, match=r"in \[0, 1\)") as from_op:
        foxcompile.forgetting_attention(q, k, v, gates, layout="bthd", epsilon=epsilon)
    with pytest.raises(error, match=r"in \[0, 1\)") as from_option:
        FoxOptions.parse({"fox.epsilon": epsilon})
    with pytest.raises(error) as from_contract:
        check_epsilon(epsilon)
    assert "fox.epsilon" in str(from_option.value)
    assert str(from_op.value) == str(from_contract.value)


def test_valid_epsilons_are_accepted():
    assert check_epsilon(0) == 0.0 and check_epsilon(0.5) == 0.5
    assert FoxOptions.parse({"fox.epsilon": 1e-3}).epsilon == 1e-3


def test_head_dim_zero_is_a_clear_error():
    q = k = torch.randn(1, 8, 2, 0)
    v = torch.randn(1, 8, 2, 16)
    gates = F.logsigmoid(torch.randn(1, 8, 2))
    with pytest.raises(ValueError, match="head dim 0"):
        foxcompile.forgetting_attention(q, k, v, gates, layout="bthd")
    out = foxcompile.forgetting_attention(q, k, v, gates, layout="bthd", scale=1.0)
    want = naive.forgetting_attention(q.transpose(1, 2).double(), k.transpose(1, 2).double(),
                                      v.transpose(1, 2).double(),
                                      gates.transpose(1, 2).double().cumsum(-1), 1.0)
    assert (out.transpose(1, 2).double() - want).abs().max() < 1e-5


# --- compiled models --------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(0, 20, 16), (2, 0, 16)], ids=["batch0", "time0"])
def test_compiled_model_on_empty_input(shape):
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(shape)
    torch._dynamo.reset()
    out = torch.compile(model, backend="fox_acp", options=AOT)(x)
    assert out.shape == shape and torch.equal(out, model(x))
    assert len(foxcompile.explain(model, x).sites) == 2


def test_explain_keeps_the_users_compiled_code():
    """explain() between compiled calls: the compiled model neither recompiles nor loses its
    code, and explain itself works every time it is asked."""
    torch.manual_seed(0)
    model = Model()
    x = torch.randn(2, 20, 16)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fox_acp", options=AOT)
    compiled(x)
    frames = counters["stats"]["unique_graphs"]
    for _ in range(10):  # more than Dynamo's default recompile limit of 8
        assert len(foxcompile.explain(model, x).sites) == 2
    explained = counters["stats"]["unique_graphs"]
    assert explained > frames   # explain really traced
    compiled(x)
    assert counters["stats"]["unique_graphs"] == explained   # and the user's code is still there


def test_reports_name_modules_and_buffers_as_the_user_does():
    """No Dynamo-internal names (l_self_modules_..., L['self']...) in what users read."""
    torch.manual_seed(0)
    model = Model()

    def run(m, x):       # the model passed as an argument: Dynamo calls it L['m']
        return m(x)
    for report in (foxcompile.explain(model, torch.randn(1, 20, 16)),
                   foxcompile.explain(run, model, torch.randn(1, 20, 16))):
        text = str(report)
        assert "layers.0" in text and "layers.0.causal_mask" in text, text
        assert "l_self" not in text and "L['" not in text and "_modules" not in text, text


def test_debug_mode_shows_declined_graphs_and_safe_file_names(tmp_path, caplog):
    model = Attention()

    def only_declined(x):
        return model(x, return_scores=True)
    torch._dynamo.reset()
    with caplog.at_level(logging.DEBUG, logger="foxcompile"):
        torch.compile(only_declined, backend="fox_acp",
                      options={"fox.debug": str(tmp_path), **AOT})(torch.randn(1, 8, 16))
    text = caplog.text
    assert "declined" in text and "also used by" in text
    assert "before the rewrite" in text and "softmax" in text   # the graph is shown anyway
    assert "unchanged" in text
    files = os.listdir(tmp_path)
    assert any(f.endswith("_before.py") for f in files)
    assert not any(set(f) & set("<>:*?\"|' ") for f in files), files


def test_pruning_summary_without_any_site_says_so():
    model = nn.Linear(4, 4)
    torch._dynamo.reset()
    with foxcompile.pruning_stats() as stats:
        torch.compile(model, backend="fox_acp", options=AOT)(torch.randn(2, 4))
    assert stats.skipped_fraction() == 0.0 and not stats.per_head()
    assert "no foxcompile attention ran" in str(stats)
    assert "% of attention FLOPs skipped" not in str(stats)


@pytest.mark.parametrize("length, allowed, practical", [(128, 0.0, 0.0), (256, 1 / 3, 0.0),
                                                       (300, 3 / 6, 1 / 6)])
def test_pruning_summary_says_what_the_tile_grid_allows(length, allowed, practical):
    """At 128 x 128 tiles a sequence of two tiles has 3 causal tiles, of which only 1 is off the
    diagonal: a gate that forgets everything still skips at most a third of them, and that one
    only if a single gate value is below the threshold (in practice: nothing)."""
    torch.manual_seed(0)
    model = Model(layers=1, gate_bias=-8.0)     # forgets almost at once
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fox_acp", options=AOT)
    with foxcompile.pruning_stats() as stats:
        compiled(torch.randn(1, length, 16))
    (row,) = stats.per_head()
    assert row["skippable_tile_fraction"] == pytest.approx(allowed)
    assert row["practical_tile_fraction"] == pytest.approx(practical)
    assert row["module"] == "layers.0" and "test_first_use.py" in row["location"]
    assert max(row["skipped_tile_fraction"]) <= allowed + 1e-12
    assert f"at most {100 * allowed:.0f}% of the causal tiles" in str(stats)
    assert f"in practice {100 * practical:.0f}%" in str(stats)
    assert "tile grid 128x128" in str(stats)


def _scaled_fox(scale):
    """FoX with the scale as a closure constant (two closures share one code object)."""
    def attend(q, k, v, lam):
        t = q.shape[-2]
        s = q @ k.transpose(-2, -1) * scale + lam[..., :, None] - lam[..., None, :]
        s = s.masked_fill(torch.ones(t, t, dtype=torch.bool).triu(1), float("-inf"))
        return s.softmax(-1) @ v
    return attend


def test_explain_neither_reads_nor_writes_dynamos_history():
    """Two closures of one code object with different constants: Dynamo would trace the second
    with the constant as a graph input (automatic dynamic). Each explain() reports what a first
    compilation sees, and leaves no history behind for the user's next compilation."""
    q, k, v = torch.randn(3, 1, 2, 20, 8).unbind(0)
    lam = F.logsigmoid(torch.randn(1, 2, 20)).cumsum(-1)
    torch._dynamo.reset()
    for scale in (0.25, 0.5, 0.75):
        (site,) = foxcompile.explain(_scaled_fox(scale), q, k, v, lam).sites
        assert site.scale == scale
    seen = []

    def backend(gm, example_inputs):
        seen.append(gm.code)
        return gm.forward
    torch.compile(_scaled_fox(0.5), backend=backend)(q, k, v, lam)
    assert len(seen) == 1 and "0.5" in seen[0]   # a constant, not a graph input
