"""Plain-PyTorch forgetting attention and ALiBi as third-party code writes it: the FoX authors'
reference (boolean index assignment with mask == 0), index assignment with a tensor value,
where with a 0-d tensor fill, the causal masks of PyTorch's old transformer tutorial and of
fairseq, piecewise-linear ALiBi distances, dead intermediates, a no-op pad and expand of an SDPA
bias."""
import pytest
import torch

from .common import Case, check_sites, compare_with_eager, site_test
from .spellings import BATCH, DIM, Attention


def _build(spelling):
    def build(length, train):
        return Attention(spelling).train(train), (torch.randn(BATCH, length, DIM),), None
    return build


CASES = [
    Case("fox-reference", "torch", "FoX reference (authors' tests)", "s[:, :, mask == 0] = -inf",
         _build("fox-reference"), sites=("proven",)),
    Case("index-assign-tensor", "torch", "FoX layer", "s[..., ~keep] = torch.tensor(-inf)",
         _build("index-assign-tensor"), sites=("proven",)),
    Case("where-0d-tensor", "torch", "FoX layer", "where(i >= j, s, torch.tensor(-inf))",
         _build("where-0d-tensor"), sites=("proven",)),
    Case("tutorial-square-subsequent-mask", "torch", "FoX layer, PyTorch tutorial's mask",
         "(triu(ones) == 1).transpose(0, 1) -> masked_fill(m == 0, -inf).masked_fill(m == 1, 0)",
         _build("tutorial-square-subsequent-mask"), sites=("proven",)),
    Case("fairseq-future-mask", "torch", "FoX layer, fairseq's future mask",
         "triu(zeros.float().fill_(-inf).type_as(..), 1), attn_weights += mask",
         _build("fairseq-future-mask"), sites=("proven",)),
    Case("alibi-linear", "torch", "ALiBi", "slope * (i - j)", _build("alibi-linear"),
         sites=("guarded",)),
    Case("alibi-clamp-min", "torch", "ALiBi", "slope * (i - j).clamp_min(0)",
         _build("alibi-clamp-min"), sites=("guarded",)),
    Case("alibi-abs", "torch", "ALiBi", "slope * abs(j - i)", _build("alibi-abs"),
         sites=("guarded",)),
    Case("alibi-relu", "torch", "ALiBi", "slope * relu(i - j)", _build("alibi-relu"),
         sites=("guarded",)),
    Case("bloom-bmm", "torch", "FoX layer, Bloom's layout", "baddbmm (B*H) -> view (B, H) -> "
         "softmax -> view (B*H) -> bmm", _build("bloom-bmm"), sites=("proven",)),
    Case("dead-clone", "torch", "FoX layer", "an unused s.clone()", _build("dead-clone"),
         sites=("proven",)),
    Case("dead-max", "torch", "FoX layer", "o, m = f(...); return o (m = s.amax(-1) dead)",
         _build("dead-max"), sites=("proven",)),
    Case("sdpa-pad-expand", "torch", "FoX layer", "SDPA, F.pad(bias, (0, 0)).expand(B, H, -1, -1)",
         _build("pad-zero-width"), sites=("proven",)),
]


@pytest.mark.parametrize("case", [site_test(c) for c in CASES])
def test_sites(case):
    check_sites(case)


@pytest.mark.parametrize("mode", ["eval", "train"])
@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_matches_eager(case, mode):
    compare_with_eager(case, mode)
