"""views.sources (which input dim each dim of a view reads) and graph.sequence_arg (list arguments
however they are written), on graphs Dynamo records; and the keyword spellings of views through a
whole site."""
import math

import pytest
import torch
import torch.nn.functional as F

import foxcompile
from foxcompile.find import graph as g
from foxcompile.find.views import MERGED, NEW, sources


def _views(fn, *args):
    """The nodes fn returns (each `view + 0`), as Dynamo recorded them."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch._dynamo.reset()
    torch.compile(fn, backend=backend)(*args)
    out = next(n for n in graphs[0].graph.nodes if n.op == "output")
    return [n.args[0] for n in out.args[0]]


@pytest.mark.filterwarnings("ignore:The use of `x.T`")
def test_sources_of_view_ops():
    def fn(x, y):  # x (2, 3, 1, 5), y (3, 4, 6)
        views = [
            x.permute(0, 2, 1, 3), x.permute((3, 2, 1, 0)), x.permute(dims=(0, 1, 3, 2)),
            torch.permute(x, dims=(1, 0, 2, 3)), x.transpose(1, 3), x.transpose(dim0=-1, dim1=0),
            y.mT, y[0].T, y.T,
            x.unsqueeze(dim=1), x[None, :, None], x.squeeze(2), x.squeeze(1), x.squeeze(),
            x.expand(4, 2, 3, 6, 5), x.repeat(1, 1, 4, 1), x.repeat(repeats=(2, 1, 2, 1, 1)),
            x.reshape(6, 5), x.view(2, 3, 5, 1), x.flatten(1, 2), y.reshape(3, 2, 2, 6),
            x[0, :, :, 1:4], x[..., ::2], x.float(), x.contiguous(), x.repeat_interleave(2, dim=1),
        ]
        return tuple(v + 0 for v in views)

    found = [sources(n) for n in _views(fn, torch.randn(2, 3, 1, 5), torch.randn(3, 4, 6))]
    assert found == [
        [0, 2, 1, 3], [3, 2, 1, 0], [0, 1, 3, 2],
        [1, 0, 2, 3], [0, 3, 2, 1], [3, 1, 2, 0],
        [0, 2, 1], [1, 0], [2, 1, 0],               # x.T reverses every dim
        [0, NEW, 1, 2, 3], [NEW, 0, NEW, 1, 2, 3], [0, 1, 3], [0, 1, 2, 3], None,
        [NEW, 0, 1, 2, 3], [0, 1, 2, 3], [NEW, 0, MERGED, 2, 3],  # repeating a size-1 dim: broadcast
        [MERGED, 3], [0, 1, 3, NEW], [0, 1, 3], [0, MERGED, MERGED, 2],
        [1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3], [0, 1, 2, 3],
    ]


def test_sequence_arg_spellings():
    def fn(x):
        return (x.permute(0, 2, 1) + 0, x.permute((0, 2, 1)) + 0, x.permute([0, 2, 1]) + 0,
                x.permute(dims=(0, 2, 1)) + 0, torch.permute(x, dims=[0, 2, 1]) + 0)

    nodes = _views(fn, torch.randn(2, 3, 4))
    assert [g.sequence_arg(n, 1, "dims") for n in nodes] == [(0, 2, 1)] * 5


def test_keyword_spellings_of_views_through_a_site():
    def attend(q, k, v, fg):  # fg (B, T, H)
        lam = F.logsigmoid(fg).cumsum(1).transpose(dim0=1, dim1=2)
        s = q @ k.permute(dims=(0, 1, 3, 2)) + lam.unsqueeze(dim=-1) - lam.unsqueeze(dim=-2)
        T = q.shape[2]
        keep = torch.ones(T, T, dtype=torch.bool).tril()
        return s.masked_fill(~keep, -math.inf).softmax(-1) @ v

    q, k, v = (torch.randn(1, 2, 7, 8) for _ in range(3))
    report = foxcompile.explain(attend, q, k, v, torch.randn(1, 7, 2))
    assert len(report.sites) == 1 and not report.declined, str(report)
    assert report.sites[0].decay == "proven", str(report)
