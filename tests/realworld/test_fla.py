"""flash-linear-attention's FoX (`pip install ".[realworld]"`: fla-core / flash-linear-attention
0.6.0) under fox_acp: its `parallel_forgetting_attn` calls, from its ForgettingAttention layer and
its ForgettingTransformerForCausalLM, become foxcompile's op; explain() reports them as their own
kind; outputs and every gradient equal eager.

Eager is fla's own code (layer, model, the parallel_forgetting_attn wrapper with its scale default
and cu_seqlens checks) with the two Triton calls below it, which cannot run on a CPU, replaced by
float64 PyTorch (reference.py): `parallel_attn` and the MLP's `swiglu`. Under fox_acp the call
never reaches them. Skipped when fla is not installed."""
import logging

import pytest
import torch

fla = pytest.importorskip("fla", reason="needs flash-linear-attention (the realworld extra)")
import fla.modules.mlp  # noqa: E402
import fla.ops.forgetting_attn.parallel as fla_parallel  # noqa: E402
from fla.layers import ForgettingAttention  # noqa: E402
from fla.models import (ForgettingTransformerConfig,  # noqa: E402
                        ForgettingTransformerForCausalLM)
from fla.ops.forgetting_attn import parallel_forgetting_attn  # noqa: E402

import foxcompile  # noqa: E402
from foxcompile.peers import fla as fla_peer  # noqa: E402

from .reference import fox_reference_attn, swiglu_reference  # noqa: E402
from .test_peer_calls import AOT, close  # noqa: E402

KIND = fla_peer.KIND
# Gradients: the gate's sums a reverse cumsum over T of the op's float32 dlam; fla's own float32
# reference (naive_forgetting_attn) is as far from float64 as the op is (~1e-4 relative at T=300).
GRAD = dict(rtol=1e-3, atol=1e-5)


@pytest.fixture(autouse=True)
def fla_on_cpu(monkeypatch):
    """fla's Triton kernels replaced by PyTorch (see the module docstring); counts the calls
    that reach fla's attention kernel."""
    calls = []

    def parallel_attn(*args, **kwargs):
        calls.append(1)
        return fox_reference_attn(*args, **kwargs)

    monkeypatch.setattr(fla_parallel, "parallel_attn", parallel_attn)
    monkeypatch.setattr(fla.modules.mlp, "swiglu", swiglu_reference)
    torch._dynamo.reset()
    yield calls
    torch._dynamo.reset()


def _grads(out, inputs, params, rows=None):
    weight = torch.randn(out.shape, generator=torch.Generator().manual_seed(0), dtype=out.dtype)
    loss = (out * weight if rows is None else out[rows] * weight[rows]).sum()
    return torch.autograd.grad(loss, inputs + params)


def _compare(model, x, kwargs=None, options=AOT):
    """fox_acp versus eager: output and the gradients of x and every parameter."""
    kwargs = kwargs or {}
    compiled = torch.compile(model, backend="fox_acp", options=options)
    x_eager, x_comp = (x.clone().requires_grad_() for _ in range(2))
    out_eager, out_comp = model(x_eager, **kwargs)[0], compiled(x_comp, **kwargs)[0]
    close(out_comp, out_eager)
    params = list(model.parameters())
    for got, want in zip(_grads(out_comp, [x_comp], params), _grads(out_eager, [x_eager], params)):
        close(got, want, **GRAD)


def _sites(report, count, *notes):
    assert len(report.sites) == count and not report.declined, str(report)
    for site in report.sites:
        assert site.kind == KIND and site.decay == "proven" and site.layout == "bthd", str(report)
        assert "forgetting_attn.py" in site.location and "forward" in site.location, str(report)
        for note in notes:
            assert any(note in n for n in site.notes), str(report)
    return report.sites


def test_registered():
    assert foxcompile.peers.status()[f"{fla_peer.MODULE}.{fla_peer.NAME}"] == "registered"
    assert parallel_forgetting_attn.__module__ == fla_peer.MODULE   # fla's own, not wrapped


@pytest.mark.parametrize("length", [77, 300])
@pytest.mark.parametrize("kv_heads", [None, 1])
def test_layer_matches_eager(fla_on_cpu, length, kv_heads):
    torch.manual_seed(0)
    layer = ForgettingAttention(hidden_size=64, num_heads=4, num_kv_heads=kv_heads, layer_idx=0)
    x = torch.randn(2, length, 64)
    site, = _sites(foxcompile.explain(layer, x), 1)
    assert site.shapes == {"q": (2, length, 4, 16), "k": (2, length, kv_heads or 4, 16),
                           "v": (2, length, kv_heads or 4, 16)}
    assert site.scale == pytest.approx(0.25)
    assert ("grouped query heads" in site.notes) == (kv_heads == 1)
    fla_on_cpu.clear()
    _compare(layer, x)
    assert len(fla_on_cpu) == 1   # eager reached fla's kernel; the compiled layer did not


