"""Calls of the FoX authors' `forgetting_transformer.ops.forgetting_attention.forgetting_attention`
under fox_acp, with a pure-PyTorch stand-in package of that module path (tests/realworld/standin:
their signature, semantics and assertions), imported *after* foxcompile so that the lazy
registration (an import hook) is what hands the calls to the backend. Both a plain stand-in and
one wrapped in torch.compiler.disable (which makes Dynamo break the graph at the call).

The peers' mechanism itself (eager untouched, other backends unchanged, trace-time declines) is
tested here too, since it needs no third-party package."""
import importlib
import logging
import shutil
import sys
from pathlib import Path

import pytest
import torch

import foxcompile
from foxcompile.peers import fox_authors

from .reference import fox_attention_reference

AOT = {"fox.compiler": "aot_eager"}   # AOTAutograd without Inductor's C++ build: fast on CPU
STANDIN = Path(__file__).parent / "standin"
FUNCTION = f"{fox_authors.MODULE}.{fox_authors.NAME}"
KIND = fox_authors.KIND


def _purge():
    for name in [n for n in sys.modules if n == "forgetting_transformer"
                 or n.startswith("forgetting_transformer.")]:
        del sys.modules[name]


@pytest.fixture(params=["plain", "disabled"], scope="module")
def authors(request, tmp_path_factory):
    """The stand-in package, freshly imported (so the import hook registers it); "disabled"
    wraps their function in torch.compiler.disable as some kernels are."""
    root = tmp_path_factory.mktemp(request.param)
    shutil.copytree(STANDIN, root, dirs_exist_ok=True)
    if request.param == "disabled":
        ops = root / "forgetting_transformer" / "ops" / "forgetting_attention.py"
        ops.write_text(ops.read_text() + "\nforgetting_attention = "
                       "torch.compiler.disable(forgetting_attention)\n")
    _purge()
    sys.path.insert(0, str(root))
    try:
        ops = importlib.import_module(fox_authors.MODULE)
        model = importlib.import_module("forgetting_transformer.model")
        assert foxcompile.peers.status()[FUNCTION] == "registered"
        yield ops, model, request.param
    finally:
        sys.path.remove(str(root))
        _purge()


def close(got, want, rtol=1e-4, atol=5e-6):
    """float32 op versus a float64 eager: atol relative to the largest entry (the weight
    gradients are sums over every position and reach 10-40)."""
    scale = max(1.0, want.detach().abs().max().item()) if want.numel() else 1.0
    torch.testing.assert_close(got, want, rtol=rtol, atol=atol * scale)


def _compare(model, inputs, kwargs=None, rows=None, options=AOT, tol=None):
    """fox_acp versus eager: outputs and the gradients of x and every parameter (of the loss
    over `rows` of the output only, when given: padded rows are the model's to ignore)."""
    kwargs, tol = kwargs or {}, tol or {}
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fox_acp", options=options)
    x_eager, x_comp = (inputs.clone().requires_grad_() for _ in range(2))
    out_eager, out_comp = model(x_eager, **kwargs), compiled(x_comp, **kwargs)
    select = (lambda o: o) if rows is None else rows
    close(select(out_comp), select(out_eager), **tol)
    weight = torch.randn_like(out_eager)
    params = list(model.parameters())
    grads_eager = torch.autograd.grad((select(out_eager) * select(weight)).sum(), [x_eager] + params)
    grads_comp = torch.autograd.grad((select(out_comp) * select(weight)).sum(), [x_comp] + params)
    for got, want in zip(grads_comp, grads_eager):
        close(got, want, **tol)


def _one_site(report, *notes):
    assert len(report.sites) == 1 and not report.declined, str(report)
    site = report.sites[0]
    assert site.kind == KIND and site.decay == "proven" and site.prunable, str(report)
    assert site.module == "" and "forward" in site.location, str(report)
    for note in notes:
        assert any(note in n for n in site.notes), str(report)
    return site


@pytest.mark.parametrize("length,head_first", [(77, False), (300, True)])
def test_layer_matches_eager(authors, length, head_first):
    ops, model_module, _ = authors
    torch.manual_seed(0)
    layer = model_module.ForgettingAttentionLayer(hidden_size=64, num_heads=4,
                                                  head_first=head_first)
    x = torch.randn(2, length, 64)
    site = _one_site(foxcompile.explain(layer, x))
    assert site.layout == ("bhtd" if head_first else "bthd")
    assert site.shapes["q"] == ((2, 4, length, 16) if head_first else (2, length, 4, 16))
    calls = ops.CALLS[0]
    _compare(layer, x)
    assert ops.CALLS[0] == calls + 1   # eager ran theirs, the compiled layer did not


def test_layer_eager_matches_reference(authors):
    """The stand-in computes what the docs say (so that the comparisons above mean something)."""
    _, model_module, _ = authors
    torch.manual_seed(1)
    layer = model_module.ForgettingAttentionLayer(hidden_size=64, num_heads=4)
    x = torch.randn(1, 40, 64)
    q, k, v = (p(x).view(1, 40, 4, 16).transpose(1, 2)
               for p in (layer.q_proj, layer.k_proj, layer.v_proj))
    gates = torch.nn.functional.logsigmoid(layer.fgate_proj(x).float()).transpose(1, 2)
    want = fox_attention_reference(q, k, v, gates, 0.25).transpose(1, 2).reshape(1, 40, 64)
    torch.testing.assert_close(layer(x), layer.o_proj(want.float()), rtol=1e-5, atol=1e-6)


