"""einx and einops spellings of forgetting attention (einx 0.4 and einops 0.8, pinned in the
`realworld` extra): einx.subtract for the gate bias, einx.dot and einops.einsum for the scores,
einops.rearrange for the bias and the heads, einops.repeat for grouped-query heads."""
import pytest
import torch

pytest.importorskip("einx")
pytest.importorskip("einops")

from .common import Case, check_sites, compare_with_eager, site_test  # noqa: E402
from .spellings import BATCH, DIM, Attention  # noqa: E402


def _build(spelling, **kw):
    def build(length, train):
        return Attention(spelling, **kw).train(train), (torch.randn(BATCH, length, DIM),), None
    return build


CASES = [
    Case("einx-subtract", "einx", "FoX layer", "einx.subtract('b h i, b h j -> b h i j')",
         _build("einx-subtract"), sites=("proven",)),
    Case("einx-dot", "einx", "FoX layer", "einx.dot('b h i d, b h j d -> b h i j')",
         _build("einx-dot"), sites=("proven",)),
    # near misses: read exactly as what they compute
    Case("einx-subtract-flipped", "einx", "near miss: lam_j - lam_i",
         "einx.subtract('b h j, b h i -> b h i j')", _build("einx-subtract-flipped"),
         sites=("none",), note="the gate grows toward the past: never pruned",
         extra={"dtype": torch.float64}),  # scores of several hundred: fp32 rounding dominates
    Case("einx-multiply", "einx", "near miss: lam_i * lam_j",
         "einx.multiply('b h i, b h j -> b h i j')", _build("einx-multiply"),
         decline="jointly", runs=("eval",)),
    Case("einx-subtract-composed", "einx", "near miss: composed axes",
         "einx.subtract('(b h) i, (b h) j -> b h i j')", _build("einx-subtract-composed"),
         decline="jointly", runs=("eval",)),
    Case("einops-einsum", "einops", "FoX layer", "einops.einsum + rearrange",
         _build("einops-einsum"), sites=("proven",)),
    Case("einops-gqa-repeat", "einops", "FoX layer, 1 kv head", "einops.repeat 'b h n d -> b (h r) n d'",
         _build("einops-gqa-repeat", kv_heads=1), sites=("proven",)),
    Case("einops-gqa-repeat-4-2", "einops", "FoX layer, 4 heads, 2 kv heads",
         "einops.repeat 'b h n d -> b (h r) n d' (peeled: head h reads h // 2)",
         _build("einops-gqa-repeat", kv_heads=2, heads=4), sites=("proven",)),
    Case("einops-gqa-repeat-tiled", "einops", "FoX layer, 4 heads, 2 kv heads",
         "einops.repeat 'b h n d -> b (r h) n d' (tiled: passed as repeated)",
         _build("einops-gqa-repeat-tiled", kv_heads=2, heads=4), sites=("proven",)),
]


@pytest.mark.parametrize("case", [site_test(c) for c in CASES])
def test_sites(case):
    check_sites(case)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_eager(case, mode):
    if mode not in case.runs:
        pytest.skip(f"{case.id}: {mode} not run (kept to the CI budget)")
    compare_with_eager(case, mode)


# ---- the lowering itself: each einx call it writes out computes bit for bit what einx does ------

LOWERED = [
    ("subtract", "b h i, b h j -> b h i j", (2, 3, 5), (2, 3, 5)),
    ("subtract", "j, i -> 1 i j", (5,), (5,)),
    ("subtract", "... j, ... i -> ... i j", (2, 5), (2, 5)),
    ("add", "b i h, b h j -> b h i j", (2, 5, 3), (2, 3, 5)),
    ("multiply", "b h i, b h j -> b h i j", (2, 3, 5), (2, 3, 5)),
    ("divide", "b h i, b h j -> b h i j", (2, 3, 5), (2, 3, 5)),
    ("dot", "b h i d, b h j d -> b h i j", (2, 3, 5, 4), (2, 3, 5, 4)),
]
KEPT = [("subtract", "(b h) i, (b h) j -> b h i j", (6, 5), (6, 5), {"h": 3})]


def _lowered_count(fn, *args):
    from foxcompile.find.einx_ops import lower
    counts = []

    def backend(gm, example_inputs):
        counts.append(lower(gm.graph))
        gm.recompile()
        return gm.forward

    torch._dynamo.reset()
    out = torch.compile(fn, backend=backend)(*args)
    return sum(counts), out


@pytest.mark.parametrize("op,expr,a,b", LOWERED, ids=[f"{o}:{e}" for o, e, _, _ in LOWERED])
def test_einx_lowered_bit_identical(op, expr, a, b):
    import einx
    x, y = torch.randn(a), torch.randn(b)
    fn = getattr(einx, op)
    count, out = _lowered_count(lambda x, y: fn(expr, x, y), x, y)
    assert count == 1
    assert torch.equal(out, fn(expr, x, y))


@pytest.mark.parametrize("op,expr,a,b,kw", KEPT, ids=[e for _, e, _, _, _ in KEPT])
def test_einx_compositions_kept(op, expr, a, b, kw):
    import einx
    x, y = torch.randn(a), torch.randn(b)
    fn = getattr(einx, op)
    count, out = _lowered_count(lambda x, y: fn(expr, x, y, **kw), x, y)
    assert count == 0
    assert torch.equal(out, fn(expr, x, y, **kw))