@pytest.mark.parametrize("checkpointing", [False, True])
def test_model_training_step_matches_eager(fla_on_cpu, checkpointing):
    """fla's FoX language model: loss and every parameter gradient of a training step (with
    fla's gradient checkpointing the calls sit in checkpoint bodies, nested graphs)."""
    torch.manual_seed(1)
    config = ForgettingTransformerConfig(
        hidden_size=64, num_hidden_layers=2, num_heads=4, vocab_size=97, fuse_norm=False,
        fuse_swiglu=False, fuse_cross_entropy=False, use_cache=False)
    model = ForgettingTransformerForCausalLM(config)
    if checkpointing:
        model.gradient_checkpointing_enable()
        model.train()
    ids = torch.randint(0, 97, (2, 77))
    report = foxcompile.explain(model, input_ids=ids, labels=ids)
    sites = _sites(report, 2)
    assert [s.module for s in sites] == ["model.layers.0.attn", "model.layers.1.attn"]

    loss_eager = model(input_ids=ids, labels=ids).loss
    grads_eager = torch.autograd.grad(loss_eager, list(model.parameters()))
    fla_on_cpu.clear()
    compiled = torch.compile(model, backend="fox_acp", options=AOT)
    loss_comp = compiled(input_ids=ids, labels=ids).loss
    grads_comp = torch.autograd.grad(loss_comp, list(model.parameters()))
    assert not fla_on_cpu
    close(loss_comp, loss_eager)
    for got, want in zip(grads_comp, grads_eager):
        close(got, want, **GRAD)


def test_packed_sequences_cu_seqlens(fla_on_cpu):
    """cu_seqlens (B = 1, sequences packed along T) become the op's document ids."""
    torch.manual_seed(2)
    layer = ForgettingAttention(hidden_size=64, num_heads=4, layer_idx=0)
    x = torch.randn(1, 300, 64)
    cu_seqlens = torch.tensor([0, 41, 42, 177, 300])
    _sites(foxcompile.explain(layer, x, cu_seqlens=cu_seqlens), 1, "cu_seqlens as document ids")
    _compare(layer, x, {"cu_seqlens": cu_seqlens})


class Windowed(torch.nn.Module):
    """Calls parallel_forgetting_attn itself, as a model of one's own would."""

    def __init__(self, window_size=None, dim=32, heads=2):
        super().__init__()
        self.window_size, self.heads = window_size, heads
        self.qkv = torch.nn.Linear(dim, 3 * dim)
        self.f = torch.nn.Linear(dim, heads)

    def forward(self, x):
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, -1).unbind(2)
        g = torch.nn.functional.logsigmoid(self.f(x).float())
        return (parallel_forgetting_attn(q, k, v, g, window_size=self.window_size),)


def test_window_is_declined_and_runs_fla(fla_on_cpu):
    torch.manual_seed(3)
    model, x = Windowed(window_size=16), torch.randn(2, 77, 32)
    report = foxcompile.explain(model, x)
    assert not report.sites, str(report)
    peer = [d for d in report.declined if d.reason.startswith(KIND)]
    assert len(peer) == 1 and "sliding window (window_size=16)" in peer[0].reason, str(report)
    assert "test_fla.py" in peer[0].location and "forward" in peer[0].location
    fla_on_cpu.clear()
    _compare(model, x)
    assert len(fla_on_cpu) >= 1   # fla's path ran (here traced: parallel_attn is PyTorch on a CPU)


def test_debug_log_names_the_call(caplog):
    torch.manual_seed(4)
    model, x = Windowed(), torch.randn(1, 40, 32)
    compiled = torch.compile(model, backend="fox_acp", options={**AOT, "fox.debug": True})
    with caplog.at_level(logging.INFO, logger="foxcompile"):
        compiled(x)
    assert f"rewrote test_fla.py:" in caplog.text
    assert f"{KIND}, decay proven (prunable)" in caplog.text