def test_fewer_queries_than_keys(authors):
    """M < N: the queries are the last M positions (decoding with a cache)."""
    ops, _, _ = authors

    class Step(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(32, 2 * 16)

        def forward(self, x):
            q = self.proj(x[:, -5:]).view(2, 5, 2, 16)
            k = self.proj(x).view(2, 40, 2, 16)
            v = torch.tanh(k)
            gates = torch.nn.functional.logsigmoid(k[..., 0])
            return ops.forgetting_attention(q, k, v, gates, sm_scale=0.3)

    torch.manual_seed(2)
    model, x = Step(), torch.randn(2, 40, 32)
    site = _one_site(foxcompile.explain(model, x))
    assert site.scale == pytest.approx(0.3)
    _compare(model, x)


def test_seq_start_left_padding(authors):
    _, model_module, _ = authors
    torch.manual_seed(3)
    layer = model_module.ForgettingAttentionLayer(hidden_size=64, num_heads=4)
    x = torch.randn(3, 50, 64)
    seq_start = torch.tensor([0, 7, 31])
    _one_site(foxcompile.explain(layer, x, seq_start), "seq_start as left padding")
    valid = torch.arange(50)[None, :] >= seq_start[:, None]
    # padded queries attend to nothing in their kernel and to the padding in ours: the model
    # ignores them, so only the valid rows are compared (outputs and gradients)
    _compare(layer, x, {"seq_start": seq_start}, rows=lambda o: o[valid])


def test_adaptive_threshold_is_superseded(authors):
    """The authors' delta is replaced by foxcompile's own, from fox.epsilon: with a delta low
    enough that their kernel prunes nothing, both are exact up to fox.epsilon."""
    _, model_module, _ = authors
    torch.manual_seed(4)
    layer = model_module.ForgettingAttentionLayer(hidden_size=64, num_heads=4)
    x = torch.randn(2, 60, 64)
    delta = torch.full((2, 4), -1e4)
    _one_site(foxcompile.explain(layer, x, None, delta), "adaptive_threshold superseded")
    _compare(layer, x, {"adaptive_threshold": delta})


def test_disabled_kernel_still_reaches_the_backend(authors):
    """torch.compiler.disable makes Dynamo break the graph at the call for every backend but
    fox_acp: a recording backend sees neither their attention nor foxcompile's op, and their
    function runs eagerly; under fox_acp it is one op in the graph."""
    ops, model_module, variant = authors
    torch.manual_seed(5)
    layer = model_module.ForgettingAttentionLayer(hidden_size=32, num_heads=2)
    x = torch.randn(1, 24, 32)
    graphs = []

    def recorder(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    calls = ops.CALLS[0]
    torch.testing.assert_close(torch.compile(layer, backend=recorder)(x), layer(x))
    targets = [n.target for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    assert torch.ops.foxcompile.attention.default not in targets
    softmax_traced = any("softmax" in str(t) for t in targets)
    if variant == "disabled":
        assert len(graphs) >= 2 and not softmax_traced     # broken at the call, run eagerly
        assert ops.CALLS[0] == calls + 2                    # eager and compiled both ran it
    else:
        assert softmax_traced                               # inlined, as without foxcompile

    torch._dynamo.reset()
    graphs.clear()
    report = foxcompile.explain(layer, x)
    assert len(report.sites) == 1 and len(report.graphs) == 1, str(report)


def test_eager_untouched(authors):
    ops, _, _ = authors
    assert ops.forgetting_attention.__module__ == fox_authors.MODULE
    q = k = v = torch.randn(1, 8, 1, 16)
    calls = ops.CALLS[0]
    ops.forgetting_attention(q, k, v, torch.zeros(1, 8, 1))
    assert ops.CALLS[0] == calls + 1


def test_decline_reasons():
    """What the authors' kernel asserts against is left to it (eager raises, so does the call
    compiled): the reasons, read by the polyfill from shapes at trace time."""
    q = torch.randn(1, 8, 2, 16)
    gates = torch.zeros(1, 8, 2)
    reason = fox_authors.decline_reason
    assert reason(q, q, q, gates, False, None, None) is None
    assert "grouped query heads" in reason(q, q[:, :, :1], q[:, :, :1], gates, False, None, None)
    wide = torch.randn(1, 8, 2, 24)
    assert "{16, 32, 64, 128}" in reason(wide, wide, wide, gates, False, None, None)
    assert "more queries" in reason(torch.randn(1, 9, 2, 16), q, q, torch.zeros(1, 8, 2), False,
                                    None, None)
    assert "log_fgate" in reason(q, q, q, torch.zeros(1, 2, 8), False, None, None)
    assert "seq_start" in reason(q, q, q, gates, False, torch.zeros(2, dtype=torch.long), None)


def test_declined_call_is_reported_and_runs_theirs(authors, caplog):
    """A call their kernel rejects (head dim 24): declined with the reason in the debug log,
    then their assertion fires, compiled as in eager."""
    ops, _, variant = authors

    class Wide(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(48, 48)

        def forward(self, x):
            q = self.proj(x).view(1, 10, 2, 24)
            return ops.forgetting_attention(q, q, q, torch.zeros(1, 10, 2))

    model, x = Wide(), torch.randn(1, 10, 48)
    with pytest.raises(AssertionError):
        model(x)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fox_acp", options={**AOT, "fox.debug": True})
    with caplog.at_level(logging.INFO, logger="foxcompile"), pytest.raises(Exception):
        compiled(x)
    if variant == "disabled":   # the graph before the break reaches the backend, which reports
        assert f"{KIND}: head dim not in {{16, 32, 64, 128}}" in caplog.text


def test_status_names_the_function(authors):
    assert foxcompile.peers.status()[FUNCTION] == "registered"
