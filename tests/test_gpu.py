"""The op and the backend on a CUDA GPU (Triton kernels): skipped without one. Kernel-level GPU
tests live in test_kernels.py."""
import pytest
import torch

import foxcompile
from test_backend import FORMS, GatedAttention
from test_op import _doc_ids, _inputs, _reference

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


def _assert_gradients_close(out, ref, inputs, tol):
    """Gradients of out (the op, CUDA) and ref (fp64) for one random grad_out: relative norm error
    below tol for every input."""
    grad = torch.randn_like(ref)
    got = torch.autograd.grad(out, inputs, grad.to(out.dtype))
    want = torch.autograd.grad(ref, inputs, grad)
    for g, w in zip(got, want):
        assert g.shape == w.shape and (g.double() - w).norm() / w.norm() < tol


@pytest.mark.parametrize("layout", ["bthd", "bhtd"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_op_on_cuda_matches_definition(dtype, layout):
    q, k, v, gates = _inputs(2, 300, 333, 8, 2, 64, layout=layout, dtype=dtype, gate_bias=-1.0,
                             grad=False)
    q, k, v, gates = (x.cuda().requires_grad_() for x in (q, k, v, gates))
    with foxcompile.pruning_stats() as stats:
        out = foxcompile.forgetting_attention(q, k, v, gates, layout=layout)
    ref = _reference(q, k, v, gates, layout)
    tol = {torch.float32: 2e-3, torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    assert (out.double() - ref).norm() / ref.norm() < tol
    _assert_gradients_close(out, ref, (q, k, v, gates), 4 * tol)
    assert stats.skipped_fraction() > 0


@pytest.mark.parametrize("style", FORMS)
def test_compiled_forms_on_cuda(style):
    torch.manual_seed(0)
    model = GatedAttention(style, dim=128, heads=2).cuda()
    x = torch.randn(2, 60, 128, device="cuda", requires_grad=True)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fox_acp")
    out, ref = compiled(x), model(x)
    torch.testing.assert_close(out, ref, rtol=2e-3, atol=2e-3)  # TF32 dots in the kernels
    g_out, g_ref = (torch.autograd.grad(o.square().sum(), [x, model.fgate.weight]) for o in (out, ref))
    for a, b in zip(g_out, g_ref):
        assert (a - b).norm() / b.norm() < 5e-3


def test_reduce_overhead_runs_under_cuda_graphs():
    from torch._dynamo.utils import counters
    torch.manual_seed(0)
    model = GatedAttention("matmul_masked_fill", dim=128, heads=2).cuda()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(model, backend="fox_acp", mode="reduce-overhead")
    for step in range(4):  # warm-up, record, then replays on fresh data
        x = torch.randn(2, 64, 128, device="cuda")
        with torch.no_grad():
            out = compiled(x).clone()
            torch.testing.assert_close(out, model(x), rtol=2e-3, atol=2e-3)
    assert counters["inductor"]["cudagraph_skips"] == 0


def test_training_bf16_autocast_on_cuda():
    torch.manual_seed(0)
    model = GatedAttention("einsum_where", dim=128, heads=2).cuda()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fox_acp")
    x = torch.randn(4, 256, 128, device="cuda")
    losses = []
    for _ in range(5):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = (compiled(x).float() - x).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_packed_sequences_on_cuda(dtype):
    """Documents of 100-700 tokens packed into T = 2048: within the document, causal, and the
    tiles of earlier documents skipped."""
    q, k, v, gates = _inputs(2, 2048, 2048, 4, 2, 64, dtype=dtype, gate_bias=2.0, grad=False)
    doc = _doc_ids(2, 2048, [700, 100, 450, 300]).cuda()
    q, k, v, gates = (x.cuda().requires_grad_() for x in (q, k, v, gates))
    with foxcompile.pruning_stats() as stats:
        out = foxcompile.forgetting_attention(q, k, v, gates, doc=doc, layout="bthd")
    ref = _reference(q, k, v, gates, doc=doc)
    tol = {torch.float16: 5e-3, torch.bfloat16: 2e-2}[dtype]
    assert (out.double() - ref).norm() / ref.norm() < tol
    _assert_gradients_close(out, ref, (q, k, v, gates), 4 * tol)
    assert stats.skipped_fraction() > 0.3


@pytest.mark.parametrize("head_dim, value_dim", [(64, 128), (128, 48)])
def test_value_head_dim_of_its_own_on_cuda(head_dim, value_dim):
    """v wider or narrower than q and k: the op pads the narrower side for the kernels."""
    q, k, _, gates = _inputs(1, 300, 300, 4, 2, head_dim, dtype=torch.bfloat16, gate_bias=-1.0,
                             grad=False)
    v = torch.randn(*k.shape[:-1], value_dim, dtype=torch.bfloat16)
    q, k, v, gates = (x.cuda().requires_grad_() for x in (q, k, v, gates))
    out = foxcompile.forgetting_attention(q, k, v, gates, layout="bthd")
    ref = _reference(q, k, v, gates, scale=head_dim ** -0.5)
    assert out.shape == (*q.shape[:-1], value_dim)
    assert (out.double() - ref).norm() / ref.norm() < 2e-2
    _assert_gradients_close(out, ref, (q, k, v, gates), 8e-2)


@pytest.mark.parametrize("head_dim, dtype", [(64, torch.bfloat16), (128, torch.float16),
                                             (48, torch.bfloat16)])
def test_gluon_backward_finish_dq_on_cuda(head_dim, dtype):
    """The Gluon backward's last pass (dq scaled and cast, the row sums into dlam) equals, bit
    for bit, the torch.mul and in-place add it replaced."""
    from test_decode import finish_dq_case

    from foxcompile.kernels import triton_attention as ta
    args, want_dq, want_dlam = finish_dq_case(head_dim, dtype, "cuda")
    ta.finish_dq(*args)
    assert torch.equal(args[3], want_dq)
    assert torch.equal(args[4], want_dlam)


@pytest.mark.parametrize("order", ["index", "work", "backward"])
def test_op_forward_launches(monkeypatch, order):
    """A call's host cost is mostly its launches (docs/kernels.md, "Packed sequences"), so their
    number is held down: a pruned forward in bthd layout (tl engine at this length, no document
    ids, float32 gates) launches the gates' copy and cumsum, the bound's two kernels, the lam
    copy, the start blocks and the attention kernel, and nothing else; the "work" head order
    one launch more (the order), "backward" none (the forward keeps the heads' own order)."""
    from torch.profiler import ProfilerActivity, profile
    monkeypatch.delenv("FOXCOMPILE_ENGINE", raising=False)
    monkeypatch.setenv("FOXCOMPILE_HEAD_ORDER", order)
    q, k, v = (torch.randn(1, 256, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    gates = torch.nn.functional.logsigmoid(torch.randn(1, 256, 4, device="cuda") + 4.0)

    def forward():
        with torch.no_grad():
            return foxcompile.forgetting_attention(q, k, v, gates, layout="bthd")

    forward()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        forward()
        torch.cuda.synchronize()
    kernels = [e.name for e in prof.events()
               if e.device_type == torch.autograd.DeviceType.CUDA]
    assert len(kernels) == 7 + (order == "work"), kernels