def test_pruning_happens_at_300(fla_on_cpu):
    """The point of it all: fla's calls are pruned (the default epsilon, a fast-forgetting gate)."""
    torch.manual_seed(5)
    layer = ForgettingAttention(hidden_size=64, num_heads=4, layer_idx=0)
    with torch.no_grad():
        layer.f_proj.bias.fill_(-2.0)    # forget fast: logsigmoid(-2) = -2.1 per step
    x = torch.randn(1, 300, 64)
    compiled = torch.compile(layer, backend="fox_acp", options=AOT)
    with foxcompile.pruning_stats() as stats:
        out = compiled(x)[0]
    row, = stats.per_head()
    assert "forgetting_attn.py" in row["site"]
    assert min(row["skipped_tile_fraction"]) > 0, row   # T=300 is a few tiles: 1 in 6 here
    # each query may lose up to epsilon of its attention mass: |error| <= 2 epsilon max|v|
    close(out, layer(x)[0], atol=2 * foxcompile.DEFAULT_EPSILON)


def test_other_backends_untouched(fla_on_cpu):
    """A backend of one's own, like Inductor, gets what Dynamo gave it without foxcompile: fla's
    function traced as usual (here down to the CPU stand-in of its kernel), no foxcompile op."""
    graphs = []

    def recorder(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.manual_seed(6)
    layer, x = ForgettingAttention(hidden_size=32, num_heads=2, layer_idx=0), torch.randn(1, 20, 32)
    out = torch.compile(layer, backend=recorder)(x)[0]
    close(out, layer(x)[0])
    targets = {n.target for gm in graphs for n in gm.graph.nodes if n.op == "call_function"}
    assert torch.ops.foxcompile.attention.default not in targets
    assert torch.softmax in targets or any("softmax" in str(t) for t in targets)


def test_eager_untouched(fla_on_cpu):
    torch.manual_seed(7)
    q, k, v = (torch.randn(1, 10, 2, 16) for _ in range(3))
    g = torch.nn.functional.logsigmoid(torch.randn(1, 10, 2))
    out = parallel_forgetting_attn(q, k, v, g)
    assert len(fla_on_cpu) == 1
    close(out, fox_reference_attn(q, k, v, g, 0.25))


def test_decline_reasons():
    q = torch.randn(1, 8, 4, 16)
    g = torch.zeros(1, 8, 4)
    reason = fla_peer.decline_reason
    assert reason(q, q, q, g, None, None, None) is None
    assert reason(q, q[:, :, :2], q[:, :, :2], g, None, None, torch.tensor([0, 8])) is None
    assert "sliding window" in reason(q, q, q, g, None, 4, None)
    two = torch.randn(2, 8, 4, 16)
    assert "batch size" in reason(two, two, two, torch.zeros(2, 8, 4), None, None, torch.tensor([0, 8]))
    assert "multiple" in reason(q, q[:, :, :3], q[:, :, :3], g, None, None, None)
    assert "(B, T, HQ)" in reason(q, q, q, torch.zeros(1, 4, 8), None, None, None)
    assert "share (B, T)" in reason(q, q[:, :4], q[:, :4], g, None, None, None)


def test_padding_mask_goes_through_cu_seqlens(fla_on_cpu):
    """fla's layer unpads an attention_mask into packed sequences and calls the kernel with
    cu_seqlens (graph breaks at .item() in between): that call is rewritten too."""
    torch.manual_seed(8)
    layer = ForgettingAttention(hidden_size=64, num_heads=4, layer_idx=0)
    x = torch.randn(2, 40, 64)
    mask = torch.ones(2, 40, dtype=torch.long)
    mask[1, :9] = 0
    report = foxcompile.explain(layer, x, attention_mask=mask)
    peer = [s for s in report.sites if s.kind == KIND]
    assert len(peer) == 1 and any("cu_seqlens" in n for n in peer[0].notes), str(report)
    assert peer[0].shapes["q"] == (1, 71, 4, 16)
    compiled = torch.compile(layer, backend="fox_acp", options=AOT)
    valid = mask.bool()
    x_eager, x_comp = (x.clone().requires_grad_() for _ in range(2))
    out_eager = layer(x_eager, attention_mask=mask)[0]
    out_comp = compiled(x_comp, attention_mask=mask)[0]
    close(out_comp[valid], out_eager[valid])
    params = list(layer.parameters())
    for got, want in zip(_grads(out_comp, [x_comp], params, valid),
                         _grads(out_eager, [x_eager], params, valid)):
        close(got, want, **GRAD)


def test_dynamic_shapes(fla_on_cpu):
    torch.manual_seed(9)
    layer = ForgettingAttention(hidden_size=64, num_heads=4, layer_idx=0)
    compiled = torch.compile(layer, backend="fox_acp", options=AOT, dynamic=True)
    for length in (50, 90):
        x = torch.randn(2, length, 64)
        close(compiled(x)[0], layer(x)[0])
    assert len(fla_on_cpu) == 2   # the two eager calls; the compiled ones never reach fla
